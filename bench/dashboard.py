"""Dashboard figures in a real browser (Debian's Chromium, headless, Playwright) on a fresh `trainforge up`,
printed as one JSON report:

- event → chart: for each epoch of a live `yolo.train` run, the time from its `run.metrics` event (the
  event's `ts`, stamped by the runner when it publishes) to the run page's metric chart holding that point
  (the chart's `data-points` attribute, set in the render that calls uPlot's `setData`): p50/p99;
- first paint of a finished run's page: navigation start → the chart holds all N epochs (the whole history
  replayed through the run's event stream), median of 3 loads;
- the run page's JS heap (after a forced GC) before and after it took in a long log: `--log-lines` lines (an
  hour of 10 lines/s is 36,000) streamed by a container run as fast as the runner sends them; the page keeps
  at most 100,000 lines;
- the run page's JS heap after an hour-long simulated stream of 10 events/s (`--stream-events`, 36,000): a
  running container run (`sleep`) whose events this script publishes itself on the run's bus subjects, as its
  runner would (same attempt and runner id, `Nats-Msg-Id` de-duplication, seq numbers above the runner's):
  per simulated second one `run.progress` with batch losses (a batch-loss point), every 10 s a `run.metrics`
  of a new epoch (a point on every epoch chart), the other events `run.log` with one line each. They go out
  faster than real time (`--stream-rate` events/s, default 300: the hour in ~2 minutes), each stamped with its
  simulated time; the projector stores them and the page's EventSource gets them live. Measured after a forced
  GC (CDP `HeapProfiler.collectGarbage`, then `Runtime.getHeapUsage`): before the first event, after each
  simulated 10 minutes, and after the last event once the page shows it.

    python -m bench.dashboard                          # 100 epochs, 36,000 log lines, 36,000 events
    python -m bench.dashboard --epochs 10 --log-lines 5000 --stream-events 6000   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.stack import REPO, running_stack
from bench.stats import summary_ms

CHROMIUM = "/usr/bin/chromium"
OBSERVE = """
window.seen = [];
new MutationObserver(() => {
  const chart = document.querySelector('[data-chart="metrics"]');
  const n = chart ? Number(chart.dataset.points) : 0;
  if (n && (window.seen.length === 0 || window.seen[window.seen.length - 1][1] !== n)) window.seen.push([Date.now(), n]);
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-points"]});
"""


def wait_run(api: httpx.Client, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (run := api.get(f"/runs/{run_id}").json())["status"] not in ("completed", "failed", "canceled"):
        if time.monotonic() > deadline:
            raise TimeoutError(run)
        time.sleep(0.5)
    return run


def simulated_stream(api: httpx.Client, context: Any, url: str, stack: dict[str, Any], events: int,
                     rate: float) -> dict[str, Any]:
    """The run page's heap while it follows `events` simulated events of a training (10 per simulated second)."""
    run = api.post("/projects/bench/runs", json={"kind": "container", "backend": "local",
                                                 "start_command": "sleep 3600"}).json()
    deadline = time.monotonic() + 120
    while (state := api.get(f"/runs/{run['id']}").json())["status"] != "running":
        if time.monotonic() > deadline:
            raise TimeoutError(state)
        time.sleep(0.2)
    page = context.new_page()
    cdp = page.context.new_cdp_session(page)
    page.goto(f"{url}/runs/{run['id']}")
    page.wait_for_selector('[data-testid=run-page][data-status="running"]')

    def heap() -> float:
        cdp.send("HeapProfiler.collectGarbage")
        return round(cdp.send("Runtime.getHeapUsage")["usedSize"] / 2**20, 2)

    def shown() -> dict[str, int]:
        return page.evaluate("""() => ({
            log_lines: Number(document.querySelector('[data-testid=log-tail]').dataset.lines),
            epochs: window.trainforgeCharts.metrics ? window.trainforgeCharts.metrics.x.length : 0,
            batch_points: window.trainforgeCharts.batch ? window.trainforgeCharts.batch.x.length : 0,
            dom_nodes: document.getElementsByTagName('*').length })""")

    samples = [{"simulated_s": 0, "heap_mb": heap(), **shown()}]
    published = 0
    started = time.monotonic()
    for chunk_start in range(0, events, 6000):  # 10 simulated minutes at a time
        chunk = min(6000, events - chunk_start)
        # in a thread of its own: Playwright's sync API holds this thread's event loop
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _publish_stream(stack, state, chunk_start, chunk, rate)).result()
        published += chunk
        expected = _expected(published)
        page.wait_for_function("""([lines, epochs]) => Number(document.querySelector('[data-testid=log-tail]')
            .dataset.lines) >= lines && (window.trainforgeCharts.metrics || {x: []}).x.length >= epochs""",
                               arg=[min(expected["log_lines"], 100_000), expected["epochs"]], timeout=300_000)
        samples.append({"simulated_s": published // 10, "heap_mb": heap(), **shown()})
    wall = time.monotonic() - started
    last = samples[-1]
    api.post(f"/runs/{run['id']}/cancel")
    page.close()
    return {
        "events": published, "simulated_s": published // 10, "wall_s": round(wall, 1),
        "published_per_s": round(published / wall, 1), "expected": _expected(published),
        "heap_before_mb": samples[0]["heap_mb"], "heap_after_mb": last["heap_mb"],
        "heap_growth_mb": round(last["heap_mb"] - samples[0]["heap_mb"], 2), "samples": samples,
    }


def _kind(i: int) -> str:
    """The type of simulated event `i` (10 per simulated second)."""
    if i % 100 == 99:
        return "run.metrics"  # every 10 s: an epoch ends
    if i % 10 == 0:
        return "run.progress"  # every second: a batch, with its losses
    return "run.log"


def _expected(n: int) -> dict[str, int]:
    kinds = [_kind(i) for i in range(n)]
    return {"log_lines": kinds.count("run.log"), "epochs": kinds.count("run.metrics"),
            "batch_points": kinds.count("run.progress")}


async def _publish_stream(stack: dict[str, Any], run: dict[str, Any], first: int, count: int, rate: float) -> None:
    """Publish simulated events `first`..`first + count` of `run` as its runner would, at about `rate`/s."""
    import msgspec
    import nats

    from shared.contracts import RunLog, RunMetrics, RunProgress
    from shared.contracts.events import LogLine
    from shared.subjects import Subjects

    info = stack["info"]
    users = next(stack["state_dir"].rglob("nats-users.json"), None)
    auth = {"user": "runner", "password": json.loads(users.read_text())["runner"]} if users else {}
    nc = await nats.connect(info["nats_url"], **auth)
    js = nc.jetstream()
    subjects = Subjects(info["bus_prefix"])
    base = {"run_id": run["id"], "project_id": run["project_id"], "attempt": run["attempt"],
            "runner_id": run["runner_id"]}
    t0 = datetime.now().astimezone().timestamp() - first / 10
    began = time.monotonic()
    pending = []
    for i in range(first, first + count):
        ts = datetime.fromtimestamp(t0 + i / 10).astimezone()
        seq = 1_000_000 + i
        kind, second = _kind(i), i // 10
        if kind == "run.metrics":
            epoch = i // 100 + 1
            event: Any = RunMetrics(**base, seq=seq, ts=ts, epoch=epoch, metrics={
                "train/box_loss": 2.0 / epoch, "train/cls_loss": 3.0 / epoch, "metrics/mAP50(B)": 1 - 1 / epoch,
                "metrics/mAP50-95(B)": 0.7 - 0.7 / epoch, "lr/pg0": 0.01 / epoch})
        elif kind == "run.progress":
            event = RunProgress(**base, seq=seq, ts=ts, progress=min(second / 3600, 1.0), step=second,
                                losses={"box_loss": 2.0 / (1 + second / 100), "cls_loss": 3.0 / (1 + second / 100)})
        else:
            event = RunLog(**base, seq=seq, ts=ts, lines=[LogLine("stdout", f"step {second} line {i}: loss=0.{i}")])
        pending.append(js.publish(subjects.run_event(run["project_id"], run["id"], event.type),
                                  msgspec.json.encode(event), headers={"Nats-Msg-Id": event.msg_id}))
        if len(pending) >= 100:
            await asyncio.gather(*pending)
            pending = []
            ahead = (i + 1 - first) / rate - (time.monotonic() - began)
            if ahead > 0:
                await asyncio.sleep(ahead)
    await asyncio.gather(*pending)
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--log-lines", type=int, default=36_000)
    parser.add_argument("--stream-events", type=int, default=36_000, help="simulated events (10 per second)")
    parser.add_argument("--stream-rate", type=float, default=300.0, help="events published per real second")
    parser.add_argument("--only-stream", action="store_true", help="measure the simulated stream only")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from playwright.sync_api import sync_playwright

    from tests.datagen import make_detect_dataset
    from tests.dataset_factories import zip_folder

    report: dict[str, Any] = {"machine": platform.platform(), "epochs": args.epochs, "log_lines": args.log_lines,
                              "stream_events": args.stream_events, "stream_rate": args.stream_rate,
                              "date": datetime.now().astimezone().isoformat(timespec="seconds")}
    with running_stack() as stack, tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        url = stack["url"]
        api = httpx.Client(base_url=url + "/api/v1", headers=stack["headers"], timeout=120)
        archive = zip_folder(make_detect_dataset(Path(tmp) / "d", n_train=8, n_val=4, imgsz=64).parent,
                             Path(tmp) / "d.zip")
        with archive.open("rb") as handle:
            api.post("/datasets", files={"file": ("d.zip", handle, "application/zip")},
                     data={"name": "bench"}).raise_for_status()
        api.post("/projects", json={"name": "bench"}).raise_for_status()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        context = browser.new_context()  # one cookie session for every page below
        context.add_init_script(OBSERVE)
        page = context.new_page()
        page.goto(url + "/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", (stack["state_dir"] / "secrets" / "admin-password").read_text().strip())
        page.click("button[type=submit]")
        page.wait_for_selector("[data-testid=projects]")

        if not args.only_stream:
            # live: event ts → point in the chart
            run = api.post("/projects/bench/runs", json={
                "kind": "yolo.train", "dataset": "bench", "model": "yolov8n", "epochs": args.epochs, "imgsz": 64,
                "batch": 8, "device": "cpu", "extra": {"plots": False, "workers": 0}}).json()
            page.goto(f"{url}/runs/{run['id']}")
            final = wait_run(api, run["id"], timeout=60 * 60)
            assert final["status"] == "completed", final
            page.wait_for_function("(n) => window.trainforgeCharts.metrics && window.trainforgeCharts.metrics.x.length === n",
                                   arg=args.epochs, timeout=60_000)
            seen = page.evaluate("window.seen")
            items = [m for m in api.get(f"/runs/{run['id']}/metrics", params={"limit": 5000}).json()["items"]
                     if m["epoch"] is not None]
            published = {m["epoch"]: datetime.fromisoformat(m["ts"]).timestamp() for m in items}
            shown: dict[int, float] = {}
            for at_ms, n in seen:
                for epoch in range(1, n + 1):
                    shown.setdefault(epoch, at_ms / 1000)
            # epochs seen before the page was up (none unless the page loaded late) are left out
            latencies = [shown[e] - published[e] for e in published if e in shown and shown[e] >= published[e]]
            report["event_to_chart"] = summary_ms(latencies)

            # first paint of the finished run's page
            loads = []
            for _ in range(3):
                fresh = context.new_page()
                fresh.goto(f"{url}/runs/{run['id']}")
                fresh.wait_for_function("(n) => window.trainforgeCharts && window.trainforgeCharts.metrics && "
                                        "window.trainforgeCharts.metrics.x.length === n", arg=args.epochs,
                                        timeout=60_000, polling=10)
                loads.append(fresh.evaluate("performance.now()") / 1000)
                fresh.close()
            report["finished_run_first_paint"] = {**summary_ms(loads), "median_ms": round(statistics.median(loads) * 1000, 1)}

            # heap after a long log
            # the page is measured before the first line comes (the command waits), then after the last
            command = (f"sleep 8; for i in $(seq 1 {args.log_lines}); do "
                       f"echo \"step $i loss=0.$i some more text of a log line\"; done")
            logs = api.post("/projects/bench/runs", json={"kind": "container", "backend": "local",
                                                          "start_command": command}).json()
            heap_page = context.new_page()
            cdp = heap_page.context.new_cdp_session(heap_page)
            heap_page.goto(f"{url}/runs/{logs['id']}")
            heap_page.wait_for_selector("[data-testid=run-page]")
            lines_before = heap_page.evaluate("Number(document.querySelector('[data-testid=log-tail]').dataset.lines)")
            cdp.send("HeapProfiler.collectGarbage")
            before = cdp.send("Runtime.getHeapUsage")["usedSize"]
            wait_run(api, logs["id"], timeout=600)
            heap_page.wait_for_function("(n) => Number(document.querySelector('[data-testid=log-tail]').dataset.lines) >= n",
                                        arg=min(args.log_lines, 100_000), timeout=300_000)
            cdp.send("HeapProfiler.collectGarbage")
            after = cdp.send("Runtime.getHeapUsage")["usedSize"]
            report["heap"] = {"before_mb": round(before / 2**20, 1), "lines_before": lines_before,
                              "after_mb": round(after / 2**20, 1),
                              "lines_kept": heap_page.evaluate("Number(document.querySelector('[data-testid=log-tail]').dataset.lines)")}
        report["simulated_stream"] = simulated_stream(api, context, url, stack, args.stream_events, args.stream_rate)
        browser.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
