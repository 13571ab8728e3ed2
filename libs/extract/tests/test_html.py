"""HTML and Markdown to title and text, with trafilatura and html.parser as they are installed."""

from __future__ import annotations

import pytest

from omnirag.extract.html import html_document
from omnirag.extract.markdown import markdown_document, markdown_title

ARTICLE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Scheduling the indexer | Handbook</title>
<meta name="Robots" content="noindex, nofollow"><base href="/docs/"></head>
<body>
<header><span class="brand">Handbook</span>
  <nav><a href="/">Start</a> <a href="/pricing">Pricing</a></nav></header>
<aside><a href="/a">Related reading</a></aside>
<main><article>
  <h1>Scheduling the indexer</h1>
  <p>A knowledge base with a schedule is indexed by a CronJob that the chart renders from its spec.</p>
  <h2>Incremental runs</h2>
  <p>Unchanged documents are not embedded again, and documents removed at the source are deleted
  from the collection on the next run.</p>
  <table><tr><th>Field</th><th>Example</th></tr><tr><td>schedule</td><td>03:00 daily</td></tr></table>
  <p>Read <a href="spec.html#schedule">the spec</a>.</p>
</article></main>
<footer><p>All rights reserved. Subscribe to the newsletter.</p></footer>
<script>var tracking = "never shown";</script>
</body></html>
"""


def test_main_text_title_links_and_meta() -> None:
    page = html_document(ARTICLE, url="https://handbook.example.com/indexer")
    assert page.title == "Scheduling the indexer"  # the page's own title, without the site's name
    assert "indexed by a CronJob that the chart renders" in page.text
    assert "## Incremental runs" in page.text  # Markdown headings
    assert "schedule" in page.text and "03:00 daily" in page.text  # the table
    for boilerplate in ("Pricing", "Related reading", "newsletter", "tracking"):
        assert boilerplate not in page.text
    assert page.links == ["/", "/pricing", "/a", "spec.html#schedule"]  # navigation's links too
    assert page.base == "/docs/"
    assert page.meta == {"robots": "noindex, nofollow"}  # names in lower case


def test_the_fallback_text_and_titles(monkeypatch: pytest.MonkeyPatch) -> None:
    import trafilatura

    monkeypatch.setattr(trafilatura, "extract", lambda *args, **kwargs: None)
    page = html_document(
        "<html><body><nav>Menu Home About</nav><h1>Only &amp; Heading</h1>"
        "<p>First paragraph.</p><p>Second <b>bold</b><br>paragraph.</p>"
        "<script>alert('x')</script><footer>Footer text</footer></body></html>"
    )
    assert page.title == "Only & Heading"
    assert page.text == "# Only & Heading\n\nFirst paragraph.\n\nSecond bold\nparagraph."
    monkeypatch.setattr(trafilatura, "extract_metadata", lambda *args, **kwargs: None)
    assert html_document("<title> Plain   title </title><h1>Heading</h1>").title == "Plain title"
    assert html_document("<h1>Heading</h1>").title == "Heading"
    assert html_document("<p>no title at all</p>").title is None


def test_markdown_titles_and_front_matter() -> None:
    assert markdown_title("intro\n\n```\n# not a title\n```\n# Real Title #\n") == "Real Title"
    assert markdown_title("Big Title\n=========\n\ntext") == "Big Title"
    assert markdown_title("## only a second level\ntext") is None
    doc = markdown_document("---\ntitle: From Front Matter\ntags: [a]\n---\n\n# Heading\n\nbody")
    assert (doc.title, doc.text) == ("From Front Matter", "# Heading\n\nbody")
    doc = markdown_document("---\nauthor: someone\n---\n# Heading\nbody")
    assert (doc.title, doc.text) == ("Heading", "# Heading\nbody")
    assert markdown_document("---\n: not yaml [\n---\n# H").title == "H"  # broken front matter stays text
    assert markdown_document("plain").title is None
