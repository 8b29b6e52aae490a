"""The HTTP collector: the browser tracker's `POST /api/analytics` into the frontend topics.

    python -m iheardai_analytics.collector [--port 8001] [--allowed-origins https://www.iheard.ai,...]
                                           [--workers 2] [--ack spill|kafka] [--rate-limit-per-s 20] ...

Every option also reads an environment variable (COLLECTOR_<OPTION>, e.g. COLLECTOR_ALLOWED_ORIGINS); Kafka
settings are the pipelines' (KAFKA_*, io_connectors.settings).

- `POST /api/analytics`: one event (a JSON object) or a batch (a JSON array of at most --max-batch-events).
  `application/json`, or `text/plain` (what `navigator.sendBeacon` may send cross-origin without a CORS
  preflight). Each event goes to its frontend topic by `event_type` (`frontend.session_analytics`,
  `frontend.widget_performance`, anything else is a `frontend.user.interaction`), keyed by `session_id`.
  The request's User-Agent fills `user_agent` when the event has none (the only request attribute the
  frontend contracts have a field for; the client IP is used for rate limiting only and not stored).
  - 202 `{"accepted": n, "durability": "spill"|"kafka"}` once the events are in the producer's spill (which
    survives a crash of this process and is replayed to Kafka), or, with `--ack kafka`, once Kafka
    acknowledged them (falling back to the spill's guarantee after --ack-timeout-ms, e.g. while Kafka is down);
  - 400 `{"error": ..., "errors": [{"index": i, "kind": ..., "reason": ...}]}`: every invalid event of the
    request with the reason the pipelines would give; nothing of the request is produced;
  - 413: a body over --max-body-bytes or more events than --max-batch-events; 429 (with Retry-After): the
    client IP exceeded --rate-limit-per-s (token bucket, --rate-limit-burst); 503: the spill is full.
- CORS for --allowed-origins only (none: same-origin only; `*` allows any origin).
- `GET /health`: 200 `{"status": "ok" | "degraded", ...}` (degraded: Kafka unreachable, events spill), 503
  when the producer cannot take events (spill full, sender stopped). `GET /metrics`: Prometheus.
- `GET /tracker.js`: the browser tracker (iheardai_analytics/static/tracker.js), an ES module.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from events import topics
from iheardai_analytics.client import Analytics, InvalidEvent

log = logging.getLogger("iheardai_analytics.collector")
TRACKER_JS = Path(__file__).resolve().parent / "static" / "tracker.js"
SESSION_TYPES = {"frontend.session_analytics": topics.FRONTEND_SESSION,
                 "frontend.widget_performance": topics.FRONTEND_WIDGET}

# in their own module: `python -m iheardai_analytics.collector` runs this file as __main__ and uvicorn imports it
# again by name; metrics defined here would be registered twice
from iheardai_analytics.collector_metrics import EVENTS, LATENCY, REQUESTS  # noqa: E402


def frontend_topic(event: object) -> str:
    et = event.get("event_type") if isinstance(event, dict) else None
    return SESSION_TYPES.get(et, topics.FRONTEND_INTERACTION) if isinstance(et, str) else topics.FRONTEND_INTERACTION


class RateLimiter:
    """Token bucket per client key (rate per second, burst), for at most `max_clients` recent clients."""

    def __init__(self, rate_per_s: float, burst: float, max_clients: int = 100_000):
        self.rate, self.burst, self.max_clients = rate_per_s, burst, max_clients
        self._buckets: "collections.OrderedDict[str, List[float]]" = collections.OrderedDict()

    def allow(self, key: str, now: Optional[float] = None) -> bool:
        now = time.monotonic() if now is None else now
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = [self.burst, now]
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] >= 1:
            b[0] -= 1
            return True
        return False


def _error(status: int, message: str, errors: Optional[list] = None, headers: Optional[Dict[str, str]] = None):
    REQUESTS.labels(str(status)).inc()
    body = {"error": message}
    if errors is not None:
        body["errors"] = errors
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def create_app(analytics: Analytics, *, allowed_origins: Sequence[str] = (), max_body_bytes: int = 64 * 1024,
               max_batch_events: int = 100, rate_limit_per_s: float = 20.0, rate_limit_burst: float = 60.0,
               ack: str = "spill", ack_timeout_ms: int = 2000, close_on_shutdown: bool = True) -> Starlette:
    if ack not in ("spill", "kafka"):
        raise ValueError(f"ack must be spill or kafka, got {ack!r}")
    limiter = RateLimiter(rate_limit_per_s, rate_limit_burst) if rate_limit_per_s > 0 else None
    retry_after = str(max(1, int(1 / rate_limit_per_s + 0.999))) if rate_limit_per_s > 0 else "1"
    ack_timeout_s = ack_timeout_ms / 1000

    async def collect(request: Request) -> Response:
        t0 = time.perf_counter()
        client = request.client.host if request.client else "-"
        if limiter is not None and not limiter.allow(client):
            return _error(429, f"rate limit: {rate_limit_per_s:g} requests/s per client", headers={
                "Retry-After": retry_after})
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return _error(413, f"body of {declared} bytes, limit {max_body_bytes}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return _error(413, f"body over {max_body_bytes} bytes")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            EVENTS.labels("invalid").inc()
            return _error(400, "the body is not JSON", [{"index": None, "kind": "invalid_json", "reason": str(e)}])
        events = doc if isinstance(doc, list) else [doc]
        if not events:
            return _error(400, "an empty batch", [{"index": None, "kind": "empty_batch", "reason": "no events"}])
        if len(events) > max_batch_events:
            return _error(413, f"a batch of {len(events)} events, limit {max_batch_events}")
        ua = request.headers.get("user-agent")
        now_ms = time.time_ns() // 1_000_000
        prepared, errors = [], []
        for i, ev in enumerate(events):
            if ua and isinstance(ev, dict) and not ev.get("user_agent"):
                ev["user_agent"] = ua
            try:
                prepared.append(analytics.prepare(ev, frontend_topic(ev), validate=True, now_ms=now_ms))
            except InvalidEvent as e:
                errors.append({"index": i, "kind": e.kind, "reason": str(e)})
        if errors:
            EVENTS.labels("invalid").inc(len(errors))
            return _error(400, f"{len(errors)} of {len(events)} events invalid; none was accepted", errors)
        durability = "spill"
        if ack == "kafka":
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            pending = [len(prepared)]

            def delivered(err, pending=pending):  # on the sender thread, one at a time
                pending[0] -= 1
                if pending[0] == 0:
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
            ok = all([analytics.send(p, delivered) for p in prepared])
            if ok:
                try:
                    await asyncio.wait_for(asyncio.shield(done), ack_timeout_s)
                    durability = "kafka"
                except asyncio.TimeoutError:
                    pass
        else:
            ok = all([analytics.send(p) for p in prepared])
        if not ok:
            EVENTS.labels("refused").inc(len(prepared))
            return _error(503, "the collector cannot take events now (spill full)", headers={"Retry-After": "5"})
        EVENTS.labels("accepted").inc(len(prepared))
        REQUESTS.labels("202").inc()
        LATENCY.observe(time.perf_counter() - t0)
        return Response(b'{"accepted":%d,"durability":"%s"}' % (len(prepared), durability.encode()), 202,
                        media_type="application/json")

    async def health(request: Request) -> Response:
        s = analytics.stats()
        alive = analytics._thread.is_alive()
        full = s["spill_bytes"] > 0.9 * analytics.spill.max_bytes
        status = "ok" if s["kafka_connected"] else "degraded"
        code = 200 if alive and not full else 503
        if code != 200:
            status = "unavailable"
        return JSONResponse({"status": status, **s, "sender_alive": alive}, code)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def tracker(request: Request) -> Response:
        return FileResponse(TRACKER_JS, media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=300"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if close_on_shutdown:
            left = await asyncio.to_thread(analytics.close)
            log.info("collector stopped; %d events left in the spill for the next start", left)

    middleware = []
    if allowed_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(allowed_origins),
                                     allow_methods=["POST", "GET"], allow_headers=["Content-Type"], max_age=600))
    return Starlette(routes=[Route("/api/analytics", collect, methods=["POST"]), Route("/health", health),
                             Route("/metrics", metrics), Route("/tracker.js", tracker)],
                     middleware=middleware, lifespan=lifespan)


# --- configuration: flags, each with a COLLECTOR_* environment variable (the uvicorn workers read those) ---

OPTIONS = (
    # (flag, type, default, help)
    ("host", str, "127.0.0.1", "address to listen on"),
    ("port", int, 8001, "port to listen on"),
    ("workers", int, 1, "uvicorn worker processes (each its own producer and spill files)"),
    ("allowed_origins", str, "", "comma-separated origins allowed by CORS ('*' for any); empty: same-origin"),
    ("max_body_bytes", int, 64 * 1024, "largest request body (413 above)"),
    ("max_batch_events", int, 100, "most events in one request (413 above)"),
    ("rate_limit_per_s", float, 20.0, "requests per second per client IP (429 above); 0 disables"),
    ("rate_limit_burst", float, 60.0, "token-bucket burst of the rate limit"),
    ("ack", str, "spill", "reply 202 once the spill holds the events (spill) or Kafka acknowledged them (kafka)"),
    ("ack_timeout_ms", int, 2000, "with --ack kafka: reply after this long anyway (the spill holds the events)"),
    ("spill_dir", str, "", "the producer's spill directory (default /var/tmp/iheardai-analytics/collector)"),
    ("linger_ms", int, 5, "Kafka producer linger (batching)"),
    ("forwarded_allow_ips", str, "127.0.0.1", "proxies whose X-Forwarded-For gives the client IP"),
)


def _env_name(opt: str) -> str:
    return f"COLLECTOR_{opt.upper()}"


def app_from_env() -> Starlette:
    """The app as configured by COLLECTOR_* variables (what each uvicorn worker calls)."""
    from io_connectors.settings import get

    cfg = {name: typ(get(_env_name(name), str(default))) for name, typ, default, _ in OPTIONS}
    spill = cfg["spill_dir"] or str(Path(get("IHEARDAI_ANALYTICS_SPILL_DIR", "/var/tmp/iheardai-analytics"))
                                    / "collector")
    analytics = Analytics.from_env("collector", on_invalid="raise", default_topic=topics.FRONTEND_INTERACTION,
                                   spill_dir=spill, linger_ms=cfg["linger_ms"])
    origins = [o.strip() for o in cfg["allowed_origins"].split(",") if o.strip()]
    return create_app(analytics, allowed_origins=origins, max_body_bytes=cfg["max_body_bytes"],
                      max_batch_events=cfg["max_batch_events"], rate_limit_per_s=cfg["rate_limit_per_s"],
                      rate_limit_burst=cfg["rate_limit_burst"], ack=cfg["ack"], ack_timeout_ms=cfg["ack_timeout_ms"])


def main(argv: Optional[List[str]] = None) -> int:
    import uvicorn

    from events.logs import configure
    from io_connectors.settings import environment, get

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, typ, default, help_ in OPTIONS:
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ,
                        default=typ(get(_env_name(name), str(default))), help=f"{help_} (${_env_name(name)})")
    args = ap.parse_args(argv)
    if args.ack not in ("spill", "kafka"):
        ap.error("--ack must be spill or kafka")
    for name, *_ in OPTIONS:  # the workers (and app_from_env) read the same settings
        os.environ[_env_name(name)] = str(getattr(args, name))
    configure("collector", environ=environment())
    log.info("collector on http://%s:%d (workers=%d, ack=%s)", args.host, args.port, args.workers, args.ack)
    uvicorn.run("iheardai_analytics.collector:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, loop="uvloop", http="httptools", log_config=None, access_log=False,
                proxy_headers=True, forwarded_allow_ips=args.forwarded_allow_ips, timeout_graceful_shutdown=15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
