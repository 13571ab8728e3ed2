{{/*
Secrets as files: a Secret's key mounted read-only, the service token, the gateway's and
the UI's Secrets (the ones the chart generates included).
*/}}

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
