"""Bounded, jittered exponential backoff shared by the sinks (Postgres, Redis, Spaces).

A sink calls `with_retries(fn, is_transient, ...)`: transient errors are retried up to `max_attempts` times
with "equal jitter" sleeps (uniform in [d/2, d], d = min(cap, base * 2**n)): jitter keeps workers that lost
the same server from reconnecting in lockstep, the floor guarantees the retries span a short outage; anything else, or the last transient failure, is raised to the caller.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def backoff_delays(max_attempts: int, base_s: float = 0.25, cap_s: float = 8.0):
    """The sleeps before attempts 2..max_attempts (equal jitter)."""
    for n in range(max_attempts - 1):
        d = min(cap_s, base_s * (2 ** n))
        yield random.uniform(d / 2, d)


def with_retries(fn: Callable[[], T], is_transient: Callable[[BaseException], bool], *, max_attempts: int,
                 what: str, base_s: float = 0.25, cap_s: float = 8.0,
                 on_retry: Optional[Callable[[BaseException], None]] = None) -> T:
    """Run `fn`; retry transient errors with bounded jittered backoff; `on_retry` runs before each sleep."""
    delays = backoff_delays(max_attempts, base_s, cap_s)
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified just below, re-raised unless transient
            delay = next(delays, None)
            if delay is None or not is_transient(e):
                raise
            log.warning("%s: transient %s (attempt %d/%d), retrying in %.2fs", what, type(e).__name__,
                        attempt, max_attempts, delay)
            if on_retry is not None:
                on_retry(e)
            time.sleep(delay)
            attempt += 1
