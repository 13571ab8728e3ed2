"""The page's handlers name the components they update, and those are their events' outputs.

Every event the page registers is run, its handler driven through its paths against two gateways:
one that is down, and one that answers every call with an empty JSON body (it drives the handlers
down the paths where a call succeeds; what the gateway answers is tested through the real stack in
test_page.py). Each update must name only components among the event's ``outputs``, Gradio must
accept it as it accepts one in a request, and together a handler's updates must set every output,
so that no output is declared that nothing updates."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from fastapi import FastAPI
from gradio.block_function import BlockFunction
from gradio.components import Component
from omnirag_harness.servers import serve_in_thread
from pydantic import SecretStr

from omnirag.core.metrics import ServiceMetrics
from omnirag.ui.config import UiSettings
from omnirag.ui.conversations import Store
from omnirag.ui.gateway import GatewayClient
from omnirag.ui.metrics import UiMetrics
from omnirag.ui.page import build

DOWN = "http://127.0.0.1:9"
EMPTY: dict[str, Any] = {"current": None, "conversations": [], "meta": {}}
REQUEST = gr.Request(headers={"accept-language": "en"})


@pytest.fixture(scope="module")
def answering() -> Iterator[str]:
    """A gateway stand-in that says yes, with nothing in it, to every call."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def anything(path: str) -> dict[str, Any]:
        return {}

    with serve_in_thread(app, ready_path=None, graceful_seconds=1) as base:
        yield base


def stored() -> dict[str, Any]:
    """A browser's store with one conversation open."""
    store = Store()
    store.start("docs", max_conversations=5)
    return store.dump()


def runs(tmp_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Each handler's inputs (its event's ``inputs``, in order), one tuple a run."""
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nThe quokka committee meets on Thursdays.\n")
    one = stored()
    cid = one["current"]
    rows = [
        {"role": "user", "content": "Which port?", "rateable": False},
        {"role": "assistant", "content": "8000", "rateable": True, "key": "k", "id": "c-1", "index": 1},
    ]
    question = {"text": "Which port does the gateway listen on?", "files": []}
    return {
        "load": [(EMPTY,), (one,)],
        "choose_model": [("omnirag", one)],
        "ask": [
            ({"text": " ", "files": []}, "docs", one, []),
            (question, "docs", one, []),
            (question, None, EMPTY, []),
        ],
        "new_conversation": [(EMPTY, "docs", "omnirag"), (one, "docs", None)],
        "switch": [(cid, one, ["m"]), ("ui-unknown", one, ["m"])],
        "delete": [(EMPTY, "docs", None, None), (one, "docs", "omnirag", ["m"])],
        "upload": [(None, "docs"), ([str(note)], " "), ([str(note)], "docs")],
        "account": [()],
        "list_documents": [("docs",), (None,)],
        "more_documents": [("docs", None)],
        "remove_documents": [([], "docs", None), (["doc-1"], "docs", None)],
        "rate": [
            (gr.LikeData(None, {"index": 1, "value": "8000", "liked": True}), one, rows),
            (gr.LikeData(None, {"index": 0, "value": "Which port?", "liked": False}), one, rows),
        ],
    }


async def updates(fn: Any, args: tuple[Any, ...]) -> list[Any]:
    """Everything ``fn`` gives for one run: its return value, or each value it yields."""
    kwargs = {"request": REQUEST} if "request" in inspect.signature(fn).parameters else {}
    result = fn(*args, **kwargs)
    if inspect.isasyncgen(result):
        return [u async for u in result]
    return [await result]


async def events_updates(url: str, tmp_path: Path) -> list[tuple[str, int, set[int]]]:
    """For each event the page built against the gateway at ``url``: its handler's name, its
    outputs' count, and the places in its outputs that the handler's updates set over its runs."""
    settings = UiSettings(
        gateway_url=url,
        api_key=SecretStr("k"),
        log_json=False,
        ingest_poll_seconds=0.01,
        ingest_wait_seconds=2,
    )
    client = GatewayClient(settings)
    demo, _ = build(settings, client, UiMetrics(ServiceMetrics("ui")))
    events: list[BlockFunction] = [f for f in demo.fns.values() if f.fn is not None]
    inputs = runs(tmp_path)
    # A new handler needs its runs here, or its outputs go unchecked.
    assert {str(f.name) for f in events} == set(inputs)
    found = []
    await client.open()
    try:
        for event in events:
            places = {block._id: i for i, block in enumerate(event.outputs)}
            named: set[int] = set()
            for args in inputs[str(event.name)]:
                for update in await updates(event.fn, args):
                    assert isinstance(update, dict) and update, (event.name, update)
                    assert all(isinstance(block, Component) for block in update), (event.name, update)
                    stray = [type(block).__name__ for block in update if block._id not in places]
                    assert not stray, (event.name, "updates components not among its outputs", stray)
                    named |= {places[block._id] for block in update}
                    # Gradio places the values by the outputs list and post-processes them as in a request.
                    await demo.postprocess_data(event, update, None)
            found.append((str(event.name), len(event.outputs), named))
    finally:
        await client.close()
    return found


# A chooser's update that sets its value alone (its choices stay as listed), or keeps the wanted
# knowledge base when none could be listed, makes Gradio warn; the page shows what it should.
@pytest.mark.filterwarnings("ignore:The value passed into gr.Dropdown:UserWarning")
async def test_every_handler_updates_exactly_its_events_outputs(answering: str, tmp_path: Path) -> None:
    down = await events_updates(DOWN, tmp_path)
    up = await events_updates(answering, tmp_path)
    assert [(name, n) for name, n, _ in down] == [(name, n) for name, n, _ in up]
    for (name, n, when_down), (_, _, when_up) in zip(down, up, strict=True):
        assert when_down | when_up == set(range(n)), (name, set(range(n)) - when_down - when_up)
