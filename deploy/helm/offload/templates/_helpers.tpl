{{/* Chart name, overridable. */}}
{{- define "offload.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>" (or just the release when it contains the chart name), at most 63 characters. */}}
{{- define "offload.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A component object's name: "<fullname>-<suffix>", at most 63 characters. The full name is
shortened rather than the suffix, so long release names never make two objects collide.
*/}}
{{- define "offload.componentName" -}}
{{- $room := max 1 (sub 62 (len .suffix)) | int -}}
{{- printf "%s-%s" (include "offload.fullname" .ctx | trunc $room | trimSuffix "-") .suffix | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels. Call with (dict "ctx" $ "component" "api") and optionally "workerSet".
*/}}
{{- define "offload.selectorLabels" -}}
app.kubernetes.io/name: {{ include "offload.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .workerSet }}
offload/worker-set: {{ . }}
{{- end }}
{{- end -}}

{{/* Every object's labels: the selector labels plus version, chart and manager. */}}
{{- define "offload.labels" -}}
{{ include "offload.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: offload
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with merge (dict) (.ctx.Values.commonLabels | default dict) (.ctx.Values.global.labels | default dict) }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
An image reference: "[registry/]repository@digest" when a digest is set, else
"[registry/]repository:tag" (tag defaults to appVersion). Call with (dict "ctx" $ "image" <values>).
*/}}
{{- define "offload.image" -}}
{{- $repository := .image.repository -}}
{{- with .registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .ctx.Chart.AppVersion .image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/* Image reference of one of our images by key (api, worker, notifier). Call with (dict "ctx" $ "key" "api"). */}}
{{- define "offload.appImage" -}}
{{- include "offload.image" (dict "ctx" .ctx "image" (index .ctx.Values.images .key) "registry" (.ctx.Values.global.imageRegistry | default .ctx.Values.images.registry)) -}}
{{- end -}}

{{- define "offload.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "offload.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Names of the Secrets. */}}
{{- define "offload.apiKeysSecretName" -}}
{{- default (include "offload.componentName" (dict "ctx" . "suffix" "api-keys")) .Values.api.auth.existingSecret -}}
{{- end -}}

{{- define "offload.flowerSecretName" -}}
{{- default (include "offload.componentName" (dict "ctx" . "suffix" "flower")) .Values.flower.auth.existingSecret -}}
{{- end -}}

{{- define "offload.redisSecretName" -}}
{{- default (include "offload.componentName" (dict "ctx" . "suffix" "redis")) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{- define "offload.webhookSecretName" -}}
{{- default (include "offload.componentName" (dict "ctx" . "suffix" "webhooks")) .Values.delivery.webhooks.existingSecret -}}
{{- end -}}

{{/* Redis as the applications and KEDA see it. */}}
{{- define "offload.redisHost" -}}
{{- if .Values.externalRedis.enabled -}}
{{- /* With Sentinel the URL's host is not used: the sentinels name the primary. */ -}}
{{- ternary .Values.externalRedis.sentinel.masterName .Values.externalRedis.host (and .Values.externalRedis.sentinel.enabled (not .Values.externalRedis.host)) -}}
{{- else -}}
{{- printf "%s.%s.svc" (include "offload.componentName" (dict "ctx" . "suffix" "redis")) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "offload.redisPort" -}}
{{- if .Values.externalRedis.enabled }}{{ .Values.externalRedis.port }}{{ else }}{{ .Values.redis.port }}{{ end -}}
{{- end -}}

{{- define "offload.redisDatabase" -}}
{{- if .Values.externalRedis.enabled }}{{ .Values.externalRedis.database }}{{ else }}{{ .Values.redis.database }}{{ end -}}
{{- end -}}

{{/* Secret name and key of the Redis password; empty name = no password. */}}
{{- define "offload.redisPasswordSecretName" -}}
{{- if .Values.externalRedis.enabled -}}
{{- .Values.externalRedis.passwordSecret.name -}}
{{- else -}}
{{- include "offload.redisSecretName" . -}}
{{- end -}}
{{- end -}}

{{- define "offload.redisPasswordSecretKey" -}}
{{- if .Values.externalRedis.enabled -}}
{{- .Values.externalRedis.passwordSecret.key -}}
{{- else -}}
{{- .Values.redis.auth.existingSecretKey -}}
{{- end -}}
{{- end -}}

{{/*
REDIS_PASSWORD and OFFLOAD_REDIS_URL. The URL is composed in the pod with dependent
environment expansion, so no secret is ever inline in the manifest.
*/}}
{{- define "offload.redisEnv" -}}
{{- if and .Values.externalRedis.enabled .Values.externalRedis.urlSecret.name }}
- name: OFFLOAD_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.urlSecret.name }}
      key: {{ .Values.externalRedis.urlSecret.key }}
{{- else }}
{{- $scheme := ternary "rediss" "redis" (and .Values.externalRedis.enabled .Values.externalRedis.tls) }}
{{- $location := printf "%s:%s/%s" (include "offload.redisHost" .) (include "offload.redisPort" .) (include "offload.redisDatabase" .) }}
{{- $secretName := include "offload.redisPasswordSecretName" . }}
{{- if $secretName }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ include "offload.redisPasswordSecretKey" . }}
- name: OFFLOAD_REDIS_URL
  value: {{ printf "%s://:$(REDIS_PASSWORD)@%s" $scheme $location | quote }}
{{- else }}
- name: OFFLOAD_REDIS_URL
  value: {{ printf "%s://%s" $scheme $location | quote }}
{{- end }}
{{- end }}
{{- with .Values.externalRedis }}
{{- if and .enabled .sentinel.enabled }}
- name: OFFLOAD_REDIS_SENTINELS
  value: {{ join "," .sentinel.addresses | quote }}
