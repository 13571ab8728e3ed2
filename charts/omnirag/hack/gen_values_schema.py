"""Write charts/omnirag/values.schema.json, or check that the committed file is what it would write.

The chart's values schema is generated so that its `knowledgeBases` part stays byte-for-byte the
indexer's own schema (jobs/indexer/src/omnirag/indexer/schema/knowledge-bases.schema.json): its
`properties.knowledgeBases` and every entry of its `$defs` are copied in unchanged. Run it after
changing either that schema or the chart's values:

    python charts/omnirag/hack/gen_values_schema.py

`--check` writes nothing: it exits 1 with a diff when the committed file differs from what this
would write (tests/chart runs it, so `make test` fails on a schema that drifted).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

CHART = Path(__file__).resolve().parent.parent
REPO = CHART.parent.parent
KB_SCHEMA = REPO / "jobs/indexer/src/omnirag/indexer/schema/knowledge-bases.schema.json"
SCHEMA = CHART / "values.schema.json"
# A drift report stops after this many diff lines: its head shows what drifted, regenerating fixes all.
MAX_DIFF_LINES = 400

J = dict[str, Any]


def ref(name: str) -> J:
    return {"$ref": f"#/$defs/{name}"}


def obj(props: J, required: list[str] | None = None, description: str | None = None) -> J:
    out: J = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    if description:
        out["description"] = description
    return out


def string(description: str | None = None, **kw: Any) -> J:
    out: J = {"type": "string", **kw}
    if description:
        out["description"] = description
    return out


def integer(minimum: int | None = None, maximum: int | None = None, **kw: Any) -> J:
    out: J = {"type": "integer", **kw}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


BOOL: J = {"type": "boolean"}
STRING_MAP: J = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_LIST: J = {"type": "array", "items": {"type": "object"}}
SECRET_NAME = string(
    "Name of an existing Secret ('' = none / the chart's default name).",
    pattern=r"^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    maxLength=253,
)
SECRET_KEY = string("Key inside the Secret.", pattern=r"^[-._a-zA-Z0-9]+$", maxLength=253)
URL_OR_EMPTY = string(pattern=r"^$|^https?://[^\s]+$")
DURATION = string(pattern=r"^[0-9]+(ms|s|m|h)$")
# What a model-download spec says (an entry of modelDownload.models; a chat model's `source`).
DOWNLOAD_SPEC: dict[str, J] = {
    "source": {"enum": ["huggingface", "modelscope"]},
    "repo": string(
        "owner/name on the hub.",
        pattern=r"^([A-Za-z0-9][A-Za-z0-9._\-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._\-]{0,95}$",
    ),
    "revision": string("Branch, tag or commit.", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._/\-]{0,254}$"),
    "allowPatterns": {"type": "array", "maxItems": 64, "items": string(minLength=1, maxLength=256)},
    "ignorePatterns": {"type": "array", "maxItems": 64, "items": string(minLength=1, maxLength=256)},
    "endpoint": URL_OR_EMPTY,
}
# Kubernetes' resource.Quantity syntax, or a plain number.
QUANTITY: J = {
    "anyOf": [
        {
            "type": "string",
            "pattern": r"^[+]?[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][0-9]+)?$",
        },
        {"type": "number", "minimum": 0},
    ]
}
QUANTITY_OR_NULL: J = {"anyOf": [QUANTITY, {"type": "null"}]}
INT_OR_PERCENT: J = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^[0-9]+%$"},
        {"type": "null"},
    ]
}
# One rule for the tag of the chart's images and of the helm test's: '' means the appVersion.
IMAGE_TAG: J = {
    "type": "string",
    "description": "Image tag ('' = the chart's appVersion). Never latest.",
    "pattern": r"^$|^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$",
    "not": {"pattern": r"^[Ll][Aa][Tt][Ee][Ss][Tt]$"},
}
# A host name of an Ingress rule or an HTTPRoute (a wildcard first label allowed).
HOSTNAME = string(pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A chat model's name (also in object names): lower case, digits, "." and "-".
MODEL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9.\-]{0,38}[a-z0-9])?$"


def chart_defs() -> J:
    resource_list: J = {
        "type": "object",
        "propertyNames": {"pattern": r"^[a-z0-9.\-/]+$"},
        "additionalProperties": QUANTITY,
    }
    return {
        "chartImage": obj(
            {
                "registry": string(
                    "Image registry ('' = none).", pattern=r"^$|^[a-zA-Z0-9.\-]+(:[0-9]+)?(/[a-z0-9._\-]+)*$"
                ),
                "repository": string(
                    "Image repository.", minLength=1, pattern=r"^[a-z0-9]+([._\-/][a-z0-9]+)*$"
                ),
                "tag": IMAGE_TAG,
                "digest": string("Image digest.", pattern=r"^$|^sha256:[a-f0-9]{64}$"),
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            },
            required=["repository", "tag", "pullPolicy"],
        ),
        # Third-party images (vLLM, Redis) carry their own version: the chart's appVersion means
        # nothing to them, so their tag may not be left empty.
        "chartImagePinned": {
            "allOf": [
                ref("chartImage"),
                {"properties": {"tag": {"minLength": 1, "description": "The image's own version."}}},
            ]
        },
        "chartResources": obj(
            {
                "requests": {**resource_list, "required": ["cpu", "memory"]},
                "limits": {**resource_list, "required": ["memory"]},
                "claims": OBJECT_LIST,
            },
            required=["requests", "limits"],
            description="Container resources; requests (cpu, memory) and a memory limit are required.",
        ),
        "chartProbe": obj(
            {
                "enabled": BOOL,
                "initialDelaySeconds": integer(0),
                "periodSeconds": integer(1),
                "timeoutSeconds": integer(1),
                "failureThreshold": integer(1),
                "successThreshold": integer(1),
            },
            required=[
                "enabled",
                "initialDelaySeconds",
                "periodSeconds",
                "timeoutSeconds",
                "failureThreshold",
                "successThreshold",
            ],
        ),
        "chartEnv": {
            "type": "object",
            "description": "Plain environment variables, NAME: value.",
            "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        },
        "chartEnvVars": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}},
            },
        },
        "chartVolumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "chartVolumeMounts": {
            "type": "array",
            "items": {"type": "object", "required": ["name", "mountPath"]},
        },
        "chartSeccompProfile": obj(
            {"type": {"enum": ["RuntimeDefault", "Localhost"]}, "localhostProfile": {"type": "string"}},
            required=["type"],
        ),
        # Pod Security Standard "restricted": these can be tightened, never loosened.
        "chartPodSecurityContext": obj(
            {
                "runAsNonRoot": {"const": True},
                "runAsUser": integer(1),
                "runAsGroup": integer(0),
                "fsGroup": integer(0),
                "fsGroupChangePolicy": {"enum": ["OnRootMismatch", "Always"]},
                "supplementalGroups": {"type": "array", "items": integer(0)},
                "seccompProfile": ref("chartSeccompProfile"),
            }
        ),
        "chartContainerSecurityContext": obj(
            {
                "runAsNonRoot": {"const": True},
                "runAsUser": integer(1),
                "runAsGroup": integer(0),
                "allowPrivilegeEscalation": {"const": False},
                "privileged": {"const": False},
                "readOnlyRootFilesystem": {"const": True},
                "capabilities": obj(
                    {
                        "drop": {"type": "array", "contains": {"const": "ALL"}, "items": {"type": "string"}},
                        "add": {"type": "array", "items": {"enum": ["NET_BIND_SERVICE"]}},
                    },
                    required=["drop"],
                ),
                "seccompProfile": ref("chartSeccompProfile"),
            }
        ),
        "chartAutoscaling": obj(
            {
                "enabled": BOOL,
                "minReplicas": integer(1),
                "maxReplicas": integer(1),
                "targetCPUUtilizationPercentage": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": 1000,
                },
                "targetMemoryUtilizationPercentage": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": 1000,
                },
                "extraMetrics": OBJECT_LIST,
                "behavior": {"type": "object"},
            },
            required=["enabled", "minReplicas", "maxReplicas"],
        ),
        "chartPdb": obj(
            {"enabled": BOOL, "minAvailable": INT_OR_PERCENT, "maxUnavailable": INT_OR_PERCENT},
            required=["enabled"],
        ),
        "chartService": obj(
            {
                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "port": integer(1, 65535),
                "annotations": STRING_MAP,
            },
            required=["type", "port"],
        ),
        "chartNetworkPolicyExtra": obj({"extraIngress": OBJECT_LIST, "extraEgress": OBJECT_LIST}),
        "chartPersistentVolume": obj(
            {
                "enabled": BOOL,
                "existingClaim": string(pattern=r"^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
                "storageClass": {"type": "string"},
                "accessModes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]},
                },
                "size": QUANTITY,
                "keep": BOOL,
                "annotations": STRING_MAP,
            },
            required=["enabled", "accessModes", "size"],
        ),
        "chartSelector": {
            "type": ["object", "null"],
            "properties": {"matchLabels": STRING_MAP, "matchExpressions": OBJECT_LIST},
            "additionalProperties": False,
        },
    }


def scheduling() -> J:
    """Fields every pod-running component has."""
    return {
        "nodeSelector": STRING_MAP,
        "tolerations": OBJECT_LIST,
        "affinity": {"type": "object"},
        "priorityClassName": {"type": "string"},
        "runtimeClassName": string(pattern=r"^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", maxLength=253),
        "topologySpreadConstraints": OBJECT_LIST,
        "podAnnotations": STRING_MAP,
        "podLabels": STRING_MAP,
        "podSecurityContext": ref("chartPodSecurityContext"),
        "containerSecurityContext": ref("chartContainerSecurityContext"),
        "env": ref("chartEnv"),
        "extraEnvVars": ref("chartEnvVars"),
        "extraVolumes": ref("chartVolumes"),
        "extraVolumeMounts": ref("chartVolumeMounts"),
    }


def probes() -> J:
    return {
        "startupProbe": ref("chartProbe"),
        "livenessProbe": ref("chartProbe"),
        "readinessProbe": ref("chartProbe"),
    }


COMMON_REQUIRED = ["enabled", "image", "resources", "startupProbe", "livenessProbe", "readinessProbe"]


def http_service(
    extra: J, service: J | None = None, autoscaling: bool = True, external_url: bool = True
) -> J:
    """An omnirag HTTP service's values: `extra` are its own keys, `service` replaces chartService."""
    props: J = {
        "enabled": BOOL,
        "image": ref("chartImage"),
        "replicas": integer(0),
        "resources": ref("chartResources"),
        **probes(),
        **({"externalUrl": URL_OR_EMPTY} if external_url else {}),
        "terminationGracePeriodSeconds": integer(0),
        "tmpSizeLimit": QUANTITY_OR_NULL,
        "service": service or ref("chartService"),
        "pdb": ref("chartPdb"),
        "networkPolicy": ref("chartNetworkPolicyExtra"),
        **scheduling(),
        **extra,
    }
    if autoscaling:
        props["autoscaling"] = ref("chartAutoscaling")
    return obj(props, required=[*COMMON_REQUIRED, "replicas", "service"])


