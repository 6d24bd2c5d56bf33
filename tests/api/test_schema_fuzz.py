"""Property-based requests from the OpenAPI document (schemathesis) against the real server, with
a domain key: whatever the generated input, no 500, and every answer the document describes
matches its schema. Bounded (a few examples per operation) so CI stays quick."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import response_schema_conformance

from .conftest import Server

FUZZ_DOMAIN = "fuzz"
EXAMPLES = 12  # per operation: ~20 operations, a few hundred requests in all


@pytest.fixture(scope="module")
def fuzz_key(server: Server) -> Iterator[str]:
    server.admin.post("/v1/domains", json={"name": FUZZ_DOMAIN}).raise_for_status()
    key = server.admin.post(f"/v1/domains/{FUZZ_DOMAIN}/keys", json={"name": "fuzz"}).json()["key"]
    # Someone to find: people and metadata for the generated ids and searches to hit.
    for name in ("Ana", "Bo_b", "50% C"):
        server.admin.post(f"/v1/domains/{FUZZ_DOMAIN}/people",
                          json={"name": name, "metadata": {"k": [1, "x"]}}).raise_for_status()
    yield key
    server.admin.delete(f"/v1/domains/{FUZZ_DOMAIN}")


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(server.base + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_never_fail_the_server(case: schemathesis.Case, server: Server,
                                                  fuzz_key: str) -> None:
    if "domain" in (case.path_parameters or {}):
        case.path_parameters["domain"] = FUZZ_DOMAIN  # reach the routes, not only the 403
    from schemathesis.checks import not_a_server_error

    case.call_and_validate(base_url=server.base, headers={"Authorization": f"Bearer {fuzz_key}"},
                           checks=[not_a_server_error, response_schema_conformance], timeout=60)
