"""The datasets table: one name per owner (also among datasets without owner), the report as JSONB."""

from pathlib import Path

import msgspec
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from gateway.datasets import prepare_dataset
from gateway.db.models import Dataset
from shared.settings import Settings
from tests.dataset_factories import make_yolo_yaml


async def test_a_prepared_dataset_is_stored_and_names_are_unique_per_owner(settings: Settings, tmp_path: Path) -> None:
    make_yolo_yaml(tmp_path / "ds", 2, 1)
    prepared = prepare_dataset(tmp_path / "ds", tmp_path / "out")
    engine = create_async_engine(settings.database_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        async with sessions() as s:
            s.add(Dataset(id="d1", name="shapes", source="path", format=prepared.format, task=prepared.task,
                          root_path=prepared.root, data_yaml=prepared.data, classes=prepared.classes,
                          stats=msgspec.to_builtins(prepared.report), status="ready"))
            s.add(Dataset(id="d2", name="shapes", owner_id="u1", source="upload"))
            await s.commit()
        async with sessions() as s:
            row = (await s.execute(select(Dataset).where(Dataset.id == "d1"))).scalar_one()
            assert row.stats["splits"]["val"]["images"] == 1 and row.classes == ["cat", "dog", "bird"]
        for owner in (None, "u1"):
            async with sessions() as s:
                s.add(Dataset(id=f"dup{owner}", name="shapes", owner_id=owner, source="path"))
                with pytest.raises(IntegrityError, match="uq_datasets_owner_name"):
                    await s.commit()
    finally:
        await engine.dispose()
