"""The status service: health, pipeline status and Prometheus metrics of the suite, on one port.

    python -m observability.status [--port 8000] [--interval 5] [--flink-url http://localhost:8081]

- `GET /health`: 200 when Kafka, Postgres, Redis, S3 and the Flink REST API all answer, else 503; JSON with
  each check, its latency and its error;
- `GET /status`: every pipeline job (state, uptime, restarts, last checkpoint, last exception), consumer lag,
  dead letters of the last hour, the last write per sink table and archive topic, the Marketo extractor's last
  run, and the alerts Alertmanager sent: JSON, or a small HTML page when the client asks for text/html
  (`/status.html` always gives the page);
- `GET /metrics`: the same figures for Prometheus (`iheardai_*`, see observability/rules/);
- `POST /alerts`: Alertmanager's webhook receiver (the local route); the last alerts show on the page.

Built on Starlette + uvicorn (the ASGI stack the collector also uses) and prometheus_client. Figures come
from a background `observability.collect.Collector`, so a slow service never slows a request.
"""

from __future__ import annotations

import argparse
import collections
import html
import json
import logging
import time
from typing import Any, Deque, Dict, Iterable, List, Optional

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from observability.collect import PIPELINES, SINK_TABLES, Collector, Snapshot

log = logging.getLogger("observability.status")
ALERTS_KEPT = 50