def ui_auth() -> J:
    """The UI's login: OpenID Connect, or one local user, and the key of its login cookie."""
    secret = obj(
        {"existingSecret": SECRET_NAME, "existingSecretKey": SECRET_KEY}, required=["existingSecretKey"]
    )
    claim = string(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    return obj(
        {
            "mode": {"enum": ["auto", "oidc", "local", "none"]},
            "publicUrl": URL_OR_EMPTY,
            "oidc": obj(
                {
                    "enabled": BOOL,
                    "issuer": URL_OR_EMPTY,
                    "discoveryUrl": URL_OR_EMPTY,
                    "clientId": string(maxLength=256),
                    "scopes": string(pattern=r"^[!#-\[\]-~]+( [!#-\[\]-~]+)*$", maxLength=1024),
                    "userClaim": claim,
                    "groupsClaim": claim,
                    "allowedGroups": {"type": "array", "items": string(minLength=1, maxLength=256)},
                    "allowedEmails": {"type": "array", "items": string(pattern=r"^[^@\s]*@[^@\s]+$")},
                    "existingSecret": SECRET_NAME,
                    "existingSecretKey": SECRET_KEY,
                },
                required=["enabled", "existingSecretKey"],
            ),
            "local": secret,
            "session": obj(
                {
                    "existingSecret": SECRET_NAME,
                    "existingSecretKey": SECRET_KEY,
                    "maxAgeSeconds": integer(60, 30 * 86400),
                },
                required=["existingSecretKey", "maxAgeSeconds"],
            ),
        },
        required=["mode", "oidc", "local", "session"],
    )


# The components, one top-level values key each (in the schema's order).


def gateway() -> J:
    return http_service(
        {
            "auth": obj(
                {"enabled": BOOL, "existingSecret": SECRET_NAME, "existingSecretKey": SECRET_KEY},
                required=["enabled", "existingSecretKey"],
            ),
            # GATEWAY_SSE_KEEPALIVE_SECONDS: 0 = off; at most an hour, as the setting.
            "sseKeepAliveSeconds": {"type": "number", "minimum": 0, "maximum": 3600},
            "defaultModel": string(pattern="^$|" + MODEL_NAME_PATTERN),
            "rewriteModel": string(pattern="^$|" + MODEL_NAME_PATTERN),
        }
    )


def embedder() -> J:
    return http_service(
        {
            "model": obj(
                {
                    "name": string(
                        "Entry of modelDownload.models ('' = the packaged model).",
                        pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$",
                    ),
                    "servedName": {"type": "string"},
                }
            ),
            "maxQueueInputs": integer(1),
        }
    )


def retriever() -> J:
    return http_service({"faissGpu": BOOL})


def ui() -> J:
    return http_service(
        {
            "apiKey": obj(
                {"existingSecret": SECRET_NAME, "existingSecretKey": SECRET_KEY},
                required=["existingSecretKey"],
            ),
            "auth": ui_auth(),
        },
        service=obj(
            {
                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "port": integer(1, 65535),
                "annotations": STRING_MAP,
                "sessionAffinity": BOOL,
            },
            required=["type", "port"],
        ),
        autoscaling=False,
        external_url=False,  # nothing calls the UI
    )


def indexer(kb: J) -> J:
    """The indexer's values; its default schedule obeys the indexer schema's `schedule`."""
    return obj(
        {
            "enabled": BOOL,
            "image": ref("chartImage"),
            "resources": ref("chartResources"),
            "defaultSchedule": kb["$defs"]["knowledgeBase"]["properties"]["schedule"] | {"type": "string"},
            "timeZone": {"type": "string"},
            "suspend": BOOL,
            "startingDeadlineSeconds": {"type": ["integer", "null"], "minimum": 10},
            "successfulJobsHistoryLimit": integer(0),
            "failedJobsHistoryLimit": integer(0),
            "backoffLimit": integer(0),
            "activeDeadlineSeconds": integer(1),
            "waitEmbedderSeconds": integer(0),
            "initialRun": obj(
                {
                    "enabled": BOOL,
                    "waitEmbedderSeconds": integer(0),
                    "ttlSecondsAfterFinished": {"type": ["integer", "null"], "minimum": 0},
                },
                required=["enabled", "waitEmbedderSeconds"],
            ),
            "tmpSizeLimit": QUANTITY_OR_NULL,
            "worker": obj(
                {
                    "enabled": BOOL,
                    "replicas": integer(0),
                    "resources": ref("chartResources"),
                    **probes(),
                    "terminationGracePeriodSeconds": integer(0),
                    "pdb": ref("chartPdb"),
                },
                required=[
                    "enabled",
                    "replicas",
                    "resources",
                    "startupProbe",
                    "livenessProbe",
                    "readinessProbe",
                ],
            ),
            "networkPolicy": obj(
                {"allowInternet": BOOL, "extraIngress": OBJECT_LIST, "extraEgress": OBJECT_LIST}
            ),
            **scheduling(),
        },
        required=["enabled", "image", "resources", "worker"],
    )


def vllm_serve() -> J:
    """The flags of `vllm serve`: vllm.serve (the defaults), and each chat model's `vllm:` over it."""
    return {
        "maxModelLen": {
            "anyOf": [
                {"type": "integer", "minimum": 16},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?[kKmMgG]?$"},
            ]
        },
        "dtype": {"enum": ["auto", "bfloat16", "float16", "half", "float", "float32"]},
        "gpuMemoryUtilization": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "tensorParallelSize": {"type": ["integer", "null"], "minimum": 1},
        "toolCalling": obj({"enabled": BOOL, "parser": string(minLength=1)}, required=["enabled", "parser"]),
        "reasoningParser": string(
            "--reasoning-parser ('' = none).", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_\-]*$"
        ),
        # --limit-mm-per-prompt: a count per modality, bounded (vLLM's default is 999 each).
        "limitMmPerPrompt": {
            "type": "object",
            "propertyNames": {"enum": ["image", "video", "audio"]},
            "additionalProperties": integer(0, 64),
        },
        "extraArgs": {"type": "array", "items": {"type": ["string", "number", "boolean"]}},
    }


