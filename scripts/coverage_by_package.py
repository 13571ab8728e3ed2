"""Line coverage of each package (libs/*, services/*, jobs/*) from the data `make test` collected.

`make test` runs pytest with coverage on (pytest-cov, configured in pyproject.toml); this prints one
row per package so the CI log shows where tests are thin, e.g.

    package                 statements   missed   covered
    libs/core                     3120      210     93.3%

It reads `.coverage` (or the file given) and exits 0: coverage is reported, not gated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import coverage

REPO = Path(__file__).resolve().parents[1]


def package_of(path: Path) -> str | None:
    """libs/core/src/omnirag/core/app.py → libs/core; None for files outside the packages."""
    try:
        parts = path.resolve().relative_to(REPO).parts
    except ValueError:
        return None
    if len(parts) >= 3 and parts[0] in ("libs", "services", "jobs") and parts[2] == "src":
        return f"{parts[0]}/{parts[1]}"
    return None


def by_package(data_file: Path) -> dict[str, tuple[int, int]]:
    """package → (statements, missed)."""
    cov = coverage.Coverage(data_file=str(data_file), config_file=str(REPO / "pyproject.toml"))
    cov.load()
    totals: dict[str, tuple[int, int]] = {}
    for name in cov.get_data().measured_files():
        package = package_of(Path(name))
        if package is None:
            continue
        _, statements, _, missing, _ = cov.analysis2(name)
        s, m = totals.get(package, (0, 0))
        totals[package] = (s + len(statements), m + len(missing))
    return dict(sorted(totals.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_file", nargs="?", type=Path, default=REPO / ".coverage")
    args = parser.parse_args(argv)
    if not args.data_file.is_file():
        print(f"no coverage data at {args.data_file}", file=sys.stderr)
        return 0
    rows = by_package(args.data_file)
    print(f"{'package':<24}{'statements':>11}{'missed':>9}{'covered':>10}")
    all_s = all_m = 0
    for package, (s, m) in rows.items():
        all_s, all_m = all_s + s, all_m + m
        print(f"{package:<24}{s:>11}{m:>9}{100 * (s - m) / max(s, 1):>9.1f}%")
    print(f"{'total':<24}{all_s:>11}{all_m:>9}{100 * (all_s - all_m) / max(all_s, 1):>9.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
