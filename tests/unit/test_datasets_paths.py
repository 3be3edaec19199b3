import os
from pathlib import Path

import pytest

from gateway.datasets.errors import PathNotAllowed
from gateway.datasets.paths import confine


def test_a_folder_inside_a_root_is_returned_resolved(tmp_path: Path) -> None:
    (tmp_path / "root" / "ds").mkdir(parents=True)
    assert confine(tmp_path / "root" / "ds" / ".", [tmp_path / "root"]) == (tmp_path / "root" / "ds").resolve()


def test_paths_outside_the_roots_are_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "other").mkdir()
    with pytest.raises(PathNotAllowed, match="not inside a configured data root"):
        confine(tmp_path / "other", [tmp_path / "root"])
    with pytest.raises(PathNotAllowed, match="not inside"):
        confine(f"{tmp_path}/root/../other", [tmp_path / "root"])


def test_a_symlink_inside_a_root_that_leads_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", tmp_path / "root" / "link")
    with pytest.raises(PathNotAllowed, match="not inside"):
        confine(tmp_path / "root" / "link", [tmp_path / "root"])


def test_relative_missing_and_unconfigured_paths_are_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    with pytest.raises(PathNotAllowed, match="absolute"):
        confine("root/ds", [tmp_path / "root"])
    with pytest.raises(PathNotAllowed, match="not an existing folder"):
        confine(tmp_path / "root" / "missing", [tmp_path / "root"])
    with pytest.raises(PathNotAllowed, match="disabled"):
        confine(tmp_path / "root", [])
