{{/*
Endpoints: the base URLs the services find each other by, and the paths they serve to the
cluster only.
*/}}

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

{{/* Paths every service serves for the cluster only (metrics, probes): never routed from outside
by the Ingresses or the HTTPRoutes. A JSON list. */}}
{{- define "omnirag.privatePaths" -}}
{{- list "/metrics" "/readyz" "/healthz" | toJson -}}
{{- end -}}