- name: OFFLOAD_REDIS_SENTINEL_MASTER
  value: {{ .sentinel.masterName | quote }}
- name: OFFLOAD_REDIS_SENTINEL_TLS
  value: {{ .sentinel.tls | quote }}
{{- if .sentinel.passwordSecret.name }}
- name: OFFLOAD_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .sentinel.passwordSecret.name }}
      key: {{ .sentinel.passwordSecret.key }}
{{- end }}
{{- end }}
{{- if and .enabled .tlsCaSecret.name }}
- name: OFFLOAD_REDIS_TLS_CA_FILE
  value: {{ printf "/etc/offload/redis-tls/%s" .tlsCaSecret.key | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The Redis CA bundle's volume and its mount (with externalRedis.tlsCaSecret), for every pod that reaches Redis. */}}
{{- define "offload.redisTlsVolumeMount" -}}
{{- if and .Values.externalRedis.enabled .Values.externalRedis.tlsCaSecret.name }}
- name: redis-tls
  mountPath: /etc/offload/redis-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "offload.redisTlsVolume" -}}
{{- if and .Values.externalRedis.enabled .Values.externalRedis.tlsCaSecret.name }}
- name: redis-tls
  secret:
    secretName: {{ .Values.externalRedis.tlsCaSecret.name }}
    items:
      - key: {{ .Values.externalRedis.tlsCaSecret.key }}
        path: {{ .Values.externalRedis.tlsCaSecret.key }}
{{- end }}
{{- end -}}

{{/*
OpenTelemetry variables. Call with (dict "ctx" $ "service" "offload-api" "workerSet" "low").
*/}}
{{- define "offload.otelEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
{{- $attributes := list "k8s.pod.name=$(POD_NAME)" "k8s.namespace.name=$(POD_NAMESPACE)" }}
{{- with .workerSet }}
{{- $attributes = append $attributes (printf "offload.worker_set=%s" .) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
{{- with .ctx.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .ctx.Values.otel.protocol }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- with .ctx.Values.otel.headers.existingSecret }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.ctx.Values.otel.headers.existingSecretKey | quote }}
{{- end }}
{{- end -}}

{{/* OFFLOAD_OUTBOUND_ALLOWED_HOSTS, for the API (it checks webhook URLs at submit) and the workers. */}}
{{- define "offload.outboundEnv" -}}
- name: OFFLOAD_OUTBOUND_ALLOWED_HOSTS
  value: {{ join "," .Values.delivery.outbound.allowedHosts | quote }}
{{- end -}}

{{/*
Email and webhook delivery of every worker set: SMTP, the webhook signing secrets and the
outbound allow-list. The SMTP password and the signing secrets come from Secrets only.
*/}}
{{- define "offload.deliveryEnv" -}}
{{- $smtp := .Values.delivery.smtp -}}
{{- with $smtp.host }}
- name: OFFLOAD_SMTP_HOST
  value: {{ . | quote }}
{{- end }}
- name: OFFLOAD_SMTP_PORT
  value: {{ $smtp.port | quote }}
- name: OFFLOAD_SMTP_SECURITY
  value: {{ $smtp.security | quote }}
{{- if $smtp.username }}
- name: OFFLOAD_SMTP_USERNAME
  value: {{ $smtp.username | quote }}
- name: OFFLOAD_SMTP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $smtp.existingSecret }}
      key: {{ $smtp.existingSecretKey }}
{{- end }}
- name: OFFLOAD_EMAIL_FROM
  value: {{ $smtp.from | quote }}
