"""A local Marketo REST server for tests: the documented endpoints and response shapes, with fault injection.

Endpoints: `/identity/oauth/token`, `/rest/v1/activities/pagingtoken.json`, `/rest/v1/activities/leadchanges.json`,
`/rest/v1/leads.json`, `/bulk/v1/leads/export/{create,<id>/enqueue,<id>/status,<id>/file,<id>/cancel}.json`.
Errors come back as Marketo sends them: HTTP 200, `success: false`, `errors: [{code, message}]` (string codes).

Like Marketo it enforces its own limits (606 past `rate_limit` calls per `rate_window` s, 615 past
`max_concurrency` calls in flight), returns the same token until it expires (`expires_in` is its remaining
life), answers 601/602 for unknown/expired tokens, writes empty fields of an export file as `null`, spells a
cancelled export's status `Canceled`, and answers 1029 "Job already queued" to a second enqueue of an export.
Exports complete after `export_polls` status polls, unless `export_endings` says how the next ones end
("Failed", "Canceled"). Faults are queued with `inject(kind, path, times)`.
Every call is recorded (`calls`: arrival time on time.monotonic, method, path, outcome) so tests can check
the client's rate; `max_in_flight` is the most calls seen in flight at once.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

MESSAGES = {
    "601": "Access token invalid", "602": "Access token expired", "604": "Request timed out",
    "606": "Max rate limit '100' exceeded with in '20' secs", "607": "Daily quota reached",
    "608": "API Temporarily Unavailable", "611": "System error", "615": "Concurrent access limit reached",
    "713": "Transient Error", "1029queue": "Too many jobs (10) in queue",
    "1029quota": "Export daily quota 500MB exceeded", "1029queued": "Job already queued",
    "1035": "Unsupported filter type for target subscription",
}


@dataclass
class Call:
    t: float  # arrival, time.monotonic()
    method: str
    path: str
    outcome: str = ""  # "ok", an error code, "http_500", ...


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeMarketo:
    def __init__(self, client_id: str = "test-client-id", client_secret: str = "test-client-secret",
                 token_ttl: float = 3600, rate_limit: int = 100, rate_window: float = 20.0, max_concurrency: int = 10,
                 short_page_every: int = 0, repeat_last_guid: bool = False, updated_at_filter: bool = True,
                 export_polls: int = 2, export_empty: str = "null"):
        self.client_id, self.client_secret, self.token_ttl = client_id, client_secret, token_ttl
        self.rate_limit, self.rate_window, self.max_concurrency = rate_limit, rate_window, max_concurrency
        self.short_page_every, self.repeat_last_guid = short_page_every, repeat_last_guid
        self.updated_at_filter, self.export_polls, self.export_empty = updated_at_filter, export_polls, export_empty
        self.export_endings: List[str] = []  # how the next exports end instead of Completed (in creation order)
        self.activities: List[Dict[str, Any]] = []  # ordered by activityDate
        self.leads: Dict[int, Dict[str, Any]] = {}
        self.exports: Dict[str, Dict[str, Any]] = {}
        self.calls: List[Call] = []
        self.in_flight = self.max_in_flight = 0
        self._tokens: Dict[str, float] = {}  # token -> expiry (monotonic)
        self._faults: List[List[Any]] = []  # [kind, path substring, remaining, arg]
        self._pages_served = 0
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None

    # --- test controls ---
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def inject(self, kind: str, path: str = "", times: int = 1, arg: float = 0.0) -> None:
        """Queue a fault for the next `times` calls whose path contains `path`. Kinds: a Marketo code
        ("601", "602", "604", "606", "607", "608", "611", "615", "713", "1029queue", "1029quota", "1029queued"),
        "http_500", "http_503", "slow" (answer after `arg` s), "expire" (expire every token first: a genuine
        602), "drop" (carry the call out, then close the connection without answering: a lost answer)."""
        with self._lock:
            self._faults.append([kind, path, times, arg])

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens = {t: 0.0 for t in self._tokens}

    def add_lead(self, lead_id: int, created: dt.datetime, **fields: Any) -> Dict[str, Any]:
        lead = {"id": lead_id, "createdAt": iso(created), "updatedAt": iso(created), **fields}
        self.leads[lead_id] = lead
        return lead

    def add_change(self, lead_id: int, when: dt.datetime, changes: Dict[str, Tuple[Any, Any]],
                   new_lead: bool = False, guid: Optional[str] = None) -> Dict[str, Any]:
        """Append an activity (New Lead = 12, Change Data Value = 13) and apply it to the lead."""
        act = {"id": len(self.activities) + 1, "marketoGUID": guid or str(uuid.uuid4()), "leadId": lead_id,
               "activityDate": iso(when), "activityTypeId": 12 if new_lead else 13,
               "fields": [{"id": i + 1, "name": k, "oldValue": o, "newValue": n}
                          for i, (k, (o, n)) in enumerate(changes.items())],
               "attributes": [{"name": "Source", "value": "Web form fillout"}]}
        with self._lock:
            self.activities.append(act)
            lead = self.leads.setdefault(lead_id, {"id": lead_id, "createdAt": iso(when)})
            lead.update({k: n for k, (_, n) in changes.items()}, updatedAt=iso(when))
        return act

    def calls_to(self, fragment: str) -> List[Call]:
        return [c for c in self.calls if fragment in c.path]

    def max_calls_in_window(self, window: Optional[float] = None) -> int:
        """The most calls that arrived within any `window` seconds (the rate the client achieved)."""
        window = window or self.rate_window
        ts = sorted(c.t for c in self.calls)
        best, j = 0, 0
        for i, t in enumerate(ts):
            while ts[j] <= t - window:
                j += 1
            best = max(best, i - j + 1)
        return best

    # --- serving ---
    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(req.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        now = time.monotonic()
        call = Call(now, method, url.path)
        with self._lock:
            self.calls.append(call)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            recent = sum(1 for c in self.calls if c.t > now - self.rate_window)
            over_concurrency = self.in_flight > self.max_concurrency
            fault = self._take_fault(url.path)
        status, payload, ctype = 200, None, "application/json"
        try:
            if fault and fault[0] == "slow":
                time.sleep(fault[3])
                fault = None
            if fault and fault[0] == "expire":
                self.expire_tokens()
                fault = None
            drop = bool(fault and fault[0] == "drop")
            if drop:
                fault = None
            if fault and fault[0].startswith("http_"):
                status, payload, ctype = int(fault[0][5:]), b"<html>Service Unavailable</html>", "text/html"
            elif url.path == "/identity/oauth/token":
                status, payload = self._token(params, body, req.headers.get("Content-Type", ""))
            elif fault:
                payload = self._error(fault[0])
            elif recent > self.rate_limit:
                payload = self._error("606")
            elif over_concurrency:
                payload = self._error("615")
            else:
                auth = self._check_token(req.headers.get("Authorization", ""))
                if auth:
                    payload = self._error(auth)
                else:
                    status, payload, ctype = self._route(method, url.path, params, body)
            if isinstance(payload, dict):
                call.outcome = "ok" if payload.get("success", True) else payload["errors"][0]["code"]
                payload = json.dumps(payload).encode()
            else:
                call.outcome = "ok" if status == 200 else f"http_{status}"
        except Exception as e:  # a bug in the fake: make it visible
            status, payload, ctype, call.outcome = 500, repr(e).encode(), "text/plain", "fake_bug"
        with self._lock:
            self.in_flight -= 1  # before answering: the client can't start another call on this one's slot sooner
        if drop:
            call.outcome = f"dropped ({call.outcome})"
            req.close_connection = True  # the call was carried out; its answer never reaches the client
            return
        try:
            req.send_response(status)
            req.send_header("Content-Type", ctype)
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            req.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            req.close_connection = True  # the client timed out and went away, as clients do

    def _take_fault(self, path: str) -> Optional[List[Any]]:
        for f in self._faults:
            if f[2] > 0 and f[1] in path and (f[1] or "identity" not in path):  # identity only when named
                f[2] -= 1
                return f
        return None

    @staticmethod
    def _error(kind: str) -> Dict[str, Any]:
        return {"requestId": uuid.uuid4().hex[:12], "success": False,
                "errors": [{"code": kind[:4] if kind.startswith("1029") else kind, "message": MESSAGES[kind]}]}

    def _token(self, params, body: bytes, ctype: str):
        if "x-www-form-urlencoded" in ctype:
            params = {**params, **{k: v[-1] for k, v in parse_qs(body.decode()).items()}}
        if params.get("grant_type") != "client_credentials" or params.get("client_id") != self.client_id \
                or params.get("client_secret") != self.client_secret:
            return 401, {"error": "invalid_client", "error_description": "Bad client credentials"}
        now = time.monotonic()
        with self._lock:
            live = [(t, exp) for t, exp in self._tokens.items() if exp > now]
            if live:  # Marketo hands back the live token with its remaining life
                token, exp = live[0]
            else:
                token, exp = f"{uuid.uuid4()}:ab", now + self.token_ttl
                self._tokens[token] = exp
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": max(0, int(exp - now)),
                     "scope": "api@example.com"}

    def _check_token(self, header: str) -> Optional[str]:
        token = header[7:] if header.startswith("Bearer ") else ""
        exp = self._tokens.get(token)
        if exp is None:
            return "601"
        return "602" if exp <= time.monotonic() else None

    @staticmethod
    def _ok(result: Any = None, **extra: Any) -> Dict[str, Any]:
        body = {"requestId": uuid.uuid4().hex[:12], "success": True, **extra}
        if result is not None:
            body["result"] = result
        return body

    def _route(self, method: str, path: str, params: Dict[str, str], body: bytes):
        if path == "/rest/v1/activities/pagingtoken.json":
            since = dt.datetime.fromisoformat(params["sinceDatetime"])
            pos = next((i for i, a in enumerate(self.activities)
                        if dt.datetime.fromisoformat(a["activityDate"]) >= since), len(self.activities))
            return 200, self._ok(nextPageToken=_encode(pos)), "application/json"
        if path == "/rest/v1/activities/leadchanges.json":
            return 200, self._lead_changes(params), "application/json"
        if path == "/rest/v1/leads.json":
            ids = [int(x) for x in params.get("filterValues", "").split(",") if x]
            wanted = params.get("fields", "").split(",")
            rows = [{k: v for k, v in self.leads[i].items() if k in wanted or k == "id"} for i in ids if i in self.leads]
            return 200, self._ok(rows), "application/json"
        if path.startswith("/bulk/v1/leads/export/"):
            return self._bulk(method, path.rsplit("/", 2)[-2:], body)
        return 404, b"not found", "text/plain"

    def _lead_changes(self, params: Dict[str, str]) -> Dict[str, Any]:
        pos = _decode(params["nextPageToken"])
        size = min(int(params.get("batchSize", 300)), 300)
        wanted = set(params["fields"].split(","))
        with self._lock:
            self._pages_served += 1
            if self.short_page_every and self._pages_served % self.short_page_every == 0:
                size = self._pages_served % 3  # a short (possibly empty) page; moreResult stays true
            items = self.activities[pos:pos + size]
            if self.repeat_last_guid and pos > 0:
                items = [self.activities[pos - 1]] + items  # the previous page's last change again
            end = pos + min(size, len(self.activities) - pos)
            more = end < len(self.activities)
        result = [{**a, "fields": [f for f in a["fields"] if f["name"] in wanted]} for a in items]
        return self._ok(result, nextPageToken=_encode(end), moreResult=more)

    def _bulk(self, method: str, tail: List[str], body: bytes):
        j = "application/json"
        if tail[-1] == "create.json":
            req = json.loads(body or b"{}")
            (name, rng), = req["filter"].items()
            if name == "updatedAt" and not self.updated_at_filter:
                return 200, self._error("1035"), j
            start, end = (dt.datetime.fromisoformat(rng[k]) for k in ("startAt", "endAt"))
            if end - start > dt.timedelta(days=31):
                return 200, {"success": False, "errors": [{"code": "1003", "message": "Date range must be 31 days or fewer"}]}, j
            eid = str(uuid.uuid4())
            ending = self.export_endings.pop(0) if self.export_endings else "Completed"
            self.exports[eid] = {"exportId": eid, "format": "CSV", "status": "Created", "createdAt": iso(_now()),
                                 "fields": req["fields"], "filter": name, "start": start, "end": end, "polls": 0,
                                 "ending": ending}
            return 200, self._ok([self._export_view(eid)]), j
        eid, action = tail[0], tail[1]
        job = self.exports.get(eid)
        if job is None:
            return 200, {"success": False, "errors": [{"code": "1003", "message": f"Export {eid} not found"}]}, j
        if action == "enqueue.json":
            if job["status"] != "Created":
                return 200, {"success": False, "errors": [{"code": "1029", "message": "Job already queued"}]}, j
            job.update(status="Queued", queuedAt=iso(_now()))
        elif action == "status.json":
            if job["status"] in ("Queued", "Processing"):
                job["polls"] += 1
                job["status"] = job.get("ending", "Completed") if job["polls"] >= self.export_polls else "Processing"
        elif action == "cancel.json":
            job["status"] = "Canceled"
        elif action == "file.json":
            if job["status"] != "Completed":
                return 200, {"success": False, "errors": [{"code": "1003", "message": "Job not completed"}]}, j
            return 200, self._export_file(job).encode(), "text/csv"
        return 200, self._ok([self._export_view(eid)]), j

    def _export_rows(self, job) -> List[Dict[str, Any]]:
        key = job["filter"]

        def when(lead):  # updatedAt filters on the last field update, not the visible field (which may be empty)
            return lead.get(key) or lead["createdAt"]

        return [lead for lead in sorted(self.leads.values(), key=lambda x: (when(x), x["id"]))
                if job["start"] <= dt.datetime.fromisoformat(when(lead)) < job["end"]]

    def _export_file(self, job) -> str:
        """CSV as Marketo writes it: every requested field, an empty one as `export_empty` (`null`)."""
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=job["fields"], extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self._export_rows(job):
            w.writerow({k: self.export_empty if r.get(k) in (None, "") else r[k] for k in job["fields"]})
        return out.getvalue()

    def _export_view(self, eid: str) -> Dict[str, Any]:
        job = self.exports[eid]
        view = {k: job[k] for k in ("exportId", "format", "status", "createdAt") if k in job}
        if "queuedAt" in job:
            view["queuedAt"] = job["queuedAt"]
        if job["status"] == "Completed":
            data = self._export_file(job).encode()
            view.update(finishedAt=iso(_now()), numberOfRecords=len(self._export_rows(job)), fileSize=len(data),
                        fileChecksum=hashlib.sha256(data).hexdigest())
        return view


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _encode(pos: int) -> str:
    return base64.b32encode(f"pos:{pos:012d}".encode()).decode()


def _decode(token: str) -> int:
    return int(base64.b32decode(token.encode()).decode().split(":")[1])
