"""Postgres sink: batched, idempotent upserts with an event-time/version guard.

`WriteToPostgres(table, key_columns, columns, version_column)` takes dict rows. Per DoFn instance: one
connection, opened in setup() and closed in teardown(). Rows are buffered per window and flushed at
`batch_size` or at the end of the bundle, in one round trip (`INSERT ... SELECT FROM (VALUES ...)
ON CONFLICT DO UPDATE ... WHERE stored.version <= excluded.version`), so a replay after a failure writes the
same state and an older record never overwrites a newer one. Transient errors are retried with bounded,
jittered backoff; permanent ones isolate the bad rows, which leave as dead letters with the reason.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from io_connectors.settings import PostgresSettings
from transforms.dead_letters import DeadLetter, ErrorKind, Tags

log = logging.getLogger(__name__)

_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
    "08000", "08003", "08006", "08001", "08004",  # connection exceptions
}


def is_transient(exc: BaseException) -> bool:
    import psycopg2

    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return True
    return getattr(exc, "pgcode", None) in _TRANSIENT_SQLSTATES


def _json_default(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def build_upsert(table: str, key_columns: Sequence[str], columns: Sequence[str], version_column: Optional[str]):
    """The upsert statement for psycopg2.extras.execute_values; identifiers quoted, never built from data."""
    from psycopg2 import sql

    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    keys = sql.SQL(", ").join(map(sql.Identifier, key_columns))
    updates = [c for c in columns if c not in key_columns]
    set_clause = sql.SQL(", ").join(
        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in updates)
    stmt = sql.SQL("INSERT INTO {t} AS stored ({cols}) VALUES %s ON CONFLICT ({keys}) ").format(
        t=sql.Identifier(*table.split(".")), cols=cols, keys=keys)
    if not updates:
        return stmt + sql.SQL("DO NOTHING")
    stmt = stmt + sql.SQL("DO UPDATE SET ") + set_clause
    if version_column:
        v = sql.Identifier(version_column)
        stmt = stmt + sql.SQL(" WHERE stored.{v} IS NULL OR stored.{v} <= EXCLUDED.{v}").format(v=v)
    return stmt


class _UpsertFn(beam.DoFn):
    def __init__(self, table: str, key_columns: Sequence[str], columns: Sequence[str],
                 version_column: Optional[str], json_columns: Sequence[str], batch_size: int, max_attempts: int,
                 settings: Optional[PostgresSettings], source_topic: Optional[str]):
        self._table = table
        self._keys = tuple(key_columns)
        self._columns = tuple(columns)
        self._version = version_column
        self._json = set(json_columns)
        self._batch_size = batch_size
        self._max_attempts = max_attempts
        self._settings = settings
        self._source_topic = source_topic
        self._conn = None
        self._rows_written = Metrics.counter(self.__class__, f"{table}_rows_written")
        self._retries = Metrics.counter(self.__class__, f"{table}_transient_retries")
        self._dead = Metrics.counter(self.__class__, f"{table}_dead_letters")
        self._batch_ms = Metrics.distribution(self.__class__, f"{table}_batch_latency_ms")
        self._batch_rows = Metrics.distribution(self.__class__, f"{table}_batch_rows")

    # lifecycle ----------------------------------------------------------------------------------------
    def setup(self):
        self._settings = self._settings or PostgresSettings.from_env()
        from io_connectors.postgres import build_upsert as _b  # resolved on the worker

        self._stmt = _b(self._table, self._keys, self._columns, self._version)
        self._connect()

    def _connect(self):
        import psycopg2

        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        self._conn = psycopg2.connect(**self._settings.connect_kwargs())

    def teardown(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def start_bundle(self):
        self._buffers: Dict[Any, List[Dict[str, Any]]] = defaultdict(list)

    def process(self, row: Dict[str, Any], window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        buf = self._buffers[window]
        buf.append(row)
        if len(buf) >= self._batch_size:
            yield from self._flush(window, buf)
            self._buffers[window] = []

    def finish_bundle(self):
        for window, rows in self._buffers.items():
            for dl in self._flush(window, rows):
                # Dead letters keep the window of the rows they came from.
                yield WindowedValue(dl.value, window.max_timestamp() if window is not GlobalWindow() else 0,
                                    [window])
        self._buffers = defaultdict(list)

    # writing ------------------------------------------------------------------------------------------
    def _values(self, row: Dict[str, Any]) -> Tuple:
        return tuple(json.dumps(row.get(c), default=_json_default) if c in self._json and row.get(c) is not None
                     else row.get(c) for c in self._columns)

    def _dedupe(self, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """ON CONFLICT cannot touch a row twice in one statement: keep the newest row per key."""
        best: Dict[Tuple, Dict[str, Any]] = {}
        for r in rows:
            k = tuple(r.get(c) for c in self._keys)
            cur = best.get(k)
            if cur is None or (self._version and (r.get(self._version) or 0) >= (cur.get(self._version) or 0)):
                best[k] = r
        return list(best.values())

    def _execute(self, rows: List[Dict[str, Any]]) -> None:
        from psycopg2.extras import execute_values

        with self._conn.cursor() as cur:
            execute_values(cur, self._stmt, [self._values(r) for r in rows], page_size=max(len(rows), 1))
        self._conn.commit()

    def _flush(self, window, rows: List[Dict[str, Any]]):
        if not rows:
            return
        rows = self._dedupe(rows)
        t0 = time.monotonic()
        try:
            self._write_with_retry(rows)
        except Exception as e:  # noqa: BLE001 - permanent: find the bad rows, write the rest
            if is_transient(e):
                raise  # retries exhausted: fail the bundle, Flink replays from the last checkpoint
            yield from self._isolate(rows)
        else:
            self._rows_written.inc(len(rows))
        self._batch_ms.update(int((time.monotonic() - t0) * 1000))
        self._batch_rows.update(len(rows))

    def _write_with_retry(self, rows: List[Dict[str, Any]]) -> None:
        delay = 0.2
        for attempt in range(1, self._max_attempts + 1):
            try:
                self._execute(rows)
                return
            except Exception as e:  # noqa: BLE001
                try:
                    self._conn.rollback()
                except Exception:  # noqa: BLE001 - the connection may be gone
                    pass
                if not is_transient(e) or attempt == self._max_attempts:
                    raise
                self._retries.inc()
                log.warning("postgres %s: transient error (attempt %d/%d): %s", self._table, attempt,
                            self._max_attempts, type(e).__name__)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)
                try:
                    self._connect()
                except Exception:  # noqa: BLE001 - next attempt reports it
                    pass

    def _isolate(self, rows: List[Dict[str, Any]]):
        for row in rows:
            try:
                self._write_with_retry([row])
                self._rows_written.inc()
            except Exception as e:  # noqa: BLE001
                if is_transient(e):
                    raise
                self._dead.inc()
                yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, DeadLetter.of(
                    json.dumps(row, default=_json_default, sort_keys=True).encode(), step=f"WriteToPostgres[{self._table}]",
                    error_class=ErrorKind.SINK_PERMANENT.value,
                    error_message=f"{type(e).__name__}: {str(e).strip()}", topic=self._source_topic))


class WriteToPostgres(beam.PTransform):
    """PCollection[dict] -> upserted rows; returns the PCollection of DeadLetter for rows Postgres refused."""

    def __init__(self, table: str, key_columns: Sequence[str], columns: Sequence[str],
                 version_column: Optional[str] = None, json_columns: Sequence[str] = (), batch_size: int = 500,
                 max_attempts: int = 6, settings: Optional[PostgresSettings] = None,
                 source_topic: Optional[str] = None, label: Optional[str] = None):
        super().__init__(label)
        missing = [k for k in key_columns if k not in columns]
        if missing:
            raise ValueError(f"key columns {missing} must be among the columns")
        if version_column and version_column not in columns:
            raise ValueError(f"version column {version_column!r} must be among the columns")
        if batch_size < 1 or max_attempts < 1:
            raise ValueError("batch_size and max_attempts must be >= 1")
        self._fn = _UpsertFn(table, key_columns, columns, version_column, json_columns, batch_size, max_attempts,
                             settings, source_topic)

    def expand(self, rows):
        out = rows | "Upsert" >> beam.ParDo(self._fn).with_outputs(Tags.DEAD_LETTER.value, main="written")
        return out[Tags.DEAD_LETTER.value]
