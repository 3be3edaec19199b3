"""JSON Schemas of the bus messages, generated from these contracts and published in docs/schemas/.

`python -m shared.contracts.schema` (re)writes them; `--check` only says whether the files are current.
tests/unit/test_schemas.py fails when the committed files differ from what this module generates, so they
never go stale. The schemas accept fields they don't list (consumers must ignore unknown fields).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from shared.contracts.commands import Job
from shared.contracts.events import RunEvent, RunnerHeartbeat

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
DOCS_SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"

MESSAGES: dict[str, tuple[Any, str, str]] = {
    "job.v1.json": (Job, "Job", "A job on {p}.jobs.v1.{pool} (docs/events.md, Job)."),
    "run-event.v1.json": (RunEvent, "Run event",
                          "One run event on {p}.events.v1.{project_id}.{run_id}.{type}, tagged by `type` "
                          "(docs/events.md, Events)."),
    "runner-heartbeat.v1.json": (RunnerHeartbeat, "Runner heartbeat",
                                 "A runner's heartbeat on {p}.runners.v1.{runner_id}.heartbeat "
                                 "(docs/events.md, Runner heartbeats and the fleet)."),
}


def schema(message: Any, title: str, description: str) -> dict[str, Any]:
    """One self-contained JSON Schema (2020-12): the message's schema with the definitions it refers to."""
    (root,), definitions = msgspec.json.schema_components([message], ref_template="#/$defs/{name}")
    return {"$schema": SCHEMA_DIALECT, "title": title, "description": description, **root,
            "$defs": definitions}


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated() -> dict[str, str]:
    """File name → the text this module generates for it now."""
    return {name: render(schema(*spec)) for name, spec in MESSAGES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.contracts.schema", description=__doc__)
    parser.add_argument("--out", type=Path, default=DOCS_SCHEMAS, help="folder (default: docs/schemas)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is not current")
    args = parser.parse_args(argv)
    stale = [name for name, text in generated().items()
             if not (args.out / name).is_file() or (args.out / name).read_text() != text]
    if args.check:
        for name in stale:
            print(f"{args.out / name} is not current: run python -m shared.contracts.schema", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in generated().items():
        (args.out / name).write_text(text)
    print(f"wrote {len(MESSAGES)} schemas to {args.out} ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
