{{/* Names, labels and the pieces shared by the Triton Deployment and the engine-build Jobs. */}}

{{- define "prodsegmenter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prodsegmenter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Object name for a component: <fullname>-<component>. */}}
{{- define "prodsegmenter.componentName" -}}
{{- printf "%s-%s" (include "prodsegmenter.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prodsegmenter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "prodsegmenter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: prodsegmenter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of a component. Never add anything that changes between upgrades (such as
the model version): Deployment selectors are immutable. */}}
{{- define "prodsegmenter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "prodsegmenter.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "prodsegmenter.componentLabels" -}}
{{ include "prodsegmenter.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "prodsegmenter.image" -}}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}

{{- define "prodsegmenter.gatewayImage" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (default .Chart.AppVersion .Values.gateway.image.tag) }}
{{- end }}

{{/* The pool's default configName ("" = the portable config.pbtxt). */}}
{{- define "prodsegmenter.tritonConfigName" -}}
{{- if .Values.triton.gpu.enabled }}{{ .Values.triton.gpu.modelConfigName }}{{ else }}{{ .Values.triton.cpu.modelConfigName }}{{ end }}
{{- end }}

{{/* Triton's gRPC endpoint, as the gateway's PRODSEG_TRITON_GRPC_URL: dns:///<headless Service>:8001
(every pod, balanced per call) by default, else the ClusterIP Service's host:port. */}}
{{- define "prodsegmenter.tritonGrpcAddress" -}}
{{- if .Values.kserve.enabled }}
{{- printf "%s-predictor.%s.svc.cluster.local:80" (include "prodsegmenter.componentName" (dict "root" . "component" "triton")) .Release.Namespace }}
{{- else if .Values.triton.headlessService.enabled }}
{{- /* gRPC resolves every Triton pod's address and balances call by call (round_robin,
clients/triton_client.py grpc_target) instead of holding one connection to one pod. */}}
{{- printf "dns:///%s.%s.svc.cluster.local:8001" (include "prodsegmenter.componentName" (dict "root" . "component" "triton-headless")) .Release.Namespace }}
{{- else }}
{{- printf "%s.%s.svc.cluster.local:8001" (include "prodsegmenter.componentName" (dict "root" . "component" "triton")) .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "prodsegmenter.blobUri" -}}
{{- with .Values.modelStore.source.blob }}
{{- printf "%s/%s/%s" (trimSuffix "/" .accountUrl) .container (trimAll "/" .prefix) | trimSuffix "/" }}
{{- end }}
{{- end }}

{{/* The models list with every default filled in, as JSON (read it back with fromJsonArray):
name, version, versions (every version Triton serves, ascending: `versions`, else the abTest's
versions, else [version]), configName (the pool's default when absent), tensorrt (false unless
TensorRT is on for a GPU and for the model), engineVersion (default version). Refuses duplicate
names and a `version` that is not served. The A/B weights are not in it: changing a split must not
restart Triton (see prodsegmenter.abTests). */}}
{{- define "prodsegmenter.models" -}}
{{- $poolConfig := include "prodsegmenter.tritonConfigName" . }}
{{- $plans := and .Values.tensorrt.enabled .Values.triton.gpu.enabled }}
{{- $seen := dict }}
{{- $models := list }}
{{- range .Values.models }}
{{- if hasKey $seen .name }}
{{- fail (printf "models: %s is listed twice; each model name may appear once" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- $configName := ternary .configName $poolConfig (hasKey . "configName") }}
{{- $tensorrt := and $plans (ternary .tensorrt true (hasKey . "tensorrt")) }}
{{- $engineVersion := .engineVersion | default .version }}
{{- $versions := include "prodsegmenter.servedVersions" . | fromJsonArray }}
{{- $models = append $models (dict "name" .name "version" (int .version) "versions" $versions "configName" $configName "tensorrt" $tensorrt "engineVersion" (int $engineVersion)) }}
{{- end }}
{{- toJson $models }}
{{- end }}

{{/* The versions one entry of .Values.models serves, ascending, as a JSON list of integers:
`versions`, else its abTest's versions, else [version]. Fails when `version` or an abTest version
is not among them. Args: the entry. */}}
{{- define "prodsegmenter.servedVersions" -}}
{{- $asked := list .version }}
{{- if .versions }}
{{- $asked = .versions }}
{{- else if .abTest }}
{{- $asked = keys .abTest.weights }}
{{- end }}
{{- /* sprig sorts strings only: zero-pad so "10" sorts after "2" (and strip the zeros again: int
reads a leading 0 as octal). */}}
{{- $padded := list }}
{{- range $asked }}{{ $padded = append $padded (printf "%09d" (int .)) }}{{ end }}
{{- $versions := list }}
{{- range sortAlpha $padded }}{{ $versions = append $versions (int (regexReplaceAll "^0+" . "")) }}{{ end }}
{{- if not (has (int .version) $versions) }}
{{- fail (printf "models: %s: version %d must be one of the versions it serves %v (versions, or the abTest's versions)" .name (int .version) $versions) }}
{{- end }}
{{- if .abTest }}
{{- range $version, $_ := .abTest.weights }}
{{- if not (has (int $version) $versions) }}
{{- fail (printf "models: %s: abTest version %s is not among the versions it serves %v" $.name $version $versions) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $versions }}
{{- end }}

{{/* The A/B tests the deployment starts, as PRODSEG_AB_TESTS: {"<model>": {"<version>": percent}}
for every model with an abTest. Checks what the schema cannot: percents sum to 100, and KServe
(which runs no prepare step, so serves the store's one version) is off. */}}
{{- define "prodsegmenter.abTests" -}}
{{- $tests := dict }}
{{- range .Values.models }}
{{- if .abTest }}
{{- $total := 0 }}
{{- range $version, $percent := .abTest.weights }}{{ $total = add $total (int $percent) }}{{ end }}
{{- if ne (int $total) 100 }}
{{- fail (printf "models: %s: abTest.weights must sum to 100, got %d (%v)" .name (int $total) .abTest.weights) }}
{{- end }}
{{- if $.Values.kserve.enabled }}
{{- fail (printf "models: %s: abTest needs the chart's Triton Deployment (kserve.enabled=false): KServe serves the store's one version" .name) }}
{{- end }}
{{- $weights := dict }}
{{- range $version, $percent := .abTest.weights }}{{ $_ := set $weights $version (int $percent) }}{{ end }}
{{- $_ := set $tests .name $weights }}
{{- end }}
{{- end }}
{{- toJson $tests }}
{{- end }}

{{/* Non-empty when the Triton pods serve the JPEG wire: jpegWire.enabled, and on the CPU pool only
with an image that has OpenCV (the python decoder's; the stock NGC image has none). */}}
{{- define "prodsegmenter.jpegWireServed" -}}
{{- if and .Values.jpegWire.enabled (or .Values.triton.gpu.enabled .Values.jpegWire.cpuImageHasOpenCV) }}true{{ end }}
{{- end }}

{{/* The JPEG wire's companions (clients/wire.py), as a JSON list in the shape of
prodsegmenter.models' entries, to sync, prepare and load after the models: jpeg_decoder (the GPU
pool's configs/gpu.pbtxt, DALI; the CPU pool's config.pbtxt, OpenCV), mask_encoder, then
<model>_jpeg for each model whose `jpegWire` is not false (an ensemble of the three; on a CPU pool
whose models run configs/cpu.pbtxt, the wire's configs/cpu.pbtxt: decode, BLS, encode in one
step). Each serves version 1, the only one companions have. Empty when prodsegmenter.jpegWireServed is, or when no model wants its wire.
Refuses a model named like a companion (it would be synced and loaded twice). */}}
{{- define "prodsegmenter.jpegWireModels" -}}
{{- $companions := list }}
{{- if include "prodsegmenter.jpegWireServed" . }}
{{- $wires := list }}
{{- range .Values.models }}
{{- if ternary .jpegWire true (hasKey . "jpegWire") }}
{{- $wires = append $wires (printf "%s_jpeg" .name) }}
{{- end }}
{{- end }}
{{- /* The two steps serve the ensembles only: no ensemble, no steps. */}}
{{- $names := ternary (concat (list "jpeg_decoder" "mask_encoder") $wires) (list) (gt (len $wires) 0) }}
{{- range .Values.models }}
{{- if has .name $names }}
{{- fail (printf "models: %s is a JPEG-wire companion, which jpegWire.enabled loads beside the models; remove it from models" .name) }}
{{- end }}
{{- end }}
{{- $decoderConfig := ternary "gpu" "" .Values.triton.gpu.enabled }}
{{- /* A CPU pool on the python-backend variant runs each wire in one python step as well. */}}
{{- $wireConfig := ternary "cpu" "" (eq (include "prodsegmenter.tritonConfigName" .) "cpu") }}
{{- range $names }}
{{- $configName := ternary $decoderConfig (ternary $wireConfig "" (hasSuffix "_jpeg" .)) (eq . "jpeg_decoder") }}
{{- $companions = append $companions (dict "name" . "version" 1 "versions" (list 1) "configName" $configName "tensorrt" false) }}
{{- end }}
{{- end }}
{{- toJson $companions }}
{{- end }}

{{/* "name=version name=v1,v2" for files/model-store.sh (MODELS). Args: a list of models. */}}
{{- define "prodsegmenter.modelStoreList" -}}
{{- $pairs := list }}
{{- range . }}
{{- $versions := list }}
{{- range .versions }}{{ $versions = append $versions (toString (int .)) }}{{ end }}
{{- $pairs = append $pairs (printf "%s=%s" .name (join "," $versions)) }}
{{- end }}
{{- join " " $pairs }}
{{- end }}

{{/* The Secret with the gateway's API key store. */}}
{{- define "prodsegmenter.apiKeysSecret" -}}
{{- .Values.gateway.auth.existingSecret | default (include "prodsegmenter.componentName" (dict "root" . "component" "api-keys")) }}
{{- end }}

{{/* Pod security context of every pod: non-root, RuntimeDefault seccomp (restricted profile). A high
UID (10001) cannot collide with a host user; the images only need to read their files as "other". */}}
{{- define "prodsegmenter.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context of every container: nothing to escalate, read-only root. */}}
{{- define "prodsegmenter.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The init container that copies the listed model versions into the `models` volume, from Blob
Storage (workload identity) or from a PVC. Args: root, models ("name=version name=version"). */}}
{{- define "prodsegmenter.syncModelContainer" -}}
{{- $v := .root.Values -}}
{{- $store := $v.modelStore -}}
- name: sync-model
  image: {{ include "prodsegmenter.image" $store.sync.image }}
  imagePullPolicy: {{ $store.sync.image.pullPolicy }}
  command: ["sh", "/scripts/model-store.sh", "sync"]
  env:
    - {name: MODEL_SOURCE, value: {{ $store.source.type | quote }}}
    - {name: MODELS, value: {{ .models | quote }}}
    - {name: MODEL_DIR, value: /models}
    {{- if eq $store.source.type "blob" }}
    - {name: BLOB_ACCOUNT_URL, value: {{ $store.source.blob.accountUrl | quote }}}
    - {name: BLOB_CONTAINER, value: {{ $store.source.blob.container | quote }}}
    - {name: BLOB_PREFIX, value: {{ $store.source.blob.prefix | quote }}}
    {{- else }}
    - {name: STORE_DIR, value: /model-store}
    {{- end }}
    # az keeps its login here; the root filesystem is read-only.
    - {name: AZURE_CONFIG_DIR, value: /tmp/azure}
    - {name: HOME, value: /tmp}
  securityContext:
    {{- include "prodsegmenter.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- toYaml $store.sync.resources | nindent 4 }}
  volumeMounts:
    - {name: models, mountPath: /models}
    - {name: scripts, mountPath: /scripts, readOnly: true}
    - {name: tmp, mountPath: /tmp}
    {{- if eq $store.source.type "pvc" }}
    - name: model-store
      mountPath: /model-store
      readOnly: true
      {{- with $store.source.pvc.subPath }}
      subPath: {{ . }}
      {{- end }}
    {{- end }}
{{- end }}

{{/* Volumes the sync container needs (plus `tmp`, which every pod already has). */}}
{{- define "prodsegmenter.syncModelVolumes" -}}
- name: models
  emptyDir: {}
- name: scripts
  configMap:
    name: {{ include "prodsegmenter.componentName" (dict "root" . "component" "scripts") }}
    defaultMode: 0555
{{- if eq .Values.modelStore.source.type "pvc" }}
- name: model-store
  persistentVolumeClaim:
    claimName: {{ required "modelStore.source.pvc.claimName is required when modelStore.source.type is pvc" .Values.modelStore.source.pvc.claimName }}
    readOnly: true
{{- end }}
{{- end }}

{{/* Non-empty when the engine-build Jobs render: TensorRT on, a GPU, a blob store to upload to,
and Triton run by this chart (not KServe). */}}
{{- define "prodsegmenter.engineBuildsEnabled" -}}
{{- if and .Values.tensorrt.enabled .Values.triton.gpu.enabled (eq .Values.modelStore.source.type "blob") (not .Values.kserve.enabled) }}true{{ end }}
{{- end }}

{{/* Pod spec of an engine-build Job: sync one model version, build its plan on this pool's GPU,
upload it. Args: root, pool, model (an entry of prodsegmenter.models). */}}
{{- define "prodsegmenter.engineBuildPodSpec" -}}
{{- $root := .root }}
{{- $v := .root.Values }}
{{- $store := $v.modelStore }}
{{- $storeEnv := list (dict "name" "MODEL_NAME" "value" .model.name) (dict "name" "MODEL_VERSION" "value" (toString .model.engineVersion)) (dict "name" "MODEL_DIR" "value" "/models") -}}
restartPolicy: Never
serviceAccountName: {{ include "prodsegmenter.componentName" (dict "root" $root "component" "engine-builder") }}
automountServiceAccountToken: false
securityContext:
  {{- include "prodsegmenter.podSecurityContext" . | nindent 2 }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
nodeSelector:
  {{- toYaml .pool.nodeSelector | nindent 2 }}
{{- with $v.triton.gpu.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
initContainers:
  {{- include "prodsegmenter.syncModelContainer" (dict "root" $root "models" (printf "%s=%d" .model.name (int .model.engineVersion))) | nindent 2 }}
  - name: build-engine
    image: {{ include "prodsegmenter.image" $v.triton.image }}
    imagePullPolicy: {{ $v.triton.image.pullPolicy }}
    command: ["sh", "/scripts/build-engine.sh"]
    env:
      {{- toYaml $storeEnv | nindent 6 }}
      - {name: CONFIG_NAME, value: {{ .model.configName | quote }}}
      - {name: TRTEXEC, value: {{ $v.tensorrt.trtexecPath | quote }}}
      - {name: PLAN_DIR, value: /plans}
      - {name: HOME, value: /tmp}
    securityContext:
      {{- include "prodsegmenter.containerSecurityContext" . | nindent 6 }}
    resources:
      requests:
        {{- toYaml $v.tensorrt.resources.requests | nindent 8 }}
      limits:
        {{- toYaml $v.tensorrt.resources.limits | nindent 8 }}
        nvidia.com/gpu: 1
    volumeMounts:
      - {name: models, mountPath: /models, readOnly: true}
      - {name: plans, mountPath: /plans}
      - {name: scripts, mountPath: /scripts, readOnly: true}
      - {name: tmp, mountPath: /tmp}
containers:
  - name: upload-plans
    image: {{ include "prodsegmenter.image" $store.sync.image }}
    imagePullPolicy: {{ $store.sync.image.pullPolicy }}
    command: ["sh", "/scripts/model-store.sh", "upload-plans"]
    env:
      {{- toYaml $storeEnv | nindent 6 }}
      - {name: PLAN_DIR, value: /plans}
      - {name: BLOB_ACCOUNT_URL, value: {{ $store.source.blob.accountUrl | quote }}}
      - {name: BLOB_CONTAINER, value: {{ $store.source.blob.container | quote }}}
      - {name: BLOB_PREFIX, value: {{ $store.source.blob.prefix | quote }}}
      - {name: AZURE_CONFIG_DIR, value: /tmp/azure}
      - {name: HOME, value: /tmp}
    securityContext:
      {{- include "prodsegmenter.containerSecurityContext" . | nindent 6 }}
    resources:
      {{- toYaml $store.sync.resources | nindent 6 }}
    volumeMounts:
      - {name: plans, mountPath: /plans, readOnly: true}
      - {name: scripts, mountPath: /scripts, readOnly: true}
      - {name: tmp, mountPath: /tmp}
volumes:
  {{- include "prodsegmenter.syncModelVolumes" $root | nindent 2 }}
  - name: plans
    emptyDir: {}
  - name: tmp
    emptyDir: {}
{{- end }}
