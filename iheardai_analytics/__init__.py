"""iheardAI's producer library: track product events into the pipelines' Kafka topics (no Beam needed).

    from iheardai_analytics import Analytics
    analytics = Analytics.from_env(name="text-agent-server")
    await analytics.track_event({"event_type": "text_agent.turn_completed", "session_id": ..., ...})

or the process-wide default client: `iheardai_analytics.track_event({...})` (created from the environment on
first use; `configure(...)` sets its options first). See iheardai_analytics.client for the guarantees, and
`python -m iheardai_analytics.collector` for the HTTP collector the browser tracker posts to.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping, Optional

from iheardai_analytics.client import DONE, HELPERS, Analytics, InvalidEvent, Prepared

__all__ = ["Analytics", "InvalidEvent", "Prepared", "configure", "default_client", "track_event", *HELPERS]

_default: Optional[Analytics] = None
_default_lock = threading.Lock()
_options: dict = {}


def configure(**options: Any) -> Analytics:
    """Create the process-wide client now with these options (Analytics.from_env's); returns it."""
    global _default
    with _default_lock:
        if _default is not None:
            raise RuntimeError("the default analytics client exists already: configure() before the first track_event")
        _options.update(options)
        _default = Analytics.from_env(**_options)
        return _default


def default_client() -> Analytics:
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Analytics.from_env(**_options)
    return _default


def track_event(event: Mapping[str, Any], topic: Optional[str] = None):
    """`default_client().track_event(event, topic)`: never blocks; awaitable."""
    return default_client().track_event(event, topic)


def _module_helper(name: str):
    method = getattr(Analytics, name)

    def helper(**fields: Any):
        return getattr(default_client(), name)(**fields)

    helper.__name__ = helper.__qualname__ = name
    helper.__doc__ = method.__doc__
    return helper


for _name in HELPERS:
    globals()[_name] = _module_helper(_name)
