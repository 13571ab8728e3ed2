"""Uploads against a real Redis: files land in the uploads directory, the job status and the ingest
request are queued together, limits and keys are enforced, nothing is left behind on failure — and
one upload goes all the way through the real indexer worker into a searchable collection."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import select
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from omnirag_harness.indexer import WorkerThread
from omnirag_harness.processes import free_port
from omnirag_harness.servers import metric_value, redis_server, serve_in_thread

from omnirag.core.schemas.ingest import INGEST_STREAM, JOB_TTL_SECONDS, IngestRequest, job_key
from omnirag.gateway.app import create_app
from omnirag.gateway.config import GatewaySettings

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITED_KEY = "limited-key-0123456789"
LIMITED = {"Authorization": f"Bearer {LIMITED_KEY}"}
API_KEYS = json.dumps([{"name": "limited", "key": LIMITED_KEY, "collections": ["other"]}])
DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port


def settings_for(redis_url: str, uploads: Path, **overrides) -> GatewaySettings:
    values = {
        "redis_url": redis_url,
        "uploads_dir": uploads,
        "dev_key": KEY,
        "api_keys": API_KEYS,
        "llm_base_url": DOWN + "/v1",
        "embedder_url": DOWN,
        "retriever_url": DOWN,
        "log_json": False,
    } | overrides
    return GatewaySettings(**values)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """This module's own Redis (it shadows any shared one), so that tests may flush it."""
    with redis_server(str(tmp_path_factory.mktemp("ingest-redis"))) as url:
        yield url


@pytest.fixture
def embedder(request) -> Iterator[str]:
    """The session's embedder when the suite has one, else one for this test."""
    try:
        yield request.getfixturevalue("embedder_url")
        return
    except pytest.FixtureLookupError:
        pass
    from omnirag.embedder.app import create_app as create_embedder
    from omnirag.embedder.config import EmbedderSettings

    with serve_in_thread(create_embedder(EmbedderSettings(log_json=False))) as base:
        yield base


@pytest.fixture
def r(redis_url) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def uploads(tmp_path) -> Path:
    return tmp_path / "uploads"


@pytest.fixture
def client(redis_url, uploads, r) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(redis_url, uploads))) as c:
        yield c


def stream_entries(r: redis.Redis) -> list[IngestRequest]:
    return [IngestRequest.model_validate(fields) for _, fields in r.xrange(INGEST_STREAM)]


def stored_files(uploads: Path) -> list[Path]:
    return [p for p in uploads.rglob("*") if p.is_file()] if uploads.exists() else []


def test_file_upload_is_stored_and_queued(client, r, uploads):
    content = b"# Parking\n\nVisitors park behind building C.\n"
    res = client.post(
        "/v1/collections/team-docs/documents",
        headers=AUTH,
        files={"file": ("../Team Notes.MD", content, "text/markdown")},
        data={"title": "Parking rules"},
    )
    assert res.status_code == 202, res.text
    body = res.json()
    job_id = body["job_id"]
    assert body == {
        "job_id": job_id,
        "status": "queued",
        "collection": "team-docs",
        "source": "upload/Team Notes.MD",
        "status_url": f"/v1/ingest/{job_id}",
    }
    assert res.headers["location"] == body["status_url"]

    # Stored under <uploads>/<collection>/<job id><ext>, never under the client's name.
    (path,) = stored_files(uploads)
    assert path == uploads / "team-docs" / f"{job_id}.md"
    assert path.read_bytes() == content
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0  # nothing for other users

    (req,) = stream_entries(r)
    assert req.job_id == job_id
    assert req.kind == "file"
    assert req.collection == "team-docs"
    assert req.path == f"team-docs/{job_id}.md"
    assert (uploads / req.path).read_bytes() == content
    assert req.source == "upload/Team Notes.MD"
    assert req.title == "Parking rules"
    assert 0 < r.ttl(job_key(job_id)) <= JOB_TTL_SECONDS

    status = client.get(body["status_url"], headers=AUTH)
    assert status.status_code == 200, status.text
    st = status.json()
    assert st["status"] == "queued"
    assert st["collection"] == "team-docs"
    assert st["source"] == "upload/Team Notes.MD"
    assert st["version"] is None and st["chunks"] is None and st["error"] is None
    assert isinstance(st["updated_at"], float)

    metrics = client.get("/metrics").text
    assert metric_value(metrics, "omnirag_gateway_ingest_jobs_total", 'kind="file"') == 1


