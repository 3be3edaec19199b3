"""A `yolo.*` run request (references) → its bus spec (paths and URIs the runner reads).

`resolve_spec(session, settings, project, request)` is called by `create_run` inside its transaction:
- `config`: the project's saved configuration of that name; its params lie under the request's own fields
  (`extra` is merged key by key);
- `dataset` (id or name of a ready dataset: its latest version; `name:3`: version 3) → `data` (that version's
  data YAML or classification root) + `dataset_id` + `dataset_version`;
- `model`: a built-in name (`yolov8n`, `yolo11s-cls`, `yolov8n.yaml`) passed on as is; `library:<model>`,
  `library:<model>:<version>` or `library:<version id>` → the version's weights URI (options keep
  `model_version_id`); `artifact:<id>` → that run artifact's URI (e.g. an exported ONNX/TorchScript model);
- `architecture` (train) → `model_yaml` of the saved architecture;
- `images` (predict) → `sources`: upload ids (POST /uploads), `dataset:<ref>:<split>:<index>`, or
  `dataset:<ref>:<split>` (a whole split);
- `extra` (train) is checked against the allow-list; `register_as` is kept in the run's options.
Every problem is a 422 whose `errors` name the field (`[{field, message}]`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.access import check_artifact, owned_by, pick
from gateway.auth.caller import Caller
from gateway.datasets import DatasetError
from gateway.datasets.layout import read_index
from gateway.datasets.listing import image_file
from gateway.datasets.scan import SPLITS
from gateway.db.models import Architecture, Artifact, Dataset, DatasetVersion, Project, RunConfig
from gateway.errors import GatewayError, Unprocessable, validation_errors
from gateway.schemas import REQUEST_TYPES, RunRequest
from gateway.services.artifacts import UPLOAD_KIND
from gateway.services.curation import resolve_versioned
from gateway.services.datasets import resolve_dataset
from gateway.services.models import resolve_model_version
from shared import names
from shared.contracts.commands import RunSpecBase
from shared.contracts.yolo import YoloExportSpec, YoloPredictSpec, YoloTrainSpec, YoloValSpec, validate_train_extra
from shared.settings import Settings

BUILTIN_MODEL_RE = re.compile(names.whole(r"[A-Za-z][A-Za-z0-9_-]{0,63}(\.(pt|yaml|yml))?"))
ID_RE = re.compile(names.whole(r"[0-9a-f]{32}"))
MODEL_ARTIFACT_SUFFIXES = (".pt", ".onnx", ".torchscript")
SPLIT_IMAGES_MAX = 1000
"""Most images `dataset:<ref>:<split>` may expand to."""
SPEC_TYPES: dict[str, type[RunSpecBase]] = {
    "yolo.train": YoloTrainSpec, "yolo.val": YoloValSpec, "yolo.export": YoloExportSpec,
    "yolo.predict": YoloPredictSpec,
}
REQUEST_ONLY = frozenset({"dataset", "architecture", "register_as", "config", "images", "pool", "priority"})
TASK_SUFFIXES = {"-cls": "classify", "-seg": "segment", "-pose": "pose", "-obb": "obb"}


@dataclass
class ResolvedRun:
    spec: RunSpecBase
    pool: str
    priority: int
    options: dict[str, Any] = field(default_factory=dict)


def field_errors(exc: msgspec.ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """msgspec's error with the field as REST clients name it (`epochs`, `extra.mosaic`, `images[0]`)."""
    errors = validation_errors(exc)
    for error in errors:
        name = error["field"].removeprefix("$").lstrip(".")
        if not name and (unknown := re.search(r"(?:unknown|missing required) field `([^`]+)`", error["message"])):
            name = unknown.group(1)
        error["field"] = prefix + name if name else (prefix.rstrip(".") or "$")
    return errors


def invalid(name: str, message: str) -> Unprocessable:
    return Unprocessable(f"{name}: {message}", errors=[{"field": name, "message": message}])


def _refer(exc: GatewayError, name: str) -> Unprocessable:
    """A lookup's NotFound/Conflict/BadRequest as a 422 of the field that named it."""
    return invalid(name, exc.detail)


