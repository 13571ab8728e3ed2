{{/*
NetworkPolicy rules and peers: egress to the internet (never cloud metadata), to the
services, to Redis, to a URL's host; ingress from Prometheus and the ingress controller.
*/}}

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
