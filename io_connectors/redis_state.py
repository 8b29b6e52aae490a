"""Redis hot session state: `WriteSessionState`, pipelined and guarded so replays and late events are harmless.

Input: one plain dict per agent turn (extra keys are ignored):

    {"session_id": "s-1",              # required
     "turn_id": "t-7",                 # required; counted once per session in the metrics
     "seq": 7,                         # required int: the turn's order within the session (the guard)
     "event_time_ms": 1767225600000,   # required int: event time, epoch ms
     "message": "hi [EMAIL]",          # the REDACTED text of the turn (callers redact first)
     "channel": "web_chat",            # optional, default "text"
     "status": "active",               # optional, default "active"
     "response_time_ms": 812.0,        # optional: the agent's latency for this turn
     "_source": ("text.agent.turn.completed", 3, 1041)}  # optional: the turn's record (dead letters name it;
                                       # events.dead_letters.KeepSource adds it)

Keys written (hashes, every one with the TTL, refreshed on each write):

    session:{session_id}:state    last_turn_id, last_message, seq, updated_at (ISO-8601 UTC, event time),
                                  channel, status
    session:{session_id}:metrics  total_turns, avg_response_time (ms), last_activity (ISO-8601 UTC),
                                  plus response_time_sum/response_time_count/last_activity_ms for the running
                                  average and the max
    session:{session_id}:turns    set of turn ids already counted (keeps the metrics exact under replay)

The guard is one Lua script per event (atomic on the server): the state hash is replaced only when the
event's `seq` is greater than the stored one, so a late or replayed event never overwrites newer state; the
metrics count a turn only the first time its turn_id is seen (SADD), so replays never double-count, while a
late turn still counts. All values derive from the event (no wall clock), so writing twice yields the same
state. Events are buffered `batch_size` at a time and sent as pipelines of `pipeline_events` scripts (one
round trip each; the script costs ~25 us of server time, so a 100-script round trip holds Redis ~2.5 ms
before other clients' reads interleave). Connection errors retry with bounded jittered backoff (the script is idempotent, so re-sending a whole batch is safe); an event the
script refuses, or that lacks required fields, becomes a dead letter.

Keys use the seed's plain `session:<id>:...` names; on a Redis Cluster the three keys of one script would
need a hash tag (`session:{<id>}:...`), which DigitalOcean Managed Redis (not clustered) does not need.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam

from io_connectors.clients import redis_client as connect
from io_connectors.retry import with_retries
from io_connectors.settings import RedisSettings
from events.dead_letters import DeadLetter, Tags
from io_connectors.buffered_sink import BufferedSinkFn

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 7 * 24 * 3600

# KEYS: state, metrics, turns. ARGV: seq, turn_id, message, updated_at, channel, status, response_time_ms
# ('' = unknown), event_ms, ttl_seconds. Returns 1 if the state moved forward, +2 if the turn was counted.
_GUARD_LUA = """
local seq = tonumber(ARGV[1])
local result = 0
local stored = redis.call('HGET', KEYS[1], 'seq')
if (not stored) or tonumber(stored) < seq then
  redis.call('HSET', KEYS[1], 'last_turn_id', ARGV[2], 'last_message', ARGV[3], 'seq', ARGV[1],
             'updated_at', ARGV[4], 'channel', ARGV[5], 'status', ARGV[6])
  result = 1
