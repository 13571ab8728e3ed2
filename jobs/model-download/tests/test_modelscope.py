"""The job against a local ModelScope (modelscope_hub's client takes a custom endpoint), and a spec
with models from both hubs."""

from __future__ import annotations

import json

from omnirag_harness.hub import sha256
from omnirag_harness.model_download import BIG, assert_same_tree, marker_of, run_job, tiny_files

from omnirag.model_download import MARKER_NAME
from omnirag.model_download.errors import EXIT_ACCESS_DENIED, EXIT_REPO_NOT_FOUND, EXIT_REVISION_NOT_FOUND
from omnirag.model_download.marker import content_digest
from omnirag.model_download.sources import RemoteFile

REPO = "acme/tiny-embed"


def test_download_marker_and_no_second_request(tmp_path, hub, models):
    files = tiny_files(seed=1)
    hub.add_ms(REPO, files, lfs={BIG})
    run = run_job(tmp_path, hub, "--repo", REPO, "--source", "modelscope")
    assert run.code == 0, run
    dest = models / REPO
    assert_same_tree(dest, files)
    marker = marker_of(dest)
    assert marker["source"] == "modelscope" and marker["revision"] == "master"
    # ModelScope names no commit for a branch; the content digest stands for the snapshot.
    assert marker["resolved_revision"] is None
    listed = [RemoteFile(p, len(d), sha256(d)) for p, d in files.items()]
    assert marker["content_digest"] == content_digest(listed)
    assert all(f["sha256"] == sha256(files[f["path"]]) for f in marker["files"])

    hub.clear()
    again = run_job(tmp_path, hub, "--repo", REPO, "--source", "ms")
    assert again.code == 0, again
    assert hub.requests() == []

    hub.clear()
    refreshed = run_job(tmp_path, hub, "--repo", REPO, "--source", "ms", "--refresh")
    assert refreshed.code == 0, refreshed
    assert hub.requests() and hub.file_gets() == []


def test_cut_download_resumes_with_range(tmp_path, hub, models):
    files = tiny_files(seed=2)
    hub.add_ms(REPO, files)  # not LFS: the bytes come from the API endpoint itself
    hub.cut[BIG] = 777_777
    run = run_job(tmp_path, hub, "--repo", REPO, "--source", "ms")
    assert run.code == 0, run
    gets = hub.file_gets(BIG)
    assert [s.headers.get("range") for s in gets] == [None, "bytes=777777-"]
    assert all(s.query["Revision"] == "master" for s in gets)
    assert_same_tree(models / REPO, files)


def test_unknown_repo_and_revision(tmp_path, hub):
    hub.add_ms(REPO, tiny_files())
    missing = run_job(tmp_path, hub, "--repo", "acme/none", "--source", "ms")
    assert missing.code == EXIT_REPO_NOT_FOUND, missing
    assert missing.reason == (
        f"error: acme/none: repository acme/none on {hub.url} not found "
        "(or it is private and no token was given)"
    )
    wrong = run_job(tmp_path, hub, "--repo", REPO, "--source", "ms", "--revision", "v2")
    assert wrong.code == EXIT_REVISION_NOT_FOUND, wrong
    assert wrong.reason == f"error: {REPO}: revision 'v2' not found in {REPO} on {hub.url} (it has: master)"
    assert "Traceback" not in missing.stderr + wrong.stderr


def test_tag_revision(tmp_path, hub, models):
    files = tiny_files(seed=3)
    repo = hub.add_ms(REPO, files)
    repo.tag("v1.0.0")
    repo.push({**files, "config.json": b"{}"})
    run = run_job(tmp_path, hub, "--repo", REPO, "--source", "ms", "--revision", "v1.0.0")
    assert run.code == 0, run
    assert_same_tree(models / REPO, files)
    assert {s.query["Revision"] for s in hub.file_gets()} == {"v1.0.0"}


def test_private_repo_token(tmp_path, hub, models):
    token = "ms-SECRET-0123456789abcdef"
    files = tiny_files(seed=4)
    hub.add_ms(REPO, files, token=token, lfs={BIG})
    denied = run_job(tmp_path, hub, "--repo", REPO, "--source", "ms")
    assert denied.code == EXIT_ACCESS_DENIED, denied
    hub.clear()
    run = run_job(tmp_path, hub, "--repo", REPO, "--source", "ms", MODELSCOPE_API_TOKEN=token)
    assert run.code == 0, run
    assert_same_tree(models / REPO, files)
    seen = hub.requests()
    assert all(s.headers.get("authorization") == f"Bearer {token}" for s in seen if s.server == "hub")
    cdn = [s for s in seen if s.server == "cdn"]
    assert cdn and all("authorization" not in s.headers and "cookie" not in s.headers for s in cdn)
    assert token not in run.stdout + run.stderr + denied.stdout + denied.stderr


def test_spec_with_models_from_both_hubs(tmp_path, hub, models):
    llm, emb = tiny_files(seed=5), tiny_files(seed=6)
    hub.add_hf("acme/llm", llm, lfs={BIG})
    hub.add_ms("acme/embedder", emb)
    spec = tmp_path / "models.yaml"
    spec.write_text(
        f"""
models:
  - name: llm
    repo: acme/llm
    dir: llm
  - name: embedding
    source: modelscope
    repo: acme/embedder
    dir: {models}/shared/embedding
    ignorePatterns: ["README.md"]
  - name: reranker
    source: hf
    repo: acme/no-reranker-here
"""
    )
    run = run_job(tmp_path, hub, "--spec", str(spec), "--json")
    # Every model is attempted; the exit code is the failure's, and only the failure is on stderr.
    assert run.code == EXIT_REPO_NOT_FOUND, run
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: reranker: repository acme/no-reranker-here")
    done = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(d["name"], d["state"]) for d in done] == [("llm", "downloaded"), ("embedding", "downloaded")]
    assert_same_tree(models / "llm", llm)
    assert_same_tree(models / "shared" / "embedding", {p: d for p, d in emb.items() if p != "README.md"})
    assert marker_of(models / "shared" / "embedding")["ignore_patterns"] == ["README.md"]

    hub.clear()
    only = run_job(tmp_path, hub, "--spec", str(spec), "--only", "llm", "--only", "embedding")
    assert only.code == 0, only
    assert hub.requests() == []
    assert only.stdout.count("up to date") == 2
    assert not (models / "acme" / "no-reranker-here" / MARKER_NAME).exists()
