"""The Helm chart charts/omnirag: lint, schema, Kubernetes validity, checkov, and what its objects promise.

Every ci value set (values.yaml alone and each file of charts/omnirag/ci/) is rendered once per
session by `helm template`; the tests read the rendered objects the way a cluster would get them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from omnirag.indexer import spec as kb_spec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "omnirag"
RELEASE = "omnirag"
CI_SETS = [
    "default",
    "cpu-external-llm",
    "gpu-full",
    "external-redis",
    "only-retriever",
    "managed-single-node",
]
CI_FILES = {name: (None if name == "default" else CHART / "ci" / f"{name}-values.yaml") for name in CI_SETS}

# values key -> the app.kubernetes.io/component label (and name suffix) of its objects.
COMPONENTS = {
    "gateway": "gateway",
    "embedder": "embedder",
    "retriever": "retriever",
    "ui": "ui",
    "indexer": "indexer",
    "vllm": "vllm",
    "modelDownload": "model-download",
    "redis": "redis",
}
# The omnirag services: each serves /healthz (alive) and /readyz (usable).
HTTP_SERVICES = {"gateway", "embedder", "retriever", "ui"}
# DESIGN.md: the chart uses the local default ports as container ports.
CONTAINER_PORTS = {
    "gateway": 8000,
    "embedder": 8001,
    "retriever": 8002,
    "ui": 7860,
    "vllm": 6006,
    "redis": 6379,
}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}
# Custom resources kubernetes-validate has no schema for; their shape is checked by hand below.
MONITORING_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}
# Gateway API (a CRD too): only HTTPRoute, checked by test_routes_never_reach_metrics_or_probes.
CRD_KINDS = {**MONITORING_KINDS, "HTTPRoute": "gateway.networking.k8s.io/v1"}
# Pod Security Standards "restricted": the only volume types allowed.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
METADATA_IP = ipaddress.ip_address("169.254.169.254")
SECRETISH_ENV = re.compile(r"(PASSWORD|PASSWD|TOKEN|API_?KEY|SECRET|CREDENTIAL)", re.IGNORECASE)
# Names that hold where a secret is, not the secret.
SECRET_POINTER_ENV = re.compile(r"(_FILE|_PATH|_DIR|_NAME|_HEADER|_KEY_NAME|_REF)$", re.IGNORECASE)

Docs = list[dict[str, Any]]
Renderer = Callable[[str], Docs]


# ---- reading rendered objects ------------------------------------------------------------------


def ref(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_template(obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]] | None:
    """(pod labels, pod spec) of a workload or a Pod; None for anything else."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return obj.get("metadata", {}).get("labels") or {}, spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    elif kind not in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return None
    template = spec.get("template") or {}
    return (template.get("metadata") or {}).get("labels") or {}, template.get("spec") or {}


def workloads(docs: Docs) -> Iterator[tuple[dict[str, Any], dict[str, str], dict[str, Any]]]:
    for obj in docs:
        found = pod_template(obj)
        if found is not None:
            yield obj, found[0], found[1]


def component_of(obj: dict[str, Any]) -> str | None:
    labels = obj.get("metadata", {}).get("labels") or {}
    if "app.kubernetes.io/component" in labels:
        return str(labels["app.kubernetes.io/component"])
    found = pod_template(obj)
    if found is not None and "app.kubernetes.io/component" in found[0]:
        return str(found[0]["app.kubernetes.io/component"])
    return None


def belongs(label: str | None, component: str) -> bool:
    """A component's objects carry its name as component label, or a part of it (indexer-worker)."""
    return label is not None and (label == component or label.startswith(f"{component}-"))


def of_component(docs: Docs, component: str, kinds: set[str] | None = None) -> Docs:
    return [
        o for o in docs if belongs(component_of(o), component) and (kinds is None or o.get("kind") in kinds)
    ]


def containers(pod: dict[str, Any], init: bool = True) -> Iterator[dict[str, Any]]:
    yield from pod.get("containers") or []
    if init:
        yield from pod.get("initContainers") or []
        yield from pod.get("ephemeralContainers") or []


def tokens(container: dict[str, Any]) -> list[str]:
    """command + args as argv tokens; a shell script argument is split, `--flag=value` becomes two."""
    out: list[str] = []
    for arg in [*(container.get("command") or []), *(container.get("args") or [])]:
        parts = shlex.split(str(arg)) if re.search(r"\s", str(arg)) else [str(arg)]
        for part in parts:
            if part.startswith("--") and "=" in part:
                out += part.split("=", 1)
            else:
                out.append(part)
    return out


def script_text(container: dict[str, Any]) -> str:
    return " ".join(str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])])


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def is_default_deny(policy: dict[str, Any]) -> bool:
    """A policy that opens nothing but DNS: no ingress rule, egress rules only to port 53.

    Its selector may be empty (the whole namespace) or the release's labels; which pods it covers
    is checked by the test that looks for it.
    """
    spec = policy.get("spec") or {}
    if spec.get("ingress"):
        return False
    for rule in spec.get("egress") or []:
        ports = rule.get("ports") or []
        if not ports or any(str(p.get("port")) != "53" for p in ports):
            return False
    return True


def image_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "no tag (means latest)"
    if last.rsplit(":", 1)[1] in {"", "latest"}:
        return "the latest tag"
    return None


def fmt(problems: list[str]) -> str:
    return "\n  " + "\n  ".join(problems)


# ---- lint, render, validate ----------------------------------------------------------------------


@pytest.mark.parametrize("ci", CI_SETS)
def test_helm_lint_strict(tools: Any, ci: str) -> None:
    cmd: list[str | Path] = [tools.helm, "lint", "--strict", CHART, "--namespace", "omnirag"]
    values = CI_FILES[ci]
    if values is not None:
        cmd += ["--values", values]
    proc = tools.run(cmd)
    assert proc.returncode == 0, f"helm lint --strict with {ci!r} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("ci", CI_SETS)
def test_template_renders_named_objects(rendered: Renderer, ci: str) -> None:
    docs = rendered(ci)
    assert docs, f"{ci}: helm template rendered nothing"
    problems = [
        f"{ref(o)}: missing apiVersion/kind/metadata.name"
        for o in docs
        if not (o.get("apiVersion") and o.get("kind") and o.get("metadata", {}).get("name"))
    ]
    seen: set[tuple[str, str]] = set()
    for o in docs:
        key = (str(o.get("kind")), str(o.get("metadata", {}).get("name")))
        if key in seen:
            problems.append(f"{key[0]}/{key[1]} rendered twice")
        seen.add(key)
    assert not problems, f"{ci}:{fmt(problems)}"


def validate_manifests(tools: Any, docs: Docs, tmp_path: Path, kube_version: str | None = None) -> list[str]:
    """kubernetes-validate --strict over the built-in kinds; every warning counts as a failure.

    kubernetes-validate only warns, and exits 0, for a kind it has no schema for: that is how a
    custom resource looks, but also how a built-in kind with a removed apiVersion looks
    (autoscaling/v2beta2). So custom resources are taken out first and any warning left fails.
    """
    unknown = [
        ref(o) for o in docs if o.get("kind") in CRD_KINDS and o.get("apiVersion") != CRD_KINDS[o["kind"]]
    ]
    builtin = [o for o in docs if o.get("kind") not in CRD_KINDS]
    manifest = tmp_path / "manifests.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    cmd: list[str | Path] = [tools.kubernetes_validate, "--strict", "--quiet"]
    if kube_version:
        cmd += ["--kubernetes-version", kube_version]
    proc = tools.run([*cmd, manifest])
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    problems = [f"{r}: not {CRD_KINDS[r.split('/')[0]]}" for r in unknown]
    problems += [line.replace(str(manifest), "") for line in lines if line.startswith(("WARN", "ERROR"))]
    if proc.returncode != 0 and not problems:
        problems.append(f"kubernetes-validate exit {proc.returncode}: {proc.stdout}{proc.stderr}")
    return problems


@pytest.mark.parametrize("ci", CI_SETS)
def test_manifests_validate_strict(tools: Any, rendered: Renderer, ci: str, tmp_path: Path) -> None:
    problems = validate_manifests(tools, rendered(ci), tmp_path)
    assert not problems, f"{ci}: kubernetes-validate --strict:{fmt(problems)}"


def min_kube_version() -> str:
    constraint = str(yaml.safe_load((CHART / "Chart.yaml").read_text()).get("kubeVersion", ""))
    match = re.search(r">=?\s*v?(\d+)\.(\d+)", constraint)
    assert match, f"Chart.yaml kubeVersion {constraint!r} names no minimum"
    return f"{match.group(1)}.{match.group(2)}.0"


@pytest.mark.parametrize("ci", ["default", "gpu-full"])
def test_manifests_validate_at_min_kube_version(
    tools: Any, helm_template: Callable[..., Any], ci: str, tmp_path: Path
) -> None:
    """Chart.yaml promises kubeVersion >= X: the render for X must be valid against X's schemas."""
    version = min_kube_version()
    result = helm_template(CI_FILES[ci], extra=["--kube-version", version])
    assert result.returncode == 0, f"helm template --kube-version {version} with {ci!r}:\n{result.stderr}"
    problems = validate_manifests(tools, result.docs, tmp_path, kube_version=version)
    assert not problems, f"{ci} at Kubernetes {version}:{fmt(problems)}"


def test_monitoring_custom_resources_have_their_shape(rendered: Renderer) -> None:
    """ServiceMonitor and PrometheusRule, which kubernetes-validate cannot check, checked by hand."""
    problems: list[str] = []
    counts = dict.fromkeys(MONITORING_KINDS, 0)
    for ci in CI_SETS:
        docs = rendered(ci)
        services = [o for o in docs if o.get("kind") == "Service"]
        for obj in docs:
            kind = obj.get("kind")
            if kind not in MONITORING_KINDS:
                continue
            counts[kind] += 1
            where = f"{ci}: {ref(obj)}"
            if obj.get("apiVersion") != CRD_KINDS[kind]:
                problems.append(f"{where}: apiVersion {obj.get('apiVersion')!r}, want {CRD_KINDS[kind]}")
            spec = obj.get("spec") or {}
            if kind == "ServiceMonitor":
                selector = spec.get("selector") or {}
                targets = [
                    s
                    for s in services
                    if selector and selector_matches(selector, s["metadata"].get("labels") or {})
                ]
                if not targets:
                    problems.append(f"{where}: selector {selector} selects no rendered Service")
                endpoints = spec.get("endpoints") or []
                if not endpoints:
                    problems.append(f"{where}: no endpoints")
                port_names = {p.get("name") for s in targets for p in s["spec"].get("ports") or []}
                for ep in endpoints:
                    if ep.get("port") not in port_names:
                        problems.append(
                            f"{where}: endpoint port {ep.get('port')!r} is not a port of {port_names}"
                        )
                    if ep.get("path", "/metrics") != "/metrics":
                        problems.append(f"{where}: endpoint path {ep.get('path')!r}, want /metrics")
                unknown = set(spec) - {
                    "selector",
                    "endpoints",
                    "namespaceSelector",
                    "jobLabel",
                    "targetLabels",
                    "podTargetLabels",
                    "sampleLimit",
                }
                if unknown:
                    problems.append(f"{where}: unknown spec fields {sorted(unknown)}")
            else:
                groups = spec.get("groups") or []
                if not groups:
                    problems.append(f"{where}: no rule groups")
                for group in groups:
                    if not group.get("name") or not group.get("rules"):
                        problems.append(f"{where}: group {group.get('name')!r} without a name or rules")
                    for rule in group.get("rules") or []:
                        if not isinstance(rule.get("expr"), str | int) or str(rule.get("expr")).strip() == "":
                            problems.append(f"{where}: rule {rule} has no expr")
                        if bool(rule.get("alert")) == bool(rule.get("record")):
                            problems.append(f"{where}: rule {rule} must have exactly one of alert/record")
                        if "for" in rule and not re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", str(rule["for"])):
                            problems.append(
                                f"{where}: rule {rule.get('alert')} has a bad duration {rule['for']!r}"
                            )
    missing = [kind for kind, n in counts.items() if n == 0]
    assert not missing, f"no ci value set renders a {missing}: the monitoring objects go unchecked"
    assert not problems, fmt(problems)


# ---- checkov ---------------------------------------------------------------------------------------


def checkov_failures(run: Any) -> tuple[list[str], int, int]:
    failed: list[str] = []
    resources = parsing_errors = 0
    for report in run.reports:
        summary = report.get("summary") or {}
        resources += int(summary.get("resource_count") or 0)
        parsing_errors += int(summary.get("parsing_errors") or 0)
        for check in (report.get("results") or {}).get("failed_checks") or []:
            failed.append(
                f"{check.get('check_id')} {check.get('check_name')!r} on {check.get('resource')}"
                f" ({check.get('file_path')}:{check.get('file_line_range')})"
            )
    return failed, resources, parsing_errors


def test_checkov_helm_has_no_failed_check(checkov_helm: Any) -> None:
    failed, resources, parsing_errors = checkov_failures(checkov_helm)
    # checkov drops a chart without a word when `helm template` writes to stderr: nothing scanned.
    assert resources > 0, (
        f"checkov scanned no resource ({checkov_helm.cmd}); stderr:\n{checkov_helm.stderr[-3000:]}"
    )
    assert parsing_errors == 0, f"checkov could not parse {parsing_errors} file(s)"
    assert not failed, f"checkov (helm, values.yaml) failed {len(failed)} check(s):{fmt(failed)}"


def test_checkov_ci_renders_have_no_failed_check(checkov_ci_renders: Any) -> None:
    failed, resources, parsing_errors = checkov_failures(checkov_ci_renders)
    assert resources > 0, f"checkov scanned no resource ({checkov_ci_renders.cmd})"
    assert parsing_errors == 0, f"checkov could not parse {parsing_errors} file(s)"
    assert not failed, f"checkov (kubernetes, every ci render) failed {len(failed)} check(s):{fmt(failed)}"


# ---- the chat models (vLLM) ---------------------------------------------------------------------------


def vllm_pods(docs: Docs) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec, the vLLM container) of every vLLM workload: one per chat model served here."""
    found = []
    for o, _, spec in workloads(docs):
        if not (belongs(component_of(o), "vllm") and o["kind"] in LONG_RUNNING):
            continue
        main = [c for c in spec.get("containers") or [] if "vllm" in c.get("name", "")] or spec.get(
            "containers"
        )
        assert main, f"{ref(o)} has no container"
        found.append((o, spec, main[0]))
    return found


def vllm_pod(docs: Docs, model: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The vLLM workload of one chat model, found by the model it serves (`--served-model-name`
    defaults to the entry's name) and its objects' name (<release>-vllm-<name, "." as "-">)."""
    slug = model.replace(".", "-")
    found = [p for p in vllm_pods(docs) if p[0]["metadata"]["name"] == f"{RELEASE}-vllm-{slug}"]
    assert len(found) == 1, (
        f"want one vLLM Deployment for {model}, found {[ref(p[0]) for p in vllm_pods(docs)]}"
    )
    return found[0]


def flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


# The vLLM release the chart runs: the newest whose release notes were read (November 2026; 0.34.0
# was on PyPI too, its notes not yet readable). A test below refuses an older tag.
VLLM_TAG = "v0.33.0"
# Every flag the chart may render, all options of `vllm serve` in that release.
VLLM_SERVE_FLAGS = {
    "--served-model-name",
    "--max-model-len",
    "--host",
    "--port",
    "--dtype",
    "--gpu-memory-utilization",
    "--tensor-parallel-size",
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "--reasoning-parser",
    "--limit-mm-per-prompt",
}
# The two models of the user's notes, the chart's defaults.
R1 = "deepseek-r1-0528-qwen3-8b"
OMNI = "qwen2.5-omni-3b"


def vllm_model(container: dict[str, Any]) -> str:
    """The model `vllm serve MODEL` serves: the positional argument right after `serve`."""
    argv = tokens(container)
    assert argv[:2] == ["vllm", "serve"], f"vLLM runs {argv[:3]}, want `vllm serve MODEL`"
    assert len(argv) > 2 and not argv[2].startswith("-"), f"no model after `vllm serve`: {argv}"
    return argv[2]


def release_tuple(tag: str) -> tuple[int, ...]:
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", tag)
    assert match, f"{tag!r} is not a vLLM release tag (vX.Y.Z)"
    return tuple(int(x) for x in match.groups())


