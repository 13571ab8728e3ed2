"""Fixtures for the Helm chart's tests: the tools from .tools/bin, renders cached per value set, checkov.

The tools are not optional: a missing one fails the test with the command that installs it
(`make tools`), so CI never reports a chart that nobody checked as passing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "omnirag"
TOOLS_BIN = ROOT / ".tools" / "bin"
RELEASE = "omnirag"
NAMESPACE = "omnirag"
# The value sets CI renders: values.yaml alone, and each file of charts/omnirag/ci/ on top of it.
CI_FILES = {
    "default": None,
    "cpu-external-llm": "cpu-external-llm-values.yaml",
    "gpu-full": "gpu-full-values.yaml",
    "external-redis": "external-redis-values.yaml",
    "only-retriever": "only-retriever-values.yaml",
    "managed-single-node": "managed-single-node-values.yaml",
}
CI_SETS = list(CI_FILES)


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path
    kubernetes_validate: Path
    checkov: Path
    env: dict[str, str]

    def run(
        self, cmd: list[str | Path], timeout: float = 120, cwd: Path = ROOT
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(c) for c in cmd],
            text=True,
            capture_output=True,
            env=self.env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )


@dataclass
class Render:
    """One `helm template`: its exit code, output and the parsed objects (empty documents dropped)."""

    returncode: int
    stdout: str
    stderr: str
    docs: list[dict[str, Any]] = field(default_factory=list)
    cmd: str = ""


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    paths = {name: TOOLS_BIN / name for name in ("helm", "kubectl", "kubernetes-validate", "checkov")}
    missing = [str(p) for p in paths.values() if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"chart test tools missing: {', '.join(missing)}. Run `make tools` "
            "(scripts/install_k8s_tools.py) to install helm, kubectl, kubernetes-validate and checkov.",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "PATH": f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # helm keeps no state from the user's home (repos, plugins) in these tests.
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return Tools(
        helm=paths["helm"],
        kubectl=paths["kubectl"],
        kubernetes_validate=paths["kubernetes-validate"],
        checkov=paths["checkov"],
        env=env,
    )


def ci_values_path(name: str) -> Path | None:
    file = CI_FILES[name]
    if file is None:
        return None
    path = CHART / "ci" / file
    if not path.is_file():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: the chart must ship the ci value set {name!r}")
    return path


def parse_manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="session")
def helm_template(tools: Tools) -> Callable[..., Render]:
    """`helm template` of the chart with values files and optional extra args; not cached."""
    if not (CHART / "Chart.yaml").is_file():
        pytest.fail(f"{CHART.relative_to(ROOT)}/Chart.yaml is missing")

    def render(*values: Path | None, extra: list[str] | None = None) -> Render:
        cmd: list[str | Path] = [tools.helm, "template", RELEASE, CHART, "--namespace", NAMESPACE]
        for v in values:
            if v is not None:
                cmd += ["--values", v]
        cmd += extra or []
        proc = tools.run(cmd)
        out = Render(proc.returncode, proc.stdout, proc.stderr, cmd=" ".join(map(str, cmd)))
        if proc.returncode == 0:
            out.docs = parse_manifests(proc.stdout)
        return out

    return render


@pytest.fixture(scope="session")
def rendered(helm_template: Callable[..., Render]) -> Callable[[str], list[dict[str, Any]]]:
    """The objects of a ci value set, rendered once per session; a failed render fails the test."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def get(name: str) -> list[dict[str, Any]]:
        if name not in cache:
            result = helm_template(ci_values_path(name))
            if result.returncode != 0:
                pytest.fail(f"helm template with {name!r} failed ({result.returncode}):\n{result.stderr}")
            cache[name] = result.docs
        return cache[name]

    return get


def merge_values(base: Any, override: Any) -> Any:
    """Helm's coalescing: maps merge key by key, a null deletes the key, anything else replaces."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_values(base.get(key), value)
    return out


@pytest.fixture(scope="session")
def ci_values() -> Callable[[str], dict[str, Any]]:
    """The values a ci value set renders with: values.yaml with the ci file merged on top."""

    def get(name: str) -> dict[str, Any]:
        values = yaml.safe_load((CHART / "values.yaml").read_text()) or {}
        path = ci_values_path(name)
        if path is not None:
            values = merge_values(values, yaml.safe_load(path.read_text()) or {})
        assert isinstance(values, dict)
        return values

    return get


@dataclass
class CheckovRun:
    cmd: str
    returncode: int
    reports: list[dict[str, Any]]
    stderr: str


def run_checkov(tools: Tools, args: list[str | Path]) -> CheckovRun:
    cmd: list[str | Path] = [
        tools.checkov,
        *args,
        "--skip-download",
        "--output",
        "json",
        "--compact",
        "--quiet",
    ]
    proc = tools.run(cmd, timeout=900)
    try:
        loaded = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(
            f"checkov printed no JSON (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    # One framework: one report object; several: a list of them.
    reports = loaded if isinstance(loaded, list) else [loaded]
    return CheckovRun(" ".join(map(str, cmd)), proc.returncode, reports, proc.stderr)


@pytest.fixture(scope="session")
def checkov_helm(tools: Tools) -> CheckovRun:
    """checkov over the chart as checkov renders it (values.yaml); the chart's .checkov.yaml applies."""
    return run_checkov(tools, ["--directory", CHART, "--framework", "helm"])


@pytest.fixture(scope="session")
def checkov_ci_renders(
    tools: Tools, helm_template: Callable[..., Render], tmp_path_factory: pytest.TempPathFactory
) -> CheckovRun:
    """checkov over every ci value set's render at once (checkov's helm framework sees values.yaml only)."""
    out = tmp_path_factory.mktemp("ci-renders")
    for name in CI_SETS:
        result = helm_template(ci_values_path(name))
        if result.returncode != 0:
            pytest.fail(f"helm template with {name!r} failed:\n{result.stderr}")
        (out / f"{name}.yaml").write_text(result.stdout)
    args: list[str | Path] = ["--directory", out, "--framework", "kubernetes"]
    config = CHART / ".checkov.yaml"
    if config.is_file():
        args += ["--config-file", config]
    return run_checkov(tools, args)
