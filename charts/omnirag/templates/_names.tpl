{{/*
Helpers of the omnirag chart live in templates/_*.tpl, one file per concern. Every helper is
named omnirag.*; the ones that need a component take a dict: "ctx" (the root context, $) plus the
keys they name.

This file holds the names: the chart's name, the release's prefix, a component's object name,
the ServiceAccount.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "omnirag.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: fullnameOverride, else "<release>-<chart>", else just the release
when it already contains the chart name. Kept to 40 characters so that "<prefix>-<component>" stays
short enough for every kind (CronJob names stop at 52).
*/}}
{{- define "omnirag.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "omnirag.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of a component's objects: dict "ctx" $ "component" "gateway". */}}
{{- define "omnirag.componentName" -}}
{{- printf "%s-%s" (include "omnirag.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The ServiceAccount the pods run as. */}}
{{- define "omnirag.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "omnirag.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
