"""Where a YOLO job's inputs are: model references, weights, images and datasets, made local before the job.

A reference is one of:
- an artifact URI (`file://`, `local:`, `nats-os://`): fetched from the artifact store into the run's folder;
- an absolute path on this host, inside one of the runner's roots (state folder, artifacts, pretrained
  weights, work folders) or, for datasets and images, anywhere the gateway resolved it to;
- a model name (`yolov8n`, `yolo11s`, `yolov8n-cls`): `<pretrained_dir>/<name>.pt` if present, else
  Ultralytics' `<name>.yaml` (an untrained model). Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from runner.executors.base import ExecutorError
from shared import names
from shared.artifacts import ArtifactError, ArtifactStore, LocalArtifactStore
from shared.settings import Settings

MODEL_NAME_RE = names.NAME_RE
URI_RE = re.compile(r"^[a-z][a-z0-9+.-]*:")


class InputError(ExecutorError):
    """A model, dataset or image of the spec cannot be found or used."""


@dataclass(frozen=True)
class ModelSource:
    """What to give `YOLO(...)`: a local weights/exported-model file, or a model YAML (path or packaged name)."""

    source: str
    weights: bool
    """True for a weights/exported-model file, False for an architecture YAML (untrained)."""


class InputResolver:
    def __init__(self, settings: Settings, store: ArtifactStore, folder: Path) -> None:
        self.settings = settings
        self.store = store
        self.folder = folder
        roots = [settings.state_dir, settings.artifacts_dir, settings.work_root]
        if settings.pretrained_dir is not None:
            roots.append(settings.pretrained_dir)
        roots.append(folder)
        self.model_roots = [Path(r).resolve() for r in roots]
        self.holds = contextlib.AsyncExitStack()
        """What the job's inputs keep held while it runs (a cached dataset's pin): `async with resolver:`."""

    async def __aenter__(self) -> InputResolver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.holds.aclose()

    async def fetch(self, uri: str, subfolder: str) -> Path:
        """A local copy of an artifact URI (local-store files are used in place)."""
        if isinstance(self.store, LocalArtifactStore) and self.store.owns(uri):
            path = self.store.path_of(uri)
            if not path.is_file():
                raise InputError(f"artifact not found: {uri}")
            return path
        local = LocalArtifactStore(self.settings.artifacts_dir)
        if local.owns(uri):
            return local.path_of(uri)
        if not self.store.owns(uri):
            raise InputError(f"this runner cannot read {uri!r} (artifact store: {self.settings.artifact_store})")
        name = Path(urllib.parse.urlsplit(uri).path).name or "artifact"
        try:
            return await self.store.fetch(uri, self.folder / subfolder / name)
        except ArtifactError as exc:
            raise InputError(f"cannot fetch {uri}: {exc}") from exc

    async def model(self, ref: str) -> ModelSource:
        if URI_RE.match(ref):
            return ModelSource(str(await self.fetch(ref, "inputs")), weights=True)
        if "/" in ref or "\\" in ref:
            path = self._confined(Path(ref), self.model_roots, "model")
            return ModelSource(str(path), weights=path.suffix not in {".yaml", ".yml"})
        return self.model_by_name(ref)

    def model_by_name(self, name: str) -> ModelSource:
        if not MODEL_NAME_RE.match(name) or ".." in name:
            raise InputError(f"invalid model name {name!r}")
        stem, suffix = (name[: -len(Path(name).suffix)], Path(name).suffix) if Path(name).suffix else (name, "")
        if suffix in {".yaml", ".yml"}:
            return ModelSource(name, weights=False)
        if suffix not in {"", ".pt"}:
            raise InputError(f"model {name!r}: give a name (yolov8n), a .pt name, or a path/URI of weights")
        if self.settings.pretrained_dir is not None:
            weights = Path(self.settings.pretrained_dir) / f"{stem}.pt"
            if weights.is_file():
                return ModelSource(str(weights.resolve()), weights=True)
        return ModelSource(f"{stem}.yaml", weights=False)

    async def data(self, ref: str, sha256: str | None = None) -> str:
        """A dataset's `data=` here: with its content hash `sha256`, fetched into this host's dataset cache unless
        `ref` is in this runner's own datasets folder (`runner.datasets`)."""
        if sha256 is not None and not URI_RE.match(ref):
            from runner.datasets import dataset_data

            # pinned in the host's cache until the resolver closes; unreachable sources: infrastructure
            return await self.holds.enter_async_context(dataset_data(self.settings, self.store, ref, sha256))
        if URI_RE.match(ref):
            raise InputError("`data` must be a path on the runner's host (a data.yaml or a classification folder)")
        path = Path(ref)
        if not path.is_absolute():
            raise InputError(f"`data` must be an absolute path, got {ref!r}")
        if not path.exists():  # noqa: ASYNC240
            raise InputError(f"dataset not found on this runner: {ref}")
        return str(path)

    async def image(self, ref: str, index: int) -> Path:
        if URI_RE.match(ref):
            return await self.fetch(ref, f"sources/{index:05d}")
        path = Path(ref)
        if not path.is_absolute() or not path.is_file():  # noqa: ASYNC240
            raise InputError(f"sources[{index}]: not an image file on this runner: {ref}")
        return path

    def _confined(self, path: Path, roots: list[Path], what: str) -> Path:
        if not path.is_absolute():
            raise InputError(f"{what} path must be absolute, got {str(path)!r}")
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in roots):
            raise InputError(f"{what} path {str(path)!r} is outside the runner's folders")
        if not resolved.is_file():
            raise InputError(f"{what} not found on this runner: {path}")
        return resolved
