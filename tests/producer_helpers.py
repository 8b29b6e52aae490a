"""Helpers of the producer tests (iheardai_analytics): a throwaway Kafka broker, the collector as a process,
reading topics back, a static page server, and headless Chromium driven over the DevTools protocol."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent

from tests.e2e.flink_helpers import end_offsets, poll  # noqa: E402,F401 - end_offsets: for the producer tests
from io_connectors.settings import librdkafka_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2):
    """flink_helpers.poll, checking every 0.2 s."""
    return poll(check, timeout_s, what, interval_s)


# --- reading topics back ---------------------------------------------------------------------------------

def read_records(topic: str, bootstrap: str, start: Dict[int, int], want: Callable[[list], bool],
                 timeout_s: float = 30) -> List[Tuple[int, int, Optional[bytes], dict]]:
    """(partition, offset, key, value) of every record from `start` until `want(records)` is true."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**librdkafka_for(bootstrap), "group.id": "producer-tests", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    out: List[Tuple[int, int, Optional[bytes], dict]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not want(out):
            for m in c.consume(500, 0.5):
                if m.error() is None:
                    out.append((m.partition(), m.offset(), m.key(), json.loads(m.value())))
    finally:
        c.close()
    return out


def read_to_end(topic: str, bootstrap: str, start: Dict[int, int], timeout_s: float = 30
                ) -> List[Tuple[int, int, Optional[bytes], dict]]:
    """(partition, offset, key, value) of every record from `start` up to the end offsets as of now."""
    end = end_offsets(topic, bootstrap)
    todo = {p: o for p, o in end.items() if o > start.get(p, 0)}
    if not todo:
        return []
    done = set()
    return read_records(topic, bootstrap, {p: start.get(p, 0) for p in todo},
                        lambda r: _track_end(r, todo, done), timeout_s)


def _track_end(records, end: Dict[int, int], done: set) -> bool:
    for part, off, _, _ in records[-500:]:  # the last consume() batch at most
        if off >= end[part] - 1:
            done.add(part)
    return done >= set(end)


# --- a throwaway KRaft broker (the shared one is never stopped) ---------------------------------------

