"""The buffering sink base: one buffer across windows, flushed by size and at bundle end; refused rows leave
as dead letters in their own window and with their own timestamp."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from events.dead_letters import SOURCE_KEY, Tags
from io_connectors.buffered_sink import BufferedSinkFn

pytestmark = pytest.mark.unit

BATCHES = []  # what the writer was asked to write, batch by batch (DirectRunner runs in this process)


class _Writer:
    retries = 0

    def connect(self):
        pass

    def close(self):
        pass

    def write(self, rows):
        BATCHES.append([r["id"] for r in rows])
        return [(r, "refused by the test writer") for r in rows if r["id"] % 7 == 0]


class _Fn(BufferedSinkFn):
    def __init__(self, batch_size):
        super().__init__(step="TestSink", batch_size=batch_size, source_topic="t.fallback", written="w",
                         retries="r", dead_letters="d", batch_latency_ms="ms", batch_rows="rows")

    def make_writer(self):
        return _Writer()


def test_one_buffer_across_session_windows_batches_rows_and_places_dead_letters_in_their_window():
    BATCHES.clear()
    rows = [{"id": i, "session": f"s{i}", SOURCE_KEY: ("t.src", 0, i)} for i in range(1, 23)]
    with TestPipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
        out = (p | beam.Create(rows)
               | beam.Map(lambda r: window.TimestampedValue(r, r["id"] * 10))
               | beam.WindowInto(window.Sessions(1))  # every row its own window, as sessions were
               | beam.ParDo(_Fn(batch_size=5)).with_outputs(Tags.DEAD_LETTER.value, main="written"))
        dead = out[Tags.DEAD_LETTER.value]
        placed = dead | beam.ParDo(_Placement())
        assert_that(placed, equal_to([(7, 70.0, "t.src", 7), (14, 140.0, "t.src", 14), (21, 210.0, "t.src", 21)]))
    written = sorted(i for b in BATCHES for i in b)
    assert written == list(range(1, 23))
    assert max(len(b) for b in BATCHES) <= 5
    assert len(BATCHES) <= 22 // 5 + 2  # by size (plus the bundle ends), not one round trip per window


class _Placement(beam.DoFn):
    def process(self, dl, ts=beam.DoFn.TimestampParam, win=beam.DoFn.WindowParam):
        assert float(win.start) == float(ts)  # its own session window [ts, ts + 1 s)
        yield dl.source_offset, float(ts), dl.source_topic, dl.source_offset


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        _Fn(batch_size=0)
