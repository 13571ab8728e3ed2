"""Build the container image of every service and job (``make images``).

Every image is a target of the one ``images/Dockerfile``, named after its package's directory under
services/ or jobs/ (``--target gateway``), built from the repository root (the builder stages copy
the libs/ packages they install from there) and named exactly as the Helm chart's defaults name it
(``charts/omnirag``: ``image.registry``, ``image.repository`` = ``omnirag/<name>``, tag = the
chart's appVersion):

    <REGISTRY, default ghcr.io>/omnirag/<name>:<TAG, default the chart's appVersion>

so ``make images REGISTRY=registry.example.com`` builds what ``helm install --set
global.imageRegistry=registry.example.com`` runs. Never ``latest``. Only the standard library is
used, so this runs with any Python 3.11+ and needs no virtual environment.

The engine is Docker when its daemon answers, otherwise Podman (``--format docker``, which keeps
HEALTHCHECK); ``DOCKER`` names one explicitly. The base is the Dockerfile's ``PYTHON_IMAGE``
(python:3.11.17-slim-bookworm); where that is not present and ``make base-image`` built
``localhost/python:3.11-bookworm-local`` (no registry reachable), that one is used instead.

At build time only, never in a layer: pip gets a CA bundle as the secret ``ca`` (``BUILD_CA_BUNDLE``,
default the host's /etc/ssl/certs/ca-certificates.crt: a TLS-intercepting proxy's CA lives there),
and, under Podman, the host pip's local wheel sources (``pip config list``: find-links
directories and file:// indexes) mounted read-only, so the embedder finds the CPU torch the host
keeps on disk (``BUILD_LOCAL_WHEELS=0`` turns that off).

Environment: REGISTRY, TAG, DOCKER, PYTHON_IMAGE (the base), PYTHON_DIGEST (sha256:… of it),
TORCH_INDEX_URL (a CUDA wheel index for the embedder, which is then tagged ``<tag>-gpu``),
FAISS_VARIANT (``cpu``, the default, or ``gpu``: the images that install faiss get faiss-gpu-cu12
and a ``-gpu`` tag suffix),
BUILD_CA_BUNDLE, BUILD_LOCAL_WHEELS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "omnirag" / "Chart.yaml"
PACKAGE_PARENTS = ("services", "jobs")
DOCKERFILE = Path("images") / "Dockerfile"  # relative to the repository root, the build context
# The chart's defaults: image.registry, and image.repository = "<NAMESPACE>/<name>".
DEFAULT_REGISTRY = "ghcr.io"
NAMESPACE = "omnirag"
LOCAL_BASE = "localhost/python:3.11-bookworm-local"  # what `make base-image` builds
DEFAULT_BASE = "python:3.11.17-slim-bookworm"  # the Dockerfile's PYTHON_IMAGE default
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Build args passed through from the environment when set, to the images that declare them.
PASSTHROUGH_ARGS = ("TORCH_INDEX_URL", "PYTHON_DIGEST", "FAISS_VARIANT")
FAISS_VARIANTS = ("cpu", "gpu")
# A PyTorch wheel index of a GPU build (…/whl/cu128, …/whl/rocm6.4), not the CPU one (…/whl/cpu).
GPU_TORCH_INDEX = re.compile(r"/(cu\d+|rocm[\d.]+)/?$")
# The ports the services listen on in their images (DESIGN.md); jobs have none.
PORTS = {"gateway": 8000, "embedder": 8001, "retriever": 8002, "ui": 7860}
# The label holding a digest of everything an image is built from (``source_digest``): with
# ``--if-changed`` an image whose label matches is not built again.
SOURCE_LABEL = "dev.omnirag.source-digest"
# Build arguments that change what is built; REVISION and CREATED only describe the build.
DESCRIPTIVE_ARGS = ("REVISION", "CREATED")
# What .dockerignore keeps out of every build context: a change to these never changes an image.
IGNORED_PARTS = {
    "tests",
    "__pycache__",
    "build",
    "dist",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".venv",
}
IGNORED_NAMES = re.compile(r"(\.py[cod]|\.egg-info|^\.env|^\.dockerignore)$")


class BuildError(Exception):
    """A problem the user must fix; printed as one line."""


@dataclass(frozen=True)
class Image:
    name: str  # also its target in the Dockerfile
    package_dir: Path
    version: str | None  # None: the package has no pyproject.toml (yet); building it is an error
    dockerfile: Path

    @property
    def module(self) -> str:
        return "omnirag." + self.name.replace("-", "_")


@dataclass(frozen=True)
class Engine:
    command: str
    podman: bool


@dataclass(frozen=True)
class BuildContext:
    """What every build gets besides the Dockerfile: the base, the CA secret, local wheel sources."""

    python_image: str | None  # None: the Dockerfile's default
    ca_bundle: Path | None
    mounts: tuple[str, ...] = ()  # host directories mounted read-only at the same path
    find_links: tuple[str, ...] = ()
    extra_index_urls: tuple[str, ...] = ()
    torch_index_url: str | None = None  # when the local sources hold the CPU torch


def discover(root: Path = ROOT) -> list[Image]:
    """One image per target of the Dockerfile that is named after a package directory."""
    dockerfile = root / DOCKERFILE
    targets = {stage.name for stage in parse_dockerfile(dockerfile).stages}
    images = []
    for parent in PACKAGE_PARENTS:
        for package_dir in sorted(p for p in (root / parent).iterdir() if p.name in targets and p.is_dir()):
            pyproject = package_dir / "pyproject.toml"
            version = None
            if pyproject.is_file():
                version = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
            images.append(Image(package_dir.name, package_dir, version, dockerfile))
    return images


def chart_app_version(chart: Path = CHART) -> str:
    """The tag the chart gives every omnirag image by default (``image.tag: ""``)."""
    match = re.search(r"^appVersion:\s*[\"']?([^\"'\s#]+)", chart.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None:
        raise BuildError(f"{chart.relative_to(ROOT)} has no appVersion")
    return match.group(1)


def image_ref(name: str, *, registry: str, tag: str) -> str:
    return f"{registry}/{NAMESPACE}/{name}:{tag}"


# --- reading the Dockerfile: its stages, and which of them a target builds -------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str  # the rest, continuation lines joined
    line: int  # where it starts


@dataclass(frozen=True)
class Stage:
    base: str  # the FROM reference as written: an image, or the name of an earlier stage
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    global_args: tuple[Instruction, ...]  # the ARGs before the first FROM
    stages: tuple[Stage, ...]

    def stage(self, ref: str) -> Stage | None:
        """The stage a FROM or ``COPY --from`` names (by name or index); None: an image."""
        if ref.isdigit():
            return self.stages[int(ref)] if int(ref) < len(self.stages) else None
        return next((s for s in self.stages if s.name == ref), None)

    def lineage(self, target: str) -> list[Stage]:
        """The target and the stages it is FROM, the first base first."""
        chain: list[Stage] = []
        stage = self.stage(target)
        if stage is None:
            raise BuildError(f"{self.path.name} has no stage named {target}")
        while stage is not None:
            chain.insert(0, stage)
            stage = self.stage(stage.base)
        return chain

    def closure(self, target: str) -> list[Stage]:
        """Every stage a build of the target runs (FROM and ``COPY --from``), in file order."""
        todo = [target]
        found: set[int] = set()
        while todo:
            for stage in self.lineage(todo.pop()):
                found.add(self.stages.index(stage))
                for copy in stage.all("COPY"):
                    source = next(
                        (w.split("=", 1)[1] for w in copy.value.split() if w.startswith("--from=")), None
                    )
                    if source is not None and self.stage(source) is not None:
                        todo.append(source)
        return [self.stages[i] for i in sorted(found)]


def parse_instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile with their continuation lines joined. Comments and blank
    lines are dropped, inside a continued instruction too, as Docker does."""
    instructions: list[Instruction] = []
    buffer: str | None = None
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if buffer is None:
            buffer, start = "", number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, rest = buffer.partition(" ")
        instructions.append(Instruction(keyword.upper(), rest.strip(), start))
        buffer = None
    if buffer is not None:
        raise BuildError("the Dockerfile's last instruction ends with a line continuation")
    return instructions


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: list[Instruction] = []
    stages: list[tuple[str, str | None, list[Instruction]]] = []
    for instruction in parse_instructions(path.read_text(encoding="utf-8")):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.value.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append((words[0], name, []))
        elif stages:
            stages[-1][2].append(instruction)
        elif instruction.keyword == "ARG":
            global_args.append(instruction)
        else:
            raise BuildError(f"{path}:{instruction.line}: only ARG may precede FROM")
    return Dockerfile(
        path, tuple(global_args), tuple(Stage(base, name, tuple(body)) for base, name, body in stages)
    )


