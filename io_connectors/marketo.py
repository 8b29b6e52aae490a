"""Marketo REST client: OAuth, client-side rate limiting, retries and error mapping, call accounting.

Marketo answers most errors with HTTP 200, `success: false` and string codes; `classify()` maps each code to
what the client does (refresh the token, back off and retry, stop for the day, or fail loudly). Calls pass
through a `CallGate`: at most `max_concurrency` in flight and at most `calls_per_window` started in any
`window_seconds` (Marketo allows 100 per 20 s and 10 concurrent; we default to half of each). The access
token is checked once the gate has let a call through, right before it is sent, so a wait for the rate limit
never sends a token that expired meanwhile.

Configuration comes from the environment (`MarketoConfig.from_env`): MARKETO_BASE_URL, MARKETO_CLIENT_ID,
MARKETO_CLIENT_SECRET (or MARKETO_CLIENT_SECRET_FILE). The secret and the access token are never logged and
never put in a URL (the token goes in the Authorization header, the credentials in a POST body).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import requests

from io_connectors import settings

log = logging.getLogger(__name__)

# Marketo's daily quota resets at midnight US Central time.
try:
    from zoneinfo import ZoneInfo

    QUOTA_TZ: dt.tzinfo = ZoneInfo("America/Chicago")
except Exception:  # pragma: no cover - no tz database
    QUOTA_TZ = dt.timezone(dt.timedelta(hours=-6))


def quota_day(now: Optional[float] = None) -> str:
    """The Marketo quota day (US Central date) of a wall-clock time."""
    return dt.datetime.fromtimestamp(time.time() if now is None else now, QUOTA_TZ).date().isoformat()


@dataclass(frozen=True, repr=False)
class MarketoConfig:
    base_url: str
    client_id: str
    client_secret: str
    calls_per_window: int = 50
    window_seconds: float = 20.0
    max_concurrency: int = 5
    timeout_seconds: float = 30.0
    max_attempts: int = 8
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    token_refresh_margin_seconds: float = 60.0
    daily_call_budget: int = 50_000

    @classmethod
    def from_env(cls, **overrides: Any) -> "MarketoConfig":
        base = settings.get("MARKETO_BASE_URL")
        cid = settings.get("MARKETO_CLIENT_ID")
        secret = settings._secret_file("MARKETO_CLIENT_SECRET") or settings.get("MARKETO_CLIENT_SECRET")
        missing = [n for n, v in (("MARKETO_BASE_URL", base), ("MARKETO_CLIENT_ID", cid),
                                  ("MARKETO_CLIENT_SECRET", secret)) if not v]
        if missing:
            raise ValueError(f"missing Marketo configuration: {', '.join(missing)}")
        env_numbers = {"calls_per_window": "MARKETO_CALLS_PER_WINDOW", "window_seconds": "MARKETO_WINDOW_SECONDS",
                       "max_concurrency": "MARKETO_MAX_CONCURRENCY", "daily_call_budget": "MARKETO_DAILY_CALL_BUDGET",
                       "timeout_seconds": "MARKETO_TIMEOUT_SECONDS", "max_attempts": "MARKETO_MAX_ATTEMPTS"}
        cfg = cls(base.rstrip("/"), cid, secret)
        numbers = {}
        for name, env in env_numbers.items():
            raw = settings.get(env)
            if raw:
                numbers[name] = type(getattr(cfg, name))(float(raw))
        return replace(cfg, **{**numbers, **overrides})

    def __post_init__(self):
        if self.calls_per_window < 1 or self.window_seconds <= 0 or self.max_concurrency < 1:
            raise ValueError("rate limits must be positive")

    def __repr__(self) -> str:
        shown = {f.name: ("***" if f.name == "client_secret" else getattr(self, f.name)) for f in fields(self)}
        return f"MarketoConfig({shown})"


# --- errors -----------------------------------------------------------------------------------------------


class Action(str, Enum):
    REAUTH = "reauth"  # token invalid/expired: refresh it, retry at once
    RETRY = "retry"  # transient: jittered exponential backoff, then retry
    STOP = "stop"  # quota: stop the run cleanly, resume tomorrow
    DONE = "done"  # the request was carried out already (1029 Job already queued): the caller carries on
    FAIL = "fail"  # anything else: fail loudly with code and message


REAUTH_CODES = {"601", "602"}
RETRY_CODES = {"604", "606", "608", "611", "615", "713"}


def classify(code: str, message: str = "") -> Action:
    """What to do about a Marketo error code.

    1029 means three things, told apart by its message: "Export daily quota exceeded" (stop for the day),
    "Too many jobs in queue" (wait and retry) and "Job already queued" (an earlier enqueue of this export went
    through, e.g. one whose answer was lost: nothing to redo).
    """
    code = str(code)
    if code in REAUTH_CODES:
        return Action.REAUTH
    if code in RETRY_CODES:
        return Action.RETRY
    if code == "607":
        return Action.STOP
    if code == "1029":
        text = message.lower()
        if "quota" in text:
            return Action.STOP
        if "already" in text:
            return Action.DONE
        return Action.RETRY
    return Action.FAIL


class MarketoError(Exception):
    def __init__(self, code: str, message: str, path: str = ""):
        super().__init__(f"Marketo error {code} on {path}: {message}")
        self.code, self.message, self.path = str(code), message, path


class MarketoQuotaExceeded(MarketoError):
    """Daily API quota (607), export quota (1029) or our own daily budget: stop now, resume tomorrow."""


class MarketoRetriesExhausted(MarketoError):
    """A transient error that outlasted `max_attempts`."""


class MarketoAlreadyDone(MarketoError):
    """Marketo says the request was carried out before (1029 "Job already queued")."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random = random) -> float:
    """Jittered exponential backoff: uniform in [d/2, d] with d = min(cap, base * 2**attempt)."""
    d = min(cap, base * (2 ** max(0, attempt)))
    return rng.uniform(d / 2, d)


