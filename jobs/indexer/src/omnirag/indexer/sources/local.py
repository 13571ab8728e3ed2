"""Local files as a source: walk a directory, load every matching file.

Rules:

* ``glob`` is matched against the path relative to ``root`` (posix), with pathlib's meaning: ``*`` and
  ``?`` stay within one path segment, ``**/`` spans any number of directories (including none), so
  ``"*.md"`` matches top-level files only and ``"**/*.md"`` matches at any depth.
* Hidden files and directories (a path segment starting with ``.``) are skipped silently, as is any
  path that an ``exclude`` regular expression finds (``re.search`` on the relative posix path).
* Symbolic links are never followed out of ``root``: a link whose target resolves outside it is
  reported as a ``"refused"`` problem. A link to a file inside ``root`` is read under the link's
  path; a link to a directory inside ``root`` is not descended (its target is walked anyway).
* Files come out sorted by relative path, so runs are deterministic.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from omnirag.extract import OCR
from omnirag.indexer.loaders import (
    DEFAULT_MAX_BYTES,
    SUPPORTED_SUFFIXES,
    LoadError,
    LoadLimits,
    TooLarge,
    UnsupportedFile,
    load_file,
)
from omnirag.indexer.sources import LocalSource
from omnirag.indexer.types import SourceDocument, SourceProblem


@lru_cache(maxsize=64)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a pathlib-style glob (``*``, ``?``, ``[...]``, ``**``) to a regex over posix paths."""
    pattern = pattern.strip().lstrip("/")
    while pattern.startswith("./"):
        pattern = pattern[2:]
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "*":
            if pattern.startswith("**", i):
                at_segment_start = i == 0 or pattern[i - 1] == "/"
                if at_segment_start and pattern.startswith("**/", i):
                    out.append("(?:[^/]+/)*")  # zero or more whole directories
                    i += 3
                    continue
                if at_segment_start and i + 2 == n:
                    out.append(".*")  # trailing "**": everything below
                    i += 2
                    continue
            out.append("[^/]*")
            while i < n and pattern[i] == "*":
                i += 1
            continue
        if char == "?":
            out.append("[^/]")
        elif char == "[":
            start = i + 1
            if pattern.startswith("!", start):
                start += 1
            if pattern.startswith("]", start):
                start += 1  # a leading "]" is a member, not the end
            end = pattern.find("]", start)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("!")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")
                out.append(f"[^/{body}]" if negate else f"[{body}]")
                i = end + 1
                continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class _Entry:
    rel: str  # relative posix path
    path: Path  # path as found under root (may be a symlink)
    problem: SourceProblem | None = None


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _contained(target: Path, root_real: Path) -> bool:
    return target == root_real or target.is_relative_to(root_real)


def _scan(
    root: Path, root_real: Path, matches: re.Pattern[str], excludes: list[re.Pattern[str]]
) -> list[_Entry]:
    entries: list[_Entry] = []

    def skipped(rel: str) -> bool:
        return _is_hidden(rel) or any(rx.search(rel) for rx in excludes)

    def on_error(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        try:
            rel = where.relative_to(root).as_posix()
        except ValueError:
            rel = str(where)
        if not skipped(rel):
            entries.append(_Entry(rel, where, SourceProblem(rel, f"cannot list directory: {exc.strerror}")))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=False):
        base = Path(dirpath)
        rel_base = base.relative_to(root).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        keep: list[str] = []
        for name in sorted(dirnames):
            rel = prefix + name
            if name.startswith("."):
                continue
            path = base / name
            if path.is_symlink():
                # os.walk does not descend into links; one that leaves the root is worth reporting.
                if skipped(rel):
                    continue
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    continue
                if not _contained(target, root_real):
                    entries.append(
                        _Entry(
                            rel, path, SourceProblem(rel, "symlink points outside the source root", "refused")
                        )
                    )
                continue
            keep.append(name)
        dirnames[:] = keep

        for name in filenames:
            rel = prefix + name
            if skipped(rel) or not matches.match(rel):
                continue
            path = base / name
            if path.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    entries.append(_Entry(rel, path, SourceProblem(rel, "broken symlink", "error")))
                    continue
                if not _contained(target, root_real):
                    entries.append(
                        _Entry(
                            rel, path, SourceProblem(rel, "symlink points outside the source root", "refused")
                        )
                    )
                    continue
            entries.append(_Entry(rel, path))
    entries.sort(key=lambda e: e.rel)
    return entries


def _load(
    entry: _Entry, max_bytes: int, limits: LoadLimits | None, ocr: OCR | None
) -> SourceDocument | SourceProblem:
    rel = entry.rel
    if entry.path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return SourceProblem(
            rel, f"unsupported file type {entry.path.suffix or '(no suffix)'!r}", "unsupported"
        )
    try:
        mode = entry.path.stat().st_mode  # follows an (in-root) link
    except OSError as exc:
        return SourceProblem(rel, f"cannot stat: {exc.strerror or exc}", "error")
    if not stat.S_ISREG(mode):
        # A FIFO or device would block or never end: never open one.
        return SourceProblem(rel, "not a regular file", "unsupported")
    try:
        loaded = load_file(entry.path, max_bytes=max_bytes, limits=limits, ocr=ocr)
    except TooLarge as exc:
        return SourceProblem(rel, str(exc), "too_large")
    except UnsupportedFile as exc:
        return SourceProblem(rel, str(exc), "unsupported")
    except LoadError as exc:
        return SourceProblem(rel, str(exc), "error")
    except Exception as exc:  # a loader library failing in an unforeseen way must not stop the run
        return SourceProblem(rel, f"{type(exc).__name__}: {exc}", "error")
    return SourceDocument(
        source=rel,
        title=loaded.title,
        text=loaded.text,
        metadata={"content_type": loaded.content_type, "path": rel},
    )


def iter_local(
    root: Path,
    glob: str = "**/*",
    exclude: Iterable[str] = (),
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    limits: LoadLimits | None = None,
    ocr: OCR | None = None,
) -> Iterator[SourceDocument | SourceProblem]:
    """Yield a document (or a problem) per file under ``root`` matching ``glob``, sorted by path.

    ``source`` and ``metadata["path"]`` are the path relative to ``root`` (posix). Raises
    FileNotFoundError when ``root`` does not exist, ``re.error`` for a bad ``exclude`` pattern.
    A ``root`` that is a file yields that one file. ``limits`` is the loaders' memory budget (pixels,
    PDF pages, unpacked ZIP bytes, text): a knowledge-base run passes the settings' own. ``ocr``
    reads images and scanned pages; a run passes one engine for all its files (without one, each
    file that needs OCR starts and stops an engine of its own, about a second each).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"local source root does not exist: {root} (resolved: {root.resolve()})")
    excludes = [re.compile(pattern) for pattern in exclude]

    if not root.is_dir():
        entry = _Entry(root.name, root)
        yield _load(entry, max_bytes, limits, ocr)
        return

    root_real = root.resolve()
    for entry in _scan(root, root_real, glob_to_regex(glob), excludes):
        yield entry.problem if entry.problem is not None else _load(entry, max_bytes, limits, ocr)


def iter_source(
    source: LocalSource,
    base_dir: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    limits: LoadLimits | None = None,
    ocr: OCR | None = None,
) -> Iterator[SourceDocument | SourceProblem]:
    """:func:`iter_local` over a ``type: local`` source of a spec file that is in ``base_dir``."""
    return iter_local(
        source.root(base_dir), source.glob, source.exclude, max_bytes=max_bytes, limits=limits, ocr=ocr
    )
