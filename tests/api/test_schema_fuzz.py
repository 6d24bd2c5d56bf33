"""Property-based requests from the OpenAPI document (schemathesis) against the real server, with
a domain key: whatever the generated input, no 500, and every answer the document describes
matches its schema. Bounded (a few examples per operation) so CI stays quick.

Schemathesis' own pytest loader (``from_fixture``) does not work with pytest 9, so each operation's
strategy is run with hypothesis directly, in one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from .conftest import Server

FUZZ_DOMAIN = "fuzz"
EXAMPLES = 15  # per operation: ~20 operations, a few hundred requests in all


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


def test_generated_requests_never_fail_the_server(server: Server, fuzz_key: str) -> None:
    schema = schemathesis.openapi.from_url(server.base + "/openapi.json")
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    tried: list[str] = []
    for operation in operations:

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            if "domain" in (case.path_parameters or {}):
                case.path_parameters["domain"] = FUZZ_DOMAIN  # reach the routes, not only the 403
            case.call_and_validate(base_url=server.base, headers=headers, timeout=60,
                                   checks=[not_a_server_error, response_schema_conformance])
            tried.append(case.operation.label)

        run()
    assert len(tried) >= 100
