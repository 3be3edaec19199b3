"""The static checks the README's test command runs before the tests: ruff (`[tool.ruff]` in pyproject.toml:
the defaults, import sorting, bugbear and async rules) and mypy (`[tool.mypy]`: gateway, runner, shared,
trainforge). Exits with the first failing check's status.

    .venv/bin/python -m tests.lint
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = (["ruff", "check", "."], ["mypy"])


def main() -> int:
    for check in CHECKS:
        command = [sys.executable, "-m", *check]
        print("$ python -m " + " ".join(check), flush=True)
        status = subprocess.run(command, cwd=ROOT, check=False).returncode
        if status != 0:
            print(f"{check[0]} found problems (exit status {status})", file=sys.stderr, flush=True)
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
