"""One buffering sink DoFn for every sink that writes batches through a client (Postgres, Redis).

Shaped like Beam's own `BigQueryWriteFn`: the client is opened in setup() and closed in teardown(); a bundle
keeps ONE buffer of (row, timestamp, window) whatever the windows are, flushed when it holds `batch_size`
rows and at the end of the bundle, so a worker never buffers more than `batch_size` rows per sink
(buffering per window made one round trip per row when every session was its own window); the rows a
writer refuses leave as dead letters in their own window with their own timestamp.

A writer is any object with `connect()`, `close()`, `retries` (transient retries so far) and
`write(rows) -> [(row, reason)]` for the rows it refused; transient errors it could not cure raise, so the
bundle fails and the runner replays it (the writers are idempotent).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from events.metrics import step_namespace
from events.dead_letters import DeadLetter, ErrorKind, Tags, source_of, without_source


MAX_WINDOW_S = 30.0  # the batch-time gauge holds the slowest batch of this long


class BufferedSinkFn(beam.DoFn):
    """Subclasses give `make_writer()`; the metric names are the sink's own (`metric_names`)."""

    def __init__(self, *, step: str, batch_size: int, source_topic: Optional[str], written: str,
                 retries: str, dead_letters: str, batch_latency_ms: str, batch_rows: Optional[str] = None,
                 json_default: Callable[[Any], Any] = str, batch_max_ms: Optional[str] = None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._step, self._batch_size, self._source_topic = step, batch_size, source_topic
        self._json_default = json_default
        self._written = Metrics.counter(step_namespace(step), written)
        self._retries = Metrics.counter(step_namespace(step), retries)
        self._dead = Metrics.counter(step_namespace(step), dead_letters)
        self._batch_ms = Metrics.distribution(step_namespace(step), batch_latency_ms)
        self._batch_rows = Metrics.distribution(step_namespace(step), batch_rows) if batch_rows else None
        # The slowest batch of the last MAX_WINDOW_S as a gauge: Flink's reporter exports Beam gauges as
        # numbers, its distributions not at all (Prometheus: iheardai_db_operation_seconds_max).
        self._batch_max = Metrics.gauge(step_namespace(step), batch_max_ms or f"{written}_batch_max_ms")
        self._window_start, self._window_max_ms = 0.0, 0
        self._writer = None

    def make_writer(self):
        raise NotImplementedError

    def setup(self):
        self._writer = self.make_writer()
        self._writer.connect()

    def teardown(self):
        if self._writer is not None:
            self._writer.close()

    def start_bundle(self):
        self._buffer: List[Tuple[Dict[str, Any], Any, Any]] = []

    def process(self, row: Dict[str, Any], window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        self._buffer.append((row, timestamp, window))
        if len(self._buffer) >= self._batch_size:
            buf, self._buffer = self._buffer, []
            yield from self._flush(buf)

    def finish_bundle(self):
        buf, self._buffer = self._buffer, []
        yield from self._flush(buf)

    def _flush(self, buf: List[Tuple[Dict[str, Any], Any, Any]]):
        if not buf:
            return
        t0 = time.monotonic()
        retries_before = self._writer.retries
        refused = self._writer.write([r for r, _, _ in buf])
        self._retries.inc(self._writer.retries - retries_before)
        now = time.monotonic()
        took_ms = int((now - t0) * 1000)
        self._batch_ms.update(took_ms)
        if now - self._window_start > MAX_WINDOW_S:
            self._window_start, self._window_max_ms = now, 0
        self._window_max_ms = max(self._window_max_ms, took_ms)
        self._batch_max.set(self._window_max_ms)
        if self._batch_rows is not None:
            self._batch_rows.update(len(buf))
        self._written.inc(len(buf) - len(refused))
        if not refused:
            return
        placed = {id(r): (ts, w) for r, ts, w in buf}
        for row, reason in refused:
            self._dead.inc()
            ts, win = placed[id(row)]
            dl = DeadLetter.of(json.dumps(without_source(row), default=self._json_default, sort_keys=True).encode(),
                               step=self._step, error_class=ErrorKind.SINK_PERMANENT.value, error_message=reason,
                               topic=self._source_topic, source=source_of(row), event_time_ms=int(ts.micros // 1000))
            yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, WindowedValue(dl, ts, [win]))
