"""Schemathesis against the served OpenAPI schema: whatever a client sends that the
schema admits (and much it does not), the server answers without a 5xx, and its
answers match the schema. Runs on the real application, engine and tiny model."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (  # the checks that concern the server itself
    response_schema_conformance,
    status_code_conformance,
)

from support import serving_app

TOKEN = "fuzz-token-0123456789-abcdef"


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir):
    with serving_app(tmp_path_factory.mktemp("fuzzed"), tiny_model_dir, token=TOKEN) as served:
        yield served.app


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {TOKEN}"})


def check_case(case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    assert "Traceback" not in response.text
    content_type = str(response.headers.get("content-type", ""))
    if "application/json" in content_type and response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("error"), str) and "\n" not in body["error"], body
    case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])


@pytest.mark.slow
def test_no_input_makes_the_server_fail(api_schema):
    """Every operation of the schema, each with Hypothesis-generated requests (schemathesis'
    pytest plugin does not run under this pytest, so the operations are driven here)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            check_case(case)

        fuzz()