def test_form_source_overrides_the_file_name(client, r):
    res = client.post(
        "/v1/collections/docs/documents",
        headers=AUTH,
        files={"file": ("notes.txt", b"plain words", "text/plain")},
        data={"source": "wiki/onboarding"},
    )
    assert res.status_code == 202, res.text
    (req,) = stream_entries(r)
    assert req.source == "wiki/onboarding"
    assert req.title is None  # the indexer takes the document's own title, else the file name


def test_text_upload(client, r, uploads):
    res = client.post(
        "/v1/collections/docs/documents",
        headers=AUTH,
        json={"text": "The cafeteria serves pie on Fridays.", "title": "Cafeteria"},
    )
    assert res.status_code == 202, res.text
    body = res.json()
    job_id = body["job_id"]
    assert body["source"] == f"text/{job_id}"
    (req,) = stream_entries(r)
    assert req.kind == "text" and req.text == "The cafeteria serves pie on Fridays."
    assert req.title == "Cafeteria" and req.path is None
    assert stored_files(uploads) == []
    assert client.get(f"/v1/ingest/{job_id}", headers=AUTH).json()["status"] == "queued"

    named = client.post(
        "/v1/collections/docs/documents", headers=AUTH, json={"text": "x", "source": "notes/1"}
    )
    assert named.status_code == 202 and named.json()["source"] == "notes/1"
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "omnirag_gateway_ingest_jobs_total", 'kind="text"') == 2


@pytest.mark.parametrize(
    "payload",
    [
        {"text": "   "},
        {"text": ""},
        {"source": "x"},
        {"text": "ok", "colour": "red"},
        {"text": "x", "title": "t" * 2000},
        [1, 2],
    ],
)
def test_bad_text_is_refused(client, r, payload):
    res = client.post("/v1/collections/docs/documents", headers=AUTH, json=payload)
    assert res.status_code == 422, res.text
    assert res.json()["error"]["code"] == "invalid_input"
    assert stream_entries(r) == []


