"""Pipeline options shared by every pipeline, with help text and units in their names.

Connection settings (hosts, credentials) come from the environment (io_connectors.settings), never from
flags. `finalize_options` fills the runner defaults that make `--runner=FlinkRunner` work on the local
stack: the Beam job server, the Python worker pool (EXTERNAL environment), streaming and checkpointing.
"""

from __future__ import annotations

from typing import List, Optional

from apache_beam.options.pipeline_options import (FlinkRunnerOptions, PipelineOptions, PortableOptions,
                                                  StandardOptions)

from io_connectors import settings

START_FROM = ("committed", "earliest", "latest")


def _true_or_false(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(f"expected true or false, got {value!r}")
    return value.lower() == "true"


class FlinkCheckpointOptions(PipelineOptions):
    """Flink options the Python SDK does not declare; forwarded to the Java runner by name."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--max_bundle_size", type=int, default=None,
                            help="Most elements in one bundle of a Python step (default here: 10000, the "
                                 "archive 1000; Beam's: 1000). Sinks flush per batch inside a bundle, so bigger "
                                 "bundles mostly save the per-bundle round trips between Flink and the Python "
                                 "workers (benchmarks/bench_pipelines.py); the TaskManager may push a whole "
                                 "bundle to a worker before it waits, so large records want small bundles.")
        parser.add_argument("--max_bundle_time_millis", type=int, default=None,
                            help="Longest a bundle stays open, milliseconds (default here: 500; Beam's: 1000): "
                                 "bounds the latency the bundle size adds at low rates.")
        parser.add_argument("--checkpointing_interval", type=int, default=None,
                            help="Flink checkpoint interval in milliseconds (offsets are committed to Kafka on "
                                 "completed checkpoints). Default on Flink: 10000.")
        parser.add_argument("--min_pause_between_checkpoints", type=int, default=None,
                            help="Minimum pause between Flink checkpoints, milliseconds.")
        parser.add_argument("--savepoint_path", default=None,
                            help="Restore the job from this savepoint or retained checkpoint (upgrades, rollbacks).")
        parser.add_argument("--allow_non_restored_state", action="store_true", default=None,
                            help="Skip savepoint state that maps to no operator (a step was removed).")
        parser.add_argument("--retain_externalized_checkpoints_on_cancellation", action="store_true", default=None,
                            help="Keep the last checkpoint when the job is cancelled.")
        parser.add_argument("--finish_bundle_before_checkpointing", type=_true_or_false, default=None,
                            help="true (the default here): every step finishes its bundle and sends its output on "
                                 "before a checkpoint barrier. false (Beam's default) parks the output of a bundle "
                                 "that a checkpoint cuts in the step's state until the step's next element or "
                                 "watermark: after the last record of a burst, its dead letters may never leave.")


class KafkaSourceOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--consumer_group", default=None,
                            help="Kafka consumer group (offsets are committed on completed Flink checkpoints). "
                                 "Default: iheardai-<pipeline>.")
        parser.add_argument("--start_from", default="committed", choices=START_FROM,
                            help="'committed': resume the consumer group (a new group starts at the earliest "
                                 "offset); 'earliest' or 'latest': reposition the group there before the job "
                                 "starts (replays). Use --start_read_time_ms to start from a timestamp.")
        parser.add_argument("--start_read_time_ms", type=int, default=None,
                            help="Reposition the group to the first offset at/after this epoch-ms timestamp in "
                                 "every partition (backfills and replays); overrides --start_from.")
        parser.add_argument("--idle_partition_timeout_seconds", type=float, default=60.0,
                            help="A partition with no record since the job started goes idle (event time follows "
                                 "the clock) once caught up this long; -1: Beam's own read (README: quiet partitions).")
        parser.add_argument("--expansion_service", default=None,
                            help="host:port of the Beam Kafka expansion service "
                                 "(default: $BEAM_EXPANSION_SERVICE, the local stack's localhost:8097).")
        parser.add_argument("--max_payload_bytes", type=int, default=1024 * 1024,
                            help="Records larger than this are dead letters (bytes).")
        parser.add_argument("--max_num_records", type=int, default=None,
                            help="Stop after reading this many records (tests and demos only).")


class SinkOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--pg_batch_size", type=int, default=500,
                            help="Rows per Postgres upsert round trip.")
        parser.add_argument("--pg_max_attempts", type=int, default=6,
                            help="Attempts for a batch on transient Postgres errors (jittered backoff).")
        parser.add_argument("--redis_batch_size", type=int, default=500,
                            help="Session events buffered per Redis write (sent as pipelines of 100 scripts).")
        parser.add_argument("--redis_max_attempts", type=int, default=6,
                            help="Attempts for a batch on transient Redis errors (jittered backoff).")


class WindowOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--session_gap_seconds", type=int, default=1800,
                            help="Inactivity that closes a session window (seconds).")
        parser.add_argument("--allowed_lateness_seconds", type=int, default=3600,
                            help="How late an event may arrive and still correct its session (seconds).")
        parser.add_argument("--early_firing_seconds", type=int, default=5,
                            help="Processing-time delay between early panes of a running window (seconds).")
        parser.add_argument("--billing_allowed_lateness_seconds", type=int, default=6 * 3600,
                            help="How late usage may arrive and still correct its hour (seconds).")
        parser.add_argument("--archive_allowed_lateness_seconds", type=int, default=2 * 3600,
                            help="How late an event may arrive and still be archived in its hour (seconds).")
        parser.add_argument("--archive_late_firing_delay_seconds", type=int, default=60,
                            help="Late archive data is batched into one extra file per this delay (seconds).")
        parser.add_argument("--archive_shards", type=int, default=1,
                            help="Parquet files per topic and hour (write parallelism).")


class ArchiveOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--archive_prefix", default="",
                            help="Object key prefix of the archive inside the Spaces bucket, ending with '/' "
                                 "(default: the bucket root). Tests and backfills use their own prefix.")


class TransformOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--pii_policy_file", default=None,
                            help="Per-field PII policy (JSON). Default: $PII_POLICY_FILE or config/pii_policy.json.")
        parser.add_argument("--price_table_file", default=None,
                            help="Model price table (JSON). Default: $MODEL_PRICE_TABLE_FILE or "
                                 "config/model_prices.json.")
        parser.add_argument("--redis_ttl_seconds", type=int, default=7 * 24 * 3600,
                            help="TTL of the Redis hot session keys (seconds, 0 = no expiry).")


def _has_flag(argv: List[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in argv)


# Beam's own options that matter on Flink, with help for this project (Beam's speaks of Dataflow).
_RUNNER_FLAGS = (
    ("--runner", "FlinkRunner (the default), PortableRunner, or DirectRunner for a run in this process."),
    ("--flink_master", "host:port of the Flink cluster's REST API, e.g. localhost:8081 (default: the job "
                       "server's cluster)."),
    ("--job_endpoint", "host:port of the Beam job server (default: $BEAM_JOB_ENDPOINT, the local stack's "
                       "localhost:8099)."),
    ("--environment_type", "Where the Python workers run (default: EXTERNAL, the worker pool)."),
    ("--environment_config", "host:port of the worker pool (default: $BEAM_WORKER_POOL, localhost:50000)."),
    ("--parallelism", "Parallelism of every step on Flink (default: 2)."),
    ("--sdk_worker_parallelism", "Python SDK worker processes per TaskManager for a job (default: 1, one core "
                                 "for all Python steps of the job; 2 was 17 percent faster for the KPI pipeline on the "
                                 "local stack, at the cost of a second worker's memory and gRPC buffers)."),
    ("--max_parallelism", "Most parallelism the job can be rescaled to (key groups of keyed state)."),
    ("--job_name", "Flink job name (default: iheardai-<pipeline>); the launcher and flink-deploy/flinkctl.py "
                   "find the job by it."),
)
_WAIT_FLAG = ("--no_wait_until_finish", "Return once the job is RUNNING and healthy (--health_period_seconds) "
                                        "instead of waiting until it ends; the job keeps running.")


def _option_classes() -> List[type]:
    """Every PipelineOptions class loaded, subclasses of subclasses included, in declaration order."""
    seen: List[type] = []
    stack = list(PipelineOptions.__subclasses__())
    while stack:
        cls = stack.pop(0)
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return seen


def _add_group(parser, title: str, classes=(), flags=()) -> None:
    import argparse

    group = parser.add_argument_group(title)
    for flag, text in flags:
        group.add_argument(flag, help=text, action="store_true" if flag == _WAIT_FLAG[0] else "store")
    for cls in classes:
        try:
            cls._add_argparse_args(group)
        except argparse.ArgumentError:
            pass  # an option declared by two classes is listed once


def print_help(pipeline: str, description: str, every_option: bool = False) -> None:
    """--help: the pipeline's own options, grouped, then the Flink and launcher essentials.
    --help_all (every_option): every option of every PipelineOptions class, Beam's included."""
    import argparse
    import sys

    from apache_beam.options.pipeline_options import _BeamArgumentParser

    from beam_pipelines.launcher import LauncherOptions

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = f"python -m {spec.name if spec else 'beam_pipelines.' + pipeline}"
    parser = _BeamArgumentParser(
        prog=prog, description=description,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=44, width=110),
        allow_abbrev=False, add_help=False, usage=f"{prog} [--option=value ...]",
        epilog="Connections (Kafka, Postgres, Redis, Spaces) and secrets come from the environment, never from "
               "flags: see README.md.\n" + ("" if every_option else
                                             "--help_all lists every option Beam declares (Dataflow, Google "
                                             "Cloud, Azure, ...: hundreds of lines)."))
    parser.add_argument("-h", "--help", action="store_true", help="This list.")
    parser.add_argument("--help_all", action="store_true", help="Every option, Beam's included.")
    classes = _option_classes()
    if every_option:
        for cls in classes:
            _add_group(parser, cls.__name__, [cls])
        parser.print_help()
        return
    titled = {KafkaSourceOptions: "Kafka source", WindowOptions: "Windows", SinkOptions: "Sinks",
              TransformOptions: "Transforms"}
    for cls, title in titled.items():
        _add_group(parser, title, [cls])
    ours = [c for c in classes if not c.__module__.startswith("apache_beam.")
            and c not in titled and c not in (FlinkCheckpointOptions, LauncherOptions)]
    for cls in ours:  # a pipeline's own options (archive: --archive_prefix)
        _add_group(parser, cls.__name__[:-len("Options")] if cls.__name__.endswith("Options") else cls.__name__,
                   [cls])
    _add_group(parser, "Flink runner", [FlinkCheckpointOptions], _RUNNER_FLAGS)
    _add_group(parser, "Launcher (see beam_pipelines/launcher.py)", [LauncherOptions], [_WAIT_FLAG])
    parser.print_help()


