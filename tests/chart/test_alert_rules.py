"""The chart's alerts, checked and unit-tested by Prometheus's own promtool (Debian's `prometheus`
package): `promtool check rules` on the rendered PrometheusRule, and `promtool test rules` with
alert_rules_test.yaml, where a healthy release fires no alert and a broken one fires every alert
the chart renders (each one's labels checked; one `for` seen pending before it fires)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE.parents[1] / "charts" / "omnirag"
UNIT_TESTS = HERE / "alert_rules_test.yaml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: `make system-deps` installs Debian's prometheus")
    return found


def rendered_rules(helm_template: Callable[..., Any], tmp_path: Path) -> dict[str, Any]:
    """The groups of the PrometheusRule of ci/gpu-full-values.yaml, as a rules file."""
    result = helm_template(CHART / "ci" / "gpu-full-values.yaml")
    assert result.returncode == 0, result.stderr
    (rule,) = [d for d in result.docs if d.get("kind") == "PrometheusRule"]
    rules = {"groups": rule["spec"]["groups"]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    return rules


def identity(alert: str, labels: dict[str, str]) -> tuple[str, str | None, str | None]:
    """What tells one rendered alert from another: its name, component, and model or knowledge base."""
    return alert, labels.get("component"), labels.get("model") or labels.get("knowledge_base")


def test_promtool_accepts_the_rendered_rules(helm_template: Callable[..., Any], tmp_path: Path) -> None:
    rendered_rules(helm_template, tmp_path)
    proc = subprocess.run(
        [promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_fires_when_broken_and_none_when_healthy(
    helm_template: Callable[..., Any], tmp_path: Path
) -> None:
    rules = rendered_rules(helm_template, tmp_path)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = subprocess.run(
        [promtool(), "test", "rules", UNIT_TESTS.name], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every alert the chart renders is among those the broken release must fire (the healthy one
    # expects ALERTS to be empty, so a rule left out of the list would fail it only if it fired).
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    rendered = {identity(r["alert"], r["labels"]) for r in alerts}
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    (broken,) = [t for t in tests if t["name"] == "a broken release fires every alert"]
    expected = set()
    for sample in broken["promql_expr_test"][0]["exp_samples"]:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', sample["labels"]))
        expected.add(identity(labels["alertname"], labels))
    assert rendered == expected, f"alerts without a firing test: {sorted(rendered - expected)}"
