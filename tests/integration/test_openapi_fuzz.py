"""Schemathesis over the whole OpenAPI document of a real gateway: a bounded, seeded run of valid and invalid
requests to every operation, signed in as the admin. Whatever a client sends, the answer is never a 5xx, and
the document tells the truth about it: every status code and content type the gateway answers is one the
operation documents (schemathesis' status_code_conformance and content_type_conformance checks; the error
responses come from gateway/apispec.py).

Left out: the Server-Sent Events routes (endless by design) and logout (it would end the session the run
uses; an API token is used for the rest, so a password change does not either).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio.to_thread
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from shared.settings import Settings
from tests.auth_support import login
from tests.integration.rest_helpers import served_gateway

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 8
"""Per operation and generation mode (valid, invalid): about 80 operations, some 1,300 requests in all."""
SKIPPED = ("/events", "/auth/logout")
CONFORMANCE = [status_code_conformance, content_type_conformance]


@pytest.fixture
async def gateway_url(settings: Settings) -> AsyncIterator[str]:
    async with served_gateway(settings) as url:
        yield url


async def test_no_request_to_any_operation_gets_a_server_error(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        raw = (await client.get("/schema/openapi.json")).json()
        access = (await login(client))["access_token"]
        token = (await client.post("/api/v1/tokens", json={"name": "fuzz"},
                                   headers={"Authorization": f"Bearer {access}"})).json()["token"]
    schema = schemathesis.openapi.from_dict(raw)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if not op.path.endswith(SKIPPED)]
    assert len(operations) > 60
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    undocumented: list[str] = []

    def fuzz() -> int:
        calls = 0
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None,
                                     database=None, suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def one(case: schemathesis.Case) -> None:
                    nonlocal calls
                    calls += 1
                    response = case.call(base_url=gateway_url, headers=headers, timeout=30)
                    if response.status_code >= 500:
                        failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                        f"{response.text[:300]}\n  reproduce: {case.as_curl_command()}")
                    try:
                        case.validate_response(response, checks=CONFORMANCE)
                    except (FailureGroup, AssertionError) as exc:
                        undocumented.append(f"{case.method} {case.operation.path} -> {response.status_code} "
                                            f"{response.headers.get('content-type')}: {_first_line(exc)}")

                one()
        return calls

    calls = await anyio.to_thread.run_sync(fuzz)
    assert calls > 500
    assert failures == [], "\n".join(failures[:20])
    distinct = sorted(set(undocumented))
    assert distinct == [], f"{len(distinct)} answers the OpenAPI document does not describe:\n" + "\n".join(distinct[:40])


def _first_line(exc: BaseException) -> str:
    failures = getattr(exc, "exceptions", None) or [exc]
    return "; ".join(str(getattr(f, "title", "") or f).splitlines()[0] for f in failures)


async def test_the_event_streams_answer_what_the_document_says(gateway_url: str) -> None:
    """The streams the fuzzing leaves out (they never end): their answers' statuses and media types are
    documented too."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        document = (await client.get("/schema/openapi.json")).json()
        client.headers["Authorization"] = f"Bearer {(await login(client))['access_token']}"
        assert (await client.post("/api/v1/projects", json={"name": "streams"})).status_code == 201
        for path, template in (("/api/v1/system/resources/events", "/api/v1/system/resources/events"),
                               ("/api/v1/projects/streams/events", "/api/v1/projects/{ref}/events"),
                               ("/api/v1/runs/nosuchrun/events", "/api/v1/runs/{run_id}/events")):
            async with client.stream("GET", path) as response:
                documented = document["paths"][template]["get"]["responses"]
                assert str(response.status_code) in documented, (path, response.status_code)
                media_type = response.headers["content-type"].split(";")[0].strip()
                assert media_type in documented[str(response.status_code)]["content"], (path, media_type)
