"""`GET /api/v1/datasets/{ref}/stats`: a dataset's statistics (`gateway.datasets.stats`), computed once per
dataset version in a worker thread and kept in `dataset_stats` (a dataset version never changes).

Versions: `version` names a frozen version (`gateway.services.curation`); omitted, the latest; a version the
dataset does not have is a 404.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import anyio
import msgspec
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from gateway.auth.caller import Caller
from gateway.datasets.stats import DatasetStats, compute_stats
from gateway.db.models import Dataset, DatasetStatsRow
from gateway.errors import Conflict, NotFound
from gateway.services import curation
from gateway.services.datasets import resolve_dataset
from gateway.state import GatewayState


class DatasetStatsView(DatasetStats, kw_only=True):
    dataset_id: str
    dataset_name: str
    version: int
    computed_at: datetime


async def dataset_stats(gw: GatewayState, ref: str, caller: Caller, version: int | None) -> DatasetStatsView:
    async with gw.sessionmaker() as session:
        row = await resolve_dataset(session, ref, caller, read=True)
        frozen = await curation.dataset_version(session, row, version)
        number = frozen.number
        kept = (await session.execute(select(DatasetStatsRow).where(
            DatasetStatsRow.dataset_id == row.id, DatasetStatsRow.version == number))).scalar_one_or_none()
    if kept is not None:
        return _view(row, number, kept)
    if not row.task:
        raise Conflict(f"dataset {row.name!r} is {row.status}, not ready")
    root, classes, task = Path(frozen.root_path), list(frozen.classes or []), row.task
    stats = await anyio.to_thread.run_sync(lambda: compute_stats(root, classes, task))
    try:
        async with gw.sessionmaker() as session, session.begin():
            await session.execute(insert(DatasetStatsRow).values(
                dataset_id=row.id, version=number, stats=msgspec.to_builtins(stats)).on_conflict_do_nothing())
            kept = (await session.execute(select(DatasetStatsRow).where(
                DatasetStatsRow.dataset_id == row.id, DatasetStatsRow.version == number))).scalar_one()
    except IntegrityError:  # the dataset was deleted meanwhile
        raise NotFound(f"no dataset {ref!r}") from None
    return _view(row, number, kept)


def _view(row: Dataset, version: int, kept: DatasetStatsRow) -> DatasetStatsView:
    return msgspec.convert({**kept.stats, "dataset_id": row.id, "dataset_name": row.name, "version": version,
                            "computed_at": kept.computed_at}, DatasetStatsView, from_attributes=False)