async def resolve_spec(session: AsyncSession, settings: Settings, project: Project, request: RunRequest,
                       caller: Caller) -> ResolvedRun:
    """The spec of a run request: references resolved among what the caller may reach."""
    kind = str(type(request).__struct_config__.tag)
    params = request.params()
    options: dict[str, Any] = {}
    if (config_name := params.pop("config", None)) is not None:
        config = await get_config_row(session, project.id, config_name)
        if config is None:
            raise invalid("config", f"project {project.name!r} has no saved configuration {config_name!r}")
        if config.kind != kind:
            raise invalid("config", f"configuration {config_name!r} is for {config.kind} runs, not {kind}")
        params = merge_params(config.params, params)
        options["config"] = config_name
        params = check_params(kind, params, prefix="")  # a configuration saved long ago: check it again
    pool = params.pop("pool", "cpu")
    priority = params.pop("priority", 50)
    fields = {k: v for k, v in params.items() if k not in REQUEST_ONLY}
    dataset: Dataset | None = None
    model_task: str | None = None

    if (ref := params.get("dataset")) is not None:
        dataset, version = await _dataset(session, ref, caller)
        fields["data"] = version.data_yaml
        if kind != "yolo.export":
            fields["dataset_id"] = dataset.id
            fields["dataset_version"] = version.number
        options["dataset"] = ref
        options["dataset_version"] = version.number
    elif kind in ("yolo.train", "yolo.val"):
        raise invalid("dataset", "required: a registered dataset (id or name)")

    if kind == "yolo.train" and (arch_name := params.get("architecture")) is not None:
        arch = pick((await session.execute(select(Architecture).where(
            Architecture.name == arch_name, owned_by(caller, Architecture.owner_id)))).scalars().all(), arch_name, caller)
        if arch is None:
            raise invalid("architecture", f"no saved architecture {arch_name!r}")
        if "model_yaml" in params:
            raise invalid("architecture", "give either `architecture` or `model_yaml`, not both")
        fields["model_yaml"] = arch.yaml
        fields.setdefault("model", None)
        options["architecture"] = arch_name
        model_task = arch.task
    if kind == "yolo.train" and params.get("model_yaml") is not None:
        fields.setdefault("model", None)
        model_task = _yaml_task(params["model_yaml"])

    model = fields.get("model", "yolov8n" if kind == "yolo.train" else None)
    if model is None and kind != "yolo.train":
        raise invalid("model", "required: " + MODEL_REFERENCES)
    if model is not None:
        fields["model"], task, version_id = await _model(session, model, caller)
        options["model"] = model
        if version_id is not None:
            options["model_version_id"] = version_id
        if fields.get("model_yaml") is None:
            model_task = task
    if dataset is not None and model_task is not None and dataset.task and kind != "yolo.export":
        if model_task != dataset.task:
            raise invalid("dataset", f"dataset {dataset.name!r} is a {dataset.task} dataset; the model is a "
                                     f"{model_task} model")

    if kind == "yolo.train":
        if problems := validate_train_extra(params.get("extra") or {}):
            raise Unprocessable("extra: " + "; ".join(f"{p}: {m}" for p, m in problems),
                                errors=[{"field": p, "message": m} for p, m in problems])
        options["register_as"] = params.get("register_as")
    if kind == "yolo.predict":
        if "images" not in params:
            raise invalid("images", "required: upload ids or dataset images")
        fields["sources"] = await _images(session, params["images"], caller)

    try:
        spec = msgspec.convert(fields, SPEC_TYPES[kind])
    except msgspec.ValidationError as exc:
        raise Unprocessable("the run request is invalid", errors=field_errors(exc)) from None
    return ResolvedRun(spec=spec, pool=pool, priority=priority,
                       options={k: v for k, v in options.items() if v is not None})