def multipart(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, dict[str, str]]:
    """A hand-made multipart body (name, filename or None, content) and its content type."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--XX\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + b"--XX--\r\n", {"content-type": "multipart/form-data; boundary=XX"}


def test_refusals_leave_nothing_behind(client, r, uploads):
    def post(*parts: tuple[str, str | None, bytes], body: bytes | None = None, **headers: str):
        if parts:
            body, ctype = multipart(*parts)
            headers |= ctype
        return client.post("/v1/collections/docs/documents", headers=AUTH | headers, content=body)

    def code(res: httpx.Response) -> str:
        return res.json()["error"]["code"]

    bad_type = post(("file", "tool.exe", b"MZ..."))
    assert bad_type.status_code == 415, bad_type.text
    assert code(bad_type) == "unsupported_media_type"
    assert ".md" in bad_type.json()["error"]["message"]
    no_ext = post(("file", "README", b"text"))
    assert no_ext.status_code == 415

    empty = post(("file", "empty.md", b""))
    assert empty.status_code == 422 and code(empty) == "empty_file"

    only_fields = post(("title", None, b"t"), ("source", None, b"s"))
    assert only_fields.status_code == 422 and code(only_fields) == "missing_file"

    not_a_file = post(("file", None, b"just text"))
    assert not_a_file.status_code == 422 and code(not_a_file) == "missing_file"

    other_file = post(("attachment", "a.md", b"x"))
    assert other_file.status_code == 422 and code(other_file) == "unexpected_file_field"

    two = post(("file", "a.md", b"a"), ("file", "b.md", b"b"))
    assert two.status_code == 422 and code(two) == "too_many_files"

    # The file is written before the oversized field after it is seen: it must be removed.
    big_field = post(("file", "a.md", b"x"), ("title", None, b"t" * 20_000))
    assert big_field.status_code == 413 and code(big_field) == "field_too_large"

    long_source = post(("file", "a.md", b"x"), ("source", None, b"s" * 2000))
    assert long_source.status_code == 422

    truncated = post(
        body=b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.md"\r\n\r\nhello',
        **{"content-type": "multipart/form-data; boundary=XX"},
    )
    assert truncated.status_code == 422 and code(truncated) == "invalid_multipart"

    garbage = post(body=b"garbage", **{"content-type": "multipart/form-data; boundary=XX"})
    assert garbage.status_code == 422 and code(garbage) == "invalid_multipart"

    no_boundary = post(body=b"x", **{"content-type": "multipart/form-data"})
    assert no_boundary.status_code == 422

    form = post(body=b"text=hello", **{"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415

    bad_collection = client.post("/v1/collections/Bad%20Name/documents", headers=AUTH, json={"text": "x"})
    assert bad_collection.status_code == 422 and code(bad_collection) == "invalid_collection"
    # A final newline once slipped past the gateway's own check ("$" before "\n"), not the worker's.
    newline = client.post("/v1/collections/docs%0A/documents", headers=AUTH, json={"text": "x"})
    assert newline.status_code == 422 and code(newline) == "invalid_collection"

    assert stored_files(uploads) == []
    assert stream_entries(r) == []

    control = post(("file", "a.md", b"x"))  # the same upload, well formed, is fine
    assert control.status_code == 202, control.text


def test_too_large_is_413_and_leaves_no_file(redis_url, uploads, r):
    settings = settings_for(redis_url, uploads, max_upload_bytes=1024)
    with TestClient(create_app(settings)) as client:
        # Within the form allowance, so the limit trips while the body is parsed.
        res = client.post(
            "/v1/collections/docs/documents",
            headers=AUTH,
            files={"file": ("big.md", b"x" * 4096, "text/markdown")},
        )
        assert res.status_code == 413, res.text
        assert res.json()["error"]["code"] == "file_too_large"
        # Far past it: refused from Content-Length before a byte is read.
        huge = client.post(
            "/v1/collections/docs/documents",
            headers=AUTH,
            files={"file": ("big.md", b"x" * (512 * 1024), "text/markdown")},
        )
        assert huge.status_code == 413
        exact = client.post(
            "/v1/collections/docs/documents",
            headers=AUTH,
            files={"file": ("ok.md", b"x" * 1024, "text/markdown")},
        )
        assert exact.status_code == 202
    assert [p.name for p in stored_files(uploads)] == [exact.json()["job_id"] + ".md"]
    assert len(stream_entries(r)) == 1


@pytest.mark.parametrize(
    ("limits", "code"),
    [
        ({"max_upload_bytes": 64 * 1024}, "file_too_large"),
        # The service-wide body bound trips first: still 413, still nothing left on disk.
        ({"max_upload_bytes": 1024 * 1024, "max_body_bytes": 64 * 1024}, "payload_too_large"),
    ],
)
def test_too_large_mid_stream_removes_the_partial_file(redis_url, uploads, r, limits, code):
    """Over real HTTP with a chunked body (no Content-Length), so that part of the file is on
    disk when the limit trips."""
    settings = settings_for(redis_url, uploads, **limits)
    head = b'--XX\r\nContent-Disposition: form-data; name="file"; filename="big.md"\r\n\r\n'
    seen_on_disk: list[int] = []

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(40):  # 40 x 4 KiB: well past 64 KiB
            yield b"y" * 4096
            seen_on_disk.append(len(stored_files(uploads)))
            time.sleep(0.005)
        yield b"\r\n--XX--\r\n"

    with serve_in_thread(create_app(settings), ready_path="/healthz") as base:
        res = httpx.post(
            base + "/v1/collections/docs/documents",
            headers=AUTH | {"content-type": "multipart/form-data; boundary=XX"},
            content=body(),
            timeout=30,
        )
        assert res.status_code == 413, res.text
        assert res.json()["error"]["code"] == code
        assert max(seen_on_disk) == 1  # the file was being written ...
    assert stored_files(uploads) == []  # ... and is gone
    assert stream_entries(r) == []


FILE_PART = b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.md"\r\n\r\n# A\n\ntext\r\n'


def field_part(name: str, value: bytes, *headers: bytes) -> bytes:
    head = b"".join(h + b"\r\n" for h in headers)
    return (
        f'--XX\r\nContent-Disposition: form-data; name="{name}"\r\n'.encode()
        + head
        + b"\r\n"
        + value
        + b"\r\n"
    )


@pytest.mark.parametrize(
    ("body", "boundary", "status", "code"),
    [
        # The file is on disk when each of these trips, after it: it must go.
        (b"".join(field_part(f"extra{i}", b"v") for i in range(9)), "XX", 422, "too_many_fields"),
        (field_part("note", b"n" * (8 * 1024 + 1)), "XX", 413, "field_too_large"),
        (field_part("note", b"n", b"X-Pad: " + b"p" * 5000), "XX", 422, "invalid_multipart"),
        (
            field_part("note", b"n", *[f"X-H{i}: v".encode() for i in range(9)]),
            "XX",
            422,
            "invalid_multipart",
        ),
        (b"--XX\r\nContent-Type: text/plain\r\n\r\nno name\r\n", "XX", 422, "invalid_multipart"),
        (field_part("title", b"\xff\xfe not UTF-8"), "XX", 422, "invalid_multipart"),
        # Longer than the parser takes (RFC 2046: at most 70): refused before a byte is read.
        (b"", "B" * 300, 422, "invalid_multipart"),
    ],
    ids=[
        "too many fields",
        "a field too long",
        "a part header too long",
        "too many part headers",
        "a part without a name",
        "a field not UTF-8",
        "a boundary too long",
    ],
)
def test_each_multipart_limit_is_refused_with_its_code(client, r, uploads, body, boundary, status, code):
    res = client.post(
        "/v1/collections/docs/documents",
        headers=AUTH | {"content-type": f"multipart/form-data; boundary={boundary}"},
        content=FILE_PART + body + b"--XX--\r\n",
    )
    assert res.status_code == status, res.text
    assert res.json()["error"]["code"] == code
    assert stored_files(uploads) == []
    assert stream_entries(r) == []


def test_multipart_limits_are_inclusive(client, r):
    """Eight fields beside the file, each up to 8 KiB (one ignored: only source and title are read)."""
    fields = [field_part("note", b"n" * (8 * 1024))] + [field_part(f"extra{i}", b"v") for i in range(7)]
    res = client.post(
        "/v1/collections/docs/documents",
        headers=AUTH | {"content-type": "multipart/form-data; boundary=XX"},
        content=FILE_PART + b"".join(fields) + b"--XX--\r\n",
    )
    assert res.status_code == 202, res.text
    assert len(stream_entries(r)) == 1


def endless_upload(base: str, first: bytes, filler: bytes, give_up: int) -> tuple[bytes, int]:
    """POST ``first``, then ``filler`` again and again, as a chunked body on a raw socket, until the
    gateway answers (or ``give_up`` bytes are sent); return its answer and the bytes sent by then."""
    url = httpx.URL(base)
    head = (
        "POST /v1/collections/docs/documents HTTP/1.1\r\n"
        f"Host: {url.host}:{url.port}\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=XX\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()

    def framed(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    pending, sent = head + framed(first), 0
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        sock.setblocking(False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < give_up else [], [], 1)
            if readable:
                break
            if writable:
                pending = pending or framed(filler)
                n = sock.send(pending)
                pending, sent = pending[n:], sent + n
        else:
            raise AssertionError(f"no answer after {sent} bytes")
        sock.settimeout(10)
        answer = b""
        while b"}}" not in answer:  # the end of the error body
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer, sent


@pytest.mark.parametrize(
    "first",
    [
        # Bytes after the closing boundary, which no part counts: only the body's own cap stops them.
        FILE_PART + b"--XX--\r\n",
        # A file that never ends.
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.md"\r\n\r\n',
    ],
    ids=["after the last part", "in the file"],
)
def test_a_body_that_never_ends_is_cut_off_at_the_cap(redis_url, uploads, r, first):
    """The gateway answers 413 once the cap is passed, without reading on: the client is still
    sending (what it sent by then is the cap plus the sockets' buffers, far from all it would)."""
    settings = settings_for(redis_url, uploads, max_upload_bytes=64 * 1024)
    with serve_in_thread(create_app(settings), ready_path="/healthz") as base:
        answer, sent = endless_upload(base, first, b"x" * 65536, give_up=1 << 30)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"file_too_large"' in answer
    assert sent < 64 * 1024 * 1024, sent
    assert stored_files(uploads) == []
    assert stream_entries(r) == []


def test_redis_down_is_503_and_removes_the_file(uploads):
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    settings = settings_for(nothing_there, uploads, redis_timeout=0.5)
    with TestClient(create_app(settings)) as client:
        res = client.post(
            "/v1/collections/docs/documents",
            headers=AUTH,
            files={"file": ("a.md", b"# A\n\ntext", "text/markdown")},
        )
        assert res.status_code == 503, res.text
        err = res.json()["error"]
        assert err["code"] == "ingest_queue_unavailable" and "Redis" in err["message"]
        status = client.get("/v1/ingest/0123456789abcdef", headers=AUTH)
        assert status.status_code == 503
    assert stored_files(uploads) == []


def test_unknown_and_malformed_job_ids(client):
    missing = client.get("/v1/ingest/0123456789abcdef0123456789abcdef", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    bad = client.get("/v1/ingest/no!", headers=AUTH)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_job_id"


def test_keys_are_enforced(client, r, uploads):
    assert client.post("/v1/collections/docs/documents", json={"text": "x"}).status_code == 401
    assert client.get("/v1/ingest/0123456789abcdef").status_code == 401

    refused = client.post(
        "/v1/collections/docs/documents", headers=LIMITED, files={"file": ("a.md", b"x", "text/markdown")}
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "collection_forbidden"
    assert stored_files(uploads) == [] and stream_entries(r) == []

    # The limited key may write to and read its own collection, but not others' jobs.
    own = client.post("/v1/collections/other/documents", headers=LIMITED, json={"text": "mine"})
    assert own.status_code == 202
    assert client.get(own.json()["status_url"], headers=LIMITED).status_code == 200
    theirs = client.post("/v1/collections/docs/documents", headers=AUTH, json={"text": "not yours"})
    forbidden = client.get(theirs.json()["status_url"], headers=LIMITED)
    assert forbidden.status_code == 403


# --- end to end: gateway -> Redis -> indexer worker -> index -> retriever ---


def test_upload_becomes_searchable_end_to_end(redis_url, r, tmp_path, uploads, embedder):
    from omnirag.indexer.config import IndexerSettings
    from omnirag.retriever.app import create_app as create_retriever
    from omnirag.retriever.config import RetrieverSettings

    index_root = tmp_path / "index"
    sentence = "The quokka committee meets every second Thursday in the glasshouse."
    document = f"# Committees\n\nSome preamble about meetings.\n\n{sentence}\n".encode()

    indexer = IndexerSettings(
        index_root=index_root,
        embedder_url=embedder,
        redis_url=redis_url,
        uploads_dir=uploads,
        prune_grace_seconds=0,
    )
    with (
        TestClient(create_app(settings_for(redis_url, uploads, default_rpm=0))) as gateway,
        WorkerThread(indexer, uploads) as worker,
    ):
        res = gateway.post(
            "/v1/collections/e2e/documents",
            headers=AUTH,
            files={"file": ("committees.md", document, "text/markdown")},
        )
        assert res.status_code == 202, res.text
        status_url = res.json()["status_url"]
        deadline = time.monotonic() + 120
        while True:
            st = gateway.get(status_url, headers=AUTH).json()
            if st["status"] in ("done", "dead") or time.monotonic() > deadline:
                break
            assert worker.thread.is_alive(), worker.error
            time.sleep(0.1)
        assert st["status"] == "done", st
        assert st["version"] and st["chunks"] >= 1 and st["error"] is None
        assert isinstance(st["chunks"], int)

    retriever = create_retriever(
        RetrieverSettings(index_root=index_root, embedder_url=embedder, log_json=False)
    )
    with serve_in_thread(retriever) as base:
        hits = httpx.post(
            base + "/v1/collections/e2e/search",
            json={"query": "When does the quokka committee meet?", "k": 3, "mode": "hybrid"},
            timeout=30,
        )
        assert hits.status_code == 200, hits.text
        top = hits.json()["hits"][0]
        assert sentence in top["text"]
        assert top["metadata"]["source"] == "upload/committees.md"
        assert top["metadata"]["title"] == "Committees"  # the document's own heading


def test_unicode_file_name_becomes_the_source(client, r, uploads):
    res = client.post(
        "/v1/collections/docs/documents",
        headers=AUTH,
        files={"file": ("季度报告.md", "# 报告\n\n内容".encode(), "text/markdown")},
    )
    assert res.status_code == 202, res.text
    assert res.json()["source"] == "upload/季度报告.md"
    (path,) = stored_files(uploads)
    assert path.name == res.json()["job_id"] + ".md"


def test_a_full_ingest_queue_refuses_with_retry_after_and_keeps_what_waits(redis_url, uploads, r):
    """No worker runs here, so the queue only grows: the third upload is refused before its body
    is stored, the two queued jobs stay, and room made by the worker lets uploads in again."""
    settings = settings_for(redis_url, uploads, max_queued_ingests=2)
    with TestClient(create_app(settings)) as client:
        for i in range(2):
            ok = client.post(
                "/v1/collections/docs/documents",
                headers=AUTH,
                files={"file": (f"doc{i}.md", b"# Doc\n\nqueued text", "text/markdown")},
            )
            assert ok.status_code == 202, ok.text
        full = client.post(
            "/v1/collections/docs/documents",
            headers=AUTH,
            files={"file": ("doc2.md", b"# Doc\n\none too many", "text/markdown")},
        )
        assert full.status_code == 429, full.text
        assert full.json()["error"]["code"] == "ingest_queue_full"
        assert int(full.headers["Retry-After"]) >= 1
        assert len(stream_entries(r)) == 2
        assert len(stored_files(uploads)) == 2  # the refused body never reached the disk
        # The worker takes one job (XDEL after it is done): there is room again.
        first_id = r.xrange(INGEST_STREAM, count=1)[0][0]
        r.xdel(INGEST_STREAM, first_id)
        again = client.post("/v1/collections/docs/documents", headers=AUTH, json={"text": "now it fits"})
        assert again.status_code == 202, again.text


def test_the_openapi_document_lists_each_route_s_errors(client) -> None:
    """From the shared error table: every route's generic errors, and the ones the upload, the job
    status and the embedder and retriever passes declare, all with the error body."""
    paths = client.get("/openapi.json").json()["paths"]
    error = {"$ref": "#/components/schemas/Error"}

    def responses(path: str, method: str, *statuses: str) -> dict:
        found = paths[path][method]["responses"]
        assert set(statuses) <= set(found), (path, method, sorted(found))
        for status in statuses:
            assert found[status]["content"]["application/json"]["schema"] == error, (path, status)
        return found

    upload = responses("/v1/collections/{name}/documents", "post", "403", "413", "422", "429", "500", "503")
    assert "invalid_collection" in upload["422"]["description"]
    assert "Retry-After" in upload["429"]["headers"]
    responses("/v1/ingest/{job_id}", "get", "403", "404", "422", "500", "503")
    # The embedder's errors passed on (its 404, 413, 429 and 503) and its absence (502).
    responses("/v1/embeddings", "post", "404", "413", "429", "500", "502", "503")
    responses("/v1/collections", "get", "500", "502")
    # Chat calls the key check itself (not as a dependency) and declares its errors with its own:
    # an unknown model, a body it cannot take, the LLM failing (502) or the retriever down (503).
    chat = responses("/v1/chat/completions", "post", "400", "403", "404", "413", "422", "500", "502", "503")
    assert "model_not_found" in chat["404"]["description"]
    assert "llm_error" in chat["502"]["description"]
    # The key check every authenticated route runs: a missing or wrong key, a key over its limits.
    for path, method in (
        ("/v1/collections", "get"),
        ("/v1/models", "get"),
        ("/v1/ingest/{job_id}", "get"),
        ("/v1/chat/completions", "post"),
    ):
        assert "Retry-After" in responses(path, method, "401", "429")["429"]["headers"], path
