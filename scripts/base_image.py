"""Build the Python base image offline from Debian packages (``make base-image``).

Where no container registry is reachable (these build machines), the images' default base
(``python:3.11.17-slim-bookworm``) cannot be pulled. This builds a stand-in from the Debian mirror
apt already uses: ``mmdebstrap`` a minimal bookworm with python3, venv and pip, then
``podman import`` it as ``localhost/python:3.11-bookworm-local`` (Debian's Python 3.11.2; about
40 s, 250 MB). ``scripts/build_images.py`` picks it up when the default base is not present.

It also writes the ``containers.conf`` every make target that runs podman selects with
``CONTAINERS_CONF``: runc (crun refuses the hybrid cgroup setup of these machines) and explicit
ulimits (podman's default setrlimit is refused here).

Idempotent: installs the Debian packages only when missing, skips the build when the image exists
(``--force`` rebuilds it). Only the standard library is used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = "localhost/python:3.11-bookworm-local"
DEFAULT_CONF = ROOT / ".tools" / "containers" / "containers.conf"
SUITE = "bookworm"
# What images/Dockerfile needs from a base: python, venv for its builder stages, CA roots for pip and
# apt over HTTPS, python-is-python3 because the images call `python`. passwd (useradd) is in minbase.
INCLUDE = ["python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates"]
# Debian package -> a file it installs (dpkg -s is slower and noisier than a path check).
APT_PACKAGES = {
    "podman": "/usr/bin/podman",
    "buildah": "/usr/bin/buildah",
    "mmdebstrap": "/usr/bin/mmdebstrap",
    "fuse-overlayfs": "/usr/bin/fuse-overlayfs",
    "slirp4netns": "/usr/bin/slirp4netns",
    "uidmap": "/usr/bin/newuidmap",
    "runc": "/usr/sbin/runc",
}
CONTAINERS_CONF = """\
# Written by scripts/base_image.py (make base-image / make images); selected with CONTAINERS_CONF.
[containers]
# podman's default ulimits are refused by setrlimit on these machines; these are within the host's.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
# crun refuses this hybrid cgroup setup; runc works.
runtime = "runc"
"""


class BaseImageError(Exception):
    """A problem the user must fix; printed as one line."""


def write_containers_conf(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != CONTAINERS_CONF:
        path.write_text(CONTAINERS_CONF, encoding="utf-8")


def install_missing_packages() -> None:
    missing = [name for name, marker in APT_PACKAGES.items() if not Path(marker).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise BaseImageError(
            f"missing Debian packages {' '.join(missing)}: run as root or apt-get install them"
        )
    print(f"base-image: installing {' '.join(missing)} (apt)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        if subprocess.run(cmd, env=env).returncode != 0:  # noqa: S603 - fixed arguments
            raise BaseImageError(f"`{' '.join(cmd)}` failed")


def apt_sources(root: Path = Path("/")) -> list[str]:
    """The host's apt sources for SUITE as one-line ``deb`` entries (both file formats), so the base
    comes from the same mirror, with the same updates and security suites, as the host's packages."""
    lines: list[str] = []
    legacy = [root / "etc/apt/sources.list", *sorted((root / "etc/apt/sources.list.d").glob("*.list"))]
    for path in legacy:
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip()
                if line.startswith("deb ") and SUITE in line:
                    lines.append(line)
    for path in sorted((root / "etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text(encoding="utf-8").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line and not line.startswith(("#", " ")) and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    if suite.startswith(SUITE):
                        lines.append(f"deb {uri} {suite} {fields.get('components', 'main')}")
    return lines


def image_exists(podman: str, image: str) -> bool:
    return subprocess.run([podman, "image", "exists", image]).returncode == 0  # noqa: S603


def build(podman: str, image: str) -> None:
    sources = apt_sources() or [f"deb http://deb.debian.org/debian {SUITE} main"]
    with tempfile.TemporaryDirectory(prefix="omnirag-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(INCLUDE)}",
            # No apt lists in the image: a stage that needs a package runs apt-get update itself.
            "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
            SUITE,
            str(rootfs),
            *sources,
        ]
        print(f"base-image: {' '.join(cmd)}", flush=True)
        if subprocess.run(cmd).returncode != 0:  # noqa: S603 - fixed arguments and the host's sources
            raise BaseImageError("mmdebstrap failed (is the Debian mirror in /etc/apt reachable?)")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)  # noqa: S603,S607
        imported = subprocess.run(  # noqa: S603
            [
                podman,
                "import",
                # What the official python image sets; an imported tarball has no config at all.
                "--change",
                "ENV LANG=C.UTF-8",
                "--change",
                'CMD ["python3"]',
                "-",
                image,
            ],
            stdin=tar.stdout,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise BaseImageError(f"importing {rootfs} as {image} failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--image", default=DEFAULT_IMAGE, help=f"the image to create (default {DEFAULT_IMAGE})"
    )
    parser.add_argument(
        "--containers-conf", type=Path, default=DEFAULT_CONF, help="where to write containers.conf"
    )
    parser.add_argument("--conf-only", action="store_true", help="write containers.conf and stop")
    parser.add_argument("--force", action="store_true", help="rebuild the image even when it exists")
    opts = parser.parse_args(argv)
    try:
        write_containers_conf(opts.containers_conf)
        if opts.conf_only:
            return 0
        install_missing_packages()
        os.environ["CONTAINERS_CONF"] = str(opts.containers_conf)
        podman = shutil.which("podman") or "podman"
        if image_exists(podman, opts.image) and not opts.force:
            print(f"base-image: {opts.image} exists (--force rebuilds it)")
            return 0
        build(podman, opts.image)
    except BaseImageError as exc:
        print(f"base_image: {exc}", file=sys.stderr)
        return 1
    print(f"base-image: built {opts.image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
