"""Totals per key over the key's whole life, in keyed state with timers (sessions, account-hours).

Beam session windows are not product sessions: a session that pauses longer than the gap becomes several
windows, and rows keyed by session_id would each count one piece of it. `KeyedTotals` keeps the totals of a
key in Flink's checkpointed keyed state (global window) instead, and:

- emits the key's row at most every `early_firing_s` (processing time) while items arrive (early results);
- marks the row final when the watermark passes `final_at_ms` (sessions: last activity + gap + allowed
  lateness; hours: the end of the hour) and releases the totals and ids at `release_at_ms`, keeping a
  tombstone (a few bytes) for one more allowed lateness so that later items of the key are known to be late;
- counts each item once: ids are kept with their event time and pruned once the watermark is
  `allowed_lateness_s` past them, so the dedupe state holds at most the items of the last allowed-lateness
  of event time, never the whole history of a busy key;
- an item more than `allowed_lateness_s` behind the watermark (as proven by a timer of the key, or of this
  DoFn instance, that fired) is late: it becomes a dead letter (`late_data`) with its source position
  instead of being counted or dropped. An item that arrives after even the tombstone expired (more than
  twice the lateness behind) on a worker that has seen no timer fire yet starts a new generation; the sinks'
  version guards then keep the newer stored row;
- rows carry `version`: it grows with the last activity and with every item counted, so an idempotent sink
  can refuse a replayed older row;
- a watermark timer that fires for a time more than `END_OF_TIME_SLACK_S` past the wall clock changes
  nothing: the pipelines' watermark never passes the clock (Kafka CreateTime, capped at the clock), so such
  a firing is the end-of-time watermark of a job being stopped. Beam's Flink source wrapper for the Kafka
  read (UnboundedSourceWrapper) emits it whenever its reader loop ends, also on Flink's stop-with-savepoint
  without drain, and it reaches this step before the savepoint's barrier: every session was finalized,
  released or marked with a watermark hours ahead *in the savepoint*, and after the upgrade its next items
  were `late_data` (tests/e2e/test_upgrade_savepoint_flink.py, 2026-12-07: 641 valid items, 180 of 200
  sessions short). The key's state stays as it was and its timer is set again from state by a
  processing-time timer, which fires in the restored job (or again in the stopping one).

What is emitted are the totals since the state was created (a *generation*). For sessions, activity after
the state was released (a pause longer than gap + lateness) starts a new generation; the Postgres merge in
`transforms.windows` / `transforms.engagement` adds generations up, so the table row is the whole session.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from events.metrics import step_namespace
from events.dead_letters import DeadLetter, Tags

LATE_DATA = "late_data"
_MIN_MS = -(2 ** 62)
# How far past the wall clock a watermark timer may fire before it is taken for a stopping job's end-of-time
# watermark (module doc): generous against clock skew between the Kafka read's harness and the Python workers.
END_OF_TIME_SLACK_S = 300


class Aggregate:
    """What KeyedTotals needs to know about items and totals. Pure Python (no Beam), so tests use it too."""

    def key(self, item) -> str:
        raise NotImplementedError

    def item_id(self, item) -> str:
        raise NotImplementedError

    def ts_ms(self, item) -> int:
        raise NotImplementedError

    def empty(self) -> Any:
        raise NotImplementedError

    def add(self, totals, item) -> None:
        """Fold one distinct item into the (mutable) totals."""
        raise NotImplementedError

    def final_at_ms(self, key: str, totals) -> int:
        raise NotImplementedError

    def release_at_ms(self, key: str, totals) -> int:
        return self.final_at_ms(key, totals)

    def last_ms(self, totals) -> int:
        raise NotImplementedError

    def row(self, key: str, totals, final: bool, version: int) -> Dict[str, Any]:
        raise NotImplementedError


def row_version(last_ms: int, items: int, final: bool) -> int:
    """Grows with later activity, with more items at the same last activity (saturating at 10^4 per ms),
    and from early to final."""
    return last_ms * 20_000 + min(items, 9_999) * 2 + (1 if final else 0)


class Slotted:
    """Pickles a __slots__ class as the tuple of its values (small state, no per-instance dict)."""

    __slots__ = ()

    def __getstate__(self):
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, values):
        for s, v in zip(self.__slots__, values):
            setattr(self, s, v)
        for s in self.__slots__[len(values):]:  # state written before a slot was added
            setattr(self, s, None)


class _KeyState(Slotted):
    """The state of one key: its totals, the ids it has counted recently, and its timers' bookkeeping."""

    __slots__ = ("totals", "seen", "items", "final", "dirty", "early_pending", "wm_ms", "prune_at_ms",
                 "expire_at_ms", "close_at_ms", "rearm")

    def __init__(self, totals):
        self.totals = totals  # None once released: a tombstone that still knows how far the watermark is
        self.seen: Dict[int, int] = {}  # 64-bit digest of the item id -> event time (ms), pruned behind the watermark
        self.items = 0  # distinct items counted in this generation
        self.final = False
        self.dirty = False  # counted items not yet emitted
        self.early_pending = False
        self.wm_ms = _MIN_MS  # the highest event-time timer that fired for this key: the watermark is past it
        self.prune_at_ms: Optional[int] = None
        self.expire_at_ms: Optional[int] = None
        self.close_at_ms: Optional[int] = None  # when the close timer is set to fire (None: not set)
        self.rearm = False  # an end-of-time firing consumed a watermark timer: the early timer sets it again



