{{/*
Object metadata: labels, annotations (commonAnnotations, checkov's skip annotations), the
metadata block of an object and of a pod template.
*/}}

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