def finalize_options(argv: Optional[List[str]], pipeline: str, description: str = "") -> PipelineOptions:
    """Parse argv and fill local-stack defaults for the Flink runner and the Kafka source."""
    argv = list(argv or [])
    if "--help" in argv or "-h" in argv or "--help_all" in argv:
        print_help(pipeline, description, every_option="--help_all" in argv)
        raise SystemExit(0)
    if not _has_flag(argv, "--runner"):
        argv.append("--runner=FlinkRunner")
    opts = PipelineOptions(argv)
    std = opts.view_as(StandardOptions)
    if std.runner in ("FlinkRunner", "PortableRunner"):
        std.streaming = True
        portable = opts.view_as(PortableOptions)
        flink = opts.view_as(FlinkRunnerOptions)
        if not portable.job_endpoint and not getattr(flink, "flink_job_server_jar", None):
            portable.job_endpoint = settings.get("BEAM_JOB_ENDPOINT", "localhost:8099")
        if not portable.environment_type:
            portable.environment_type = "EXTERNAL"
            # an --environment_config given alone names another pool (it was silently replaced before)
            portable.environment_config = portable.environment_config or settings.get("BEAM_WORKER_POOL",
                                                                                      "localhost:50000")
        ckpt = opts.view_as(FlinkCheckpointOptions)
        if ckpt.checkpointing_interval is None:
            ckpt.checkpointing_interval = 10_000
        if ckpt.finish_bundle_before_checkpointing is None:
            # Beam's Flink runner otherwise finishes a bundle cut by a checkpoint inside snapshotState and keeps its
            # output in operator state, flushed only by the step's next element or watermark: on the local stack
            # the last dead letters of a burst stayed there until the next record arrived (minutes, or never), while
            # the checkpoint had committed the offsets past their records (tests/e2e/test_recovery_flink.py).
            ckpt.finish_bundle_before_checkpointing = True
        if not _has_flag(argv, "--parallelism"):
            flink.parallelism = 2
        if ckpt.max_bundle_size is None:
            # A bundle bounds how much the TaskManager pushes to a Python worker before waiting for it: small
            # events (turns, frontend events: ~1 KB) take 10,000 per bundle; the archive reads every topic,
            # dead letters of up to 1 MB included, and keeps Beam's 1,000. (Catching up a backlog of ~1M records
            # the archive ran the local TaskManager out of direct memory in gRPC buffers at either size.)
            ckpt.max_bundle_size = 1_000 if pipeline == "archive" else 10_000
        if ckpt.max_bundle_time_millis is None:
            ckpt.max_bundle_time_millis = 500
        from apache_beam.options.pipeline_options import GoogleCloudOptions  # declares --job_name

        gcp = opts.view_as(GoogleCloudOptions)
        if not gcp.job_name:
            gcp.job_name = f"iheardai-{pipeline}"  # how the launcher and flink-deploy/flinkctl.py find the job
    _check_launcher_options(opts)
    src = opts.view_as(KafkaSourceOptions)
    if not src.consumer_group:
        src.consumer_group = f"iheardai-{pipeline}"
    if not src.expansion_service:
        src.expansion_service = settings.get("BEAM_EXPANSION_SERVICE", "localhost:8097")
    if src.max_payload_bytes <= 0:
        raise ValueError("--max_payload_bytes must be positive")
    win = opts.view_as(WindowOptions)
    if win.session_gap_seconds <= 0 or win.early_firing_seconds <= 0 or win.archive_shards < 1 or min(
            win.allowed_lateness_seconds, win.billing_allowed_lateness_seconds,
            win.archive_allowed_lateness_seconds, win.archive_late_firing_delay_seconds) < 0:
        raise ValueError("window options: gaps, firing delays and shards must be positive, lateness >= 0")
    _export_local_secrets()
    return opts