class _SnapshotMetrics:
    """prometheus_client custom collector: the latest Snapshot as gauges."""

    def __init__(self, collector: Collector):
        self._collector = collector

    def collect(self) -> Iterable[GaugeMetricFamily]:
        snap = self._collector.snapshot

        def gauge(name: str, doc: str, labels: List[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"iheardai_{name}", doc, labels=labels)

        up = gauge("health_up", "1 when the service answered the last check", ["service"])
        latency = gauge("health_latency_seconds", "latency of the last check", ["service"])
        for name, c in snap.health.items():
            up.add_metric([name], 1 if c.ok else 0)
            latency.add_metric([name], c.latency_s)
        yield up
        yield latency

        job_up = gauge("job_up", "1 when the pipeline's current job is RUNNING", ["pipeline", "job_name"])
        job_restarting = gauge("job_restarting", "1 when the current job restarted in the last 10 min or is "
                               "restarting", ["pipeline", "job_name"])
        restarts = gauge("job_restarts", "Flink numRestarts of the pipeline's current job", ["pipeline", "job_name"])
        uptime = gauge("job_uptime_seconds", "uptime of the pipeline's current job", ["pipeline"])
        cp_age = gauge("job_last_checkpoint_age_seconds", "age of the last completed checkpoint", ["pipeline"])
        cp_failed = gauge("job_failed_checkpoints", "failed checkpoints of the current job", ["pipeline"])
        for p in PIPELINES:
            job = current_job(snap, p)
            job_up.add_metric([p, job.name if job else ""], 1 if job is not None and job.state == "RUNNING" else 0)
            if job is None:
                continue
            job_restarting.add_metric([p, job.name], 1 if job.restarting else 0)
            restarts.add_metric([p, job.name], job.restarts)
            uptime.add_metric([p], job.uptime_s)
            cp_failed.add_metric([p], job.failed_checkpoints)
            if job.last_checkpoint_ms:
                cp_age.add_metric([p], max(0.0, snap.taken_at - job.last_checkpoint_ms / 1000))
        yield from (job_up, job_restarting, restarts, uptime, cp_age, cp_failed)

        lag_labels = ["group", "topic", "partition"]
        lag_m = gauge("consumer_lag_messages", "records not yet committed by the group", lag_labels)
        lag_s = gauge("consumer_lag_seconds", "age of the oldest record not yet committed", lag_labels)
        for lag in snap.lag:
            labels = [lag.group, lag.topic, str(lag.partition)]
            lag_m.add_metric(labels, lag.messages)
            lag_s.add_metric(labels, lag.seconds)
        yield lag_m
        yield lag_s

        rate = gauge("consumer_records_per_second", "records the group committed per second, last minute", ["group"])
        for group, per_s in snap.consumed_per_s.items():
            rate.add_metric([group], per_s)
        yield rate
        total = gauge("topic_messages_total", "records ever written to the topic (sum of end offsets)", ["topic"])
        for topic, n in snap.topic_messages.items():
            total.add_metric([topic], n)
        dlq = gauge("dlq_messages_last_hour", "dead letters written in the last hour", ["topic"])
        for topic, n in snap.dlq_last_hour.items():
            dlq.add_metric([topic], n)
        sink = gauge("sink_last_write_timestamp_seconds", "last time the sink table was written", ["table"])
        for table, ts in snap.sink_last_write.items():
            if ts is not None:
                sink.add_metric([table], ts)
        archive = gauge("archive_last_write_timestamp_seconds", "newest Parquet object of the topic", ["topic"])
        for topic, ts in snap.archive_last_write.items():
            if ts is not None:
                archive.add_metric([topic], ts)
        yield from (total, dlq, sink, archive)

        if snap.marketo:
            m = snap.marketo
            for name, key, doc in (("marketo_last_run_calls", "calls", "API calls of the last run"),
                                   ("marketo_last_run_published", "published", "leads published by the last run")):
                g = gauge(name, doc, [])
                g.add_metric([], float(m.get(key) or 0))
                yield g
            ok = gauge("marketo_last_run_ok", "1 when the last extractor run succeeded", [])
            ok.add_metric([], 1 if m.get("status") == "ok" else 0)
            yield ok
            if m.get("last_success_at"):
                last = gauge("marketo_last_success_timestamp_seconds", "end of the last successful run", [])
                last.add_metric([], float(m["last_success_at"]))
                yield last
        errors = gauge("collector_errors", "1 for each collector part that had no data in the last pass", ["part"])
        for part in snap.errors:
            errors.add_metric([part], 1)
        yield errors


def current_job(snap: Snapshot, pipeline: str):
    """The pipeline's job that is not over, else its newest one; None when it never ran."""
    jobs = [j for j in snap.jobs if j.pipeline == pipeline]
    live = [j for j in jobs if j.state not in ("FINISHED", "CANCELED", "FAILED")]
    return (live or jobs or [None])[0]


def status_doc(snap: Snapshot, alerts: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    doc = snap.as_dict()
    doc["healthy"] = all(c.ok for c in snap.health.values()) and bool(snap.health)
    doc["pipelines"] = {}
    for p in PIPELINES:
        job = current_job(snap, p)
        doc["pipelines"][p] = None if job is None else {
            "state": job.state, "restarting": job.restarting, "job_id": job.job_id, "name": job.name,
            "uptime_s": round(job.uptime_s, 1), "restarts": job.restarts,
            "last_checkpoint_age_s": (round(snap.taken_at - job.last_checkpoint_ms / 1000, 1)
                                      if job.last_checkpoint_ms else None),
            "last_exception": job.last_exception}
    doc["sink_inputs"] = {t: list(v) for t, v in SINK_TABLES.items()}
    doc["alerts"] = list(alerts)
    return doc


def _age(ts: Optional[float], now: float) -> str:
    if ts is None:
        return "never"
    s = max(0, int(now - ts))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def render_html(doc: Dict[str, Any]) -> str:
    """The status page for people: one table per concern, no JavaScript, refreshes itself every 10 s."""
    e, now = html.escape, doc["taken_at"] or time.time()
    rows = []
    for p, j in doc["pipelines"].items():
        if j is None:
            rows.append(f"<tr class=bad><td>{e(p)}</td><td colspan=6>no job</td></tr>")
            continue
        state = "RESTARTING" if j["restarting"] else j["state"]
        cls = "ok" if state == "RUNNING" else "bad"
        exc = e((j["last_exception"] or "").splitlines()[0][:200]) if j["last_exception"] else ""
        cp = "never" if j["last_checkpoint_age_s"] is None else f"{j['last_checkpoint_age_s']:.0f} s ago"
        rows.append(f"<tr class={cls}><td>{e(p)}</td><td>{e(state)}</td><td>{e(j['name'])}</td>"
                    f"<td>{j['uptime_s']:.0f} s</td><td>{j['restarts']}</td><td>{cp}</td><td>{exc}</td></tr>")
    shown = {j["job_id"] for j in doc["pipelines"].values() if j}
    for j in doc["jobs"]:  # live jobs that are no pipeline's current one
        if j["job_id"] in shown or j["state"] in ("FINISHED", "CANCELED", "FAILED"):
            continue
        state = "RESTARTING" if j["restarting"] else j["state"]
        exc = e((j["last_exception"] or "").splitlines()[0][:200]) if j["last_exception"] else ""
        rows.append(f"<tr class={'ok' if state == 'RUNNING' else 'bad'}><td>{e(j['pipeline'] or '-')}</td>"
                    f"<td>{e(state)}</td><td>{e(j['name'])}</td><td>{j['uptime_s']:.0f} s</td><td>{j['restarts']}</td>"
                    f"<td></td><td>{exc}</td></tr>")
    health = "".join(f"<tr class={'ok' if c['ok'] else 'bad'}><td>{e(n)}</td><td>{'up' if c['ok'] else 'DOWN'}</td>"
                     f"<td>{c['latency_s'] * 1000:.1f} ms</td><td>{e(c['error'] or '')}</td></tr>"
                     for n, c in doc["health"].items())
    lag: Dict[tuple, List[int]] = collections.defaultdict(lambda: [0, 0])
    for item in doc["lag"]:
        agg = lag[(item["group"], item["topic"])]
        agg[0] += item["messages"]
        agg[1] = max(agg[1], int(item["seconds"]))
    per_s = doc.get("consumed_per_s", {})
    lags = "".join(f"<tr><td>{e(g)}</td><td>{e(t)}</td><td>{m}</td><td>{s} s</td>"
                   f"<td>{per_s[g]:.1f}/s</td></tr>" if g in per_s else
                   f"<tr><td>{e(g)}</td><td>{e(t)}</td><td>{m}</td><td>{s} s</td><td></td></tr>"
                   for (g, t), (m, s) in sorted(lag.items(), key=lambda kv: (-kv[1][0], kv[0])))
    dlq = "".join(f"<tr class={'bad' if n else 'ok'}><td>{e(t)}</td><td>{n}</td></tr>"
                  for t, n in sorted(doc["dlq_last_hour"].items()))
    sinks = "".join(f"<tr><td>{e(t)}</td><td>{_age(ts, now)}</td><td>{e(', '.join(doc['sink_inputs'].get(t, [])))}"
                    f"</td></tr>" for t, ts in sorted(doc["sink_last_write"].items()))
    archive = "".join(f"<tr><td>{e(t)}</td><td>{_age(ts, now)}</td></tr>"
                      for t, ts in sorted(doc["archive_last_write"].items()))
    m = doc.get("marketo") or {}
    marketo = (f"<p>Marketo extractor: last run {e(str(m.get('status', '?')))}, {m.get('published', 0)} leads, "
               f"{m.get('calls', 0)} calls, {_age(m.get('finished_at'), now)}</p>" if m
               else "<p>Marketo extractor: no run recorded</p>")
    alerts = "".join(f"<tr class={'bad' if a.get('status') == 'firing' else 'ok'}><td>{e(a.get('status', ''))}</td>"
                     f"<td>{e(a.get('labels', {}).get('alertname', ''))}</td>"
                     f"<td>{e(a.get('annotations', {}).get('summary', ''))}</td><td>{e(a.get('startsAt', ''))}</td>"
                     f"</tr>" for a in reversed(doc["alerts"][-10:]))
    errors = "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in doc["errors"].items())
    overall = "healthy" if doc["healthy"] else "UNHEALTHY"
    return f"""<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=10>
<title>iheardAI pipelines: {overall}</title><style>
body{{font:14px system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} th{{background:#f4f4f4}}
tr.ok td:first-child{{border-left:4px solid #2a2}} tr.bad td:first-child{{border-left:4px solid #c22}}
h1 span{{font-size:60%;color:#666}}</style></head><body>
<h1>iheardAI pipelines: {overall} <span>{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}</span></h1>
<h2>Jobs</h2><table><tr><th>pipeline</th><th>state</th><th>job</th><th>uptime</th><th>restarts</th>
<th>last checkpoint</th><th>last exception</th></tr>{''.join(rows)}</table>
<h2>Services</h2><table><tr><th>service</th><th>health</th><th>latency</th><th>error</th></tr>{health}</table>
<h2>Consumer lag and throughput</h2><table><tr><th>group</th><th>topic</th><th>messages behind</th><th>oldest</th>
<th>group committed</th></tr>{lags}</table>
<h2>Dead letters, last hour</h2><table><tr><th>topic</th><th>records</th></tr>{dlq}</table>
<h2>Sink freshness</h2><table><tr><th>table</th><th>last write</th><th>fed by</th></tr>{sinks}</table>
<h2>Archive freshness</h2><table><tr><th>topic</th><th>newest object</th></tr>{archive}</table>
{marketo}
<h2>Alerts</h2><table><tr><th>status</th><th>alert</th><th>summary</th><th>since</th></tr>{alerts}</table>
{f'<h2>Collector errors</h2><ul>{errors}</ul>' if errors else ''}
<p><a href=/status>JSON</a> · <a href=/metrics>metrics</a> · <a href=/health>health</a></p></body></html>"""


def create_app(collector: Collector) -> Starlette:
    alerts: Deque[Dict[str, Any]] = collections.deque(maxlen=ALERTS_KEPT)
    registry = CollectorRegistry()
    registry.register(_SnapshotMetrics(collector))

    async def health(_request: Request) -> Response:
        snap = collector.snapshot
        checks = {k: {"ok": c.ok, "latency_ms": round(c.latency_s * 1000, 1), "error": c.error}
                  for k, c in snap.health.items()}
        ok = bool(checks) and all(c["ok"] for c in checks.values())
        down = sorted(k for k, c in checks.items() if not c["ok"])
        return JSONResponse({"status": "ok" if ok else "unhealthy", "down": down, "checks": checks,
                             "checked_at": snap.taken_at}, status_code=200 if ok else 503)

    async def status(request: Request) -> Response:
        doc = status_doc(collector.snapshot, alerts)
        if request.url.path.endswith(".html") or "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(render_html(doc))
        return JSONResponse(json.loads(json.dumps(doc, default=str)))

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def receive_alerts(request: Request) -> Response:
        body = await request.json()
        for alert in body.get("alerts", []):
            alerts.append(alert)
            log.warning("alert %s %s", alert.get("status"), alert.get("labels", {}).get("alertname"),
                        extra={"alert": alert.get("labels", {})})
        return JSONResponse({"received": len(body.get("alerts", []))})

    return Starlette(routes=[Route("/health", health), Route("/status", status), Route("/status.html", status),
                             Route("/metrics", metrics), Route("/alerts", receive_alerts, methods=["POST"]),
                             Route("/", status)])


def main(argv: Optional[List[str]] = None) -> int:
    import uvicorn

    from events.logs import configure
    from io_connectors.settings import environment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between collector passes")
    ap.add_argument("--flink-url", default="http://localhost:8081")
    ap.add_argument("--archive-prefix", default="", help="object key prefix of the Parquet archive")
    args = ap.parse_args(argv)
    configure("status", environ=environment())
    collector = Collector(args.flink_url, args.interval, archive_prefix=args.archive_prefix).start()
    log.info("status service on http://%s:%d", args.host, args.port)
    uvicorn.run(create_app(collector), host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
