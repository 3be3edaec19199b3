"""`trainforge runs watch`: live progress bars (epoch and batch, losses, ETA) and log lines from a run's SSE
stream. Returns the exit status for the shell: 0 completed, 1 failed, 2 canceled."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from trainforge.api_client import ApiClient

EXIT_CODES = {"run.completed": 0, "run.failed": 1, "run.canceled": 2}
HEADLINE_METRICS = ("metrics/mAP50(B)", "metrics/mAP50-95(B)", "metrics/precision(B)", "metrics/recall(B)",
                    "metrics/accuracy_top1", "val/loss", "loss", "eval_loss")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class RunView:
    """Turns run events into progress bars and printed lines."""

    def __init__(self, progress: Progress, console: Console) -> None:
        self.progress = progress
        self.console = console
        self.epoch_task: TaskID | None = None
        self.batch_task: TaskID | None = None
        self.step_task: TaskID | None = None

    def handle(self, kind: str, event: dict[str, Any]) -> None:
        handler = getattr(self, "on_" + kind.replace(".", "_"), None)
        if handler is not None:
            handler(event)

    def on_run_queued(self, e: dict[str, Any]) -> None:
        self.console.print(f"[bold]{e['run_id']}[/] queued ({e.get('kind')}, pool {e.get('pool')})")

    def on_run_claimed(self, e: dict[str, Any]) -> None:
        self.console.print(f"claimed by {e['runner_id']} (attempt {e['attempt']}, {e.get('device') or 'cpu'})")

    def on_run_started(self, e: dict[str, Any]) -> None:
        resumed = f", resumed from checkpoint {e['resumed_from']}" if e.get("resumed_from") else ""
        self.console.print(f"started{resumed}")

    def on_run_log(self, e: dict[str, Any]) -> None:
        for line in e.get("lines", []):
            style = "dim" if line["stream"] == "system" else ("yellow" if line["stream"] == "stderr" else "")
            self.console.print(line["text"], style=style, markup=False, highlight=False)

    def on_run_progress(self, e: dict[str, Any]) -> None:
        if e.get("epochs"):
            if self.epoch_task is None:
                self.epoch_task = self.progress.add_task("epoch", total=e["epochs"])
            self.progress.update(self.epoch_task, total=e["epochs"], completed=max(0, (e.get("epoch") or 1) - 1))
        if e.get("batches"):
            losses = "  ".join(f"{k}={_fmt(v)}" for k, v in (e.get("losses") or {}).items())
            if self.batch_task is None:
                self.batch_task = self.progress.add_task("batch", total=e["batches"])
            self.progress.update(self.batch_task, total=e["batches"], completed=e.get("batch") or 0,
                                 description=f"batch {losses}".strip())
        elif e.get("total"):
            if self.step_task is None:
                self.step_task = self.progress.add_task("step", total=e["total"])
            self.progress.update(self.step_task, total=e["total"], completed=e.get("step") or 0)

    def on_run_metrics(self, e: dict[str, Any]) -> None:
        metrics = e.get("metrics") or {}
        shown = {k: v for k, v in metrics.items() if k in HEADLINE_METRICS} or dict(list(metrics.items())[:6])
        where = f"epoch {e['epoch']}" if e.get("epoch") is not None else f"step {e.get('step')}"
        self.console.print(f"[cyan]{where}[/]  " + "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
        if self.epoch_task is not None and e.get("epoch") is not None:
            self.progress.update(self.epoch_task, completed=e["epoch"])

    def on_run_checkpoint(self, e: dict[str, Any]) -> None:
        where = f"epoch {e['epoch']}" if e.get("epoch") is not None else f"step {e.get('step')}"
        self.console.print(f"[dim]checkpoint {e['checkpoint_id']} ({where})[/]")

    def on_run_artifact(self, e: dict[str, Any]) -> None:
        self.console.print(f"[dim]artifact {e['name']} ({e.get('size_bytes') or '?'} bytes)[/]")

    def on_run_paused(self, e: dict[str, Any]) -> None:
        by = f" by {e['requested_by']}" if e.get("requested_by") else ""
        self.console.print(f"[bold magenta]paused[/]{by} (trainforge runs unpause {e['run_id']})")

    def on_run_unpaused(self, e: dict[str, Any]) -> None:
        after = f" after {e['paused_s']:.0f} s" if e.get("paused_s") is not None else ""
        self.console.print(f"[magenta]unpaused[/]{after}")

    def on_run_completed(self, e: dict[str, Any]) -> None:
        self.console.print(f"[bold green]completed[/] (exit code {e.get('exit_code')})")

    def on_run_failed(self, e: dict[str, Any]) -> None:
        self.console.print(f"[bold red]failed[/] ({e['cause']}): {e['error_type']}: {e['message']}")

    def on_run_canceled(self, e: dict[str, Any]) -> None:
        checkpoint = f", checkpoint {e['checkpoint_id']}" if e.get("checkpoint_id") else ""
        self.console.print(f"[bold yellow]canceled[/] ({e.get('reason')}{checkpoint})")


def watch(client: ApiClient, run_id: str, console: Console | None = None) -> int:
    console = console or Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        view = RunView(progress, console)
        for event in client.follow(f"/runs/{run_id}/events"):
            if not event.event or not event.data:
                continue
            view.handle(event.event, json.loads(event.data))
            if event.event in EXIT_CODES:
                return EXIT_CODES[event.event]
    return 1
