"""Postgres sink: batched, idempotent upserts with an event-time/version guard.

`WriteToPostgres(table, key_columns, columns, version_column=...)` takes dict rows (column name -> value;
`json_columns` are serialised to JSON; str, int, float, bool, datetime/date, Decimal and bytes values are
written in Postgres' text form) and returns the PCollection of `DeadLetter` for rows Postgres refused.

How it writes (see benchmarks/bench_sinks.py for the figures behind the choices):
- per DoFn instance one `PostgresUpserter` (one connection, autocommit), opened in setup(), closed in
  teardown(); one buffer per bundle, flushed at `batch_size` rows or at the end of the bundle, dead letters
  keep the window and timestamp of their row (io_connectors.buffered_sink);
- one round trip per batch (`method="copy"`, the default): a single simple-query message
  `COPY stage FROM STDIN; INSERT INTO t SELECT ... FROM stage ON CONFLICT (keys) DO UPDATE ... WHERE
  stored.version <= EXCLUDED.version; TRUNCATE stage` against a per-connection temp table, one implicit
  transaction. `method="values"` (psycopg2 execute_values, one multi-row INSERT) is also one round trip but
  measured 1.3-2.2x slower at 500-row batches (Python-side mogrify per row, bigger statement to parse).
  Behind a transaction-mode pooler (PgBouncer / DigitalOcean connection pools) temp tables do not outlive
  a transaction: use `method="values"` there;
- the guard makes replays idempotent (same version -> same row) and an older record never overwrites a
  newer one; duplicates of a key inside one batch keep the newest;
- transient errors (connection lost, serialization failure, deadlock, admin/crash shutdown, too many
  connections) reconnect and retry with bounded, jittered backoff; when the attempts run out the bundle
  fails and the runner replays it. Data errors (constraint violations, bad values) are bisected down to
  the offending rows, which become dead letters with the row and the reason; the rest are written.
  Configuration errors (missing table/column, no privilege, bad password) fail loudly instead of
  dead-lettering every row.
- identifiers are quoted with psycopg2.sql.Identifier; no SQL text is ever built from data.
"""

from __future__ import annotations

import io
import json
import logging
import re
import zlib
from collections import defaultdict
from datetime import date, datetime
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam

from io_connectors.retry import with_retries
from io_connectors.settings import PostgresSettings
from events.dead_letters import DeadLetter, KeepSource, Tags
from io_connectors.buffered_sink import BufferedSinkFn

log = logging.getLogger(__name__)

METHODS = ("values", "copy")

_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
    "55P03",  # lock_not_available
    "08000", "08003", "08006", "08001", "08004",  # connection exceptions
}
# Errors about the sink's configuration, not the row: every row would fail the same way.
_CONFIG_SQLSTATE_CLASSES = ("42", "28", "3D", "3F")


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry can cure. A lost connection has no SQLSTATE, hence the class checks."""
    import psycopg2

    code = getattr(exc, "pgcode", None)
    if code:
        return code in _TRANSIENT_SQLSTATES
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))


def is_config_error(exc: BaseException) -> bool:
    code = getattr(exc, "pgcode", None) or ""
    return code[:2] in _CONFIG_SQLSTATE_CLASSES


def _json_default(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


# One encoder for all JSON columns: json.dumps(default=...) builds a new encoder on every call. allow_nan=False:
# jsonb has no NaN/Infinity, so such a row is refused here (a dead letter naming the value) without a round trip.
_JSON = json.JSONEncoder(default=_json_default, separators=(",", ":"), allow_nan=False)

# Postgres text and jsonb cannot hold U+0000 (COPY: "invalid byte sequence for encoding UTF8: 0x00"; jsonb:
# "unsupported Unicode escape sequence"). The event is valid and the other sinks (Redis, Parquet, the DLQ)
# keep it exactly, so the Postgres sink writes U+FFFD (REPLACEMENT CHARACTER) in its place (issue 15).
NUL_REPLACEMENT = "\ufffd"
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # an escaped NUL, not an escaped backslash + "u0000"


def pg_text(v: str) -> str:
    """`v` as Postgres text stores it: every NUL replaced by U+FFFD."""
    return v.replace("\x00", NUL_REPLACEMENT) if "\x00" in v else v


def pg_json(v: Any) -> str:
    """`v` as JSON text jsonb accepts (ASCII, NUL escapes replaced by U+FFFD's); ValueError for NaN/Infinity."""
    text = _JSON.encode(v)
    return _JSON_NUL.sub(r"\1\\ufffd", text) if "\\u0000" in text else text


def _table_ident(table: str):
    from psycopg2 import sql

    return sql.Identifier(*table.split("."))


def _conflict_update(key_columns: Sequence[str], columns: Sequence[str], version_column: Optional[str],
                     merge_sql: Optional[str] = None):
    """`ON CONFLICT (keys) DO UPDATE SET ... WHERE <version guard>` (or DO NOTHING when only keys).

    `merge_sql`: the table's own ON CONFLICT clause (a constant of our code, never built from data), for
    rows that are merged into the stored row rather than replacing it (session generations)."""
    from psycopg2 import sql

    if merge_sql:
        return sql.SQL(merge_sql)
    keys = sql.SQL(", ").join(map(sql.Identifier, key_columns))
    updates = [c for c in columns if c not in key_columns]
    if not updates:
        return sql.SQL(" ON CONFLICT ({keys}) DO NOTHING").format(keys=keys)
    set_clause = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in updates)
    stmt = sql.SQL(" ON CONFLICT ({keys}) DO UPDATE SET ").format(keys=keys) + set_clause
    if version_column:
        stmt += sql.SQL(" WHERE stored.{v} IS NULL OR stored.{v} <= EXCLUDED.{v}").format(
            v=sql.Identifier(version_column))
    return stmt


