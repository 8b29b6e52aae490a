"""Spaces Parquet archive: hourly event-time windows -> `s3://<bucket>/<prefix><topic>/date=YYYY-MM-DD/hour=HH/`.

`WriteHourlyParquet(topic, schema)` takes dict rows (column -> value, matching `schema`) that carry their
event time as the element timestamp, and writes one zstd Parquet file per (hour window, shard, pane):

    <prefix><topic>/date=2026-01-01/hour=09/part-0000-of-0002-p0000-3f2a9c01d4e7.parquet

- Deterministic names: the same window, shard, pane and content always map to the same object, and rows are
  sorted (`sort_by`, default partition/offset for the raw schema), so a replay overwrites with the same bytes
  instead of adding a duplicate file. The last part is a digest of the pane's sort-key values (of the file's
  bytes without `sort_by`): pane indexes alone are not unique. A job stopped with a savepoint ends its Kafka
  read with the end-of-time watermark (Beam's Flink UnboundedSourceWrapper), which expires every open window
  into the savepoint; the restored job's next pane of that hour is index 0 again, and under an index-only name
  it replaced the pane written before the stop (tests/e2e/test_upgrade_savepoint_flink.py, 2026-12-07: 185 of
  3,376 records lost).
- Late data: windows keep `allowed_lateness_s`; each late firing is a new pane (DISCARDING) and so a new
  file (`-p0001`, ...) in the hour the events belong to; earlier files of that hour are never touched.
  Caveat: a pane's content is fixed once Flink checkpoints it, but if a failure replays records that were
  late, the runner may group them into different panes; the raw schema's (topic, partition, offset) is a
  natural key, so readers can drop such duplicates.
- Nothing partial is ever visible: a file is written completely to local disk, then uploaded; objects over
  `multipart_threshold_bytes` go up as a multipart upload completed only at the end (aborted on failure),
  smaller ones as one PUT of the complete object.
- Settings come from SPACES_* (SpacesSettings): endpoint, region, bucket, keys; path-style addressing and
  checksums only when required, which DigitalOcean Spaces and the local versitygw both accept.
- Rows that do not fit the schema become dead letters (returned as the `dead_letter` output).

Schema evolution rule (enforced by `check_schema_evolution`): a contract may only ADD fields, and every
added field must be nullable; existing fields keep their name and type (and never become non-nullable).
Readers scan old and new files together with the newest schema, e.g.
`pyarrow.dataset.dataset(path, schema=newest, partitioning="hive")`: old files read as null in new columns.
Anything else (rename, retype, removal) is a new topic/contract version written under a new prefix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import typing
import time
import zlib
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Duration

from events import topics
from io_connectors.clients import s3_client
from io_connectors.settings import SpacesSettings
from events.dead_letters import DeadLetter, ErrorKind, Tags, source_of, without_source
from events.metrics import step_namespace
from events.records import KafkaRecord

log = logging.getLogger(__name__)

HOUR_S = 3600

# The raw record: every archived topic keeps the exact bytes plus where they came from.
RAW_FIELDS = (
    pa.field("topic", pa.string(), nullable=False),
    pa.field("partition", pa.int32(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("key", pa.binary()),
    pa.field("payload", pa.binary(), nullable=False),
    pa.field("event_time", pa.timestamp("ms", tz="UTC"), nullable=False),
)
# Columns parsed out of the JSON payload for cheap filtering (null when absent or of another type).
DEFAULT_PARSED_FIELDS = (
    pa.field("event_type", pa.string()),
    pa.field("schema_version", pa.int32()),
    pa.field("session_id", pa.string()),
    pa.field("user_id", pa.string()),
    pa.field("account_id", pa.string()),
)
# Contract field types -> archive column types (a registry column of another type is refused).
_ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def parsed_fields(topic: str) -> Tuple[pa.Field, ...]:
    """DEFAULT_PARSED_FIELDS plus the registry's `archive_columns` of the topic, typed from its contract."""
    entry = topics.BY_NAME.get(topic)
    return DEFAULT_PARSED_FIELDS + (topic_fields(entry) if entry is not None else ())


