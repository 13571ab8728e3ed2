"""The job against a local Hugging Face Hub: download, idempotence, resume, failures, secrets."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import threading
import time

from omnirag_harness.hub import FakeHub, random_bytes, sha256, wait_for
from omnirag_harness.model_download import (
    BIG,
    BIG_SIZE,
    assert_same_tree,
    marker_of,
    run_job,
    start_job,
    tiny_files,
)
from omnirag_harness.servers import free_port

from omnirag.model_download import MARKER_NAME, WORK_DIR_NAME
from omnirag.model_download.errors import (
    EXIT_ACCESS_DENIED,
    EXIT_BUSY,
    EXIT_INTEGRITY,
    EXIT_INTERNAL,
    EXIT_INVALID,
    EXIT_NETWORK,
    EXIT_NO_SPACE,
    EXIT_REPO_NOT_FOUND,
    EXIT_REVISION_NOT_FOUND,
)
from omnirag.model_download.job import part_name
from omnirag.model_download.sources import RemoteFile

REPO = "acme/tiny-llm"


def add_tiny(hub: FakeHub, **kw) -> dict[str, bytes]:
    files = tiny_files()
    hub.add_hf(REPO, files, lfs={BIG}, **kw)
    return files


def test_first_download_is_byte_identical_and_marked(tmp_path, hub, models):
    files = add_tiny(hub)
    run = run_job(tmp_path, hub, "--repo", REPO)
    assert run.code == 0, run
    dest = models / REPO
    assert_same_tree(dest, files)

    marker = marker_of(dest)
    assert marker["format"] == "omnirag-model-download/v1"
    assert marker["source"] == "huggingface" and marker["repo"] == REPO and marker["revision"] == "main"
    assert marker["resolved_revision"] == hub.hf[REPO].head
    assert {f["path"]: f["size"] for f in marker["files"]} == {p: len(d) for p, d in files.items()}
    big = next(f for f in marker["files"] if f["path"] == BIG)
    assert big["sha256"] == sha256(files[BIG])
    assert marker["total_bytes"] == sum(map(len, files.values()))
    # Nothing of the run's bookkeeping is left beside the model.
    assert not (dest / WORK_DIR_NAME / "partial").exists()
    assert not (dest / WORK_DIR_NAME / "journal.jsonl").exists()
    assert REPO in run.stdout and "downloaded" in run.stdout
    # Files come from the listed commit, never from the moving branch name.
    assert all(f"/resolve/{hub.hf[REPO].head}/" in s.path for s in hub.file_gets() if s.server == "hub")
    # The LFS file went through the CDN redirect, the others straight from the hub.
    assert [s.server for s in hub.file_gets(BIG)] == ["hub", "cdn"]


def test_second_run_makes_no_request_and_refresh_fetches_only_changes(tmp_path, hub, models):
    files = add_tiny(hub)
    assert run_job(tmp_path, hub, "--repo", REPO).code == 0
    dest = models / REPO
    first = marker_of(dest)

    hub.clear()
    again = run_job(tmp_path, hub, "--repo", REPO)
    assert again.code == 0, again
    assert hub.requests() == []  # the marker is trusted: no API call, no file GET
    assert "up to date" in again.stdout

    # --refresh asks the hub which commit `main` is now; same commit, so no file is fetched.
    hub.clear()
    refreshed = run_job(tmp_path, hub, "--repo", REPO, "--refresh")
    assert refreshed.code == 0, refreshed
    assert hub.requests() and hub.file_gets() == []
    assert marker_of(dest) == first

    # The branch moves: one file changes, one goes, one is new. Only the two with new bytes are fetched.
    changed = {**files, "config.json": b'{"hidden_size": 16}\n', "generation_config.json": b"{}\n"}
    del changed["README.md"]
    new_head = hub.hf[REPO].push(changed)
    hub.clear()
    updated = run_job(tmp_path, hub, "--repo", REPO, "--refresh")
    assert updated.code == 0, updated
    fetched = sorted(s.path.rsplit("/", 1)[-1] for s in hub.file_gets())
    assert fetched == ["config.json", "generation_config.json"]
    assert_same_tree(dest, changed)
    assert marker_of(dest)["resolved_revision"] == new_head
    assert "updated" in updated.stdout


def test_missing_file_is_fetched_again(tmp_path, hub, models):
    files = add_tiny(hub)
    assert run_job(tmp_path, hub, "--repo", REPO).code == 0
    dest = models / REPO
    (dest / "sub/dir/tokenizer.json").unlink()
    hub.clear()
    run = run_job(tmp_path, hub, "--repo", REPO)
    assert run.code == 0, run
    assert [s.path.rsplit("/", 1)[-1] for s in hub.file_gets()] == ["tokenizer.json"]
    assert_same_tree(dest, files)


def test_cut_connection_is_resumed_with_range_in_the_same_run(tmp_path, hub, models):
    files = add_tiny(hub)
    hub.cut[BIG] = 1_000_000
    run = run_job(tmp_path, hub, "--repo", REPO, "--progress")
    assert run.code == 0, run
    cdn = [s for s in hub.file_gets(BIG) if s.server == "cdn"]
    assert [s.headers.get("range") for s in cdn] == [None, "bytes=1000000-"]
    assert_same_tree(models / REPO, files)
    assert "retry 1/2" in run.stderr
    # The bar (forced on: stderr is no terminal here) ends at the model's size, the cut counted once.
    bars = re.findall(rf"{REPO}:\s+(\d+)%\|[^|]*\| ([\d.]+M)/([\d.]+M)", run.stderr)
    assert bars and bars[-1] == ("100", "3.00M", "3.00M"), bars
    assert all(int(pct) <= 100 for pct, _, _ in bars)


def test_killed_run_resumes_where_it_stopped(tmp_path, hub, models):
    files = add_tiny(hub)
    dest = models / REPO
    held = 1024 * 1024
    release = hub.hold.setdefault(BIG, (held, threading.Event()))[1]
    proc = start_job(tmp_path, hub, "--repo", REPO)
    try:
        part = dest / WORK_DIR_NAME / "partial" / part_name(RemoteFile(BIG, BIG_SIZE, sha256(files[BIG])))
        wait_for(lambda: part.exists() and part.stat().st_size == held, timeout=20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert not (dest / MARKER_NAME).exists()
    assert not (dest / BIG).exists()  # never a half file at the final path

    hub.clear()
    run = run_job(tmp_path, hub, "--repo", REPO)
    assert run.code == 0, run
    cdn = [s for s in hub.file_gets(BIG) if s.server == "cdn"]
    assert [s.headers.get("range") for s in cdn] == [f"bytes={held}-"]
    assert_same_tree(dest, files)
    assert marker_of(dest)["resolved_revision"] == hub.hf[REPO].head


def test_interrupted_run_keeps_partial_and_exits_130(tmp_path, hub, models):
    files = add_tiny(hub)
    release = hub.hold.setdefault(BIG, (512 * 1024, threading.Event()))[1]
    proc = start_job(tmp_path, hub, "--repo", REPO)
    part = (
        models / REPO / WORK_DIR_NAME / "partial" / part_name(RemoteFile(BIG, BIG_SIZE, sha256(files[BIG])))
    )
    try:
        wait_for(lambda: part.exists() and part.stat().st_size == 512 * 1024, timeout=20)
        proc.send_signal(signal.SIGTERM)  # what Kubernetes sends a Job's pod
        _, err = proc.communicate(timeout=20)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("error: interrupted")
    assert part.stat().st_size == 512 * 1024


def test_unknown_repo_fails_with_one_line(tmp_path, hub):
    add_tiny(hub)
    run = run_job(tmp_path, hub, "--repo", "acme/no-such-model")
    assert run.code == EXIT_REPO_NOT_FOUND, run
    assert run.reason.startswith(
        "error: acme/no-such-model: repository acme/no-such-model on http://127.0.0.1"
    )
    assert "not found" in run.reason
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


def test_unknown_revision_fails_with_one_line(tmp_path, hub, models):
    add_tiny(hub)
    run = run_job(tmp_path, hub, "--repo", REPO, "--revision", "v9.9")
    assert run.code == EXIT_REVISION_NOT_FOUND, run
    assert run.reason == f"error: {REPO}: revision 'v9.9' not found in {REPO} on {hub.url}"
    assert not (models / REPO / MARKER_NAME).exists()


def test_tag_and_commit_revisions(tmp_path, hub, models):
    files = add_tiny(hub)
    old_head = hub.hf[REPO].head
    hub.hf[REPO].tag("v1.0")
    hub.hf[REPO].push({**files, "config.json": b"{}\n"})
    run = run_job(tmp_path, hub, "--repo", REPO, "--revision", "v1.0", "--dir", "tagged")
    assert run.code == 0, run
    assert (models / "tagged" / "config.json").read_bytes() == files["config.json"]
    assert marker_of(models / "tagged")["resolved_revision"] == old_head
    run = run_job(tmp_path, hub, "--repo", REPO, "--revision", hub.hf[REPO].head, "--dir", "pinned")
    assert run.code == 0, run
    assert (models / "pinned" / "config.json").read_bytes() == b"{}\n"


def test_allow_and_ignore_patterns(tmp_path, hub, models):
    files = add_tiny(hub)
    run = run_job(tmp_path, hub, "--repo", REPO, "--allow", "*.json", "--ignore", "sub/*")
    assert run.code == 0, run
    dest = models / REPO
    assert_same_tree(dest, {"config.json": files["config.json"]})
    assert [s.path.rsplit("/", 1)[-1] for s in hub.file_gets()] == ["config.json"]
    marker = marker_of(dest)
    assert marker["allow_patterns"] == ["*.json"] and marker["ignore_patterns"] == ["sub/*"]

    # Other patterns are another request: the directory is brought to the new selection.
    run = run_job(tmp_path, hub, "--repo", REPO, "--allow", "*.json")
    assert run.code == 0, run
    assert_same_tree(dest, {p: d for p, d in files.items() if p.endswith(".json")})

    nothing = run_job(tmp_path, hub, "--repo", REPO, "--allow", "*.gguf", "--dir", "none")
    assert nothing.code == EXIT_INVALID, nothing
    assert "no file of" in nothing.reason and "*.gguf" in nothing.reason


def test_token_is_sent_but_never_printed_nor_given_to_the_cdn(tmp_path, hub, models):
    token = "hf_SECRETtoken1234567890abcdef"
    files = add_tiny(hub, token=token)

    anonymous = run_job(tmp_path, hub, "--repo", REPO)
    assert anonymous.code == EXIT_REPO_NOT_FOUND, anonymous
    assert "no token was given" in anonymous.reason

    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(token + "\n")
    hub.clear()
    run = run_job(
        tmp_path,
        hub,
        "--repo",
        REPO,
        MODEL_DOWNLOAD_HF_TOKEN_FILE=str(token_file),
        MODEL_DOWNLOAD_LOG_LEVEL="DEBUG",
    )
    assert run.code == 0, run
    assert_same_tree(models / REPO, files)
    seen = hub.requests()
    hub_side = [s for s in seen if s.server == "hub"]
    assert hub_side and all(s.headers.get("authorization") == f"Bearer {token}" for s in hub_side)
    cdn_side = [s for s in seen if s.server == "cdn"]
    assert cdn_side and all("authorization" not in s.headers for s in cdn_side)
    assert token not in run.stdout + run.stderr
    assert token not in (models / REPO / MARKER_NAME).read_text()

    # HF_TOKEN works too (the hub's own name); a wrong one is refused and not echoed either.
    wrong = run_job(tmp_path, hub, "--repo", REPO, "--dir", "other", HF_TOKEN="hf_wrongWRONGwrong")
    assert wrong.code == EXIT_REPO_NOT_FOUND, wrong
    assert "the token cannot read it" in wrong.reason
    assert "hf_wrongWRONGwrong" not in wrong.stdout + wrong.stderr


def test_unreadable_token_file_names_the_file_only(tmp_path, hub):
    add_tiny(hub)
    bad = tmp_path / "token"
    bad.write_text("two words\n")
    run = run_job(tmp_path, hub, "--repo", REPO, MODEL_DOWNLOAD_HF_TOKEN_FILE=str(bad))
    assert run.code == EXIT_INVALID, run
    assert run.reason == f"error: {REPO}: token file {bad}: empty or holds more than one word"
    assert "two words" not in run.stderr


def test_gated_repo_without_token(tmp_path, hub):
    add_tiny(hub, gated=True)
    run = run_job(tmp_path, hub, "--repo", REPO)
    assert run.code == EXIT_ACCESS_DENIED, run
    assert "is gated" in run.reason


def test_hub_down_fails_after_bounded_retries(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    run = run_job(tmp_path, None, "--repo", REPO, MODEL_DOWNLOAD_HF_ENDPOINT=dead)
    assert run.code == EXIT_NETWORK, run
    assert run.reason.startswith(f"error: {REPO}: listing {REPO}@main on {dead}: cannot reach {dead}")
    assert run.reason.endswith("gave up after 3 attempts")
    assert run.stderr.count("retry ") == 2
    assert time.monotonic() - started < 20


def test_transient_api_errors_are_retried(tmp_path, hub, models):
    files = add_tiny(hub)
    hub.api_failures = [503, 502]
    run = run_job(tmp_path, hub, "--repo", REPO)
    assert run.code == 0, run
    assert "HTTP 503" in run.stderr and "HTTP 502" in run.stderr
    assert_same_tree(models / REPO, files)


def test_no_space_is_found_before_any_download(tmp_path, hub, models):
    add_tiny(hub)
    free = shutil.disk_usage(tmp_path).free
    run = run_job(tmp_path, hub, "--repo", REPO, MODEL_DOWNLOAD_RESERVE_BYTES=str(10 * free))
    assert run.code == EXIT_NO_SPACE, run
    assert "needs 3.0 MiB more for 4 file(s)" in run.reason
    assert hub.file_gets() == []


def test_disk_full_while_writing(tmp_path, hub, models):
    files = add_tiny(hub)
    # The kernel's own ENOSPC: the big file's partial file is /dev/full.
    partial = models / REPO / WORK_DIR_NAME / "partial"
    partial.mkdir(parents=True)
    (partial / part_name(RemoteFile(BIG, BIG_SIZE, sha256(files[BIG])))).symlink_to("/dev/full")
    run = run_job(tmp_path, hub, "--repo", REPO)
    assert run.code == EXIT_NO_SPACE, run
    assert run.reason.startswith(f"error: {REPO}: no space left on the device")
    assert not (models / REPO / MARKER_NAME).exists()


def test_wrong_bytes_fail_the_integrity_check(tmp_path, hub, models):
    add_tiny(hub)
    hub.corrupt.add(BIG)
    run = run_job(tmp_path, hub, "--repo", REPO)
    assert run.code == EXIT_INTEGRITY, run
    assert BIG in run.reason and "content hash" in run.reason
    assert len([s for s in hub.file_gets(BIG) if s.server == "cdn"]) == 2
    assert not (models / REPO / BIG).exists()
    assert not (models / REPO / MARKER_NAME).exists()


def test_unsafe_path_from_the_hub_is_refused(tmp_path, hub, models):
    hub.add_hf("acme/evil", {"config.json": b"{}", "a/../../escape.txt": b"owned"})
    run = run_job(tmp_path, hub, "--repo", "acme/evil")
    assert run.code == EXIT_INTERNAL, run
    assert "unsafe file path" in run.reason
    assert not (models / "escape.txt").exists() and not (models / "acme" / "escape.txt").exists()
    assert hub.file_gets() == []


def test_a_second_writer_is_turned_away(tmp_path, hub, models):
    add_tiny(hub)
    lock = models / REPO / WORK_DIR_NAME / "lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        run = run_job(tmp_path, hub, "--repo", REPO)
    assert run.code == EXIT_BUSY, run
    assert "another download into this directory is running" in run.reason


def test_offline_mode_is_reported_but_a_complete_model_needs_no_network(tmp_path, hub, models):
    add_tiny(hub)
    offline = run_job(tmp_path, hub, "--repo", REPO, HF_HUB_OFFLINE="1")
    assert offline.code == EXIT_INVALID, offline
    assert "HF_HUB_OFFLINE is set" in offline.reason
    assert run_job(tmp_path, hub, "--repo", REPO).code == 0
    again = run_job(tmp_path, hub, "--repo", REPO, HF_HUB_OFFLINE="1")
    assert again.code == 0, again


def test_progress_is_logged_as_json(tmp_path, hub):
    add_tiny(hub)
    hub.cut[BIG] = 1_500_000  # a pause, so at least one progress interval passes mid-file
    run = run_job(
        tmp_path,
        hub,
        "--repo",
        REPO,
        MODEL_DOWNLOAD_LOG_JSON="true",
        MODEL_DOWNLOAD_PROGRESS_SECONDS="0.01",
        MODEL_DOWNLOAD_RETRY_BACKOFF_SECONDS="0.2",
    )
    assert run.code == 0, run
    records = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert records and all(r["service"] == "model-download" for r in records)
    progress = [r for r in records if "done_bytes" in r]
    assert progress and all(r["total_bytes"] == sum(map(len, tiny_files().values())) for r in progress)
    done = [r["file"] for r in records if r.get("msg", "").find("downloaded ") > 0 and "file" in r]
    assert sorted(done) == sorted(tiny_files())


def test_empty_and_one_byte_files(tmp_path, hub, models):
    files = {"empty.bin": b"", "one.bin": random_bytes(1), "config.json": b"{}", "lfs-empty.bin": b""}
    hub.add_hf("acme/edge", files, lfs={"lfs-empty.bin"})
    run = run_job(tmp_path, hub, "--repo", "acme/edge")
    assert run.code == 0, run
    assert_same_tree(models / "acme/edge", files)


def test_status_command(tmp_path, hub, models):
    add_tiny(hub)
    before = run_job(tmp_path, hub, "status", "--repo", REPO)
    assert before.code == 1 and "absent" in before.stdout
    assert run_job(tmp_path, hub, "--repo", REPO).code == 0
    after = run_job(tmp_path, hub, "status", "--repo", REPO, "--json")
    assert after.code == 0, after
    row = json.loads(after.stdout)
    assert row["state"] == "complete" and row["resolved_revision"] == hub.hf[REPO].head
    assert os.path.samefile(row["dest"], models / REPO)
