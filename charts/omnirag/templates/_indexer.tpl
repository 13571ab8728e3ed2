{{/*
The indexer: its CronJob names, the environment, mounts and volumes of a run or the worker,
and the Job spec of one knowledge base's run.
*/}}

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
