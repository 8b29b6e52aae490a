"""WriteHourlyParquet against the real local S3 server, read back by an independent reader (pyarrow.dataset
over the S3 prefix, hive partitions): exact rows per hour, late data, replay, schema evolution, dead letters.

    .venv/bin/python -m pytest tests/integration/test_parquet_archive.py -m integration
"""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from io_connectors.parquet_archive import (ArchiveKafkaRecords, _default_shard, archive_schema,
                                           check_schema_evolution, s3_client)
from events.records import KafkaRecord

pytestmark = pytest.mark.integration
TOPIC = "text.agent.turn.completed"
H9 = 1767258000  # 2026-01-01T09:00:00Z, seconds


def record(i, t_s, partition=0):
    payload = json.dumps({"session_id": f"s{i % 3}", "turn_id": f"t{i}", "tokens_in": i, "timestamp": t_s * 1000,
                          "event_type": "text_agent.turn_completed", "schema_version": 1}).encode()
    return KafkaRecord(TOPIC, partition, i, f"s{i % 3}".encode(), payload, int(t_s * 1000))


def reader_fs(s):
    scheme, host = s.endpoint.split("://", 1)
    return pafs.S3FileSystem(access_key=s.access_key, secret_key=s.secret_key, endpoint_override=host,
                             scheme=scheme, region=s.region)


def scan(s, prefix, schema=None):
    part = ds.partitioning(pa.schema([("date", pa.string()), ("hour", pa.string())]), flavor="hive")
    return ds.dataset(f"{s.bucket}/{prefix}{TOPIC}", filesystem=reader_fs(s), format="parquet",
                      partitioning=part, schema=schema).to_table()


def rows_per_hour(table):
    counts = table.group_by(["date", "hour"]).aggregate([([], "count_all")]).to_pylist()
    return {(r["date"], r["hour"]): r["count_all"] for r in counts}


def listing(s, prefix):
    out = s3_client(s).list_objects_v2(Bucket=s.bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: o["ETag"] for o in out}


@pytest.fixture
def prefix(spaces_settings, run_id):
    p = f"tests/{run_id}/"
    yield p
    c = s3_client(spaces_settings)
    for o in c.list_objects_v2(Bucket=spaces_settings.bucket, Prefix=p).get("Contents", []):
        c.delete_object(Bucket=spaces_settings.bucket, Key=o["Key"])


def test_hourly_files_round_trip_with_late_data_and_dead_letters(spaces_settings, prefix):
    on_time_9 = [record(i, H9 + 60 * i, partition=i % 2) for i in range(7)]
    hour_10 = [record(100 + i, H9 + 3600 + 10 * i) for i in range(5)]
    late_9 = [record(200, H9 + 3000), record(201, H9 + 3100)]
    broken = record(300, H9 + 3600 + 5)._replace(value=None)  # payload is required: a dead letter
    stream = (EventStream()
              .advance_watermark_to(H9)
              .add_elements([TimestampedValue(r, r.timestamp_ms / 1000) for r in on_time_9 + hour_10 + [broken]])
              .advance_watermark_to(H9 + 2 * 3600 + 1)             # both hours fire on time
              .add_elements([TimestampedValue(r, r.timestamp_ms / 1000) for r in late_9])  # late, within lateness
              .advance_watermark_to_infinity())
    opts = PipelineOptions(["--runner=DirectRunner"])
    opts.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=opts) as p:
        out = (p | stream | ArchiveKafkaRecords(TOPIC, prefix=prefix, num_shards=2, late_firing_delay_s=0,
                                                allowed_lateness_s=3 * 3600, settings=spaces_settings))
        assert_that(out.dead_letter | beam.Map(lambda d: (d.source_offset, d.step, d.error_class)),
                    equal_to([(300, f"WriteHourlyParquet[{TOPIC}]", "sink_permanent_error")]), label="Dead")
        assert_that(out.files | beam.Map(lambda f: ((f["window_start"], f["pane_index"] > 0), f["rows"]))
                    | beam.CombinePerKey(sum),
                    equal_to([((H9, False), 7), ((H9 + 3600, False), 5), ((H9, True), 2)]), label="Panes")

    table = scan(spaces_settings, prefix)
    assert rows_per_hour(table) == {("2026-01-01", "09"): 9, ("2026-01-01", "10"): 5}
    assert sorted(table.column("offset").to_pylist()) == list(range(7)) + list(range(100, 105)) + [200, 201]
    keys = sorted(listing(spaces_settings, prefix))
    assert all(k.startswith(f"{TOPIC}/date=2026-01-01/hour=") and k.endswith(".parquet") for k in keys)
    shards = lambda recs: {_default_shard({"topic": r.topic, "partition": r.partition, "offset": r.offset}, 2)
                           for r in recs}
    assert {k.split("/")[-1][5:9] for k in keys if "hour=09/" in k and "-p0000" in k} == \
        {f"{n:04d}" for n in shards(on_time_9)}  # on-time files of hour 09, untouched by the late pane
    assert {k.split("/")[-1][5:9] for k in keys if "hour=09/" in k and "-p0001" in k} == \
        {f"{n:04d}" for n in shards(late_9)}  # the late pane: files of its own in the right hour
    got = table.filter(pa.compute.equal(table.column("offset"), 3)).to_pylist()[0]
    assert got["payload"] == on_time_9[3].value and got["session_id"] == "s0" and got["tokens_in"] == 3
    assert got["event_time"].timestamp() == H9 + 180