def vllm_gpu() -> J:
    return {
        "count": integer(1, 16),
        "resourceName": string(pattern=r"^[a-z0-9.\-]+/[a-z0-9.\-]+$"),
        "memory": {"anyOf": [QUANTITY, {"type": "null"}, {"const": ""}]},
    }


def vllm_shared() -> J:
    """The keys of `vllm:` that are every served model's defaults."""
    return {
        "image": ref("chartImagePinned"),
        "replicas": integer(0),
        "resources": ref("chartResources"),
        "gpu": obj(vllm_gpu(), required=["count", "resourceName"]),
        "serve": obj(
            vllm_serve(),
            required=["maxModelLen", "dtype", "gpuMemoryUtilization", "toolCalling", "reasoningParser"],
        ),
        "autoscaling": ref("chartAutoscaling"),
        "apiKey": obj({"existingSecret": SECRET_NAME, "existingSecretKey": SECRET_KEY}),
        "waitForModel": BOOL,
        "shmSizeLimit": QUANTITY_OR_NULL,
        "tmpSizeLimit": QUANTITY_OR_NULL,
        **probes(),
        "terminationGracePeriodSeconds": integer(0),
        "service": ref("chartService"),
        "pdb": ref("chartPdb"),
        "networkPolicy": ref("chartNetworkPolicyExtra"),
        **scheduling(),
    }


