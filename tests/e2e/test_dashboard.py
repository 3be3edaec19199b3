"""The web dashboard in a real browser (Debian's Chromium, headless, Playwright) against a real `trainforge up`
(NATS, Postgres, a runner, Ultralytics): log in with a password; upload a dataset and see its inspection and
boxes; create a project; start a 3-epoch YOLO training from the form (a field error from the API's 422
first); the run page's metric chart gains a point per epoch while it trains; the val and docker container forms'
422s at their fields; a second training canceled after its first checkpoint and resumed from it on the page,
compared with the first; the log tail follows; a log line with `<script>` shows as text; cancel from the page;
live badges and filters on the project page; logout; a viewer's start is refused; a second user sees none of
the first user's projects and datasets, and on the fleet page no Drain (the API answers them 403); the admin drains and resumes the runner on the fleet page (live host
charts) and creates a user.

Screenshots of every page go to `<tmp>/screenshots/` (kept with the test's temp folder)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from tests.auth_support import PASSWORD
from tests.datagen import make_detect_dataset
from tests.dataset_factories import zip_folder
from tests.e2e.browser_support import LAUNCH_ARGS
from tests.e2e.conftest import stack_env
from tests.e2e.stackctl import Stack, ok

pytestmark = pytest.mark.slow

BUS = Path(next(iter(importlib.util.find_spec("ultralytics").submodule_search_locations))) / "assets" / "bus.jpg"  # type: ignore[union-attr, arg-type]

WAIT_MS = 180_000
SCRIPT_LINE = "<script>window.pwned = 1</script><b>bold</b>"

# (page functions are arrow functions: Playwright polls a plain expression with eval, which the page's
# Content-Security-Policy forbids)
RECORD_POINTS = """
window.pointsSeen = [];
new MutationObserver(() => {
  const chart = document.querySelector('[data-chart="metrics"]');
  const n = chart ? Number(chart.dataset.points) : 0;
  if (n && window.pointsSeen[window.pointsSeen.length - 1] !== n) window.pointsSeen.push(n);
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-points"]});
"""


TARGETS = """
[targets.llm-box]
container = "llm-box"
workdir = "/app"
host_root = "{root}"
"""


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    """The e2e stack, its runner with a targets file (container target `llm-box`: never started here, only
    offered through its heartbeats and `GET /targets`)."""
    targets = tmp_path / "targets.toml"
    targets.write_text(TARGETS.format(root=tmp_path))
    env = {**stack_env(settings), "TRAINFORGE_RUNNER_TARGETS_FILE": str(targets)}
    s = Stack(state_dir=tmp_path / "state", env=env, runners=1).start()
    try:
        yield s
    finally:
        s.stop()


def user(stack: Stack, name: str) -> httpx.Client:
    """A user created by the admin, and an API client logged in as them."""
    with stack.api() as admin:
        ok(admin.post("/users", json={"username": name, "password": PASSWORD}), 201)
    client = httpx.Client(base_url=stack.url + "/api/v1", timeout=60)
    token = ok(client.post("/auth/login", json={"username": name, "password": PASSWORD}))["access_token"]
    client.headers["Authorization"] = f"Bearer {token}"
    return client


class Shots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, page: Any, name: str) -> None:
        page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)


def new_user_page(browser: Any) -> Any:
    """A page in a context of its own: its own cookies, so another user's session."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(60_000)
    return context.new_page()


def log_in(page: Any, url: str, username: str) -> None:
    page.goto(url + "/")
    page.wait_for_url("**/login?next=*")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=projects]")


def test_the_dashboard_trains_follows_cancels_and_keeps_users_apart(
    chromium: Path, stack: Stack, tmp_path: Path,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # a loaded machine: assertions wait on the page, up to this
    shots = Shots(tmp_path / "screenshots")
    admin = stack.api()
    alice, bob, vic = user(stack, "alice"), user(stack, "bob"), user(stack, "vic")
    archive = zip_folder(make_detect_dataset(tmp_path / "rects", imgsz=128).parent, tmp_path / "rects.zip")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(60_000)
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.add_init_script(RECORD_POINTS)

            # -- log in: a cookie session, no token in script reach -----------------------------------
            page.goto(stack.url + "/projects")
            page.wait_for_selector("[data-testid=login-form]")
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", "not the password")
            page.click("button[type=submit]")
            expect(page.locator(".error")).to_contain_text("wrong username or password")
            shots(page, "01-login-refused")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("[data-testid=projects]")
            assert page.evaluate("document.cookie") == "", "the session cookie is httpOnly"
            cookie = next(c for c in page.context.cookies() if c["name"] == "trainforge_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

            # -- datasets: upload one with a progress bar, see its inspection and its boxes -----------
            page.click("nav >> text=Datasets")
            page.wait_for_selector("[data-testid=datasets]")
            page.fill("[data-testid=upload-dataset] input[name=name]", "rects")
            page.set_input_files("[data-testid=upload-dataset] input[type=file]", str(archive))
            page.click("[data-testid=upload-dataset] button[type=submit]")
            page.wait_for_selector("[data-testid=dataset-page]", timeout=WAIT_MS)
            expect(page.locator("[data-testid=classes] tbody tr")).to_have_count(2)
            expect(page.locator("[data-testid=splits]")).to_contain_text("train")
            page.wait_for_function("""() => { const imgs = [...document.querySelectorAll('[data-testid=images] img')];
                return imgs.length === 24 && imgs.every(i => i.complete && i.naturalWidth > 0); }""")
            assert page.locator("[data-testid=images] svg rect").count() >= 24, "every image has its boxes drawn"
            shots(page, "02-dataset")
            page.click("nav >> text=Projects")
            page.wait_for_selector("[data-testid=projects]")

            # -- projects: create one ------------------------------------------------------------------
            page.fill("[data-testid=create-project] input[name=name]", "bad name!")
            page.click("[data-testid=create-project] button[type=submit]")
            expect(page.locator("[data-testid=create-project] .field-error")).to_be_visible()
            shots(page, "03-projects-field-error")
            page.fill("[data-testid=create-project] input[name=name]", "shapes")
            page.fill("[data-testid=create-project] input[name=description]", "rectangles, <i>2 classes</i>")
            page.click("[data-testid=create-project] button[type=submit]")
            page.wait_for_selector("[data-testid=project-page]")
            expect(page.locator("main .muted").first).to_have_text("rectangles, <i>2 classes</i>")
            project_id = page.url.rstrip("/").split("/")[-1]
            page.fill("[data-testid=members] input[name=member]", "vic")
            page.select_option("[data-testid=members] select[name=role]", "viewer")
            page.click("[data-testid=members] button[type=submit]")
            expect(page.locator('[data-testid=members] tr[data-member="vic"]')).to_contain_text("viewer")
            page.click("[data-testid=archive]")
            expect(page.locator("[data-testid=archive]")).to_have_text("Unarchive")
            assert ok(alice.get(f"/projects/{project_id}"))["status"] == "archived"
            page.click("[data-testid=archive]")
            expect(page.locator("[data-testid=archive]")).to_have_text("Archive")
            # container runs on the runner's host (backend local) are for admins: the admin joins to start them
            ok(alice.put(f"/projects/{project_id}/members/admin", json={"role": "member"}))

            # -- new training: a 422 names its field, then a real start --------------------------------
            page.click("[data-testid=new-run]")
            page.wait_for_selector("[data-testid=new-run-form]")
            page.select_option("select[name=dataset]", "rects")
            page.fill("input[name=model]", "yolov8n")
            page.fill("input[name=epochs]", "0")
            page.fill("input[name=imgsz]", "64")
            page.fill("input[name=batch]", "8")
            page.select_option("select[name=device]", "cpu")
            page.fill("textarea[name=extra]", '{"plots": true, "workers": 0}')
            page.click("[data-testid=start]")
            epochs_error = page.locator("label.field.invalid", has=page.locator("input[name=epochs]"))
            expect(epochs_error.locator(".field-error")).to_contain_text(">= 1")
            shots(page, "04-new-run-field-error")
            # the fields the layout does not place come from the API's schema: bounds, defaults, descriptions
            advanced = page.locator("[data-testid=advanced]")
            expect(advanced.locator("[data-field=save_period]")).to_contain_text("Keep a numbered checkpoint")
            expect(advanced.locator("input[name=seed]")).to_have_attribute("placeholder", "0")
            expect(advanced.locator("[data-field=priority]")).to_contain_text("0–100")
            expect(page.locator("[data-field=epochs]")).to_contain_text("1–10000")
            page.fill("input[name=epochs]", "3")
            page.click("[data-testid=advanced] > summary")
            page.fill("input[name=seed]", "-1")
            page.click("[data-testid=start]")  # the API's 422 at a generated field
            expect(page.locator("label.field.invalid", has=page.locator("input[name=seed]"))).to_contain_text(">= 0")
            shots(page, "04b-new-run-advanced-field-error")
            page.fill("input[name=seed]", "")
            page.fill("input[name=epochs]", "3")
            # a named configuration: saved from the form, loaded into a fresh one, started from there
            page.fill("[data-testid=config-name]", "tiny")
            page.click("[data-testid=save-config]")
            expect(page.locator("label.field", has=page.locator("[data-testid=config-name]"))).to_contain_text("saved tiny")
            page.reload()
            page.wait_for_selector("[data-testid=new-run-form]")
            expect(page.locator("input[name=imgsz]")).to_have_value("640")
            page.locator("#configs option[value=tiny]").wait_for(state="attached")  # the project's configurations
            page.fill("[data-testid=config-name]", "tiny")
            page.locator("[data-testid=config-name]").dispatch_event("change")
            expect(page.locator("input[name=imgsz]")).to_have_value("64")
            expect(page.locator("select[name=dataset]")).to_have_value("rects")
            expect(page.locator("textarea[name=extra]")).to_have_value('{"plots":true,"workers":0}')
            page.click("[data-testid=start]")
            page.wait_for_selector("[data-testid=run-page]")
            run_id = page.get_attribute("[data-testid=run-page]", "data-run")

            # -- the run page: a point per epoch, live -------------------------------------------------
            page.wait_for_selector('[data-testid=run-page][data-status="completed"]', timeout=WAIT_MS)
            page.wait_for_function("() => window.trainforgeCharts.metrics && window.trainforgeCharts.metrics.x.length === 3")
            chart = page.evaluate("window.trainforgeCharts.metrics")
            assert chart["x"] == [1, 2, 3]
            assert page.evaluate("window.pointsSeen") == [1, 2, 3], "one point at a time, as the epochs ended"
            api_points = [m for m in ok(alice.get(f"/runs/{run_id}/metrics", params={"limit": 1000}))["items"]
                          if m["epoch"] is not None]
            assert chart["series"]["metrics/mAP50(B)"] == [m["metrics"]["metrics/mAP50(B)"] for m in api_points]
            assert page.evaluate("window.trainforgeCharts.losses.x") == [1, 2, 3]
            assert int(page.get_attribute("[data-testid=log-tail]", "data-lines")) > 3
            page.locator('[data-testid=images] img[alt="confusion_matrix.png"]').wait_for(timeout=30_000)
            page.wait_for_function("""() => [...document.querySelectorAll('[data-testid=images] img')]
                .filter(i => i.alt === 'results.png' || i.alt === 'confusion_matrix.png')
                .every(i => i.complete && i.naturalWidth > 0)""")
            page.click('[data-testid=log-lr]')  # the log-scale toggle redraws the chart
            expect(page.locator('[data-chart="lr"]')).to_have_attribute("data-points", "3")
            shots(page, "05-run-completed")

            # -- the other kinds' forms: their 422s at the fields they name (nothing starts) -----------
            page.goto(f"{stack.url}/projects/{project_id}/new")
            page.select_option("select[name=kind]", "yolo.val")
            expect(page.locator("#model-options option[value=yolov8n]")).not_to_have_count(0)  # the catalog
            page.fill("input[name=model]", "yolov8n")
            page.click("[data-testid=start]")
            expect(page.locator("label.field.invalid", has=page.locator("select[name=dataset]"))).to_contain_text("required")
            shots(page, "05a-new-run-val-field-error")
            page.select_option("select[name=kind]", "yolo.export")
            expect(page.locator("input[name=half]")).not_to_be_checked()
            shots(page, "05a2-new-run-export-form")
            page.select_option("select[name=kind]", "container")
            page.select_option("select[name=backend]", "docker")
            page.fill("textarea[name=start_command]", "echo hi")
            page.click("[data-testid=start]")
            expect(page.locator("label.field.invalid", has=page.locator("select[name=target]"))).to_contain_text("docker")
            # the target is picked from those the live runner offers (its heartbeats, GET /targets)
            expect(page.locator("select[name=target] option[value=llm-box]")).to_contain_text("1 runner")
            page.select_option("select[name=target]", "llm-box")
            page.click("[data-testid=advanced] > summary")  # the generated fields: env among them
            page.fill("[data-testid=advanced] textarea[name=env]", '{"HF_HOME": "/data/hf"}')
            page.fill("[data-testid=config-name]", "box")  # a container configuration, saved and loaded back
            page.click("[data-testid=save-config]")
            expect(page.locator("label.field", has=page.locator("[data-testid=config-name]"))).to_contain_text("saved box")
            assert ok(alice.get(f"/projects/{project_id}/configs/box"))["params"] == {
                "backend": "docker", "target": "llm-box", "start_command": "echo hi", "env": {"HF_HOME": "/data/hf"}}
            page.select_option("select[name=backend]", "local")
            page.fill("textarea[name=start_command]", "")
            page.fill("[data-testid=config-name]", "box")
            page.locator("[data-testid=config-name]").dispatch_event("change")
            expect(page.locator("select[name=target]")).to_have_value("llm-box")
            expect(page.locator("textarea[name=start_command]")).to_have_value("echo hi")
            expect(page.locator("[data-testid=advanced] textarea[name=env]")).to_have_value('{"HF_HOME":"/data/hf"}')
            shots(page, "05b-new-run-container-target")

            # -- a second training: canceled after its first checkpoint, resumed from it on the page --
            page.select_option("select[name=kind]", "yolo.train")
            page.locator("#configs option[value=tiny]").wait_for(state="attached")  # the project's configurations
            page.fill("[data-testid=config-name]", "tiny")
            page.locator("[data-testid=config-name]").dispatch_event("change")
            expect(page.locator("input[name=imgsz]")).to_have_value("64")
            page.fill("input[name=epochs]", "8")  # more epochs, and batches an epoch: the cancel lands before the end
            page.fill("input[name=batch]", "2")
            page.click("[data-testid=start]")
            page.wait_for_selector("[data-testid=run-page]")
            canceled_id = page.get_attribute("[data-testid=run-page]", "data-run")
            page.locator("[data-testid=checkpoints] tr[data-epoch]").first.wait_for(timeout=WAIT_MS)
            page.click("[data-testid=cancel]")
            page.wait_for_selector('[data-testid=run-page][data-status="canceled"]', timeout=WAIT_MS)
            assert ok(alice.get(f"/runs/{canceled_id}"))["status"] == "canceled"
            shots(page, "05c-training-canceled")
            page.locator("[data-testid=checkpoints] tr[data-epoch] button", has_text="Resume from here").first.click()
            page.wait_for_function("(first) => { const m = document.querySelector('[data-testid=run-page]');"
                                   " return m && m.dataset.run !== first; }", arg=canceled_id)
            resumed_id = page.get_attribute("[data-testid=run-page]", "data-run")
            page.wait_for_selector('[data-testid=run-page][data-status="completed"]', timeout=WAIT_MS)
            resumed = ok(alice.get(f"/runs/{resumed_id}"))
            assert resumed["resume_of"] == canceled_id
            page.goto(f"{stack.url}/projects/{project_id}")
            for rid in (run_id, resumed_id):
                page.locator(f'tr[data-run="{rid}"] input[type=checkbox]').check()
            page.click("[data-testid=compare]")
            page.wait_for_selector("[data-testid=compare-table]")
            page.wait_for_function("() => window.trainforgeCharts.compare && "
                                   "Object.keys(window.trainforgeCharts.compare.series).length === 2")
            compare = page.evaluate("window.trainforgeCharts.compare")
            assert compare["x"][:3] == [1, 2, 3]
            lines = list(compare["series"].values())
            assert len([v for v in lines[0] if v is not None]) == 3, "the first run's three epochs"
            assert page.locator("[data-testid=compare-table] tr[data-differs=yes]").count() >= 1
            shots(page, "06-compare")

            # -- the model field: an older library version and a run's model file, picked from lists -----
            page.goto(f"{stack.url}/projects/{project_id}/new")
            page.select_option("select[name=kind]", "yolo.val")
            shapes = next(m for m in ok(alice.get("/models"))["items"] if m["name"] == "shapes")
            assert shapes["versions_count"] >= 2, "the first training and the resumed one"
            page.locator(f"select[name=model-library] option[value='{shapes['id']}']").wait_for(state="attached")
            page.select_option("select[name=model-library]", shapes["id"])
            page.locator("select[name=model-version] option[value='library:shapes:1']").wait_for(state="attached")
            page.select_option("select[name=model-version]", "library:shapes:1")
            expect(page.locator("input[name=model]")).to_have_value("library:shapes:1")
            page.locator("select[name=model-run]").focus()
            page.locator(f"select[name=model-run] option[value='{run_id}']").wait_for(state="attached")
            page.select_option("select[name=model-run]", run_id)
            best = next(a for a in ok(alice.get(f"/runs/{run_id}/artifacts", params={"limit": 200}))["items"]
                        if a["name"] == "weights/best.pt")
            page.locator(f"select[name=model-artifact] option[value='artifact:{best['id']}']").wait_for(state="attached")
            page.select_option("select[name=model-artifact]", f"artifact:{best['id']}")
            expect(page.locator("input[name=model]")).to_have_value(f"artifact:{best['id']}")
            shots(page, "06a-new-run-model-picked")

            # -- the weights library: the training registered its best weights ------------------------
            page.click("nav >> text=Models")
            page.locator('[data-testid=models] tr[data-model="shapes"] a').click()
            first_version = page.locator("[data-testid=versions] tr", has_text=run_id[:8])
            expect(first_version).to_contain_text("shapes:")
            href = first_version.get_by_role("link", name="Download").get_attribute("href")
            assert page.evaluate("(u) => fetch(u, {headers: {Range: 'bytes=0-15'}}).then(r => r.status)", href) == 206
            # predict on bus.jpg: the boxes drawn are the API's (conf 0 so that an untrained model gives some)
            page.select_option("[data-testid=predict] select[name=version]", "1")  # the older version
            page.set_input_files("[data-testid=predict] input[type=file]", str(BUS))
            page.fill("[data-testid=predict] input[name=conf]", "0")
            page.fill("[data-testid=predict] input[name=max_det]", "12")
            page.click("[data-testid=predict] button[type=submit]")
            expect(page.locator("[data-testid=predict] .prediction")).to_have_attribute("data-boxes", "12",
                                                                                     timeout=120_000)
            expect(page.locator("[data-testid=predict] svg rect")).to_have_count(12)
            expect(page.locator("[data-testid=predict] .prediction p")).to_contain_text("shapes:1")
            page.wait_for_function("() => { const i = document.querySelector('[data-testid=predict] img');"
                                   " return i.complete && i.naturalWidth === 810; }")
            shots(page, "06b-model-predict")
            # export to ONNX from the page: a yolo.export run whose file is downloadable
            page.select_option("[data-testid=export] select[name=format]", "onnx")
            page.fill("[data-testid=export] input[name=imgsz]", "64")
            page.click("[data-testid=export] button[type=submit]")
            page.wait_for_selector('[data-testid=run-page][data-status="completed"]', timeout=WAIT_MS)
            onnx = page.locator("[data-testid=artifacts] a", has_text=".onnx")
            expect(onnx).to_have_count(1)
            assert page.evaluate("(u) => fetch(u).then(r => r.arrayBuffer()).then(b => b.byteLength)",
                                 onnx.get_attribute("href")) > 100_000
            shots(page, "06c-export-run")

            # -- a second run: log tail follows, `<script>` is text, cancel ----------------------------
            command = (f"echo '{SCRIPT_LINE}'; for i in $(seq 1 3000); do echo tick $i; sleep 0.05; done")
            second = ok(admin.post(f"/projects/{project_id}/runs", json={
                "kind": "container", "backend": "local", "start_command": command}), 201)
            page.goto(f"{stack.url}/runs/{second['id']}")
            page.wait_for_function("() => document.querySelectorAll('[data-testid=log-tail] .line').length > 40",
                                   timeout=WAIT_MS)
            line = page.locator("[data-testid=log-tail] .line", has_text="window.pwned")
            assert line.text_content() == SCRIPT_LINE
            assert page.evaluate("window.pwned") is None
            assert page.locator("[data-testid=log-tail] script, [data-testid=log-tail] b").count() == 0
            page.wait_for_function("""() => { const b = document.querySelector('[data-testid=log-tail]');
                return b.scrollHeight > b.clientHeight && b.scrollHeight - b.scrollTop - b.clientHeight < 8; }""")
            before = page.evaluate("document.querySelector('[data-testid=log-tail]').scrollTop")
            page.wait_for_function("(before) => document.querySelector('[data-testid=log-tail]').scrollTop > before",
                                   arg=before)
            page.fill("[data-testid=log-search]", "pwned")
            expect(page.locator("[data-testid=log-tail] .line")).to_have_text([SCRIPT_LINE])
            shots(page, "07-run-log-script-as-text")
            page.fill("[data-testid=log-search]", "tick 7")
            page.wait_for_function("""() => [...document.querySelectorAll('[data-testid=log-tail] .line')]
                .every(l => l.textContent.includes('tick 7'))""")
            shots(page, "08-run-log-search")
            page.fill("[data-testid=log-search]", "")
            page.click("[data-testid=cancel]")
            page.wait_for_selector('[data-testid=run-page][data-status="canceled"]', timeout=WAIT_MS)
            expect(page.locator("[data-testid=timeline]")).to_contain_text("canceled")
            shots(page, "09-run-canceled")

            # -- the project page: both runs, live badges, filters ------------------------------------
            page.goto(f"{stack.url}/projects/{project_id}")
            rows = page.locator("[data-testid=runs] tbody tr[data-run]")
            expect(rows).to_have_count(5)
            expect(page.locator(f'tr[data-run="{run_id}"] .badge')).to_have_text("completed")
            third = ok(admin.post(f"/projects/{project_id}/runs", json={
                "kind": "container", "backend": "local", "start_command": "echo done"}), 201)
            # the new run appears and turns completed through the project's event stream, no reload
            page.wait_for_selector(f'tr[data-run="{third["id"]}"] .badge[data-status="completed"]',
                                   timeout=WAIT_MS)
            page.select_option("[data-testid=filter-status]", "canceled")
            expect(rows).to_have_count(2)
            expect(page.locator(f'tr[data-run="{second["id"]}"]')).to_be_visible()
            page.select_option("[data-testid=filter-status]", "")
            page.select_option("[data-testid=filter-kind]", "yolo.train")
            expect(rows).to_have_count(3)
            page.select_option("[data-testid=filter-kind]", "")
            expect(rows).to_have_count(6)
            # the feed: the project's stored events (the second run's claim and cancel, from before the page
            # opened) and what happened live (the third)
            def feed(run: str, type_: str) -> Any:
                return page.locator(f"[data-testid=feed] li[data-type='{type_}']", has_text=run[:8])

            expect(feed(third["id"], "run.completed")).to_have_count(1)
            expect(feed(second["id"], "run.canceled")).to_have_count(1)
            expect(feed(second["id"], "run.cancel_requested")).to_have_count(1)
            expect(feed(second["id"], "run.claimed")).to_contain_text("by ")
            shots(page, "10-project")

            # -- logout: the cookie is cleared, the API refuses it ------------------------------------
            page.click("[data-testid=logout]")
            page.wait_for_selector("[data-testid=login-form]")
            assert not [c for c in page.context.cookies() if c["name"] == "trainforge_session"]
            assert page.evaluate("fetch('/api/v1/auth/me').then(r => r.status)") == 401
            assert not errors, errors

            # -- a viewer sees the project but is refused a start --------------------------------------
            viewer = new_user_page(browser)
            log_in(viewer, stack.url, "vic")
            expect(viewer.locator('[data-project="shapes"]')).to_be_visible()
            viewer.goto(f"{stack.url}/projects/{project_id}/new")
            viewer.select_option("select[name=kind]", "container")
            viewer.fill("textarea[name=start_command]", "echo hi")
            viewer.click("[data-testid=start]")
            expect(viewer.locator("[data-testid=new-run-form] .error")).to_be_visible()
            assert "/new" in viewer.url
            shots(viewer, "11-viewer-refused")
            assert ok(alice.get(f"/projects/{project_id}/runs"))["total"] == 6, "nothing started"

            # -- another user sees none of it ----------------------------------------------------------
            other = new_user_page(browser)
            log_in(other, stack.url, "bob")
            expect(other.locator("[data-testid=projects] tbody")).to_contain_text("No projects yet.")
            other.goto(f"{stack.url}/datasets")
            expect(other.locator("[data-testid=datasets] tbody")).to_contain_text("No datasets yet.")
            other.goto(f"{stack.url}/runs/{run_id}")
            expect(other.locator(".error")).to_contain_text("not found")
            shots(other, "12-other-user")
            # the fleet page shows a non-admin the runners without Drain; the API refuses them a drain
            other.goto(f"{stack.url}/fleet")
            seen = other.locator("[data-testid=runners] tr[data-runner]").first
            expect(seen).to_contain_text("idle")
            assert other.get_by_role("button", name="Drain").count() == 0
            assert bob.post(f"/runners/{seen.get_attribute('data-runner')}/drain").status_code == 403
            shots(other, "12b-fleet-non-admin")

            # -- the admin: the fleet, live host charts, drain and resume; users and the audit log ----
            boss = new_user_page(browser)
            password = (stack.state_dir / "secrets" / "admin-password").read_text().strip()
            boss.goto(stack.url + "/fleet")
            boss.fill("input[name=username]", "admin")
            boss.fill("input[name=password]", password)
            boss.click("button[type=submit]")
            runner = boss.locator("[data-testid=runners] tr[data-runner]").first
            expect(runner).to_contain_text("idle")
            boss.wait_for_function("() => [...document.querySelectorAll('[data-testid=host-charts] [data-chart]')]"
                                   ".some(c => Number(c.dataset.points) >= 3)", timeout=60_000)
            runner.get_by_role("button", name="Drain").click()
            expect(runner).to_contain_text("draining")
            runner.get_by_role("button", name="Resume").click()
            expect(runner).to_contain_text("idle")
            shots(boss, "13-fleet")
            boss.click("nav >> text=Admin")
            boss.fill("[data-testid=create-user] input[name=username]", "zed")
            boss.fill("[data-testid=create-user] input[name=password]", "short")
            boss.click("[data-testid=create-user] button[type=submit]")
            expect(boss.locator("[data-testid=create-user] .field-error")).to_contain_text("length >= 8")
            boss.fill("[data-testid=create-user] input[name=password]", PASSWORD)
            boss.click("[data-testid=create-user] button[type=submit]")
            expect(boss.locator('[data-testid=users] tr[data-user="zed"]')).to_be_visible()
            expect(boss.locator("[data-testid=audit]")).to_contain_text("runner.drain")
            shots(boss, "14-admin")
            ok(httpx.post(stack.url + "/api/v1/auth/login", json={"username": "zed", "password": PASSWORD}))
        finally:
            for i, open_page in enumerate(p for c in browser.contexts for p in c.pages):
                shots(open_page, f"zz-last-{i}")  # where each page stood, also when the test failed
            browser.close()
            expect.set_options(timeout=5_000)  # Playwright's default again, for other tests
    for client in (alice, bob, vic, admin):
        client.close()
