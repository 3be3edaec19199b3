"""`container` runs with backend `docker`: pick the target, fill in the project's files, and ask a runner of
the pool whether those files are in place (preflight) before the run is queued."""

from __future__ import annotations

import msgspec

from gateway.auth.caller import Caller
from gateway.db.models import Project
from gateway.errors import BadRequest, Forbidden, Unprocessable
from gateway.preflight import preflight
from gateway.state import GatewayState
from shared.contracts import ContainerSpec
from shared.contracts.preflight import PreflightRequest


async def prepare_container_spec(gw: GatewayState, project: Project, spec: ContainerSpec, pool: str,
                                 caller: Caller) -> ContainerSpec:
    """The spec to queue. Backend `local` (a command on a runner's host) only for admins. For backend `docker`: the target (the run's, else the project's), the project's
    dataset and training YAML names unless the run names its own, checked by a runner of `pool`:
    missing files → 400 naming each one. No runner answering in time → queued; the runner checks on claim."""
    if spec.backend == "local" and not caller.is_admin:
        raise Forbidden("backend 'local' runs a command on a runner's host: only admins may use it")
    if spec.backend != "docker":
        return spec
    target = spec.target or project.container_target
    if not target:
        raise Unprocessable(
            "backend 'docker' needs a container target: give `target`, or set the project's `container_target`",
            errors=[{"field": "target", "message": "required for backend 'docker'"}],
        )
    spec = msgspec.structs.replace(
        spec,
        target=target,
        dataset_name=spec.dataset_name or project.dataset_name or None,
        training_yaml_name=spec.training_yaml_name or project.training_yaml_name or None,
    )
    reply = await preflight(
        gw.nc, gw.settings, pool,
        PreflightRequest(target=target, dataset_name=spec.dataset_name, training_yaml_name=spec.training_yaml_name),
        timeout=gw.settings.preflight_timeout_s,
    )
    if reply is not None and not reply.ok:
        errors = [{"field": item.what, "message": f"{item.label} not found"} for item in reply.missing]
        raise BadRequest(reply.message(target), errors=errors or None)
    return spec