def vllm() -> J:
    return obj(
        vllm_shared(),
        required=[
            "image",
            "resources",
            "startupProbe",
            "livenessProbe",
            "readinessProbe",
            "replicas",
            "gpu",
            "serve",
        ],
    )


def models() -> J:
    """`models`: each chat model is served here (source or modelPath) or elsewhere (external)."""
    shared = vllm_shared()
    download_source = obj(
        DOWNLOAD_SPEC,
        required=["source", "repo"],
        description="What the model's download Job fetches (the format of an entry of modelDownload.models).",
    )
    capability = {"enum": ["text", "vision", "audio", "video", "tools", "reasoning"]}
    overridable = {
        k: shared[k]
        for k in (
            "replicas",
            "resources",
            "autoscaling",
            "pdb",
            "startupProbe",
            "livenessProbe",
            "readinessProbe",
            "nodeSelector",
            "tolerations",
            "affinity",
            "topologySpreadConstraints",
            "priorityClassName",
            "runtimeClassName",
            "podAnnotations",
            "podLabels",
            "env",
            "extraEnvVars",
            "extraVolumes",
            "extraVolumeMounts",
        )
    }
    chat_model = obj(
        {
            # Lower case, digits, "." and "-": it also names the model's objects ("." as "-").
            "name": string(
                "What clients ask for (the request's model); names the model's objects.",
                pattern=MODEL_NAME_PATTERN,
            ),
            "default": BOOL,
            "capabilities": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "contains": {"const": "text"},
                "items": capability,
            },
            "servedModelName": string(pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._:/\-]{0,127}$"),
            "thinkingOff": {"type": ["object", "null"]},
            "reasoningBudget": integer(0, 65536),
            "answerTokens": integer(16, 65536),
            "contextTokens": integer(256, 10_000_000),
            "sampling": {"type": "object", "maxProperties": 32},
            "languages": {"type": "array", "maxItems": 64, "items": string(pattern=r"^[a-z]{2}$")},
            "maxTokensParam": {"enum": ["max_tokens", "max_completion_tokens"]},
            "source": download_source,
            "modelPath": string("Absolute path to serve instead of a download.", pattern=r"^/"),
            "vllm": obj(vllm_serve()),
            "gpu": obj(vllm_gpu()),
            **overridable,
            "external": obj(
                {
                    "baseUrl": string(pattern=r"^https?://[^\s]+$"),
                    "model": string(minLength=1, maxLength=256),
                    "existingSecret": SECRET_NAME,
                    "existingSecretKey": SECRET_KEY,
                    "networkPolicyPeers": OBJECT_LIST,
                },
                required=["baseUrl", "model"],
            ),
        },
        required=["name", "capabilities"],
    )
    return {"type": "array", "maxItems": 16, "items": chat_model}


