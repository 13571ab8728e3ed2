{{/*
Images: an image reference (registry, pinned tag, digest), a container's image lines, the
pods' pull secrets.
*/}}

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