def build_upsert(table: str, key_columns: Sequence[str], columns: Sequence[str], version_column: Optional[str],
                 merge_sql: Optional[str] = None):
    """The upsert statement for psycopg2.extras.execute_values (`VALUES %s`)."""
    from psycopg2 import sql

    return (sql.SQL("INSERT INTO {t} AS stored ({cols}) VALUES %s").format(
        t=_table_ident(table), cols=sql.SQL(", ").join(map(sql.Identifier, columns)))
        + _conflict_update(key_columns, columns, version_column, merge_sql))


def build_merge(table: str, stage: str, key_columns: Sequence[str], columns: Sequence[str],
                version_column: Optional[str], merge_sql: Optional[str] = None):
    """Stage -> table merge for the COPY method; empties the stage in the same implicit transaction."""
    from psycopg2 import sql

    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    return (sql.SQL("INSERT INTO {t} AS stored ({cols}) SELECT {cols} FROM {s}").format(
        t=_table_ident(table), cols=cols, s=sql.Identifier(stage))
        + _conflict_update(key_columns, columns, version_column, merge_sql)
        + sql.SQL("; TRUNCATE {s}").format(s=sql.Identifier(stage)))


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(v: Any) -> str:
    """One value in COPY text format (type dispatch first: this runs once per value)."""
    t = type(v)
    if v is None:
        return "\\N"
    if t is str:
        # translate() walks the string in Python-level lookups; the `in` scans run at C speed
        return v.translate(_COPY_ESCAPES) if ("\\" in v or "\t" in v or "\n" in v or "\r" in v) else v
    if t is int or t is float:
        return repr(v)
    if t is bool:
        return "t" if v else "f"
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\\\x" + bytes(v).hex()
    return _copy_text(str(v))


