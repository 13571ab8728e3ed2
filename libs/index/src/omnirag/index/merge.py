"""Merging per-segment results into one collection-wide answer (issue 17).

A search over a segmented collection asks every live segment for its own top results and merges
them here. The merge is a function of the per-segment results alone (scores and int ids), so the
same code serves segments loaded in one process and, later, segments spread over several pods
whose answers come back over the network (scatter-gather): each segment's top-k holds every one of
the collection's top-k that the segment owns, so the merged top-k is exact whenever each segment's
own search is (Flat), and as good as the segments' approximate searches otherwise (HNSW, IVF-PQ).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def merge_top(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of per-segment ``(scores, int ids)`` (higher is better), best first; equal
    scores are ordered by int id, so the answer does not depend on the order of the segments.
    An id found in several parts (never, when deletions are applied) keeps its best score."""
    scores, ids, _ = merge_top_tagged([(s, i, np.zeros(len(i), dtype=np.int32)) for s, i in parts], k)
    return scores, ids


def merge_top_tagged(
    parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`merge_top` over ``(scores, int ids, tags)``, each id's tag carried along (the
    segment, or the pod, that answered it)."""
    kept = [(s, i, t) for s, i, t in parts if len(i)]
    if not kept or k <= 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    scores = np.concatenate([np.asarray(s, dtype=np.float32) for s, _, _ in kept])
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for _, i, _ in kept])
    tags = np.concatenate([np.asarray(t) for _, _, t in kept])
    order = np.lexsort((ids, -scores))
    ids, scores, tags = ids[order], scores[order], tags[order]
    listed = ids.tolist()
    if len(set(listed)) != len(listed):
        # The first of each id is its best (sorted by score): keep only those, in order.
        _, first = np.unique(ids, return_index=True)
        keep = np.sort(first)
        ids, scores, tags = ids[keep], scores[keep], tags[keep]
    return scores[:k], ids[:k], tags[:k]
