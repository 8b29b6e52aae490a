"""Where do the stack's secrets appear? A read-only scan that reports each place a generated secret shows up.

    python -m devstack.secret_scan [PATH ...] [--no-kafka] [--no-flink] [--no-prometheus] [--json]

Secrets (`collect_secrets`): every setting of $DEVSTACK_HOME/devstack.env (and of this process's environment)
named like a password, secret, key or token, the contents of the files their `*_FILE` settings name (each
key of a field key ring separately), every generated password file under $DEVSTACK_HOME/secrets/, and the
private keys of the local CA ($DEVSTACK_HOME/tls/*.key). Each is also looked for JSON-escaped and
percent-encoded.

Places: every file under $DEVSTACK_HOME/logs, the files and directories given as PATHs (pytest output, test
logs), every dead-letter topic of the registry read from its start to its end (key, value, headers; a
consumer that never commits), the Flink REST API (`/jobs`, and per job, finished ones included, `/jobs/<id>`
(name and plan, as the dashboard shows them), `/jobs/<id>/config`, `/jobs/<id>/exceptions`; and
`/jobmanager/config`), and the label values Prometheus stores (metric names, jobs, every label).

A finding names the secret (its setting or file name) and the first 8 hex digits of its SHA-256, never the
secret or the text around it. `config/secret_scan_allowlist.json` lists places where a secret is expected,
each with the reason the README gives (Beam's Kafka IO carries the SASL JAAS line inside the job graph);
allowed findings are listed but do not fail the scan. Exit status: 0 clean, 1 findings, 2 a place could not
be read (named).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import sys
import urllib.parse
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from devstack.config import load_env_file

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY$|_KEYS$|HMAC_KEY|ACCESS_KEY|SECRET_KEY)", re.I)
MIN_LEN = 8  # shorter values would match ordinary text
# Settings of this process that belong to the project (other variables of the user's shell are not ours).
PROJECT_PREFIXES = ("KAFKA_", "POSTGRES_", "REDIS_", "SPACES_", "PII_", "IHEARDAI_", "MARKETO_")
ALLOWLIST_FILE = Path(__file__).resolve().parent.parent / "config" / "secret_scan_allowlist.json"


@dataclass(frozen=True)
class Secret:
    name: str
    value: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.value.encode()).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"Secret({self.name}, sha256:{self.digest})"


@dataclass(frozen=True)
class Finding:
    secret: str  # the secret's name
    digest: str  # first 8 hex digits of its SHA-256
    source: str  # log | file | dlq | flink | prometheus
    location: str  # path:line, topic/partition@offset, REST path
    count: int = 1
    allowed: str = ""  # the allowlist's reason, when the place is documented


# --- the secrets ----------------------------------------------------------------------------------------------

def _file_secrets(name: str, path: Path) -> List[Secret]:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return []
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("keys"), dict):  # a field key ring: each key on its own
        return [Secret(f"{name}[{kid}]", str(v)) for kid, v in doc["keys"].items()]
    return [Secret(name, text)]


def _pem_body(path: Path) -> Optional[str]:
    """The first base64 line of a PEM private key: unique to the key, and what a leaked key shows."""
    try:
        lines = [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]
    except (OSError, UnicodeDecodeError):
        return None
    return lines[0] if lines else None


def collect_secrets(home: Path, environ: Mapping[str, str]) -> List[Secret]:
    """Every generated secret of the stack at `home` and in `environ` (deduplicated by value)."""
    home = Path(home)
    settings = {**load_env_file(home / "devstack.env"),
                **{k: v for k, v in environ.items() if k.startswith(PROJECT_PREFIXES)}}
    found: List[Secret] = []
    for name, value in sorted(settings.items()):
        if not SECRET_NAME.search(name.removesuffix("_FILE")) or not value or name.endswith("_DIR"):
            continue  # a *_DIR setting names where secrets are (read below), it is not one
        found += _file_secrets(name, Path(value)) if name.endswith("_FILE") else [Secret(name, value)]
    for path in sorted((home / "secrets").rglob("*")) if (home / "secrets").is_dir() else ():
        if path.is_file():
            found += _file_secrets(str(path.relative_to(home)), path)
    for path in sorted((home / "tls").glob("*.key")) if (home / "tls").is_dir() else ():
        body = _pem_body(path)
        if body:
            found.append(Secret(str(path.relative_to(home)), body))
    seen, out = set(), []
    for s in found:
        if len(s.value) >= MIN_LEN and s.value not in seen:
            seen.add(s.value)
            out.append(s)
    return out


# --- matching ---------------------------------------------------------------------------------------------

class Matcher:
    """Finds any of the secrets (raw, JSON-escaped, percent-encoded) in bytes; reports the secret's index."""

    def __init__(self, secrets: Sequence[Secret]):
        self.secrets = list(secrets)
        forms: Dict[bytes, int] = {}
        for i, s in enumerate(self.secrets):
            for form in {s.value, json.dumps(s.value)[1:-1], urllib.parse.quote(s.value, safe=""),
                         urllib.parse.quote_plus(s.value)}:
                forms.setdefault(form.encode(), i)
        self._index = forms
        self.longest = max((len(f) for f in forms), default=0)
        self._re = re.compile(b"|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))) if forms else None

    def find(self, data: bytes) -> Iterator[Tuple[int, int]]:
        """(secret index, offset) of every occurrence."""
        if self._re is None:
            return
        for m in self._re.finditer(data):
            yield self._index[m.group()], m.start()


def _tally(hits: Iterable[Tuple[int, str]], matcher: Matcher, source: str) -> List[Finding]:
    counts: Dict[Tuple[int, str], int] = {}
    for i, where in hits:
        counts[(i, where)] = counts.get((i, where), 0) + 1
    return [Finding(matcher.secrets[i].name, matcher.secrets[i].digest, source, where, n)
            for (i, where), n in sorted(counts.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def scan_file(path: Path, matcher: Matcher, source: str = "file") -> List[Finding]:
    """Line by line (no secret holds a newline), so logs of any size stream through; located by line."""
    hits = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            hits += [(i, f"{path}:{n}") for i, _ in matcher.find(line)]
    return _tally(hits, matcher, source)


def scan_paths(paths: Iterable[Path], matcher: Matcher, source: str = "file") -> List[Finding]:
    out: List[Finding] = []
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for p in files:
            if p.is_symlink():
                continue
            try:
                out += scan_file(p, matcher, source)
            except OSError:
                continue
    return out


def scan_records(records: Iterable[Tuple[str, bytes]], matcher: Matcher, source: str) -> List[Finding]:
    """Records as (location, bytes): dead letters, REST responses."""
    return _tally(((i, where) for where, data in records for i, _ in matcher.find(data)), matcher, source)


# --- the places ---------------------------------------------------------------------------------------------

def dlq_records(conf: Mapping[str, str], topic_names: Sequence[str], timeout_s: float = 30
                ) -> Iterator[Tuple[str, bytes]]:
    """Every record of `topic_names` from the low to the high watermark; the consumer group is new and
    never commits, so nobody's positions move."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**conf, "group.id": f"secret-scan-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    try:
        md = c.list_topics(timeout=timeout_s)
        parts, ends = [], {}
        for t in topic_names:
            if t not in md.topics:
                continue
            for p in md.topics[t].partitions:
                lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=timeout_s)
                if hi > lo:
                    parts.append(TopicPartition(t, p, lo))
                    ends[(t, p)] = hi
        if not parts:
            return
        c.assign(parts)
        deadline = time.monotonic() + timeout_s + len(parts)
        while ends and time.monotonic() < deadline:
            m = c.poll(1)
            if m is None or m.error():
                continue
            key = (m.topic(), m.partition())
            if key not in ends:
                continue
            blob = (m.key() or b"") + b"\n" + (m.value() or b"") + b"\n" + b"\n".join(
                (k.encode() + b"=" + (v or b"")) for k, v in (m.headers() or []))
            yield f"{m.topic()}/{m.partition()}@{m.offset()}", blob
            if m.offset() + 1 >= ends[key]:
                del ends[key]
        if ends:
            raise TimeoutError(f"dead-letter topics not read to the end: {sorted(ends)}")
    finally:
        c.close()


def flink_records(rest_url: str, get: Callable[[str], bytes]) -> Iterator[Tuple[str, bytes]]:
    """The REST responses the dashboard shows for every job (running and finished) and the cluster config."""
    yield "/jobmanager/config", get(f"{rest_url}/jobmanager/config")
    jobs = json.loads(get(f"{rest_url}/jobs"))["jobs"]
    for job in jobs:
        for suffix in ("", "/config", "/exceptions"):
            path = f"/jobs/{job['id']}{suffix}"
            yield path, get(rest_url + path)


def prometheus_records(url: str, get: Callable[[str], bytes]) -> Iterator[Tuple[str, bytes]]:
    names = json.loads(get(f"{url}/api/v1/labels"))["data"]
    for name in names:
        path = f"/api/v1/label/{urllib.parse.quote(name)}/values"
        yield path, get(url + path)


def _http_get(url: str) -> bytes:
    import requests

    r = requests.get(url, timeout=15)
    r.raise_for_status()
    return r.content


# --- the allowlist --------------------------------------------------------------------------------------------

def load_allowlist(path: Path = ALLOWLIST_FILE) -> List[Dict[str, str]]:
    """Entries {"secret": glob of secret names, "source": ..., "location": glob, "reason": ...}; each needs a
    reason (what the README says about that place)."""
    if not Path(path).exists():
        return []
    entries = json.loads(Path(path).read_text())["allow"]
    for e in entries:
        if not e.get("reason") or not e.get("secret") or not e.get("location"):
            raise ValueError(f"{path}: every allowlist entry needs secret, location and reason: {e}")
    return entries


def apply_allowlist(findings: Iterable[Finding], allow: Sequence[Mapping[str, str]]) -> List[Finding]:
    out = []
    for f in findings:
        reason = next((e["reason"] for e in allow if fnmatch.fnmatchcase(f.secret, e["secret"])
                       and fnmatch.fnmatchcase(f.location, e["location"])
                       and e.get("source", f.source) == f.source), "")
        out.append(Finding(**{**asdict(f), "allowed": reason}))
    return out


def report(findings: Sequence[Finding], secrets: Sequence[Secret], covered: Sequence[str],
           unreadable: Sequence[str]) -> str:
    lines = [f"secret scan: {len(secrets)} secrets ({', '.join(sorted({s.name for s in secrets}))})",
             "covered: " + "; ".join(covered)]
    for label, items in (("FOUND", [f for f in findings if not f.allowed]),
                         ("allowed", [f for f in findings if f.allowed])):
        for f in items:
            lines.append(f"{label}: {f.secret} (sha256:{f.digest}) in {f.source} {f.location}"
                         + (f" x{f.count}" if f.count > 1 else "") + (f" - {f.allowed}" if f.allowed else ""))
    for u in unreadable:
        lines.append(f"NOT SCANNED: {u}")
    bad = sum(1 for f in findings if not f.allowed)
    lines.append(f"{bad} finding(s)" + (f", {len(findings) - bad} allowed" if len(findings) > bad else "")
                 + (f", {len(unreadable)} place(s) not scanned" if unreadable else ""))
    return "\n".join(lines)


def _dlq_topics() -> List[str]:
    from events.topics import TOPICS

    return [t.dlq for t in TOPICS]


def _kafka_conf() -> Dict[str, str]:
    from io_connectors.settings import KafkaSettings

    return {**KafkaSettings.from_env().librdkafka_config(), "log_level": 0}


def run(home: Path, environ: Mapping[str, str], paths: Sequence[Path], kafka: bool = True, flink: bool = True,
        prometheus: bool = True, get: Callable[[str], bytes] = _http_get
        ) -> Tuple[List[Finding], List[Secret], List[str], List[str]]:
    """(findings with the allowlist applied, the secrets, what was covered, what could not be read)."""
    secrets = collect_secrets(home, environ)
    matcher = Matcher(secrets)
    settings = {**load_env_file(Path(home) / "devstack.env"), **environ}
    findings: List[Finding] = []
    covered, unreadable = [], []
    logs = Path(home) / "logs"
    findings += scan_paths([logs], matcher, "log")
    covered.append(f"{sum(1 for p in logs.rglob('*') if p.is_file()) if logs.is_dir() else 0} log files under {logs}")
    if paths:
        findings += scan_paths(paths, matcher, "file")
        covered.append(f"{len(paths)} path(s) given: " + ", ".join(map(str, paths)))
    places: List[Tuple[str, str, Callable[[], List[Tuple[str, bytes]]]]] = []
    if kafka:
        places.append(("dlq", "Kafka dead-letter topics", lambda: list(dlq_records(_kafka_conf(), _dlq_topics()))))
    if flink:
        url = settings.get("FLINK_REST_URL", "http://localhost:8081")
        places.append(("flink", f"Flink REST {url}", lambda: list(flink_records(url, get))))
    if prometheus:
        prom = settings.get("PROMETHEUS_URL", "http://localhost:9090")
        places.append(("prometheus", f"Prometheus {prom} label values", lambda: list(prometheus_records(prom, get))))
    for source, label, read in places:
        try:
            recs = read()
        except Exception as e:  # noqa: BLE001 - named in the report, exit status 2
            unreadable.append(f"{label} ({type(e).__name__}: {e})")
            continue
        findings += scan_records(recs, matcher, source)
        covered.append(f"{label}: {len(recs)} records")
    return apply_allowlist(findings, load_allowlist()), secrets, covered, unreadable


def main(argv: Optional[Sequence[str]] = None) -> int:
    import os

    from devstack.config import HOME

    parser = argparse.ArgumentParser(prog="python -m devstack.secret_scan", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="more files or directories (pytest output, test logs)")
    parser.add_argument("--home", type=Path, default=HOME, help="the stack's home (default $DEVSTACK_HOME)")
    parser.add_argument("--no-kafka", action="store_true")
    parser.add_argument("--no-flink", action="store_true")
    parser.add_argument("--no-prometheus", action="store_true")
    parser.add_argument("--json", action="store_true", help="findings as JSON lines")
    args = parser.parse_args(argv)
    findings, secrets, covered, unreadable = run(args.home, dict(os.environ), args.paths, not args.no_kafka,
                                                 not args.no_flink, not args.no_prometheus)
    if args.json:
        for f in findings:
            print(json.dumps(asdict(f)))
    print(report(findings, secrets, covered, unreadable))
    if any(not f.allowed for f in findings):
        return 1
    return 2 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