def _check_launcher_options(opts: PipelineOptions) -> None:
    from beam_pipelines.launcher import LauncherOptions

    launch = opts.view_as(LauncherOptions)
    if launch.max_restarts < 0 or launch.health_period_seconds < 0 or min(
            launch.restart_window_seconds, launch.startup_timeout_seconds) <= 0:
        raise ValueError("launcher options: --max_restarts and --health_period_seconds must be >= 0, "
                         "--restart_window_seconds and --startup_timeout_seconds positive")


def _export_local_secrets() -> None:
    """On the local stack, make the PII key and the field key ring visible to this process the way a pod's
    Secret would (the value or the `_FILE` setting, whichever the settings file has)."""
    import os

    for name in ("PII_HMAC_KEY", "IHEARDAI_FIELD_KEYS"):
        if name not in os.environ and f"{name}_FILE" not in os.environ:
            for setting in (name, f"{name}_FILE"):
                value = settings.get(setting)
                if value:
                    os.environ[setting] = value
                    break


def consumer_config(opts: PipelineOptions) -> dict:
    src = opts.view_as(KafkaSourceOptions)
    conf = settings.KafkaSettings.from_env().client_config()
    conf["group.id"] = src.consumer_group
    # Offsets are committed only on completed checkpoints (commit_offset_in_finalize), never by the consumer
    # itself: Beam's cross-language Kafka read replaces KafkaIO's defaults with this config, so without
    # this line the Java consumer auto-commits every record it fetched, and a job that restarts before its
    # first checkpoint (nothing to restore) resumes after records it never processed.
    conf["enable.auto.commit"] = "false"
    # A group without a committed offset reads from the start of the partition; --start_from=latest and
    # --start_read_time_ms commit the group's positions before the job starts (run_pipeline), so a restart
    # before the first checkpoint resumes there too, never from the topic end.
    conf["auto.offset.reset"] = "earliest"
    return conf