def model_download() -> J:
    model_entry = obj(
        {
            "name": string(
                "Directory under the models volume; embedder.model.name refers to it.",
                pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$",
            ),
            **DOWNLOAD_SPEC,
        },
        required=["name", "source", "repo"],
    )
    return obj(
        {
            "enabled": BOOL,
            "image": ref("chartImage"),
            "models": {"type": "array", "maxItems": 32, "items": model_entry},
            "hfEndpoint": URL_OR_EMPTY,
            "hfToken": obj({"existingSecret": SECRET_NAME, "existingSecretKey": SECRET_KEY}),
            "modelscopeToken": obj({"existingSecret": SECRET_NAME, "existingSecretKey": SECRET_KEY}),
            "resources": ref("chartResources"),
            "backoffLimit": integer(0),
            "activeDeadlineSeconds": {"type": ["integer", "null"], "minimum": 1},
            "ttlSecondsAfterFinished": {"type": ["integer", "null"], "minimum": 0},
            "tmpSizeLimit": QUANTITY_OR_NULL,
            "networkPolicy": obj({"extraEgress": OBJECT_LIST}),
            **scheduling(),
        },
        required=["enabled", "image", "models", "resources"],
    )


def redis() -> J:
    return obj(
        {
            "enabled": BOOL,
            "image": ref("chartImagePinned"),
            "replicas": integer(0, 1),
            "resources": ref("chartResources"),
            "appendfsync": {"enum": ["always", "everysec", "no"]},
            "maxmemory": {"type": "string", "pattern": r"^$|^[0-9]+([kKmMgG][bB]?)?$"},
            "maxmemoryPolicy": {
                "enum": [
                    "noeviction",
                    "allkeys-lru",
                    "volatile-lru",
                    "allkeys-lfu",
                    "volatile-lfu",
                    "allkeys-random",
                    "volatile-random",
                    "volatile-ttl",
                ]
            },
            "database": integer(0, 15),
            "auth": obj(
                {"enabled": BOOL, "existingSecret": SECRET_NAME, "existingSecretPasswordKey": SECRET_KEY},
                required=["enabled"],
            ),
            # null: follow metrics.serviceMonitor.enabled.
            "metrics": obj(
                {
                    "enabled": {"type": ["boolean", "null"]},
                    "image": ref("chartImagePinned"),
                    "resources": ref("chartResources"),
                }
            ),
            "persistence": obj(
                {
                    "enabled": BOOL,
                    "storageClass": {"type": "string"},
                    "accessModes": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"enum": ["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"]},
                    },
                    "size": QUANTITY,
                },
                required=["enabled", "size"],
            ),
            **probes(),
            "terminationGracePeriodSeconds": integer(0),
            "service": obj({"port": integer(1, 65535), "annotations": STRING_MAP}, required=["port"]),
            "pdb": ref("chartPdb"),
            "external": obj(
                {
                    "existingSecret": SECRET_NAME,
                    "existingSecretKey": SECRET_KEY,
                    "port": integer(1, 65535),
                    "networkPolicyPeers": OBJECT_LIST,
                }
            ),
            "extraArgs": {"type": "array", "items": {"type": ["string", "number"]}},
            "networkPolicy": obj({"extraIngress": OBJECT_LIST}),
            **scheduling(),
        },
        required=[*COMMON_REQUIRED, "replicas", "external"],
    )


