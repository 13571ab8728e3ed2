"""Compaction: merging a collection's small segments into larger ones (issue 17).

Every commit adds a segment, so without merging a collection that takes one upload at a time would
end up with thousands. A tiered policy (as Lucene's) keeps their number logarithmic in the
collection's size: segments are grouped in tiers by size (tier t holds segments of
``min_segment * fanout**t`` chunks up to ``fanout`` times that), and a tier with ``fanout``
segments or more is merged into one segment of the next tier. A segment whose chunks are mostly
deleted is rewritten alone, to give its disk back.

Compaction never blocks a commit or a search: the merged segment is built from an immutable
version without any lock — the long part — and installed; only the swap takes the writers' lock
(``lock``, the indexer's): it re-reads the version being served, which may have gone on since, and
publishes it with the merged segments replaced by the new one. Deletions made meanwhile in the
merged segments carry over as deletions of the new segment (a chunk keeps its int id wherever it
is stored). When a merged segment is no longer listed (another compaction), the swap gives up and
the new segment is left for :func:`omnirag.index.store.prune_versions`.

Crash-safe as a commit is: a kill leaves a stray temporary directory, an installed segment no
version lists (both pruned after the grace period), or a complete published version.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from omnirag.index.docstore import DocStore
from omnirag.index.manifest import Manifest, SegmentRef, hash_tree, sha256_file
from omnirag.index.segment import (
    DELETIONS,
    SEGMENT_INFO,
    build_segment,
    fsync_path,
    fsync_tree,
    install_segment,
    new_segment_id,
    read_deletions,
    segment_path,
    write_deletions,
)
from omnirag.index.store import TMP_DIR, load_manifest, new_version_id, publish, read_current, version_path

log = logging.getLogger("omnirag.index.compaction")

Lock = Callable[[], AbstractContextManager[object]]


@dataclass(frozen=True)
class TieredPolicy:
    """When to merge: ``fanout`` segments of one tier (or more) are merged into one; a segment with
    more than ``max_deleted_share`` of its chunks deleted is rewritten."""

    fanout: int = 10
    min_segment: int = 1000
    max_deleted_share: float = 0.5

    def tier(self, live: int) -> int:
        return int(math.log(max(live, self.min_segment) / self.min_segment, self.fanout) + 1e-9)

    def plan(self, segments: Sequence[SegmentRef]) -> list[str]:
        """The ids of the segments to merge next (empty: nothing to do); the smallest tier first."""
        tiers: dict[int, list[SegmentRef]] = {}
        for ref in segments:
            tiers.setdefault(self.tier(ref.documents - ref.deleted), []).append(ref)
        for tier in sorted(tiers):
            if len(tiers[tier]) >= self.fanout:
                # The smallest of the tier: a large segment that only rounds down into it (a floor
                # tier holds everything under min_segment * fanout) is not rewritten for tiny ones.
                smallest = sorted(tiers[tier], key=lambda r: r.documents - r.deleted)[: self.fanout]
                chosen = {r.id for r in smallest}
                return [r.id for r in segments if r.id in chosen]
        for ref in segments:
            if ref.documents and ref.deleted / ref.documents > self.max_deleted_share:
                return [ref.id]
        return []


@dataclass(frozen=True)
class CompactionResult:
    version: str | None  # the version published, None when there was nothing to do or it gave up
    merged: list[str]  # the segments replaced
    segment: str | None  # the new one
    chunks: int  # live chunks written into it
    seconds: float
    gave_up: str | None = None


def _copy_live(
    root: Path, name: str, version_dir: Path, refs: Sequence[SegmentRef], target: DocStore, dim: int
) -> int:
    """Copy the live chunks of ``refs`` (as ``version_dir`` sees them) into ``target``."""
    copied = 0
    for ref in refs:
        deleted = read_deletions(version_dir, ref.deletions)
        source = DocStore.open_readonly(segment_path(root, name, ref.id) / "docs.sqlite", dim)
        try:
            live_ids = np.load(segment_path(root, name, ref.id) / "postings" / "ids.npy", allow_pickle=False)
            if len(deleted):
                live_ids = live_ids[~np.isin(live_ids, deleted)]
            for start in range(0, len(live_ids), 4096):
                rows = source.rows_for(live_ids[start : start + 4096])
                target.insert_rows(rows)
                copied += len(rows)
        finally:
            source.close()
    return copied


def compact(
    root: Path,
    name: str,
    *,
    lock: Lock | None = None,
    policy: TieredPolicy | None = None,
    full: bool = False,
    gpu: bool = False,
) -> CompactionResult:
    """Merge the segments ``policy`` picks (every segment with ``full``) of the version being served
    into one, and publish the version that lists it instead. ``lock`` is the writers' lock, held only
    for the swap; without one the caller promises no writer runs."""
    started = time.perf_counter()
    policy = policy or TieredPolicy()
    base = read_current(root, name)
    if base is None:
        return CompactionResult(None, [], None, 0, 0.0, "the collection has no version")
    base_dir = version_path(root, name, base)
    manifest = load_manifest(root, name, base)
    if manifest.format_version < 2:
        return CompactionResult(None, [], None, 0, 0.0, "format 1: commit once to install it as a segment")
    chosen = [r.id for r in manifest.segments] if full else policy.plan(manifest.segments)
    if full and len(chosen) == 1 and manifest.segments[0].deleted == 0:
        chosen = []
    if not chosen:
        return CompactionResult(None, [], None, 0, time.perf_counter() - started)
    refs = [r for r in manifest.segments if r.id in set(chosen)]
    dim = manifest.embedding.dimension
    segment = new_segment_id()
    directory = root / name / TMP_DIR / segment
    directory.mkdir(parents=True)
    try:
        target = DocStore.create(directory / "docs.sqlite", dim)
        try:
            chunks = _copy_live(root, name, base_dir, refs, target, dim)
        finally:
            target.close()
        build_segment(directory, segment, dim, manifest.index, gpu=gpu)
        digest = install_segment(root, name, directory, segment)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    # What was already deleted when the merge read the segments: not copied, so not carried over.
    already = [read_deletions(base_dir, r.deletions) for r in refs]
    read_deleted = np.unique(np.concatenate(already)) if already else np.zeros(0, dtype=np.int64)
    new = SegmentRef(id=segment, info_sha256=digest, documents=chunks)
    with lock() if lock is not None else contextlib.nullcontext():
        version, gave_up = _swap(root, name, chosen, new, read_deleted)
    seconds = time.perf_counter() - started
    log.info(
        "compacted" if version else "compaction gave up",
        extra={
            "collection": name,
            "merged": len(chosen),
            "segment": segment,
            "chunks": chunks,
            "seconds": round(seconds, 3),
            "reason": gave_up,
        },
    )
    return CompactionResult(version, chosen, segment, chunks, seconds, gave_up)


def _swap(
    root: Path, name: str, merged: list[str], new: SegmentRef, read_deleted: np.ndarray
) -> tuple[str | None, str | None]:
    """Publish the version being served with ``merged`` replaced by ``new`` (under the writers'
    lock). ``read_deleted``: the int ids already deleted from ``merged`` when the merge read them.
    Returns (the version, None) or (None, why it gave up)."""
    current = read_current(root, name)
    assert current is not None
    manifest = load_manifest(root, name, current)
    listed = {r.id: r for r in manifest.segments}
    if not all(m in listed for m in merged):
        return None, "a merged segment is no longer listed"
    info = segment_path(root, name, new.id) / SEGMENT_INFO
    if not info.is_file() or sha256_file(info) != new.info_sha256:
        # Pruned while the swap waited for the lock (a writer held it past the grace period).
        return None, "the merged segment was pruned before the swap"
    current_dir = version_path(root, name, current)
    version = new_version_id()
    tmp = root / name / TMP_DIR / version
    tmp.mkdir(parents=True)
    try:
        # Chunks deleted from the merged segments since the merge read them (replaced or deleted by a
        # writer meanwhile) are deleted in the new one. An id deleted before is an older copy of a
        # chunk whose newer copy the merge took: not carried.
        carried = [read_deletions(current_dir, listed[m].deletions) for m in merged]
        late = np.unique(np.concatenate(carried)) if carried else np.zeros(0, dtype=np.int64)
        late = late[~np.isin(late, read_deleted)]
        new_ids = np.load(segment_path(root, name, new.id) / "postings" / "ids.npy", allow_pickle=False)
        late = late[np.isin(late, new_ids)]
        refs: list[SegmentRef] = []
        placed = False
        for ref in manifest.segments:
            if ref.id in merged:
                if not placed:  # the new segment takes the place of the oldest merged one
                    deletions = write_deletions(tmp, new.id, late) if len(late) else None
                    refs.append(new.model_copy(update={"deleted": len(late), "deletions": deletions}))
                    placed = True
                continue
            if ref.deletions is not None:
                (tmp / DELETIONS).mkdir(exist_ok=True)
                shutil.copy2(current_dir / ref.deletions, tmp / ref.deletions)
            refs.append(ref)
        extra = current_dir / "extra"
        if extra.is_dir():
            shutil.copytree(extra, tmp / "extra")
        total = sum(r.documents - r.deleted for r in refs)
        out = manifest.model_copy(
            update={
                "version": version,
                "parent": current,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "counts": {
                    "documents": total,
                    "segments": len(refs),
                    "deleted": sum(r.deleted for r in refs),
                },
                "segments": refs,
                "files": hash_tree(tmp),
            }
        )
        (tmp / "manifest.json").write_text(
            Manifest.model_validate(out.model_dump()).model_dump_json(indent=2)
        )
        fsync_tree(tmp)
        versions = root / name / "versions"
        final = versions / version
        tmp.rename(final)
        fsync_path(versions)
        fsync_path(tmp.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(root, name, version)
    return version, None