end
if redis.call('SADD', KEYS[3], ARGV[2]) == 1 then
  local m = redis.call('HMGET', KEYS[2], 'total_turns', 'response_time_sum', 'response_time_count',
                       'last_activity_ms')
  local n, sum, cnt = (tonumber(m[1]) or 0) + 1, tonumber(m[2]) or 0, tonumber(m[3]) or 0
  local upd = {'total_turns', n}
  if ARGV[7] ~= '' then
    sum, cnt = sum + tonumber(ARGV[7]), cnt + 1
    for _, v in ipairs({'response_time_sum', string.format('%.17g', sum), 'response_time_count', cnt,
                        'avg_response_time', string.format('%.1f', sum / cnt)}) do upd[#upd + 1] = v end
  end
  if tonumber(ARGV[8]) > (tonumber(m[4]) or -1) then
    for _, v in ipairs({'last_activity_ms', ARGV[8], 'last_activity', ARGV[4]}) do upd[#upd + 1] = v end
  end
  redis.call('HSET', KEYS[2], unpack(upd))
  result = result + 2
end
local ttl = tonumber(ARGV[9])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
end
return result
"""

REQUIRED = ("session_id", "turn_id", "seq", "event_time_ms")


def state_key(session_id: str) -> str:
    return f"session:{session_id}:state"


def metrics_key(session_id: str) -> str:
    return f"session:{session_id}:metrics"


def turns_key(session_id: str) -> str:
    return f"session:{session_id}:turns"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def script_args(event: Dict[str, Any], ttl_seconds: int) -> Tuple[List[str], List[Any]]:
    """(keys, argv) of the guard script for one event; ValueError when a required field is missing/bad."""
    missing = [f for f in REQUIRED if event.get(f) in (None, "")]
    if missing:
        raise ValueError(f"missing required fields {missing}")
    seq, event_ms = event["seq"], event["event_time_ms"]
    if isinstance(seq, bool) or not isinstance(seq, int) or isinstance(event_ms, bool) \
            or not isinstance(event_ms, int):
        raise ValueError("seq and event_time_ms must be integers")
    sid = str(event["session_id"])
    rt = event.get("response_time_ms")
    if rt is not None and (isinstance(rt, bool) or not isinstance(rt, (int, float))):
        raise ValueError("response_time_ms must be a number")
    return ([state_key(sid), metrics_key(sid), turns_key(sid)],
            [seq, str(event["turn_id"]), event.get("message") or "", _iso(event_ms),
             event.get("channel") or "text", event.get("status") or "active",
             "" if rt is None else repr(float(rt)), event_ms, int(ttl_seconds)])


def is_transient(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                            redis.exceptions.TryAgainError))


class SessionStateWriter:
    """The client and the guard script; `write(events)` sends a batch in one pipeline round trip.

    Returns the events refused, as (event, reason). Usable without Beam (tests, the benchmark).
    """

    def __init__(self, ttl_seconds: int = DEFAULT_TTL_SECONDS, max_attempts: int = 6,
                 settings: Optional[RedisSettings] = None, pipeline_events: int = 100):
        self.ttl, self.max_attempts, self.settings = ttl_seconds, max_attempts, settings
        self.pipeline_events = pipeline_events
        self.client = None
        self.retries = 0

    def connect(self) -> None:
        self.client = connect(self.settings)
        self._sha = self.client.script_load(_GUARD_LUA)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _send(self, calls: List[Tuple[List[str], List[Any]]]) -> List[Any]:
        import redis

        if self.client is None:
            self.connect()
        pipe = self.client.pipeline(transaction=False)
        for keys, argv in calls:
            pipe.evalsha(self._sha, len(keys), *keys, *argv)
        results = pipe.execute(raise_on_error=False)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
            self._sha = self.client.script_load(_GUARD_LUA)  # server restarted without its script cache
            raise redis.ConnectionError("script cache was flushed; batch re-sent")
        return results

    def _on_retry(self, _exc: BaseException) -> None:
        self.retries += 1
        try:
            self.close()
            self.connect()
        except Exception:  # noqa: BLE001 - still down; the next attempt reports it
            self.client = None

    def write(self, events: Sequence[Dict[str, Any]]) -> List[Tuple[Dict[str, Any], str]]:
        refused: List[Tuple[Dict[str, Any], str]] = []
        calls, sent = [], []
        for e in events:
            try:
                calls.append(script_args(e, self.ttl))
                sent.append(e)
            except (ValueError, TypeError, KeyError) as err:
                refused.append((e, f"invalid session event: {err}"))
        if not calls:
            return refused
        results: List[Any] = []
        for i in range(0, len(calls), self.pipeline_events):
            chunk = calls[i:i + self.pipeline_events]
            results += with_retries(lambda: self._send(chunk), is_transient, max_attempts=self.max_attempts,
                                    what="redis session state", on_retry=self._on_retry)
        refused += [(e, f"{type(r).__name__}: {r}") for e, r in zip(sent, results) if isinstance(r, Exception)]
        return refused


class _WriteSessionStateFn(BufferedSinkFn):
    """One SessionStateWriter per DoFn instance; batches of `batch_size` events (io_connectors.buffered_sink)."""

    def __init__(self, ttl_seconds: int, batch_size: int, max_attempts: int,
                 settings: Optional[RedisSettings], source_topic: Optional[str], pipeline_events: int):
        super().__init__(step="WriteSessionState", batch_size=batch_size, source_topic=source_topic,
                         written="session_events_written", retries="redis_transient_retries",
                         dead_letters="redis_dead_letters", batch_latency_ms="redis_batch_latency_ms",
                         batch_max_ms="redis_batch_max_ms")
        self._ttl, self._max_attempts = ttl_seconds, max_attempts
        self._pipeline_events, self._settings = pipeline_events, settings

    def make_writer(self) -> SessionStateWriter:
        return SessionStateWriter(self._ttl, self._max_attempts, self._settings, self._pipeline_events)


@beam.typehints.with_input_types(Dict[str, Any])
@beam.typehints.with_output_types(DeadLetter)
class WriteSessionState(beam.PTransform):
    """PCollection[dict] (see the module docstring) -> Redis hot session state; returns dead letters."""

    def __init__(self, ttl_seconds: int = DEFAULT_TTL_SECONDS, batch_size: int = 500, max_attempts: int = 6,
                 settings: Optional[RedisSettings] = None, source_topic: Optional[str] = None,
                 pipeline_events: int = 100, label: Optional[str] = None):
        super().__init__(label)
        if ttl_seconds < 0 or batch_size < 1 or max_attempts < 1 or pipeline_events < 1:
            raise ValueError("ttl_seconds must be >= 0 (0 = no expiry); batch_size, max_attempts, "
                             "pipeline_events >= 1")
        if settings is None:  # the launcher's principal, by name (resolved in the worker: no password in the graph)
            settings = RedisSettings.deferred()
        self._fn = _WriteSessionStateFn(ttl_seconds, batch_size, max_attempts, settings, source_topic,
                                        pipeline_events)

    def expand(self, events):
        out = events | "WriteSessionState" >> beam.ParDo(self._fn).with_outputs(
            Tags.DEAD_LETTER.value, main="written")
        return out[Tags.DEAD_LETTER.value]
