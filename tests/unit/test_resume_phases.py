"""reliability/resume_phases.py reads the phases of a TaskManager kill from the JobManager's (rotated) logs."""

from datetime import datetime

from reliability.resume_phases import phases

JOB = "iheardai-frontend-fault-abc"
LINES = [  # (seconds after the kill, line); real lines of a 2026-12-07 run, shortened
    (-30.0, "INFO  ...ExecutionGraph [] - Job iheardai-frontend-fault-abc (e4c3) switched from state CREATED to RUNNING."),
    (-20.0, "INFO  ...ExecutionGraph [] - Source: ReadKafka (1/2) (ab47_b2c3_0_0) switched from INITIALIZING to RUNNING."),
    (3.9, "INFO  ...StandaloneResourceManager [] - TaskManager with id localhost:44907-f75e1c is no longer reachable."),
    (4.8, "INFO  ...ExecutionGraph [] - Job iheardai-frontend-fault-abc (e4c3) switched from state RUNNING to RESTARTING."),
    (5.9, "INFO  ...ExecutionGraph [] - Job iheardai-frontend-fault-abc (e4c3) switched from state RESTARTING to RUNNING."),
    (7.4, "INFO  ...StandaloneResourceManager [] - Registering TaskManager with ResourceID localhost:40001-aa (pekko...)"),
    (12.0, "INFO  ...ExecutionGraph [] - Source: ReadKafka (1/2) (ab47_b2c3_0_1) switched from INITIALIZING to RUNNING."),
    (16.7, "INFO  ...ExecutionGraph [] - [10]{SessionEngagement} (2/2) (ab47_dc4a_1_1) switched from INITIALIZING to RUNNING."),
    (60.0, "INFO  ...ExecutionGraph [] - Job iheardai-frontend-fault-next (ffff) switched from state CREATED to RUNNING."),
    (61.0, "INFO  ...ExecutionGraph [] - Source: ReadKafka (1/2) (ffff_b2c3_0_0) switched from INITIALIZING to RUNNING."),
]


def _write(tmp_path, kill: float):
    def fmt(t):
        d = datetime.fromtimestamp(kill + t)
        return d.strftime("%Y-%m-%d %H:%M:%S,") + f"{d.microsecond // 1000:03d}"

    older, newer = LINES[:4], LINES[4:]  # Flink rotates: .log.1 is older than .log
    (tmp_path / "flink--standalonesession-0-vm.log.1").write_text("".join(f"{fmt(t)} {l}\n" for t, l in older))
    (tmp_path / "flink--standalonesession-0-vm.log").write_text(
        "".join(f"{fmt(t)} {l}\n" for t, l in newer) + "\tat a stack trace line without a time\n")
    (tmp_path / "flink--taskexecutor-0-vm.log").write_text(f"{fmt(5.0)} Registering TaskManager with ResourceID x\n")


def test_phases_of_a_kill_across_rotated_logs(tmp_path):
    kill = datetime(2026, 12, 7, 11, 17, 11).timestamp()
    _write(tmp_path, kill)
    got = phases(JOB, kill, 23.9, log_dir=tmp_path)
    assert got == {"detected": 3.9, "restarting": 4.8, "registered": 7.4, "scheduled": 5.9, "tasks_running": 16.7,
                   "first_row": 23.9}


def test_without_a_resume_the_window_is_the_horizon(tmp_path):
    kill = datetime(2026, 12, 7, 11, 17, 11).timestamp()
    _write(tmp_path, kill)
    got = phases(JOB, kill, None, log_dir=tmp_path, horizon_s=30)
    assert got["tasks_running"] == 16.7 and got["first_row"] is None  # the next cell's job is outside the window
