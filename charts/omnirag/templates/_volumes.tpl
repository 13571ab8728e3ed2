{{/*
Volumes: the shared volumes (models, index, uploads), their claims and mounts, who uses them,
the paths inside the pods.
*/}}

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
