"""Archive pipeline on the Flink cluster: a mixed event set on every topic, spanning two event-time hours and
including malformed records, lands in the hourly Parquet archive exactly once per record, in its topic's
event-time hour, with the payload byte for byte; read back independently with pyarrow.dataset over S3."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Dict, List, Tuple

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from events import topics
from io_connectors.clients import s3_client
from tests.e2e.flink_helpers import (commit_group_at_end, end_offsets, poll, produce_with_offsets, read_from,
                                     readme_pipeline)
from events.dead_letters import DeadLetter
from workloads.generator import MixedWorkload, ProducedRecord, TurnWorkload
from io_connectors.settings import librdkafka_for

pytestmark = pytest.mark.e2e
HOUR_MS = 3_600_000
MALFORMED_KINDS = 5  # TurnWorkload.malformed: not JSON, not UTF-8, missing fields, wrong type, not an object


def event_set(run_id: str, hour_starts_ms: List[int]) -> List[Tuple[str, ProducedRecord]]:
    """Generated events of every topic plus every kind of malformed record, in each of the given hours.

    Account ids carry the run id, so pipelines other agents run on the same topics never add these events to
    their own per-account results."""
    out: List[Tuple[str, ProducedRecord]] = []
    for k, start in enumerate(hour_starts_ms):
        for topic, rec in MixedWorkload(seed=11 + k, start_ms=start + 20 * 60_000, run_id=run_id).generate(120).records:
            ev = json.loads(rec.value)
            if ev.get("account_id"):
                ev["account_id"] = f"{run_id}-{ev['account_id']}"
            out.append((topic, ProducedRecord(rec.key, json.dumps(ev).encode(), rec.timestamp_ms, rec.kind)))
        bad, rng = TurnWorkload(run_id=run_id, start_ms=start + 40 * 60_000), random.Random(k)
        for t, topic in enumerate(topics.TOPICS):
            for i in range(MALFORMED_KINDS):
                out.append((topic.name, ProducedRecord(None if i % 2 else b"bad", bad.malformed(rng, i),
                                                       start + 40 * 60_000 + 1000 * (t * MALFORMED_KINDS + i),
                                                       "malformed")))
    return out


def produce_watermark_ticks(run_id: str, bootstrap: str, ts_ms: int) -> None:
    """One record per partition of every topic, newer than every archived hour: Beam's Kafka reader moves
    its watermark per partition on CreateTime, so each partition needs a newer record for the hours to close."""
    from confluent_kafka import Producer

    p = Producer({**librdkafka_for(bootstrap), "acks": "all", "enable.idempotence": True})
    value = json.dumps({"archive_e2e_watermark": run_id}).encode()
    for t in topics.TOPICS:
        for partition in range(t.partitions):
            p.produce(t.name, value=value, partition=partition, timestamp=ts_ms)
    assert p.flush(30) == 0, "watermark records not delivered"


def scan(spaces, prefix: str, topic: str) -> pa.Table:
    scheme, host = spaces.endpoint.split("://", 1)
    fs = pafs.S3FileSystem(access_key=spaces.access_key, secret_key=spaces.secret_key, endpoint_override=host,
                           scheme=scheme, region=spaces.region)
    part = ds.partitioning(pa.schema([("date", pa.string()), ("hour", pa.string())]), flavor="hive")
    return ds.dataset(f"{spaces.bucket}/{prefix}{topic}", filesystem=fs, format="parquet",
                      partitioning=part).to_table()


def hour_of(ts_ms: int) -> Tuple[str, str]:
    t = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    return f"{t:%Y-%m-%d}", f"{t:%H}"


def test_archive_every_topic_hourly_raw_payloads_round_trip(stack, kafka_settings, spaces_settings, run_id):
    bootstrap = kafka_settings.bootstrap_servers
    now_ms = int(time.time() * 1000)
    this_hour = now_ms - now_ms % HOUR_MS
    hours = [this_hour - 2 * HOUR_MS, this_hour - HOUR_MS]  # two complete past event-time hours
    events = event_set(run_id, hours)
    assert {t for t, _ in events} == {t.name for t in topics.TOPICS}
    by_topic: Dict[str, List[ProducedRecord]] = {}
    for topic, rec in events:
        by_topic.setdefault(topic, []).append(rec)

    # Read exactly what this test produces: the group's offsets at the end first. (Not --start_read_time_ms: on
    # a broker that other runs fill, a record stamped in the future, e.g. a watermark heartbeat, makes
    # Kafka's offsetsForTimes start there, and the job read 1.5 million other records.)
    commit_group_at_end(f"e2e-archive-{run_id}", [t.name for t in topics.TOPICS], bootstrap)
    dlq_start = {t: end_offsets(topics.dlq_topic(t), bootstrap) for t in by_topic}
    expected: Dict[str, Dict[Tuple[int, int], ProducedRecord]] = {}
    for topic, recs in by_topic.items():
        expected[topic] = dict(zip(produce_with_offsets(recs, topic, bootstrap), recs))
    produce_watermark_ticks(run_id, bootstrap, int(time.time() * 1000))
    want_per_hour = {topic: Counter(hour_of(r.timestamp_ms) for r in recs.values()) for topic, recs in expected.items()}
    assert all(len(c) == 2 for c in want_per_hour.values()), "every topic must span two hours"

    prefix = f"tests/{run_id}/"
    job = readme_pipeline("archive", run_id, None, f"--archive_prefix={prefix}",
                          "--archive_late_firing_delay_seconds=1", "--archive_allowed_lateness_seconds=86400")
    try:
        job.__enter__()
        def mine(topic: str) -> List[dict]:
            table = scan(spaces_settings, prefix, topic)
            return [r for r in table.to_pylist() if (r["partition"], r["offset"]) in expected[topic]]

        def archived():
            got = {topic: mine(topic) for topic in expected}
            return got if all(len(got[t]) >= len(expected[t]) for t in expected) else None

        got = poll(archived, 150, "every produced record in the archive", interval_s=3)

        for topic, rows in got.items():
            positions = Counter((r["partition"], r["offset"]) for r in rows)
            assert max(positions.values()) == 1, f"{topic}: a record archived twice"
            assert Counter((r["date"], r["hour"]) for r in rows) == want_per_hour[topic], topic
            for r in rows:
                rec = expected[topic][(r["partition"], r["offset"])]
                assert r["payload"] == rec.value, "the raw payload, byte for byte"
                assert r["key"] == rec.key and r["topic"] == topic
                assert int(r["event_time"].timestamp() * 1000) == rec.timestamp_ms
                assert (r["date"], r["hour"]) == hour_of(rec.timestamp_ms), "the record's event-time hour"
                if rec.kind == "malformed":
                    assert r["session_id"] is None or r["session_id"] == f"{run_id}-bad"
                else:
                    ev = json.loads(rec.value)
                    assert (r["event_type"], r["session_id"], r["account_id"]) == \
                        (ev.get("event_type"), ev.get("session_id"), ev.get("account_id"))
            assert sum(1 for r in rows if expected[topic][(r["partition"], r["offset"])].kind == "malformed") \
                == 2 * MALFORMED_KINDS, f"{topic}: malformed records are archived raw, not dropped"

        turns = {(r["partition"], r["offset"]): r for r in got[topics.TURNS]}
        for pos, rec in expected[topics.TURNS].items():  # the topic's own parsed columns
            if rec.kind != "malformed":
                ev = json.loads(rec.value)
                assert (turns[pos]["turn_id"], turns[pos]["tokens_in"], turns[pos]["model_name"]) == \
                    (ev["turn_id"], ev["tokens_in"], ev["model_name"])

        keys = [o["Key"] for o in s3_client(spaces_settings).list_objects_v2(
            Bucket=spaces_settings.bucket, Prefix=prefix).get("Contents", [])]
        assert keys and all(k.split("/")[-1].startswith("part-0000-of-0001-p") and k.endswith(".parquet")
                            for k in keys)

        for topic in expected:  # nothing the archive read became one of its dead letters
            archive_dead = [dl for dl in map(DeadLetter.from_json, read_from(topics.dlq_topic(topic), bootstrap,
                                                                              dlq_start[topic]))
                            if (dl.source_partition, dl.source_offset) in expected[topic]
                            and dl.step.startswith(("WriteHourlyParquet", "SplitByTopic"))]
            assert not archive_dead, archive_dead[:1]
        job.assert_running()
    finally:
        job.__exit__(None, None, None)
        c = s3_client(spaces_settings)
        for o in c.list_objects_v2(Bucket=spaces_settings.bucket, Prefix=prefix).get("Contents", []):
            c.delete_object(Bucket=spaces_settings.bucket, Key=o["Key"])
