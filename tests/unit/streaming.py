"""What the keyed-state tests share: a streaming TestPipeline on the DirectRunner and its processing clock."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline


def zero_clock() -> float:
    return 0.0  # the DirectRunner's TestClock starts at 0 and moves only with advance_processing_time


def streaming_pipeline() -> TestPipeline:
    opts = PipelineOptions(["--runner=DirectRunner"])
    opts.view_as(StandardOptions).streaming = True
    return TestPipeline(options=opts)
