"""The local-files source on a real directory tree (no OCR here: the loaders' tests cover it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omnirag.indexer.sources import LocalSource
from omnirag.indexer.sources.local import glob_to_regex, iter_local, iter_source
from omnirag.indexer.types import SourceDocument, SourceProblem

MAX = 1024 * 1024


def _write(root: Path, rel: str, text: str = "hello") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _by_source(items: list[SourceDocument | SourceProblem]) -> dict[str, SourceDocument | SourceProblem]:
    return {item.source: item for item in items}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    _write(root, "README.md", "# Read Me\n\nTop-level readme.")
    _write(root, "guide/install.md", "# Install\n\nRun the installer.")
    _write(root, "guide/deep/faq.txt", "Questions and answers.")
    _write(
        root, "guide/page.html", "<html><head><title>Page</title></head><body><p>Body text.</p></body></html>"
    )
    _write(root, "drafts/wip.md", "# WIP\n\nnot ready")
    _write(root, ".hidden.md", "# secret")
    _write(root, ".git/config.md", "# git internals")
    _write(root, "guide/.cache/x.md", "# cached")
    _write(root, "tools/script.py", "print('hi')")
    _write(root, "broken.pdf", "%PDF-1.4 not really")
    return root


def test_walks_documents_sorted(tree: Path) -> None:
    items = list(iter_local(tree, max_bytes=MAX))
    sources = [item.source for item in items]
    assert sources == sorted(sources)
    assert sources == [
        "README.md",
        "broken.pdf",
        "drafts/wip.md",
        "guide/deep/faq.txt",
        "guide/install.md",
        "guide/page.html",
        "tools/script.py",
    ]
    found = _by_source(items)
    readme = found["README.md"]
    assert isinstance(readme, SourceDocument)
    assert readme.title == "Read Me"
    assert readme.text == "# Read Me\n\nTop-level readme."
    assert readme.metadata == {"content_type": "text/markdown", "path": "README.md"}
    faq = found["guide/deep/faq.txt"]
    assert isinstance(faq, SourceDocument)
    assert faq.metadata["path"] == "guide/deep/faq.txt" and faq.title == "faq"
    page = found["guide/page.html"]
    assert isinstance(page, SourceDocument) and page.title == "Page" and "Body text." in page.text

    unsupported = found["tools/script.py"]
    assert isinstance(unsupported, SourceProblem) and unsupported.kind == "unsupported"
    broken = found["broken.pdf"]
    assert isinstance(broken, SourceProblem) and broken.kind == "error" and "PDF" in broken.reason


def test_deterministic(tree: Path) -> None:
    first = list(iter_local(tree, max_bytes=MAX))
    second = list(iter_local(tree, max_bytes=MAX))
    assert first == second


def test_glob(tree: Path) -> None:
    assert [d.source for d in iter_local(tree, "*.md", max_bytes=MAX)] == ["README.md"]
    assert [d.source for d in iter_local(tree, "**/*.md", max_bytes=MAX)] == [
        "README.md",
        "drafts/wip.md",
        "guide/install.md",
    ]
    assert [d.source for d in iter_local(tree, "guide/**", max_bytes=MAX)] == [
        "guide/deep/faq.txt",
        "guide/install.md",
        "guide/page.html",
    ]


def test_glob_to_regex() -> None:
    cases = [
        ("**/*.md", "a.md", True),
        ("**/*.md", "x/y/a.md", True),
        ("*.md", "x/a.md", False),
        ("docs/**/*.txt", "docs/a.txt", True),
        ("docs/**/*.txt", "docs/a/b/c.txt", True),
        ("docs/**/*.txt", "other/docs/a.txt", False),
        ("[!a]?.md", "bc.md", True),
        ("[!a]?.md", "ac.md", False),
        ("file?.txt", "file/.txt", False),
        ("./notes/*.md", "notes/n.md", True),
    ]
    for pattern, path, expected in cases:
        assert bool(glob_to_regex(pattern).match(path)) is expected, (pattern, path)


def test_exclude_regex(tree: Path) -> None:
    sources = [
        item.source for item in iter_local(tree, exclude=[r"^drafts/", r"\.py$", "broken"], max_bytes=MAX)
    ]
    assert sources == ["README.md", "guide/deep/faq.txt", "guide/install.md", "guide/page.html"]


def test_a_local_source_is_read_from_its_spec_files_directory(tree: Path) -> None:
    # The spec file sits beside the tree; its source names the tree relative to it.
    source = LocalSource(path="./kb", glob="**/*.md", exclude=(r"^drafts/",))
    assert [d.source for d in iter_source(source, tree.parent, max_bytes=MAX)] == [
        "README.md",
        "guide/install.md",
    ]


def test_hidden_skipped(tree: Path) -> None:
    sources = {item.source for item in iter_local(tree, "**/*.md", max_bytes=MAX)}
    assert not any("hidden" in s or ".git" in s or ".cache" in s for s in sources)


def test_too_large(tmp_path: Path) -> None:
    _write(tmp_path, "small.txt", "x" * 100)
    _write(tmp_path, "big.txt", "x" * 5000)
    found = _by_source(list(iter_local(tmp_path, max_bytes=4096)))
    big = found["big.txt"]
    assert isinstance(big, SourceProblem) and big.kind == "too_large"
    assert isinstance(found["small.txt"], SourceDocument)


def test_symlinks_escaping_root_refused(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    outside = tmp_path / "outside"
    _write(root, "inside.md", "# Inside")
    _write(outside, "secret.md", "# Secret")
    (root / "escape.md").symlink_to(outside / "secret.md")
    (root / "escape-dir").symlink_to(outside, target_is_directory=True)
    (root / "relative-escape.md").symlink_to(Path("..") / "outside" / "secret.md")
    (root / "alias.md").symlink_to(root / "inside.md")  # stays inside: read under its own name
    (root / "dangling.md").symlink_to(root / "nowhere.md")

    items = list(iter_local(root, max_bytes=MAX))
    found = _by_source(items)
    assert [item.source for item in items] == [
        "alias.md",
        "dangling.md",
        "escape-dir",
        "escape.md",
        "inside.md",
        "relative-escape.md",
    ]
    for name in ("escape.md", "escape-dir", "relative-escape.md"):
        problem = found[name]
        assert isinstance(problem, SourceProblem) and problem.kind == "refused", name
    assert not any(isinstance(i, SourceDocument) and "Secret" in i.text for i in items)
    alias = found["alias.md"]
    assert isinstance(alias, SourceDocument) and alias.title == "Inside"
    dangling = found["dangling.md"]
    assert isinstance(dangling, SourceProblem) and dangling.kind == "error"


def test_symlinked_root_and_inner_dir_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    _write(real, "a/doc.md", "# Doc")
    (real / "b").symlink_to(real / "a", target_is_directory=True)  # inside the root: not walked twice
    link_root = tmp_path / "link-root"
    link_root.symlink_to(real, target_is_directory=True)
    items = list(iter_local(link_root, max_bytes=MAX))
    assert [(type(i).__name__, i.source) for i in items] == [("SourceDocument", "a/doc.md")]


def test_fifo_is_not_opened(tmp_path: Path) -> None:
    _write(tmp_path, "ok.txt", "fine")
    os.mkfifo(tmp_path / "pipe.txt")
    found = _by_source(list(iter_local(tmp_path, max_bytes=MAX)))
    pipe = found["pipe.txt"]
    assert isinstance(pipe, SourceProblem) and pipe.kind == "unsupported"
    assert isinstance(found["ok.txt"], SourceDocument)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(iter_local(tmp_path / "nope", max_bytes=MAX))


def test_root_is_a_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "single.md", "# Single\n\nbody")
    items = list(iter_local(path, max_bytes=MAX))
    assert len(items) == 1
    item = items[0]
    assert isinstance(item, SourceDocument) and item.source == "single.md" and item.title == "Single"


def test_chinese_file_names_and_gb18030(tmp_path: Path) -> None:
    (tmp_path / "说明").mkdir()
    (tmp_path / "说明" / "介绍.txt").write_bytes("这是一个中文文档。".encode("gb18030"))
    (doc,) = list(iter_local(tmp_path, max_bytes=MAX))
    assert isinstance(doc, SourceDocument)
    assert doc.source == "说明/介绍.txt" and doc.text == "这是一个中文文档。"


def test_a_knowledge_base_walk_loads_within_the_settings_budget(tmp_path: Path) -> None:
    # A knowledge-base run reads with the same budget as the upload worker (INDEXER_MAX_*), not the
    # loaders' defaults: an operator's smaller pixel cap must hold for the files of a spec too.
    from PIL import Image

    from omnirag.indexer.config import IndexerSettings
    from omnirag.indexer.loaders import LoadLimits

    root = tmp_path / "kb"
    root.mkdir()
    Image.new("1", (1200, 1000), 1).save(root / "scan.png")  # 1.2 MP: over a 1 MP cap
    _write(root, "notes.md", "# Notes\n\nplain text")
    settings = IndexerSettings(max_image_pixels=1_000_000)
    items = _by_source(list(iter_local(root, limits=LoadLimits.from_settings(settings))))
    scan = items["scan.png"]
    assert isinstance(scan, SourceProblem) and "pixel" in scan.reason.lower(), scan
    assert isinstance(items["notes.md"], SourceDocument)