class ThrowawayKafka:
    """A second single-node KRaft broker from the local stack's Kafka jars, on its own ports and data dir."""

    def __init__(self, data_dir: Path):
        from devstack.services.kafka import KAFKA_LIB

        self.lib = KAFKA_LIB
        self.port, self.controller = free_port(), free_port()
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap = f"localhost:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self.conf = self.dir / "server.properties"
        self.conf.write_text("\n".join([
            "process.roles=broker,controller", "node.id=1",
            f"controller.quorum.voters=1@localhost:{self.controller}",
            f"listeners=PLAINTEXT://localhost:{self.port},CONTROLLER://localhost:{self.controller}",
            f"advertised.listeners=PLAINTEXT://localhost:{self.port}", "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT", f"log.dirs={self.dir / 'log'}",
            "offsets.topic.replication.factor=1", "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1", "share.coordinator.state.topic.min.isr=1",
            "auto.create.topics.enable=false", ""]))
        (self.dir / "log4j2.properties").write_text(
            "rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\nappender.stdout.type=Console\n"
            "appender.stdout.name=STDOUT\nappender.stdout.layout.type=PatternLayout\n"
            "appender.stdout.layout.pattern=[%d] %p %m (%c)%n\n")

    def _java(self, main: str, *args) -> List[str]:
        from devstack.process import java_bin

        return [java_bin(), "-Xmx256m", "-Xms128m", "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}", "-cp", f"{self.lib}/*", main,
                *map(str, args)]

    def start(self, timeout_s: float = 90) -> None:
        if not (self.dir / "log" / "meta.properties").exists():
            cid = subprocess.run(self._java("kafka.tools.StorageTool", "random-uuid"), capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cid, "-c", self.conf),
                           capture_output=True, check=True)
        log = open(self.dir / "broker.log", "ab")
        self.proc = subprocess.Popen(self._java("kafka.Kafka", self.conf), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        from confluent_kafka.admin import AdminClient

        wait_for(lambda: self.proc.poll() is None and AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(
            timeout=2).brokers, timeout_s, f"the throwaway broker on {self.bootstrap}")

    def stop(self) -> None:
        """Stop the broker abruptly (SIGKILL of its process group): what a crash or a network cut looks like."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def create_topic(self, name: str, partitions: int) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            f.result(30)


# --- the collector as a process ----------------------------------------------------------------------------

@contextlib.contextmanager
def collector_process(spill_dir: Path, *args: str, env: Optional[Dict[str, str]] = None) -> Iterator[str]:
    """`python -m iheardai_analytics.collector` on a free port; yields its base URL; SIGTERM at the end."""
    port = free_port()
    log = open(Path(spill_dir).parent / f"collector-{port}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "iheardai_analytics.collector", "--port", str(port),
                             "--spill-dir", str(spill_dir), *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and urllib.request.urlopen(f"{url}/health", timeout=2).status == 200,
                 60, f"the collector on {url}")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- a static page server and headless Chromium over CDP ---------------------------------------------------

@contextlib.contextmanager
def static_server(root: Path) -> Iterator[str]:
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **kw)  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


TEST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>iheardAI tracker test</title></head>
<body>
<button id="chat-button" class="widget-trigger" style="position:absolute;left:100px;top:120px;width:160px;height:40px">
Start chat</button>
<script type="module">
  import { init, trackEvent, sessionId } from "__COLLECTOR__/tracker.js";
  init({ endpoint: "__COLLECTOR__/api/analytics", userId: "__USER__", flushIntervalMs: 60000 });
  document.getElementById("chat-button").addEventListener("click", (e) => {
    trackEvent({ type: "widget_open", interaction_type: "click", element_id: "chat-button",
                 element_class: "widget-trigger", element_text: e.target.textContent.trim(),
                 coordinates: { x: e.clientX, y: e.clientY } });
    trackEvent({ type: "message_sent", interaction_type: "text_input", message_length: 45 });
  });
  window.__sid = sessionId();
</script>
</body></html>
"""


def write_test_page(root: Path, collector_url: str, user_id: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    page = root / "index.html"
    page.write_text(TEST_PAGE.replace("__COLLECTOR__", collector_url).replace("__USER__", user_id))
    return page


class Chromium:
    """Headless Chromium (Debian's `chromium`) with its DevTools protocol on a websocket (websocket-client)."""

    def __init__(self, profile: Path):
        import shutil

        exe = shutil.which("chromium")
        if not exe:
            from devstack.process import apt_install

            apt_install("chromium")
            exe = shutil.which("chromium")
        self.profile = Path(profile)
        self.proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        self.port = int(wait_for(lambda: port_file.exists() and port_file.read_text().split("\n")[0], 60,
                                 "Chromium's DevTools port"))
        self._id = 0

    def _http(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def new_page(self, url: str) -> "Page":
        target = self._http(f"/json/new?{url}", method="PUT")
        return Page(self, target["id"], target["webSocketDebuggerUrl"])

    def close_target(self, target_id: str) -> None:
        urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/close/{target_id}", timeout=10).read()

    def quit(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class Page:
    def __init__(self, browser: Chromium, target_id: str, ws_url: str):
        import websocket

        self.browser, self.id = browser, target_id
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._n = 0

    def send(self, method: str, **params):
        self._n += 1
        self.ws.send(json.dumps({"id": self._n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def click(self, selector: str) -> Tuple[float, float]:
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            f".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        return x, y

    def close(self) -> None:
        """Close the tab the way a user does (the page gets visibilitychange + pagehide)."""
        try:
            self.ws.close()
        finally:
            self.browser.close_target(self.id)