def merge_params(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; `extra` dicts merged key by key."""
    merged = {**base, **over}
    if isinstance(base.get("extra"), dict) and isinstance(over.get("extra"), dict):
        merged["extra"] = {**base["extra"], **over["extra"]}
    return merged


def check_params(kind: str, params: dict[str, Any], *, prefix: str) -> dict[str, Any]:
    """`params` checked against the REST request type of `kind` (422 naming the field); returns them as
    JSON values. `prefix` goes before field names in errors (`params.` for a saved configuration)."""
    request_type = REQUEST_TYPES.get(kind)
    if request_type is None or not issubclass(request_type, RunRequest):
        raise invalid(f"{prefix}kind" if prefix else "kind", f"configurations are for the yolo.* kinds, not {kind!r}")
    try:
        request = msgspec.convert({**params, "kind": kind}, request_type)
    except msgspec.ValidationError as exc:
        raise Unprocessable("the parameters are invalid", errors=field_errors(exc, prefix)) from None
    if kind == "yolo.train" and (problems := validate_train_extra(params.get("extra") or {})):
        raise Unprocessable("extra: " + "; ".join(f"{p}: {m}" for p, m in problems),
                            errors=[{"field": prefix + p, "message": m} for p, m in problems])
    return request.params()  # type: ignore[attr-defined]


async def get_config_row(session: AsyncSession, project_id: str, name: str) -> RunConfig | None:
    return (await session.execute(select(RunConfig).where(
        RunConfig.project_id == project_id, RunConfig.name == name))).scalar_one_or_none()


MODEL_REFERENCES = ("a built-in model name (yolov8n, yolo11s-cls), library:<model>[:<version>], "
                    "library:<version id> or artifact:<id>")


async def _dataset(session: AsyncSession, ref: str, caller: Caller) -> tuple[Dataset, DatasetVersion]:
    try:
        return await resolve_versioned(session, ref, caller)
    except GatewayError as exc:
        raise _refer(exc, "dataset") from None


async def _model(session: AsyncSession, ref: str, caller: Caller) -> tuple[str, str | None, str | None]:
    """(spec `model`, task if known, library version id) of a model reference."""
    scheme, sep, rest = ref.partition(":")
    if sep and scheme == "library":
        try:
            version = await resolve_model_version(session, rest, caller)
        except GatewayError as exc:
            raise _refer(exc, "model") from None
        return version.uri, version.task, version.id
    if sep and scheme == "artifact":
        artifact = await session.get(Artifact, rest) if ID_RE.match(rest) else None
        if artifact is not None:
            try:
                await check_artifact(session, caller, artifact, "artifact")
            except GatewayError:
                artifact = None
        if artifact is None or artifact.kind == UPLOAD_KIND:
            raise invalid("model", f"no run artifact {rest!r}")
        if not artifact.name.lower().endswith(MODEL_ARTIFACT_SUFFIXES):
            raise invalid("model", f"artifact {artifact.name!r} is not a model file "
                                   f"({', '.join(MODEL_ARTIFACT_SUFFIXES)})")
        return artifact.uri, None, None
    if sep or not BUILTIN_MODEL_RE.match(ref) or ".." in ref:
        raise invalid("model", f"{ref!r} is not a model reference: {MODEL_REFERENCES}")
    return ref, builtin_task(ref), None


def builtin_task(name: str) -> str:
    """The task of a built-in model name by its suffix (`yolov8n-cls` → classify, `yolo11s` → detect)."""
    stem = Path(name).stem if name.endswith((".pt", ".yaml", ".yml")) else name
    return next((task for suffix, task in TASK_SUFFIXES.items() if stem.endswith(suffix)), "detect")


def _yaml_task(text: str) -> str | None:
    """The task of an inline model YAML, by its head's last module (None when unclear)."""
    import yaml

    try:
        cfg = yaml.safe_load(text)
        module = str(cfg["head"][-1][2])
    except Exception:  # noqa: BLE001 - the runner reports a broken YAML with its line
        return None
    return {"Classify": "classify", "Segment": "segment", "Pose": "pose", "OBB": "obb",
            "Detect": "detect"}.get(module)


async def _images(session: AsyncSession, refs: list[str], caller: Caller) -> list[str]:
    sources: list[str] = []
    for index, ref in enumerate(refs):
        name = f"images[{index}]"
        if ID_RE.match(ref):
            upload = await session.get(Artifact, ref)
            if upload is not None and not (caller.is_admin or upload.owner_id == caller.user_id):
                upload = None
            if upload is None or upload.kind != UPLOAD_KIND:
                raise invalid(name, f"no uploaded image {ref!r} (POST /api/v1/uploads)")
            sources.append(upload.uri)
            continue
        scheme, _, rest = ref.partition(":")
        parts = rest.split(":")
        if scheme != "dataset" or len(parts) not in (2, 3) or not all(parts):
            raise invalid(name, "an upload id, dataset:<ref>:<split>:<index> or dataset:<ref>:<split>")
        try:
            dataset = await resolve_dataset(session, parts[0], caller)
        except GatewayError as exc:
            raise _refer(exc, name) from None
        root = Path(dataset.root_path or "")
        try:
            if len(parts) == 3:
                if not parts[2].isdigit():
                    raise invalid(name, "the image index must be a number")
                path = await anyio.to_thread.run_sync(image_file, root, parts[1], int(parts[2]))
                sources.append(str(path))
            else:
                sources.extend(await anyio.to_thread.run_sync(_split_images, root, parts[1]))
        except DatasetError as exc:
            raise invalid(name, str(exc)) from None
        if len(sources) > SPLIT_IMAGES_MAX:
            raise invalid("images", f"at most {SPLIT_IMAGES_MAX} images per run")
    return sources


def _split_images(root: Path, split: str) -> list[str]:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    entries = read_index(root, split)
    if not entries:
        raise DatasetError(f"split {split!r} has no images")
    return [str(e.path.resolve()) for e in entries[:SPLIT_IMAGES_MAX + 1]]