def write_batch(rows, prefix, settings, schema=None, **kw):
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        # a Map returning TimestampedValue types its output as TimestampedValue: say what the element is
        (p | beam.Create(rows)
         | beam.Map(lambda r: TimestampedValue(r, r.timestamp_ms / 1000)).with_output_types(KafkaRecord)
         | ArchiveKafkaRecords(TOPIC, schema, prefix=prefix, num_shards=3, settings=settings, **kw))


def test_write_twice_overwrites_the_same_files(spaces_settings, prefix):
    rows = [record(i, H9 + 97 * i, partition=i % 3) for i in range(60)]  # spans hours 09 and 10
    write_batch(rows, prefix, spaces_settings, multipart_threshold_bytes=1)  # multipart, completed at the end
    first = listing(spaces_settings, prefix)
    assert all(etag.strip('"').endswith("-1") for etag in first.values())  # multipart ETags
    write_batch(list(reversed(rows)), prefix, spaces_settings, multipart_threshold_bytes=1)  # replay, reordered
    assert listing(spaces_settings, prefix) == first  # same names, byte-identical content (same ETags)
    assert rows_per_hour(scan(spaces_settings, prefix)) == {("2026-01-01", "09"): 38, ("2026-01-01", "10"): 22}


def test_a_new_optional_field_reads_together_with_old_files(spaces_settings, prefix):
    v1 = archive_schema(TOPIC)
    v2 = v1.append(pa.field("sentiment", pa.string()))
    check_schema_evolution(v1, v2)
    with pytest.raises(ValueError, match="must be nullable"):
        check_schema_evolution(v1, v1.append(pa.field("x", pa.string(), nullable=False)))
    with pytest.raises(ValueError, match="changed type"):
        check_schema_evolution(v1, v1.set(v1.get_field_index("tokens_in"), pa.field("tokens_in", pa.string())))
    write_batch([record(i, H9 + i) for i in range(4)], prefix, spaces_settings, v1)
    new = []
    for i in range(10, 13):
        r = record(i, H9 + 3600 + i)
        doc = dict(json.loads(r.value), sentiment="positive")
        new.append(r._replace(value=json.dumps(doc).encode()))
    write_batch(new, prefix, spaces_settings, v2)
    table = scan(spaces_settings, prefix, schema=v2.append(pa.field("date", pa.string()))
                 .append(pa.field("hour", pa.string())))
    assert rows_per_hour(table) == {("2026-01-01", "09"): 4, ("2026-01-01", "10"): 3}
    by_hour = {h: sorted(set(table.filter(pa.compute.equal(table.column("hour"), h)).column("sentiment")
                             .to_pylist()), key=str) for h in ("09", "10")}
    assert by_hour == {"09": [None], "10": ["positive"]}
