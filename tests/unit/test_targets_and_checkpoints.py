import os
from pathlib import Path

import pytest

from runner.checkpoints_watch import CheckpointWatcher, keep_artifact
from runner.targets import TargetsError, load_targets, parse_targets

EXAMPLE = """
[targets.llama]
container = "llama-factory"
workdir = "/app"
host_root = "/srv/llm"
container_root = "/data"
output_dir = "outputs/{run_id}"
env = { HF_HOME = "/data/hf" }
metric_patterns = ['eval accuracy: (?P<eval_acc>[0-9.]+)']

[targets.axolotl]
container = "axolotl"
workdir = "/workspace"
host_root = "/srv/axolotl"
"""


def test_targets_file_is_read_by_name(tmp_path: Path):
    path = tmp_path / "targets.toml"
    path.write_text(EXAMPLE)
    targets = load_targets(path)
    llama = targets.get("llama")
    assert (llama.name, llama.container, llama.workdir, llama.host_root) == ("llama", "llama-factory", "/app", Path("/srv/llm"))
    assert llama.env == {"HF_HOME": "/data/hf"}
    assert llama.patterns[0].groupindex == {"eval_acc": 1}
    assert targets.get("axolotl").mount_root == "/srv/axolotl"
    with pytest.raises(KeyError, match="unknown container target 'nope' \\(this runner knows: axolotl, llama\\)"):
        targets.get("nope")


def test_no_targets_file_means_no_targets():
    with pytest.raises(KeyError, match="none configured"):
        load_targets(None).get("llama")


def test_host_paths_map_into_the_container_root():
    llama = parse_targets({"targets": {"t": {"container": "c", "workdir": "/app", "host_root": "/srv/llm", "container_root": "/data"}}}).get("t")
    assert llama.to_container(Path("/srv/llm/outputs/r1/checkpoint-5")) == "/data/outputs/r1/checkpoint-5"
    assert llama.to_container("/srv/llm") == "/data"
    assert llama.to_container("/elsewhere/x") == "/elsewhere/x"


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"workdir": "app"}, "workdir must be an absolute path"),
        ({"host_root": "srv"}, "host_root must be an absolute path"),
        ({"metric_patterns": ["loss (\\d+)"]}, "no named group"),
        ({"metric_patterns": ["(?P<x>"]}, "metric pattern"),
        ({"container": "--privileged"}, "container must be"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_targets_are_refused_with_a_reason(override: dict, error: str):
    raw = {"container": "c", "workdir": "/app", "host_root": "/srv", **override}
    with pytest.raises(TargetsError, match=error):
        parse_targets({"targets": {"t": raw}})


def test_invalid_toml_is_refused(tmp_path: Path):
    path = tmp_path / "t.toml"
    path.write_text("[targets.x\n")
    with pytest.raises(TargetsError, match="not valid TOML"):
        load_targets(path)


def _checkpoint(root: Path, step: int, size: int = 10) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(b"x" * size)
    return folder


async def test_checkpoint_is_reported_once_when_complete(tmp_path: Path):
    watcher = CheckpointWatcher(tmp_path / "out", known=["checkpoint-1"])
    assert await watcher.poll() == []  # no folder yet
    _checkpoint(tmp_path / "out", 1)
    _checkpoint(tmp_path / "out", 10)
    assert await watcher.poll() == []  # first sight: maybe still being written
    (tmp_path / "out" / "checkpoint-10" / "more.bin").write_bytes(b"y" * 5)
    assert await watcher.poll() == []  # changed since: still being written
    [found] = await watcher.poll()  # unchanged: complete
    assert (found.step, found.size_bytes, found.path.name) == (10, 15, "checkpoint-10")
    assert await watcher.poll() == []


async def test_older_checkpoint_is_complete_once_a_newer_one_appears_and_final_scan_takes_all(tmp_path: Path):
    watcher = CheckpointWatcher(tmp_path)
    _checkpoint(tmp_path, 5)
    _checkpoint(tmp_path, 20)
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-30").write_text("a file, not a folder")
    assert [f.step for f in await watcher.poll()] == [5]
    assert [f.step for f in await watcher.poll(final=True)] == [20]


def test_artifact_copy_honours_the_size_limit(tmp_path: Path):
    source = tmp_path / "events.out.tfevents.1"
    source.write_bytes(b"z" * 100)
    by_path = keep_artifact(source, name="tb", copy_to=None, max_bytes=10)
    assert by_path is not None and (by_path.uri, by_path.copied) == (str(source), False)
    too_big = keep_artifact(source, name="tb", copy_to=tmp_path / "store", max_bytes=10)
    assert too_big is not None and not too_big.copied and "over the limit" in (too_big.note or "")
    copied = keep_artifact(source, name="runs/tb", copy_to=tmp_path / "store", max_bytes=1000)
    assert copied is not None and copied.copied and copied.uri == str(tmp_path / "store" / "runs" / "tb")
    assert os.path.getsize(copied.uri) == 100
    assert keep_artifact(tmp_path / "gone", name="x", copy_to=None, max_bytes=1) is None