def parse_arg(value: str) -> tuple[str, str]:
    """An ARG's name and default ("" when it has none)."""
    name, _, default = value.partition("=")
    return name, default.strip('"')


def target_stages(dockerfile: Path, target: str | None) -> tuple[Dockerfile, list[Stage]]:
    parsed = parse_dockerfile(dockerfile)
    return parsed, list(parsed.stages) if target is None else parsed.closure(target)


def declared_args(dockerfile: Path, target: str | None = None) -> dict[str, str]:
    """Every ARG a build of the target (None: of any target) declares, with its default."""
    parsed, stages = target_stages(dockerfile, target)
    args: dict[str, str] = {}
    for instruction in [*parsed.global_args, *(a for stage in stages for a in stage.all("ARG"))]:
        name, default = parse_arg(instruction.value)
        # A stage re-declares a global ARG without a value to use it: the default is the global one.
        args[name] = args.get(name) or default
    return args


def copied_paths(dockerfile: Path, target: str | None = None) -> list[str]:
    """The build-context paths that a build of the target (None: of any target) takes with
    ``COPY``/``ADD`` (not ``--from`` a stage)."""
    paths: list[str] = []
    for stage in target_stages(dockerfile, target)[1]:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            words = instruction.value.split()
            if not any(w.startswith("--from") for w in words[:-1]):
                paths += [w for w in words[:-1] if not w.startswith("--") and w not in paths]
    return paths


