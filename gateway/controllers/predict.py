"""`POST /api/v1/models/{ref}/predict`: one image through a library model, answered synchronously."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.background_tasks import BackgroundTask

from gateway.auth.caller import Me
from gateway.controllers.artifacts import read_image_form
from gateway.errors import Unprocessable, validation_errors
from gateway.services import predict as service
from gateway.services.predict import PredictOptions, PredictResponse
from gateway.state import Gateway

DESCRIPTION = """\
`multipart/form-data` with `file` (an image, at most `max_image_upload_mb`) and optional `conf`, `iou`,
`imgsz`, `max_det`, `version` (default: the model's latest), `project` (default `predict`, created on first
use), `pool`, `save` (keep the annotated image). Runs a `yolo.predict` job and waits for it (at most
`predict_timeout_s`: then 504 with the run id; the run goes on). A failed prediction is a 422 (the model or
image) or 503 (the platform)."""

FIELDS = frozenset(PredictOptions.__struct_fields__)


class PredictController(Controller):
    path = "/models"
    tags = ["models"]

    @post("/{ref:str}/predict", status_code=200, request_max_body_size=None, summary="Predict one image",
          description=DESCRIPTION)
    async def predict(self, gw: Gateway, me: Me, request: Request[Any, Any, Any], ref: str
                      ) -> Response[PredictResponse]:
        form = await read_image_form(gw, request, FIELDS)
        try:
            try:
                options = msgspec.convert(form.fields, PredictOptions, strict=False)
            except msgspec.ValidationError as exc:
                raise Unprocessable("the form is invalid", errors=validation_errors(exc)) from None
            prediction = await service.predict(gw, ref, options, form.file, me)
        finally:
            form.discard()
        # what is left to record (the run's row) waits until the answer is sent
        after = BackgroundTask(prediction.after) if prediction.after is not None else None
        return Response(prediction.response, background=after)
