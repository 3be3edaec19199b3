"""`/api/v1/projects/{ref}/sweeps`: hyperparameter sweeps of yolo.train runs (docs/operations.md, "Sweeps")."""

from __future__ import annotations

from litestar import Controller, get, post

from gateway.auth.caller import Me
from gateway.controllers.common import Limit, Offset, page_limit
from gateway.schemas import SweepCreate, SweepPage, SweepView
from gateway.services import sweeps
from gateway.state import Gateway


class SweepsController(Controller):
    path = "/projects/{ref:str}/sweeps"
    tags = ["sweeps"]

    @post("/", summary="Start a sweep: trial runs of a yolo.train request over a search space", status_code=201,
          description="Project members. Trials are planned at once (grid or random), started as ordinary runs "
                      "of the caller (queue, fair share and limits apply), at most `parallelism` unfinished; the "
                      "best trial by `metric` is named as they complete.")
    async def create(self, gw: Gateway, me: Me, ref: str, data: SweepCreate) -> SweepView:
        return await sweeps.create_sweep(gw, ref, data, me)

    @get("/", summary="A project's sweeps, newest first, with their trials")
    async def index(self, gw: Gateway, me: Me, ref: str, limit: Limit = 50, offset: Offset = 0) -> SweepPage:
        items, total = await sweeps.list_sweeps(gw, ref, me, limit=page_limit(gw, limit), offset=offset)
        return SweepPage(items=items, total=total, limit=limit, offset=offset)

    @get("/{sweep_id:str}", summary="A sweep: its trials with params, run, status and metric; the best one")
    async def read(self, gw: Gateway, me: Me, ref: str, sweep_id: str) -> SweepView:
        return await sweeps.sweep_detail(gw, ref, sweep_id, me)

    @post("/{sweep_id:str}/cancel", summary="Cancel a sweep: no more trials, unfinished ones canceled",
          status_code=200)
    async def cancel(self, gw: Gateway, me: Me, ref: str, sweep_id: str) -> SweepView:
        return await sweeps.cancel_sweep(gw, ref, sweep_id, me)