def topic_fields(entry: topics.Topic) -> Tuple[pa.Field, ...]:
    """The archive columns of a registry entry, typed from its contract; ValueError for a column that is not
    a str/int/float/bool field of the contract."""
    fields = []
    for name in entry.archive_columns:
        field = entry.contract.model_fields.get(name) if entry.contract is not None else None
        annotation = field.annotation if field is not None else None
        args = [a for a in typing.get_args(annotation) if a is not type(None)]  # Optional[X] -> X
        arrow = _ARROW_TYPES.get(args[0] if len(args) == 1 else annotation)
        if arrow is None:
            raise ValueError(f"archive column {name!r} of {entry.name}: not a str/int/float/bool field of "
                             f"{getattr(entry.contract, '__name__', 'its contract')}")
        fields.append(pa.field(name, arrow))
    return tuple(fields)


RAW_SORT = (("partition", "ascending"), ("offset", "ascending"))


def raw_record_schema(parsed_fields: Sequence[pa.Field] = DEFAULT_PARSED_FIELDS) -> pa.Schema:
    """The generic archive schema: the raw record columns, then nullable parsed columns."""
    bad = [f.name for f in parsed_fields if not f.nullable]
    if bad:
        raise ValueError(f"parsed fields must be nullable: {bad}")
    return pa.schema(list(RAW_FIELDS) + list(parsed_fields))


def archive_schema(topic: str) -> pa.Schema:
    """The explicit schema for a topic's archive (raw record + the topic's parsed columns)."""
    return raw_record_schema(parsed_fields(topic))


def check_schema_evolution(old: pa.Schema, new: pa.Schema) -> None:
    """Raise ValueError unless `new` only adds nullable fields to `old` (see the module docstring)."""
    problems = []
    for f in old:
        i = new.get_field_index(f.name)
        if i < 0:
            problems.append(f"field {f.name!r} removed")
        elif not new.field(i).type.equals(f.type):
            problems.append(f"field {f.name!r} changed type {f.type} -> {new.field(i).type}")
        elif f.nullable and not new.field(i).nullable:
            problems.append(f"field {f.name!r} became non-nullable")
    problems += [f"new field {f.name!r} must be nullable" for f in new
                 if old.get_field_index(f.name) < 0 and not f.nullable]
    if problems:
        raise ValueError("incompatible schema change: " + "; ".join(problems))


_INT64 = (-2 ** 63, 2 ** 63 - 1)


def _coerce(value: Any, type_: pa.DataType) -> Any:
    """A parsed JSON value as the column's type, or None when it does not fit (never an error)."""
    if value is None:
        return None
    if pa.types.is_string(type_):
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if not text.isascii():  # a lone surrogate (a "\ud800" escape) has no UTF-8 form: Arrow would refuse the row
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return None
        return text
    if pa.types.is_integer(type_):  # the archive's integer columns are int64 (a huge JSON integer is not)
        return value if isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1] \
            else None
    if pa.types.is_floating(type_):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            return None
    if pa.types.is_boolean(type_):
        return value if isinstance(value, bool) else None
    return None


