{{/*
Redis: whether there is one, its password Secret, its exporter, and how a service is handed
its URL and secret.
*/}}

{{/* Whether Redis is usable at all (in the release, or external): "true" or "". */}}
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
