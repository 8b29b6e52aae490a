"""After every other test (the `after_suite` marker sorts it last, tests/conftest.py): none of the stack's
generated secrets (principal passwords, TLS keys, the PII and field keys, the S3 keys) appears in any log of the
stack, in this test run's output so far (`./run test` tees it into the stack's logs), in the tests' temporary
files, in a dead-letter topic, in the Flink REST API (job names, plans, configs, exceptions of every job the
suite ran) or in Prometheus' label values. The allowlist (config/secret_scan_allowlist.json) names the one
documented exception: Beam's Kafka IO keeps its SASL JAAS line, with the pipeline's own password, in the job
graph (README: Security)."""

from __future__ import annotations

import os

import pytest

from devstack import config, secret_scan

pytestmark = [pytest.mark.e2e, pytest.mark.after_suite]


def test_no_generated_secret_is_anywhere_the_stack_and_the_suite_wrote(stack, tmp_path_factory):
    findings, secrets, covered, unreadable = secret_scan.run(
        config.HOME, dict(os.environ), [tmp_path_factory.getbasetemp()])
    text = secret_scan.report(findings, secrets, covered, unreadable)
    print(text)
    assert not unreadable, text
    assert not [f for f in findings if not f.allowed], text
    if config.secured():
        names = {s.name for s in secrets}
        # the scan knew every principal's password and every server key it had to look for
        assert {"secrets/kafka/pipeline-kpi.password", "secrets/postgres/pipeline-billing.password",
                "secrets/redis/pipeline-kpi.password", "tls/ca.key", "tls/kafka.key"} <= names, names
    assert any("log files" in c for c in covered) and any("Flink REST" in c for c in covered), covered
