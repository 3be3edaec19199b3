"""Container targets: the training containers a runner may `docker exec` into, named in a TOML file.

The file (setting `runner_targets_file`) has one table per target under `targets`:

    [targets.llama]
    container = "llama-factory"          # docker container name or id
    workdir = "/app"                     # working directory inside the container
    host_root = "/srv/llm"               # on the host: datasets and training YAMLs live here
    container_root = "/data"             # where host_root is mounted in the container (default: same path)
    output_dir = "outputs/{run_id}"      # host side, relative to host_root; checkpoint-* folders appear here

Runs name a target; a name the runner does not know is refused. Everything here is operator input and
trusted; client input (run specs) never reaches a host shell.
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from pathlib import Path, PurePosixPath

import msgspec

from shared import names

TARGET_NAME_RE = names.SHORT_NAME_RE


class TargetsError(ValueError):
    """The targets file cannot be used."""


class ContainerTarget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = ""
    """Filled from the table name."""
    container: str
    workdir: str
    """Absolute working directory inside the container; a run's `workdir` is taken relative to it."""
    host_root: Path
    """Host folder of the datasets and training YAMLs (and usually the outputs); mounted in the container."""
    container_root: str | None = None
    """Where `host_root` is mounted inside the container. Unset: the same path as on the host."""
    output_dir: str | None = None
    """Host folder where the command writes `checkpoint-*` folders: absolute, or relative to `host_root`;
    `{run_id}` is replaced by the run id. Unset: no checkpoint watching."""
    run_dir: str = "/tmp/trainforge"
    """Folder inside the container for each attempt's log, pid and exit files."""
    env: dict[str, str] = {}
    """Extra environment for the command (the run's own `env` wins)."""
    metric_patterns: list[str] = []
    """Extra regular expressions for metrics in the log; each named group is a metric, e.g.
    `eval accuracy: (?P<eval_acc>[0-9.]+)`."""
    docker: str = "docker"
    """The docker executable (name on PATH or absolute path)."""
    copy_artifacts: bool = False
    """Copy TensorBoard event files and the training YAML into the runner's artifact store (else: by path)."""
    artifact_max_bytes: int = 64 * 1024 * 1024
    """Files larger than this are recorded by path only, even when copying."""
    poll_s: float = 2.0
    """How often the output folder is scanned for new checkpoints."""
    gpu_sample_s: float = 5.0
    """How often GPU use is sampled (NVML) while a run is going."""

    @property
    def mount_root(self) -> str:
        return self.container_root or self.host_root.as_posix()

    @property
    def patterns(self) -> list[re.Pattern[str]]:
        return [re.compile(p) for p in self.metric_patterns]

    def host_output_dir(self, run_id: str) -> Path | None:
        if self.output_dir is None:
            return None
        return self.host_root / self.output_dir.replace("{run_id}", run_id)

    def to_container(self, host_path: Path | str) -> str:
        """The path inside the container of a host path under `host_root` (other paths are passed as they are,
        for folders mounted at the same path)."""
        path = Path(host_path)
        try:
            rel = path.relative_to(self.host_root)
        except ValueError:
            return path.as_posix()
        return posixpath.join(self.mount_root, rel.as_posix()) if rel.parts else self.mount_root


class Targets(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    targets: dict[str, ContainerTarget] = {}

    def get(self, name: str | None) -> ContainerTarget:
        """The target called `name`; raises `KeyError` with a message naming it and the known ones."""
        if name is not None and name in self.targets:
            return self.targets[name]
        known = ", ".join(sorted(self.targets)) or "none configured"
        raise KeyError(f"unknown container target {name!r} (this runner knows: {known})")


def load_targets(path: Path | None) -> Targets:
    """Read and check a targets file; no file configured → no targets."""
    if path is None:
        return Targets()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TargetsError(f"cannot read targets file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TargetsError(f"targets file {path} is not valid TOML: {exc}") from exc
    return parse_targets(raw, source=str(path))


def parse_targets(raw: dict, *, source: str = "targets") -> Targets:
    try:
        targets = msgspec.convert(raw, Targets, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise TargetsError(f"{source}: {exc}") from exc
    named = {}
    for name, target in targets.targets.items():
        where = f"{source}: target {name!r}"
        if not TARGET_NAME_RE.match(name):
            raise TargetsError(f"{where}: names are letters, digits, '.', '-' and '_'")
        if not target.container or target.container.startswith("-"):
            raise TargetsError(f"{where}: container must be a container name or id")
        for field, value in (("workdir", target.workdir), ("run_dir", target.run_dir)):
            if not PurePosixPath(value).is_absolute():
                raise TargetsError(f"{where}: {field} must be an absolute path inside the container")
        if target.container_root is not None and not PurePosixPath(target.container_root).is_absolute():
            raise TargetsError(f"{where}: container_root must be an absolute path inside the container")
        if not target.host_root.is_absolute():
            raise TargetsError(f"{where}: host_root must be an absolute path")
        for pattern in target.metric_patterns:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise TargetsError(f"{where}: metric pattern {pattern!r}: {exc}") from exc
            if not compiled.groupindex:
                raise TargetsError(f"{where}: metric pattern {pattern!r} has no named group (?P<name>...)")
        named[name] = msgspec.structs.replace(target, name=name)
    return Targets(targets=named)


def _dec_hook(tp: type, obj: object) -> object:
    if tp is Path and isinstance(obj, str):
        return Path(obj).expanduser()
    raise NotImplementedError
