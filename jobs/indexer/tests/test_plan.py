"""The plan of one write (what to embed, re-tag and delete), decided without an embedder or a disk:
the incremental rules of the pipeline, one at a time."""

from __future__ import annotations

from pathlib import Path

from omnirag.indexer.pipeline import Plan, StoredDocument, kb_origin, plan_changes, upload_origin
from omnirag.indexer.spec import KnowledgeBase
from omnirag.indexer.types import SourceDocument

KB = KnowledgeBase(name="kb", sources=[], base_dir=Path("."), chunk_size=200, chunk_overlap=0)
LONG = "\n\n".join(f"Paragraph {i}. " + f"sentence {i} about the topic. " * 6 for i in range(4))


def doc(source: str, text: str, title: str = "T") -> SourceDocument:
    return SourceDocument(source=source, title=title, text=text, metadata={"content_type": "text/markdown"})


def stored(plan: Plan) -> dict[str, StoredDocument]:
    """What a collection holds after ``plan`` was applied to an empty one."""
    out: dict[str, StoredDocument] = {}
    for c in plan.embed:
        meta = c.metadata
        entry = out.setdefault(
            meta["doc_id"],
            StoredDocument(
                source=meta["source"],
                doc_hash=meta["doc_hash"],
                stamp={
                    k: meta.get(k)
                    for k in ("origin", "origin_source", "origin_key", "origin_principal", "doc_id")
                },
            ),
        )
        entry.chunks[c.id] = c.content_hash
    return out


def first_run(*docs: SourceDocument) -> tuple[Plan, dict[str, StoredDocument]]:
    plan = plan_changes(KB, {}, set(), {d.source: d for d in docs}, origin=kb_origin(), now=1.0)
    return plan, stored(plan)


def test_new_documents_are_split_and_every_chunk_is_embedded() -> None:
    plan, _ = first_run(doc("a.md", LONG), doc("b.md", "short"))
    assert (plan.added, plan.changed, plan.unchanged, plan.deleted) == (2, 0, 0, 0)
    assert len(plan.embed) > 2 and not plan.delete and not plan.retag
    assert {c.metadata["source"] for c in plan.embed} == {"a.md", "b.md"}
    assert all(c.metadata["kb"] == "kb" and c.metadata["origin"] == "kb" for c in plan.embed)


def test_an_unchanged_document_is_neither_embedded_nor_retagged() -> None:
    _, existing = first_run(doc("a.md", LONG))
    plan = plan_changes(KB, existing, set(), {"a.md": doc("a.md", LONG)}, origin=kb_origin(), now=2.0)
    assert plan.empty and plan.unchanged == 1


def test_an_unchanged_document_without_its_origin_recorded_is_retagged_not_embedded() -> None:
    _, existing = first_run(doc("a.md", LONG))
    for entry in existing.values():
        entry.stamp["origin"] = None  # written before origins were recorded
    plan = plan_changes(KB, existing, set(), {"a.md": doc("a.md", LONG)}, origin=kb_origin(), now=2.0)
    assert not plan.embed and not plan.delete
    [(ids, fields)] = plan.retag
    assert set(ids) == set(next(iter(existing.values())).chunks) and fields["origin"] == "kb"


def test_an_edit_embeds_only_the_chunks_that_changed_and_deletes_the_ones_gone() -> None:
    first, existing = first_run(doc("a.md", LONG))
    paragraphs = LONG.split("\n\n")
    edited = "\n\n".join([paragraphs[0], "An edited second paragraph, new words."])
    plan = plan_changes(KB, existing, set(), {"a.md": doc("a.md", edited)}, origin=kb_origin(), now=2.0)
    assert (plan.changed, plan.added) == (1, 0)
    assert [c.text for c in plan.embed] == ["An edited second paragraph, new words."]
    [(kept, fields)] = plan.retag
    assert kept == [first.embed[0].id] and fields["indexed_at"] == 2.0
    assert set(plan.delete) == {c.id for c in first.embed[2:]}


def test_a_document_gone_from_its_source_is_deleted_unless_kept_failed_or_not_managed() -> None:
    _, existing = first_run(doc("a.md", LONG), doc("b.md", "short"))
    b_chunks = set(next(e for e in existing.values() if e.source == "b.md").chunks)
    only_a = {"a.md": doc("a.md", LONG)}
    gone = plan_changes(KB, existing, set(), only_a, origin=kb_origin())
    assert gone.deleted == 1 and set(gone.delete) == b_chunks
    for kwargs in ({"keep": {"b.md"}}, {"failed_sources": {"b.md"}}, {"delete_missing": False}):
        plan = plan_changes(KB, existing, set(), only_a, origin=kb_origin(), **kwargs)  # type: ignore[arg-type]
        assert plan.empty and plan.deleted == 0, kwargs


def test_a_document_whose_id_an_old_upload_holds_is_reported_and_left_alone() -> None:
    only = doc("a.md", LONG)
    doc_id = kb_origin().doc_id("a.md")
    plan = plan_changes(KB, {}, {doc_id}, {"a.md": only}, origin=kb_origin())
    assert plan.empty and [c["source"] for c in plan.conflicts] == ["a.md"]


def test_uploads_of_two_principals_live_in_separate_id_spaces() -> None:
    docs = {"a.md": doc("a.md", "short")}
    alice = plan_changes(KB, {}, set(), docs, origin=upload_origin("k1", "alice"), delete_missing=False)
    bob = plan_changes(KB, {}, set(), docs, origin=upload_origin("k1", "bob"), delete_missing=False)
    assert {c.id for c in alice.embed}.isdisjoint({c.id for c in bob.embed})
    assert alice.embed[0].metadata["origin_principal"] == "alice"