# --- rate limiting ------------------------------------------------------------------------------------------


class CallGate:
    """At most `max_concurrency` calls in flight and at most `calls` started in any `window` seconds.

    A token bucket of `calls` tokens whose tokens come back `window` seconds after the call that used them
    *finished*: since a call reaches the server between its start and its end, the server never sees more
    than `calls` arrivals in any window, whatever the network delays.
    """

    def __init__(self, calls: int, window: float, max_concurrency: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.calls, self.window, self.max_concurrency = calls, window, max_concurrency
        self._clock, self._sleep = clock, sleep
        self._free_at: List[float] = [float("-inf")] * calls  # per token; +inf while its call is in flight
        self._before: Dict[int, float] = {}  # a token's free time before the call in flight took it
        self._in_flight = 0
        self._cond = threading.Condition()
        self.waited_seconds = 0.0

    def preload(self, finished_at: Iterable[float]) -> None:
        """Mark tokens as used by calls that finished at these clock times (e.g. a previous run's)."""
        with self._cond:
            for i, t in enumerate(sorted(finished_at)[-self.calls:]):
                self._free_at[i] = max(self._free_at[i], t + self.window)

    def acquire(self) -> int:
        with self._cond:
            while True:
                now = self._clock()
                i = min(range(self.calls), key=self._free_at.__getitem__)
                if self._in_flight < self.max_concurrency and self._free_at[i] <= now:
                    self._before[i], self._free_at[i] = self._free_at[i], float("inf")
                    self._in_flight += 1
                    return i
                wait = 0.05 if self._in_flight >= self.max_concurrency or self._free_at[i] == float("inf") \
                    else self._free_at[i] - now
                self.waited_seconds += wait
                self._cond.wait(timeout=wait) if self._sleep is time.sleep else self._sleep(wait)

    def release(self, token: int) -> None:
        with self._cond:
            self._free_at[token] = self._clock() + self.window
            self._before.pop(token, None)
            self._in_flight -= 1
            self._cond.notify_all()

    def give_back(self, token: int) -> None:
        """Return a token whose call was never sent: it is free again when it was before `acquire`."""
        with self._cond:
            self._free_at[token] = self._before.pop(token)
            self._in_flight -= 1
            self._cond.notify_all()

    def recent(self) -> List[float]:
        """Finish times (clock) of calls that still hold a token."""
        with self._cond:
            return [t - self.window for t in self._free_at if t != float("-inf") and t != float("inf")]


# --- the client ---------------------------------------------------------------------------------------------


@dataclass
class CallStats:
    calls: int = 0  # HTTP requests this run, identity included
    api_calls: int = 0  # calls that count against Marketo's daily quota (identity calls do not)
    calls_today_before: int = 0  # from the durable ledger, before this run
    token_refreshes: int = 0
    retries: Counter = field(default_factory=Counter)  # by error code / "http_5xx" / "timeout"

    @property
    def calls_today(self) -> int:
        return self.calls_today_before + self.api_calls


class MarketoClient:
    LEAD_FIELDS = ("email", "firstName", "lastName", "company", "title", "phone", "leadSource", "leadStatus",
                   "leadScore", "country", "state", "city", "createdAt", "updatedAt")

    def __init__(self, config: MarketoConfig, session: Optional[requests.Session] = None,
                 sleep: Callable[[float], None] = time.sleep, rng: Optional[random.Random] = None,
                 calls_today_before: int = 0):
        self.config = config
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = "iheardai-marketo-extractor/1"
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.gate = CallGate(config.calls_per_window, config.window_seconds, config.max_concurrency)
        self.stats = CallStats(calls_today_before=calls_today_before)
        self._auth: Tuple[Optional[str], float] = (None, 0.0)  # (access token, good until on time.monotonic)
        self._token_lock = threading.Lock()
        self._stats_lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    # auth
    @property
    def _token(self) -> Optional[str]:
        return self._auth[0]

    def _live_token(self) -> Optional[str]:
        """The access token if it is still good to send now, else None. Takes no lock: it is read while a
        gate slot is held, and a thread that holds a slot must never wait for one that fetches a token."""
        token, good_until = self._auth
        return token if token is not None and time.monotonic() < good_until else None

    def _access_token(self, force: bool = False, stale: Optional[str] = None) -> str:
        with self._token_lock:
            if force and stale is not None and self._token != stale:
                return self._token  # another thread refreshed it already
            if force or self._live_token() is None:
                self._fetch_token()
            return self._token

    def _fetch_token(self) -> None:
        url = f"{self.config.base_url}/identity/oauth/token"
        data = {"grant_type": "client_credentials", "client_id": self.config.client_id,
                "client_secret": self.config.client_secret}
        for _ in range(3):
            body, _ = self._send("POST", url, "/identity/oauth/token", data=data, counts=False)
            if "access_token" not in body:
                raise MarketoError(body.get("error", "auth"), body.get("error_description", "no access_token"),
                                   "/identity/oauth/token")
            life = float(body.get("expires_in", 0))
            if body["access_token"] != self._token or life > 1:
                break
            self._sleep(life + 0.5)  # Marketo hands back a live token until it expires: wait that out, ask again
        # Refresh `margin` before expiry; but a token handed back again (asked early) is used until ~1 s before.
        margin = 1.0 if body["access_token"] == self._token else min(self.config.token_refresh_margin_seconds,
                                                                      life / 2)
        self._auth = (body["access_token"], time.monotonic() + life - margin)
        self.stats.token_refreshes += 1
        log.info("marketo: access token obtained (valid %.0fs, refreshing %.0fs early)", life, margin)

    # transport
    def _acquire_with_token(self) -> Tuple[int, str]:
        """A gate slot, then a token checked right before the call goes out: a token that went stale while
        the call waited for the rate limiter is refreshed first (the slot is given back unused meanwhile, so
        the identity call can take one). After a few refreshes in a row the call goes with the newest token."""
        for _ in range(3):
            slot = self.gate.acquire()
            token = self._live_token()
            if token is not None:
                return slot, token
            self.gate.give_back(slot)
            self._access_token()
        return self.gate.acquire(), self._token

    def _send(self, method: str, url: str, path: str, counts: bool = True, raw: bool = False, auth: bool = False,
              **kw) -> Tuple[Any, Optional[str]]:
        """One HTTP call through the gate, with HTTP-level retries (timeouts, 5xx): (body, the token it sent).
        With `auth`, each attempt takes the access token only once the gate lets it through."""
        for attempt in range(self.config.max_attempts):
            if counts and self.stats.calls_today >= self.config.daily_call_budget:
                raise MarketoQuotaExceeded("budget", f"daily call budget {self.config.daily_call_budget} used", path)
            slot, token = self._acquire_with_token() if auth else (self.gate.acquire(), None)
            try:
                with self._stats_lock:
                    self.stats.calls += 1
                    self.stats.api_calls += counts
                headers = {"Authorization": f"Bearer {token}"} if auth else None
                resp = self._session.request(method, url, timeout=self.config.timeout_seconds, headers=headers,
                                             **kw)
            except (requests.Timeout, requests.ConnectionError) as e:
                reason, detail = "timeout", type(e).__name__
            else:
                if resp.status_code < 500:
                    if resp.status_code >= 400 and not path.startswith("/identity"):
                        raise MarketoError(f"http_{resp.status_code}", resp.text[:300], path)
                    if raw and "json" not in resp.headers.get("Content-Type", ""):
                        return resp.text, token
                    try:
                        return resp.json(), token
                    except ValueError:
                        raise MarketoError("bad_json", resp.text[:300], path) from None
                reason, detail = "http_5xx", str(resp.status_code)
            finally:
                self.gate.release(slot)
            self._backoff(attempt, reason, detail, path)
        raise MarketoRetriesExhausted(reason, f"{detail} after {self.config.max_attempts} attempts", path)

    def _backoff(self, attempt: int, reason: str, detail: str, path: str) -> None:
        with self._stats_lock:
            self.stats.retries[reason] += 1
        delay = backoff_delay(attempt, self.config.backoff_base_seconds, self.config.backoff_max_seconds, self._rng)
        log.warning("marketo: %s (%s) on %s, retry %d in %.2fs", reason, detail, path, attempt + 1, delay)
        self._sleep(delay)

    def call(self, method: str, path: str, params: Optional[Dict[str, Any]] = None, json: Any = None,
             raw: bool = False) -> Any:
        """A Marketo API call with auth, error mapping and retries; returns the JSON body (or text if `raw`)."""
        url = f"{self.config.base_url}{path}"
        attempt = 0
        reauths = 0
        while True:
            body, token = self._send(method, url, path, params=params, json=json, raw=raw, auth=True)
            if isinstance(body, str) or body.get("success", True):
                return body
            err = (body.get("errors") or [{"code": "unknown", "message": str(body)[:300]}])[0]
            code, message = str(err.get("code")), str(err.get("message", ""))
            action = classify(code, message)
            if action is Action.REAUTH and reauths < 3:
                reauths += 1
                with self._stats_lock:
                    self.stats.retries[code] += 1
                log.info("marketo: %s (%s) on %s, refreshing the token", code, message, path)
                self._access_token(force=True, stale=token)
                continue
            if action is Action.STOP:
                raise MarketoQuotaExceeded(code, message, path)
            if action is Action.DONE:
                raise MarketoAlreadyDone(code, message, path)
            if action is not Action.RETRY:
                raise MarketoError(code, message, path)
            if attempt + 1 >= self.config.max_attempts:
                raise MarketoRetriesExhausted(code, message, path)
            self._backoff(attempt, code, message, path)
            attempt += 1

    # endpoints
    def paging_token(self, since: dt.datetime) -> str:
        body = self.call("GET", "/rest/v1/activities/pagingtoken.json",
                         params={"sinceDatetime": since.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
        return body["nextPageToken"]

    def lead_changes(self, page_token: str, fields: Sequence[str], batch_size: int = 300
                     ) -> Tuple[List[Dict[str, Any]], str, bool]:
        """One page of Data Value Change / New Lead activities: (results, next token, moreResult)."""
        body = self.call("GET", "/rest/v1/activities/leadchanges.json",
                         params={"nextPageToken": page_token, "fields": ",".join(fields), "batchSize": batch_size})
        return body.get("result") or [], body.get("nextPageToken", page_token), bool(body.get("moreResult"))

    def leads_by_id(self, ids: Sequence[int], fields: Sequence[str] = LEAD_FIELDS, chunk: int = 300
                    ) -> Dict[int, Dict[str, Any]]:
        """Current field values of these leads (chunks of <= 300 ids fetched concurrently, under the gate)."""
        ids = sorted(set(ids))
        chunks = [ids[i:i + chunk] for i in range(0, len(ids), chunk)]

        def one(part):
            return self.call("GET", "/rest/v1/leads.json", params={
                "filterType": "id", "filterValues": ",".join(map(str, part)), "fields": ",".join(("id",) + tuple(fields))
            }).get("result") or []

        if len(chunks) <= 1:
            rows = [r for c in chunks for r in one(c)]
        else:
            with ThreadPoolExecutor(min(len(chunks), self.config.max_concurrency)) as pool:
                rows = [r for part in pool.map(one, chunks) for r in part]
        return {int(r["id"]): r for r in rows}

    def create_lead_export(self, fields: Sequence[str], filter_name: str, start: dt.datetime, end: dt.datetime) -> str:
        iso = lambda t: t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
        body = self.call("POST", "/bulk/v1/leads/export/create.json", json={
            "fields": list(fields), "format": "CSV",
            "filter": {filter_name: {"startAt": iso(start), "endAt": iso(end)}}})
        return str(body["result"][0]["exportId"])

    def enqueue_lead_export(self, export_id: str) -> Dict[str, Any]:
        """Queue a created export. "Job already queued" (1029) means an earlier enqueue went through (its
        answer lost, or a run that died after it): the export's status is returned instead."""
        try:
            return self.call("POST", f"/bulk/v1/leads/export/{export_id}/enqueue.json")["result"][0]
        except MarketoAlreadyDone as e:
            log.info("marketo: export %s was queued already (%s: %s): carrying on with it", export_id, e.code,
                     e.message)
            return self.lead_export_status(export_id)

    def lead_export_status(self, export_id: str) -> Dict[str, Any]:
        return self.call("GET", f"/bulk/v1/leads/export/{export_id}/status.json")["result"][0]

    def lead_export_file(self, export_id: str) -> str:
        return self.call("GET", f"/bulk/v1/leads/export/{export_id}/file.json", raw=True)
