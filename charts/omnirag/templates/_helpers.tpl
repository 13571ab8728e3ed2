{{/*
Helpers of the omnirag chart. Every helper is named omnirag.*; the ones that need a component take
a dict: "ctx" (the root context, $) plus the keys they name.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "omnirag.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: fullnameOverride, else "<release>-<chart>", else just the release
when it already contains the chart name. Kept to 40 characters so that "<prefix>-<component>" stays
short enough for every kind (CronJob names stop at 52).
*/}}
{{- define "omnirag.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "omnirag.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of a component's objects: dict "ctx" $ "component" "gateway". */}}
{{- define "omnirag.componentName" -}}
{{- printf "%s-%s" (include "omnirag.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select a component's pods: dict "ctx" $ "component" "gateway". */}}
{{- define "omnirag.selectorLabels" -}}
app.kubernetes.io/name: {{ include "omnirag.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* Every label of an object: dict "ctx" $ "component" "gateway" ("" for release-wide objects). */}}
{{- define "omnirag.labels" -}}
helm.sh/chart: {{ include "omnirag.chart" .ctx }}
{{ include "omnirag.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: omnirag
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* commonAnnotations merged with an object's own: dict "ctx" $ "annotations" {...}. Renders nothing when both are empty. */}}
{{- define "omnirag.annotations" -}}
{{- $all := merge (deepCopy (default (dict) .annotations)) (deepCopy (default (dict) .ctx.Values.commonAnnotations)) -}}
{{- if $all }}
annotations:
  {{- toYaml $all | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Checkov checks the chart skips, each with its reason (rendered as checkov.io/skipN annotations).
CKV_K8S_21 is skipped on every object: checkov renders the chart into "default", a real install
goes into the namespace of `helm install -n`.
*/}}
{{- define "omnirag.checkovReasons" -}}
CKV_K8S_21: the namespace is the release's (helm install -n); checkov renders the chart into default
CKV_K8S_43: tags are pinned (the chart appVersion or an explicit version); set image.digest to pin by digest
CKV_K8S_15: IfNotPresent with pinned tags; image.pullPolicy is a value
CKV_K8S_35: vLLM reads its API key from the VLLM_API_KEY environment variable and has no file option
CKV_K8S_8: a helm test pod runs once; a liveness probe would have nothing to restart
CKV_K8S_9: a helm test pod runs once and no Service routes to it
{{- end -}}

{{/* checkov.io/skipN annotations for the checks in .checkov (plus CKV_K8S_21 always), as a dict. */}}
{{- define "omnirag.checkovSkips" -}}
{{- $reasons := include "omnirag.checkovReasons" . | fromYaml -}}
{{- $out := dict -}}
{{- range $i, $id := prepend (default (list) .checkov) "CKV_K8S_21" -}}
{{- $_ := set $out (printf "checkov.io/skip%d" (add1 $i)) (printf "%s=%s" $id (index $reasons $id)) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Checks skipped on a workload: its image checks, and CKV_K8S_35 when "secretEnv" is true (vLLM's key). */}}
{{- define "omnirag.workloadCheckov" -}}
{{- $l := list "CKV_K8S_43" "CKV_K8S_15" -}}
{{- if .secretEnv }}{{ $l = append $l "CKV_K8S_35" }}{{ end -}}
{{- toJson $l -}}
{{- end -}}

{{/*
The metadata block of a namespaced object: dict "ctx" $ "component" "x", and optionally "name",
"namespace", "labels" {...}, "annotations" {...}, "checkov" (list of skipped check ids).
*/}}
{{- define "omnirag.metadata" -}}
name: {{ default (include "omnirag.componentName" .) .name }}
namespace: {{ .namespace | default .ctx.Release.Namespace }}
labels:
  {{- include "omnirag.labels" . | nindent 2 }}
  {{- with .labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- $ann := merge (include "omnirag.checkovSkips" . | fromYaml) (deepCopy (default (dict) .annotations)) }}
{{- include "omnirag.annotations" (dict "ctx" .ctx "annotations" $ann) }}
{{- end -}}

{{/*
An image reference: dict "ctx" $ "image" .Values.x.image. global.imageRegistry replaces the
registry; the tag defaults to the chart's appVersion; a digest pins it.
*/}}
{{- define "omnirag.image" -}}
{{- $registry := .image.registry | default "" -}}
{{- if .ctx.Values.global.imageRegistry -}}
{{- $registry = .ctx.Values.global.imageRegistry -}}
{{- end -}}
{{- $repo := .image.repository -}}
{{- if $registry -}}
{{- $repo = printf "%s/%s" $registry $repo -}}
{{- end -}}
{{- $tag := .image.tag | default .ctx.Chart.AppVersion | toString -}}
{{- if eq (lower $tag) "latest" -}}
{{- fail (printf "image %s: the tag \"latest\" is not allowed; pin a version" $repo) -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" $repo $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* image + imagePullPolicy lines of a container: dict "ctx" $ "image" .Values.x.image. */}}
{{- define "omnirag.containerImage" -}}
image: {{ include "omnirag.image" . | quote }}
imagePullPolicy: {{ .image.pullPolicy | default "IfNotPresent" }}
{{- end -}}

{{/* imagePullSecrets of a pod: global.imagePullSecrets, names or {name: ...} objects (a parent chart's form). */}}
{{- define "omnirag.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ if kindIs "map" . }}{{ .name }}{{ else }}{{ . }}{{ end }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The ServiceAccount the pods run as. */}}
{{- define "omnirag.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "omnirag.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Pod security context: the top-level one with the component's merged over it. dict "ctx" $ "values" .Values.x */}}
{{- define "omnirag.podSecurityContext" -}}
{{- $sc := mergeOverwrite (deepCopy .ctx.Values.podSecurityContext) (deepCopy (default (dict) .values.podSecurityContext)) -}}
{{- toYaml $sc -}}
{{- end -}}

{{/* Container security context: the top-level one with the component's merged over it. dict "ctx" $ "values" .Values.x */}}
{{- define "omnirag.containerSecurityContext" -}}
{{- $sc := mergeOverwrite (deepCopy .ctx.Values.containerSecurityContext) (deepCopy (default (dict) .values.containerSecurityContext)) -}}
{{- toYaml $sc -}}
{{- end -}}

{{/*
The pod-level fields every pod shares: service account, token, security context, pull secrets,
scheduling. dict "ctx" $ "values" .Values.x
*/}}
{{- define "omnirag.podCommon" -}}
serviceAccountName: {{ include "omnirag.serviceAccountName" .ctx }}
automountServiceAccountToken: {{ .ctx.Values.serviceAccount.automountServiceAccountToken }}
enableServiceLinks: false
securityContext:
  {{- include "omnirag.podSecurityContext" . | nindent 2 }}
{{- include "omnirag.imagePullSecrets" .ctx }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $affinity := deepCopy (default (dict) .values.affinity) }}
{{- if include "omnirag.singleNodePod" . }}
{{- /* Single-node mode: ReadWriteOnce claims attach to one node, so every pod that mounts one must
run beside the others. The first such pod matches its own term, which the scheduler accepts while
no other pod matches. */}}
{{- $podAffinity := default (dict) (get $affinity "podAffinity") }}
{{- $required := default (list) (get $podAffinity "requiredDuringSchedulingIgnoredDuringExecution") }}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "omnirag.singleNodeLabels" .ctx | fromYaml)) }}
{{- $_ := set $podAffinity "requiredDuringSchedulingIgnoredDuringExecution" (append $required $term) }}
{{- $_ := set $affinity "podAffinity" $podAffinity }}
{{- end }}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The shared volumes (models, index, uploads) a component's pods mount, as a JSON list: dict "ctx" $
"component" "x" (the component label; indexer-worker for the upload worker).
*/}}
{{- define "omnirag.sharedVolumesOf" -}}
{{- $V := .ctx.Values -}}
{{- $out := list -}}
{{- if eq .component "gateway" }}{{ $out = list "uploads" }}{{ end -}}
{{- if eq .component "retriever" }}{{ $out = list "index" }}{{ end -}}
{{- if eq .component "indexer" }}{{ $out = list "index" }}{{ end -}}
{{- if eq .component "indexer-worker" }}{{ $out = list "index" "uploads" }}{{ end -}}
{{- if eq .component "model-download" }}{{ $out = list "models" }}{{ end -}}
{{- if hasPrefix "vllm-" .component -}}
{{- range (include "omnirag.internalModels" .ctx | fromJson).models -}}
{{- if and (eq .component $.component) .onVolume }}{{ $out = list "models" }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .component "embedder") $V.embedder.model.name }}{{ $out = list "models" }}{{ end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Whether a component's pods are tied to the storage node (single-node mode and a claim-backed
shared volume): "true" or "". dict "ctx" $ "component" "x" */}}
{{- define "omnirag.singleNodePod" -}}
{{- $p := .ctx.Values.persistence -}}
{{- if and $p.singleNode.enabled .component -}}
{{- range include "omnirag.sharedVolumesOf" . | fromJsonArray -}}
{{- if (index $p .).enabled }}true{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The labels single-node mode ties pods together by. */}}
{{- define "omnirag.singleNodeLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
omnirag.dev/shared-storage: "true"
{{- end -}}

{{/* Pod template metadata: dict "ctx" $ "component" "x" "values" .Values.x "labels" {...} "annotations" {...} */}}
{{- define "omnirag.podMetadata" -}}
labels:
  {{- include "omnirag.labels" . | nindent 2 }}
  {{- with .labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- if include "omnirag.singleNodePod" . }}
  omnirag.dev/shared-storage: "true"
  {{- end }}
  {{- with .values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- $ann := merge (deepCopy (default (dict) .annotations)) (deepCopy (default (dict) .values.podAnnotations)) }}
{{- with $ann }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* One probe from its values: dict "probe" .Values.x.livenessProbe "handler" (yaml of the handler). */}}
{{- define "omnirag.probe" -}}
{{ .handler }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
successThreshold: {{ .probe.successThreshold }}
{{- end -}}

{{/*
startupProbe, livenessProbe and readinessProbe of an HTTP service: dict "values" .Values.x
"liveness" "/healthz" "readiness" "/readyz". Liveness and startup use the cheap /healthz; only
readiness asks whether the dependencies are usable, so a dependency that is down takes the pod out
of the Service instead of restarting it.
*/}}
{{- define "omnirag.httpProbes" -}}
{{- $live := printf "httpGet:\n  path: %s\n  port: http" .liveness -}}
{{- $ready := printf "httpGet:\n  path: %s\n  port: http" .readiness -}}
{{- if .values.startupProbe.enabled }}
startupProbe:
  {{- include "omnirag.probe" (dict "probe" .values.startupProbe "handler" $live) | nindent 2 }}
{{- end }}
{{- if .values.livenessProbe.enabled }}
livenessProbe:
  {{- include "omnirag.probe" (dict "probe" .values.livenessProbe "handler" $live) | nindent 2 }}
{{- end }}
{{- if .values.readinessProbe.enabled }}
readinessProbe:
  {{- include "omnirag.probe" (dict "probe" .values.readinessProbe "handler" $ready) | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Environment every omnirag Python process gets: where to bind, JSON logs, and writable places for
the caches of Python libraries (the root filesystem is read-only; /tmp is an emptyDir).
dict "prefix" "GATEWAY_" "port" 8000 (port 0 = no HTTP server)
*/}}
{{- define "omnirag.baseEnv" -}}
{{- if .port }}
- name: {{ .prefix }}HOST
  value: "0.0.0.0"
- name: {{ .prefix }}PORT
  value: {{ .port | int | toString | quote }}
{{- end }}
- name: {{ .prefix }}LOG_JSON
  value: "true"
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

{{/* The user's environment of a component: its env map, then its extraEnvVars. dict "values" .Values.x */}}
{{- define "omnirag.userEnv" -}}
{{- range $k, $v := .values.env }}
- name: {{ $k }}
  value: {{ include "omnirag.envValue" $v }}
{{- end }}
{{- with .values.extraEnvVars }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A quoted environment value; whole numbers print without an exponent. */}}
{{- define "omnirag.envValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . | toString | quote -}}
{{- else -}}
{{- toString . | quote -}}
{{- end -}}
{{- end -}}

{{/* Base URL of the gateway: the release's Service, or gateway.externalUrl. */}}
{{- define "omnirag.gatewayUrl" -}}
{{- if .Values.gateway.enabled -}}
{{- printf "http://%s:%d" (include "omnirag.componentName" (dict "ctx" . "component" "gateway")) (int .Values.gateway.service.port) -}}
{{- else -}}
{{- .Values.gateway.externalUrl -}}
{{- end -}}
{{- end -}}

{{/* Base URL of the embedder: the release's Service, or embedder.externalUrl. */}}
{{- define "omnirag.embedderUrl" -}}
{{- if .Values.embedder.enabled -}}
{{- printf "http://%s:%d" (include "omnirag.componentName" (dict "ctx" . "component" "embedder")) (int .Values.embedder.service.port) -}}
{{- else -}}
{{- .Values.embedder.externalUrl -}}
{{- end -}}
{{- end -}}

{{/* Base URL of the retriever: the release's Service, or retriever.externalUrl. */}}
{{- define "omnirag.retrieverUrl" -}}
{{- if .Values.retriever.enabled -}}
{{- printf "http://%s:%d" (include "omnirag.componentName" (dict "ctx" . "component" "retriever")) (int .Values.retriever.service.port) -}}
{{- else -}}
{{- .Values.retriever.externalUrl -}}
{{- end -}}
{{- end -}}

{{/* Whether Redis is usable at all (in the release, or external): "true" or "". */}}
{{/* Paths every service serves for the cluster only (metrics, probes): never routed from outside
by the Ingresses or the HTTPRoutes. A JSON list. */}}
{{- define "omnirag.privatePaths" -}}
{{- list "/metrics" "/readyz" "/healthz" | toJson -}}
{{- end -}}

{{- define "omnirag.redisAvailable" -}}
{{- if or .Values.redis.enabled .Values.redis.external.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Secret and key of the Redis password when auth is on. */}}
{{- define "omnirag.redisPasswordSecret" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-auth" (include "omnirag.componentName" (dict "ctx" . "component" "redis"))) -}}
{{- end -}}

{{/* "true" when the Redis pod runs the redis_exporter sidecar: redis.metrics.enabled, or when it
is null, metrics.serviceMonitor.enabled. */}}
{{- define "omnirag.redisMetrics" -}}
{{- $m := .Values.redis.metrics.enabled -}}
{{- if and .Values.redis.enabled (kindIs "invalid" $m | ternary .Values.metrics.serviceMonitor.enabled $m) -}}true{{- end -}}
{{- end -}}

{{/*
A key of a Secret as a read-only file, /etc/omnirag-secrets/<name>/<key> (beside, not inside, the
indexer's /etc/omnirag config mount): the services read it through
<VAR>_FILE (omnirag.core.settings), so no secret sits in an environment variable.
  volume: dict "name" "llm-api-key" "secret" "my-secret" "key" "api-key"
*/}}
{{- define "omnirag.secretFileVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- end -}}

{{- define "omnirag.secretFileMount" -}}
- name: {{ .name }}
  mountPath: /etc/omnirag-secrets/{{ .name }}
  readOnly: true
{{- end -}}

{{- define "omnirag.secretFilePath" -}}
/etc/omnirag-secrets/{{ .name }}/{{ .key }}
{{- end -}}

{{/* The Redis secret a service reads, as JSON {"name","secret","key"} ({} when none): the
internal Redis's password, or the whole URL of an external one. */}}
{{- define "omnirag.redisSecretFile" -}}
{{- $v := .Values.redis -}}
{{- if $v.enabled -}}
{{- if $v.auth.enabled -}}
{{- toJson (dict "name" "redis" "secret" (include "omnirag.redisPasswordSecret" .) "key" $v.auth.existingSecretPasswordKey) -}}
{{- else -}}{}{{- end -}}
{{- else if $v.external.existingSecret -}}
{{- toJson (dict "name" "redis" "secret" $v.external.existingSecret "key" $v.external.existingSecretKey) -}}
{{- else -}}{}{{- end -}}
{{- end -}}

{{/*
Env entries that hand Redis to a service whose URL setting is "name": dict "ctx" $ "name" "GATEWAY_REDIS_URL".
In the release the URL names the Service and the password comes from its secret's file
(<PREFIX>REDIS_PASSWORD_FILE, put into the URL by the service); outside it the whole URL is the file.
*/}}
{{- define "omnirag.redisEnv" -}}
{{- $v := .ctx.Values.redis -}}
{{- $file := include "omnirag.redisSecretFile" .ctx | fromJson -}}
{{- if $v.enabled }}
{{- $host := include "omnirag.componentName" (dict "ctx" .ctx "component" "redis") }}
- name: {{ .name }}
  value: {{ printf "redis://%s:%d/%d" $host (int $v.service.port) (int $v.database) | quote }}
{{- if $file }}
- name: {{ trimSuffix "_URL" .name }}_PASSWORD_FILE
  value: {{ include "omnirag.secretFilePath" $file }}
{{- end }}
{{- else if $file }}
- name: {{ .name }}_FILE
  value: {{ include "omnirag.secretFilePath" $file }}
{{- end }}
{{- end -}}

{{/* The volume and the mount of the Redis secret's file (nothing when there is none). */}}
{{- define "omnirag.redisSecretVolume" -}}
{{- with include "omnirag.redisSecretFile" . | fromJson }}{{ include "omnirag.secretFileVolume" . }}{{ end -}}
{{- end -}}

{{- define "omnirag.redisSecretMount" -}}
{{- with include "omnirag.redisSecretFile" . | fromJson }}{{ include "omnirag.secretFileMount" . }}{{ end -}}
{{- end -}}

{{/*
The shared service token as JSON {"name","secret","key"} ({} when serviceToken.existingSecret is
empty): the embedder and the retriever require it, the gateway, the retriever and the indexer send it.
*/}}
{{- define "omnirag.serviceTokenFile" -}}
{{- $t := .Values.serviceToken -}}
{{- if $t.existingSecret -}}
{{- toJson (dict "name" "service-token" "secret" $t.existingSecret "key" $t.existingSecretKey) -}}
{{- else -}}{}{{- end -}}
{{- end -}}

{{/* <PREFIX>SERVICE_TOKEN_FILE, naming the mounted token (nothing without a token): dict "ctx" $ "prefix" "GATEWAY_" */}}
{{- define "omnirag.serviceTokenEnv" -}}
{{- $prefix := .prefix -}}
{{- with include "omnirag.serviceTokenFile" .ctx | fromJson }}
- name: {{ $prefix }}SERVICE_TOKEN_FILE
  value: {{ include "omnirag.secretFilePath" . }}
{{- end }}
{{- end -}}

{{/* The volume and the mount of the service token's file (nothing without a token). */}}
{{- define "omnirag.serviceTokenVolume" -}}
{{- with include "omnirag.serviceTokenFile" . | fromJson }}{{ include "omnirag.secretFileVolume" . }}{{ end -}}
{{- end -}}

{{- define "omnirag.serviceTokenMount" -}}
{{- with include "omnirag.serviceTokenFile" . | fromJson }}{{ include "omnirag.secretFileMount" . }}{{ end -}}
{{- end -}}

{{/* Secret of the gateway's keys file (and, by default, of the UI's key). */}}
{{- define "omnirag.gatewayAuthSecret" -}}
{{- default (printf "%s-gateway-auth" (include "omnirag.fullname" .)) .Values.gateway.auth.existingSecret -}}
{{- end -}}

{{/* Secret of the UI's gateway key. */}}
{{- define "omnirag.uiApiKeySecret" -}}
{{- default (include "omnirag.gatewayAuthSecret" .) .Values.ui.apiKey.existingSecret -}}
{{- end -}}

{{/*
The gateway-auth Secret the chart generates, as JSON {"name", "old"} ({} when it generates none):
only for this release's gateway with auth on and no gateway.auth.existingSecret. "old" is the Secret
already in the cluster (lookup; empty under helm template). One made by hand under the same name
(what the chart's README asked for before it generated one) is not the release's: it is left alone
and read as it is, instead of failing the upgrade on its ownership.
*/}}
{{- define "omnirag.generatedGatewayAuth" -}}
{{- $a := .Values.gateway.auth -}}
{{- if and .Values.gateway.enabled $a.enabled (not $a.existingSecret) -}}
{{- $name := include "omnirag.gatewayAuthSecret" . -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- $owner := "" -}}
{{- if $old }}{{ $owner = index (default (dict) $old.metadata.annotations) "meta.helm.sh/release-name" | default "" }}{{ end -}}
{{- if or (not $old) (eq $owner .Release.Name) -}}
{{- toJson (dict "name" $name "old" $old) -}}
{{- else -}}
{}
{{- end -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/*
The UI login Secret the chart generates, as JSON {"name", "session", "old"} ({} when none): one local
user with a random password when the UI would otherwise have no login (mode auto without OIDC, or
mode local, and no ui.auth.local.existingSecret); "session" when it also holds the cookie's signing
key (ui.auth.session.existingSecret empty). "old" as above, so an upgrade keeps both.
*/}}
{{- define "omnirag.generatedUiLogin" -}}
{{- $a := .Values.ui.auth -}}
{{- $wanted := or (eq $a.mode "local") (and (eq $a.mode "auto") (not $a.oidc.enabled)) -}}
{{- if and .Values.ui.enabled $wanted (not $a.local.existingSecret) -}}
{{- $name := printf "%s-ui-login" (include "omnirag.fullname" .) -}}
{{- toJson (dict "name" $name "session" (not $a.session.existingSecret) "old" (lookup "v1" "Secret" .Release.Namespace $name)) -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/* Where the models volume is mounted. */}}
{{- define "omnirag.modelsDir" -}}/models{{- end -}}

{{/* Directory of a downloaded model: the name of an entry of modelDownload.models. */}}
{{- define "omnirag.modelDir" -}}
{{- printf "%s/%s" (include "omnirag.modelsDir" .ctx) .name -}}
{{- end -}}

{{/*
Name of the claim behind a shared volume: dict "ctx" $ "volume" "models" | "index" | "uploads".
With persistence.shared every volume is a subPath of one claim.
*/}}
{{- define "omnirag.claimName" -}}
{{- $shared := .ctx.Values.persistence.shared -}}
{{- if $shared.enabled -}}
{{- default (include "omnirag.componentName" (dict "ctx" .ctx "component" "shared")) $shared.existingClaim -}}
{{- else -}}
{{- $p := index .ctx.Values.persistence .volume -}}
{{- default (include "omnirag.componentName" (dict "ctx" .ctx "component" .volume)) $p.existingClaim -}}
{{- end -}}
{{- end -}}

{{/* The subPath line of a shared volume's mount (nothing unless persistence.shared): dict "ctx" $ "volume" "models". */}}
{{- define "omnirag.sharedSubPath" -}}
{{- if and .ctx.Values.persistence.shared.enabled (index .ctx.Values.persistence .volume).enabled -}}
subPath: {{ .volume }}
{{- end -}}
{{- end -}}

{{/* A pod volume for a shared volume: dict "ctx" $ "volume" "models" "readOnly" true. */}}
{{- define "omnirag.sharedVolume" -}}
{{- $p := index .ctx.Values.persistence .volume -}}
- name: {{ .volume }}
{{- if $p.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "omnirag.claimName" . }}
    {{- if .readOnly }}
    readOnly: true
    {{- end }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}

{{/* A writable emptyDir for /tmp: dict "size" "1Gi". */}}
{{- define "omnirag.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .size }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end -}}

{{/*
Where the index and the uploads live inside the pods (one path for the services that share them).
*/}}
{{- define "omnirag.indexDir" -}}/data/index{{- end -}}
{{- define "omnirag.uploadsDir" -}}/data/uploads{{- end -}}

{{/* Path of the knowledge-bases spec inside the indexer's pods. */}}
{{- define "omnirag.kbConfigDir" -}}/etc/omnirag{{- end -}}
{{- define "omnirag.kbConfigPath" -}}/etc/omnirag/knowledge-bases.yaml{{- end -}}

{{/*
The marker the model-download Job writes into a model's directory after every file is complete;
pods that serve the model wait for it.
*/}}
{{- define "omnirag.downloadMarker" -}}.omnirag-download.json{{- end -}}

{{/*
An init container that waits until a model's download is complete: dict "ctx" $ "values"
.Values.x (for image and security context) "model" "name" "image" .Values.x.image.
It runs the serving image itself (it has a shell), so no extra image is pulled.
*/}}
{{- define "omnirag.waitForModelContainer" -}}
{{- $marker := printf "%s/%s" (include "omnirag.modelDir" (dict "ctx" .ctx "name" .model)) (include "omnirag.downloadMarker" .ctx) -}}
- name: wait-for-model
  {{- include "omnirag.containerImage" (dict "ctx" .ctx "image" .image) | nindent 2 }}
  command:
    - sh
    - -c
    - |
      marker="$MARKER"
      echo "waiting for $marker (written by the model-download Job when every file is complete)"
      until [ -f "$marker" ]; do sleep 10; done
      echo "model ready: $(cat "$marker")"
  env:
    - name: MARKER
      value: {{ $marker | quote }}
  securityContext:
    {{- include "omnirag.containerSecurityContext" . | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {cpu: 100m, memory: 64Mi}
  volumeMounts:
    - name: models
      mountPath: {{ include "omnirag.modelsDir" .ctx }}
      {{- with include "omnirag.sharedSubPath" (dict "ctx" .ctx "volume" "models") }}
      {{ . }}
      {{- end }}
      readOnly: true
{{- end -}}

{{/* The models spec handed to the download Job (YAML, a `models:` list). */}}
{{- define "omnirag.modelDownload.spec" -}}
{{- $models := list -}}
{{- range .Values.modelDownload.models -}}
{{- $m := dict "name" .name "source" (.source | default "huggingface") "repo" .repo "dir" .name -}}
{{- if .revision }}{{- $_ := set $m "revision" .revision }}{{- end -}}
{{- if .endpoint }}{{- $_ := set $m "endpoint" .endpoint }}{{- end -}}
{{- if .allowPatterns }}{{- $_ := set $m "allowPatterns" .allowPatterns }}{{- end -}}
{{- if .ignorePatterns }}{{- $_ := set $m "ignorePatterns" .ignorePatterns }}{{- end -}}
{{- $models = append $models $m -}}
{{- end -}}
{{- toYaml (dict "models" $models) -}}
{{- end -}}

{{/* Whether a component uses the models volume: "true" or "". */}}
{{- define "omnirag.modelsVolumeUsed" -}}
{{- $onVolume := false -}}
{{- range (include "omnirag.internalModels" . | fromJson).models -}}
{{- if .onVolume }}{{ $onVolume = true }}{{ end -}}
{{- end -}}
{{- if or .Values.modelDownload.enabled $onVolume (and .Values.embedder.enabled .Values.embedder.model.name) -}}true{{- end -}}
{{- end -}}

{{/* Whether the index volume is used: "true" or "". */}}
{{- define "omnirag.indexVolumeUsed" -}}
{{- if or .Values.retriever.enabled .Values.indexer.enabled -}}true{{- end -}}
{{- end -}}

{{/* Whether the uploads volume is used: "true" or "". */}}
{{- define "omnirag.uploadsVolumeUsed" -}}
{{- if or .Values.gateway.enabled (and .Values.indexer.enabled .Values.indexer.worker.enabled) -}}true{{- end -}}
{{- end -}}

{{/* Whether the indexer worker is rendered (it needs Redis): "true" or "". */}}
{{- define "omnirag.workerEnabled" -}}
{{- if and .Values.indexer.enabled .Values.indexer.worker.enabled (include "omnirag.redisAvailable" .) -}}true{{- end -}}
{{- end -}}

{{/*
Name of a knowledge base's CronJob: dict "ctx" $ "kb" "name". Knowledge-base names may hold "_",
which object names may not; those (and names too long for a CronJob, 52 characters) get a short
hash so that two knowledge bases never share a name.
*/}}
{{- define "omnirag.indexer.cronJobName" -}}
{{- $base := printf "%s-index-%s" (include "omnirag.fullname" .ctx) (.kb | replace "_" "-") -}}
{{- if or (contains "_" .kb) (gt (len $base) 52) -}}
{{- printf "%s-%s" ($base | trunc 43 | trimSuffix "-") (sha256sum .kb | trunc 8) -}}
{{- else -}}
{{- $base -}}
{{- end -}}
{{- end -}}

{{/*
Addresses no egress rule ever opens: the cloud metadata endpoints (169.254.169.254 on AWS, GCP,
Azure and most others; 100.100.100.200 on Alibaba Cloud), whatever networkPolicy.internetEgress
says, then the configured blockedCIDRs. A JSON list.
*/}}
{{- define "omnirag.blockedCIDRs" -}}
{{- concat (list "169.254.169.254/32" "100.100.100.200/32") (default (list) .Values.networkPolicy.internetEgress.blockedCIDRs) | uniq | toJson -}}
{{- end -}}

{{/*
An egress rule to "the internet": every IPv4 address except the blocked ones (cloud metadata)
and, unless allowPrivateRanges, the private ranges; on networkPolicy.internetEgress.ports.
dict "ctx" $ "ports" (optional list of ports that replaces the configured ones)
*/}}
{{- define "omnirag.internetEgressRule" -}}
{{- $ie := .ctx.Values.networkPolicy.internetEgress -}}
{{- $except := include "omnirag.blockedCIDRs" .ctx | fromJsonArray -}}
{{- if not $ie.allowPrivateRanges -}}
{{- $except = concat $except $ie.privateCIDRs | uniq -}}
{{- end -}}
{{- $ports := $ie.ports -}}
{{- if .ports -}}{{- $ports = .ports -}}{{- end -}}
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
        {{- with $except }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
  {{- with $ports }}
  ports:
    {{- range . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- end }}
{{- end -}}

{{/*
A peer list entry for pods of this release: dict "ctx" $ "component" "x", or "components" (list ...)
for several components at once.
*/}}
{{- define "omnirag.peer" -}}
{{- if .components -}}
- podSelector:
    matchExpressions:
      - key: app.kubernetes.io/name
        operator: In
        values: [{{ include "omnirag.name" .ctx | quote }}]
      - key: app.kubernetes.io/instance
        operator: In
        values: [{{ .ctx.Release.Name | quote }}]
      - key: app.kubernetes.io/component
        operator: In
        values:
          {{- toYaml .components | nindent 10 }}
{{- else -}}
- podSelector:
    matchLabels:
      {{- include "omnirag.selectorLabels" . | nindent 6 }}
{{- end -}}
{{- end -}}

{{/*
Egress rule to an omnirag HTTP service: its pods when it is in the release, else the host of its
externalUrl (any address but cloud metadata, on the URL's port). dict "ctx" $ "component" "embedder" "port" 8001
*/}}
{{- define "omnirag.serviceEgressRule" -}}
{{- $v := index .ctx.Values .component -}}
{{- if $v.enabled -}}
- to:
    {{- include "omnirag.peer" (dict "ctx" .ctx "component" .component) | nindent 4 }}
  ports:
    - protocol: TCP
      port: {{ .port }}
{{- else if $v.externalUrl -}}
{{- include "omnirag.urlEgressRule" (dict "ctx" .ctx "url" $v.externalUrl) -}}
{{- end -}}
{{- end -}}

{{/* Egress rule to the gateway (in the release or gateway.externalUrl). */}}
{{- define "omnirag.gatewayEgressRule" -}}
{{- include "omnirag.serviceEgressRule" (dict "ctx" . "component" "gateway" "port" 8000) -}}
{{- end -}}

{{/* Egress rule to the host of a URL: any address but cloud metadata, on the URL's port. dict "ctx" $ "url" "http://..." */}}
{{- define "omnirag.urlEgressRule" -}}
{{- $u := urlParse .url -}}
{{- $hostPort := splitList ":" $u.host -}}
{{- $port := ternary "80" "443" (eq $u.scheme "http") -}}
{{- if gt (len $hostPort) 1 }}{{ $port = last $hostPort }}{{ end -}}
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
        except:
          {{- include "omnirag.blockedCIDRs" .ctx | fromJsonArray | toYaml | nindent 10 }}
  ports:
    - protocol: TCP
      port: {{ $port | int }}
{{- end -}}

{{/* Egress rule to the Redis the services use: dict "ctx" $. */}}
{{- define "omnirag.redisEgressRule" -}}
{{- $v := .ctx.Values.redis -}}
{{- if $v.enabled }}
- to:
    {{- include "omnirag.peer" (dict "ctx" .ctx "component" "redis") | nindent 4 }}
  ports:
    - protocol: TCP
      port: 6379
{{- else if $v.external.existingSecret }}
- to:
    {{- if $v.external.networkPolicyPeers }}
    {{- toYaml $v.external.networkPolicyPeers | nindent 4 }}
    {{- else }}
    - ipBlock:
        cidr: 0.0.0.0/0
        except:
          {{- include "omnirag.blockedCIDRs" .ctx | fromJsonArray | toYaml | nindent 10 }}
    {{- end }}
  ports:
    - protocol: TCP
      port: {{ $v.external.port }}
{{- end }}
{{- end -}}

{{/* Ingress rule that lets Prometheus scrape a port: dict "ctx" $ "port" 8000. */}}
{{- define "omnirag.prometheusIngressRule" -}}
{{- $p := .ctx.Values.networkPolicy.prometheus -}}
{{- if $p.enabled }}
- from:
    - namespaceSelector:
        {{- toYaml $p.namespaceSelector | nindent 8 }}
      {{- with $p.podSelector }}
      podSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  ports:
    - protocol: TCP
      port: {{ .port }}
{{- end }}
{{- end -}}

{{/* Peer entry of the ingress controller. */}}
{{- define "omnirag.ingressControllerPeer" -}}
{{- $ic := .Values.networkPolicy.ingressController -}}
- namespaceSelector:
    {{- toYaml $ic.namespaceSelector | nindent 4 }}
  {{- with $ic.podSelector }}
  podSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Environment of an indexer run or worker. dict "ctx" $ "values" .Values.indexer */}}
{{- define "omnirag.indexer.env" -}}
{{- $ := .ctx -}}
{{- include "omnirag.baseEnv" (dict "prefix" "INDEXER_" "port" 0) }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: INDEXER_LOG_LEVEL
  value: INFO
- name: INDEXER_INDEX_ROOT
  value: {{ include "omnirag.indexDir" $ }}
- name: INDEXER_CONFIG
  value: {{ include "omnirag.kbConfigPath" $ }}
- name: INDEXER_UPLOADS_DIR
  value: {{ include "omnirag.uploadsDir" $ }}
- name: INDEXER_EMBEDDER_URL
  value: {{ include "omnirag.embedderUrl" $ | quote }}
{{- include "omnirag.redisEnv" (dict "ctx" $ "name" "INDEXER_REDIS_URL") }}
{{- include "omnirag.serviceTokenEnv" (dict "ctx" $ "prefix" "INDEXER_") }}
{{- include "omnirag.userEnv" . }}
{{- end -}}

{{/* Volume mounts of an indexer run or worker: dict "ctx" $ "values" .Values.indexer "withUploads" bool */}}
{{- define "omnirag.indexer.volumeMounts" -}}
{{- $ := .ctx -}}
- name: tmp
  mountPath: /tmp
- name: index
  mountPath: {{ include "omnirag.indexDir" $ }}
  {{- with include "omnirag.sharedSubPath" (dict "ctx" $ "volume" "index") }}
  {{ . }}
  {{- end }}
- name: knowledge-bases
  mountPath: {{ include "omnirag.kbConfigDir" $ }}
  readOnly: true
{{- if .withUploads }}
# The gateway writes uploads; the worker reads each one and removes it once its version is published.
- name: uploads
  mountPath: {{ include "omnirag.uploadsDir" $ }}
  {{- with include "omnirag.sharedSubPath" (dict "ctx" $ "volume" "uploads") }}
  {{ . }}
  {{- end }}
{{- end }}
{{- with include "omnirag.redisSecretMount" $ | trim }}
{{ . }}
{{- end }}
{{- with include "omnirag.serviceTokenMount" $ | trim }}
{{ . }}
{{- end }}
{{- with .values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes of an indexer run or worker: dict "ctx" $ "values" .Values.indexer "tmpSize" "4Gi" "withUploads" bool */}}
{{- define "omnirag.indexer.volumes" -}}
{{- $ := .ctx -}}
{{ include "omnirag.tmpVolume" (dict "size" .tmpSize) }}
{{ include "omnirag.sharedVolume" (dict "ctx" $ "volume" "index") }}
- name: knowledge-bases
  configMap:
    name: {{ include "omnirag.componentName" (dict "ctx" $ "component" "indexer") }}
{{- if .withUploads }}
{{ include "omnirag.sharedVolume" (dict "ctx" $ "volume" "uploads") }}
{{- end }}
{{- with include "omnirag.redisSecretVolume" $ | trim }}
{{ . }}
{{- end }}
{{- with include "omnirag.serviceTokenVolume" $ | trim }}
{{ . }}
{{- end }}
{{- with .values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The Job spec of one knowledge base's indexing run, shared by its CronJob (jobTemplate.spec) and its
first run after install: dict "ctx" $ "component" "indexer" "values" .Values.indexer "labels" {...}
"kb" <the knowledge base> "waitEmbedder" <seconds> "annotations" {pod annotations}
*/}}
{{- define "omnirag.indexer.jobSpec" -}}
{{- $ := .ctx -}}
{{- $v := .values -}}
backoffLimit: {{ $v.backoffLimit }}
activeDeadlineSeconds: {{ $v.activeDeadlineSeconds }}
template:
  metadata:
    {{- with include "omnirag.podMetadata" . | trim }}{{ . | nindent 4 }}{{- end }}
  spec:
    {{- with include "omnirag.podCommon" . | trim }}{{ . | nindent 4 }}{{- end }}
    restartPolicy: Never
    containers:
      - name: indexer
        {{- include "omnirag.containerImage" (dict "ctx" $ "image" $v.image) | nindent 8 }}
        command:
          - python
          - -m
          - omnirag.indexer
          - run
          - --kb
          - {{ .kb.name | quote }}
          - --config
          - {{ include "omnirag.kbConfigPath" $ }}
          - --wait-embedder
          - {{ .waitEmbedder | int | toString | quote }}
        env:
          {{- with include "omnirag.indexer.env" . | trim }}{{ . | nindent 10 }}{{- end }}
        resources:
          {{- toYaml $v.resources | nindent 10 }}
        securityContext:
          {{- include "omnirag.containerSecurityContext" . | nindent 10 }}
        volumeMounts:
          {{- with include "omnirag.indexer.volumeMounts" . | trim }}{{ . | nindent 10 }}{{- end }}
    volumes:
      {{- with include "omnirag.indexer.volumes" (merge (dict "tmpSize" $v.tmpSizeLimit) .) | trim }}{{ . | nindent 6 }}{{- end }}
{{- end -}}

{{/* A download Job's spec; its hash names the Job. dict "ctx" $ "component" "model-download" "values"
.Values.modelDownload "annotations" {...}, and "specKey" (its key of the ConfigMap, default models.yaml)
and "labels" {...} for a chat model's own Job. */}}
{{- define "omnirag.modelDownload.jobSpec" -}}
{{- $ := .ctx -}}
{{- $v := .values -}}
{{- $c := . -}}
spec:
  backoffLimit: {{ $v.backoffLimit }}
  {{- if not (kindIs "invalid" $v.activeDeadlineSeconds) }}
  activeDeadlineSeconds: {{ $v.activeDeadlineSeconds }}
  {{- end }}
  {{- if not (kindIs "invalid" $v.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ $v.ttlSecondsAfterFinished }}
  {{- end }}
  template:
    metadata:
      {{- with include "omnirag.podMetadata" $c | trim }}{{ . | nindent 6 }}{{- end }}
    spec:
      {{- with include "omnirag.podCommon" $c | trim }}{{ . | nindent 6 }}{{- end }}
      restartPolicy: OnFailure
      containers:
        - name: model-download
          {{- include "omnirag.containerImage" (dict "ctx" $ "image" $v.image) | nindent 10 }}
          command: ["python", "-m", "omnirag.model_download"]
          env:
            {{- with include "omnirag.baseEnv" (dict "prefix" "MODEL_DOWNLOAD_" "port" 0) | trim }}{{ . | nindent 12 }}{{- end }}
            - name: HF_HOME
              value: /tmp/.cache/huggingface
            - name: MODELSCOPE_CACHE
              value: /tmp/.cache/modelscope
            - name: MODEL_DOWNLOAD_SPEC
              value: /etc/omnirag/model-download/{{ .specKey | default "models.yaml" }}
            - name: MODEL_DOWNLOAD_ROOT
              value: {{ include "omnirag.modelsDir" $ }}
            {{- with $v.hfEndpoint }}
            - name: HF_ENDPOINT
              value: {{ . | quote }}
            {{- end }}
            {{- if $v.hfToken.existingSecret }}
            - name: MODEL_DOWNLOAD_HF_TOKEN_FILE
              value: /etc/omnirag/hf-token/token
            {{- end }}
            {{- if $v.modelscopeToken.existingSecret }}
            - name: MODEL_DOWNLOAD_MODELSCOPE_TOKEN_FILE
              value: /etc/omnirag/modelscope-token/token
            {{- end }}
            {{- with include "omnirag.userEnv" $c | trim }}{{ . | nindent 12 }}{{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "omnirag.containerSecurityContext" $c | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: models
              mountPath: {{ include "omnirag.modelsDir" $ }}
              {{- with include "omnirag.sharedSubPath" (dict "ctx" $ "volume" "models") }}
              {{ . }}
              {{- end }}
            - name: spec
              mountPath: /etc/omnirag/model-download
              readOnly: true
            {{- if $v.hfToken.existingSecret }}
            - name: hf-token
              mountPath: /etc/omnirag/hf-token
              readOnly: true
            {{- end }}
            {{- if $v.modelscopeToken.existingSecret }}
            - name: modelscope-token
              mountPath: /etc/omnirag/modelscope-token
              readOnly: true
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- with include "omnirag.tmpVolume" (dict "size" $v.tmpSizeLimit) | trim }}{{ . | nindent 8 }}{{- end }}
        {{- with include "omnirag.sharedVolume" (dict "ctx" $ "volume" "models") | trim }}{{ . | nindent 8 }}{{- end }}
        # The shared ConfigMap: MODEL_DOWNLOAD_SPEC names this Job's key in it.
        - name: spec
          configMap:
            name: {{ include "omnirag.componentName" (dict "ctx" $ "component" "model-download") }}
        {{- if $v.hfToken.existingSecret }}
        # Tokens are files, not environment variables: they stay out of `kubectl describe` and /proc/*/environ.
        - name: hf-token
          secret:
            secretName: {{ $v.hfToken.existingSecret }}
            defaultMode: 0440
            items:
              - key: {{ $v.hfToken.existingSecretKey }}
                path: token
        {{- end }}
        {{- if $v.modelscopeToken.existingSecret }}
        - name: modelscope-token
          secret:
            secretName: {{ $v.modelscopeToken.existingSecret }}
            defaultMode: 0440
            items:
              - key: {{ $v.modelscopeToken.existingSecretKey }}
                path: token
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/*
The chat models (`models`), each with its effective settings, as JSON {"models": [...]}; one item:
  name, slug (the name with "." as "-", for object names), component ("vllm-<slug>"), default,
  capabilities, internal (served by vLLM in the release), servedModelName (what vLLM serves and the
  gateway sends upstream), baseUrl, key ({"name","secret","key"} of the key's file in the gateway, or
  {}), external (the entry's external map), values (internal: the `vllm:` section with the entry's
  own keys over it; `gpu` and `serve` merged key by key), modelPath, download (whether a Job fetches it).
*/}}
{{- define "omnirag.models" -}}
{{- $ := . -}}
{{- $V := .Values -}}
{{- $out := list -}}
{{- $override := list "replicas" "resources" "autoscaling" "pdb" "startupProbe" "livenessProbe" "readinessProbe" "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" "priorityClassName" "runtimeClassName" "podAnnotations" "podLabels" "env" "extraEnvVars" "extraVolumes" "extraVolumeMounts" -}}
{{- range $entry := $V.models -}}
{{- $slug := $entry.name | replace "." "-" -}}
{{- $m := dict "name" $entry.name "slug" $slug "component" (printf "vllm-%s" $slug) "default" (default false $entry.default) "capabilities" $entry.capabilities -}}
{{- $_ := set $m "thinkingOff" (index $entry "thinkingOff") -}}
{{- $_ := set $m "maxTokensParam" ($entry.maxTokensParam | default "max_tokens") -}}
{{- if hasKey $entry "reasoningBudget" }}{{ $_ := set $m "reasoningBudget" $entry.reasoningBudget }}{{ end -}}
{{- if hasKey $entry "answerTokens" }}{{ $_ := set $m "answerTokens" $entry.answerTokens }}{{ end -}}
{{- if hasKey $entry "contextTokens" }}{{ $_ := set $m "contextTokens" $entry.contextTokens }}{{ end -}}
{{- with $entry.sampling }}{{ $_ := set $m "sampling" . }}{{ end -}}
{{- with $entry.languages }}{{ $_ := set $m "languages" . }}{{ end -}}
{{- if $entry.external -}}
{{- $x := $entry.external -}}
{{- $_ := set $m "internal" false -}}
{{- $_ := set $m "external" $x -}}
{{- $_ := set $m "baseUrl" $x.baseUrl -}}
{{- $_ := set $m "servedModelName" ($x.model | default $entry.name) -}}
{{- $_ := set $m "download" false -}}
{{- if $x.existingSecret -}}
{{- $_ := set $m "key" (dict "name" (printf "llm-%s" $slug) "secret" $x.existingSecret "key" ($x.existingSecretKey | default "api-key")) -}}
{{- else -}}
{{- $_ := set $m "key" (dict) -}}
{{- end -}}
{{- else -}}
{{- $v := deepCopy (omit $V.vllm "serve") -}}
{{- range $k := $override -}}
{{- if hasKey $entry $k }}{{ $_ := set $v $k (deepCopy (index $entry $k)) }}{{ end -}}
{{- end -}}
{{- $_ := set $v "gpu" (mergeOverwrite (deepCopy $V.vllm.gpu) (deepCopy (default (dict) $entry.gpu))) -}}
{{- $_ := set $v "serve" (mergeOverwrite (deepCopy $V.vllm.serve) (deepCopy (default (dict) $entry.vllm))) -}}
{{- $_ := set $m "values" $v -}}
{{- /* The window the gateway budgets prompts in: vLLM's --max-model-len when given as a number. */ -}}
{{- $len := $v.serve.maxModelLen -}}
{{- if and (not (hasKey $m "contextTokens")) (or (kindIs "float64" $len) (kindIs "int64" $len) (kindIs "int" $len)) }}{{ $_ := set $m "contextTokens" $len }}{{ end -}}
{{- $_ := set $m "internal" true -}}
{{- $_ := set $m "servedModelName" ($entry.servedModelName | default $entry.name) -}}
{{- $_ := set $m "modelPath" ($entry.modelPath | default (include "omnirag.modelDir" (dict "ctx" $ "name" $entry.name))) -}}
{{- $_ := set $m "download" (and $V.modelDownload.enabled (not $entry.modelPath) (not (empty $entry.source))) -}}
{{- $_ := set $m "source" (default (dict) $entry.source) -}}
{{- $_ := set $m "onVolume" (not $entry.modelPath) -}}
{{- $_ := set $m "baseUrl" (printf "http://%s:%d/v1" (include "omnirag.componentName" (dict "ctx" $ "component" (printf "vllm-%s" $slug))) (int $V.vllm.service.port)) -}}
{{- if $V.vllm.apiKey.existingSecret -}}
{{- $_ := set $m "key" (dict "name" "vllm-api-key" "secret" $V.vllm.apiKey.existingSecret "key" $V.vllm.apiKey.existingSecretKey) -}}
{{- else -}}
{{- $_ := set $m "key" (dict) -}}
{{- end -}}
{{- end -}}
{{- $out = append $out $m -}}
{{- end -}}
{{- toJson (dict "models" $out) -}}
{{- end -}}

{{/* The models served by vLLM in the release (a list of the items of omnirag.models). */}}
{{- define "omnirag.internalModels" -}}
{{- $in := list -}}
{{- range (include "omnirag.models" . | fromJson).models -}}
{{- if .internal }}{{ $in = append $in . }}{{ end -}}
{{- end -}}
{{- toJson (dict "models" $in) -}}
{{- end -}}

{{/*
The gateway's models file (GATEWAY_MODELS_FILE): the registry's entries (omnirag.gateway.registry),
from the same values as the vLLM Deployments: each internal model at its Service.
*/}}
{{- define "omnirag.gatewayModels" -}}
{{- $list := list -}}
{{- range (include "omnirag.models" . | fromJson).models -}}
{{- $e := dict "name" .name "base_url" .baseUrl "upstream_model" .servedModelName "capabilities" .capabilities "max_tokens_param" .maxTokensParam "thinking_off" .thinkingOff -}}
{{- if hasKey . "reasoningBudget" }}{{ $_ := set $e "reasoning_budget" (int .reasoningBudget) }}{{ end -}}
{{- if hasKey . "answerTokens" }}{{ $_ := set $e "answer_tokens" (int .answerTokens) }}{{ end -}}
{{- if hasKey . "contextTokens" }}{{ $_ := set $e "context_tokens" (int .contextTokens) }}{{ end -}}
{{- with .sampling }}{{ $_ := set $e "sampling" . }}{{ end -}}
{{- with .languages }}{{ $_ := set $e "languages" . }}{{ end -}}
{{- with .key }}{{ $_ := set $e "api_key_file" (include "omnirag.secretFilePath" .) }}{{ end -}}
{{- $list = append $list $e -}}
{{- end -}}
{{- toYaml $list -}}
{{- end -}}

{{/* The distinct key files the gateway mounts for the models (a JSON list of {"name","secret","key"}). */}}
{{- define "omnirag.gatewayModelKeys" -}}
{{- $keys := list -}}
{{- $seen := list -}}
{{- range (include "omnirag.models" . | fromJson).models -}}
{{- if and .key (not (has .key.name $seen)) -}}
{{- $keys = append $keys .key -}}
{{- $seen = append $seen .key.name -}}
{{- end -}}
{{- end -}}
{{- toJson $keys -}}
{{- end -}}

{{/* The download spec of one chat model (YAML, a `models:` list of one): dict "ctx" $ "model" <item of omnirag.models>. */}}
{{- define "omnirag.modelDownload.modelSpec" -}}
{{- $s := .model.source -}}
{{- $m := dict "name" .model.name "source" ($s.source | default "huggingface") "repo" $s.repo "dir" .model.name -}}
{{- if $s.revision }}{{- $_ := set $m "revision" $s.revision }}{{- end -}}
{{- if $s.endpoint }}{{- $_ := set $m "endpoint" $s.endpoint }}{{- end -}}
{{- if $s.allowPatterns }}{{- $_ := set $m "allowPatterns" $s.allowPatterns }}{{- end -}}
{{- if $s.ignorePatterns }}{{- $_ := set $m "ignorePatterns" $s.ignorePatterns }}{{- end -}}
{{- toYaml (dict "models" (list $m)) -}}
{{- end -}}

{{/* GATEWAY_DEFAULT_MODEL: gateway.defaultModel, else the entry with `default: true` ("" when neither). */}}
{{- define "omnirag.defaultModel" -}}
{{- $name := .Values.gateway.defaultModel -}}
{{- if not $name -}}
{{- range .Values.models }}{{ if .default }}{{ $name = .name }}{{ end }}{{ end -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* TCP port of a URL (explicit port, else 443 for https, 80 for http). */}}
{{- define "omnirag.urlPort" -}}
{{- $u := urlParse . -}}
{{- $hostPort := splitList ":" $u.host -}}
{{- if gt (len $hostPort) 1 -}}
{{- last $hostPort -}}
{{- else if eq $u.scheme "http" -}}
80
{{- else -}}
443
{{- end -}}
{{- end -}}
