"""Leads pipeline on the Flink cluster: lead deltas -> exactly the newest scored row per lead in
`marketo_leads` (out-of-order and replayed deltas never regress a lead); malformed deltas -> the DLQ."""

from __future__ import annotations

import json
import random
import time

import pytest

from events import topics
from tests.e2e.flink_helpers import (commit_group_at_end, dead_letters_at, end_offsets, poll, produce_with_offsets,
                                     running_pipeline)
from events.contracts import MarketoLeadDelta
from workloads.generator import LeadWorkload, ProducedRecord
from transforms.field_crypto import FieldCipher, context, load_key_ring
from transforms.pii import PiiPolicy, Redactor, load_hmac_key
from transforms.rows import ENCRYPTED_COLUMNS, lead_to_row
from transforms.scoring import Scored, score_lead

pytestmark = pytest.mark.e2e


def test_leads_newest_delta_wins_and_bad_deltas_go_to_dlq(stack, pg_conn, kafka_settings, run_id):
    from beam_pipelines import leads

    bootstrap = kafka_settings.bootstrap_servers
    base = random.Random(run_id).randrange(10**8, 2 * 10**9 - 10**6)  # lead ids of this run only
    work = LeadWorkload(seed=5, run_id=run_id, start_ms=int(time.time() * 1000) - 3_600_000,
                        malformed_rate=0.05).generate(300)
    records, newest = [], {}
    for rec in work.records:
        if rec.kind == "valid":
            ev = json.loads(rec.value)
            ev["lead_id"] = base + ev["lead_id"] % 60  # ~5 changes per lead
            rec = ProducedRecord(str(ev["lead_id"]).encode(), json.dumps(ev).encode(), rec.timestamp_ms, "valid")
            if ev["lead_id"] not in newest or ev["timestamp"] > newest[ev["lead_id"]]["timestamp"]:
                newest[ev["lead_id"]] = ev
        records.append(rec)
    # the newest change of a few leads arrives again, after everything (a replay)
    replays = [r for r in records if r.kind == "valid" and json.loads(r.value) in list(newest.values())[:5]]
    records += replays
    # Read exactly what this test produces: the group's offsets at the end first. (Not --start_read_time_ms: on
    # a broker that other runs fill, a record stamped in the future, e.g. a watermark heartbeat, makes
    # Kafka's offsetsForTimes start there, and the job read 1.5 million other records.)
    commit_group_at_end(f"e2e-leads-{run_id}", (topics.LEADS,), bootstrap)
    dlq_start = end_offsets(topics.dlq_topic(topics.LEADS), bootstrap)
    positions = produce_with_offsets(records, topics.LEADS, bootstrap)

    with running_pipeline(leads, run_id, None) as job:
        def landed():
            with pg_conn.cursor() as cur:
                cur.execute("SELECT lead_id, source_ts_ms FROM marketo_leads WHERE lead_id BETWEEN %s AND %s",
                            (base, base + 59))
                got = dict(cur.fetchall())
            return got == {k: v["timestamp"] for k, v in newest.items()}

        poll(landed, 180, "the newest delta of every lead in marketo_leads")
        ring = load_key_ring()  # the stack's field key ring (IHEARDAI_FIELD_KEYS_FILE in devstack.env)
        redactor, cipher = Redactor(PiiPolicy.load(), load_hmac_key(), ring), FieldCipher(ring)
        _, sources = ENCRYPTED_COLUMNS["marketo_leads"]
        ctxs = {col: [context(topics.LEADS, f) for f in fs] for col, fs in sources.items()}
        with pg_conn.cursor() as cur:
            cur.execute("SELECT lead_id, email_domain, lead_quality_score, engagement_level, recommended_action, "
                        "scorer_version, email, full_name, phone FROM marketo_leads "
                        "WHERE lead_id BETWEEN %s AND %s", (base, base + 59))
            rows = {r[0]: r[1:] for r in cur.fetchall()}
        for lead_id, ev in newest.items():
            lead, _ = redactor.event(MarketoLeadDelta.model_validate(ev))
            want = lead_to_row(Scored(lead, score_lead(lead)))
            got = rows[lead_id]
            assert got[:5] == (want["email_domain"], want["lead_quality_score"], want["engagement_level"],
                               want["recommended_action"], want["scorer_version"])
            for col, value in zip(("email", "full_name", "phone"), got[5:]):  # tokens: random nonces
                clear = lambda v: v if v is None else cipher.decrypt_text(v, ctxs[col])  # noqa: E731
                assert clear(value) == clear(want[col]), f"lead {lead_id} {col}"
            if ev.get("email"):
                assert ev["email"] not in got[5], "the email must not be stored in clear"

        bad = {positions[i] for i, r in enumerate(records) if r.kind == "malformed"}
        assert bad
        found = poll(lambda: (lambda f: f if bad <= set(f) else None)(
            dead_letters_at(topics.LEADS, bootstrap, dlq_start, set(positions))), 120, "malformed deltas in the DLQ")
        assert set(found) == bad and all(dl.error_class and dl.error_message for dl in found.values())
        job.assert_running()