def ingress() -> J:
    ingress_tls = obj({"enabled": BOOL, "secretName": SECRET_NAME}, required=["enabled"])
    ingress_route = {
        "enabled": BOOL,
        "hosts": {"type": "array", "minItems": 1, "items": HOSTNAME},
        "path": string(pattern=r"^/"),
        "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]},
        "annotations": STRING_MAP,
        "tls": ingress_tls,
    }
    return obj(
        {
            "enabled": BOOL,
            "className": {"type": "string"},
            "annotations": STRING_MAP,
            "nginx": obj(
                {
                    "enabled": BOOL,
                    "proxyReadTimeout": integer(1),
                    "proxySendTimeout": integer(1),
                    "proxyBuffering": {"enum": ["on", "off"]},
                    "proxyBodySize": string(pattern=r"^[0-9]+[kKmMgG]?$"),
                },
                required=["enabled"],
            ),
            "ui": obj({**ingress_route, "sessionAffinity": BOOL}, required=["enabled", "hosts"]),
            "gateway": obj(ingress_route, required=["enabled", "hosts"]),
        },
        required=["enabled"],
    )


def http_route() -> J:
    """Gateway API: hostnames without a port; a path prefix starts with /."""
    http_route_part = {
        "enabled": BOOL,
        "hostnames": {"type": "array", "items": HOSTNAME},
        "path": string(pattern=r"^/"),
        "annotations": STRING_MAP,
    }
    return obj(
        {
            "enabled": BOOL,
            "parentRefs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": string(minLength=1)},
                },
            },
            "annotations": STRING_MAP,
            "timeouts": obj({"request": string(), "backendRequest": string()}),
            "ui": obj(http_route_part, required=["enabled"]),
            "gateway": obj(http_route_part, required=["enabled"]),
        },
        required=["enabled"],
    )


