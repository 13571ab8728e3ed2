"""The fake hub is only worth its tests if the real SDKs accept it: huggingface_hub's and modelscope's
own snapshot_download fetch a repository from it, byte for byte, in a process of their own.

modelscope 1.40's ``snapshot_download`` is a shim over ``modelscope_hub.compat``'s; the test calls the
latter because ``import modelscope`` also imports torch when it is installed (seconds, for nothing)."""

from __future__ import annotations

import subprocess
import sys

from omnirag_harness.hub import FakeHub
from omnirag_harness.model_download import BIG, job_env, tiny_files

SCRIPT = """
import sys
from huggingface_hub import snapshot_download as hf_snapshot
from modelscope_hub.compat.snapshot_download import snapshot_download as ms_snapshot

url, out = sys.argv[1], sys.argv[2]
hf_snapshot("acme/hf", local_dir=out + "/hf", endpoint=url, max_workers=2)
ms_snapshot("acme/ms", local_dir=out + "/ms", endpoint=url, max_workers=2)
"""


def test_real_sdks_download_from_the_fake_hub(tmp_path, hub: FakeHub):
    hf_files, ms_files = tiny_files(seed=7), tiny_files(seed=8)
    hub.add_hf("acme/hf", hf_files, lfs={BIG})
    hub.add_ms("acme/ms", ms_files, lfs={BIG})
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, hub.url, str(out)],
        env=job_env(tmp_path, hub, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for name, files in (("hf", hf_files), ("ms", ms_files)):
        for path, data in files.items():
            assert (out / name / path).read_bytes() == data, (name, path)
    # The SDKs took the same routes the job takes: HEAD/GET on resolve, the CDN for LFS bytes.
    seen = {(s.server, s.method) for s in hub.requests()}
    assert {("hub", "HEAD"), ("hub", "GET"), ("cdn", "GET")} <= seen
