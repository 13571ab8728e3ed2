"""The page: a Gradio Blocks chat over the gateway.

Left, the knowledge base, the model, the conversations (new, switch, delete) and document uploads;
right, the chat, whose answers stream in (a reasoning model's thinking in a collapsed section above
the answer; a badge on an answer quoted from a source or not confirmed by them) with the model that
answered and their sources under them (a quoted sentence marked in its source), and a multimodal box for
text, images (sent as image parts) and documents (uploaded into the knowledge base, then asked
about). Each conversation keeps its own model.

Every handler is async and talks to the gateway through ``GatewayClient``; every gateway failure is
caught and shown as a sentence in the user's language, so the page stays usable.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components import Component

from omnirag.core.names import is_collection_name
from omnirag.ui.config import UiSettings
from omnirag.ui.conversations import Store, compact, title_of
from omnirag.ui.gateway import AUTO_MODEL, Answer, GatewayClient, GatewayError, model_name
from omnirag.ui.login import display_name
from omnirag.ui.metrics import UiMetrics
from omnirag.ui.render import (
    answer_content,
    answer_key,
    error_content,
    error_text,
    escape,
    model_label,
    sources_html,
)
from omnirag.ui.texts import I18N_PREFIX, i18n_tables, lang_of, t

log = logging.getLogger("omnirag.ui")

Row = dict[str, Any]  # one chat message as shown, with what rating it needs
# What a handler changes, by component: Gradio places each value at its component's place in the
# event's outputs and leaves the outputs a handler does not name as they are.
Updates = dict[Component, Any]

CSS = """
#sidebar { gap: 10px; }
.omnirag-meta { margin-top: 10px; font-size: 0.9em; }
.omnirag-sources { border-top: 1px solid var(--border-color-primary); padding-top: 6px; }
.omnirag-sources summary { cursor: pointer; font-weight: 600; }
.omnirag-sources ul { list-style: none; padding-left: 0; margin: 6px 0 0 0; }
.omnirag-source { margin-bottom: 8px; }
.omnirag-n { font-weight: 700; margin-right: 4px; }
.omnirag-score { color: var(--body-text-color-subdued); }
.omnirag-snippet { color: var(--body-text-color-subdued); font-size: 0.92em; }
.omnirag-rewritten { color: var(--body-text-color-subdued); margin-bottom: 6px; }
.omnirag-degraded, .omnirag-error { padding: 6px 10px; border-radius: 6px; margin-bottom: 6px; }
.omnirag-degraded { background: #fff4e5; color: #7a4b00; border: 1px solid #f0c36d; }
.omnirag-error { background: #fdecea; color: #8a1c12; border: 1px solid #f5b7b1; }
#notice:empty { display: none; }
.omnirag-thinking { border-left: 3px solid var(--border-color-primary); padding-left: 8px; margin: 0 0 8px; }
.omnirag-thinking summary { cursor: pointer; color: var(--body-text-color-subdued); font-style: italic; }
.omnirag-thinking-text { color: var(--body-text-color-subdued); font-size: 0.92em; margin-top: 4px; }
.omnirag-model { color: var(--body-text-color-subdued); margin-bottom: 6px; }
.omnirag-badge { display: inline-block; padding: 3px 10px; border-radius: 12px; margin-bottom: 6px; }
.omnirag-extracted { background: #e8f1fb; color: #1f4e79; border: 1px solid #a9c8ea; }
.omnirag-fallback, .omnirag-ungrounded { background: #fff4e5; color: #7a4b00; border: 1px solid #f0c36d; }
.omnirag-reason { opacity: 0.8; }
mark.omnirag-quote { background: #fff3a3; color: inherit; padding: 0 2px; border-radius: 2px; }
"""


def _lang(request: gr.Request | None) -> str:
    headers = getattr(request, "headers", None) or {}
    return lang_of(dict(headers).get("accept-language"))


def _user(request: gr.Request | None) -> str | None:
    """The logged-in user (omnirag.ui.login hands it to Gradio); None when the UI has no login."""
    return getattr(request, "username", None) or None


def _when(value: Any) -> str:
    """An ``indexed_at`` (epoch seconds or ISO 8601) as 'YYYY-MM-DD HH:MM' UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(value))
    if isinstance(value, str):
        return value[:16].replace("T", " ")
    return ""


def _document_label(doc: dict[str, Any]) -> str:
    name = str(doc.get("title") or doc.get("source") or doc.get("id") or "?")[:120]
    source = str(doc.get("source") or "")[:160]
    parts = [name] + ([source] if source and source != name else [])
    chunks = doc.get("chunks")
    meta = [f"{chunks} chunks"] if isinstance(chunks, int) else []
    when = _when(doc.get("indexed_at"))
    if when:
        meta.append(when)
    return " — ".join(parts) + (f" ({', '.join(meta)})" if meta else "")


DOCS_EMPTY: dict[str, Any] = {"collection": None, "items": [], "next": None, "total": 0}


def _chosen(value: Any) -> str | None:
    """The model chooser's value as a conversation keeps it: a model's name, or None for "the
    gateway chooses" (``AUTO_MODEL``, or anything that is no model name)."""
    return None if value == AUTO_MODEL else model_name(value)


def _model_update(offered: list[str] | None, wanted: str | None) -> Any:
    """The chooser set to a conversation's model when it is still offered, else to "the gateway
    chooses"; left alone when no model could be listed."""
    if not offered:
        return gr.skip()
    return gr.Dropdown(value=wanted if wanted in offered else AUTO_MODEL)


def _chatbot(rows: list[Row]) -> list[dict[str, Any]]:
    return [{"role": r["role"], "content": r["content"]} for r in rows]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def rows_from_history(
    lang: str, messages: list[dict[str, Any]], meta: dict[str, dict[str, Any]]
) -> list[Row]:
    """The chat as the gateway stored it, with each answer's sources found again by its text."""
    rows: list[Row] = []
    for i, m in enumerate(messages):
        text = _text_of(m.get("content"))
        if m.get("role") == "user":
            rows.append({"role": "user", "content": text, "rateable": False})
        elif m.get("role") == "assistant":
            key = answer_key(text)
            info = meta.get(key)
            rows.append(
                {
                    "role": "assistant",
                    "content": answer_content(lang, text, info),
                    "rateable": True,
                    "key": key,
                    "id": (info or {}).get("id"),
                    "index": i,
                }
            )
    return rows


def _notice(text: str) -> str:
    return error_content(text) if text else ""


@dataclass(frozen=True)
class View:
    """The components the handlers update, so that an update names what it sets (``Updates``) and
    does not depend on its place in an ``outputs=`` list."""

    collection: gr.Dropdown
    model: gr.Dropdown
    offered: gr.State  # the model names the chooser lists
    conversations: gr.Radio
    chatbot: gr.Chatbot
    rows: gr.State  # the chat as shown, with what each message needs to be rated
    notice: gr.Markdown
    store: gr.BrowserState  # the conversations, kept in the browser
    box: gr.MultimodalTextbox
    files: gr.File
    upload_status: gr.Markdown
    account: gr.Markdown
    logout: gr.Button
    documents: gr.CheckboxGroup
    documents_info: gr.Markdown
    more_documents: gr.Button
    documents_state: gr.State  # the listed page(s) of the user's documents


class Page:
    """The handlers, bound to one app's settings, gateway client, metrics and components."""

    def __init__(self, settings: UiSettings, client: GatewayClient, metrics: UiMetrics, view: View) -> None:
        self.s = settings
        self.client = client
        self.m = metrics
        self.v = view
        self.images = {t.lower() for t in settings.image_types}
        self.documents = {t.lower() for t in settings.upload_types}

    def _store(self, raw: Any) -> Store:
        return Store.parse(raw, self.s.max_conversations)

    def _fail(self, lang: str, exc: BaseException, where: str) -> str:
        if isinstance(exc, GatewayError):
            self.m.gateway_errors.labels(where, str(exc.status or "none")).inc()
            log.info("gateway call failed", extra={"where": where, "error": str(exc)})
        else:
            self.m.gateway_errors.labels(where, "ui").inc()
            log.exception("UI handler failed", extra={"where": where})
        return error_text(lang, exc, self.s.gateway_url)

    def _conversations(self, store: Store, lang: str) -> Any:
        return gr.Radio(choices=store.choices(t(lang, "untitled")), value=store.current)

    def _chat(self, rows: list[Row]) -> Updates:
        """The chat shown, and the rows kept with it to rate its answers."""
        return {self.v.chatbot: _chatbot(rows), self.v.rows: rows}

    async def _collections(
        self, lang: str, wanted: str | None, *, keep: bool = False, user: str | None = None
    ) -> tuple[Any, str]:
        """The knowledge-base chooser: the collections the key may read; ``wanted`` selected when it
        is one of them (or always, with ``keep``: a name just typed for a new collection)."""
        try:
            names = sorted(await self.client.collections(user))
        except Exception as exc:
            return gr.Dropdown(choices=[], value=wanted), _notice(self._fail(lang, exc, "collections"))
        if keep and wanted and wanted not in names:
            names.append(wanted)
        if not names:
            return gr.Dropdown(choices=[], value=None), t(lang, "no_collections")
        value = next(
            (c for c in (wanted, self.s.default_collection) if c and c in names),
            names[0],
        )
        return gr.Dropdown(choices=names, value=value), ""

    async def _models(self, lang: str, wanted: str | None, user: str | None) -> tuple[Any, list[str], str]:
        """The model chooser and the names it offers: first "automatic", then the chat models the
        key may use, marked with what they take beyond text; ``wanted`` selected when offered.

        Automatic (a conversation without a choice) lets the gateway choose per message: its
        default, or a model that takes the message's attachments, so an image reaches a model
        that sees it. Without the list the page still chats, the gateway choosing."""
        try:
            models = await self.client.models(user)
        except Exception as exc:
            return gr.Dropdown(choices=[], value=None), [], _notice(self._fail(lang, exc, "models"))
        if not models:
            return gr.Dropdown(choices=[], value=None), [], ""
        # The gateway's default, or (a key that may not use it) the first model the key may use.
        default = next((m.name for m in models if m.default), models[0].name)
        choices = [(t(lang, "model_auto", default=default), AUTO_MODEL)]
        choices += [(model_label(lang, m), m.name) for m in models]
        offered = [m.name for m in models]
        return gr.Dropdown(choices=choices, value=wanted if wanted in offered else AUTO_MODEL), offered, ""

    async def _history(self, lang: str, store: Store, user: str | None) -> tuple[list[Row], str]:
        if store.current is None:
            return [], ""
        try:
            messages = await self.client.session(store.current, user)
        except Exception as exc:
            return [], _notice(self._fail(lang, exc, "session"))
        return rows_from_history(lang, messages, store.meta.get(store.current, {})), ""

    # --- page load, conversations ---

    async def load(self, raw: Any, request: gr.Request) -> Updates:
        lang = _lang(request)
        store = self._store(raw)
        if store.owner != _user(request):
            # Another user's list (a shared browser): start afresh, theirs stays in the gateway.
            store = Store(owner=_user(request))
        conv = store.ensure_current(None, self.s.max_conversations)
        (
            (dropdown, problem),
            (rows, history_problem),
            (models, offered, models_problem),
        ) = await asyncio.gather(
            self._collections(lang, conv.collection, user=_user(request)),
            self._history(lang, store, _user(request)),
            self._models(lang, conv.model, _user(request)),
        )
        v = self.v
        return {
            v.collection: dropdown,
            v.model: models,
            v.conversations: self._conversations(store, lang),
            **self._chat(rows),
            v.notice: problem or history_problem or models_problem,
            v.store: store.dump(),
            v.offered: offered,
        }

    async def choose_model(self, model: str | None, raw: Any) -> Updates:
        """The model picked for the open conversation, kept with it in the browser."""
        store = self._store(raw)
        store.choose(store.current, _chosen(model))
        return {self.v.store: store.dump()}

    async def new_conversation(
        self, raw: Any, collection: str | None, model: str | None, request: gr.Request
    ) -> Updates:
        lang = _lang(request)
        store = self._store(raw)
        current = store.get(store.current)
        # A new conversation starts with the model in the chooser, as it starts with its knowledge base.
        if current is not None and not current.title:
            # The open conversation is still empty: reuse it rather than pile up empty ones.
            current.collection = collection or current.collection
            store.choose(current.id, _chosen(model))
        else:
            store.start(collection, self.s.max_conversations, _chosen(model))
        self.m.conversations.labels("new").inc()
        v = self.v
        return {
            v.conversations: self._conversations(store, lang),
            **self._chat([]),
            v.notice: "",
            v.store: store.dump(),
        }

    async def switch(
        self, cid: str | None, raw: Any, offered: list[str] | None, request: gr.Request
    ) -> Updates:
        lang = _lang(request)
        store = self._store(raw)
        v = self.v
        conv = store.get(cid)
        if conv is None:
            return {v.store: store.dump()}
        store.current = conv.id
        rows, problem = await self._history(lang, store, _user(request))
        self.m.conversations.labels("switch").inc()
        return {
            **self._chat(rows),
            v.notice: problem,
            v.collection: gr.Dropdown(value=conv.collection) if conv.collection else gr.skip(),
            v.store: store.dump(),
            v.conversations: self._conversations(store, lang),
            v.model: _model_update(offered, conv.model),
        }

    async def delete(
        self,
        raw: Any,
        collection: str | None,
        model: str | None,
        offered: list[str] | None,
        request: gr.Request,
    ) -> Updates:
        lang = _lang(request)
        store = self._store(raw)
        v = self.v
        if store.current is None:
            return {v.notice: "", v.store: store.dump()}
        try:
            await self.client.delete_session(store.current, _user(request))
        except Exception as exc:
            # The conversation stays listed: its history is still in the gateway.
            return {v.notice: _notice(self._fail(lang, exc, "delete")), v.store: store.dump()}
        store.remove(store.current)
        self.m.conversations.labels("delete").inc()
        if store.current is None:
            store.start(collection, self.s.max_conversations, _chosen(model))
        rows, problem = await self._history(lang, store, _user(request))
        conv = store.get(store.current)
        return {
            v.conversations: self._conversations(store, lang),
            **self._chat(rows),
            v.notice: problem or t(lang, "deleted"),
            v.store: store.dump(),
            v.model: _model_update(offered, conv.model if conv else None),
        }

    # --- files ---

    def _check_files(self, lang: str, paths: list[str], allowed: set[str]) -> str:
        if len(paths) > self.s.max_files:
            return t(lang, "too_many_files", n=self.s.max_files)
        for p in paths:
            path = Path(p)
            limit = self.s.max_image_bytes if path.suffix.lower() in self.images else self.s.max_upload_bytes
            if path.suffix.lower() not in allowed:
                return t(lang, "file_type", name=escape(path.name), types=", ".join(sorted(allowed)))
            if path.stat().st_size > limit:
                return t(lang, "file_too_large", name=escape(path.name), limit=round(limit / 2**20, 1))
        return ""

    async def _image_part(self, path: str) -> dict[str, Any]:
        data = await asyncio.to_thread(Path(path).read_bytes)
        mime = mimetypes.guess_type(path)[0] or "image/png"
        url = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
        return {"type": "image_url", "image_url": {"url": url}}

    async def _ingest(
        self, lang: str, collection: str, path: str, user: str | None
    ) -> AsyncIterator[tuple[str, bool]]:
        """Upload one document and watch its job; yields (status line, finished)."""
        name = Path(path).name
        shown = escape(name)
        data = await asyncio.to_thread(Path(path).read_bytes)
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        started = time.monotonic()
        try:
            job = await self.client.upload(collection, name, data, mime, user)
        except Exception as exc:
            self.m.uploads.labels("refused").inc()
            yield t(lang, "upload_failed", name=shown, error=self._fail(lang, exc, "upload")), True
            return
        yield t(lang, "upload_queued", name=shown, collection=escape(collection)), False
        status = "queued"
        while True:
            await asyncio.sleep(self.s.ingest_poll_seconds)
            try:
                st = await self.client.job(str(job["job_id"]), user)
            except Exception as exc:
                yield t(lang, "upload_failed", name=shown, error=self._fail(lang, exc, "job")), True
                return
            status = str(st.get("status") or status)
            if status == "done":
                chunks = st.get("chunks") or 0
                async for line in self._until_served(
                    lang, collection, st.get("version"), shown, chunks, started, user
                ):
                    yield line, False
                self.m.uploads.labels("done").inc()
                yield t(lang, "upload_done", name=shown, collection=escape(collection), chunks=chunks), True
                return
            if status in ("failed", "dead"):
                self.m.uploads.labels("failed").inc()
                yield t(lang, "upload_failed", name=shown, error=escape(st.get("error") or status, 300)), True
                return
            waited = time.monotonic() - started
            if waited > self.s.ingest_wait_seconds:
                self.m.uploads.labels("still_running").inc()
                yield t(lang, "upload_waiting", name=shown, status=status, seconds=int(waited)), True
                return
            if status == "running":
                yield t(lang, "upload_running", name=shown), False

    async def _until_served(
        self,
        lang: str,
        collection: str,
        version: Any,
        shown: str,
        chunks: int,
        started: float,
        user: str | None,
    ) -> AsyncIterator[str]:
        """A finished job has published an index version; the retriever serves it after its next
        poll. "Searchable" is said only once the gateway lists that version (or a newer one)."""
        if not isinstance(version, str) or not version:
            return
        line = t(lang, "upload_publishing", name=shown, collection=escape(collection), chunks=chunks)
        while time.monotonic() - started < self.s.ingest_wait_seconds:
            try:
                served = (await self.client.collections(user)).get(collection)
            except GatewayError:
                served = None
            # Version ids start with their UTC creation time, so a later one sorts after.
            if served is not None and served >= version:
                return
            yield line
            await asyncio.sleep(self.s.ingest_poll_seconds)

    async def upload(
        self, files: list[str] | None, collection: str | None, request: gr.Request
    ) -> AsyncIterator[Updates]:
        """The upload panel: every file into the chosen knowledge base, each watched until done."""
        lang = _lang(request)
        status = self.v.upload_status
        paths = [str(f) for f in files or []]
        if not paths:
            yield {status: _notice(t(lang, "upload_nothing"))}
            return
        if not collection or not collection.strip():
            yield {status: _notice(t(lang, "upload_need_collection"))}
            return
        collection = collection.strip()
        problem = self._check_files(lang, paths, self.documents | self.images)
        if problem:
            yield {status: _notice(problem)}
            return
        lines = [""] * len(paths)
        for i, path in enumerate(paths):
            async for line, _done in self._ingest(lang, collection, path, _user(request)):
                lines[i] = line
                yield {status: "\n\n".join(x for x in lines if x)}
        dropdown, _ = await self._collections(lang, collection, keep=True, user=_user(request))
        yield {status: "\n\n".join(lines), self.v.collection: dropdown, self.v.files: None}

    # --- chat ---

    async def ask(
        self,
        message: dict[str, Any] | None,
        collection: str | None,
        raw: Any,
        rows: list[Row] | None,
        request: gr.Request,
        # Last, with a default: a script (gradio_client) that names no model need not pass one.
        model: str | None = None,
    ) -> AsyncIterator[Updates]:
        """One turn: show the question, ingest attached documents, stream the answer (the model's
        thinking apart, above it) and its sources, from the model in the chooser (None: the
        conversation's own choice)."""
        lang = _lang(request)
        store = self._store(raw)
        v = self.v
        rows = list(rows or [])
        text = str((message or {}).get("text") or "")
        paths = [str(p) for p in (message or {}).get("files") or []]
        if not text.strip() and not paths:
            yield {v.notice: _notice(t(lang, "empty_question"))}
            return
        problem = self._check_files(lang, paths, self.images | self.documents)
        if problem:
            yield {v.notice: _notice(problem)}
            return
        if collection and not is_collection_name(collection):
            collection = None
        conv = store.ensure_current(collection, self.s.max_conversations)
        collection = collection or conv.collection or self.s.default_collection
        if model:
            # The chooser's value; without one (no list, or a script) the conversation's own stays.
            store.choose(conv.id, _chosen(model))
        images = [p for p in paths if Path(p).suffix.lower() in self.images]
        documents = [p for p in paths if p not in images]
        shown: list[Any] = [text] if text.strip() else []
        shown += [{"path": p} for p in paths]
        rows.append({"role": "user", "content": shown[0] if len(shown) == 1 else shown, "rateable": False})
        yield {**self._chat(rows), v.box: gr.MultimodalTextbox(value=None, interactive=False), v.notice: ""}

        notice_html = ""
        kept = bool(documents)
        if documents:
            rows.append({"role": "assistant", "content": "", "rateable": False})
            lines = [""] * len(documents)
            for i, path in enumerate(documents):
                async for line, _done in self._ingest(lang, collection, path, _user(request)):
                    lines[i] = line
                    rows[-1] = rows[-1] | {"content": "\n\n".join(x for x in lines if x)}
                    yield self._chat(rows)

        if text.strip() or images:
            content: str | list[dict[str, Any]] = text
            if images:
                content = ([{"type": "text", "text": text}] if text.strip() else []) + [
                    await self._image_part(p) for p in images
                ]
            rows.append({"role": "assistant", "content": t(lang, "thinking"), "rateable": False})
            yield self._chat(rows)
            started = time.perf_counter()
            first = True
            answer = Answer()
            # The thinking's section closes after it, so each update re-sends it whole: until the
            # answer begins, the page is updated as the thinking grows by an eighth (at least 32
            # characters), a few dozen updates for a long think rather than one per token.
            thinking_shown = -1
            try:
                async for answer in self.client.chat(
                    content, session_id=conv.id, collection=collection, model=conv.model, user=_user(request)
                ):
                    if first and (answer.text or answer.reasoning):
                        # The first token the user sees, thinking included.
                        self.m.ttft.observe(time.perf_counter() - started)
                        first = False
                    if not answer.done:
                        if answer.reasoning and not answer.text:
                            grown = len(answer.reasoning) - thinking_shown
                            if thinking_shown >= 0 and grown < max(32, thinking_shown // 8):
                                continue
                            thinking_shown = len(answer.reasoning)
                        shown_now = answer_content(
                            lang, answer.text, None, reasoning=answer.reasoning, streaming=True
                        )
                        rows[-1] = rows[-1] | {"content": shown_now}
                        yield self._chat(rows)
            except Exception as exc:
                notice_html = error_content(self._fail(lang, exc, "chat"))
                partial = answer_content(lang, answer.text, None, reasoning=answer.reasoning)
                partial = partial + "\n\n" if partial else ""
                rows[-1] = {"role": "assistant", "content": partial + notice_html, "rateable": False}
                self.m.answers.labels("error").inc()
            else:
                meta = compact(
                    {
                        "id": answer.id,
                        "citations": answer.citations,
                        "rewritten": answer.rewritten_query,
                        "degraded": answer.degraded,
                        "model": answer.model,
                        # Quoted or generated, grounded or not: kept, like the citations, so the
                        # badge and the marked sentence show again after a reload.
                        "answer_mode": answer.answer_mode,
                        "answered_by": answer.answered_by,
                        "grounded": answer.grounded,
                        "grounding_reason": answer.grounding_reason,
                        "fallback": answer.fallback,
                        "quote": answer.quote,
                    }
                )
                # By the answer's text alone: that is what the gateway stores, never the thinking.
                key = answer_key(answer.text)
                store.remember(conv.id, key, meta)
                kept = True
                rows[-1] = {
                    "role": "assistant",
                    "content": answer_content(lang, answer.text, meta, reasoning=answer.reasoning),
                    "rateable": True,
                    "key": key,
                    "id": answer.id,
                    # Its place in the gateway's history: every earlier answer and question is there.
                    "index": 2 * sum(1 for r in rows[:-1] if r.get("rateable")) + 1,
                }
                if answer.degraded:
                    notice_html = sources_html(lang, [], degraded=answer.degraded)
                self.m.answers.labels("degraded" if answer.degraded else "ok").inc()
        if kept:
            # Only a turn the gateway kept names the conversation and moves it up the list.
            store.touch(
                conv.id,
                question=title_of(text or ", ".join(Path(p).name for p in paths)),
                collection=collection,
            )
        yield {
            **self._chat(rows),
            v.box: gr.MultimodalTextbox(value=None, interactive=True),
            v.notice: notice_html,
            v.conversations: self._conversations(store, lang),
            v.store: store.dump(),
        }

    # --- the user's documents ---

    async def account(self, request: gr.Request) -> Updates:
        """Who is logged in, and the way out; nothing when the UI has no login."""
        user = _user(request)
        if user is None:
            return {self.v.account: "", self.v.logout: gr.Button(visible=False)}
        name = escape(display_name(user), 100)
        return {
            self.v.account: t(_lang(request), "signed_in_as", name=name),
            self.v.logout: gr.Button(visible=True),
        }

    def _documents_view(self, lang: str, state: dict[str, Any], note: str = "") -> Updates:
        items = state["items"]
        choices = [(_document_label(d), str(d["id"])) for d in items]
        if not items:
            info = t(lang, "docs_none")
        else:
            info = t(lang, "docs_count", shown=len(items), total=state.get("total") or len(items))
        info = "\n\n".join(x for x in (note, info) if x)
        return {
            self.v.documents: gr.CheckboxGroup(choices=choices, value=[]),
            self.v.documents_info: info,
            self.v.more_documents: gr.Button(visible=bool(state.get("next"))),
            self.v.documents_state: state,
        }

    async def _documents_page(
        self, lang: str, collection: str | None, state: dict[str, Any], user: str | None
    ) -> tuple[dict[str, Any], str]:
        """``state`` with the next page of the user's documents added; a problem, or ''."""
        if not collection or not is_collection_name(collection):
            return dict(DOCS_EMPTY), ""
        try:
            body = await self.client.documents(
                collection, user=user, cursor=state.get("next"), limit=self.s.documents_page_size
            )
        except GatewayError as exc:
            if exc.status == 404:  # a collection nobody has indexed yet: nothing to list
                return dict(DOCS_EMPTY) | {"collection": collection}, ""
            return state, _notice(self._fail(lang, exc, "documents"))
        except Exception as exc:
            return state, _notice(self._fail(lang, exc, "documents"))
        items = [d for d in body.get("data") or [] if isinstance(d, dict) and d.get("id")]
        total = body.get("total")
        return {
            "collection": collection,
            "items": [*state["items"], *items][: self.s.documents_max_listed],
            "next": body.get("next_cursor") or None,
            "total": total if isinstance(total, int) else None,
        }, ""

    async def list_documents(self, collection: str | None, request: gr.Request) -> Updates:
        """The first page of what this user uploaded into the selected knowledge base."""
        lang = _lang(request)
        state, problem = await self._documents_page(lang, collection, dict(DOCS_EMPTY), _user(request))
        return self._documents_view(lang, state, problem)

    async def more_documents(
        self, collection: str | None, state: dict[str, Any] | None, request: gr.Request
    ) -> Updates:
        lang = _lang(request)
        state = state or dict(DOCS_EMPTY)
        if state.get("collection") != collection or not state.get("next"):
            state = dict(DOCS_EMPTY)
        state, problem = await self._documents_page(lang, collection, state, _user(request))
        return self._documents_view(lang, state, problem)

    def _removal_error(self, lang: str, exc: BaseException) -> str:
        if isinstance(exc, GatewayError):
            if exc.code == "document_forbidden":
                return t(lang, "docs_forbidden")
            if exc.code == "document_from_knowledge_base":
                return t(lang, "docs_from_kb")
            if exc.status == 404:
                return t(lang, "docs_gone")
        return self._fail(lang, exc, "remove_document")

    async def _remove(
        self, lang: str, collection: str, doc_id: str, name: str, user: str | None
    ) -> AsyncIterator[str]:
        """Ask the gateway to remove one document and watch its job; yields status lines."""
        shown = escape(name, 120)
        try:
            job = await self.client.delete_document(collection, doc_id, user)
        except Exception as exc:
            self.m.documents_removed.labels("refused").inc()
            yield t(lang, "docs_remove_failed", name=shown, error=self._removal_error(lang, exc))
            return
        yield t(lang, "docs_removing", name=shown)
        started = time.monotonic()
        status = str(job.get("status") or "queued")
        st: dict[str, Any] = job
        while status not in ("done", "failed", "dead"):
            if time.monotonic() - started > self.s.ingest_wait_seconds:
                yield t(
                    lang, "upload_waiting", name=shown, status=status, seconds=int(time.monotonic() - started)
                )
                return
            await asyncio.sleep(self.s.ingest_poll_seconds)
            try:
                st = await self.client.job(str(job["job_id"]), user)
            except Exception as exc:
                yield t(lang, "docs_remove_failed", name=shown, error=self._removal_error(lang, exc))
                return
            status = str(st.get("status") or status)
            if status in ("failed", "dead"):
                self.m.documents_removed.labels("failed").inc()
                error = escape(st.get("error") or status, 300)
                yield t(lang, "docs_remove_failed", name=shown, error=error)
                return
        # Done means a version without it is published; the list says "removed" only once the
        # retriever serves that version, so the document is gone from the list too.
        version = st.get("version")
        while isinstance(version, str) and time.monotonic() - started < self.s.ingest_wait_seconds:
            try:
                served = (await self.client.collections(user)).get(collection)
            except GatewayError:
                served = None
            if served is not None and served >= version:
                break
            await asyncio.sleep(self.s.ingest_poll_seconds)
        self.m.documents_removed.labels("done").inc()
        yield t(lang, "docs_removed", name=shown)

    async def remove_documents(
        self,
        selected: list[str] | None,
        collection: str | None,
        state: dict[str, Any] | None,
        request: gr.Request,
    ) -> AsyncIterator[Updates]:
        """Remove the ticked documents one by one, watching each job, then list again."""
        lang = _lang(request)
        user = _user(request)
        state = state or dict(DOCS_EMPTY)
        chosen = [str(x) for x in selected or []][: self.s.documents_page_size]
        info = self.v.documents_info
        if not chosen or not collection:
            yield {info: t(lang, "docs_pick")}
            return
        names = {
            str(d["id"]): str(d.get("source") or d.get("title") or d["id"]) for d in state.get("items") or []
        }
        lines = [""] * len(chosen)
        for i, doc_id in enumerate(chosen):
            async for line in self._remove(lang, collection, doc_id, names.get(doc_id, doc_id), user):
                lines[i] = line
                yield {info: "\n\n".join(x for x in lines if x)}
        fresh, problem = await self._documents_page(lang, collection, dict(DOCS_EMPTY), user)
        yield self._documents_view(lang, fresh, "\n\n".join(x for x in [*lines, problem] if x))

    # --- feedback ---

    async def rate(self, data: gr.LikeData, raw: Any, rows: list[Row] | None, request: gr.Request) -> Updates:
        return {self.v.notice: await self._rating(data, raw, rows, request)}

    async def _rating(self, data: gr.LikeData, raw: Any, rows: list[Row] | None, request: gr.Request) -> str:
        """Sends the rating to the gateway; returns what the notice then says."""
        lang = _lang(request)
        store = self._store(raw)
        index = data.index if isinstance(data.index, int) else data.index[0]
        rows = rows or []
        row = rows[index] if 0 <= index < len(rows) else None
        if row is None or not row.get("rateable") or store.current is None:
            return t(lang, "feedback_not_rateable")
        liked = data.liked
        if liked in (True, "Like"):
            rating = "up"
        elif liked in (False, "Dislike"):
            rating = "down"
        else:
            return ""  # a rating taken back: nothing to store
        try:
            await self.client.feedback(
                rating=rating,
                session_id=store.current,
                message_id=row.get("id"),
                message_index=row.get("index"),
                user=_user(request),
            )
        except Exception as exc:
            return _notice(self._fail(lang, exc, "feedback"))
        self.m.feedback.labels(rating).inc()
        return t(lang, "feedback_thanks_up" if rating == "up" else "feedback_thanks_down")


def build(settings: UiSettings, client: GatewayClient, metrics: UiMetrics) -> tuple[gr.Blocks, gr.I18n]:
    """The Blocks and the I18n table that must be mounted with it."""
    i18n = gr.I18n(**i18n_tables())

    def label(key: str) -> Any:
        return i18n(I18N_PREFIX + key)

    accepted = sorted({*settings.image_types, *settings.upload_types})
    with gr.Blocks(title=settings.title, fill_height=True, analytics_enabled=False) as demo:
        store = gr.BrowserState(
            {"current": None, "conversations": [], "meta": {}},
            storage_key=settings.browser_state_key,
            secret=settings.browser_state_secret.get_secret_value(),
        )
        rows = gr.State([])
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260, elem_id="sidebar"):
                gr.Markdown(f"## {escape(settings.title)}")
                with gr.Row(equal_height=True):
                    account = gr.Markdown(elem_id="account")
                    # A plain link in this tab: the login cookie is cleared by the page it opens.
                    logout_button = gr.Button(
                        label("logout"), link="/auth/logout", size="sm", visible=False, elem_id="logout"
                    )
                collection = gr.Dropdown(
                    label=label("collection"),
                    choices=[],
                    allow_custom_value=True,
                    interactive=True,
                    elem_id="collection",
                )
                model = gr.Dropdown(label=label("model"), choices=[], interactive=True, elem_id="model")
                offered = gr.State([])
                new_button = gr.Button(label("new_chat"), variant="primary", elem_id="new-chat")
                conversations = gr.Radio(label=label("conversations"), choices=[], elem_id="conversations")
                delete_button = gr.Button(
                    label("delete_chat"), variant="stop", size="sm", elem_id="delete-chat"
                )
                with gr.Accordion(label("upload_title"), open=False, elem_id="upload"):
                    gr.Markdown(label("upload_hint"))
                    files = gr.File(
                        label=label("upload_files"),
                        file_count="multiple",
                        file_types=accepted,
                        elem_id="upload-files",
                    )
                    upload_button = gr.Button(label("upload_button"), elem_id="upload-button")
                    upload_status = gr.Markdown(elem_id="upload-status")
                    gr.Markdown(label("docs_title"))
                    my_documents = gr.CheckboxGroup(
                        choices=[], show_label=False, elem_id="my-documents", interactive=True
                    )
                    documents_info = gr.Markdown(elem_id="my-documents-info")
                    with gr.Row():
                        refresh_button = gr.Button(label("docs_refresh"), size="sm", elem_id="docs-refresh")
                        more_button = gr.Button(
                            label("docs_more"), size="sm", visible=False, elem_id="docs-more"
                        )
                        remove_button = gr.Button(
                            label("docs_remove"), size="sm", variant="stop", elem_id="docs-remove"
                        )
                    documents_state = gr.State(dict(DOCS_EMPTY))
            with gr.Column(scale=4):
                gr.Markdown(label("subtitle"))
                notice = gr.Markdown(elem_id="notice")
                chatbot = gr.Chatbot(
                    label=label("chatbot"),
                    elem_id="chatbot",
                    height="62vh",
                    group_consecutive_messages=False,
                    feedback_options=("Like", "Dislike"),
                    buttons=["copy"],
                    latex_delimiters=[],
                )
                box = gr.MultimodalTextbox(
                    placeholder=label("placeholder"),
                    file_types=accepted,
                    file_count="multiple",
                    sources=["upload"],
                    show_label=False,
                    autofocus=True,
                    elem_id="chat-input",
                )
        page = Page(
            settings,
            client,
            metrics,
            View(
                collection=collection,
                model=model,
                offered=offered,
                conversations=conversations,
                chatbot=chatbot,
                rows=rows,
                notice=notice,
                store=store,
                box=box,
                files=files,
                upload_status=upload_status,
                account=account,
                logout=logout_button,
                documents=my_documents,
                documents_info=documents_info,
                more_documents=more_button,
                documents_state=documents_state,
            ),
        )

        # Each outputs= list is the order in which a script (gradio_client) receives the values;
        # the handlers name what they update, so that order binds nothing in them.
        demo.load(
            page.load,
            inputs=[store],
            outputs=[collection, model, conversations, chatbot, rows, notice, store, offered],
            api_name="load",
        )
        # Only a choice the user makes is kept: load and switch set the value without it.
        model.input(page.choose_model, inputs=[model, store], outputs=[store], api_name="choose_model")
        box.submit(
            page.ask,
            # The model last: a script that names none keeps the conversation's.
            inputs=[box, collection, store, rows, model],
            outputs=[chatbot, box, notice, conversations, store, rows],
            api_name="ask",
            concurrency_limit=settings.concurrency,
            concurrency_id="chat",
        )
        new_button.click(
            page.new_conversation,
            inputs=[store, collection, model],
            outputs=[conversations, chatbot, rows, notice, store],
            api_name="new_conversation",
        )
        conversations.input(
            page.switch,
            inputs=[conversations, store, offered],
            outputs=[chatbot, rows, notice, collection, store, conversations, model],
            api_name="switch_conversation",
        )
        delete_button.click(
            page.delete,
            inputs=[store, collection, model, offered],
            outputs=[conversations, chatbot, rows, notice, store, model],
            api_name="delete_conversation",
        )
        upload_done = upload_button.click(
            page.upload,
            inputs=[files, collection],
            outputs=[upload_status, collection, files],
            api_name="upload",
            concurrency_limit=settings.concurrency,
            concurrency_id="upload",
        )
        demo.load(page.account, outputs=[account, logout_button], api_visibility="private")
        listed = [my_documents, documents_info, more_button, documents_state]
        upload_done.then(page.list_documents, inputs=[collection], outputs=listed, api_visibility="private")
        collection.change(page.list_documents, inputs=[collection], outputs=listed, api_name="documents")
        refresh_button.click(
            page.list_documents, inputs=[collection], outputs=listed, api_visibility="private"
        )
        more_button.click(
            page.more_documents,
            inputs=[collection, documents_state],
            outputs=listed,
            api_name="more_documents",
        )
        remove_button.click(
            page.remove_documents,
            inputs=[my_documents, collection, documents_state],
            outputs=listed,
            api_name="remove_documents",
            concurrency_limit=settings.concurrency,
            concurrency_id="upload",
        )
        chatbot.like(page.rate, inputs=[store, rows], outputs=[notice], api_name="rate")
        # The chat's own clear button empties the view: that is a new conversation (the old one
        # stays listed, its history still in the gateway).
        chatbot.clear(
            page.new_conversation,
            inputs=[store, collection, model],
            outputs=[conversations, chatbot, rows, notice, store],
            api_visibility="private",
        )
    demo.queue(default_concurrency_limit=settings.concurrency)
    return demo, i18n