def network_policy() -> J:
    cidr = string(pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$")
    peer_selector = {"namespaceSelector": ref("chartSelector"), "podSelector": ref("chartSelector")}
    return obj(
        {
            "enabled": BOOL,
            "ingressController": obj(peer_selector, required=["namespaceSelector"]),
            "prometheus": obj({"enabled": BOOL, **peer_selector}, required=["enabled", "namespaceSelector"]),
            "dns": obj(
                {
                    **peer_selector,
                    "port": integer(1, 65535),
                    # DNS servers outside the cluster DNS pods (NodeLocal DNSCache, GKE's link-local
                    # resolver): opened on port 53 only.
                    "extraAddresses": {
                        "type": "array",
                        "maxItems": 16,
                        "uniqueItems": True,
                        "items": string(pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}(/[0-9]{1,2})?$"),
                    },
                },
                required=["namespaceSelector", "port"],
            ),
            "internetEgress": obj(
                {
                    "blockedCIDRs": {"type": "array", "items": cidr},
                    "privateCIDRs": {"type": "array", "items": cidr},
                    "allowPrivateRanges": BOOL,
                    "ports": {"type": "array", "items": integer(1, 65535)},
                },
                required=["blockedCIDRs", "privateCIDRs", "allowPrivateRanges"],
            ),
        },
        required=["enabled"],
    )


def metrics() -> J:
    return obj(
        {
            "serviceMonitor": obj(
                {
                    "enabled": BOOL,
                    "namespace": {"type": "string"},
                    "labels": STRING_MAP,
                    "interval": DURATION,
                    "scrapeTimeout": DURATION,
                },
                required=["enabled"],
            ),
            "prometheusRule": obj(
                {
                    "enabled": BOOL,
                    "namespace": {"type": "string"},
                    "labels": STRING_MAP,
                    "errorRatioThreshold": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "embedderQueueSaturation": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "modelWaitingRequests": integer(1),
                    "indexStaleHours": integer(1),
                    "ingestWaitSeconds": integer(1),
                    "additionalRules": OBJECT_LIST,
                },
                required=["enabled"],
            ),
            "dashboard": obj(
                {
                    "enabled": BOOL,
                    "namespace": {"type": "string"},
                    "labels": STRING_MAP,
                    "annotations": STRING_MAP,
                },
                required=["enabled"],
            ),
        }
    )


def helm_tests() -> J:
    """`tests`: the helm test pod."""
    return obj(
        {
            "enabled": BOOL,
            "image": obj(
                {
                    "registry": {"type": "string"},
                    "repository": string(pattern=r"^$|^[a-z0-9]+([._\-/][a-z0-9]+)*$"),
                    "tag": IMAGE_TAG,
                    "digest": string(pattern=r"^$|^sha256:[a-f0-9]{64}$"),
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                }
            ),
            "apiKey": obj(
                {"existingSecret": SECRET_NAME, "existingSecretKey": string(pattern=r"^$|^[-._a-zA-Z0-9]+$")}
            ),
            "resources": ref("chartResources"),
        },
        required=["enabled"],
    )


def release_wide() -> J:
    """The keys before the components: names, labels, global, service account, security, storage, token."""
    return {
        "nameOverride": string(pattern=r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", maxLength=40),
        "fullnameOverride": string(pattern=r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", maxLength=40),
        "commonLabels": STRING_MAP,
        "commonAnnotations": STRING_MAP,
        # As a subchart the chart receives the parent's whole `global:`: other keys are allowed.
        "global": {
            "type": "object",
            "additionalProperties": True,
            "properties": {
                "imageRegistry": {"type": "string"},
                "imagePullSecrets": {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            SECRET_NAME | {"minLength": 1},
                            obj({"name": SECRET_NAME | {"minLength": 1}}, required=["name"]),
                        ]
                    },
                },
                "storageClass": {"type": "string"},
            },
        },
        "serviceAccount": obj(
            {
                "create": BOOL,
                "name": {"type": "string"},
                "annotations": STRING_MAP,
                "automountServiceAccountToken": BOOL,
            },
            required=["create", "automountServiceAccountToken"],
        ),
        "podSecurityContext": {
            **ref("chartPodSecurityContext"),
            "required": ["runAsNonRoot", "runAsUser", "seccompProfile"],
        },
        "containerSecurityContext": {
            **ref("chartContainerSecurityContext"),
            "required": [
                "runAsNonRoot",
                "allowPrivilegeEscalation",
                "readOnlyRootFilesystem",
                "capabilities",
                "seccompProfile",
            ],
        },
        "persistence": obj(
            {
                **{v: ref("chartPersistentVolume") for v in ("models", "index", "uploads")},
                "shared": ref("chartPersistentVolume"),
                "singleNode": obj({"enabled": BOOL}, required=["enabled"]),
            },
            required=["models", "index", "uploads"],
        ),
        "serviceToken": obj(
            {"existingSecret": SECRET_NAME, "existingSecretKey": SECRET_KEY},
            required=["existingSecret", "existingSecretKey"],
            description="The shared token the embedder and the retriever require of their callers.",
        ),
    }


def enabled(c: str, value: bool) -> J:
    """A condition: component `c` is there with `enabled: value`."""
    return {
        "properties": {c: {"properties": {"enabled": {"const": value}}, "required": ["enabled"]}},
        "required": [c],
    }


def needs(path: list[str], message: str) -> J:
    """A requirement: the string at `path` is set; `message` says what to give."""
    inner: J = {"type": "string", "minLength": 1, "description": message}
    for key in reversed(path):
        inner = {"properties": {key: inner}, "required": [key]}
    return inner


def cross_field_rules() -> list[J]:
    """A part that is off must be replaced by an external one when something uses it."""
    return [
        {
            "if": enabled("httpRoute", True),
            "then": {
                "properties": {
                    "httpRoute": {"properties": {"parentRefs": {"minItems": 1}}, "required": ["parentRefs"]}
                },
                "description": "httpRoute.enabled needs httpRoute.parentRefs (the Gateways to attach to)",
            },
        },
        {
            "if": {"allOf": [enabled("gateway", True), enabled("redis", False)]},
            "then": needs(
                ["redis", "external", "existingSecret"],
                "redis is off: redis.external.existingSecret holds the URL",
            ),
        },
        {
            "if": {"allOf": [enabled("gateway", True), enabled("embedder", False)]},
            "then": needs(["embedder", "externalUrl"], "embedder is off: give embedder.externalUrl"),
        },
        {
            "if": {"allOf": [enabled("retriever", True), enabled("embedder", False)]},
            "then": needs(["embedder", "externalUrl"], "embedder is off: give embedder.externalUrl"),
        },
        {
            "if": {"allOf": [enabled("indexer", True), enabled("embedder", False)]},
            "then": needs(["embedder", "externalUrl"], "embedder is off: give embedder.externalUrl"),
        },
        {
            "if": {"allOf": [enabled("gateway", True), enabled("retriever", False)]},
            "then": needs(["retriever", "externalUrl"], "retriever is off: give retriever.externalUrl"),
        },
        {
            # RETRIEVER_FAISS_GPU without a GPU stops the pod at start-up: ask for one.
            "if": {
                "allOf": [
                    enabled("retriever", True),
                    {
                        "properties": {
                            "retriever": {
                                "properties": {"faissGpu": {"const": True}},
                                "required": ["faissGpu"],
                            }
                        },
                        "required": ["retriever"],
                    },
                ]
            },
            "then": {
                "properties": {
                    "retriever": {
                        "properties": {
                            "resources": {
                                "properties": {
                                    "limits": {
                                        "required": ["nvidia.com/gpu"],
                                        "description": "retriever.faissGpu needs an nvidia.com/gpu limit",
                                    }
                                },
                                "required": ["limits"],
                            }
                        },
                        "required": ["resources"],
                    }
                },
            },
        },
        {
            "if": {"allOf": [enabled("ui", True), enabled("gateway", False)]},
            "then": needs(["gateway", "externalUrl"], "gateway is off: the UI needs gateway.externalUrl"),
        },
    ]


def values_schema(kb: J) -> J:
    top: J = {
        **release_wide(),
        "gateway": gateway(),
        "embedder": embedder(),
        "retriever": retriever(),
        "ui": ui(),
        "indexer": indexer(kb),
        "vllm": vllm(),
        "models": models(),
        "modelDownload": model_download(),
        "redis": redis(),
        # Identical to the indexer's schema (see the module docstring).
        "knowledgeBases": kb["properties"]["knowledgeBases"],
        "ingress": ingress(),
        "httpRoute": http_route(),
        "networkPolicy": network_policy(),
        "metrics": metrics(),
        "tests": helm_tests(),
        # Manifests as maps or YAML strings, rendered through tpl.
        "extraObjects": {"type": "array", "items": {"type": ["object", "string"]}},
    }

    defs = chart_defs()
    for name, definition in kb["$defs"].items():
        assert name not in defs, name
        defs[name] = definition

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "omnirag chart values",
        "description": (
            "Generated by hack/gen_values_schema.py; knowledgeBases and its $defs are copied "
            "from the indexer's schema."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": [
            "global",
            "serviceAccount",
            "podSecurityContext",
            "containerSecurityContext",
            "persistence",
            "serviceToken",
            "gateway",
            "embedder",
            "retriever",
            "ui",
            "indexer",
            "models",
            "vllm",
            "modelDownload",
            "redis",
            "knowledgeBases",
            "ingress",
            "networkPolicy",
            "metrics",
            "tests",
        ],
        "properties": top,
        "allOf": cross_field_rules(),
        "$defs": defs,
    }


