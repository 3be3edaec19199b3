"""Helpers of the dataset and weights-library API tests: raw SQL against the test's database."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.settings import Settings


async def sql(settings: Settings, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one statement in its own transaction; its rows, if it returns any."""
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement), params)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        await engine.dispose()


async def insert_run(settings: Settings, run_id: str, status: str, spec: dict[str, Any]) -> None:
    """A run row (in project `p1`, created if needed) as run creation would write it."""
    await sql(settings,
              "insert into projects (id, name, description, objective, task_type, owner, dataset_name, "
              "training_yaml_name, tags, status, runs_started) "
              "values ('p1', 'p', '', '', '', '', '', '', '[]', 'active', 0) on conflict do nothing")
    await sql(settings,
              "insert into runs (id, project_id, kind, pool, status, spec, progress, latest_metrics, "
              "attempt, cancel_requested, gateway_seq, priority) "
              "values (:id, 'p1', :kind, 'cpu', :status, cast(:spec as jsonb), 0, '{}', 0, false, 0, 50)",
              id=run_id, kind=spec.get("kind", "yolo.train"), status=status, spec=json.dumps(spec))
