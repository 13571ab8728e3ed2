"""The committed values.schema.json is exactly what charts/omnirag/hack/gen_values_schema.py writes.

`make test` runs tests/chart, so a schema edited by hand, or a change to the generator or to the
indexer's knowledge-bases schema without regenerating, fails here with the diff and the command
that regenerates the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "omnirag"
GENERATOR = CHART / "hack" / "gen_values_schema.py"
SCHEMA = CHART / "values.schema.json"


def generate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_the_committed_schema_is_what_the_generator_writes() -> None:
    result = generate("--check")
    assert result.returncode == 0, (
        f"values.schema.json drifted from its generator:\n{result.stdout}{result.stderr}"
    )


def test_check_fails_on_a_drifted_schema_with_the_diff_and_the_command(tmp_path: Path) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    title = schema["title"]
    schema["title"] = "edited by hand"
    drifted = tmp_path / "values.schema.json"
    text = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    drifted.write_text(text, encoding="utf-8")

    result = generate("--check", "--output", drifted)

    assert result.returncode == 1, result.stdout + result.stderr
    diff = result.stdout.splitlines()
    assert diff[0].startswith("--- ") and diff[1].startswith("+++ "), result.stdout
    # Only the edited line differs.
    changed = [line for line in diff[2:] if line.startswith(("+", "-"))]
    assert changed == ['-  "title": "edited by hand",', f'+  "title": {json.dumps(title)},'], changed
    assert f"gen_values_schema.py --output {drifted}" in result.stderr, result.stderr
    assert drifted.read_text(encoding="utf-8") == text, "--check wrote the file"


def test_check_fails_on_a_missing_schema(tmp_path: Path) -> None:
    missing = tmp_path / "values.schema.json"
    result = generate("--check", "--output", missing)
    assert result.returncode == 1
    assert "is missing" in result.stderr and not result.stdout, result.stdout + result.stderr
    assert not missing.exists()


def test_writing_reproduces_the_committed_file_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "values.schema.json"
    result = generate("--output", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == SCHEMA.read_bytes()
