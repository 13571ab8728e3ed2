"""Build the container image of every service and job (``make images``).

Each package directory under services/ and jobs/ that has a ``Dockerfile`` is one image, built
from the repository root (the Dockerfiles copy libs/core and libs/index from there):

    docker build -f <package>/Dockerfile -t ${REGISTRY:-omnirag}/<name>:<tag> .

The tag is ``$TAG`` when set, otherwise the version in that package's pyproject.toml: never
``latest``, so a deployment names exactly what it runs. Only the standard library is used, so this
runs with any Python 3.11+ and needs no virtual environment.

Environment: REGISTRY, TAG, TORCH_INDEX_URL (a CUDA wheel index for the images that install torch),
FAISS_VARIANT (``cpu``, the default, or ``gpu``: the images that install faiss get faiss-gpu-cu12
instead of faiss-cpu and a ``-gpu`` tag suffix, e.g. ``retriever:0.1.0-gpu``), PYTHON_DIGEST
(sha256:… of the pinned Python base), DOCKER (the docker binary).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_PARENTS = ("services", "jobs")
# Build args passed through from the environment when set, to the images that declare them.
PASSTHROUGH_ARGS = ("TORCH_INDEX_URL", "PYTHON_DIGEST", "FAISS_VARIANT")
FAISS_VARIANTS = ("cpu", "gpu")


class BuildError(Exception):
    """A problem the user must fix; printed as one line."""


@dataclass(frozen=True)
class Image:
    name: str
    package_dir: Path
    version: str | None  # None: the package has no pyproject.toml (yet); building it is an error

    @property
    def dockerfile(self) -> Path:
        return self.package_dir / "Dockerfile"


def discover(root: Path = ROOT) -> list[Image]:
    images = []
    for parent in PACKAGE_PARENTS:
        for dockerfile in sorted((root / parent).glob("*/Dockerfile")):
            package_dir = dockerfile.parent
            pyproject = package_dir / "pyproject.toml"
            version = None
            if pyproject.is_file():
                version = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
            images.append(Image(package_dir.name, package_dir, version))
    return images


def declared_args(dockerfile: Path) -> set[str]:
    text = dockerfile.read_text(encoding="utf-8")
    return set(re.findall(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", text, flags=re.MULTILINE))


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
    image: Image, *, docker: str, registry: str, tag: str | None, revision: str, created: str, root: Path
) -> list[str]:
    if image.version is None:
        raise BuildError(f"{image.package_dir.relative_to(root)} has a Dockerfile but no pyproject.toml")
    tag = tag or image.version
    if tag == "latest":
        raise BuildError("TAG=latest is refused: tag images with a version (default: the package's)")
    args = {"VERSION": image.version, "REVISION": revision, "CREATED": created}
    declared = declared_args(image.dockerfile)
    for name in PASSTHROUGH_ARGS:
        if os.environ.get(name) and name in declared:
            args[name] = os.environ[name]
    variant = os.environ.get("FAISS_VARIANT") or "cpu"
    if variant not in FAISS_VARIANTS:
        raise BuildError(f"FAISS_VARIANT={variant} is not one of {', '.join(FAISS_VARIANTS)}")
    if variant != "cpu" and "FAISS_VARIANT" in declared:
        # One name per content: a GPU build never overwrites the CPU image of the same version.
        tag = f"{tag}-{variant}"
    cmd = [
        docker,
        "build",
        "-f",
        str(image.dockerfile.relative_to(root)),
        "-t",
        f"{registry}/{image.name}:{tag}",
    ]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    cmd.append(".")
    return cmd


def check_docker(docker: str) -> None:
    if shutil.which(docker) is None:
        raise BuildError(
            f"`{docker}` is not on PATH: images need Docker to build "
            "(the Dockerfiles are still linted and tested by `pytest tests/images`)"
        )
    probe = subprocess.run([docker, "info"], capture_output=True, text=True)  # noqa: S603 - the user's docker
    if probe.returncode != 0:
        raise BuildError(f"`{docker} info` failed: no Docker daemon is reachable, so no image can be built")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="images to build (default: all), e.g. gateway embedder")
    parser.add_argument("--dry-run", action="store_true", help="print the docker commands, run nothing")
    parser.add_argument("--push", action="store_true", help="docker push each image after it is built")
    opts = parser.parse_args(argv)

    docker = os.environ.get("DOCKER", "docker")
    registry = os.environ.get("REGISTRY") or "omnirag"
    tag = os.environ.get("TAG") or None
    try:
        images = discover()
        known = {image.name for image in images}
        unknown = sorted(set(opts.names) - known)
        if unknown:
            raise BuildError(f"no image named {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if opts.names:
            images = [image for image in images if image.name in opts.names]
        revision = git_revision(ROOT)
        created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        commands = [
            build_command(
                image,
                docker=docker,
                registry=registry,
                tag=tag,
                revision=revision,
                created=created,
                root=ROOT,
            )
            for image in images
        ]
        if opts.dry_run:
            for cmd in commands:
                print(" ".join(cmd))
            return 0
        check_docker(docker)
    except BuildError as exc:
        print(f"build_images: {exc}", file=sys.stderr)
        return 2

    for image, cmd in zip(images, commands, strict=True):
        print(f"==> {image.name}: {' '.join(cmd)}", flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:  # noqa: S603 - built from the repository's files
            print(f"build_images: building {image.name} failed", file=sys.stderr)
            return 1
        if opts.push:
            ref = cmd[cmd.index("-t") + 1]
            if subprocess.run([docker, "push", ref], cwd=ROOT).returncode != 0:  # noqa: S603 - as above
                print(f"build_images: pushing {ref} failed", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