def context_files(root: Path, paths: list[str]) -> list[Path]:
    """The files under ``paths`` that reach the build context: tracked and untracked-but-not-ignored
    files (git), less what .dockerignore excludes. Without git, every file under the paths."""
    try:
        listing = ["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths]
        out = subprocess.run(  # noqa: S603 - fixed arguments
            ["git", "-C", str(root), *listing],  # noqa: S607 - git from PATH, as a user runs it
            capture_output=True,
            check=True,
        ).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [p.relative_to(root).as_posix() for d in paths for p in (root / d).rglob("*") if p.is_file()]
    files = []
    for name in sorted(set(names)):
        parts = name.split("/")
        if IGNORED_PARTS.intersection(parts[:-1]) or any(IGNORED_NAMES.search(p) for p in parts):
            continue
        if (root / name).is_file():  # a tracked file deleted in the work tree is gone from the context
            files.append(root / name)
    return files


def source_digest(image: Image, build_args: dict[str, str], base_id: str | None, root: Path = ROOT) -> str:
    """sha256 over what the image is built from: the Dockerfile (all of it: its shared stages are
    every image's) and the target, the files the target's COPY lines take from the context (by path
    and content), the build arguments that change the build, and the base image's id. Equal digests
    mean a rebuild would produce the same image."""
    h = hashlib.sha256()
    h.update(image.dockerfile.read_bytes())
    h.update(f"\0target\0{image.name}".encode())
    for path in context_files(root, copied_paths(image.dockerfile, image.name)):
        h.update(b"\0file\0" + path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    for key in sorted(build_args):
        if key not in DESCRIPTIVE_ARGS:
            h.update(f"\0arg\0{key}={build_args[key]}".encode())
    h.update(f"\0base\0{base_id or ''}".encode())
    return h.hexdigest()


def image_label(engine: Engine, ref: str, label: str) -> str | None:
    """A label of a local image, or None when the image (or the label) is not there."""
    proc = subprocess.run(  # noqa: S603 - the chosen engine
        [engine.command, "image", "inspect", "--format", "{{json .Config.Labels}}", ref],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout.strip().splitlines()[0] or "null") or {}
    value = labels.get(label)
    return str(value) if value else None


def image_id(engine: Engine, ref: str) -> str | None:
    proc = subprocess.run(  # noqa: S603 - the chosen engine
        [engine.command, "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def git_revision(root: Path) -> str:
    try:
        out = subprocess.run(  # noqa: S603 - fixed arguments
            ["git", "-C", str(root), "rev-parse", "HEAD"],  # noqa: S607 - git from PATH, as a user runs it
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def build_command(
    image: Image,
    *,
    engine: Engine,
    registry: str,
    tag: str,
    revision: str,
    created: str,
    root: Path,
    context: BuildContext | None = None,
    digest: bool = False,
) -> list[str]:
    """The build command. ``digest``: label the image with its ``source_digest`` (asks the engine
    for the base image's id, so only when building for real)."""
    if image.version is None:
        raise BuildError(
            f"{image.dockerfile.relative_to(root)} has a target {image.name}, "
            f"but {image.package_dir.relative_to(root)} has no pyproject.toml"
        )
    if tag == "latest":
        raise BuildError("TAG=latest is refused: tag images with a version (default: the chart's appVersion)")
    args = {"VERSION": image.version, "REVISION": revision, "CREATED": created}
    declared = declared_args(image.dockerfile, image.name)
    context = context or BuildContext(python_image=None, ca_bundle=None)
    if context.python_image and "PYTHON_IMAGE" in declared:
        args["PYTHON_IMAGE"] = context.python_image
    if "PIP_FIND_LINKS" in declared and context.find_links:
        args["PIP_FIND_LINKS"] = " ".join(context.find_links)
    if "PIP_EXTRA_INDEX_URL" in declared and context.extra_index_urls:
        args["PIP_EXTRA_INDEX_URL"] = " ".join(context.extra_index_urls)
    if "TORCH_INDEX_URL" in declared and context.torch_index_url:
        args["TORCH_INDEX_URL"] = context.torch_index_url
    for name in PASSTHROUGH_ARGS:
        if os.environ.get(name) and name in declared:
            args[name] = os.environ[name]
    variant = os.environ.get("FAISS_VARIANT") or "cpu"
    if variant not in FAISS_VARIANTS:
        raise BuildError(f"FAISS_VARIANT={variant} is not one of {', '.join(FAISS_VARIANTS)}")
    if variant != "cpu" and "FAISS_VARIANT" in declared:
        # One name per content: a GPU build never overwrites the CPU image of the same version.
        tag = f"{tag}-{variant}"
    elif "TORCH_INDEX_URL" in declared and GPU_TORCH_INDEX.search(os.environ.get("TORCH_INDEX_URL", "")):
        # The same for the embedder's CUDA (or ROCm) torch: `<tag>-gpu`, as for faiss.
        tag = f"{tag}-gpu"
    cmd = [engine.command, "build", "-f", str(image.dockerfile.relative_to(root)), "--target", image.name]
    cmd += ["-t", image_ref(image.name, registry=registry, tag=tag)]
    if engine.podman:
        # The OCI format drops HEALTHCHECK.
        cmd += ["--format", "docker"]
    if context.ca_bundle is not None:
        cmd += ["--secret", f"id=ca,src={context.ca_bundle}"]
    for directory in context.mounts:
        cmd += ["--volume", f"{directory}:{directory}:ro"]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if digest:
        base = args.get("PYTHON_IMAGE") or declared.get("PYTHON_IMAGE") or ""
        tagged = {**args, "TAG": tag}
        cmd += ["--label", f"{SOURCE_LABEL}={source_digest(image, tagged, image_id(engine, base), root)}"]
    cmd.append(".")
    return cmd


def docker_answers(docker: str) -> bool:
    probe = subprocess.run([docker, "info"], capture_output=True, text=True)  # noqa: S603 - the user's docker
    return probe.returncode == 0


def choose_engine() -> Engine:
    """DOCKER when set; else Docker when its daemon answers; else Podman."""
    explicit = os.environ.get("DOCKER")
    if explicit:
        if shutil.which(explicit) is None:
            raise BuildError(f"`{explicit}` (DOCKER) is not on PATH")
        podman = Path(explicit).name.startswith("podman")
        if not podman and not docker_answers(explicit):
            raise BuildError(
                f"`{explicit} info` failed: no Docker daemon is reachable, so no image can be built"
            )
        return Engine(explicit, podman)
    if shutil.which("docker") and docker_answers("docker"):
        return Engine("docker", False)
    if shutil.which("podman"):
        return Engine("podman", True)
    if shutil.which("docker"):
        raise BuildError(
            "`docker info` failed: no Docker daemon is reachable and podman is not installed "
            "(make base-image installs it)"
        )
    raise BuildError(
        "`docker` and `podman` are not on PATH: images need one of them to build "
        "(make base-image installs podman; the Dockerfile is still linted by `pytest tests/images`)"
    )


def image_present(engine: Engine, ref: str) -> bool:
    cmd = [engine.command, "image", "inspect", ref]
    return subprocess.run(cmd, capture_output=True).returncode == 0  # noqa: S603


def choose_base(engine: Engine, default: str) -> str | None:
    """PYTHON_IMAGE when set; the default when present (or nothing local stands in for it); else
    the local base `make base-image` built. None: the Dockerfile's default (pulled if need be)."""
    explicit = os.environ.get("PYTHON_IMAGE")
    if explicit:
        return explicit
    if image_present(engine, default) or not image_present(engine, LOCAL_BASE):
        return None
    return LOCAL_BASE


def host_pip_sources() -> tuple[list[str], list[str], str | None]:
    """(find-links directories, file:// index URLs, index-url) of the host pip's configuration."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return [], [], None
    values: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, raw = line.partition("=")
        option = key.rpartition(".")[2]
        try:
            words = shlex.split(raw.strip().strip("'\""))
        except ValueError:
            continue
        values.setdefault(option, [])
        values[option] += [w for w in words if w not in values[option]]
    links = []
    for link in values.get("find-links", []):
        path = Path(urllib.parse.urlparse(link).path if link.startswith("file:") else link)
        if path.is_dir() and str(path) not in links:
            links.append(str(path))
    indexes = [
        url
        for url in values.get("extra-index-url", [])
        if url.startswith("file:") and Path(urllib.parse.urlparse(url).path).is_dir()
    ]
    index_url = values["index-url"][0] if values.get("index-url") else None
    return links, indexes, index_url


def build_context(engine: Engine, images: list[Image]) -> BuildContext:
    base = (
        choose_base(engine, declared_args(images[0].dockerfile).get("PYTHON_IMAGE", "")) if images else None
    )
    ca_value = os.environ.get("BUILD_CA_BUNDLE")
    ca: Path | None = Path(ca_value) if ca_value else (HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None)
    if ca is not None and not ca.is_file():
        raise BuildError(f"BUILD_CA_BUNDLE={ca} is not a file")
    # Docker's build has no --volume: there pip uses the indexes alone.
    if not engine.podman or os.environ.get("BUILD_LOCAL_WHEELS", "1") == "0":
        return BuildContext(python_image=base, ca_bundle=ca)
    links, indexes, index_url = host_pip_sources()
    mounts: list[str] = list(links)
    for url in indexes:
        # A file:// index's links point at its sibling directories (../../files/…): mount its parent.
        path = Path(urllib.parse.urlparse(url).path)
        mount = str(path.parent if path.name == "simple" else path)
        if mount not in mounts:
            mounts.append(mount)
    torch_index = None
    torch_version = declared_args(ROOT / DOCKERFILE).get("TORCH_VERSION")
    cpu_torch = [p for link in links for p in Path(link).glob(f"torch-{torch_version}+cpu-*.whl")]
    if cpu_torch and not os.environ.get("TORCH_INDEX_URL"):
        # The CPU build sorts above PyPI's CUDA build of the same release (its +cpu local version),
        # so with the local wheels mounted the host's own index gives the CPU torch, as on the host.
        torch_index = index_url or "https://pypi.org/simple"
    return BuildContext(
        python_image=base,
        ca_bundle=ca,
        mounts=tuple(mounts),
        find_links=tuple(links),
        extra_index_urls=tuple(indexes),
        torch_index_url=torch_index,
    )


# --- after the build: size, and one run as the chart runs it --------------------------------------


def image_size(engine: Engine, ref: str) -> int | None:
    out = subprocess.run(  # noqa: S603
        [engine.command, "image", "inspect", "--format", "{{.Size}}", ref], capture_output=True, text=True
    )
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else None


# The UI refuses to listen beyond loopback without a login, the gateway to start without a key.
SMOKE_SECRETS = {"ui": "UI_LOCAL_PASSWORD", "gateway": "GATEWAY_DEV_KEY"}
RUN_AS_DEPLOYED = [
    "--read-only",
    "--user",
    "10001:10001",
    "--tmpfs",
    "/tmp:rw,size=256m",  # noqa: S108 - the container's own tmpfs, as the chart's emptyDir
    "--cap-drop",
    "ALL",
]


def smoke_test(engine: Engine, image: Image, ref: str, timeout: float = 180.0) -> dict[str, object]:
    """Run the image once as the chart runs it (read-only root, uid 10001, no capabilities): its
    module imports, and a service answers /healthz."""
    started = time.monotonic()
    importing = subprocess.run(  # noqa: S603
        [
            engine.command,
            "run",
            "--rm",
            *RUN_AS_DEPLOYED,
            "--entrypoint",
            "python",
            ref,
            "-c",
            f"import {image.module}",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    result: dict[str, object] = {"import": importing.returncode == 0}
    if importing.returncode != 0:
        result["error"] = importing.stderr.strip().splitlines()[-1:] or ["exit status"]
        return result
    port = PORTS.get(image.name)
    if port is None:
        return result
    name = f"omnirag-smoke-{image.name}-{os.getpid()}"
    env: list[str] = []
    if image.name in SMOKE_SECRETS:
        # Secure defaults refuse to start without a credential: a throwaway one, passed by name from
        # this process's environment so that it appears on no command line.
        os.environ[SMOKE_SECRETS[image.name]] = secrets.token_urlsafe(24)
        env = ["--env", SMOKE_SECRETS[image.name]]
    run = subprocess.run(  # noqa: S603
        [
            engine.command,
            "run",
            "-d",
            "--name",
            name,
            *RUN_AS_DEPLOYED,
            *env,
            "-p",
            f"127.0.0.1::{port}",
            ref,
        ],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        result["healthz"] = False
        result["error"] = run.stderr.strip().splitlines()[-1:]
        return result
    try:
        mapped = subprocess.run(  # noqa: S603
            [engine.command, "port", name, str(port)], capture_output=True, text=True
        ).stdout.split()[0]
        url = f"http://{mapped}/healthz"
        healthy = False
        while time.monotonic() - started < timeout:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    healthy = response.status == 200
                    break
            except OSError:
                state = subprocess.run(  # noqa: S603
                    [engine.command, "inspect", "--format", "{{.State.Running}}", name],
                    capture_output=True,
                    text=True,
                )
                if state.stdout.strip() != "true":
                    break
                time.sleep(1)
        result["healthz"] = healthy
        if not healthy:
            logs = subprocess.run([engine.command, "logs", name], capture_output=True, text=True)  # noqa: S603
            result["error"] = (logs.stdout + logs.stderr).strip().splitlines()[-5:]
    finally:
        subprocess.run([engine.command, "rm", "-f", name], capture_output=True)  # noqa: S603
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="images to build (default: all), e.g. gateway embedder")
    parser.add_argument("--dry-run", action="store_true", help="print the build commands, run nothing")
    parser.add_argument("--list", action="store_true", help="print the image references and stop")
    parser.add_argument("--push", action="store_true", help="push each image after it is built")
    parser.add_argument(
        "--check", action="store_true", help="run each image once as deployed after its build"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="build every layer afresh (an honest build time)"
    )
    parser.add_argument(
        "--no-build", action="store_true", help="with --check: run the images already built, build nothing"
    )
    parser.add_argument(
        "--if-changed",
        action="store_true",
        help="skip an image whose label says it was built from the same sources, arguments and base",
    )
    parser.add_argument(
        "--report", type=Path, help="write each image's size and build time to this JSON file"
    )
    opts = parser.parse_args(argv)

    registry = os.environ.get("REGISTRY") or DEFAULT_REGISTRY
    try:
        tag = os.environ.get("TAG") or chart_app_version()
        images = discover()
        known = {image.name for image in images}
        unknown = sorted(set(opts.names) - known)
        if unknown:
            raise BuildError(f"no image named {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if opts.names:
            images = [image for image in images if image.name in opts.names]
        if opts.list:
            for image in images:
                print(image_ref(image.name, registry=registry, tag=tag))
            return 0
        if opts.dry_run:
            # The commands DOCKER (default docker) would run, without asking whether it answers.
            command = os.environ.get("DOCKER") or "docker"
            engine = Engine(command, Path(command).name.startswith("podman"))
        else:
            engine = choose_engine()
        context = build_context(engine, images)
        revision = git_revision(ROOT)
        created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        commands = [
            build_command(
                image,
                engine=engine,
                registry=registry,
                tag=tag,
                revision=revision,
                created=created,
                root=ROOT,
                context=context,
                digest=not opts.dry_run,
            )
            for image in images
        ]
    except BuildError as exc:
        print(f"build_images: {exc}", file=sys.stderr)
        return 2
    if opts.dry_run:
        for cmd in commands:
            print(shlex.join(cmd))
        return 0

    print(
        f"build_images: {engine.command}, base {context.python_image or 'the Dockerfile default'}",
        flush=True,
    )
    report: list[dict[str, object]] = []
    status = 0
    for image, cmd in zip(images, commands, strict=True):
        ref = cmd[cmd.index("-t") + 1]
        wanted = next(a.split("=", 1)[1] for a in cmd if a.startswith(SOURCE_LABEL + "="))
        if opts.if_changed and not opts.no_build and image_label(engine, ref, SOURCE_LABEL) == wanted:
            print(f"==> {image.name}: {ref} is up to date (built from the same sources)", flush=True)
            continue
        if not opts.no_build:
            print(f"==> {image.name}: {shlex.join(cmd)}", flush=True)
        entry: dict[str, object] = {"image": ref}
        if not opts.no_build:
            started = time.monotonic()
            build = [*cmd[:2], "--no-cache", *cmd[2:]] if opts.no_cache else cmd
            if subprocess.run(build, cwd=ROOT).returncode != 0:  # noqa: S603 - built from the repository's files
                print(f"build_images: building {image.name} failed", file=sys.stderr)
                if context.python_image is None and not image_present(engine, DEFAULT_BASE):
                    print(
                        f"build_images: if {DEFAULT_BASE} could not be pulled (no registry reachable), "
                        "`make base-image` builds a local base that the next `make images` uses",
                        file=sys.stderr,
                    )
                status = 1
                break
            entry["build_seconds"] = round(time.monotonic() - started, 1)
            if image_label(engine, ref, SOURCE_LABEL) != wanted:
                # An engine that takes every step from its cache may hand back an earlier build's
                # image, labels and all: --if-changed would then build this image on every run.
                print(f"build_images: {ref} kept an earlier build's labels (all cached)", file=sys.stderr)
                status = 1
                break
        entry["size_bytes"] = image_size(engine, ref)
        if opts.check:
            entry["run_as_deployed"] = smoke_test(engine, image, ref)
            print(f"==> {image.name}: run as deployed: {entry['run_as_deployed']}", flush=True)
        report.append(entry)
        if opts.push and subprocess.run([engine.command, "push", ref], cwd=ROOT).returncode != 0:  # noqa: S603
            print(f"build_images: pushing {ref} failed", file=sys.stderr)
            status = 1
            break
    if opts.report:
        write_report(opts.report, engine, context, report)
    return status


def write_report(path: Path, engine: Engine, context: BuildContext, images: list[dict[str, object]]) -> None:
    """Merge into an existing report so images built in separate runs end up in one file."""
    earlier: list[dict[str, object]] = []
    if path.is_file():
        earlier = list(json.loads(path.read_text(encoding="utf-8")).get("images", []))
    by_image = {str(e["image"]): e for e in earlier}
    for entry in images:
        # A --no-build run adds its checks to the build time recorded earlier.
        by_image[str(entry["image"])] = {**by_image.get(str(entry["image"]), {}), **entry}
    data = {
        "engine": Path(engine.command).name,
        "base": context.python_image or DEFAULT_BASE,
        "cpus": os.cpu_count(),
        "images": sorted(by_image.values(), key=lambda e: str(e["image"])),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