class PostgresUpserter:
    """One connection and the upsert of a table; usable without Beam (the DoFn and the benchmark use it).

    `write(rows)` writes a batch in one round trip and returns the rows Postgres refused as
    `(row, reason)`; it raises when transient errors outlast `max_attempts` or on configuration errors.
    """

    def __init__(self, table: str, key_columns: Sequence[str], columns: Sequence[str],
                 version_column: Optional[str] = None, json_columns: Sequence[str] = (), max_attempts: int = 6,
                 settings: Optional[PostgresSettings] = None, method: str = "copy",
                 retry_base_s: float = 0.25, merge_sql: Optional[str] = None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        self.table, self.keys, self.columns = table, tuple(key_columns), tuple(columns)
        self.version, self.json = version_column, frozenset(json_columns)
        self.max_attempts, self.method, self.retry_base_s = max_attempts, method, retry_base_s
        self.settings = settings or PostgresSettings.from_env()
        self._colspec = [(c, c in self.json) for c in self.columns]
        self.merges = bool(merge_sql)  # rows merge into the stored row: every row of a key must be applied
        self.conn = None
        self.retries = 0  # transient retries so far (also a Beam counter in the DoFn)
        self._stage = f"_stage_{zlib.crc32(repr((table, self.columns)).encode()):08x}"
        self._stmt = (build_upsert(table, self.keys, self.columns, version_column, merge_sql) if method == "values"
                      else build_merge(table, self._stage, self.keys, self.columns, version_column, merge_sql))

    # connection -------------------------------------------------------------------------------------------
    def connect(self) -> None:
        import psycopg2
        from psycopg2 import sql

        self.close()
        conn = psycopg2.connect(**self.settings.connect_kwargs())
        conn.autocommit = True  # one statement = one transaction = one round trip
        if self.method == "copy":
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {s} AS SELECT {cols} FROM {t} WITH NO DATA")
                            .format(s=sql.Identifier(self._stage), t=_table_ident(self.table),
                                    cols=sql.SQL(", ").join(map(sql.Identifier, self.columns))))
            self._copy_sql = (sql.SQL("COPY {s} FROM STDIN; ").format(s=sql.Identifier(self._stage))
                              + self._stmt).as_string(conn)
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a connection that is already broken
                pass
            self.conn = None

    # writing ----------------------------------------------------------------------------------------------
    def _values(self, row: Dict[str, Any]) -> List[Any]:
        get = row.get
        return [(pg_json(v) if v is not None else None) if is_json else pg_text(v) if type(v) is str else v
                for c, is_json in self._colspec for v in (get(c),)]

    def dedupe(self, rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """ON CONFLICT cannot touch a row twice in one statement: keep the newest row per key."""
        best: Dict[Tuple, Dict[str, Any]] = {}
        for r in rows:
            k = tuple(r.get(c) for c in self.keys)
            cur = best.get(k)
            if cur is None or not self.version or \
                    (r.get(self.version) is not None
                     and (cur.get(self.version) is None or r[self.version] >= cur[self.version])):
                best[k] = r
        return list(best.values())

    def _execute(self, rows: Sequence[Dict[str, Any]]) -> None:
        if self.conn is None or self.conn.closed:
            self.connect()
        with self.conn.cursor() as cur:
            if self.method == "values":
                from psycopg2.extras import execute_values

                execute_values(cur, self._stmt, [tuple(self._values(r)) for r in rows], page_size=max(len(rows), 1))
            else:
                buf = io.StringIO("".join(["\t".join(map(_copy_text, self._values(r))) + "\n" for r in rows]))
                # COPY, merge and truncate in one simple-query message: one round trip and one implicit
                # transaction (a failure anywhere rolls the stage back too).
                cur.copy_expert(self._copy_sql, buf)

    def _reconnect_quietly(self, _exc: BaseException) -> None:
        self.retries += 1
        try:
            self.connect()
        except Exception:  # noqa: BLE001 - still down; the next attempt reports it
            self.close()

    def _write_with_retry(self, rows: Sequence[Dict[str, Any]]) -> None:
        with_retries(lambda: self._execute(rows), is_transient, max_attempts=self.max_attempts,
                     what=f"postgres {self.table}", base_s=self.retry_base_s, on_retry=self._reconnect_quietly)

    def rounds(self, rows: Sequence[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
        """For merging tables: batches with one row per key each, in arrival order (the n-th row of a key goes
        to the n-th batch), so that every row is merged, in order."""
        out: List[List[Dict[str, Any]]] = []
        count: Dict[Tuple, int] = defaultdict(int)
        for r in rows:
            k = tuple(r.get(c) for c in self.keys)
            n = count[k]
            count[k] = n + 1
            if n == len(out):
                out.append([])
            out[n].append(r)
        return out

    def write(self, rows: Sequence[Dict[str, Any]]) -> List[Tuple[Dict[str, Any], str]]:
        """Upsert a batch; return the refused rows with their reasons."""
        if self.merges:
            batches = self.rounds(rows)
            if len(batches) > 1:
                return [refused for batch in batches for refused in self._write_unique(batch)]
            return self._write_unique(batches[0] if batches else [])
        return self._write_unique(self.dedupe(rows))

    def _write_unique(self, rows: Sequence[Dict[str, Any]]) -> List[Tuple[Dict[str, Any], str]]:
        if not rows:
            return []
        try:
            self._write_with_retry(rows)
            return []
        except Exception as e:  # noqa: BLE001 - classified: transient/config re-raised, data errors isolated
            if is_transient(e) or is_config_error(e):
                raise
            if len(rows) == 1:
                code = getattr(e, "pgcode", None)
                return [(rows[0], f"{type(e).__name__}{f' [{code}]' if code else ''}: {str(e).strip()}")]
        mid = len(rows) // 2  # bisect: log2(n) extra round trips per bad row, good rows still written
        return self._write_unique(rows[:mid]) + self._write_unique(rows[mid:])


class _UpsertFn(BufferedSinkFn):
    """One PostgresUpserter per DoFn instance; batches of `batch_size` rows (see io_connectors.buffered_sink)."""

    def __init__(self, upserter_args: Dict[str, Any], batch_size: int, source_topic: Optional[str]):
        table = upserter_args["table"]
        super().__init__(step=f"WriteToPostgres[{table}]", batch_size=batch_size, source_topic=source_topic,
                         written=f"{table}_rows_written", retries=f"{table}_transient_retries",
                         dead_letters=f"{table}_dead_letters", batch_latency_ms=f"{table}_batch_latency_ms",
                         batch_rows=f"{table}_batch_rows", json_default=_json_default,
                         batch_max_ms=f"{table}_batch_max_ms")
        self._args = upserter_args

    def make_writer(self) -> PostgresUpserter:
        return PostgresUpserter(**self._args)


@beam.typehints.with_input_types(Dict[str, Any])
@beam.typehints.with_output_types(DeadLetter)
class WriteToPostgres(beam.PTransform):
    """PCollection[dict] -> upserted rows; returns the PCollection of DeadLetter for rows Postgres refused.

    `version_column` (e.g. the event time in ms) guards against older records overwriting newer ones;
    without it the last write wins. Connection settings come from the environment (PostgresSettings).
    """

    def __init__(self, table: str, key_columns: Sequence[str], columns: Sequence[str],
                 version_column: Optional[str] = None, json_columns: Sequence[str] = (), batch_size: int = 500,
                 max_attempts: int = 6, settings: Optional[PostgresSettings] = None,
                 source_topic: Optional[str] = None, method: str = "copy", merge_sql: Optional[str] = None,
                 label: Optional[str] = None):
        super().__init__(label)
        if not key_columns:
            raise ValueError("WriteToPostgres needs at least one key column")
        missing = [k for k in key_columns if k not in columns]
        if missing:
            raise ValueError(f"key columns {missing} must be among the columns")
        if len(set(columns)) != len(columns):
            raise ValueError("columns must be unique")
        if version_column and version_column not in columns:
            raise ValueError(f"version column {version_column!r} must be among the columns")
        if batch_size < 1 or max_attempts < 1:
            raise ValueError("batch_size and max_attempts must be >= 1")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        if settings is None:  # the launcher's principal, by name (resolved in the worker: no password in the graph)
            settings = PostgresSettings.deferred()
        self._fn = _UpsertFn(dict(table=table, key_columns=tuple(key_columns), columns=tuple(columns),
                                  version_column=version_column, json_columns=tuple(json_columns),
                                  max_attempts=max_attempts, settings=settings, method=method,
                                  merge_sql=merge_sql),
                             batch_size, source_topic)

    def expand(self, rows):
        out = rows | "Upsert" >> beam.ParDo(self._fn).with_outputs(Tags.DEAD_LETTER.value, main="written")
        return out[Tags.DEAD_LETTER.value]


class UpsertRows(beam.PTransform):
    """Events -> rows (`to_row`, each row keeping its event's source position) -> WriteToPostgres(table, ...).

    The steps are `ToRow` and `Upsert<Table>` (agent_turns -> UpsertAgentTurns). Returns the dead letters."""

    def __init__(self, to_row: Callable[[Any], Dict[str, Any]], table: str, key_columns: Sequence[str],
                 columns: Sequence[str], label: Optional[str] = None, **write_kwargs):
        super().__init__(label)
        self._to_row = KeepSource(to_row)
        self._table = table
        self._write = WriteToPostgres(table, key_columns, columns, **write_kwargs)

    def expand(self, events):
        upsert = "Upsert" + "".join(word.title() for word in self._table.split("_"))
        return events | "ToRow" >> beam.Map(self._to_row) | upsert >> self._write