def _id_digest(item_id: str) -> int:
    """8 bytes instead of a ~40-character id in state (a collision within one key's last allowed-lateness of
    items is ~n^2/2^65: nil for any real session)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


def _ts(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


class _KeyedTotalsFn(beam.DoFn):
    STATE = ReadModifyWriteStateSpec("totals", PickleCoder())
    EARLY = TimerSpec("early", TimeDomain.REAL_TIME)
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)
    PRUNE = TimerSpec("prune", TimeDomain.WATERMARK)

    def __init__(self, agg: Aggregate, allowed_lateness_s: int, early_firing_s: int, step: str,
                 source_topic: Optional[str], clock: Callable[[], float] = time.time,
                 wall_clock: Callable[[], float] = time.time):
        self._agg = agg
        self._wall_clock = wall_clock  # the end-of-time check's; `clock` may be a test's processing time
        self._late_ms = allowed_lateness_s * 1000
        # prune in batches, not one timer per item; the firings also tell how far the watermark is
        self._prune_slack_ms = max(1_000, min(60_000, self._late_ms // 10))
        self._clock = clock
        self._early_s = early_firing_s
        self._step = step
        self._topic = source_topic
        self._wm_ms = _MIN_MS
        self._rows = Metrics.counter(step_namespace(step), f"{step}_rows")
        self._final = Metrics.counter(step_namespace(step), f"{step}_final_rows")
        self._dups = Metrics.counter(step_namespace(step), f"{step}_duplicates")
        self._late = Metrics.counter(step_namespace(step), f"{step}_late_dead_letters")
        self._released = Metrics.counter(step_namespace(step), f"{step}_keys_released")
        self._seen_size = Metrics.distribution(step_namespace(step), f"{step}_dedupe_ids_per_key")
        self._end_of_time = Metrics.counter(step_namespace(step), f"{step}_end_of_time_firings_deferred")

    def setup(self):
        self._wm_ms = _MIN_MS  # a lower bound of the watermark, from the timers this instance has seen fire

    def process(self, kv, state=beam.DoFn.StateParam(STATE), early=beam.DoFn.TimerParam(EARLY),
                close=beam.DoFn.TimerParam(CLOSE), prune=beam.DoFn.TimerParam(PRUNE)):
        key, item = kv
        agg = self._agg
        ts = agg.ts_ms(item)
        s: Optional[_KeyState] = state.read()
        wm = max(self._wm_ms, s.wm_ms if s is not None else _MIN_MS)
        if ts < wm - self._late_ms:
            self._late.inc()
            yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, self._late_letter(item, ts, wm))
            return
        if s is None:
            s = _KeyState(agg.empty())
        elif s.totals is None:  # released earlier, and this item is not late: a new generation of the key
            s.totals, s.expire_at_ms = agg.empty(), None
        iid = _id_digest(agg.item_id(item))
        if iid in s.seen:
            self._dups.inc()
            return
        s.seen[iid] = ts
        final_before = agg.final_at_ms(key, s.totals) if s.items else None
        agg.add(s.totals, item)
        s.items += 1
        s.dirty = True
        final_at = agg.final_at_ms(key, s.totals)
        if s.final and final_at != final_before:
            s.final = False  # the key came back to life (a session resumed before its state was released)
        # The close timer only ever moves earlier here: a session's final time grows with every turn, and
        # re-setting the timer per item cost a timer message to the runner per item. A timer that fires
        # before the key's current final time re-arms itself there (on_close).
        target = agg.release_at_ms(key, s.totals) if s.final else final_at
        if s.close_at_ms is None or target < s.close_at_ms:
            s.close_at_ms = target
            close.set(_ts(target))
        if s.prune_at_ms is None or ts + self._late_ms + self._prune_slack_ms < s.prune_at_ms:
            s.prune_at_ms = ts + self._late_ms + self._prune_slack_ms
            prune.set(_ts(s.prune_at_ms))
        if not s.early_pending:
            s.early_pending = True
            early.set(Timestamp.of(self._clock() + self._early_s))
        state.write(s)

    def _late_letter(self, item, ts: int, wm: int) -> DeadLetter:
        src = getattr(item, "source", None) or (self._topic, None, None)
        payload = json.dumps(item._asdict() if hasattr(item, "_asdict") else repr(item), default=str,
                             sort_keys=True)
        return DeadLetter.of(payload.encode(), step=self._step, error_class=LATE_DATA,
                             error_message=f"event time {ts} is more than {self._late_ms // 1000} s behind the "
                                           f"watermark (at least {wm}); it is not counted",
                             topic=src[0], partition=src[1], offset=src[2], event_time_ms=ts)

    def _emit(self, key: str, s: _KeyState):
        self._rows.inc()
        if s.final:
            self._final.inc()
        self._seen_size.update(len(s.seen))
        version = row_version(self._agg.last_ms(s.totals), s.items, s.final)
        return self._agg.row(key, s.totals, s.final, version)

    def _defer_end_of_time(self, t: int, state, early, which: str) -> bool:
        """True (and the firing deferred) if a watermark timer fired for `t` far past the wall clock: a stopping
        job's end-of-time watermark (module doc). The state is left as it was but for the consumed timer, which
        the early timer sets again."""
        if t <= (self._wall_clock() + END_OF_TIME_SLACK_S) * 1000:
            return False
        self._end_of_time.inc()
        s: Optional[_KeyState] = state.read()
        if s is None:
            return True
        if which == "close":
            s.close_at_ms = t
        elif s.totals is not None:
            s.prune_at_ms = t
        s.rearm = True
        s.early_pending = True
        early.set(Timestamp.of(self._clock() + self._early_s))
        state.write(s)
        return True

    @on_timer(EARLY)
    def on_early(self, key=beam.DoFn.KeyParam, state=beam.DoFn.StateParam(STATE),
                 close=beam.DoFn.TimerParam(CLOSE), prune=beam.DoFn.TimerParam(PRUNE)):
        s: Optional[_KeyState] = state.read()
        if s is None:
            return
        s.early_pending = False
        if s.rearm:  # the watermark timers an end-of-time firing consumed
            s.rearm = False
            if s.close_at_ms is not None:
                close.set(_ts(s.close_at_ms))
            if s.prune_at_ms is not None and s.totals is not None:
                prune.set(_ts(s.prune_at_ms))
        if s.totals is None:
            state.write(s)
            return
        emit = s.dirty
        s.dirty = False
        state.write(s)
        if emit:
            yield self._emit(key, s)

    @on_timer(CLOSE)
    def on_close(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                 state=beam.DoFn.StateParam(STATE), early=beam.DoFn.TimerParam(EARLY),
                 close=beam.DoFn.TimerParam(CLOSE), prune=beam.DoFn.TimerParam(PRUNE)):
        t = int(fired.micros // 1000)
        if self._defer_end_of_time(t, state, early, "close"):
            return
        self._wm_ms = max(self._wm_ms, t)
        s: Optional[_KeyState] = state.read()
        if s is None:
            return
        s.wm_ms = max(s.wm_ms, t)
        s.close_at_ms = None  # fired; every branch below that sets it again records when
        agg = self._agg
        if s.totals is None:  # a tombstone
            if t >= s.expire_at_ms:
                state.clear()
                early.clear()
                prune.clear()
            else:
                s.close_at_ms = s.expire_at_ms
                close.set(_ts(s.expire_at_ms))
                state.write(s)
            return
        if not s.final:
            final_at = agg.final_at_ms(key, s.totals)
            if t < final_at:  # moved on since the timer was set
                s.close_at_ms = final_at
                close.set(_ts(final_at))
                state.write(s)
                return
            s.final, s.dirty = True, False
            yield self._emit(key, s)
        elif s.dirty:  # late items since the final row
            s.dirty = False
            yield self._emit(key, s)
        release_at = agg.release_at_ms(key, s.totals)
        if t >= release_at:
            # Release the totals and ids; keep a tombstone for one more allowed lateness, so that items of
            # this key that arrive later than the lateness are still recognised as late (dead letters).
            self._released.inc()
            s.totals, s.seen, s.items, s.final, s.dirty, s.prune_at_ms = None, {}, 0, False, False, None
            s.expire_at_ms = t + max(self._late_ms, 1_000)
            prune.clear()
            s.close_at_ms = s.expire_at_ms
            close.set(_ts(s.expire_at_ms))
            state.write(s)
            return
        s.close_at_ms = release_at
        close.set(_ts(release_at))
        state.write(s)

    @on_timer(PRUNE)
    def on_prune(self, fired=beam.DoFn.TimestampParam, state=beam.DoFn.StateParam(STATE),
                 prune=beam.DoFn.TimerParam(PRUNE), early=beam.DoFn.TimerParam(EARLY)):
        t = int(fired.micros // 1000)
        if self._defer_end_of_time(t, state, early, "prune"):
            return
        self._wm_ms = max(self._wm_ms, t)
        s: Optional[_KeyState] = state.read()
        if s is None or s.totals is None:
            return
        s.wm_ms = max(s.wm_ms, t)
        horizon = t - self._late_ms  # anything older is late now, so its duplicates are dead letters anyway
        s.seen = {i: ts for i, ts in s.seen.items() if ts >= horizon}
        s.prune_at_ms = (min(s.seen.values()) + self._late_ms + self._prune_slack_ms) if s.seen else None
        if s.prune_at_ms is not None:
            prune.set(_ts(s.prune_at_ms))
        state.write(s)


class KeyedTotals(beam.PTransform):
    """PCollection[item] -> {"rows": PCollection[dict] (global window), dead_letter: late items}.

    `early_firing_s` whole seconds (processing time); `allowed_lateness_s` how far behind the watermark an
    item may arrive and still be counted. `clock`: processing time for the early timer (TestStream tests
    pass the DirectRunner's test clock, which starts at 0).
    """

    def __init__(self, agg: Aggregate, allowed_lateness_s: int, early_firing_s: int, step: str,
                 source_topic: Optional[str] = None, clock: Callable[[], float] = time.time,
                 label: Optional[str] = None):
        super().__init__(label)
        if allowed_lateness_s < 0 or early_firing_s <= 0:
            raise ValueError("early_firing_s must be positive, allowed_lateness_s >= 0")
        self._fn = _KeyedTotalsFn(agg, int(allowed_lateness_s), max(1, int(round(early_firing_s))), step,
                                  source_topic, clock)
        self._agg = agg

    def expand(self, items):
        agg = self._agg
        return (items
                # str keys: a deterministic key coder for the keyed state (FastPrimitivesCoder is not)
                | "Key" >> beam.Map(_keyed, agg).with_output_types(Tuple[str, Any])
                | "Totals" >> beam.ParDo(self._fn).with_outputs(Tags.DEAD_LETTER.value, main="rows"))


def _keyed(item, agg: Aggregate):
    return agg.key(item), item


def totals_of(agg: Aggregate, items: Iterable) -> Dict[str, Any]:
    """{key: totals} of distinct items (pure; tests compute expected values with it)."""
    out: Dict[str, Any] = {}
    seen = set()
    for it in items:
        k, iid = agg.key(it), agg.item_id(it)
        if (k, iid) in seen:
            continue
        seen.add((k, iid))
        agg.add(out.setdefault(k, agg.empty()), it)
    return out
