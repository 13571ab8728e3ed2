"""What the UI's stack tests (tests/ui) share besides fixtures: the development key of their
gateways, the models of the two-model gateway and the scripted reasoning answer, the UI factory type."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

DEV_KEY = "ui-test-dev-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
# Answers are kept short: the tests check the streaming, the sources and the grounding, and a
# 135M model's prose is no better for being longer.
MAX_TOKENS = 24

# The two models of the second gateway (``two_models``).
LOCAL = "smollm2-135m-instruct"  # the llama.cpp model, the default (and the first gateway's only one)
REASONER = "deepseek-r1"
REASONING = (
    "The user wants the gateway's port. The getting-started guide lists the services with their "
    "ports; the gateway is the one on 8000, so that is the answer, with its source."
)
REASONED_ANSWER = "The gateway listens on port 8000 [1]."

UiFactory = Callable[..., AbstractContextManager[str]]
