"""/api/v1/fleet/datasets/{sha256}: a dataset's content-addressed archive, for runners on other hosts.

Authenticated with a runner credential (`gateway.dataset_archives.check_runner`), not a user's token: the path
is outside the user authentication (`PUBLIC_PATHS`) and the handler checks the credential itself."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.params import FromPath
from litestar.response import File

from gateway.dataset_archives import check_runner, served_archive
from gateway.routeopts import ERRORS_OPT, MEDIA_TYPE_OPT
from gateway.state import Gateway

ARCHIVE_MEDIA_TYPE = "application/x-tar"


class FleetDatasetsController(Controller):
    path = "/fleet/datasets"
    tags = ["fleet"]

    @get("/{sha256:str}", summary="A dataset archive by its content hash (runner credential)",
         opt={ERRORS_OPT: {401, 404}, MEDIA_TYPE_OPT: ARCHIVE_MEDIA_TYPE},
         description="The tar a run's `dataset_sha256` names (docs/fleet.md, \"Datasets\"). Send `Authorization: "
                     "Bearer <runner credential>`: the runner's own, from `trainforge secrets init` "
                     "(runner/gateway-token); user tokens are not accepted here.")
    async def archive(self, gw: Gateway, request: Request[Any, Any, Any], sha256: FromPath[str]) -> File:
        check_runner(gw.settings, request.headers.get("authorization"))
        path = served_archive(gw.settings, sha256)
        return File(path=path, filename=path.name, media_type=ARCHIVE_MEDIA_TYPE)
