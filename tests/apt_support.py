"""Debian packages the tests need (Chromium, a Docker engine, jq), installed with apt when missing.

CI runs on a clean clone as root: what a test needs beyond Python, it installs itself. `apt_install` never
starts a package's services (a `policy-rc.d` that says no, for docker.io) and waits for a dpkg lock another
test process holds. Where that is impossible (not root, no apt) it raises `AptUnavailable` saying why, and the
caller skips."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class AptUnavailable(Exception):
    """The packages are missing and cannot be installed here."""


def apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise AptUnavailable(f"{', '.join(packages)} missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends", *packages]
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:  # the package lists may be missing or stale
            subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update"], env=env, capture_output=True,
                           text=True, timeout=900)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise AptUnavailable(f"{' '.join(install)} failed: {done.stderr[-500:]}")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)


def ensure_binary(binary: str, package: str) -> str:
    """The path of `binary`, installing `package` when it is missing."""
    if (found := shutil.which(binary)) is None:
        apt_install([package])
        found = shutil.which(binary)
    if found is None:
        raise AptUnavailable(f"{package} installed, but {binary} is still not on PATH")
    return found