- name: OFFLOAD_WEBHOOK_SECRETS
  valueFrom:
    secretKeyRef:
      name: {{ include "offload.webhookSecretName" . }}
      key: {{ .Values.delivery.webhooks.existingSecretKey }}
{{ include "offload.outboundEnv" . }}
{{- end -}}

{{/* OFFLOAD_BLOB_QUOTA_OVERRIDES from blobStore.quotaOverrides: "<key id>=<bytes>,...". */}}
{{- define "offload.blobQuotaOverrides" -}}
{{- $entries := list -}}
{{- range .Values.blobStore.quotaOverrides -}}
{{- $entries = append $entries (printf "%s=%d" .keyId (int64 .bytes)) -}}
{{- end -}}
{{- join "," $entries -}}
{{- end -}}

{{/* The blob store's S3 credentials (API and worker image), from an existing Secret only. */}}
{{- define "offload.blobEnv" -}}
{{- $s3 := .Values.blobStore.s3 -}}
{{- if and (eq .Values.blobStore.backend "s3") $s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: {{ $s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: {{ $s3.secretAccessKeyKey }}
{{- end }}
{{- end -}}

{{/* The PersistentVolumeClaim of the filesystem blob store. */}}
{{- define "offload.blobClaimName" -}}
{{- .Values.blobStore.filesystem.existingClaim | default (include "offload.componentName" (dict "ctx" . "suffix" "blobs")) -}}
{{- end -}}

{{/* The blob volume's mount (API and worker image), when the backend is the filesystem. */}}
{{- define "offload.blobVolumeMount" -}}
{{- if eq .Values.blobStore.backend "filesystem" }}
- name: blobs
  mountPath: {{ .Values.blobStore.filesystem.path }}
{{- end }}
{{- end -}}

{{- define "offload.blobVolume" -}}
{{- if eq .Values.blobStore.backend "filesystem" }}
# Image and report blobs, shared by the API and every worker pod (blobStore.filesystem).
- name: blobs
  persistentVolumeClaim:
    claimName: {{ include "offload.blobClaimName" . }}
{{- end }}
{{- end -}}

{{/* Container security context of every container. */}}
{{- define "offload.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Pod annotations that roll the pods when the configuration or a chart-made Secret changes. */}}
{{- define "offload.checksumAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ printf "%s%s%s" (include (print .Template.BasePath "/secrets.yaml") .) (include (print .Template.BasePath "/redis/redis-secret.yaml") .) (include (print .Template.BasePath "/flower/flower-secret.yaml") .) | sha256sum }}
{{- end -}}

{{/*
A Secret value kept across upgrades: the live Secret's value when there is one, else a new
random one. Call with (dict "ctx" $ "name" <secret> "key" <key> "length" 32); returns base64.
*/}}
{{- define "offload.stableRandom" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum (int .length) | b64enc -}}
{{- end -}}
{{- end -}}

{{/*
A worker set with the defaults filled in. Call with (dict "ctx" $ "entry" <entry> "out" (dict));
"out" receives the merged keys. Maps (keda, resources, ...) are merged key by key; explicit
zeros and falses in the entry win (sprig's merge would drop them).
*/}}
{{- define "offload.mergeWorkerSet" -}}
{{- range $key, $value := deepCopy .ctx.Values.workers.defaults }}
{{- $_ := set $.out $key $value }}
{{- end }}
{{- range $key, $value := .entry }}
{{- $base := get $.out $key }}
{{- if and (kindIs "map" $value) (kindIs "map" $base) }}
{{- range $subKey, $subValue := $value }}
{{- $_ := set $base $subKey $subValue }}
{{- end }}
{{- else }}
{{- $_ := set $.out $key $value }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The deployment's queues, OFFLOAD_QUEUES of every component: every queue some worker set
consumes, the built-in ones first (in offload_core.contract.topology's order), then the others in the
order the sets first name them. The worker sets are the one declaration of the queues; a new
set with a new queue adds it everywhere.
*/}}
{{- define "offload.queues" -}}
{{- $consumed := list -}}
{{- range $entry := .Values.workers.sets -}}
{{- $set := dict -}}
{{- include "offload.mergeWorkerSet" (dict "ctx" $ "entry" $entry "out" $set) -}}
{{- range $queue := (default list $set.queues) -}}
{{- $consumed = append $consumed (toString $queue) -}}
{{- end -}}
{{- end -}}
{{- $builtin := include "offload.builtinQueues" . | fromJson -}}
{{- $queues := list -}}
{{- range $queue := concat $builtin.notifier $builtin.worker -}}
{{- if has $queue $consumed -}}
{{- $queues = append $queues $queue -}}
{{- end -}}
{{- end -}}
{{- range $queue := $consumed -}}
{{- if not (has $queue $queues) -}}
{{- $queues = append $queues $queue -}}
{{- end -}}
{{- end -}}
{{- toJson $queues -}}
{{- end -}}

{{/*
A KEDA trigger's name for one priority list of a queue. The scaling formula names the triggers
as variables, where "-" would read as a minus: it becomes "_" (a guard refuses two queues of a
set that would then share a name).
*/}}
{{- define "offload.triggerName" -}}
{{- printf "%s_p%d" (.queue | replace "-" "_") (int .step) -}}
{{- end -}}

{{/* The Redis list names that hold a queue's messages, one per priority step (kombu). */}}
{{- define "offload.priorityLists" -}}
{{- $lists := list . -}}
{{- range $step := list 3 6 9 -}}
{{- $lists = append $lists (printf "%s\x06\x16%d" $ $step) -}}
{{- end -}}
{{- toJson $lists -}}
{{- end -}}

{{/*
What every pod of the chart takes from its component's values (api, a merged worker set,
flower, redis): one helper, so each component gets the same keys with the same meaning.
Call each with (dict "ctx" $ "values" <component values> "component" "api" ["workerSet" name]).
*/}}

{{/* The pod template's labels: the chart's own, then podLabels that do not clash with them. */}}
{{- define "offload.podLabels" -}}
{{- $own := include "offload.labels" . -}}
{{- $ownKeys := $own | fromYaml -}}
{{ $own }}
{{- range $key, $value := .values.podLabels }}
{{- if not (hasKey $ownKeys $key) }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* podAnnotations, after the chart's own (checksums), which win on a clash. Pass "own" (a dict). */}}
{{- define "offload.podAnnotations" -}}
{{- $annotations := merge (dict) (.own | default dict) (.values.podAnnotations | default dict) -}}
{{- with $annotations }}
annotations:
  {{- range $key, $value := . }}
  {{ $key }}: {{ $value | toString | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
Pod spec fields of scheduling and pulling: imagePullSecrets (global, then the chart's),
priorityClassName, nodeSelector, tolerations, affinity, topologySpreadConstraints. A spread
constraint without a labelSelector selects the component's own pods.
*/}}
{{- define "offload.podScheduling" -}}
{{- $pullSecrets := concat (.ctx.Values.global.imagePullSecrets | default list) (.ctx.Values.imagePullSecrets | default list) | uniq -}}
{{- with $pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
{{- $selector := include "offload.selectorLabels" $ | fromYaml }}
topologySpreadConstraints:
  {{- range $constraint := . }}
  {{- $filled := deepCopy $constraint }}
  {{- if not (hasKey $filled "labelSelector") }}
  {{- $_ := set $filled "labelSelector" (dict "matchLabels" $selector) }}
  {{- end }}
  - {{ toYaml $filled | nindent 4 | trim }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* extraEnv entries, to append to a container's env list. */}}
{{- define "offload.extraEnv" -}}
{{- with .values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* envFrom of a container: the chart's own sources (a list, may be empty), then extraEnvFrom. */}}
{{- define "offload.envFrom" -}}
{{- $sources := concat (.own | default list) (.values.extraEnvFrom | default list) -}}
{{- with $sources }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* extraVolumeMounts entries, to append to a container's volumeMounts list. */}}
{{- define "offload.extraVolumeMounts" -}}
{{- with .values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* extraVolumes entries, to append to a pod's volumes list. */}}
{{- define "offload.extraVolumes" -}}
{{- with .values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
A Kubernetes memory quantity (512Mi, 1Gi, 1G, 1500M, 1073741824) in bytes, as an integer;
0 for an empty or unreadable one.
*/}}
{{- define "offload.memoryBytes" -}}
{{- $quantity := toString . -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $quantity -}}
{{- $suffix := trimPrefix $number $quantity -}}
{{- $factors := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if and $number (hasKey $factors $suffix) -}}
{{- mulf (float64 $number) (get $factors $suffix) | floor | int64 -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{/*
Redis's maxmemory in bytes: redis.maxmemory when set (Redis units; "0" = no limit), else
maxmemoryPercentOfLimit of the container's memory limit. Empty when neither can be had (a
guard refuses that).
*/}}
{{- define "offload.redisMaxmemory" -}}
{{- $redis := .Values.redis -}}
{{- if $redis.maxmemory -}}
{{- $redis.maxmemory -}}
{{- else -}}
{{- $limit := include "offload.memoryBytes" ((($redis.resources | default dict).limits | default dict).memory | default "") | int64 -}}
{{- if gt $limit 0 -}}
{{- div (mul $limit (int64 $redis.maxmemoryPercentOfLimit)) 100 -}}
{{- end -}}
{{- end -}}
{{- end -}}
