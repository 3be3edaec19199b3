"""A real browser (Debian's Chromium, headless, driven by Playwright) follows a run's events with
`EventSource` from a page on another origin (CORS) while the gateway is killed with -9 and restarted: the page
records every event id once, in order, through to the terminal event, and then stops reconnecting (204)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from shared.contracts.events import RunEvent
from shared.settings import Settings
from tests.e2e.browser_support import LAUNCH_ARGS
from tests.e2e.conftest import stack_env
from tests.e2e.stackctl import Stack

pytestmark = pytest.mark.slow

EVENT_TYPES = sorted(t.__struct_config__.tag for t in RunEvent.__args__)  # type: ignore[attr-defined]

PAGE = """<!doctype html><meta charset="utf-8"><title>events</title><script>
const q = new URLSearchParams(location.search);
window.got = []; window.opens = 0; window.errors = 0;
const es = new EventSource(q.get("api") + "/runs/" + q.get("run") + "/events?access_token="
                           + encodeURIComponent(q.get("token")));
window.es = es;
es.onopen = () => { window.opens += 1; };
es.onerror = () => { window.errors += 1; };
for (const type of TYPES) es.addEventListener(type, (e) => window.got.push([Number(e.lastEventId), type]));
es.onmessage = (e) => window.got.push([Number(e.lastEventId), "unnamed:" + e.data]);  // never: all are named
</script>"""


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        body = PAGE.replace("TYPES", json.dumps(EVENT_TYPES)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def page_origin() -> Iterator[str]:
    """A page server on a port of its own: another origin than the gateway's."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def wait_ready(stack: Stack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(stack.url + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, stack.log()
        time.sleep(0.2)


def test_a_browser_event_source_survives_a_gateway_kill_and_gets_every_event_once_to_the_end(
    chromium: Path, page_origin: str, settings: Settings, tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    env = {**stack_env(settings), "TRAINFORGE_CORS_ORIGINS": page_origin}
    stack = Stack(state_dir=tmp_path / "state", env=env).start()
    try:
        go_on = tmp_path / "go-on"  # the run logs until the gateway is back, then 20 more lines: no race with its end
        with stack.api() as api:
            assert api.post("/projects", json={"name": "browser"}).status_code == 201
            run = api.post("/projects/browser/runs", json={
                "kind": "container", "backend": "local",
                "start_command": f"i=0; until [ -e {go_on} ]; do i=$((i+1)); echo line $i; sleep 0.03; done; "
                                 "for j in $(seq 1 20); do echo after $j; sleep 0.03; done"}).json()
        query = urlencode({"api": stack.url + "/api/v1", "run": run["id"], "token": stack.token})
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=LAUNCH_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"{page_origin}/?{query}")
                page.wait_for_function("window.got.filter(([, t]) => t === 'run.log').length >= 3",
                                       timeout=60_000)
                before_kill = page.evaluate("window.got")
                gateway = stack.child("gateway")
                os.kill(gateway["pid"], signal.SIGKILL)  # mid-stream
                wait_ready(stack)  # `up` starts it again on the same port
                go_on.touch()
                page.wait_for_function("window.got.some(([, t]) => t === 'run.completed')", timeout=120_000)
                # The stream ends with 200; EventSource reconnects with Last-Event-ID, gets 204, stops.
                page.wait_for_function("window.es.readyState === EventSource.CLOSED", timeout=60_000)
                got = page.evaluate("window.got")
                opens = page.evaluate("window.opens")
                # what that reconnect got, asked from the page: a 204, readable cross-origin (CORS headers on
                # the preflight for Last-Event-ID and on the 204 itself)
                status = page.evaluate("""async (last) => (await fetch(window.es.url,
                    {headers: {"Last-Event-ID": String(last)}})).status""", got[-1][0])
            finally:
                browser.close()
        replay = list(stack.sse(f"/runs/{run['id']}/events"))  # everything stored, after the fact
    finally:
        stack.stop()
    ids = [i for i, _ in got]
    assert not [t for _, t in got if t.startswith("unnamed")], "every event carries its type"
    assert ids == sorted(set(ids)), "each id once, in order"
    assert ids == [int(e.id) for e in replay], "nothing missing"
    assert [t for _, t in got] == [e.event for e in replay]
    assert got[-1][1] == "run.completed" and "run.completed" not in {t for _, t in before_kill}
    assert status == 204
    assert opens >= 2, "the page reconnected after the kill"
    log_lines = [line for e in replay if e.event == "run.log" for line in json.loads(e.data)["lines"]]
    texts = [x["text"] for x in log_lines if x["stream"] == "stdout"]
    before = sum(1 for t in texts if t.startswith("line "))
    assert texts == [f"line {i}" for i in range(1, before + 1)] + [f"after {j}" for j in range(1, 21)]
