"""Each pipeline's graph, as `python -m beam_pipelines.<name>` submits it (its options and `build`, the Kafka
transforms expanded by the stack's expansion service), has ONE Java environment and it stages nothing.

A Kafka transform whose URN devstack/java_harness/expansion-service.yaml does not list stages the empty jar of
--filesToStage: in Kubernetes its harness cannot fetch it from the job server's pod and never starts, and on the
local stack its environment differs from the other Kafka transforms' by that jar, so Beam does not merge them and
every job starts two Java harness JVMs per TaskManager (the idle-aware read until 2026-12-07)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.portability import common_urns

from beam_pipelines import archive, billing, frontend, kpi, leads
from beam_pipelines.options import finalize_options

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("module", [kpi, frontend, billing, archive, leads], ids=lambda m: m.__name__.split(".")[-1])
def test_one_java_environment_staging_nothing(module):
    name = module.__name__.split(".")[-1]
    opts = finalize_options(["--runner=FlinkRunner"], name)
    p = beam.Pipeline(options=opts)
    module.build(p, opts)
    envs = p.to_runner_api().components.environments
    java = {eid: env for eid, env in envs.items() if env.urn == common_urns.environments.PROCESS.urn}
    assert len(java) == 1, {eid: [d.role_payload for d in env.dependencies] for eid, env in java.items()}
    (env,) = java.values()
    assert b"beam-java-harness" in env.payload
    assert list(env.dependencies) == []
