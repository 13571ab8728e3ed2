{{/*
Chat models: the `models` list with its effective settings, and what the gateway and the
model-download Jobs make of it.
*/}}

{{/*
The marker the model-download Job writes into a model's directory after every file is complete;
pods that serve the model wait for it.
*/}}
{{- define "omnirag.downloadMarker" -}}.omnirag-download.json{{- end -}}

{{/*
An init container that waits until a model's download is complete: dict "ctx" $ "values"
.Values.x (for image and security context) "model" "name" "image" .Values.x.image.
It runs the serving image itself (it has a shell), so no extra image is pulled.
*/}}
{{- define "omnirag.waitForModelContainer" -}}
{{- $marker := printf "%s/%s" (include "omnirag.modelDir" (dict "ctx" .ctx "name" .model)) (include "omnirag.downloadMarker" .ctx) -}}
- name: wait-for-model
  {{- include "omnirag.containerImage" (dict "ctx" .ctx "image" .image) | nindent 2 }}
  command:
    - sh
    - -c
    - |
      marker="$MARKER"
      echo "waiting for $marker (written by the model-download Job when every file is complete)"
      until [ -f "$marker" ]; do sleep 10; done
      echo "model ready: $(cat "$marker")"
  env:
    - name: MARKER
      value: {{ $marker | quote }}
  securityContext:
    {{- include "omnirag.containerSecurityContext" . | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {cpu: 100m, memory: 64Mi}
  volumeMounts:
    - name: models
      mountPath: {{ include "omnirag.modelsDir" .ctx }}
      {{- with include "omnirag.sharedSubPath" (dict "ctx" .ctx "volume" "models") }}
      {{ . }}
      {{- end }}
      readOnly: true
{{- end -}}

{{/* The models spec handed to the download Job (YAML, a `models:` list). */}}
{{- define "omnirag.modelDownload.spec" -}}
{{- $models := list -}}
{{- range .Values.modelDownload.models -}}
{{- $m := dict "name" .name "source" (.source | default "huggingface") "repo" .repo "dir" .name -}}
{{- if .revision }}{{- $_ := set $m "revision" .revision }}{{- end -}}
{{- if .endpoint }}{{- $_ := set $m "endpoint" .endpoint }}{{- end -}}
{{- if .allowPatterns }}{{- $_ := set $m "allowPatterns" .allowPatterns }}{{- end -}}
{{- if .ignorePatterns }}{{- $_ := set $m "ignorePatterns" .ignorePatterns }}{{- end -}}
{{- $models = append $models $m -}}
{{- end -}}
{{- toYaml (dict "models" $models) -}}
{{- end -}}

{{/* A download Job's spec; its hash names the Job. dict "ctx" $ "component" "model-download" "values"
.Values.modelDownload "annotations" {...}, and "specKey" (its key of the ConfigMap, default models.yaml)
and "labels" {...} for a chat model's own Job. */}}
{{- define "omnirag.modelDownload.jobSpec" -}}
{{- $ := .ctx -}}
{{- $v := .values -}}
{{- $c := . -}}
spec:
  backoffLimit: {{ $v.backoffLimit }}
  {{- if not (kindIs "invalid" $v.activeDeadlineSeconds) }}
  activeDeadlineSeconds: {{ $v.activeDeadlineSeconds }}
  {{- end }}
  {{- if not (kindIs "invalid" $v.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ $v.ttlSecondsAfterFinished }}
  {{- end }}
  template:
    metadata:
      {{- with include "omnirag.podMetadata" $c | trim }}{{ . | nindent 6 }}{{- end }}
    spec:
      {{- with include "omnirag.podCommon" $c | trim }}{{ . | nindent 6 }}{{- end }}
      restartPolicy: OnFailure
      containers:
        - name: model-download
          {{- include "omnirag.containerImage" (dict "ctx" $ "image" $v.image) | nindent 10 }}
          command: ["python", "-m", "omnirag.model_download"]
          env:
            {{- with include "omnirag.baseEnv" (dict "prefix" "MODEL_DOWNLOAD_" "port" 0) | trim }}{{ . | nindent 12 }}{{- end }}
            - name: HF_HOME
              value: /tmp/.cache/huggingface
            - name: MODELSCOPE_CACHE
              value: /tmp/.cache/modelscope
            - name: MODEL_DOWNLOAD_SPEC
              value: /etc/omnirag/model-download/{{ .specKey | default "models.yaml" }}
            - name: MODEL_DOWNLOAD_ROOT
              value: {{ include "omnirag.modelsDir" $ }}
            {{- with $v.hfEndpoint }}
            - name: HF_ENDPOINT
              value: {{ . | quote }}
            {{- end }}
            {{- if $v.hfToken.existingSecret }}
            - name: MODEL_DOWNLOAD_HF_TOKEN_FILE
              value: /etc/omnirag/hf-token/token
            {{- end }}
            {{- if $v.modelscopeToken.existingSecret }}
            - name: MODEL_DOWNLOAD_MODELSCOPE_TOKEN_FILE
              value: /etc/omnirag/modelscope-token/token
            {{- end }}
            {{- with include "omnirag.userEnv" $c | trim }}{{ . | nindent 12 }}{{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "omnirag.containerSecurityContext" $c | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: models
              mountPath: {{ include "omnirag.modelsDir" $ }}
              {{- with include "omnirag.sharedSubPath" (dict "ctx" $ "volume" "models") }}
              {{ . }}
              {{- end }}
            - name: spec
              mountPath: /etc/omnirag/model-download
              readOnly: true
            {{- if $v.hfToken.existingSecret }}
            - name: hf-token
              mountPath: /etc/omnirag/hf-token
              readOnly: true
            {{- end }}
            {{- if $v.modelscopeToken.existingSecret }}
            - name: modelscope-token
              mountPath: /etc/omnirag/modelscope-token
              readOnly: true
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- with include "omnirag.tmpVolume" (dict "size" $v.tmpSizeLimit) | trim }}{{ . | nindent 8 }}{{- end }}
        {{- with include "omnirag.sharedVolume" (dict "ctx" $ "volume" "models") | trim }}{{ . | nindent 8 }}{{- end }}
        # The shared ConfigMap: MODEL_DOWNLOAD_SPEC names this Job's key in it.
        - name: spec
          configMap:
            name: {{ include "omnirag.componentName" (dict "ctx" $ "component" "model-download") }}
        {{- if $v.hfToken.existingSecret }}
        # Tokens are files, not environment variables: they stay out of `kubectl describe` and /proc/*/environ.
        - name: hf-token
          secret:
            secretName: {{ $v.hfToken.existingSecret }}
            defaultMode: 0440
            items:
              - key: {{ $v.hfToken.existingSecretKey }}
                path: token
        {{- end }}
        {{- if $v.modelscopeToken.existingSecret }}
        - name: modelscope-token
          secret:
            secretName: {{ $v.modelscopeToken.existingSecret }}
            defaultMode: 0440
            items:
              - key: {{ $v.modelscopeToken.existingSecretKey }}
                path: token
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/*
The chat models (`models`), each with its effective settings, as JSON {"models": [...]}; one item:
  name, slug (the name with "." as "-", for object names), component ("vllm-<slug>"), default,
  capabilities, internal (served by vLLM in the release), servedModelName (what vLLM serves and the
  gateway sends upstream), baseUrl, key ({"name","secret","key"} of the key's file in the gateway, or
  {}), external (the entry's external map), values (internal: the `vllm:` section with the entry's
  own keys over it; `gpu` and `serve` merged key by key), modelPath, download (whether a Job fetches it).
*/}}
{{- define "omnirag.models" -}}
{{- $ := . -}}
{{- $V := .Values -}}
{{- $out := list -}}
{{- $override := list "replicas" "resources" "autoscaling" "pdb" "startupProbe" "livenessProbe" "readinessProbe" "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" "priorityClassName" "runtimeClassName" "podAnnotations" "podLabels" "env" "extraEnvVars" "extraVolumes" "extraVolumeMounts" -}}
{{- range $entry := $V.models -}}
{{- $slug := $entry.name | replace "." "-" -}}
{{- $m := dict "name" $entry.name "slug" $slug "component" (printf "vllm-%s" $slug) "default" (default false $entry.default) "capabilities" $entry.capabilities -}}
{{- $_ := set $m "thinkingOff" (index $entry "thinkingOff") -}}
{{- $_ := set $m "maxTokensParam" ($entry.maxTokensParam | default "max_tokens") -}}
{{- if hasKey $entry "reasoningBudget" }}{{ $_ := set $m "reasoningBudget" $entry.reasoningBudget }}{{ end -}}
{{- if hasKey $entry "answerTokens" }}{{ $_ := set $m "answerTokens" $entry.answerTokens }}{{ end -}}
{{- if hasKey $entry "contextTokens" }}{{ $_ := set $m "contextTokens" $entry.contextTokens }}{{ end -}}
{{- with $entry.sampling }}{{ $_ := set $m "sampling" . }}{{ end -}}
{{- with $entry.languages }}{{ $_ := set $m "languages" . }}{{ end -}}
{{- if $entry.external -}}
{{- $x := $entry.external -}}
{{- $_ := set $m "internal" false -}}
{{- $_ := set $m "external" $x -}}
{{- $_ := set $m "baseUrl" $x.baseUrl -}}
{{- $_ := set $m "servedModelName" ($x.model | default $entry.name) -}}
{{- $_ := set $m "download" false -}}
{{- if $x.existingSecret -}}
{{- $_ := set $m "key" (dict "name" (printf "llm-%s" $slug) "secret" $x.existingSecret "key" ($x.existingSecretKey | default "api-key")) -}}
{{- else -}}
{{- $_ := set $m "key" (dict) -}}
{{- end -}}
{{- else -}}
{{- $v := deepCopy (omit $V.vllm "serve") -}}
{{- range $k := $override -}}
{{- if hasKey $entry $k }}{{ $_ := set $v $k (deepCopy (index $entry $k)) }}{{ end -}}
{{- end -}}
{{- $_ := set $v "gpu" (mergeOverwrite (deepCopy $V.vllm.gpu) (deepCopy (default (dict) $entry.gpu))) -}}
{{- $_ := set $v "serve" (mergeOverwrite (deepCopy $V.vllm.serve) (deepCopy (default (dict) $entry.vllm))) -}}
{{- $_ := set $m "values" $v -}}
{{- /* The window the gateway budgets prompts in: vLLM's --max-model-len when given as a number. */ -}}
{{- $len := $v.serve.maxModelLen -}}
{{- if and (not (hasKey $m "contextTokens")) (or (kindIs "float64" $len) (kindIs "int64" $len) (kindIs "int" $len)) }}{{ $_ := set $m "contextTokens" $len }}{{ end -}}
{{- $_ := set $m "internal" true -}}
{{- $_ := set $m "servedModelName" ($entry.servedModelName | default $entry.name) -}}
{{- $_ := set $m "modelPath" ($entry.modelPath | default (include "omnirag.modelDir" (dict "ctx" $ "name" $entry.name))) -}}
{{- $_ := set $m "download" (and $V.modelDownload.enabled (not $entry.modelPath) (not (empty $entry.source))) -}}
{{- $_ := set $m "source" (default (dict) $entry.source) -}}
{{- $_ := set $m "onVolume" (not $entry.modelPath) -}}
{{- $_ := set $m "baseUrl" (printf "http://%s:%d/v1" (include "omnirag.componentName" (dict "ctx" $ "component" (printf "vllm-%s" $slug))) (int $V.vllm.service.port)) -}}
{{- if $V.vllm.apiKey.existingSecret -}}
{{- $_ := set $m "key" (dict "name" "vllm-api-key" "secret" $V.vllm.apiKey.existingSecret "key" $V.vllm.apiKey.existingSecretKey) -}}
{{- else -}}
{{- $_ := set $m "key" (dict) -}}
{{- end -}}
{{- end -}}
{{- $out = append $out $m -}}
{{- end -}}
{{- toJson (dict "models" $out) -}}
{{- end -}}

{{/* The models served by vLLM in the release (a list of the items of omnirag.models). */}}
{{- define "omnirag.internalModels" -}}
{{- $in := list -}}
{{- range (include "omnirag.models" . | fromJson).models -}}
{{- if .internal }}{{ $in = append $in . }}{{ end -}}
{{- end -}}
{{- toJson (dict "models" $in) -}}
{{- end -}}

{{/*
The gateway's models file (GATEWAY_MODELS_FILE): the registry's entries (omnirag.gateway.registry),
from the same values as the vLLM Deployments: each internal model at its Service.
*/}}
{{- define "omnirag.gatewayModels" -}}
{{- $list := list -}}
{{- range (include "omnirag.models" . | fromJson).models -}}
{{- $e := dict "name" .name "base_url" .baseUrl "upstream_model" .servedModelName "capabilities" .capabilities "max_tokens_param" .maxTokensParam "thinking_off" .thinkingOff -}}
{{- if hasKey . "reasoningBudget" }}{{ $_ := set $e "reasoning_budget" (int .reasoningBudget) }}{{ end -}}
{{- if hasKey . "answerTokens" }}{{ $_ := set $e "answer_tokens" (int .answerTokens) }}{{ end -}}
{{- if hasKey . "contextTokens" }}{{ $_ := set $e "context_tokens" (int .contextTokens) }}{{ end -}}
{{- with .sampling }}{{ $_ := set $e "sampling" . }}{{ end -}}
{{- with .languages }}{{ $_ := set $e "languages" . }}{{ end -}}
{{- with .key }}{{ $_ := set $e "api_key_file" (include "omnirag.secretFilePath" .) }}{{ end -}}
{{- $list = append $list $e -}}
{{- end -}}
{{- toYaml $list -}}
{{- end -}}

{{/* The distinct key files the gateway mounts for the models (a JSON list of {"name","secret","key"}). */}}
{{- define "omnirag.gatewayModelKeys" -}}
{{- $keys := list -}}
{{- $seen := list -}}
{{- range (include "omnirag.models" . | fromJson).models -}}
{{- if and .key (not (has .key.name $seen)) -}}
{{- $keys = append $keys .key -}}
{{- $seen = append $seen .key.name -}}
{{- end -}}
{{- end -}}
{{- toJson $keys -}}
{{- end -}}

{{/* The download spec of one chat model (YAML, a `models:` list of one): dict "ctx" $ "model" <item of omnirag.models>. */}}
{{- define "omnirag.modelDownload.modelSpec" -}}
{{- $s := .model.source -}}
{{- $m := dict "name" .model.name "source" ($s.source | default "huggingface") "repo" $s.repo "dir" .model.name -}}
{{- if $s.revision }}{{- $_ := set $m "revision" $s.revision }}{{- end -}}
{{- if $s.endpoint }}{{- $_ := set $m "endpoint" $s.endpoint }}{{- end -}}
{{- if $s.allowPatterns }}{{- $_ := set $m "allowPatterns" $s.allowPatterns }}{{- end -}}
{{- if $s.ignorePatterns }}{{- $_ := set $m "ignorePatterns" $s.ignorePatterns }}{{- end -}}
{{- toYaml (dict "models" (list $m)) -}}
{{- end -}}

{{/* GATEWAY_DEFAULT_MODEL: gateway.defaultModel, else the entry with `default: true` ("" when neither). */}}
{{- define "omnirag.defaultModel" -}}
{{- $name := .Values.gateway.defaultModel -}}
{{- if not $name -}}
{{- range .Values.models }}{{ if .default }}{{ $name = .name }}{{ end }}{{ end -}}
{{- end -}}
{{- $name -}}
{{- end -}}