@pytest.mark.parametrize("ci", ["default", "gpu-full", "managed-single-node"])
def test_vllm_is_the_chosen_release_or_newer(rendered: Renderer, ci: str) -> None:
    pods = vllm_pods(rendered(ci))
    assert pods, f"{ci} serves no model with vLLM"
    for obj, _, container in pods:
        image = container["image"]
        assert image.split("/", 1)[1].startswith("vllm/vllm-openai:"), image
        tag = image.rsplit(":", 1)[1]
        assert tag == VLLM_TAG, f"{ref(obj)} runs {image}; the chart's tests check {VLLM_TAG}'s CLI"
        assert release_tuple(tag) >= release_tuple(VLLM_TAG), image


def test_vllm_flags_are_options_of_vllm_serve(rendered: Renderer) -> None:
    for ci in ("default", "gpu-full"):
        for obj, _, container in vllm_pods(rendered(ci)):
            vllm_model(container)
            unknown = {t for t in tokens(container) if t.startswith("--")} - VLLM_SERVE_FLAGS
            assert not unknown, f"{ci}: {ref(obj)} passes {sorted(unknown)}, not options of `vllm serve`"


def test_vllm_splits_reasoning_only_for_a_reasoning_model(rendered: Renderer) -> None:
    # DeepSeek-R1-0528-Qwen3-8B thinks: its thinking goes to reasoning_content.
    for ci in ("default", "gpu-full"):
        _, _, container = vllm_pod(rendered(ci), R1)
        assert flag_value(tokens(container), "--reasoning-parser") == "deepseek_r1", tokens(container)
    # The omni model and Qwen2.5-Instruct do not think: the parser would eat their answers.
    for ci, model in (("default", OMNI), ("gpu-full", OMNI), ("gpu-full", "qwen2.5-7b-instruct")):
        _, _, container = vllm_pod(rendered(ci), model)
        assert "--reasoning-parser" not in tokens(container), (ci, model, tokens(container))


def test_vllm_runs_with_the_seed_flags(rendered: Renderer) -> None:
    for ci in ("default", "gpu-full"):
        for obj, _, container in vllm_pods(rendered(ci)):
            argv = tokens(container)
            problems: list[str] = []
            vllm_model(container)
            for flag in ("--served-model-name", "--max-model-len"):
                value = flag_value(argv, flag)
                if not value or value.startswith("--"):
                    problems.append(f"{flag} has no value")
            expected = {
                "--dtype": "bfloat16",
                "--gpu-memory-utilization": "0.8",
                "--host": "0.0.0.0",
                "--port": "6006",
            }
            for flag, want in expected.items():
                if flag_value(argv, flag) != want:
                    problems.append(f"{flag} is {flag_value(argv, flag)!r}, want {want!r}")
            # The seed's tool calling, for the models with a tool-calling template.
            if not obj["metadata"]["name"].endswith(OMNI.replace(".", "-")) and (
                "--enable-auto-tool-choice" not in argv or flag_value(argv, "--tool-call-parser") != "hermes"
            ):
                problems.append("no --enable-auto-tool-choice --tool-call-parser hermes")
            assert not problems, f"{ci}: {ref(obj)} argv {argv}:{fmt(problems)}"


def test_vllm_gets_a_gpu_and_shared_memory(rendered: Renderer) -> None:
    for ci in ("default", "gpu-full"):
        for obj, pod, container in vllm_pods(rendered(ci)):
            limits = (container.get("resources") or {}).get("limits") or {}
            assert int(limits.get("nvidia.com/gpu", 0)) >= 1, (
                f"{ref(obj)}: no nvidia.com/gpu limit in {limits}"
            )
            memory_volumes = {
                v["name"]
                for v in pod.get("volumes") or []
                if (v.get("emptyDir") or {}).get("medium") == "Memory"
            }
            shm = [m for m in container.get("volumeMounts") or [] if m.get("mountPath") == "/dev/shm"]
            assert shm, f"{ref(obj)}: nothing mounted at /dev/shm (PyTorch's NCCL and workers need it)"
            assert shm[0]["name"] in memory_volumes, (
                f"{ref(obj)}: /dev/shm is not an emptyDir with medium Memory"
            )


def retriever_container(docs: Docs) -> tuple[dict[str, Any], dict[str, Any]]:
    [obj] = of_component(docs, "retriever", {"Deployment"})
    [container] = [c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == "retriever"]
    return obj, container


def test_gpu_full_retriever_searches_on_a_gpu(rendered: Renderer) -> None:
    # retriever.faissGpu: the setting, a GPU to use, and the image variant that has faiss-gpu-cu12.
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]
    obj, container = retriever_container(rendered("gpu-full"))
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    assert env.get("RETRIEVER_FAISS_GPU") == "true", f"{ref(obj)} env {env}"
    limits = (container.get("resources") or {}).get("limits") or {}
    assert int(limits.get("nvidia.com/gpu", 0)) >= 1, f"{ref(obj)}: no nvidia.com/gpu limit in {limits}"
    assert container["image"].endswith(f"/omnirag/retriever:{app_version}-gpu"), container["image"]
    # The default is the CPU image and no GPU setting.
    obj, container = retriever_container(rendered("default"))
    assert "RETRIEVER_FAISS_GPU" not in {e["name"] for e in container.get("env") or []}
    assert "nvidia.com/gpu" not in ((container.get("resources") or {}).get("limits") or {})
    assert container["image"].endswith(f"/omnirag/retriever:{app_version}"), container["image"]


# omnirag.model_download writes <model dir>/.omnirag-download.json last, by an atomic rename.
DOWNLOAD_MARKER = ".omnirag-download.json"


def claim_of(pod: dict[str, Any], volume: str) -> str | None:
    for v in pod.get("volumes") or []:
        if v.get("name") == volume:
            return (v.get("persistentVolumeClaim") or {}).get("claimName")
    return None


def download_jobs(docs: Docs) -> list[tuple[dict[str, Any], dict[str, Any], list[Any]]]:
    """(Job, its pod spec, the models of its spec) of every model-download Job. The spec is the key
    of the ConfigMap its `spec` volume mounts, read with the download job's own parser."""
    from omnirag.model_download import spec as download_spec

    configmaps = {o["metadata"]["name"]: o for o in docs if o.get("kind") == "ConfigMap"}
    out = []
    for job in of_component(docs, "model-download", {"Job"}):
        found = pod_template(job)
        assert found is not None
        pod = found[1]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "spec"]
        cm = configmaps[volume["configMap"]["name"]]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        key = Path(env["MODEL_DOWNLOAD_SPEC"]).name
        assert [i["key"] for i in volume["configMap"].get("items") or [{"key": key}]] == [key], ref(job)
        models = download_spec.parse(yaml.safe_load(cm["data"][key]))
        out.append((job, pod, [(m, f"{env['MODEL_DOWNLOAD_ROOT']}/{m.dir}") for m in models]))
    return out


def test_vllm_waits_for_the_model_download(rendered: Renderer) -> None:
    """Each model's init container holds vLLM back until the download Job of that model has left its
    marker by the model, on the claim vLLM reads."""
    for ci in ("default", "gpu-full"):
        docs = rendered(ci)
        jobs = download_jobs(docs)
        for obj, pod, container in vllm_pods(docs):
            model = vllm_model(container).rstrip("/")
            main_mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts") or []}
            model_volumes = {n for n, path in main_mounts.items() if model.startswith(path.rstrip("/") + "/")}
            assert model_volumes, f"{ref(obj)}: the model {model!r} is on none of the mounts {main_mounts}"
            waiting = []
            for init in pod.get("initContainers") or []:
                shares = {m["name"] for m in init.get("volumeMounts") or []} & model_volumes
                text = " ".join(
                    [script_text(init), *(str(e.get("value", "")) for e in init.get("env") or [])]
                )
                loops = re.search(r"\b(until|while)\b", text) and re.search(r"\[\s+-[fes]\s", text)
                if shares and loops and f"{model}/{DOWNLOAD_MARKER}" in text:
                    waiting.append(init.get("name"))
            assert waiting, (
                f"{ci}: {ref(obj)}: no init container mounts the model volume {model_volumes} and waits in a "
                f"loop for {model}/{DOWNLOAD_MARKER}: "
                f"{[(c.get('name'), script_text(c)) for c in pod.get('initContainers') or []]}"
            )
            claims = {claim_of(pod, v) for v in model_volumes} - {None}
            writers = [
                (job, job_pod) for job, job_pod, models in jobs if any(path == model for _, path in models)
            ]
            assert len(writers) == 1, (
                f"{ci}: {len(writers)} download Jobs fill {model}: {[ref(j) for j, _, _ in jobs]}"
            )
            job, job_pod = writers[0]
            job_claims = {
                (v.get("persistentVolumeClaim") or {}).get("claimName") for v in job_pod.get("volumes") or []
            }
            assert claims & job_claims, (
                f"{ref(obj)} reads models from claims {claims}, {ref(job)} writes to {job_claims}"
            )


def test_both_default_models_render_with_their_downloads_gpus_flags_and_services(rendered: Renderer) -> None:
    """The two models of the notes, side by side: each its own download Job (its own repo into its
    own directory), Deployment on its own GPU, vLLM flags, Service and probes."""
    docs = rendered("default")
    jobs = download_jobs(docs)
    services = {o["metadata"]["name"]: o for o in docs if o.get("kind") == "Service"}
    repos = {R1: "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", OMNI: "Qwen/Qwen2.5-Omni-3B"}
    for model, repo in repos.items():
        obj, _, container = vllm_pod(docs, model)
        argv = tokens(container)
        path = vllm_model(container)
        assert path == f"/models/{model}", argv
        assert flag_value(argv, "--served-model-name") == model, argv
        mine = [(job, m) for job, _, models in jobs for m, p in models if p == path]
        assert len(mine) == 1, f"{model}: want one download Job filling {path}, got {mine}"
        job, spec = mine[0]
        assert (spec.repo, spec.source) == (repo, "huggingface"), spec
        assert len([m for j, _, ms in jobs if j is job for m in ms]) == 1, (
            f"{ref(job)} downloads more than {model}"
        )
        limits = container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == 1 and flag_value(argv, "--tensor-parallel-size") == "1", (
            limits
        )
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, (model, probe)
        service = services[obj["metadata"]["name"]]
        assert selector_matches(
            {"matchLabels": service["spec"]["selector"]}, obj["spec"]["template"]["metadata"]["labels"]
        )
        assert [p["port"] for p in service["spec"]["ports"]] == [6006], service["spec"]["ports"]
    # R1: thinking split off by vLLM, tool calling on. The R1-0528 template cannot turn thinking off.
    r1 = tokens(vllm_pod(docs, R1)[2])
    assert flag_value(r1, "--reasoning-parser") == "deepseek_r1"
    assert "--enable-auto-tool-choice" in r1 and "--limit-mm-per-prompt" not in r1
    # The omni model: text out (vLLM serves its thinker), images, audio and video in, each bounded.
    omni = tokens(vllm_pod(docs, OMNI)[2])
    assert "--reasoning-parser" not in omni and "--enable-auto-tool-choice" not in omni, omni
    limits = json.loads(flag_value(omni, "--limit-mm-per-prompt") or "{}")
    assert set(limits) == {"image", "audio", "video"} and all(1 <= n <= 64 for n in limits.values()), limits
    assert "--trust-remote-code" not in omni  # Qwen2.5-Omni is in transformers itself
    # Its download leaves the talker's voices out: spk_dict.pt is a pickle, and only speech output needs it.
    (omni_spec,) = [m for _, _, ms in jobs for m, p in ms if p == f"/models/{OMNI}"]
    assert "*.pt" in omni_spec.ignore_patterns, omni_spec


