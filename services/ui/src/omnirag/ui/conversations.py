"""The conversations a browser keeps: their ids (gateway session ids), titles, knowledge bases, the
model each one talks to, and the sources (and answering model) of their answers.

The messages themselves live in the gateway (``GET /v1/sessions/{id}``); the browser keeps only
what the gateway does not: which conversations it has, and each answer's citations and
provenance (quoted or not, grounded or not; by the answer's text, see ``render.answer_key``) so
they show again after a reload. The value comes back
from the browser on every event, so it is treated as untrusted input: parsed, bounded, and
rebuilt whole.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from omnirag.core.names import is_collection_name
from omnirag.ui.gateway import model_name, provenance

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
KEY = re.compile(r"^[0-9a-f]{16}$")
MAX_TITLE = 80
MAX_ANSWERS_KEPT = 40  # answers per conversation whose sources the browser remembers
MAX_CITATIONS = 20
MAX_SNIPPET = 400


def new_id() -> str:
    return "ui-" + uuid.uuid4().hex


def title_of(question: str) -> str:
    text = " ".join(question.split())
    return text if len(text) <= MAX_TITLE else text[: MAX_TITLE - 1].rstrip() + "…"


@dataclass
class Conversation:
    id: str
    title: str = ""
    collection: str | None = None
    updated: float = 0.0
    # The model chosen for this conversation; None: the gateway chooses.
    model: str | None = None


@dataclass
class Store:
    current: str | None = None
    conversations: list[Conversation] = field(default_factory=list)
    # conversation id -> answer key -> {"id", "citations", "rewritten", "degraded", "model",
    # "answer_mode", "answered_by", "grounded", "grounding_reason", "fallback", "quote"}
    meta: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # The logged-in user the list belongs to: on a shared browser the next user must not see the
    # titles (their first questions) of the last one's conversations.
    owner: str | None = None

    # --- from and to the browser ---

    @classmethod
    def parse(cls, raw: Any, max_conversations: int) -> Store:
        store = cls()
        if not isinstance(raw, dict):
            return store
        seen: set[str] = set()
        for item in raw.get("conversations") or []:
            if not isinstance(item, dict):
                continue
            cid = item.get("id")
            if not isinstance(cid, str) or not SESSION_ID.match(cid) or cid in seen:
                continue
            seen.add(cid)
            coll = item.get("collection")
            updated = item.get("updated")
            store.conversations.append(
                Conversation(
                    id=cid,
                    title=title_of(str(item.get("title") or "")),
                    collection=coll if isinstance(coll, str) and is_collection_name(coll) else None,
                    updated=float(updated) if isinstance(updated, int | float) else 0.0,
                    model=model_name(item.get("model")),
                )
            )
            if len(store.conversations) >= max_conversations:
                break
        current = raw.get("current")
        store.current = current if isinstance(current, str) and current in seen else None
        owner = raw.get("owner")
        store.owner = owner if isinstance(owner, str) and 0 < len(owner) <= 128 else None
        meta = raw.get("meta")
        if isinstance(meta, dict):
            for cid, answers in meta.items():
                if cid not in seen or not isinstance(answers, dict):
                    continue
                kept = {
                    k: _clean_meta(v)
                    for k, v in list(answers.items())[-MAX_ANSWERS_KEPT:]
                    if KEY.match(str(k))
                }
                store.meta[cid] = {k: v for k, v in kept.items() if v is not None}
        return store

    def dump(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "conversations": [
                {
                    "id": c.id,
                    "title": c.title,
                    "collection": c.collection,
                    "updated": c.updated,
                    "model": c.model,
                }
                for c in self.conversations
            ],
            "meta": self.meta,
            "owner": self.owner,
        }

    # --- changes ---

    def get(self, cid: str | None) -> Conversation | None:
        return next((c for c in self.conversations if c.id == cid), None)

    def start(self, collection: str | None, max_conversations: int, model: str | None = None) -> Conversation:
        conv = Conversation(id=new_id(), collection=collection, updated=time.time(), model=model)
        self.conversations.insert(0, conv)
        self.current = conv.id
        self._bound(max_conversations)
        return conv

    def ensure_current(self, collection: str | None, max_conversations: int) -> Conversation:
        conv = self.get(self.current)
        if conv is None:
            conv = self.conversations[0] if self.conversations else self.start(collection, max_conversations)
            self.current = conv.id
        return conv

    def choose(self, cid: str | None, model: str | None) -> None:
        """Keep ``model`` as the conversation's choice (None: the gateway chooses)."""
        conv = self.get(cid)
        if conv is not None:
            conv.model = model_name(model)

    def touch(self, cid: str, *, question: str, collection: str | None) -> None:
        conv = self.get(cid)
        if conv is None:
            conv = Conversation(id=cid)
            self.conversations.insert(0, conv)
        if not conv.title and question.strip():
            conv.title = title_of(question)
        conv.collection = collection or conv.collection
        conv.updated = time.time()
        # The conversation just used goes to the top of the list.
        self.conversations.remove(conv)
        self.conversations.insert(0, conv)

    def remember(self, cid: str, key: str, meta: dict[str, Any]) -> None:
        answers = self.meta.setdefault(cid, {})
        answers.pop(key, None)
        answers[key] = meta
        while len(answers) > MAX_ANSWERS_KEPT:
            answers.pop(next(iter(answers)))

    def remove(self, cid: str) -> None:
        self.conversations = [c for c in self.conversations if c.id != cid]
        self.meta.pop(cid, None)
        if self.current == cid:
            self.current = self.conversations[0].id if self.conversations else None

    def _bound(self, max_conversations: int) -> None:
        # The oldest fall off the list; their histories expire in the gateway on their own.
        for old in self.conversations[max_conversations:]:
            self.meta.pop(old.id, None)
        del self.conversations[max_conversations:]

    def choices(self, untitled: str) -> list[tuple[str, str]]:
        return [(c.title or untitled, c.id) for c in self.conversations]


def _clean_meta(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    citations = []
    for c in raw.get("citations") or []:
        if isinstance(c, dict):
            citations.append(
                {
                    "n": c.get("n") if isinstance(c.get("n"), int) else None,
                    "title": str(c.get("title") or "")[:300],
                    "source": str(c.get("source") or "")[:1024],
                    "score": c.get("score") if isinstance(c.get("score"), int | float) else None,
                    "snippet": str(c.get("snippet") or "")[:MAX_SNIPPET],
                }
            )
        if len(citations) >= MAX_CITATIONS:
            break
    rid = raw.get("id")
    rewritten = raw.get("rewritten")
    degraded = raw.get("degraded")
    return {
        "id": rid if isinstance(rid, str) and SESSION_ID.match(rid) else None,
        "citations": citations,
        "rewritten": str(rewritten)[:1000] if isinstance(rewritten, str) else None,
        "degraded": [str(d)[:40] for d in degraded[:8]] if isinstance(degraded, list) else [],
        "model": model_name(raw.get("model")),
        # What produced the answer (a quote marks its sentence in the source), checked again.
        **provenance(raw),
    }


def compact(meta: dict[str, Any]) -> dict[str, Any]:
    """What is kept in the browser for one answer: bounded like anything parsed back."""
    return _clean_meta(meta) or {}
