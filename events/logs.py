"""Structured logs: one JSON object a line (python-json-logger), with the component (pipeline or service), the logger
(step), the level and the message, and never a secret.

`configure("kpi")` sets up the root logger of a process. Every record passes `RedactSecrets`, which replaces the
value of every secret the process knows (settings named like a password, secret, key or token, from the
environment or the local stack's settings file, and the contents of their `*_FILE` files) with `<redacted>`, in
the message, its arguments and the formatted exception.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Iterable, List, Mapping, Optional

from pythonjsonlogger.json import JsonFormatter

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|HMAC_KEY|ACCESS_KEY|SECRET_KEY|CLIENT_SECRET|FIELD_KEYS)", re.I)
MIN_SECRET_LEN = 6  # shorter values would redact ordinary words


def secret_values(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Values of the secrets in `environ` (default: this process's environment; callers pass
    `io_connectors.settings.environment()` to include the local stack's settings file): settings named like a
    password, secret, key or token, and the contents of the files their `*_FILE` settings name."""
    environ = os.environ if environ is None else environ
    out = []
    for name, value in environ.items():
        if not SECRET_NAME.search(name):
            continue
        if name.endswith("_FILE"):
            try:
                with open(value, encoding="utf-8") as f:
                    value = f.read().strip()
            except OSError:
                continue
        if value and len(value) >= MIN_SECRET_LEN:
            out.append(value)
            out += _ring_keys(value)
    return sorted(set(out), key=len, reverse=True)


def _ring_keys(value: str) -> List[str]:
    """The keys of a field key ring (transforms/field_crypto.py JSON), each of which must be redacted alone."""
    if not value.lstrip().startswith("{"):
        return []
    import json

    try:
        keys = json.loads(value).get("keys")
    except (ValueError, AttributeError):
        return []
    return [str(k) for k in keys.values() if len(str(k)) >= MIN_SECRET_LEN] if isinstance(keys, dict) else []


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Optional[Iterable[str]] = None):
        super().__init__()
        values = list(secrets) if secrets is not None else secret_values()
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def _clean(self, text: str) -> str:
        return self._pattern.sub("<redacted>", text) if self._pattern else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        text = record.getMessage()
        if record.exc_info:  # the traceback becomes part of the (cleaned) message
            text = f"{text}\n{logging.Formatter().formatException(record.exc_info)}"
            record.exc_info = record.exc_text = None
        record.msg, record.args = self._clean(text), None
        return True


def configure(component: str, level: int = logging.INFO, stream=None,
              environ: Optional[Mapping[str, str]] = None) -> logging.Handler:
    """JSON lines on stderr for the whole process: {"time", "level", "component", "step", "message", ...}."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                       rename_fields={"asctime": "time", "levelname": "level", "name": "step"},
                                       static_fields={"component": component}))
    handler.addFilter(RedactSecrets(secret_values(environ)))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