def models_file(docs: Docs) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The gateway's env (plain values) and the models file it names (GATEWAY_MODELS_FILE), parsed."""
    (gateway,) = of_component(docs, "gateway", {"Deployment"})
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = env["GATEWAY_MODELS_FILE"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    cm = next(
        o
        for o in docs
        if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"]
    )
    return env, yaml.safe_load(cm["data"][path[len(mount["mountPath"]) + 1 :]])


def test_the_gateway_gets_the_models_from_the_same_values(rendered: Renderer) -> None:
    """GATEWAY_MODELS_FILE lists every model at the Service of its vLLM, under its served name, with
    its capabilities; R1 cannot turn thinking off; the default and the rewrite model are named."""
    docs = rendered("default")
    env, models = models_file(docs)
    by_name = {m["name"]: m for m in models}
    assert list(by_name) == [R1, OMNI], models
    for name, caps in ((R1, ["text", "reasoning", "tools"]), (OMNI, ["text", "vision", "audio", "video"])):
        obj, _, container = vllm_pod(docs, name)
        entry = by_name[name]
        assert entry["base_url"] == f"http://{obj['metadata']['name']}:6006/v1", entry
        assert entry["upstream_model"] == flag_value(tokens(container), "--served-model-name"), entry
        assert entry["capabilities"] == caps, entry
        assert entry["thinking_off"] is None, entry
    assert env["GATEWAY_DEFAULT_MODEL"] == R1 and env["GATEWAY_REWRITE_MODEL"] == R1, env
    assert not {k for k in env if k.startswith("GATEWAY_LLM_") and k != "GATEWAY_LLM_TIMEOUT"}, env
    # gpu-full: the rewrite by the fast model, and vLLM's key as a file of the gateway.
    env, models = models_file(rendered("gpu-full"))
    assert env["GATEWAY_REWRITE_MODEL"] == "qwen2.5-7b-instruct", env
    assert {m["name"]: m["upstream_model"] for m in models}[
        "qwen2.5-7b-instruct"
    ] == "Qwen/Qwen2.5-7B-Instruct"
    assert {m.get("api_key_file") for m in models} == {"/etc/omnirag-secrets/vllm-api-key/api-key"}, models


def test_each_model_has_its_alerts_scrape_budget_and_network_path(rendered: Renderer) -> None:
    docs = rendered("gpu-full")
    (rule,) = [o for o in docs if o.get("kind") == "PrometheusRule"]
    groups = {g["name"]: g["rules"] for g in rule["spec"]["groups"]}
    monitors = [o for o in docs if o.get("kind") == "ServiceMonitor"]
    pdbs = [o for o in docs if o.get("kind") == "PodDisruptionBudget"]
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in docs if h.get("kind") == "HorizontalPodAutoscaler"
    }
    policies = [o for o in docs if o.get("kind") == "NetworkPolicy" and not is_default_deny(o)]
    (gateway,) = of_component(docs, "gateway", {"Deployment"})
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    gateway_egress = [
        r
        for p in policies
        if selector_matches(p["spec"]["podSelector"], gateway_labels)
        for r in p["spec"].get("egress") or []
    ]
    pods = vllm_pods(docs)
    assert len(pods) == 3, [ref(o) for o, _, _ in pods]
    for obj, pod, _ in pods:
        name = obj["metadata"]["name"]
        labels = obj["spec"]["template"]["metadata"]["labels"]
        # Alerts on this model's own job (the Service name its ServiceMonitor gives the series).
        mine = [r for rules in groups.values() for r in rules if f'job="{name}"' in str(r.get("expr"))]
        assert {r["alert"] for r in mine} >= {"OmniragModelDown", "OmniragModelQueueing"}, (name, mine)
        assert any("vllm:num_requests_waiting" in r["expr"] for r in mine), mine
        assert [m for m in monitors if selector_matches(m["spec"]["selector"], labels)], (
            f"{name}: no ServiceMonitor"
        )
        assert [p for p in pdbs if selector_matches(p["spec"]["selector"], labels)], (
            f"{name}: no PodDisruptionBudget"
        )
        # The gateway may reach it on 6006, and it takes traffic only from the gateway (and Prometheus).
        assert any(
            any(selector_matches(peer.get("podSelector"), labels) for peer in r.get("to") or [])
            and [p["port"] for p in r["ports"]] == [6006]
            for r in gateway_egress
        ), f"the gateway's egress does not reach {name}"
        (own,) = [p for p in policies if selector_matches(p["spec"]["podSelector"], labels)]
        sources = [
            peer for r in own["spec"]["ingress"] for peer in r.get("from") or [] if "podSelector" in peer
        ]
        assert sources and all(selector_matches(p["podSelector"], gateway_labels) for p in sources), own
        assert own["spec"]["egress"] == [], own
        # Placement falls back to vllm's; the GPU count and the autoscaler are the entry's own.
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, pod.get("nodeSelector")
        assert pod["runtimeClassName"] == "nvidia"
    r1, _, r1_container = vllm_pod(docs, R1)
    assert int(r1_container["resources"]["limits"]["nvidia.com/gpu"]) == 2
    assert flag_value(tokens(r1_container), "--tensor-parallel-size") == "2"
    assert flag_value(tokens(r1_container), "--max-model-len") == "32768"
    assert "replicas" not in r1["spec"] and hpas[r1["metadata"]["name"]]["spec"]["maxReplicas"] == 2
    omni, _, omni_container = vllm_pod(docs, OMNI)
    assert int(omni_container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert omni["spec"]["replicas"] == 1 and omni["metadata"]["name"] not in hpas


def test_an_external_model_has_no_pod_and_its_key_is_a_file_in_the_gateway(rendered: Renderer) -> None:
    docs = rendered("cpu-external-llm")
    assert not vllm_pods(docs), [ref(o) for o, _, _ in vllm_pods(docs)]
    assert not of_component(docs, "vllm"), [ref(o) for o in of_component(docs, "vllm")]
    _, models = models_file(docs)
    assert [(m["name"], m["base_url"], m["upstream_model"]) for m in models] == [
        ("qwen2.5-7b-instruct", "https://llm.example.com/v1", "qwen2.5-7b-instruct"),
        ("gpt-4o-mini", "https://api.openai.com/v1", "gpt-4o-mini"),
    ]
    (gateway,) = of_component(docs, "gateway", {"Deployment"})
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for entry, secret in zip(models, ("omnirag-llm", "omnirag-openai"), strict=True):
        path = entry["api_key_file"]
        (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        assert mount.get("readOnly") is True
        volume = volumes[mount["name"]]["secret"]
        assert volume["secretName"] == secret and path.endswith("/" + volume["items"][0]["path"]), volume
    assert models[1]["max_tokens_param"] == "max_completion_tokens"
    # No key in the environment; the gateway may reach the hosts' port 443 only (no metadata address).
    assert not [e for e in container["env"] if "secretKeyRef" in (e.get("valueFrom") or {})]
    assert not metadata_leaks(docs, "gateway")


def test_an_external_model_gets_no_download_service_alert_or_policy_of_its_own(
    helm_template: Callable[..., Any], tmp_path: Path
) -> None:
    """Beside a model served here, an external one renders nothing but its entry in the gateway's
    file and the gateway's egress to its URL's port (downloads and monitoring on)."""
    values = tmp_path / "mixed.yaml"
    omni = yaml.safe_load((CHART / "values.yaml").read_text())["models"][1]
    remote = {
        "name": "remote",
        "default": True,
        "capabilities": ["text", "tools"],
        "external": {"baseUrl": "https://llm.example.com:8443/v1", "model": "remote-large"},
    }
    monitoring = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    values.write_text(yaml.safe_dump({"models": [remote, omni], "metrics": monitoring}))
    result = helm_template(values)
    assert result.returncode == 0, result.stderr
    docs = result.docs
    assert [p[0]["metadata"]["name"] for p in vllm_pods(docs)] == [f"{RELEASE}-vllm-qwen2-5-omni-3b"]
    assert not [ref(o) for o in docs if "remote" in o["metadata"]["name"]]
    ours = {ref(o) for o in docs if component_of(o) == "vllm-qwen2-5-omni-3b"}
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"):
        assert f"{kind}/{RELEASE}-vllm-qwen2-5-omni-3b" in ours, (kind, ours)
    [(job, _, models)] = download_jobs(docs)
    assert [m.repo for m, _ in models] == ["Qwen/Qwen2.5-Omni-3B"], ref(job)
    (rule,) = [o for o in docs if o.get("kind") == "PrometheusRule"]
    assert "remote" not in json.dumps(rule) and "vllm-qwen2-5-omni-3b" in json.dumps(rule)
    _, models_list = models_file(docs)
    assert [m["name"] for m in models_list] == ["remote", OMNI] and "api_key_file" not in models_list[0]
    (gateway,) = of_component(docs, "gateway", {"Deployment"})
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    egress = [
        r
        for o in docs
        if o.get("kind") == "NetworkPolicy" and selector_matches(o["spec"]["podSelector"], labels)
        for r in o["spec"].get("egress") or []
    ]
    to_remote = [r for r in egress if [p["port"] for p in r.get("ports") or []] == [8443]]
    assert to_remote and all(egress_allows(r, ipaddress.ip_address("203.0.113.7")) for r in to_remote)
    assert not metadata_leaks(docs, "gateway")


def external(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "capabilities": ["text"],
        "external": {"baseUrl": "https://llm.example.com/v1", "model": name},
        **extra,
    }


BAD_MODELS = [
    pytest.param(
        [external("m1", default=True), external("m1")],
        ["models", '"m1"', "used twice"],
        id="duplicate-names",
    ),
    pytest.param(
        [external("a.b", default=True), external("a-b")],
        ["models", '"a-b"', "rename one"],
        id="names-equal-as-object-names",
    ),
    pytest.param(
        [external("m1", default=True), external("m2", default=True)],
        ["models", "exactly one entry needs default: true", "found 2", "m1, m2"],
        id="two-defaults",
    ),
    pytest.param(
        [external("m1"), external("m2")],
        ["exactly one entry needs default: true", "found 0"],
        id="no-default",
    ),
    pytest.param(
        [external("m1", default=True, capabilities=["text", "smell"])],
        ["schema", "/models/0/capabilities/1", "'vision'", "'reasoning'"],
        id="unknown-capability",
    ),
    pytest.param(
        [{"name": "m1", "default": True, "capabilities": ["text"]}],
        ['models "m1"', "source", "modelPath", "external"],
        id="nothing-to-serve",
    ),
    pytest.param(
        [external("m1", default=True, source={"source": "huggingface", "repo": "a/b"})],
        ['models "m1"', "source", "external"],
        id="external-with-a-download",
    ),
    pytest.param(
        [
            {
                "name": "m1",
                "default": True,
                "capabilities": ["text"],
                "modelPath": "/m",
                "vllm": {"limitMmPerPrompt": {"image": 1000}},
            }
        ],
        ["schema", "/models/0/vllm/limitMmPerPrompt/image"],
        id="unbounded-media",
    ),
    pytest.param(
        [
            {
                "name": "m1",
                "default": True,
                "capabilities": ["text", "tools"],
                "modelPath": "/m",
                "vllm": {"toolCalling": {"enabled": False, "parser": "hermes"}},
            }
        ],
        ['models "m1"', '"tools"', "toolCalling.enabled"],
        id="tools-without-tool-calling",
    ),
    pytest.param(
        [external("omnirag", default=True)], ["models", '"omnirag" is reserved'], id="reserved-name"
    ),
    pytest.param([], ["models", "at least one chat model"], id="no-model-for-the-gateway"),
]


@pytest.mark.parametrize(("models", "named"), BAD_MODELS)
def test_a_bad_models_list_fails_the_install(
    helm_template: Callable[..., Any], tmp_path: Path, models: list[dict[str, Any]], named: list[str]
) -> None:
    values = tmp_path / "models.yaml"
    values.write_text(yaml.safe_dump({"models": models}))
    result = helm_template(values)
    assert result.returncode != 0, f"helm template accepted models {models}"
    missing = [n for n in named if n not in result.stderr]
    assert not missing, f"the error for {models} does not name {missing}:\n{result.stderr}"


@pytest.mark.parametrize(
    ("gateway", "named"),
    [
        pytest.param(
            {"defaultModel": "nope"},
            ["gateway.defaultModel", '"nope"', "deepseek-r1-0528-qwen3-8b"],
            id="default",
        ),
        pytest.param({"rewriteModel": "nope"}, ["gateway.rewriteModel", '"nope"'], id="rewrite"),
    ],
)
def test_the_gateways_default_and_rewrite_models_must_be_listed(
    helm_template: Callable[..., Any], tmp_path: Path, gateway: dict[str, Any], named: list[str]
) -> None:
    values = tmp_path / "gateway.yaml"
    values.write_text(yaml.safe_dump({"gateway": gateway}))
    result = helm_template(values)
    assert result.returncode != 0 and all(n in result.stderr for n in named), result.stderr
    values.write_text(yaml.safe_dump({"gateway": {"defaultModel": OMNI, "rewriteModel": OMNI}}))
    result = helm_template(values)
    assert result.returncode == 0, result.stderr
    env, _ = models_file(result.docs)
    assert env["GATEWAY_DEFAULT_MODEL"] == OMNI and env["GATEWAY_REWRITE_MODEL"] == OMNI


# ---- pod security, probes, resources, ports ---------------------------------------------------------


def restricted_problems(obj: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    where = ref(obj)
    problems: list[str] = []
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{where}: {key}")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"{where}: volume {volume['name']} of type {sorted(kinds)}")
    for c in containers(pod):
        at = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        user = sc.get("runAsUser", psc.get("runAsUser"))
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if non_root is not True:
            problems.append(f"{at}: runAsNonRoot is {non_root!r}")
        if not isinstance(user, int) or user == 0:
            problems.append(f"{at}: runAsUser is {user!r}, want a non-zero uid")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation is {sc.get('allowPrivilegeEscalation')!r}")
        if sc.get("privileged"):
            problems.append(f"{at}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{at}: capabilities.drop {caps.get('drop')!r} lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{at}: capabilities.add {caps.get('add')!r}")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{at}: seccompProfile.type is {seccomp!r}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: readOnlyRootFilesystem is {sc.get('readOnlyRootFilesystem')!r}")
    return problems


@pytest.mark.parametrize("ci", CI_SETS)
def test_every_pod_is_pod_security_restricted(rendered: Renderer, ci: str) -> None:
    pods = list(workloads(rendered(ci)))
    assert pods, f"{ci}: no pod spec rendered"
    problems = [p for obj, _, pod in pods for p in restricted_problems(obj, pod)]
    assert not problems, f"{ci}: not Pod Security Standard 'restricted':{fmt(problems)}"


def test_helm_test_pod_exists(rendered: Renderer) -> None:
    tests = [
        o
        for o in rendered("default")
        if o.get("kind") == "Pod"
        and "test" in str(o["metadata"].get("annotations", {}).get("helm.sh/hook", ""))
    ]
    assert tests, "no Pod with the helm.sh/hook: test annotation (`helm test` checks nothing)"


@pytest.mark.parametrize("ci", CI_SETS)
def test_long_running_containers_have_probes_and_resources(rendered: Renderer, ci: str) -> None:
    problems: list[str] = []
    for obj, _, pod in workloads(rendered(ci)):
        if obj["kind"] not in LONG_RUNNING:
            continue
        component = component_of(obj)
        for c in containers(pod, init=False):
            at = f"{ref(obj)} container {c.get('name')}"
            for probe in ("livenessProbe", "readinessProbe"):
                if not c.get(probe):
                    problems.append(f"{at}: no {probe}")
            if component in HTTP_SERVICES:
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
                    if got != path:
                        problems.append(f"{at}: {probe} httpGet path {got!r}, want {path}")
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                if not resources.get(part):
                    problems.append(f"{at}: no resources.{part}")
            for key in ("cpu", "memory"):
                if key not in (resources.get("requests") or {}):
                    problems.append(f"{at}: no resources.requests.{key}")
            if "memory" not in (resources.get("limits") or {}):
                problems.append(f"{at}: no resources.limits.memory")
    assert not problems, f"{ci}:{fmt(problems)}"


def test_the_upload_worker_is_alive_while_its_heartbeat_is_fresh(rendered: Renderer) -> None:
    """The worker has no HTTP port: its liveness is the age of the heartbeat file it rewrites."""
    (worker,) = of_component(rendered("gpu-full"), "indexer-worker", {"Deployment"})
    pod = pod_template(worker)
    assert pod is not None
    (container,) = containers(pod[1], init=False)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.get("INDEXER_HEARTBEAT_FILE", "").startswith("/tmp/")  # the writable emptyDir
    for probe in ("startupProbe", "livenessProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        assert "INDEXER_HEARTBEAT_FILE" in command and "getmtime" in command, f"{probe}: {command}"

    # The probes run for real against the files the worker writes ({"at": ..., "redis": ...}): a worker
    # waiting for Redis is alive but not ready; a stale file (a stuck loop) is neither.
    def passes(probe: str, content: dict[str, Any], age: float = 0) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            beat = Path(tmp) / "heartbeat"
            beat.write_text(json.dumps(content))
            os.utime(beat, (time.time() - age, time.time() - age))
            command = container[probe]["exec"]["command"]
            assert command[:2] == ["python", "-c"], command
            env = {**os.environ, "INDEXER_HEARTBEAT_FILE": str(beat)}
            return subprocess.run([sys.executable, "-c", command[2]], env=env, check=False).returncode == 0

    now = time.time()
    assert passes("livenessProbe", {"at": now, "redis": False})
    assert not passes("readinessProbe", {"at": now, "redis": False})
    assert passes("readinessProbe", {"at": now, "redis": True})
    assert not passes("livenessProbe", {"at": now, "redis": True}, age=120)
    assert not passes("readinessProbe", {"at": now, "redis": True}, age=120)


@pytest.mark.parametrize("ci", CI_SETS)
def test_container_ports_are_the_design_ports(rendered: Renderer, ci: str) -> None:
    problems = []
    for obj, _, pod in workloads(rendered(ci)):
        component = component_of(obj)
        if obj["kind"] not in LONG_RUNNING or component not in CONTAINER_PORTS:
            continue
        ports = {p.get("containerPort") for c in containers(pod, init=False) for p in c.get("ports") or []}
        if CONTAINER_PORTS[component] not in ports:
            problems.append(f"{ref(obj)}: container ports {sorted(ports)} lack {CONTAINER_PORTS[component]}")
    assert not problems, f"{ci}:{fmt(problems)}"


@pytest.mark.parametrize("ci", CI_SETS)
def test_service_urls_point_at_rendered_services(rendered: Renderer, ci: str) -> None:
    """Every *_URL that names one of the release's Services names a rendered Service and its port."""
    docs = rendered(ci)
    services = {o["metadata"]["name"]: o for o in docs if o.get("kind") == "Service"}
    problems = []
    for obj, _, pod in workloads(docs):
        for c in containers(pod):
            for env in c.get("env") or []:
                value = env.get("value")
                if not isinstance(value, str) or not env.get("name", "").endswith("_URL"):
                    continue
                m = re.match(r"^[a-z]+://(?:[^@/]*@)?([a-z0-9.-]+)(?::(\d+))?", value)
                if not m or not m.group(1).split(".")[0].startswith(RELEASE):
                    continue
                host, port = m.group(1).split(".")[0], m.group(2)
                at = f"{ref(obj)} {c.get('name')} {env['name']}={value}"
                if host not in services:
                    problems.append(f"{at}: no Service {host}")
                elif port and int(port) not in {
                    p.get("port") for p in services[host]["spec"].get("ports") or []
                }:
                    problems.append(f"{at}: Service {host} has no port {port}")
    assert not problems, f"{ci}:{fmt(problems)}"


# ---- network policies ------------------------------------------------------------------------------


@pytest.mark.parametrize("ci", CI_SETS)
def test_network_policies_select_every_component_behind_a_default_deny(rendered: Renderer, ci: str) -> None:
    docs = rendered(ci)
    policies = [o for o in docs if o.get("kind") == "NetworkPolicy"]
    pods = list(workloads(docs))
    deny = [p for p in policies if is_default_deny(p) and "Ingress" in (p["spec"].get("policyTypes") or [])]
    assert deny, f"{ci}: no default-deny NetworkPolicy (no ingress rule, egress at most DNS)"
    for kind in ("Ingress", "Egress"):
        uncovered = [
            ref(obj)
            for obj, labels, _ in pods
            if not any(
                kind in (p["spec"].get("policyTypes") or [])
                and selector_matches(p["spec"].get("podSelector"), labels)
                for p in deny
            )
        ]
        assert not uncovered, f"{ci}: no default-deny {kind} policy covers:{fmt(uncovered)}"
    specific = [p for p in policies if not is_default_deny(p)]
    unselected = [
        ref(obj)
        for obj, labels, _ in pods
        if not any(selector_matches(p["spec"].get("podSelector"), labels) for p in specific)
    ]
    assert not unselected, (
        f"{ci}: pods that only the default deny selects (no traffic allowed at all):{fmt(unselected)}"
    )


def egress_allows(rule: dict[str, Any], ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    peers = rule.get("to")
    if not peers:
        return True  # no `to`: every destination
    for peer in peers:
        block = peer.get("ipBlock")
        if not block:
            continue  # pod/namespace selectors reach pods, not the metadata address
        if ip in ipaddress.ip_network(block["cidr"], strict=False) and not any(
            ip in ipaddress.ip_network(e, strict=False) for e in block.get("except") or []
        ):
            return True
    return False


def metadata_leaks(docs: Docs, component: str | None = None) -> list[str]:
    """Pods (of one component, or all) that an egress policy lets reach the metadata address,
    or that no egress policy selects at all."""
    policies = [o for o in docs if o.get("kind") == "NetworkPolicy" and not is_default_deny(o)]
    problems = []
    for obj, labels, _ in workloads(docs):
        if component is not None and not belongs(component_of(obj), component):
            continue
        egress = [
            p
            for p in policies
            if selector_matches(p["spec"].get("podSelector"), labels)
            and "Egress" in (p["spec"].get("policyTypes") or [])
        ]
        if component is not None and not egress:
            problems.append(f"{ref(obj)}: no egress NetworkPolicy selects it")
        problems += [
            f"{ref(obj)}: {ref(p)} egress rule {rule} reaches {METADATA_IP}"
            for p in egress
            for rule in p["spec"].get("egress") or []
            if egress_allows(rule, METADATA_IP)
        ]
    return problems


@pytest.mark.parametrize("ci", CI_SETS)
def test_indexer_egress_excludes_the_metadata_address(rendered: Renderer, ci_values: Any, ci: str) -> None:
    """The indexer crawls user-given URLs: its egress must not reach the cloud metadata endpoint."""
    docs = rendered(ci)
    if not of_component(docs, "indexer", {"Deployment", "CronJob", "Job"}):
        values = ci_values(ci)
        assert not (values.get("indexer") or {}).get("enabled", True) or not values.get("knowledgeBases"), (
            f"{ci}: indexer enabled with knowledge bases but no indexer pod rendered"
        )
        return
    problems = metadata_leaks(docs, "indexer")
    assert not problems, f"{ci}:{fmt(problems)}"


@pytest.mark.parametrize("ci", CI_SETS)
def test_no_pod_reaches_the_metadata_address(rendered: Renderer, ci: str) -> None:
    """The gateway fetches image URLs and model-download reaches hubs: no pod gets the metadata address."""
    problems = metadata_leaks(rendered(ci))
    assert not problems, f"{ci}:{fmt(problems)}"


@pytest.mark.parametrize(
    "egress",
    [
        pytest.param({"blockedCIDRs": ["10.1.0.0/16"]}, id="own-blocked-list"),
        pytest.param({"allowPrivateRanges": True}, id="private-ranges-open"),
    ],
)
def test_metadata_block_survives_egress_settings(
    helm_template: Callable[..., Any], tmp_path: Path, egress: dict[str, Any]
) -> None:
    """Tuning internet egress must not open the metadata endpoint by the way.

    A values file that lists its own blockedCIDRs replaces the default list (Helm does not merge
    lists): the chart must either refuse such values or keep 169.254.169.254 closed regardless.
    """
    values = tmp_path / "egress.yaml"
    values.write_text(yaml.safe_dump({"networkPolicy": {"internetEgress": egress}}))
    result = helm_template(values)
    if result.returncode != 0:
        assert "169.254.169.254" in result.stderr, (
            f"rejected without naming the metadata address:\n{result.stderr}"
        )
        return
    problems = metadata_leaks(result.docs)
    assert not problems, f"with networkPolicy.internetEgress {egress}:{fmt(problems)}"


# ---- images, secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ci", CI_SETS)
def test_no_image_is_latest_or_untagged(rendered: Renderer, ci: str) -> None:
    problems = [
        f"{ref(obj)} {c.get('name')}: {c.get('image')!r} has {image_problem(str(c.get('image', '')))}"
        for obj, _, pod in workloads(rendered(ci))
        for c in containers(pod)
        if image_problem(str(c.get("image", "")))
    ]
    assert not problems, f"{ci}:{fmt(problems)}"


def generated_secrets(values: dict[str, Any]) -> dict[str, list[str]]:
    """The Secrets (name -> sorted data keys) the chart may generate with these values: each one
    only where no existingSecret (nor an external service) takes its place."""
    out: dict[str, list[str]] = {}
    redis, gw, ui = values["redis"], values["gateway"], values["ui"]
    if redis["enabled"] and redis["auth"]["enabled"] and not redis["auth"]["existingSecret"]:
        out[f"{RELEASE}-redis-auth"] = [redis["auth"]["existingSecretPasswordKey"]]
    if gw["enabled"] and gw["auth"]["enabled"] and not gw["auth"]["existingSecret"]:
        out[f"{RELEASE}-gateway-auth"] = sorted(
            [gw["auth"]["existingSecretKey"], ui["apiKey"]["existingSecretKey"]]
        )
    auth = ui["auth"]
    no_login = auth["mode"] == "local" or (auth["mode"] == "auto" and not auth["oidc"]["enabled"])
    if ui["enabled"] and no_login and not auth["local"]["existingSecret"]:
        keys = [auth["local"]["existingSecretKey"]]
        if not auth["session"]["existingSecret"]:
            keys.append(auth["session"]["existingSecretKey"])
        out[f"{RELEASE}-ui-login"] = sorted(keys)
    return out


@pytest.mark.parametrize("ci", CI_SETS)
def test_no_literal_credentials(rendered: Renderer, ci_values: Any, ci: str) -> None:
    """Secrets come from existingSecret, but for the ones the chart generates when theirs is empty
    (random, kept across upgrades by lookup): the Redis password, the gateway's keys with the UI's key,
    the UI's local login. Each only then, and holding only its own keys. No credential inline."""
    docs = rendered(ci)
    expected = generated_secrets(ci_values(ci))
    found = {o["metadata"]["name"]: sorted(o.get("data") or {}) for o in docs if o.get("kind") == "Secret"}
    problems = [
        f"Secret/{name} {keys}: the chart renders a Secret (use existingSecret)"
        for name, keys in found.items()
        if expected.get(name) != keys
    ]
    problems += [
        f"Secret/{name}: not generated although no existingSecret replaces it"
        for name in expected.keys() - found.keys()
    ]
    for obj, _, pod in workloads(docs):
        for c in containers(pod):
            for env in c.get("env") or []:
                name = env.get("name", "")
                if SECRETISH_ENV.search(name) and not SECRET_POINTER_ENV.search(name) and env.get("value"):
                    problems.append(f"{ref(obj)} {c.get('name')}: env {name} has a literal value")
    for cm in (o for o in docs if o.get("kind") == "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if SECRETISH_ENV.search(key) and not SECRET_POINTER_ENV.search(key) and value:
                problems.append(f"{ref(cm)}: key {key} holds a credential in a ConfigMap")
    assert not problems, f"{ci}:{fmt(problems)}"


SECRET_FILES = "/etc/omnirag-secrets/"


def secret_file_problems(obj: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    """Every secret reaches an omnirag container as a file: no secretKeyRef env (vLLM's own key
    aside), and each *_FILE under /etc/omnirag-secrets/ names a key of a secret volume mounted there."""
    problems = []
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for c in containers(pod):
        where = f"{ref(obj)} {c.get('name')}"
        for env in c.get("env") or []:
            if "secretKeyRef" in (env.get("valueFrom") or {}) and env["name"] != "VLLM_API_KEY":
                problems.append(f"{where}: {env['name']} comes from a secretKeyRef, not a file")
            path = str(env.get("value") or "")
            if not (env.get("name", "").endswith("_FILE") and path.startswith(SECRET_FILES)):
                continue
            mount = next(
                (m for m in c.get("volumeMounts") or [] if path.startswith(m["mountPath"] + "/")), None
            )
            secret = (volumes.get(mount["name"]) or {}).get("secret") if mount else None
            items = [i["path"] for i in (secret or {}).get("items") or []]
            key = path[len(mount["mountPath"]) + 1 :] if mount else None
            if not secret or not mount.get("readOnly") or key not in items:  # type: ignore[union-attr]
                problems.append(f"{where}: {env['name']}={path} is not a key of a read-only secret volume")
    return problems


@pytest.mark.parametrize("ci", CI_SETS)
def test_secrets_reach_the_services_as_files(rendered: Renderer, ci: str) -> None:
    docs = rendered(ci)
    problems = [p for obj, _, pod in workloads(docs) for p in secret_file_problems(obj, pod)]
    # checkov's "secrets as files" check is skipped only where vLLM takes its key from env.
    for obj in docs:
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if any(str(a).startswith("CKV_K8S_35=") for a in annotations.values()) and not belongs(
            component_of(obj), "vllm"
        ):
            problems.append(f"{ref(obj)}: skips CKV_K8S_35 but reads no secret from env")
    assert not problems, f"{ci}:{fmt(problems)}"


def settings_from_render(
    container: dict[str, Any], files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Put the container's env into this process, its secret files (by key) under tmp_path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)  # no .env
    for env in container.get("env") or []:
        value = env.get("value")
        if value is None:
            continue
        if env["name"].endswith("_FILE") and value.startswith(SECRET_FILES):
            local = tmp_path / value[len(SECRET_FILES) :]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(files[local.name] + "\n")  # as `kubectl create secret --from-file` of an echo
            value = str(local)
        monkeypatch.setenv(env["name"], value)


def registry_from_render(
    docs: Docs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str] | None = None
) -> Any:
    """The gateway's real model registry (omnirag.gateway.registry), built from a render: its models
    file written under tmp_path and named by GATEWAY_MODELS_FILE, each api_key_file moved under
    tmp_path too and holding files[<its key in the Secret>], the render's GATEWAY_DEFAULT/REWRITE_MODEL."""
    from omnirag.gateway.config import GatewaySettings
    from omnirag.gateway.registry import ModelRegistry

    env, models = models_file(docs)
    for entry in models:
        if entry.get("api_key_file"):
            assert entry["api_key_file"].startswith(SECRET_FILES), entry
            local = tmp_path / entry["api_key_file"][len(SECRET_FILES) :]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text((files or {})[local.name] + "\n")  # as `kubectl create secret` of an echo
            entry["api_key_file"] = str(local)
    path = tmp_path / "gateway-models" / "models.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(models))
    monkeypatch.setenv("GATEWAY_MODELS_FILE", str(path))
    for name in ("GATEWAY_DEFAULT_MODEL", "GATEWAY_REWRITE_MODEL"):
        if env.get(name):
            monkeypatch.setenv(name, env[name])
        else:
            monkeypatch.delenv(name, raising=False)
    return ModelRegistry.from_settings(GatewaySettings())


def test_the_gateways_models_file_builds_the_real_registry(
    rendered: Renderer, helm_template: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's own registry, from the rendered file: both default models with their
    capabilities at their Services, R1 the default (and the rewrite's), R1 thinks and the omni
    model takes images, audio and video; an external entry's key read from its mounted file."""
    with monkeypatch.context() as m:
        m.chdir(tmp_path)  # no .env
        registry = registry_from_render(rendered("default"), tmp_path, m)
        assert [spec.name for spec in registry.models] == [R1, OMNI]
        r1, omni = registry.get(R1), registry.get(OMNI)
        assert registry.default is r1 and registry.rewrite is r1
        assert r1.reasoning and r1.takes("tools") and not r1.takes("image_url") and r1.thinking_off is None
        assert not omni.reasoning and all(omni.takes(p) for p in ("image_url", "input_audio", "video_url"))
        assert r1.base_url == f"http://{RELEASE}-vllm-{R1}:6006/v1" and r1.served == R1
        assert omni.base_url == f"http://{RELEASE}-vllm-qwen2-5-omni-3b:6006/v1" and omni.served == OMNI
        # The window each prompt is budgeted in: its vLLM's --max-model-len.
        assert r1.context_tokens == 8192 and omni.context_tokens == 16384
    # External entries: keys from their Secrets' files, thinking_off passed through as given.
    values = tmp_path / "external.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "qwen3-8b",
                        "capabilities": ["text", "reasoning"],
                        "thinkingOff": {"enable_thinking": False},
                        "reasoningBudget": 512,
                        "answerTokens": 200,
                        "contextTokens": 32768,
                        "sampling": {"repetition_penalty": 1.1},
                        "languages": ["en", "zh"],
                        "external": {
                            "baseUrl": "https://llm.example.com/v1",
                            "model": "Qwen/Qwen3-8B",
                            "existingSecret": "qwen",
                            "existingSecretKey": "token",
                        },
                    },
                    {
                        "name": "small",
                        "default": True,
                        "capabilities": ["text"],
                        "external": {"baseUrl": "http://small.example.com:8080/v1", "model": "small"},
                    },
                ],
                "gateway": {"rewriteModel": "small"},
            }
        )
    )
    result = helm_template(values)
    assert result.returncode == 0, result.stderr
    with monkeypatch.context() as m:
        m.chdir(tmp_path)
        registry = registry_from_render(result.docs, tmp_path, m, {"token": "qwen-key-1"})
        qwen = registry.get("qwen3-8b")
        assert qwen.api_key.get_secret_value() == "qwen-key-1" and qwen.served == "Qwen/Qwen3-8B"
        assert qwen.thinking_off == {"enable_thinking": False} and qwen.reasoning_budget == 512
        # The answer's bounds: as given; the small model without them leaves them to the gateway.
        assert qwen.answer_tokens == 200 and qwen.context_tokens == 32768
        assert qwen.sampling == {"repetition_penalty": 1.1} and qwen.languages == ("en", "zh")
        small = registry.get("small")
        assert small.answer_tokens is None and small.context_tokens is None and small.sampling is None
        assert small.languages is None
        assert registry.default.name == "small" and registry.rewrite.name == "small"
        assert registry.get("small").api_key_file is None


def test_the_services_read_the_rendered_secret_files(
    rendered: Renderer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The services' own settings, given a rendered pod's env and its secret files, end up with the
    secrets: the Redis password in the URL, the LLM key, the UI's key, an external Redis URL."""
    from omnirag.gateway.config import GatewaySettings
    from omnirag.indexer.config import IndexerSettings
    from omnirag.ui.config import UiSettings

    def container_of(ci: str, component: str) -> dict[str, Any]:
        obj = of_component(rendered(ci), component, {"Deployment"})[0]
        return pod_template(obj)[1]["containers"][0]  # type: ignore[index]

    files = {  # by the secrets' keys in the ci values
        "redis-password": "p@ss word",
        "api-key": "llm-key-1",
        "ui-api-key": "ui-key-1",
        "redis-url": "rediss://:pw@cache.example:6380/1",
        "ui-local-password": "local-pw-1",  # the chart's generated login (gpu-full configures none)
        "session-secret": "cookie-key-1",
    }
    with monkeypatch.context() as m:
        settings_from_render(container_of("gpu-full", "gateway"), files, tmp_path, m)
        gw = GatewaySettings()
        assert gw.redis_url.startswith("redis://:p%40ss%20word@omnirag-redis:")
        # The chat models' key (vLLM's) is a file the models file names; the registry reads it.
        registry = registry_from_render(rendered("gpu-full"), tmp_path, m, files)
        assert {spec.api_key.get_secret_value() for spec in registry.models} == {"llm-key-1"}
    with monkeypatch.context() as m:
        settings_from_render(container_of("gpu-full", "ui"), files, tmp_path / "ui", m)
        assert UiSettings().api_key.get_secret_value() == "ui-key-1"
    with monkeypatch.context() as m:
        settings_from_render(container_of("external-redis", "indexer"), files, tmp_path / "ix", m)
        assert IndexerSettings().redis_url == "rediss://:pw@cache.example:6380/1"


# ---- knowledge bases ------------------------------------------------------------------------------------


def kb_configmaps(docs: Docs) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
    """(ConfigMap, key, parsed YAML) for every ConfigMap entry that holds a knowledge-bases spec."""
    out = []
    for cm in (o for o in docs if o.get("kind") == "ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith((".yaml", ".yml")):
                continue
            data = yaml.safe_load(text)
            if isinstance(data, dict) and "knowledgeBases" in data:
                out.append((cm, key, data))
    return out


def indexer_cronjobs(docs: Docs) -> Docs:
    return [o for o in docs if o.get("kind") == "CronJob" and belongs(component_of(o), "indexer")]


KBS: list[dict[str, Any]] = [
    {
        "name": "docs",
        "sources": [
            {
                "type": "web",
                "urls": ["https://docs.example.com/"],
                "maxDepth": 2,
                "include": ["^https://docs\\."],
            }
        ],
        "splitter": {"chunkSize": 800, "chunkOverlap": 100},
        "schedule": "0 3 * * *",
    },
    {
        "name": "handbook",
        "sources": [{"type": "local", "path": "/data/handbook", "glob": "**/*.md"}],
        "schedule": "@daily",
    },
]


# The handbook's documents, on a volume of the indexer's pods where its local source says.
KB_VOLUMES: dict[str, Any] = {
    "extraVolumes": [
        {"name": "handbook", "persistentVolumeClaim": {"claimName": "handbook", "readOnly": True}}
    ],
    "extraVolumeMounts": [{"name": "handbook", "mountPath": "/data/handbook", "readOnly": True}],
}


def test_one_cronjob_per_knowledge_base(helm_template: Callable[..., Any], tmp_path: Path) -> None:
    values = tmp_path / "kbs.yaml"
    values.write_text(yaml.safe_dump({"knowledgeBases": KBS, "indexer": KB_VOLUMES}))
    result = helm_template(values)
    assert result.returncode == 0, f"helm template with two knowledge bases failed:\n{result.stderr}"
    docs = result.docs
    cronjobs = indexer_cronjobs(docs)
    assert len(cronjobs) == len(KBS), f"want {len(KBS)} indexer CronJobs, got {[ref(o) for o in cronjobs]}"
    configmaps = kb_configmaps(docs)
    assert configmaps, "no ConfigMap carries the knowledge-bases YAML"
    problems = []
    for cm, key, data in configmaps:
        try:
            parsed = kb_spec.parse(data, Path("/config"))
        except kb_spec.SpecError as exc:
            problems.append(f"{ref(cm)} {key}: the indexer rejects it: {exc.message}")
            continue
        if [kb.name for kb in parsed] != [kb["name"] for kb in KBS]:
            problems.append(f"{ref(cm)} {key}: knowledge bases {[kb.name for kb in parsed]}")
    cm_names = {cm["metadata"]["name"] for cm, _, _ in configmaps}
    for kb in KBS:
        mine = [cj for cj in cronjobs if flag_value(tokens_of_pod(cj), "--kb") == kb["name"]]
        if len(mine) != 1:
            problems.append(f"knowledge base {kb['name']}: {len(mine)} CronJobs run `--kb {kb['name']}`")
            continue
        cj = mine[0]
        if cj["spec"].get("schedule") != kb["schedule"]:
            problems.append(f"{ref(cj)}: schedule {cj['spec'].get('schedule')!r}, want {kb['schedule']!r}")
        if cj["spec"].get("concurrencyPolicy") != "Forbid":
            problems.append(
                f"{ref(cj)}: concurrencyPolicy {cj['spec'].get('concurrencyPolicy')!r}, want Forbid"
            )
        pod = pod_template(cj)
        assert pod is not None
        mounted = {(v.get("configMap") or {}).get("name") for v in pod[1].get("volumes") or []}
        mounted |= {
            (s.get("configMap") or {}).get("name")
            for v in pod[1].get("volumes") or []
            for s in (v.get("projected") or {}).get("sources") or []
        }
        if not mounted & cm_names:
            problems.append(f"{ref(cj)}: does not mount the knowledge-bases ConfigMap {sorted(cm_names)}")
    assert not problems, fmt(problems)


def tokens_of_pod(obj: dict[str, Any]) -> list[str]:
    found = pod_template(obj)
    assert found is not None
    return [t for c in containers(found[1], init=False) for t in tokens(c)]


@pytest.mark.parametrize("ci", CI_SETS)
def test_ci_sets_render_a_cronjob_per_knowledge_base(rendered: Renderer, ci_values: Any, ci: str) -> None:
    values = ci_values(ci)
    enabled = (values.get("indexer") or {}).get("enabled", True)
    want = len(values.get("knowledgeBases") or []) if enabled else 0
    cronjobs = indexer_cronjobs(rendered(ci))
    assert len(cronjobs) == want, (
        f"{ci}: {want} knowledge bases, indexer CronJobs {[ref(o) for o in cronjobs]}"
    )
    for cm, key, data in kb_configmaps(rendered(ci)):
        try:
            kb_spec.parse(data, Path("/config"))
        except kb_spec.SpecError as exc:
            pytest.fail(f"{ci}: {ref(cm)} {key} is rejected by the indexer: {exc.message}")


def indexer_container(pod: dict[str, Any]) -> dict[str, Any]:
    [container] = [c for c in pod.get("containers") or [] if c.get("name") == "indexer"]
    return container


def mounted_path(pod: dict[str, Any], container: dict[str, Any], path: str) -> str | None:
    """The name of the pod volume mounted at or above `path` in the container, or None."""
    volumes = {v["name"] for v in pod.get("volumes") or []}
    for m in container.get("volumeMounts") or []:
        root = str(m["mountPath"]).rstrip("/") + "/"
        if (path.rstrip("/") + "/").startswith(root) and m["name"] in volumes:
            return str(m["name"])
    return None


@pytest.mark.parametrize("ci", CI_SETS)
def test_every_local_source_path_has_its_volume(rendered: Renderer, ci_values: Any, ci: str) -> None:
    """A `type: local` source is read inside the indexer's pods: its path must be on one of their volumes."""
    values = ci_values(ci)
    problems = []
    for kb in values.get("knowledgeBases") or []:
        for source in kb.get("sources") or []:
            if source.get("type") != "local":
                continue
            runs = [
                o
                for o in of_component(rendered(ci), "indexer", {"CronJob", "Job"})
                if flag_value(tokens_of_pod(o), "--kb") == kb["name"]
            ]
            assert runs, f"{ci}: no indexer run of {kb['name']}"
            for obj in runs:
                found = pod_template(obj)
                assert found is not None
                if mounted_path(found[1], indexer_container(found[1]), source["path"]) is None:
                    problems.append(f"{ci}: {ref(obj)} reads {source['path']!r} but mounts nothing there")
    assert not problems, fmt(problems)


@pytest.mark.parametrize(
    ("path", "mounts", "message"),
    [
        ("/srv/docs", [], "is on no volume"),
        ("/srv/docs", [{"name": "d", "mountPath": "/srv/doc"}], "is on no volume"),
        ("docs", [{"name": "d", "mountPath": "/srv/docs"}], "is relative"),
    ],
    ids=["no-mount", "sibling-mount", "relative"],
)
def test_a_local_source_without_its_volume_fails_the_install(
    helm_template: Callable[..., Any], tmp_path: Path, path: str, mounts: list[dict[str, Any]], message: str
) -> None:
    values = tmp_path / "v.yaml"
    indexer: dict[str, Any] = {"extraVolumeMounts": mounts}
    if mounts:
        indexer["extraVolumes"] = [{"name": "d", "emptyDir": {}}]
    values.write_text(
        yaml.safe_dump(
            {
                "knowledgeBases": [{"name": "docs", "sources": [{"type": "local", "path": path}]}],
                "indexer": indexer,
            }
        )
    )
    result = helm_template(values)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "indexer.extraVolumeMounts" in result.stderr, result.stderr


def test_gpu_embedder_runs_the_cuda_image(rendered: Renderer) -> None:
    """An embedder given a GPU runs the CUDA build (tag <appVersion>-gpu); the default one the CPU build."""
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]
    seen_gpu = []
    for ci in CI_SETS:
        for obj in of_component(rendered(ci), "embedder", {"Deployment"}):
            [container] = [
                c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == "embedder"
            ]
            limits = (container.get("resources") or {}).get("limits") or {}
            env = {e["name"]: e.get("value") for e in container.get("env") or []}
            gpu = int(limits.get("nvidia.com/gpu", 0)) > 0 or str(env.get("EMBEDDER_DEVICE", "")).startswith(
                "cuda"
            )
            tag = container["image"].rsplit(":", 1)[1]
            if gpu:
                seen_gpu.append(ci)
                assert tag == f"{app_version}-gpu", (
                    f"{ci}: {ref(obj)} uses a GPU but runs {container['image']}"
                )
                assert int(limits.get("nvidia.com/gpu", 0)) >= 1, (
                    f"{ci}: {ref(obj)} has no GPU limit: {limits}"
                )
            else:
                assert not tag.endswith("-gpu"), f"{ci}: {ref(obj)} has no GPU but runs {container['image']}"
    assert "gpu-full" in seen_gpu, "gpu-full's embedder should run on a GPU"


def initial_runs(docs: Docs) -> dict[str, dict[str, Any]]:
    """The indexer's first-run Jobs by knowledge base."""
    out = {}
    for obj in of_component(docs, "indexer", {"Job"}):
        kb = flag_value(tokens_of_pod(obj), "--kb")
        assert kb and kb not in out, f"{ref(obj)}: knowledge base {kb!r}"
        out[kb] = obj
    return out


def without_wait(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod spec with --wait-embedder's value blanked and annotations dropped (they may differ)."""
    pod = json.loads(json.dumps(pod))
    for c in pod.get("containers") or []:
        argv = c.get("command") or []
        if "--wait-embedder" in argv:
            argv[argv.index("--wait-embedder") + 1] = "N"
    return pod


def kb_render(helm_template: Callable[..., Any], tmp_path: Path, name: str, values: dict[str, Any]) -> Docs:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm_template(path)
    assert result.returncode == 0, result.stderr
    return list(result.docs)


def test_each_knowledge_base_is_indexed_once_right_after_install(
    helm_template: Callable[..., Any], tmp_path: Path
) -> None:
    """Not at its 03:00 schedule: a Job per knowledge base runs the CronJob's pod once, at install."""
    base = {"knowledgeBases": KBS, "indexer": KB_VOLUMES}
    docs = kb_render(helm_template, tmp_path, "base", base)
    jobs = initial_runs(docs)
    assert sorted(jobs) == sorted(kb["name"] for kb in KBS), [ref(j) for j in jobs.values()]
    cronjobs = {flag_value(tokens_of_pod(cj), "--kb"): cj for cj in indexer_cronjobs(docs)}
    problems = []
    for kb, job in jobs.items():
        annotations = job["metadata"].get("annotations") or {}
        if any(k.startswith("helm.sh/hook") for k in annotations):
            problems.append(f"{ref(job)} is a hook: `helm install --wait` would block on a whole crawl")
        job_pod, cron_pod = pod_template(job), pod_template(cronjobs[kb])
        assert job_pod is not None and cron_pod is not None
        # The same pod: image, command, env, volumes, security, scheduling, as the CronJob's.
        if without_wait(job_pod[1]) != without_wait(cron_pod[1]):
            problems.append(f"{ref(job)}'s pod differs from {ref(cronjobs[kb])}'s")
        wait = float(flag_value(tokens_of_pod(job), "--wait-embedder") or 0)
        if wait < float(flag_value(tokens_of_pod(cronjobs[kb]), "--wait-embedder") or 0):
            problems.append(f"{ref(job)} waits {wait} s for the embedder, less than a scheduled run")
        if job["spec"].get("ttlSecondsAfterFinished") is not None:
            problems.append(
                f"{ref(job)}: a finished Job deleted by its TTL would run again at the next upgrade"
            )
    assert not problems, fmt(problems)

    names = {kb: j["metadata"]["name"] for kb, j in jobs.items()}
    # An upgrade that changes nothing of a knowledge base or its pod keeps its Job (no new run).
    same = kb_render(helm_template, tmp_path, "same", base | {"gateway": {"replicas": 3}})
    assert {kb: j["metadata"]["name"] for kb, j in initial_runs(same).items()} == names
    # A changed knowledge base runs again, under a new name; the other one does not.
    changed_kbs = json.loads(json.dumps(KBS))
    changed_kbs[0]["splitter"] = {"chunkSize": 600, "chunkOverlap": 60}
    changed = {
        kb: j["metadata"]["name"]
        for kb, j in initial_runs(
            kb_render(helm_template, tmp_path, "changed", base | {"knowledgeBases": changed_kbs})
        ).items()
    }
    assert changed[KBS[0]["name"]] != names[KBS[0]["name"]], changed
    assert changed[KBS[1]["name"]] == names[KBS[1]["name"]], changed
    # A new image re-runs every one (the index may be read differently).
    image = kb_render(
        helm_template, tmp_path, "image", base | {"indexer": KB_VOLUMES | {"image": {"tag": "9.9.9"}}}
    )
    assert all(initial_runs(image)[kb]["metadata"]["name"] != n for kb, n in names.items())
    for name in names.values():
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    # Off: only the schedules.
    off = kb_render(
        helm_template, tmp_path, "off", base | {"indexer": KB_VOLUMES | {"initialRun": {"enabled": False}}}
    )
    assert not initial_runs(off) and len(indexer_cronjobs(off)) == len(KBS)


@pytest.mark.parametrize("ci", CI_SETS)
def test_no_pod_waits_for_an_index(rendered: Renderer, ci: str) -> None:
    """`helm install --wait` waits for Deployments and StatefulSets to be ready: none may need an index.

    The retriever is ready with no collection (its /readyz fails only on a missing index root or a
    collection that fails to load), so its index root must be a mounted volume, which always
    exists; no init container may wait on the index volume.
    """
    problems = []
    for obj, _, pod in workloads(rendered(ci)):
        if obj["kind"] not in LONG_RUNNING:
            continue
        for init in pod.get("initContainers") or []:
            if "/data/index" in script_text(init) or any(
                str(m.get("mountPath", "")).startswith("/data/index") for m in init.get("volumeMounts") or []
            ):
                problems.append(f"{ref(obj)}: init container {init.get('name')} waits on the index")
    for obj in of_component(rendered(ci), "retriever", {"Deployment"}):
        pod = obj["spec"]["template"]["spec"]
        [container] = [c for c in pod["containers"] if c["name"] == "retriever"]
        root = {e["name"]: e.get("value") for e in container.get("env") or []}["RETRIEVER_INDEX_ROOT"]
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts") or []}
        if root.rstrip("/") not in mounts:
            problems.append(
                f"{ref(obj)}: RETRIEVER_INDEX_ROOT {root} is not a mount point (it may not exist)"
            )
    assert not problems, fmt(problems)


def inline_refs(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """The schema with every local $ref replaced by what it points at (to compare two schemas)."""
    assert depth < 50, "recursive $ref"
    if isinstance(node, list):
        return [inline_refs(n, root, depth) for n in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#"):
        target: Any = root
        for part in node["$ref"][1:].split("/")[1:]:
            target = target[part.replace("~1", "/").replace("~0", "~")]
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return inline_refs({**target, **rest}, root, depth + 1)
    return {k: inline_refs(v, root, depth) for k, v in node.items() if k not in {"$defs", "definitions"}}


def test_values_schema_knowledge_bases_is_the_indexers_schema() -> None:
    chart_schema = json.loads((CHART / "values.schema.json").read_text())
    indexer_schema = kb_spec.schema()
    chart_kb = (chart_schema.get("properties") or {}).get("knowledgeBases")
    assert chart_kb is not None, "values.schema.json has no properties.knowledgeBases"
    mine = inline_refs(chart_kb, chart_schema)
    theirs = inline_refs(indexer_schema["properties"]["knowledgeBases"], indexer_schema)
    assert mine == theirs, (
        "values.schema.json's knowledgeBases differs from "
        "jobs/indexer/src/omnirag/indexer/schema/knowledge-bases.schema.json; copy it over"
    )


# ---- components on and off, autoscaling ---------------------------------------------------------------


def test_gpu_full_autoscales_gateway_embedder_retriever(rendered: Renderer) -> None:
    docs = rendered("gpu-full")
    hpas = [o for o in docs if o.get("kind") == "HorizontalPodAutoscaler"]
    problems = []
    for component in ("gateway", "embedder", "retriever"):
        targets = {(o["kind"], o["metadata"]["name"]) for o in of_component(docs, component, LONG_RUNNING)}
        mine = [
            h
            for h in hpas
            if (h["spec"]["scaleTargetRef"].get("kind"), h["spec"]["scaleTargetRef"].get("name")) in targets
        ]
        if not targets:
            problems.append(f"{component}: no Deployment")
        elif len(mine) != 1:
            problems.append(f"{component}: {len(mine)} HPAs target {sorted(targets)}")
        else:
            spec = mine[0]["spec"]
            if not 1 <= spec.get("minReplicas", 1) <= spec["maxReplicas"]:
                problems.append(
                    f"{ref(mine[0])}: minReplicas {spec.get('minReplicas')} maxReplicas {spec['maxReplicas']}"
                )
            if not spec.get("metrics"):
                problems.append(f"{ref(mine[0])}: no metrics")
            # A replica count in the Deployment would reset the HPA's choice on every helm upgrade.
            problems += [
                f"{ref(o)}: sets spec.replicas although an HPA scales it"
                for o in of_component(docs, component, LONG_RUNNING)
                if "replicas" in o["spec"]
            ]
    assert not problems, f"gpu-full:{fmt(problems)}"


def object_component(obj: dict[str, Any]) -> str | None:
    """The chart component an object belongs to, by its label or else by its name (<release>-<component>…)."""
    candidates = sorted(COMPONENTS.values(), key=len, reverse=True)
    label = component_of(obj)
    if label:
        return next((c for c in candidates if belongs(label, c)), label)
    name = str(obj.get("metadata", {}).get("name", ""))
    return next((c for c in candidates if belongs(name, f"{RELEASE}-{c}")), None)


@pytest.mark.parametrize("ci", CI_SETS)
def test_disabled_components_render_nothing(rendered: Renderer, ci_values: Any, ci: str) -> None:
    values = ci_values(ci)
    docs = rendered(ci)
    enabled = {COMPONENTS[k] for k in COMPONENTS if (values.get(k) or {}).get("enabled", False)}
    # vLLM runs when a chat model is served in the release (not at an external URL).
    if any(not m.get("external") for m in values.get("models") or []):
        enabled.add("vllm")
    problems = [
        f"{ref(o)} belongs to disabled component {object_component(o)}"
        for o in docs
        if object_component(o) in set(COMPONENTS.values()) - enabled
    ]
    present = {object_component(o) for o, _, _ in workloads(docs)}
    for component in enabled - present:
        if component == "indexer" and not values.get("knowledgeBases"):
            continue  # nothing to index and no standing worker is a valid indexer
        problems.append(f"component {component} is enabled but has no workload")
    assert not problems, f"{ci}:{fmt(problems)}"


def test_only_retriever_is_only_the_retriever(rendered: Renderer) -> None:
    docs = rendered("only-retriever")
    components = {c for o, _, _ in workloads(docs) if (c := object_component(o)) is not None}
    # The helm test Pod may carry its own component label; anything else is a component left on.
    extra = components - {"retriever", "test", "tests"}
    assert "retriever" in components, "only-retriever renders no retriever"
    assert not extra, f"only-retriever also renders {sorted(extra)}"


# ---- the schema rejects bad values ------------------------------------------------------------------


BAD_VALUES = [
    *[
        pytest.param({key: {"image": {"tag": "latest"}}}, [f"/{key}/image/tag"], id=f"{key}-tag-latest")
        for key in COMPONENTS
    ],
    pytest.param({"gateway": {"replicas": -1}}, ["/gateway/replicas"], id="negative-replicas"),
    pytest.param(
        {"retriever": {"faissGpu": True}},
        ["/retriever/resources/limits", "nvidia.com/gpu"],
        id="faiss-gpu-no-gpu",
    ),
    pytest.param({"gateway": {"replicaCount": 2}}, ["/gateway", "replicaCount"], id="unknown-key"),
    pytest.param(
        {"knowledgeBases": [{"sources": [{"type": "local", "path": "docs"}]}]},
        ["/knowledgeBases/0", "name"],
        id="kb-without-name",
    ),
    pytest.param(
        {"knowledgeBases": [{"name": "Bad Name!", "sources": [{"type": "local", "path": "docs"}]}]},
        ["/knowledgeBases/0/name"],
        id="kb-bad-name",
    ),
    pytest.param(
        {
            "knowledgeBases": [
                {"name": "docs", "sources": [{"type": "local", "path": "d"}], "schedule": "daily"}
            ]
        },
        ["/knowledgeBases/0/schedule"],
        id="kb-bad-schedule",
    ),
]


@pytest.mark.parametrize(("override", "named"), BAD_VALUES)
def test_schema_rejects_bad_values(
    helm_template: Callable[..., Any], tmp_path: Path, override: dict[str, Any], named: list[str]
) -> None:
    values = tmp_path / "bad.yaml"
    values.write_text(yaml.safe_dump(override))
    result = helm_template(values)
    assert result.returncode != 0, f"helm template accepted {override}"
    assert "schema" in result.stderr, f"rejected, but not by values.schema.json:\n{result.stderr}"
    missing = [n for n in named if n not in result.stderr]
    assert not missing, f"the error for {override} does not name {missing}:\n{result.stderr}"


def test_schema_accepts_good_overrides_and_they_reach_the_objects(
    helm_template: Callable[..., Any], tmp_path: Path
) -> None:
    """The control for the test above: a good override renders, and lands where it should."""
    values = tmp_path / "good.yaml"
    values.write_text(
        yaml.safe_dump({"gateway": {"enabled": True, "replicas": 3, "image": {"tag": "9.8.7"}}})
    )
    result = helm_template(values)
    assert result.returncode == 0, f"a good override was rejected:\n{result.stderr}"
    gateways = of_component(result.docs, "gateway", {"Deployment"})
    assert len(gateways) == 1, f"want one gateway Deployment, got {[ref(o) for o in gateways]}"
    images = [c["image"] for c in gateways[0]["spec"]["template"]["spec"]["containers"]]
    assert any(i.endswith(":9.8.7") for i in images), f"gateway.image.tag did not reach the images {images}"
    has_hpa = any(
        o.get("kind") == "HorizontalPodAutoscaler"
        and o["spec"]["scaleTargetRef"].get("name") == gateways[0]["metadata"]["name"]
        for o in result.docs
    )
    if not has_hpa:
        assert gateways[0]["spec"].get("replicas") == 3, "gateway.replicas did not reach the Deployment"


# ---- the shared service token ---------------------------------------------------------------------------

# Who sends or requires the token: component label -> env prefix.
TOKEN_USERS = {
    "gateway": "GATEWAY_",
    "embedder": "EMBEDDER_",
    "retriever": "RETRIEVER_",
    "indexer": "INDEXER_",
}


def test_the_service_token_is_a_file_in_every_pod_that_needs_it(
    helm_template: Callable[..., Any],
    rendered: Renderer,
    tools: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Off by default. With serviceToken.existingSecret, the gateway, embedder, retriever and every
    indexer pod (runs and worker) get its key as a read-only file and <PREFIX>SERVICE_TOKEN_FILE;
    nothing else gets it. The services read it from there."""
    from omnirag.embedder.config import EmbedderSettings

    for ci in CI_SETS:
        for _, _, pod in workloads(rendered(ci)):
            for c in containers(pod):
                names = [e["name"] for e in c.get("env") or []]
                assert not [n for n in names if "SERVICE_TOKEN" in n], f"{ci}: a token nobody asked for"

    result = helm_template(
        CI_FILES["gpu-full"], extra=["--set", "serviceToken.existingSecret=omnirag-service-token"]
    )
    assert result.returncode == 0, result.stderr
    docs = result.docs
    seen: set[str] = set()
    for obj, _, pod in workloads(docs):
        component = component_of(obj) or ""
        prefix = next((p for c, p in TOKEN_USERS.items() if belongs(component, c)), None)
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for c in containers(pod, init=False):
            env = {e["name"]: e.get("value") for e in c.get("env") or []}
            tokens_env = {n: v for n, v in env.items() if "SERVICE_TOKEN" in n}
            if prefix is None:
                assert not tokens_env and "service-token" not in volumes, f"{ref(obj)} gets the token"
                continue
            seen.add(component)
            path = "/etc/omnirag-secrets/service-token/service-token"
            assert tokens_env == {f"{prefix}SERVICE_TOKEN_FILE": path}, ref(obj)
            secret = volumes["service-token"]["secret"]
            assert secret["secretName"] == "omnirag-service-token"
            assert [i["key"] for i in secret["items"]] == ["service-token"]
        assert not secret_file_problems(obj, pod), ref(obj)
    assert {"gateway", "embedder", "retriever"} <= seen and any(belongs(s, "indexer") for s in seen), seen
    assert not validate_manifests(tools, docs, tmp_path)

    embedder = pod_template(of_component(docs, "embedder", {"Deployment"})[0])[1]["containers"][0]  # type: ignore[index]
    with monkeypatch.context() as m:
        settings_from_render(embedder, {"service-token": "t" * 32}, tmp_path / "embedder", m)
        token = EmbedderSettings().service_token
        assert token is not None and token.get_secret_value() == "t" * 32


# ---- the UI's login -----------------------------------------------------------------------------------


def test_the_ui_login_reaches_the_ui_as_settings_and_secret_files(
    helm_template: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ui.auth: OIDC (issuer, client id, allowed groups) and the client and cookie secrets as files
    from existing Secrets reach the UI's own settings; a local password from a Secret is the other way
    in (without either, the chart generates a local login: see the test after this one)."""
    from omnirag.ui.config import UiSettings
    from omnirag.ui.login import resolve_mode

    def ui_container(override: dict[str, Any], name: str) -> dict[str, Any]:
        values = tmp_path / f"{name}.yaml"
        values.write_text(yaml.safe_dump(override))
        result = helm_template(values)
        assert result.returncode == 0, result.stderr
        (ui,) = of_component(result.docs, "ui", {"Deployment"})
        pod = pod_template(ui)[1]  # type: ignore[index]
        assert not secret_file_problems(ui, pod)
        return pod["containers"][0]  # type: ignore[no-any-return]

    oidc = {
        "ui": {
            "auth": {
                "publicUrl": "https://chat.example.com",
                "oidc": {
                    "enabled": True,
                    "issuer": "https://idp.example.com/realms/team",
                    "clientId": "omnirag-ui",
                    "allowedGroups": ["staff"],
                    "existingSecret": "ui-oidc",
                },
                "session": {"existingSecret": "ui-session", "maxAgeSeconds": 3600},
            }
        }
    }
    files = {"ui-api-key": "ui-key-1", "client-secret": "oidc-secret-1", "session-secret": "cookie-key-1"}
    with monkeypatch.context() as m:
        settings_from_render(ui_container(oidc, "oidc"), files, tmp_path / "oidc", m)
        s = UiSettings()
        assert resolve_mode(s) == "oidc" and s.oidc_client_id == "omnirag-ui"
        assert s.oidc_issuer == "https://idp.example.com/realms/team" and s.oidc_allowed_groups == ["staff"]
        assert s.oidc_client_secret is not None and s.oidc_client_secret.get_secret_value() == "oidc-secret-1"
        assert s.session_secret is not None and s.session_secret.get_secret_value() == "cookie-key-1"
        assert s.public_url == "https://chat.example.com" and s.session_max_age == 3600

    local = {"ui": {"auth": {"local": {"existingSecret": "ui-local"}}}}
    with monkeypatch.context() as m:
        settings_from_render(
            ui_container(local, "local"), files | {"ui-local-password": "pw-1"}, tmp_path / "l", m
        )
        s = UiSettings()
        assert resolve_mode(s) == "local" and s.local_password.get_secret_value() == "pw-1"  # type: ignore[union-attr]


def secret_data(docs: Docs, name: str) -> dict[str, str]:
    """The decoded data of the rendered Secret ``name``."""
    import base64

    (secret,) = [o for o in docs if o.get("kind") == "Secret" and o["metadata"]["name"] == name]
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def secret_volume_of(pod: dict[str, Any], env_name: str) -> tuple[str, str]:
    """(secretName, key) of the secret file a container's ``env_name`` (a *_FILE) points at."""
    (c,) = [c for c in pod["containers"] if any(e["name"] == env_name for e in c.get("env") or [])]
    path = next(e["value"] for e in c["env"] if e["name"] == env_name)
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]["secret"]
    return volume["secretName"], path[len(mount["mountPath"]) + 1 :]


def test_a_stock_install_generates_the_gateway_keys_and_the_uis_key(
    rendered: Renderer, helm_template: Callable[..., Any], tmp_path: Path
) -> None:
    """With gateway.auth.existingSecret empty the chart writes <fullname>-gateway-auth itself: a keys
    file the gateway's own KeyStore loads, in which the UI's key (same Secret, the key the UI mounts)
    authenticates and may act for the signed-in user; the gateway and the UI read exactly it."""
    from omnirag.gateway.auth import KeyStore

    docs = rendered("default")
    name = f"{RELEASE}-gateway-auth"
    data = secret_data(docs, name)
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(data["api-keys.yaml"])
    store = KeyStore.load(inline=None, path=keys_file, dev_key=None, default_rpm=60, default_tpm=0)
    ui_key = data["ui-api-key"]
    assert len(ui_key) >= 32 and ui_key.isalnum(), "the generated UI key is short or not alphanumeric"
    key = store.authenticate(ui_key)
    assert key.name == "ui" and key.act_for_users and key.may_read("any-collection") and not key.admin
    assert ui_key not in data["api-keys.yaml"], "the keys file holds the UI key in plain text"
    # Kept across upgrades: the helper reads the Secret back before generating one.
    helpers = "".join(p.read_text() for p in sorted((CHART / "templates").glob("_*.tpl")))
    assert re.search(r'lookup "v1" "Secret" \.Release\.Namespace \$name', helpers)

    (gw,) = of_component(docs, "gateway", {"Deployment"})
    gw_pod = pod_template(gw)[1]  # type: ignore[index]
    (c,) = gw_pod["containers"]
    path = next(e["value"] for e in c["env"] if e["name"] == "GATEWAY_API_KEYS_FILE")
    auth = {v["name"]: v for v in gw_pod["volumes"]}["auth"]["secret"]
    assert auth["secretName"] == name and path.endswith("/" + auth["items"][0]["path"])
    assert auth["items"][0]["key"] == "api-keys.yaml"
    (ui,) = of_component(docs, "ui", {"Deployment"})
    assert secret_volume_of(pod_template(ui)[1], "UI_API_KEY_FILE") == (name, "ui-api-key")  # type: ignore[index]

    # A Secret of the operator's replaces it.
    mine = render_with(
        helm_template, tmp_path, {"gateway": {"auth": {"existingSecret": "my-keys"}}}, base="default"
    )
    assert mine.returncode == 0, mine.stderr
    assert name not in {o["metadata"]["name"] for o in mine.docs if o.get("kind") == "Secret"}


def test_a_stock_install_generates_a_local_ui_login(
    rendered: Renderer,
    helm_template: Callable[..., Any],
    tools: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no login configured (mode auto, no OIDC, no local existingSecret) the chart generates one
    local user's password and the cookie's signing key in <fullname>-ui-login, mounted as files; the
    UI's own settings, given the rendered env and those files, pick the local login instead of
    refusing to start. NOTES tells how to read the password and to use OIDC for a team."""
    from omnirag.ui.config import UiSettings
    from omnirag.ui.login import resolve_mode

    docs = rendered("default")
    name = f"{RELEASE}-ui-login"
    data = secret_data(docs, name)
    password = data["ui-local-password"]
    assert len(password) >= 20 and password.isalnum()
    assert len(data["session-secret"]) >= 32
    (ui,) = of_component(docs, "ui", {"Deployment"})
    pod = pod_template(ui)[1]  # type: ignore[index]
    assert not secret_file_problems(ui, pod)
    assert secret_volume_of(pod, "UI_LOCAL_PASSWORD_FILE") == (name, "ui-local-password")
    assert secret_volume_of(pod, "UI_SESSION_SECRET_FILE") == (name, "session-secret")
    assert password not in json.dumps(pod)

    files = data | {"ui-api-key": secret_data(docs, f"{RELEASE}-gateway-auth")["ui-api-key"]}
    with monkeypatch.context() as m:
        settings_from_render(pod["containers"][0], files, tmp_path / "ui", m)
        s = UiSettings()
        assert s.host not in ("127.0.0.1", "localhost", "::1"), (
            "the rendered UI should listen beyond loopback"
        )
        assert resolve_mode(s) == "local"
        assert s.local_password is not None and s.local_password.get_secret_value() == password
        assert s.session_secret is not None and s.session_secret.get_secret_value() == data["session-secret"]

    notes = tools.run([tools.helm, "install", RELEASE, CHART, "--namespace", "omnirag", "--dry-run=client"])
    assert notes.returncode == 0, notes.stderr
    text = notes.stdout[notes.stdout.index("NOTES:") :]
    assert (
        f"kubectl -n omnirag get secret {name} -o jsonpath='{{.data.ui-local-password}}' | base64 -d" in text
    ), text
    assert "OpenID Connect" in text

    # A login of the operator's (OIDC, or a local password from their Secret) replaces it.
    for override in (
        {"ui": {"auth": {"oidc": {"enabled": True, "issuer": "https://idp.example.com", "clientId": "ui"}}}},
        {"ui": {"auth": {"local": {"existingSecret": "my-login"}}}},
    ):
        result = render_with(helm_template, tmp_path, override, base="default")
        assert result.returncode == 0, result.stderr
        assert name not in {o["metadata"]["name"] for o in result.docs if o.get("kind") == "Secret"}, override


@pytest.mark.parametrize(
    ("override", "named"),
    [
        pytest.param({"ui": {"auth": {"mode": "open"}}}, ["/ui/auth/mode"], id="ui-auth-mode"),
        pytest.param(
            {"ui": {"auth": {"oidc": {"issuer": "idp.example.com"}}}}, ["/ui/auth/oidc/issuer"], id="issuer"
        ),
        pytest.param({"ui": {"auth": {"session": {"maxAgeSeconds": 5}}}}, ["/ui/auth/session"], id="max-age"),
    ],
)
def test_schema_rejects_bad_ui_login_values(
    helm_template: Callable[..., Any], tmp_path: Path, override: dict[str, Any], named: list[str]
) -> None:
    values = tmp_path / "bad.yaml"
    values.write_text(yaml.safe_dump(override))
    result = helm_template(values)
    assert result.returncode != 0 and "schema" in result.stderr, f"accepted {override}"
    assert all(n in result.stderr for n in named), result.stderr


# ---- defaults that come up on a managed GPU cluster ------------------------------------------------------

SHARED_VOLUMES = ("models", "index", "uploads")
SINGLE_NODE_LABEL = "omnirag.dev/shared-storage"


def render_with(
    helm_template: Callable[..., Any], tmp_path: Path, override: dict[str, Any], base: str = "gpu-full"
) -> Any:
    values = tmp_path / f"override-{len(list(tmp_path.iterdir()))}.yaml"
    values.write_text(yaml.safe_dump(override))
    return helm_template(CI_FILES[base], values)


def shared_mounts(pod: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod volume, container mount) pairs of the models, index and uploads volumes."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    return [
        (volumes[m["name"]], m)
        for c in containers(pod)
        for m in c.get("volumeMounts") or []
        if m["name"] in SHARED_VOLUMES and m["name"] in volumes
    ]


def claims(docs: Docs) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in docs if o.get("kind") == "PersistentVolumeClaim"}


def test_volumes_can_use_existing_claims_or_one_shared_claim_with_subpaths(
    helm_template: Callable[..., Any], tools: Any, tmp_path: Path
) -> None:
    """RWX classes are few (EFS, Filestore, NFS, Azure Files): an operator brings one claim per volume,
    or one claim for all three, each volume a subPath of it."""
    existing = {f"omnirag-{v}-pvc": v for v in SHARED_VOLUMES}
    result = render_with(
        helm_template, tmp_path, {"persistence": {v: {"existingClaim": c} for c, v in existing.items()}}
    )
    assert result.returncode == 0, result.stderr
    assert not claims(result.docs), f"existing claims, yet the chart made {list(claims(result.docs))}"
    seen = set()
    for obj, _, pod in workloads(result.docs):
        for volume, mount in shared_mounts(pod):
            assert volume["persistentVolumeClaim"]["claimName"] == f"omnirag-{mount['name']}-pvc", ref(obj)
            assert "subPath" not in mount, ref(obj)
            seen.add(mount["name"])
    assert seen == set(SHARED_VOLUMES)

    shared = {"enabled": True, "storageClass": "filestore-rwx", "size": "200Gi"}
    result = render_with(helm_template, tmp_path, {"persistence": {"shared": shared}})
    assert result.returncode == 0, result.stderr
    made = claims(result.docs)
    assert list(made) == ["omnirag-shared"], f"want one shared claim, got {list(made)}"
    spec = made["omnirag-shared"]["spec"]
    assert spec["storageClassName"] == "filestore-rwx" and spec["resources"]["requests"]["storage"] == "200Gi"
    assert spec["accessModes"] == ["ReadWriteMany"]
    seen = set()
    for obj, _, pod in workloads(result.docs):
        for volume, mount in shared_mounts(pod):
            assert volume["persistentVolumeClaim"]["claimName"] == "omnirag-shared", ref(obj)
            assert mount.get("subPath") == mount["name"], f"{ref(obj)}: {mount}"
            seen.add(mount["name"])
    assert seen == set(SHARED_VOLUMES)
    assert not validate_manifests(tools, result.docs, tmp_path)

    result = render_with(
        helm_template, tmp_path, {"persistence": {"shared": {"enabled": True, "existingClaim": "nfs-share"}}}
    )
    assert result.returncode == 0, result.stderr
    assert not claims(result.docs)
    names = {
        v["persistentVolumeClaim"]["claimName"]
        for _, _, p in workloads(result.docs)
        for v, _ in shared_mounts(p)
    }
    assert names == {"nfs-share"}


RWO = {"accessModes": ["ReadWriteOnce"]}


def test_single_node_mode_puts_every_pod_of_a_readwriteonce_claim_on_one_node(
    helm_template: Callable[..., Any], tools: Any, tmp_path: Path
) -> None:
    """EBS and PD disks attach to one node: with persistence.singleNode every pod that mounts one of
    the claims carries a label and a required podAffinity to that label on kubernetes.io/hostname.
    The first such pod matches its own term, which the scheduler accepts when no pod matches yet."""
    override = {
        "persistence": {"singleNode": {"enabled": True}, **{v: RWO for v in SHARED_VOLUMES}},
        "gateway": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}
                        ]
                    }
                }
            }
        },
    }
    result = render_with(helm_template, tmp_path, override)
    assert result.returncode == 0, result.stderr
    sharers, others = [], []
    for obj, labels, pod in workloads(result.docs):
        uses_claim = any("persistentVolumeClaim" in v for v, _ in shared_mounts(pod))
        terms = ((pod.get("affinity") or {}).get("podAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        ) or []
        together = [
            t
            for t in terms
            if t.get("topologyKey") == "kubernetes.io/hostname"
            and SINGLE_NODE_LABEL in ((t.get("labelSelector") or {}).get("matchLabels") or {})
        ]
        if uses_claim:
            sharers.append(component_of(obj))
            assert len(together) == 1, f"{ref(obj)} mounts a RWO claim but has no podAffinity to the others"
            assert selector_matches(together[0]["labelSelector"], labels), f"{ref(obj)} does not match itself"
        else:
            others.append(component_of(obj))
            assert not together and SINGLE_NODE_LABEL not in labels, f"{ref(obj)} is tied to the storage node"
    # Each chat model's vLLM is its own component (vllm-<model>).
    sharers = ["vllm" if str(c).startswith("vllm-") else c for c in sharers]
    assert {"gateway", "retriever", "vllm", "embedder", "model-download", "indexer", "indexer-worker"} <= set(
        sharers
    ), sharers
    assert {"ui", "redis"} <= set(others), others
    (gateway,) = of_component(result.docs, "gateway", {"Deployment"})
    affinity = gateway["spec"]["template"]["spec"]["affinity"]
    assert "nodeAffinity" in affinity, "the user's own affinity was dropped"
    assert not validate_manifests(tools, result.docs, tmp_path)
    # Off by default: nobody is tied to a node.
    plain = render_with(helm_template, tmp_path, {})
    assert SINGLE_NODE_LABEL not in plain.stdout


@pytest.mark.parametrize(
    ("override", "named"),
    [
        pytest.param(
            {"persistence": {"uploads": RWO}},
            ["persistence.uploads", "ReadWriteOnce", "persistence.singleNode.enabled", "ReadWriteMany"],
            id="rwo-two-gateways",
        ),
        pytest.param(
            {"persistence": {"index": RWO}, "gateway": {"enabled": False, "externalUrl": "http://gw:8000"}},
            ["persistence.index", "ReadWriteOnce"],
            id="rwo-retriever-autoscaled",
        ),
        pytest.param(
            {"persistence": {"shared": {"enabled": True, **RWO}}},
            ["persistence.shared", "ReadWriteOnce", "persistence.singleNode.enabled"],
            id="rwo-shared-claim",
        ),
        pytest.param(
            {
                "persistence": {
                    "singleNode": {"enabled": True},
                    "models": {"accessModes": ["ReadWriteOncePod"]},
                }
            },
            ["persistence.models", "ReadWriteOncePod"],
            id="rwop-shared-by-pods",
        ),
        pytest.param(
            {"persistence": {"shared": {"enabled": True}, "index": {"existingClaim": "my-index"}}},
            ["persistence.shared", "persistence.index.existingClaim"],
            id="shared-and-own-claim",
        ),
        pytest.param(
            {
                "persistence": {"singleNode": {"enabled": True}},
                "gateway": {
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}},
                        }
                    ]
                },
            },
            ["gateway.topologySpreadConstraints", "persistence.singleNode"],
            id="single-node-but-spread-over-nodes",
        ),
    ],
)
def test_storage_that_cannot_schedule_fails_the_install(
    helm_template: Callable[..., Any], tmp_path: Path, override: dict[str, Any], named: list[str]
) -> None:
    """A combination that leaves pods Pending forever is refused by `helm install`, with the fix named."""
    result = render_with(helm_template, tmp_path, override)
    assert result.returncode != 0, f"accepted {override}"
    missing = [n for n in named if n not in result.stderr]
    assert not missing, f"the error does not name {missing}:\n{result.stderr}"


def test_readwriteonce_is_fine_for_a_volume_only_one_pod_uses(
    helm_template: Callable[..., Any], tmp_path: Path
) -> None:
    """The control of the test above: one retriever and nothing else on the index volume is schedulable."""
    override = {"persistence": {"index": RWO}, "retriever": {"replicas": 1}}
    result = render_with(helm_template, tmp_path, override, base="only-retriever")
    assert result.returncode == 0, result.stderr
    # The same claim under three retrievers is refused, naming who mounts it.
    result = render_with(helm_template, tmp_path, {"persistence": {"index": RWO}}, base="only-retriever")
    assert result.returncode != 0 and "up to 3 pods mount it (retriever)" in result.stderr, result.stderr


# DNS under the NetworkPolicies: NodeLocal DNSCache, and GKE Cloud DNS / Autopilot's resolver on the
# metadata server's link-local address.
NODE_LOCAL_DNS = ipaddress.ip_address("169.254.20.10")


def egress_reaches(docs: Docs, labels: dict[str, str], ip: Any, port: int, protocol: str) -> bool:
    """Whether any egress rule of any NetworkPolicy selecting these pod labels lets ip:port/protocol out."""
    for policy in docs:
        if policy.get("kind") != "NetworkPolicy" or "Egress" not in (policy["spec"].get("policyTypes") or []):
            continue
        if not selector_matches(policy["spec"].get("podSelector"), labels):
            continue
        for rule in policy["spec"].get("egress") or []:
            ports = rule.get("ports") or []
            port_ok = not ports or any(
                (p.get("protocol") or "TCP") == protocol
                and (
                    "port" not in p
                    or str(p["port"]) == str(port)
                    or ("endPort" in p and int(p["port"]) <= port <= int(p["endPort"]))
                )
                for p in ports
            )
            if port_ok and egress_allows(rule, ip):
                return True
    return False


@pytest.mark.parametrize("base", ["default", "gpu-full"])
def test_dns_reaches_node_local_cache_and_link_local_resolver_on_port_53_only(
    helm_template: Callable[..., Any], tools: Any, tmp_path: Path, base: str
) -> None:
    override = {"networkPolicy": {"dns": {"extraAddresses": ["169.254.20.10", "169.254.169.254"]}}}
    result = render_with(helm_template, tmp_path, override, base=base)
    assert result.returncode == 0, result.stderr
    pods = list(workloads(result.docs))
    assert any(o.get("kind") == "Pod" for o, _, _ in pods), "the helm test pod is not rendered"
    problems = []
    for obj, labels, _ in pods:
        for ip in (NODE_LOCAL_DNS, METADATA_IP):
            for protocol in ("UDP", "TCP"):
                if not egress_reaches(result.docs, labels, ip, 53, protocol):
                    problems.append(f"{ref(obj)}: no DNS to {ip}:53/{protocol}")
        for port, protocol in ((80, "TCP"), (443, "TCP"), (8080, "TCP"), (80, "UDP"), (5353, "UDP")):
            if egress_reaches(result.docs, labels, METADATA_IP, port, protocol):
                problems.append(f"{ref(obj)}: the metadata address is open on {port}/{protocol}")
    assert not problems, f"{base}:{fmt(problems)}"
    assert not metadata_leaks(result.docs)
    assert not validate_manifests(tools, result.docs, tmp_path)
    # Off by default: the link-local addresses are not opened at all.
    plain = render_with(helm_template, tmp_path, {}, base=base)
    for obj, labels, _ in workloads(plain.docs):
        assert not egress_reaches(plain.docs, labels, METADATA_IP, 53, "UDP"), ref(obj)


def test_global_keys_of_a_parent_chart_and_the_registry_mirror_reach_every_pod(
    helm_template: Callable[..., Any], tmp_path: Path
) -> None:
    """As a subchart the chart gets the parent's whole `global:`; a mirror and pull secrets reach
    every pod."""
    override = {
        "global": {
            "imageRegistry": "mirror.internal:5000",
            "imagePullSecrets": ["regcred", {"name": "mirror-cred"}],
            "postgresql": {"auth": {"database": "parent"}},
            "parentFlag": True,
        }
    }
    result = render_with(helm_template, tmp_path, override)
    assert result.returncode == 0, result.stderr
    problems = []
    for obj, _, pod in workloads(result.docs):
        for c in containers(pod):
            if not str(c.get("image", "")).startswith("mirror.internal:5000/"):
                problems.append(f"{ref(obj)} {c['name']}: {c.get('image')} is not from the mirror")
        secrets = [s.get("name") for s in pod.get("imagePullSecrets") or []]
        if secrets != ["regcred", "mirror-cred"]:
            problems.append(f"{ref(obj)}: imagePullSecrets {secrets}")
    assert not problems, fmt(problems)


def test_scheduling_fields_reach_every_component(
    helm_template: Callable[..., Any], tools: Any, tmp_path: Path
) -> None:
    """runtimeClassName, priorityClassName, topologySpreadConstraints, nodeSelector, tolerations,
    env and extra volumes: each component's own values land on its own pods."""
    override: dict[str, Any] = {}
    for key, label in COMPONENTS.items():
        override[key] = {
            "runtimeClassName": f"rc-{label}",
            "priorityClassName": f"pc-{label}",
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": label}},
                }
            ],
            "nodeSelector": {"pool": label},
            "tolerations": [{"key": label, "operator": "Exists", "effect": "NoSchedule"}],
            "env": {"OMNIRAG_TEST_COMPONENT": label},
            "extraVolumes": [{"name": f"extra-{label}", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": f"extra-{label}", "mountPath": "/srv/extra"}],
        }
    # Lists replace lists: keep the volume of gpu-full's local knowledge base (the install checks it).
    indexer = yaml.safe_load(CI_FILES["gpu-full"].read_text())["indexer"]  # type: ignore[union-attr]
    for key in ("extraVolumes", "extraVolumeMounts"):
        override["indexer"][key] = indexer[key] + override["indexer"][key]
    result = render_with(helm_template, tmp_path, override)
    assert result.returncode == 0, result.stderr
    problems, seen = [], set()
    for obj, _, pod in workloads(result.docs):
        label = component_of(obj) or ""
        values_key = next((k for k, c in COMPONENTS.items() if belongs(label, c)), None)
        if values_key is None:
            continue
        want = COMPONENTS[values_key]
        seen.add(want)
        if pod.get("runtimeClassName") != f"rc-{want}":
            problems.append(f"{ref(obj)}: runtimeClassName {pod.get('runtimeClassName')}")
        if pod.get("priorityClassName") != f"pc-{want}":
            problems.append(f"{ref(obj)}: priorityClassName {pod.get('priorityClassName')}")
        spread = pod.get("topologySpreadConstraints") or []
        if [s["topologyKey"] for s in spread] != ["topology.kubernetes.io/zone"]:
            problems.append(f"{ref(obj)}: topologySpreadConstraints {spread}")
        if (pod.get("nodeSelector") or {}).get("pool") != want:
            problems.append(f"{ref(obj)}: nodeSelector {pod.get('nodeSelector')}")
        if want not in [t.get("key") for t in pod.get("tolerations") or []]:
            problems.append(f"{ref(obj)}: tolerations {pod.get('tolerations')}")
        if f"extra-{want}" not in [v["name"] for v in pod.get("volumes") or []]:
            problems.append(f"{ref(obj)}: extraVolumes did not arrive")
        for c in containers(pod, init=False):
            env = {e["name"]: e.get("value") for e in c.get("env") or []}
            if env.get("OMNIRAG_TEST_COMPONENT") != want:
                problems.append(f"{ref(obj)} {c['name']}: env did not arrive")
            if "/srv/extra" not in [m["mountPath"] for m in c.get("volumeMounts") or []]:
                problems.append(f"{ref(obj)} {c['name']}: extraVolumeMounts did not arrive")
    assert seen == set(COMPONENTS.values()), f"components without pods: {set(COMPONENTS.values()) - seen}"
    assert not problems, fmt(problems)
    assert not validate_manifests(tools, result.docs, tmp_path)


def test_extra_objects_are_rendered_through_tpl(helm_template: Callable[..., Any], tmp_path: Path) -> None:
    """What the chart cannot foresee (a SecretProviderClass, a PodMonitor, a ConfigMap of the team's)."""
    override = {
        "extraObjects": [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "{{ .Release.Name }}-extra", "labels": {"team": "search"}},
                "data": {"gatewayPort": "{{ .Values.gateway.service.port }}"},
            },
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
            '  name: {{ include "omnirag.fullname" . }}-as-text\n',
        ]
    }
    result = render_with(helm_template, tmp_path, override, base="default")
    assert result.returncode == 0, result.stderr
    maps = {o["metadata"]["name"]: o for o in result.docs if o.get("kind") == "ConfigMap"}
    assert maps["omnirag-extra"]["data"] == {"gatewayPort": "8000"}
    assert "omnirag-as-text" in maps
    plain = render_with(helm_template, tmp_path, {}, base="default")
    assert "omnirag-extra" not in plain.stdout


# ---- what the Ingresses and HTTPRoutes let in ---------------------------------------------------------

PRIVATE_PATHS = ["/metrics", "/readyz", "/healthz", "/metrics/", "/readyz/x", "/healthz?full=1"]
API_PATHS = ["/v1/chat/completions", "/v1/models", "/v1"]
UI_PATHS = ["/", "/gradio_api/queue/join", "/assets/index.js", "/auth/login"]


def prefix_matches(prefix: str, path: str) -> bool:
    """Ingress Prefix / Gateway API PathPrefix: a match by whole path elements (/v1 is not /v1x)."""
    path = path.split("?", 1)[0]
    prefix = prefix.rstrip("/")
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def ingress_backend(ingress: dict[str, Any], host: str, path: str) -> str | None:
    """The Service an Ingress sends host+path to: the longest matching path, Exact before Prefix at equal
    length (the Ingress API's rule); None when no path matches."""
    best: tuple[int, int, str] | None = None
    for rule in ingress["spec"].get("rules") or []:
        if rule.get("host") not in (None, host):
            continue
        for p in (rule.get("http") or {}).get("paths") or []:
            kind, value = p.get("pathType"), p["path"]
            bare = path.split("?", 1)[0]
            if kind == "Exact":
                hit = bare == value
            elif kind == "Prefix":
                hit = prefix_matches(value, path)
            else:
                pytest.fail(f"{ref(ingress)}: pathType {kind!r} has no defined matching: use Prefix or Exact")
            if hit:
                key = (len(value.rstrip("/")), int(kind == "Exact"), p["backend"]["service"]["name"])
                best = key if best is None or key[:2] > best[:2] else best
    return None if best is None else best[2]


def route_backends(route: dict[str, Any], path: str) -> list[str] | None:
    """The Services an HTTPRoute forwards path to (longest PathPrefix first); [] = a rule without
    backends (the Gateway answers 404); None = no rule matches."""
    best: tuple[int, list[str]] | None = None
    for rule in route["spec"].get("rules") or []:
        for match in rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]:
            p = match.get("path") or {"type": "PathPrefix", "value": "/"}
            assert p.get("type") == "PathPrefix", f"{ref(route)}: path match {p}: only PathPrefix is modelled"
            if prefix_matches(p["value"], path) and (best is None or len(p["value"].rstrip("/")) > best[0]):
                best = (len(p["value"].rstrip("/")), [b["name"] for b in rule.get("backendRefs") or []])
    return None if best is None else best[1]


def routes_render(helm_template: Callable[..., Any], tmp_path: Path) -> Docs:
    """values.yaml with both the Ingresses and the HTTPRoutes on."""
    override = {"ingress": {"enabled": True}, "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}}
    result = render_with(helm_template, tmp_path, override, base="default")
    assert result.returncode == 0, result.stderr
    return list(result.docs)


@pytest.mark.parametrize("source", ["default+routes", "gpu-full"])
def test_routes_never_reach_metrics_or_probes(
    helm_template: Callable[..., Any], rendered: Renderer, tmp_path: Path, source: str
) -> None:
    """From outside, /metrics, /readyz and /healthz reach no pod; the API (/v1) and the UI do."""
    docs = routes_render(helm_template, tmp_path) if source == "default+routes" else rendered(source)
    services = {o["metadata"]["name"]: o for o in docs if o.get("kind") == "Service"}
    ingresses = {component_of(o): o for o in docs if o.get("kind") == "Ingress"}
    routes = {component_of(o): o for o in docs if o.get("kind") == "HTTPRoute"}
    assert set(ingresses) == {"ui", "gateway"} and set(routes) == {"ui", "gateway"}, (ingresses, routes)
    own = {"ui": f"{RELEASE}-ui", "gateway": f"{RELEASE}-gateway"}
    public = {"ui": UI_PATHS, "gateway": API_PATHS}
    problems: list[str] = []

    def reaches_pods(name: str | None) -> bool:
        svc = services.get(name or "")
        return bool(svc and svc["spec"].get("selector"))

    for component, ing in ingresses.items():
        host = ing["spec"]["rules"][0]["host"]
        for path in PRIVATE_PATHS:
            to = ingress_backend(ing, host, path)
            if to is not None and (to not in services or reaches_pods(to)):
                problems.append(f"Ingress {component}: {path} goes to {to}")
        for path in public[component]:
            if ingress_backend(ing, host, path) != own[component]:
                problems.append(f"Ingress {component}: {path} does not reach {own[component]}")
    # The API's Ingress carries the API only: no docs page, no root.
    if ingress_backend(ingresses["gateway"], ingresses["gateway"]["spec"]["rules"][0]["host"], "/docs"):
        problems.append("Ingress gateway: /docs is routed")

    for component, route in routes.items():
        where = f"HTTPRoute {component}"
        if route.get("apiVersion") != CRD_KINDS["HTTPRoute"]:
            problems.append(f"{where}: apiVersion {route.get('apiVersion')}")
        spec = route["spec"]
        unknown = set(spec) - {"parentRefs", "hostnames", "rules"}
        if unknown:
            problems.append(f"{where}: unknown spec fields {sorted(unknown)}")
        if not spec.get("parentRefs") or not all(p.get("name") for p in spec["parentRefs"]):
            problems.append(f"{where}: parentRefs {spec.get('parentRefs')}")
        if not spec.get("hostnames") or not all(re.fullmatch(r"[a-z0-9.*-]+", h) for h in spec["hostnames"]):
            problems.append(f"{where}: hostnames {spec.get('hostnames')}")
        for rule in spec.get("rules") or []:
            unknown = set(rule) - {"matches", "backendRefs", "filters", "timeouts", "name"}
            if unknown:
                problems.append(f"{where}: unknown rule fields {sorted(unknown)}")
            for b in rule.get("backendRefs") or []:
                ports = [
                    p["port"] for p in (services.get(b["name"]) or {"spec": {}})["spec"].get("ports") or []
                ]
                if b.get("port") not in ports:
                    problems.append(f"{where}: backend {b} is no port of a rendered Service ({ports})")
        for path in PRIVATE_PATHS:
            if route_backends(route, path) not in (None, []):
                problems.append(f"{where}: {path} goes to {route_backends(route, path)}")
        for path in public[component]:
            if route_backends(route, path) != [own[component]]:
                problems.append(f"{where}: {path} goes to {route_backends(route, path)}")
    assert not problems, f"{source}:{fmt(problems)}"


def test_an_http_route_without_a_gateway_to_attach_to_fails_the_install(
    helm_template: Callable[..., Any], tmp_path: Path
) -> None:
    result = render_with(helm_template, tmp_path, {"httpRoute": {"enabled": True}}, base="default")
    assert result.returncode != 0
    assert "parentRefs" in result.stderr, result.stderr


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


@pytest.mark.parametrize("ci", ["default", "gpu-full"])
def test_streamed_answers_outlive_load_balancer_idle_timeouts(
    rendered: Renderer, helm_template: Callable[..., Any], tmp_path: Path, ci: str
) -> None:
    """The gateway sends SSE keep-alive comments well inside a 30 s idle timeout; the nginx Ingress
    keeps its long read timeout; the value reaches the gateway's setting."""
    from omnirag.gateway.config import GatewaySettings

    docs = rendered(ci)
    (gw,) = of_component(docs, "gateway", {"Deployment"})
    env = env_of(gw["spec"]["template"]["spec"]["containers"][0])
    assert "GATEWAY_SSE_KEEPALIVE_SECONDS" in env, sorted(env)
    seconds = GatewaySettings(
        sse_keepalive_seconds=env["GATEWAY_SSE_KEEPALIVE_SECONDS"]
    ).sse_keepalive_seconds
    assert 0 < seconds < 30, f"{ci}: keep-alive every {seconds} s does not beat a 30 s idle timeout"
    for ing in (o for o in docs if o.get("kind") == "Ingress"):
        timeout = (ing["metadata"].get("annotations") or {}).get(
            "nginx.ingress.kubernetes.io/proxy-read-timeout"
        )
        assert timeout is not None and int(timeout) >= 60, f"{ref(ing)}: proxy-read-timeout {timeout}"
    result = render_with(helm_template, tmp_path, {"gateway": {"sseKeepAliveSeconds": 5}}, base=ci)
    assert result.returncode == 0, result.stderr
    (gw,) = of_component(result.docs, "gateway", {"Deployment"})
    assert env_of(gw["spec"]["template"]["spec"]["containers"][0])["GATEWAY_SSE_KEEPALIVE_SECONDS"] == "5"


# ---- Redis: a patched release, a password by default, an exporter ---------------------------------

# The first release of each line with the 2025 Lua RCE fixes (CVE-2025-49844 "RediShell",
# CVE-2025-46817/46818/46819) and the 2026 TLS use-after-free (CVE-2026-81934), whichever is later.
# A line that is not listed got neither (8.0 is out of support): refused.
REDIS_PATCHED = {
    (7, 2): (7, 2, 16),
    (7, 4): (7, 4, 11),
    (8, 2): (8, 2, 9),
    (8, 4): (8, 4, 6),
    (8, 6): (8, 6, 6),
    (8, 8): (8, 8, 2),
    (8, 10): (8, 10, 1),
}


def redis_version(image: str) -> tuple[int, int, int]:
    tag = image.rsplit(":", 1)[-1]
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(-[a-z0-9.]+)?", tag)
    assert match, f"the Redis image tag {tag!r} names no exact x.y.z release"
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def redis_pod(docs: Docs) -> tuple[dict[str, Any], dict[str, Any]]:
    found = [(o, pod) for o, _, pod in workloads(docs) if component_of(o) == "redis"]
    assert len(found) == 1, [ref(o) for o, _ in found]
    return found[0]


def test_redis_version_check_refuses_unpatched_releases() -> None:
    """The check itself: the chart's previous tag and the last unpatched releases fail it."""
    for tag in ("7.4.2-alpine", "7.4.5", "8.2.1-alpine", "8.0.4", "6.2.20", "8.10.0-bookworm"):
        version = redis_version(f"redis:{tag}")
        assert REDIS_PATCHED.get(version[:2], (99, 0, 0)) > version, tag


@pytest.mark.parametrize("ci", [c for c in CI_SETS if c not in {"external-redis", "only-retriever"}])
def test_redis_image_has_the_rce_fixes(rendered: Renderer, ci: str) -> None:
    _, pod = redis_pod(rendered(ci))
    (redis,) = [c for c in pod["containers"] if c["name"] == "redis"]
    version = redis_version(redis["image"])
    floor = REDIS_PATCHED.get(version[:2])
    assert floor is not None, f"{ci}: Redis {version} is a line without the 2025/2026 RCE fixes"
    assert version >= floor, f"{ci}: Redis {version} is older than the patched {floor}"


def test_default_install_has_redis_auth_with_a_generated_secret(
    rendered: Renderer, helm_template: Callable[..., Any], tmp_path: Path
) -> None:
    import base64

    docs = rendered("default")
    secrets = {o["metadata"]["name"]: o for o in docs if o.get("kind") == "Secret"}
    name = f"{RELEASE}-redis-auth"
    assert name in secrets, f"no generated Redis password Secret; Secrets: {sorted(secrets)}"
    password = base64.b64decode(secrets[name]["data"]["redis-password"]).decode()
    assert len(password) >= 32 and password.isalnum(), "the generated password is short or not alphanumeric"
    # Kept across upgrades: the template reads the Secret back before generating one.
    source = (CHART / "templates" / "redis-statefulset.yaml").read_text()
    assert re.search(r'lookup "v1" "Secret" \$\.Release\.Namespace', source)

    _, pod = redis_pod(docs)
    (redis,) = [c for c in pod["containers"] if c["name"] == "redis"]
    assert "requirepass" in script_text(redis) and password not in json.dumps(pod)
    auth = {v["name"]: v for v in pod["volumes"]}["auth"]["secret"]
    assert auth["secretName"] == name
    # Every Redis client gets the password as a file from that Secret.
    for component in ("gateway", "indexer-worker"):
        for obj, _, spec in workloads(of_component(docs, component)):
            env = {e["name"]: e.get("value") for c in containers(spec) for e in c.get("env") or []}
            assert any(k.endswith("REDIS_PASSWORD_FILE") for k in env), f"{ref(obj)}: no Redis password file"
            names = {(v.get("secret") or {}).get("secretName") for v in spec.get("volumes") or []}
            assert name in names, f"{ref(obj)}: the password Secret is not mounted"

    # An existing Secret replaces the generated one.
    result = render_with(
        helm_template, tmp_path, {"redis": {"auth": {"existingSecret": "mine"}}}, base="default"
    )
    assert result.returncode == 0, result.stderr
    assert name not in {o["metadata"]["name"] for o in result.docs if o.get("kind") == "Secret"}
    _, pod = redis_pod(result.docs)
    assert {v["name"]: v for v in pod["volumes"]}["auth"]["secret"]["secretName"] == "mine"


@pytest.mark.parametrize(
    ("override", "on"),
    [
        ({}, False),
        ({"metrics": {"serviceMonitor": {"enabled": True}}}, True),
        ({"metrics": {"serviceMonitor": {"enabled": True}}, "redis": {"metrics": {"enabled": False}}}, False),
        ({"redis": {"metrics": {"enabled": True}}}, True),
    ],
    ids=["default", "with-servicemonitor", "forced-off", "forced-on"],
)
def test_redis_exporter_sidecar_is_scraped_through_its_own_port(
    helm_template: Callable[..., Any], tmp_path: Path, override: dict[str, Any], on: bool
) -> None:
    result = render_with(helm_template, tmp_path, override, base="default")
    assert result.returncode == 0, result.stderr
    docs = result.docs
    _, pod = redis_pod(docs)
    exporters = [c for c in pod["containers"] if "redis_exporter" in c["image"]]
    (service,) = [
        o for o in docs if o.get("kind") == "Service" and o["metadata"]["name"] == f"{RELEASE}-redis"
    ]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    monitors = [o for o in docs if o.get("kind") == "ServiceMonitor" and component_of(o) == "redis"]
    if not on:
        assert not exporters and "metrics" not in ports and not monitors
        return
    (exporter,) = exporters
    assert image_problem(exporter["image"]) is None
    assert {p["containerPort"] for p in exporter["ports"]} == {9121}
    assert ports["metrics"]["targetPort"] == "metrics"
    # The password reaches it as a file, never in its env or argv.
    assert "--redis.password-file" in script_text(exporter)
    assert not [e for e in exporter.get("env") or [] if SECRETISH_ENV.search(e["name"])]
    mounts = {m["name"]: m for m in exporter["volumeMounts"]}
    assert mounts["auth"]["readOnly"] is True
    policy = next(o for o in docs if o.get("kind") == "NetworkPolicy" and component_of(o) == "redis")
    opened = {p.get("port") for rule in policy["spec"]["ingress"] for p in rule.get("ports") or []}
    assert 9121 in opened, f"the NetworkPolicy does not let Prometheus reach 9121: {opened}"
    if override.get("metrics", {}).get("serviceMonitor", {}).get("enabled"):
        (monitor,) = monitors
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_the_upload_worker_is_scraped_through_its_metrics_port(
    helm_template: Callable[..., Any], tmp_path: Path
) -> None:
    """The worker serves only /metrics: on the port its env names, named http, behind a Service
    that its ServiceMonitor selects, opened to Prometheus by the indexer's NetworkPolicy."""
    override = {"metrics": {"serviceMonitor": {"enabled": True}}, "networkPolicy": {"enabled": True}}
    result = render_with(helm_template, tmp_path, override, base="default")
    assert result.returncode == 0, result.stderr
    docs = result.docs
    (deployment,) = of_component(docs, "indexer-worker", {"Deployment"})
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["INDEXER_METRICS_PORT"] == "8003" and env["INDEXER_METRICS_HOST"] == "0.0.0.0"
    assert [(p["name"], p["containerPort"]) for p in worker["ports"]] == [("http", 8003)]
    (service,) = [o for o in docs if o.get("kind") == "Service" and component_of(o) == "indexer-worker"]
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", "http")]
    (monitor,) = [
        o for o in docs if o.get("kind") == "ServiceMonitor" and component_of(o) == "indexer-worker"
    ]
    assert selector_matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    policy = next(o for o in docs if o.get("kind") == "NetworkPolicy" and component_of(o) == "indexer")
    opened = {p.get("port") for rule in policy["spec"]["ingress"] for p in rule.get("ports") or []}
    assert opened == {8003}, f"the indexer's NetworkPolicy opens {opened}, want only Prometheus on 8003"
