"""Which executor runs which `spec.kind`.

`executor_table()` maps a kind to the executor class, named as "module:Class" so that nothing is imported
before a job of that kind arrives (the YOLO executors import torch). A kind whose executor depends on the spec
(container: local or docker backend) maps to a function of the spec returning that name. To add kinds, add
entries to the dict, e.g. `"yolo.train": "runner.executors.yolo:YoloExecutor"`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable

import anyio.to_thread
from nats.js import JetStreamContext

from runner.executors.base import Executor
from shared.contracts import ContainerSpec, RunSpec
from shared.settings import Settings

log = logging.getLogger(__name__)

ExecutorRef = str | Callable[[RunSpec], str]


def spec_kind(spec: RunSpec) -> str:
    """The `kind` tag of a run spec (the tag is not an attribute of the struct)."""
    return str(type(spec).__struct_config__.tag)


def _container_executor(spec: RunSpec) -> str:
    assert isinstance(spec, ContainerSpec)
    return {
        "local": "runner.executors.local:LocalExecutor",
        "docker": "runner.executors.docker:DockerExecutor",
    }[spec.backend]


def executor_table() -> dict[str, ExecutorRef]:
    yolo = "runner.executors.yolo:YoloExecutor"
    return {
        "container": _container_executor,
        "yolo.train": yolo,
        "yolo.val": yolo,
        "yolo.export": yolo,
        "yolo.predict": yolo,
    }


class ExecutorUnavailable(Exception):
    """This runner has no executor for the run (unknown kind, or its module is not installed here)."""


class ExecutorRegistry:
    """Finds, imports (in a worker thread, once) and builds the executor for a run's spec."""

    def __init__(self, settings: Settings, table: dict[str, ExecutorRef] | None = None) -> None:
        self._settings = settings
        self._table = executor_table() if table is None else table
        self._instances: dict[str, Executor] = {}
        self._js: JetStreamContext | None = None
        self._kinds: list[str] | None = None

    def bind_bus(self, js: JetStreamContext) -> None:
        """The runner's JetStream connection, given to executors that keep artifacts in a store on the bus
        (`uses_bus = True`: the YOLO executor with `artifact_store = nats`). Call before the first job."""
        self._js = js

    def kinds(self) -> list[str]:
        """The kinds this runner accepts (those whose executor module, or one of them, is present). Looked up
        once per process (asked for on every job and heartbeat): a module installed later counts after a
        restart."""
        if self._kinds is None:
            self._kinds = sorted(kind for kind, ref in self._table.items() if _any_module_present(ref))
        return list(self._kinds)

    async def aclose(self) -> None:
        """The runner stops: executors that keep something running beside it (`aclose()`) end it."""
        instances, self._instances = list(self._instances.values()), {}
        for executor in instances:
            close = getattr(executor, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # noqa: BLE001 - one executor's failure does not keep the others open
                    log.exception("executor %s did not close", type(executor).__name__)

    async def executor_for(self, spec: RunSpec) -> Executor:
        kind = spec_kind(spec)
        ref = self._table.get(kind)
        if ref is None:
            raise ExecutorUnavailable(f"this runner has no executor for kind {kind!r}")
        name = ref if isinstance(ref, str) else ref(spec)
        if name not in self._instances:
            module_name, _, class_name = name.partition(":")
            try:
                module = await anyio.to_thread.run_sync(importlib.import_module, module_name)
                cls = getattr(module, class_name)
            except Exception as exc:  # noqa: BLE001 - any import failure means: not available on this runner
                log.warning("executor %s unavailable: %r", name, exc)
                raise ExecutorUnavailable(
                    f"executor {name} for kind {kind!r} is not available on this runner: {exc}"
                ) from exc
            bus = {"js": self._js} if getattr(cls, "uses_bus", False) else {}
            self._instances[name] = cls(self._settings, **bus)
        return self._instances[name]


def _any_module_present(ref: ExecutorRef) -> bool:
    if not isinstance(ref, str):
        return True  # chosen per spec; reported as available, a missing backend fails the run clearly
    try:
        return importlib.util.find_spec(ref.partition(":")[0]) is not None
    except (ImportError, ValueError):
        return False
