"""``python -m omnirag.indexer run | status | validate | worker | delete``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from omnirag.core.errors import OmniragError, UpstreamError
from omnirag.core.logging import configure_logging
from omnirag.core.names import check_collection_name
from omnirag.index import list_collections, read_manifest
from omnirag.index.compaction import TieredPolicy
from omnirag.indexer.config import IndexerSettings
from omnirag.indexer.pipeline import (
    RunSummary,
    compact_collection,
    delete_collection,
    delete_documents,
    run_kb,
)
from omnirag.indexer.spec import KnowledgeBase, load

log = logging.getLogger("omnirag.indexer")


class Bars:
    """A tqdm progress bar per stage, on stderr, only when it is a terminal (or forced)."""

    def __init__(self, kb: str, enabled: bool) -> None:
        self.kb = kb
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, advance: int, total: int | None) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            unit = "doc" if stage == "documents" else "chunk"
            bar = self.bars[stage] = tqdm(
                total=total,
                desc=f"{self.kb}: {stage}",
                unit=unit,
                leave=True,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        elif total is not None:
            bar.total = total
            bar.refresh()
        if advance:
            bar.update(advance)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def render(summary: RunSummary) -> str:
    s = summary
    state = (
        f"published {s.version}" if s.published else f"nothing changed (still {s.version or 'no version'})"
    )
    lines = [
        f"{s.kb}: {state} in {s.seconds:.1f}s",
        f"  documents: {s.added} added, {s.changed} changed, {s.deleted} deleted, {s.unchanged} unchanged",
        f"  chunks: {s.chunks_embedded} embedded, {s.chunks_total} in the collection",
    ]
    if s.refused:
        lines.append(
            f"  refused: {len(s.refused)} ({', '.join(s.refused[:5])}{' …' if len(s.refused) > 5 else ''})"
        )
    other = [p for p in s.problems if p["kind"] != "refused"]
    if other:
        lines.append(f"  problems: {len(other)}")
        lines.extend(f"    {p['kind']}: {p['source']}: {p['reason']}" for p in other[:10])
    return "\n".join(lines)


def select(kbs: list[KnowledgeBase], name: str | None) -> list[KnowledgeBase]:
    if name is None:
        return kbs
    chosen = [kb for kb in kbs if kb.name == name]
    if not chosen:
        raise SystemExit(
            f"no knowledge base named {name!r} in the spec (have: {', '.join(k.name for k in kbs)})"
        )
    return chosen


async def wait_for_embedder(url: str, seconds: float) -> None:
    """Wait until the embedder answers /readyz (when started beside it, as `make run` does)."""
    import httpx

    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                if (await client.get(url.rstrip("/") + "/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise UpstreamError(f"the embedder at {url} was not ready within {seconds:.0f}s")
            await asyncio.sleep(1)


async def cmd_run(args: argparse.Namespace, settings: IndexerSettings) -> int:
    kbs = select(load(args.config or settings.config), args.kb)
    if args.wait_embedder:
        await wait_for_embedder(settings.embedder_url, args.wait_embedder)
    failed = 0
    for kb in kbs:
        bars = Bars(kb.name, enabled=args.progress if args.progress is not None else sys.stderr.isatty())
        try:
            summary = await run_kb(kb, settings, bars)
        except OmniragError as exc:
            bars.close()
            print(f"{kb.name}: failed: {exc.message}", file=sys.stderr)
            failed += 1
            continue
        bars.close()
        print(json.dumps(summary.as_dict(), ensure_ascii=False) if args.json else render(summary), flush=True)
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace, settings: IndexerSettings) -> int:
    root = settings.index_root
    names = set(list_collections(root))
    spec_path = args.config or settings.config
    declared: dict[str, KnowledgeBase] = {}
    if spec_path.exists():
        declared = {kb.name: kb for kb in load(spec_path)}
    rows = []
    for name in sorted(names | set(declared)):
        manifest = read_manifest(root, name) if name in names else None
        row: dict[str, Any] = {"name": name, "declared": name in declared, "version": None}
        if manifest is not None:
            segments = manifest.segments
            row |= {
                "version": manifest.version,
                "documents": manifest.counts["documents"],
                "created_at": manifest.created_at,
                "model": manifest.embedding.model,
                "index": manifest.index_built,
                "format": manifest.format_version,
                "segments": len(segments) if manifest.format_version > 1 else 1,
                "deleted": sum(s.deleted for s in segments),
                # What the tiered policy would merge next (empty: nothing waits for compaction).
                "compaction_pending": TieredPolicy().plan(segments),
            }
        rows.append(row)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            if r["version"]:
                pending = len(r["compaction_pending"])
                print(
                    f"{r['name']}: {r['version']} ({r['documents']} chunks in {r['segments']} segment(s), "
                    f"{r['deleted']} deleted, {r['index']}, {r['model']}, created {r['created_at']}; "
                    + (f"compaction pending: {pending} segments" if pending else "no compaction pending")
                    + ("; format 1: the next commit installs it as a segment" if r["format"] == 1 else "")
                    + ")"
                )
            else:
                print(f"{r['name']}: not indexed yet")
    return 0


async def cmd_compact(args: argparse.Namespace, settings: IndexerSettings) -> int:
    try:
        check_collection_name(args.collection)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if read_manifest(settings.index_root, args.collection) is None:
        print(f"error: no collection named {args.collection!r}", file=sys.stderr)
        return 1
    forced = settings.model_copy(update={"compaction": True})
    result = await compact_collection(forced, args.collection, full=args.full)
    assert result is not None
    if result["gave_up"]:
        print(f"{args.collection}: nothing merged ({result['gave_up']})")
    elif result["merged"]:
        print(
            f"{args.collection}: {result['merged']} segment(s) merged into one of {result['chunks']} chunks "
            f"in {result['seconds']:.1f} s; serving {result['version']}"
        )
    else:
        print(f"{args.collection}: nothing to merge")
    return 0


def cmd_validate(args: argparse.Namespace, settings: IndexerSettings) -> int:
    kbs = load(args.config or settings.config)
    print(
        f"{args.config or settings.config}: {len(kbs)} knowledge base(s) OK: {', '.join(k.name for k in kbs)}"
    )
    return 0


async def cmd_delete(args: argparse.Namespace, settings: IndexerSettings) -> int:
    name = args.collection
    try:
        check_collection_name(name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.document:
        summary = await delete_documents(name, args.document, settings)
        state = f"published {summary.version}" if summary.published else "nothing published"
        print(f"{name}: {summary.deleted} document(s) deleted; {state}")
        return 0 if summary.deleted else 1
    if not args.yes:
        print(
            f"error: this deletes the collection {name!r} and every version of it; add --yes to do it",
            file=sys.stderr,
        )
        return 2
    spec_path = args.config or settings.config
    if spec_path.exists() and any(kb.name == name for kb in load(spec_path)):
        # Deleting is still done: the operator may be about to remove it from the spec.
        print(
            f"warning: {spec_path} still declares the knowledge base {name!r}; its next run builds "
            "the collection again (remove it from the configuration to keep it gone)",
            file=sys.stderr,
        )
    if not await delete_collection(settings, name):
        print(f"error: no collection {name!r} under {settings.index_root}", file=sys.stderr)
        return 1
    print(f"{name}: deleted")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m omnirag.indexer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="index knowledge bases incrementally")
    run.add_argument("--kb", help="only this knowledge base (default: all in the spec)")
    run.add_argument(
        "--config", type=Path, help="spec file (default: INDEXER_CONFIG or config/knowledge-bases.yaml)"
    )
    run.add_argument("--json", action="store_true", help="print each summary as one JSON line")
    run.add_argument(
        "--wait-embedder",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait this long for the embedder to be ready first",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when stderr is a terminal)",
    )
    status = sub.add_parser("status", help="what each collection serves now")
    status.add_argument("--config", type=Path)
    status.add_argument("--json", action="store_true")
    compact_cmd = sub.add_parser(
        "compact", help="merge a collection's segments now: what the tiered policy asks for, or all of them"
    )
    compact_cmd.add_argument("--collection", required=True)
    compact_cmd.add_argument("--full", action="store_true", help="merge every segment into one")
    validate = sub.add_parser("validate", help="check a spec file against the schema")
    validate.add_argument("--config", type=Path)
    sub.add_parser("worker", help="consume ingest requests from the Redis stream")
    delete = sub.add_parser(
        "delete",
        help="delete a collection (a knowledge base removed from the spec keeps its collection "
        "until this), or only some of its documents",
    )
    delete.add_argument("--collection", required=True, help="the collection (knowledge base) name")
    delete.add_argument(
        "--document",
        action="append",
        metavar="ID_OR_SOURCE",
        help="delete only this document (its id from the documents listing, or its source); repeatable",
    )
    delete.add_argument("--yes", action="store_true", help="confirm deleting the whole collection")
    delete.add_argument("--config", type=Path, help="spec file, to warn if the collection is still declared")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = IndexerSettings()
    configure_logging("indexer", settings.log_level, settings.log_json)
    try:
        if args.command == "run":
            return asyncio.run(cmd_run(args, settings))
        if args.command == "status":
            return cmd_status(args, settings)
        if args.command == "compact":
            return asyncio.run(cmd_compact(args, settings))
        if args.command == "validate":
            return cmd_validate(args, settings)
        if args.command == "delete":
            return asyncio.run(cmd_delete(args, settings))
        from omnirag.indexer.worker import run_worker

        return asyncio.run(run_worker(settings))
    except OmniragError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
