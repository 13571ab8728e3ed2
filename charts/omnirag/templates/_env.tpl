{{/*
Environment: what every omnirag process gets, and the user's env of a component.
*/}}

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