def render(kb: J) -> str:
    """The schema file's text."""
    return json.dumps(values_schema(kb), indent=2, ensure_ascii=False) + "\n"


def drift(path: Path, text: str) -> str:
    """A unified diff from the file at `path` to `text` ('' when they are equal)."""
    current = path.read_text(encoding="utf-8")
    if current == text:
        return ""
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        text.splitlines(keepends=True),
        fromfile=f"{display(path)} (on disk)",
        tofile=f"{display(path)} (generated)",
    )
    lines = list(diff)
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"... {len(lines) - MAX_DIFF_LINES} more diff lines\n"]
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def display(path: Path) -> str:
    """`path` relative to the repository when it is inside it (how the commands here are run)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def check(path: Path, text: str) -> int:
    """0 when the file at `path` is `text`; else 1, with the diff on stdout and the fix on stderr."""
    if not path.is_file():
        problem = "is missing"
    else:
        diff = drift(path, text)
        if not diff:
            print(f"{display(path)} is up to date")
            return 0
        sys.stdout.write(diff)
        problem = "is not what the generator writes"
    command = f"python {display(Path(__file__))}"
    if path.resolve() != SCHEMA:
        command += f" --output {display(path)}"
    print(f"{display(path)} {problem}; regenerate it: {command}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) charts/omnirag/values.schema.json.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 with a diff when the file differs from what would be written",
    )
    parser.add_argument(
        "--output", type=Path, default=SCHEMA, help=f"the schema file (default: {display(SCHEMA)})"
    )
    args = parser.parse_args(argv)
    kb = json.loads(KB_SCHEMA.read_text(encoding="utf-8"))
    text = render(kb)
    path: Path = args.output
    if args.check:
        return check(path, text)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
