"""The knowledge-base spec: the bundled example is valid; bad specs fail fast naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnirag.indexer.spec import SpecError, load, parse

REPO = Path(__file__).resolve().parents[3]


def test_the_bundled_example_is_valid():
    kbs = load(REPO / "config/knowledge-bases.yaml")
    assert [kb.name for kb in kbs] == ["docs"]
    kb = kbs[0]
    assert kb.chunk_size == 800 and kb.chunk_overlap == 100 and kb.schedule == "0 3 * * *"
    assert (kb.base_dir / kb.sources[0]["path"]).resolve() == (REPO / "docs").resolve()


def test_the_design_example_is_valid(tmp_path):
    spec = {
        "knowledgeBases": [
            {
                "name": "docs",
                "sources": [
                    {"type": "local", "path": "./docs", "glob": "**/*.md"},
                    {
                        "type": "web",
                        "urls": ["https://docs.example.com/"],
                        "maxDepth": 2,
                        "maxPages": 500,
                        "sitemap": True,
                        "include": ["^https://docs\\.example\\.com/"],
                        "exclude": ["/changelog/"],
                    },
                ],
                "splitter": {"chunkSize": 800, "chunkOverlap": 100},
                "schedule": "0 3 * * *",
            }
        ]
    }
    assert parse(spec, tmp_path)[0].sources[1]["maxDepth"] == 2


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({}, "knowledgeBases"),
        (
            {"knowledgeBases": [{"name": "Bad Name", "sources": [{"type": "local", "path": "x"}]}]},
            "knowledgeBases[0].name",
        ),
        ({"knowledgeBases": [{"name": "a", "sources": []}]}, "knowledgeBases[0].sources"),
        (
            {"knowledgeBases": [{"name": "a", "sources": [{"type": "ftp", "path": "x"}]}]},
            "knowledgeBases[0].sources[0]",
        ),
        (
            {"knowledgeBases": [{"name": "a", "sources": [{"type": "web", "urls": ["file:///etc/passwd"]}]}]},
            "knowledgeBases[0].sources[0]",
        ),
        (
            {
                "knowledgeBases": [
                    {"name": "a", "sources": [{"type": "local", "path": "x"}], "splitter": {"chunkSize": 10}}
                ]
            },
            "knowledgeBases[0].splitter.chunkSize",
        ),
        (
            {
                "knowledgeBases": [
                    {
                        "name": "a",
                        "sources": [{"type": "local", "path": "x"}],
                        "splitter": {"chunkSize": 100, "chunkOverlap": 100},
                    }
                ]
            },
            "chunkOverlap",
        ),
        ({"knowledgeBases": [{"name": "a", "sources": [{"type": "local", "path": "x"}], "typo": 1}]}, "typo"),
        (
            {
                "knowledgeBases": [
                    {"name": "a", "sources": [{"type": "web", "urls": ["https://x/"], "exclude": ["("]}]}
                ]
            },
            "exclude[0]: bad regex",
        ),
        (
            {
                "knowledgeBases": [
                    {"name": "a", "sources": [{"type": "local", "path": "x"}]},
                    {"name": "a", "sources": [{"type": "local", "path": "y"}]},
                ]
            },
            "declared twice",
        ),
        (
            {
                "knowledgeBases": [
                    {"name": "a", "sources": [{"type": "local", "path": "x"}], "schedule": "daily"}
                ]
            },
            "schedule",
        ),
    ],
)
def test_bad_specs_name_the_bad_field(tmp_path, spec, fragment):
    with pytest.raises(SpecError) as err:
        parse(spec, tmp_path)
    assert fragment in err.value.message


def test_unreadable_files_are_clear(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("knowledgeBases: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load(bad)
