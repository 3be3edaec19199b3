"""Uploaded images go away: their uploader (or an admin) deletes them, and the gateway sweeps those older than
`upload_ttl_h` — never one that a queued or running run still reads."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient
from PIL import Image
from sqlalchemy import update

from gateway.db.models import Artifact
from shared.artifacts import LocalArtifactStore
from shared.contracts.common import utcnow
from shared.settings import Settings
from tests.auth_support import bearer, create_user
from tests.integration.rest_helpers import api, database, in_app, new_project, problem, start_run


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _upload(client: AsyncTestClient, **headers: str) -> dict[str, Any]:
    response = await client.post("/api/v1/uploads", files={"file": ("photo.png", _png(), "image/png")},
                                 headers=headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def _predict(client: AsyncTestClient, upload: dict[str, Any]) -> dict[str, Any]:
    """A predict run reading the upload; no runner is online, so it stays queued."""
    run = await start_run(client, "vision", {"kind": "yolo.predict", "model": "yolov8n", "images": [upload["id"]]})
    assert run.status_code == 201, run.text
    return run.json()  # type: ignore[no-any-return]


def _file(settings: Settings, upload: dict[str, Any]) -> Path:
    return LocalArtifactStore(settings.artifacts_dir).path_of(upload["uri"])


async def _age(settings: Settings, *uploads: dict[str, Any], hours: float) -> None:
    async with database(settings) as sessions, sessions() as session, session.begin():
        await session.execute(update(Artifact).where(Artifact.id.in_([u["id"] for u in uploads]))
                              .values(created_at=utcnow() - timedelta(hours=hours)))


async def test_an_upload_is_deleted_by_its_uploader_but_not_while_a_queued_run_reads_it(settings: Settings) -> None:
    async with api(settings) as client:
        await new_project(client, "vision")
        upload = await _upload(client)
        path = _file(settings, upload)
        assert path.is_file()
        run = await _predict(client, upload)

        outsider = bearer(await create_user(client, "olaf"))
        assert problem(await client.delete(f"/api/v1/uploads/{upload['id']}", headers=outsider), 404)["code"] == \
            problem(await client.delete("/api/v1/uploads/0123456789abcdef0123456789abcdef"), 404)["code"]
        problem(await client.delete(f"/api/v1/uploads/{run['id']}"), 404)  # not an upload
        problem(await client.delete(f"/api/v1/uploads/{upload['id']}"), 409)  # the queued run reads it
        assert path.is_file()
        unread = await _upload(client)  # while another upload is read, this one goes at once
        assert (await client.delete(f"/api/v1/uploads/{unread['id']}")).status_code == 204

        assert (await client.post(f"/api/v1/runs/{run['id']}/cancel")).json()["status"] == "canceled"
        assert (await client.delete(f"/api/v1/uploads/{upload['id']}")).status_code == 204
        assert not path.exists() and not path.parent.exists()
        problem(await client.get(f"/api/v1/artifacts/{upload['id']}"), 404)
        problem(await client.delete(f"/api/v1/uploads/{upload['id']}"), 404)

        mine = await _upload(client, **outsider)  # a user deletes their own
        assert (await client.delete(f"/api/v1/uploads/{mine['id']}", headers=outsider)).status_code == 204
        audit = (await client.get("/api/v1/audit", params={"action": "upload.delete"})).json()["items"]
        deleted = {(e["actor"], e["resource_id"]) for e in audit}
        assert deleted == {("admin", upload["id"]), ("admin", unread["id"]), ("olaf", mine["id"])}


async def test_the_sweep_deletes_old_uploads_that_no_active_run_reads(settings: Settings) -> None:
    async with api(msgspec.structs.replace(settings, upload_ttl_h=24.0)) as client:
        await new_project(client, "vision")
        read, old, recent = await _upload(client), await _upload(client), await _upload(client)
        run = await _predict(client, read)
        await _age(settings, read, old, hours=25)
        sweeper = client.app.state.gw.sweeper

        assert in_app(client, sweeper.sweep)["uploads"] == 1
        assert not _file(settings, old).exists() and _file(settings, read).exists() and _file(settings, recent).exists()
        problem(await client.get(f"/api/v1/artifacts/{old['id']}"), 404)
        assert (await client.get(f"/api/v1/artifacts/{read['id']}")).status_code == 200

        await client.post(f"/api/v1/runs/{run['id']}/cancel")  # once its run has ended, it goes too
        assert in_app(client, sweeper.sweep)["uploads"] == 1
        assert not _file(settings, read).exists() and _file(settings, recent).exists()
