{{/*
Pod fields every workload shares: security contexts, service account and scheduling,
single-node mode's affinity, probes.
*/}}

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
