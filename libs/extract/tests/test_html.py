"""HTML and Markdown to title and text, with trafilatura and html.parser as they are installed."""

from __future__ import annotations

import pytest

from omnirag.extract.html import html_document
from omnirag.extract.markdown import markdown_document, markdown_title

ARTICLE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Deploying omnirag | Docs</title>
<meta name="Robots" content="noindex, nofollow"><base href="/docs/"></head>
<body>
<header><div class="logo">omnirag</div>
  <nav><ul><li><a href="/">Home</a></li><li><a href="/pricing">Pricing</a></li></ul></nav></header>
<aside class="sidebar"><a href="/a">Sidebar link one</a></aside>
<main><article>
  <h1>Deploying omnirag</h1>
  <p>The gateway listens on port 8000 and forwards chat requests to the configured model server.</p>
  <h2>Helm chart</h2>
  <p>Install the chart with helm install and set the embedding model in the values file
  before the first run.</p>
  <table><tr><th>Service</th><th>Port</th></tr><tr><td>gateway</td><td>8000</td></tr>
  <tr><td>retriever</td><td>8001</td></tr></table>
  <p>Read <a href="helm.html#values">the values</a>.</p>
</article></main>
<footer><p>Copyright 2024 Example Corp. All rights reserved. Subscribe to our newsletter.</p></footer>
<script>var tracking = "should never appear";</script>
</body></html>
"""


def test_main_text_title_links_and_meta() -> None:
    page = html_document(ARTICLE, url="https://docs.example.com/deploy")
    assert page.title == "Deploying omnirag"  # the page's own title, without the site's name
    assert "The gateway listens on port 8000" in page.text
    assert "## Helm chart" in page.text  # Markdown headings
    assert "retriever" in page.text and "8001" in page.text  # the table
    for boilerplate in ("Pricing", "Sidebar link", "newsletter", "tracking"):
        assert boilerplate not in page.text
    assert page.links == ["/", "/pricing", "/a", "helm.html#values"]  # navigation's links too
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