def kafka_record_to_row(record: KafkaRecord, schema: pa.Schema) -> Dict[str, Any]:
    """A KafkaRecord as a raw-schema row; parsed columns from the payload's top-level JSON keys."""
    row: Dict[str, Any] = {
        "topic": record.topic, "partition": record.partition, "offset": record.offset, "key": record.key,
        "payload": record.value,
        "event_time": datetime.fromtimestamp(record.timestamp_ms / 1000, tz=timezone.utc)}
    try:
        doc = json.loads(record.value)
    except (TypeError, ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack (issue 15)
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    for f in schema:
        if f.name not in row:
            row[f.name] = _coerce(doc.get(f.name), f.type)
    return row


def object_key(prefix: str, topic: str, window_start_s: float, shard: int, num_shards: int, pane_index: int,
               file_prefix: str = "part", content_id: Optional[str] = None) -> str:
    """`<prefix><topic>/date=YYYY-MM-DD/hour=HH/<file_prefix>-SSSS-of-NNNN-pPPPP[-<content_id>].parquet` (UTC)."""
    start = datetime.fromtimestamp(window_start_s, tz=timezone.utc)
    suffix = f"-{content_id}" if content_id else ""
    return (f"{prefix}{topic}/date={start:%Y-%m-%d}/hour={start:%H}/"
            f"{file_prefix}-{shard:04d}-of-{num_shards:04d}-p{pane_index:04d}{suffix}.parquet")


def content_id(table: pa.Table, sort_by: Sequence[Tuple[str, str]], path: Optional[str] = None) -> str:
    """12 hex digits naming a pane's content: a digest of its (sorted) sort-key values, which identify the rows
    (topic/partition/offset for the raw schema) and read the same in any pyarrow version; of the written
    file's bytes when there is no sort key."""
    h = hashlib.blake2b(digest_size=6)
    if sort_by:
        for name, _ in sort_by:
            h.update(name.encode())
            h.update(repr(table.column(name).to_pylist()).encode())
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _default_shard(row: Dict[str, Any], num_shards: int) -> int:
    if num_shards == 1:
        return 0
    if "partition" in row and "offset" in row:
        ident = f"{row.get('topic')}:{row['partition']}:{row['offset']}"
    else:
        ident = repr(sorted(row.items()))
    return zlib.crc32(ident.encode()) % num_shards


def rows_to_table(rows: Sequence[Dict[str, Any]], schema: pa.Schema,
                  sort_by: Sequence[Tuple[str, str]] = ()) -> Tuple[pa.Table, List[Tuple[Dict[str, Any], str]]]:
    """Rows -> one Arrow table of `schema` (sorted); rows that do not fit come back as (row, reason)."""
    try:
        table = pa.Table.from_pylist(list(rows), schema=schema)
        bad: List[Tuple[Dict[str, Any], str]] = []
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        good, bad = [], []
        for r in rows:  # isolate the offenders
            try:
                pa.Table.from_pylist([r], schema=schema)
                good.append(r)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
                bad.append((r, f"{type(e).__name__}: {e}"))
        table = pa.Table.from_pylist(good, schema=schema)
    nonnull = [f.name for f in schema if not f.nullable]
    if nonnull and table.num_rows:  # Arrow accepts nulls in non-nullable fields; Parquet readers would not
        mask = pc.is_valid(table.column(nonnull[0]))
        for name in nonnull[1:]:
            mask = pc.and_(mask, pc.is_valid(table.column(name)))
        if not pc.all(mask).as_py():
            keep = mask.to_pylist()
            bad += [(r, f"null in a non-nullable field of {nonnull}")
                    for r, k in zip(table.to_pylist(), keep) if not k]
            table = table.filter(mask)
    if sort_by and table.num_rows:
        table = table.sort_by(list(sort_by))
    return table, bad


def _int_or_none(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class _WriteParquetFn(beam.DoFn):
    """(shard, rows) of one window pane -> one Parquet object; emits {key, rows, bytes, ...} per file."""

    def __init__(self, topic: str, schema: pa.Schema, prefix: str, file_prefix: str, num_shards: int,
                 sort_by: Sequence[Tuple[str, str]], row_group_rows: int, multipart_threshold_bytes: int,
                 settings: Optional[SpacesSettings]):
        self._topic, self._schema, self._prefix, self._file_prefix = topic, schema, prefix, file_prefix
        self._num_shards, self._sort_by, self._row_group_rows = num_shards, tuple(sort_by), row_group_rows
        self._threshold, self._settings = multipart_threshold_bytes, settings
        ns = step_namespace(f"WriteHourlyParquet[{topic}]")
        self._files = Metrics.counter(ns, "parquet_files_written")
        self._rows = Metrics.counter(ns, "parquet_rows_written")
        self._dead = Metrics.counter(ns, "parquet_dead_letters")
        self._upload_ms = Metrics.distribution(ns, "parquet_upload_ms")
        self._client = None

    def setup(self):
        self._settings = self._settings or SpacesSettings.from_env()
        self._client = s3_client(self._settings)

    def teardown(self):
        if self._client is not None:
            self._client.close()
            self._client = None

    def process(self, element: Tuple[int, Iterable[Dict[str, Any]]], win=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam):
        from boto3.s3.transfer import TransferConfig

        shard, rows = element
        table, bad = rows_to_table(list(rows), self._schema, self._sort_by)
        for row, reason in bad:
            self._dead.inc()
            raw = row.get("payload") if isinstance(row.get("payload"), bytes) else \
                json.dumps(without_source(row), default=str, sort_keys=True).encode()
            # the raw schema's topic/partition/offset are the record's own; other schemas may carry SOURCE_KEY
            source = source_of(row) or (row.get("topic") or self._topic, _int_or_none(row.get("partition")),
                                        _int_or_none(row.get("offset")))
            event_time = row.get("event_time")
            yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, DeadLetter.of(
                raw, step=f"WriteHourlyParquet[{self._topic}]", error_class=ErrorKind.SINK_PERMANENT.value,
                error_message=reason, source=source,
                event_time_ms=int(event_time.timestamp() * 1000) if isinstance(event_time, datetime) else None))
        if table.num_rows == 0:
            return
        fd, path = tempfile.mkstemp(suffix=".parquet")
        os.close(fd)
        try:
            pq.write_table(table, path, compression="zstd", row_group_size=self._row_group_rows,
                           write_statistics=True)
            size = os.path.getsize(path)
            key = object_key(self._prefix, self._topic, float(win.start), shard, self._num_shards,
                             pane.index, self._file_prefix, content_id(table, self._sort_by, path))
            t0 = time.monotonic()
            self._client.upload_file(path, self._settings.bucket, key,
                                     ExtraArgs={"ContentType": "application/vnd.apache.parquet"},
                                     Config=TransferConfig(multipart_threshold=self._threshold,
                                                           multipart_chunksize=max(self._threshold, 5 << 20)))
            self._upload_ms.update(int((time.monotonic() - t0) * 1000))
        finally:
            os.unlink(path)
        self._files.inc()
        self._rows.inc(table.num_rows)
        yield {"key": key, "rows": table.num_rows, "bytes": size, "window_start": float(win.start),
               "pane_index": pane.index, "shard": shard}


@beam.typehints.with_input_types(Dict[str, Any])
class WriteHourlyParquet(beam.PTransform):
    """PCollection[dict] (event-timestamped) -> hourly Parquet files on Spaces.

    Returns the ParDo's outputs: `.files` (one dict per object written) and `.dead_letter` (DeadLetter for
    rows that do not fit the schema). `late_firing_delay_s` batches late data into one pane per delay
    (0 = a pane per late element); `allowed_lateness_s` bounds how late an event may be and still be
    archived (later ones are dropped by the window, counted by Beam as dropped-due-to-lateness).
    """

    def __init__(self, topic: str, schema: Optional[pa.Schema] = None, *, num_shards: int = 1,
                 allowed_lateness_s: int = 2 * HOUR_S, late_firing_delay_s: int = 60, prefix: str = "",
                 file_prefix: str = "part", sort_by: Optional[Sequence[Tuple[str, str]]] = None,
                 shard_fn: Optional[Callable[[Dict[str, Any], int], int]] = None, row_group_rows: int = 128 * 1024,
                 multipart_threshold_bytes: int = 64 << 20, settings: Optional[SpacesSettings] = None,
                 label: Optional[str] = None):
        super().__init__(label)
        schema = schema if schema is not None else archive_schema(topic)
        if num_shards < 1 or allowed_lateness_s < 0 or late_firing_delay_s < 0:
            raise ValueError("num_shards >= 1, allowed_lateness_s >= 0 and late_firing_delay_s >= 0")
        if prefix and not prefix.endswith("/"):
            raise ValueError("prefix must end with '/'")
        if sort_by is None:
            sort_by = RAW_SORT if all(schema.get_field_index(c) >= 0 for c, _ in RAW_SORT) else ()
        unknown = [c for c, _ in sort_by if schema.get_field_index(c) < 0]
        if unknown:
            raise ValueError(f"sort_by columns not in the schema: {unknown}")
        self._topic, self._num_shards = topic, num_shards
        self._lateness, self._late_delay = allowed_lateness_s, late_firing_delay_s
        self._shard_fn = shard_fn or _default_shard
        self._fn = _WriteParquetFn(topic, schema, prefix, file_prefix, num_shards, sort_by, row_group_rows,
                                   multipart_threshold_bytes, settings)

    def expand(self, rows):
        late = (trigger.AfterProcessingTime(self._late_delay) if self._late_delay else trigger.AfterCount(1))
        n, shard_fn = self._num_shards, self._shard_fn
        return (rows
                | "HourlyWindows" >> beam.WindowInto(
                    window.FixedWindows(HOUR_S), trigger=trigger.AfterWatermark(late=late),
                    accumulation_mode=trigger.AccumulationMode.DISCARDING,
                    allowed_lateness=Duration(seconds=self._lateness))
                | "KeyByShard" >> beam.Map(lambda r: (shard_fn(r, n), r)).with_output_types(Tuple[int, Any])
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteParquet" >> beam.ParDo(self._fn).with_outputs(Tags.DEAD_LETTER.value, main="files"))


@beam.typehints.with_input_types(KafkaRecord)
class ArchiveKafkaRecords(beam.PTransform):
    """KafkaRecord (timestamped with event time) -> raw-schema rows -> WriteHourlyParquet; same outputs."""

    def __init__(self, topic: str, schema: Optional[pa.Schema] = None, label: Optional[str] = None, **kwargs):
        super().__init__(label)
        self._topic = topic
        self._schema = schema if schema is not None else archive_schema(topic)
        self._kwargs = kwargs

    def expand(self, records):
        schema = self._schema
        return (records
                | "ToArchiveRow" >> beam.Map(kafka_record_to_row, schema)
                | "WriteHourlyParquet" >> WriteHourlyParquet(self._topic, schema, **self._kwargs))


# --- every topic of one Kafka source, each to its own archive ------------------------------------------

def _with_event_time(record: KafkaRecord) -> TimestampedValue:
    return TimestampedValue(record, record.timestamp_ms / 1000)


class _SplitByTopicFn(beam.DoFn):
    """KafkaRecord -> the output tagged with its topic; a record of another topic becomes a dead letter."""

    def __init__(self, topic_names: Sequence[str]):
        self._topics = frozenset(topic_names)
        self._records = Metrics.counter(step_namespace("SplitByTopic"), "archive_records_in")
        self._unknown = Metrics.counter(step_namespace("SplitByTopic"), "archive_unknown_topic")

    def process(self, record: KafkaRecord):
        self._records.inc()
        if record.topic in self._topics:
            yield beam.pvalue.TaggedOutput(record.topic, record)
            return
        self._unknown.inc()  # impossible with a fixed subscription; kept rather than dropped
        yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, DeadLetter.of(
            record.value or b"", step="SplitByTopic", error_class=ErrorKind.UNKNOWN_TOPIC.value,
            error_message=f"record of topic {record.topic!r} is not archived by this pipeline",
            topic=record.topic, partition=record.partition, offset=record.offset,
            event_time_ms=record.timestamp_ms))


@beam.typehints.with_input_types(KafkaRecord)
class ArchiveTopics(beam.PTransform):
    """PCollection[KafkaRecord] of several topics -> hourly Parquet per topic.

    Returns ({topic: files written}, dead letters in the global window). `archive_kwargs` go to every
    ArchiveKafkaRecords (prefix, num_shards, allowed_lateness_s, late_firing_delay_s, ...).
    """

    def __init__(self, topic_names: Sequence[str], label: Optional[str] = None, **archive_kwargs):
        super().__init__(label)
        if not topic_names:
            raise ValueError("ArchiveTopics needs at least one topic")
        self._topics = tuple(topic_names)
        self._kwargs = archive_kwargs

    def expand(self, records) -> Tuple[Dict[str, beam.PCollection], beam.PCollection]:
        split = (records
                 | "EventTimeFromCreateTime" >> beam.Map(_with_event_time)
                 | "SplitByTopic" >> beam.ParDo(_SplitByTopicFn(self._topics)).with_outputs(
                     Tags.DEAD_LETTER.value, *self._topics))
        files: Dict[str, beam.PCollection] = {}
        dead = [split[Tags.DEAD_LETTER.value]]
        for topic in self._topics:
            out = split[topic] | f"Archive[{topic}]" >> ArchiveKafkaRecords(topic, **self._kwargs)
            files[topic] = out.files
            # dead letters keep their hourly window; Flatten needs one windowing
            dead.append(out[Tags.DEAD_LETTER.value]
                        | f"DeadLettersToGlobalWindow[{topic}]" >> beam.WindowInto(GlobalWindows()))
        return files, tuple(dead) | "MergeArchiveDeadLetters" >> beam.Flatten()
