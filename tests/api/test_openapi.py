"""Property-based API tests: every operation of every service's OpenAPI schema, fed generated
requests (valid ones, and invalid ones) against the real services, must never answer 5xx, and must
answer with a status code, a content type and a body that its schema declares.

Schemathesis generates the requests from each service's own /openapi.json and runs its checks on
the answers. Its pytest integration (``schemathesis.pytest.from_fixture``) does not run under
pytest 9 (it sets the private ``Node._nodeid``), so each operation's strategy is driven here with
Hypothesis directly: the same generation and the same checks.

Bounded for CI: MAX_EXAMPLES valid and MAX_EXAMPLES invalid requests per operation, derandomized
(the same requests on every run), no shrinking (the first failing request is reported as it was
sent), no Hypothesis deadline (a real model on a shared machine), no example database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import DEV_KEY

# Per operation and generation mode; OMNIRAG_API_EXAMPLES=100 for a deeper run by hand.
MAX_EXAMPLES = int(os.environ.get("OMNIRAG_API_EXAMPLES", "8"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)

# (service, "METHOD /path") → why it is not fuzzed. Only defects in code this suite does not fix
# belong here, each named precisely; remove the entry with the fix.
SKIP: dict[tuple[str, str], str] = {}


def load(base_url: str) -> Any:
    spec = httpx.get(base_url + "/openapi.json", timeout=30).json()
    config = SchemathesisConfig.from_dict({"base-url": base_url, "request-timeout": 120})
    return schemathesis.openapi.from_dict(spec, config=config)


def operations(schema: Any) -> Iterator[Any]:
    for result in schema.get_all_operations():
        yield result.ok()  # an operation the schema cannot describe raises here, failing the test


def fuzz(operation: Any, base_url: str, headers: dict[str, str]) -> list[str]:
    """The failures of one operation: the first failing request of each generation mode."""
    failures: list[str] = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @HYPOTHESIS
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(base_url=base_url, headers=headers)
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:
            pass  # no invalid request exists (an operation without parameters or body)
        except (Exception, BaseExceptionGroup) as exc:  # every failure is reported, with its request
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


def check_service(service: str, base_url: str, headers: dict[str, str] | None = None) -> None:
    schema = load(base_url)
    failures: list[str] = []
    seen = 0
    for operation in operations(schema):
        if (service, operation.label) in SKIP:
            continue
        seen += 1
        failures += fuzz(operation, base_url, headers or {})
    assert seen, f"{service}: no operation in its schema"
    assert not failures, "\n\n".join(failures)


def test_embedder_api(embedder_url):
    check_service("embedder", embedder_url)


def test_retriever_api(retriever_url):
    check_service("retriever", retriever_url)


def test_gateway_api(gateway_url):
    check_service("gateway", gateway_url, {"Authorization": f"Bearer {DEV_KEY}"})


def test_ui_api(ui_url):
    """The UI's own JSON routes (its page and Gradio's API are not in its OpenAPI schema)."""
    check_service("ui", ui_url)
