{{/*
Render-time guards: refuse values that would break at run time, with a message that names the
value and says what to do. Included once, from configmap.yaml (which always renders).
*/}}
{{- define "offload.checkConfig" -}}
{{- $messages := list -}}
{{- $messages = append $messages (include "offload.checkConfig.workerSets" .) -}}
{{- $messages = append $messages (include "offload.checkConfig.tasks" .) -}}
{{- $messages = append $messages (include "offload.checkConfig.redis" .) -}}
{{- $messages = append $messages (include "offload.checkConfig.flower" .) -}}
{{- $messages = append $messages (include "offload.checkConfig.api" .) -}}
{{- $messages = append $messages (include "offload.checkConfig.delivery" .) -}}
{{- $messages = append $messages (include "offload.checkConfig.blobStore" .) -}}
{{- $messages = without $messages "" -}}
{{- if $messages -}}
{{- fail (printf "\nOFFLOAD CONFIGURATION ERRORS:\n%s" (join "\n" $messages)) -}}
{{- end -}}
{{- end -}}

{{/*
The built-in queues (offload_core.contract.topology), by the image whose code runs their jobs: the
worker's (emails, reports, images) and the notifier's (notifications). Every deployment has
them; the worker sets may add queues of their own. tests/chart/test_topology.py checks this
against the Python declaration.
*/}}
{{- define "offload.builtinQueues" -}}
{{- toJson (dict "worker" (list "default" "low") "notifier" (list "high")) -}}
{{- end -}}

{{- define "offload.checkConfig.workerSets" -}}
{{- $builtin := include "offload.builtinQueues" . | fromJson -}}
{{- $seen := dict -}}
{{- $consumed := dict -}}
{{- $margin := int .Values.workers.gracePeriodMarginSeconds -}}
{{- range $entry := .Values.workers.sets -}}
{{- $set := dict -}}
{{- include "offload.mergeWorkerSet" (dict "ctx" $ "entry" $entry "out" $set) -}}
{{- $name := toString $set.name -}}
{{- if hasKey $seen $name }}
workers.sets: the set name "{{ $name }}" appears more than once; give every set its own name.
{{- end -}}
{{- $_ := set $seen $name true -}}
{{- if not $set.queues }}
workers.sets[{{ $name }}]: queues is empty; list the queues this set consumes (e.g. [default]).
{{- end -}}
{{- $triggers := dict -}}
{{- range $queue := (default list $set.queues) -}}
{{- $queue = toString $queue -}}
{{- $_ := set $consumed $queue true -}}
{{- if not (regexMatch "^[a-z][a-z0-9_-]{0,62}$" $queue) }}
workers.sets[{{ $name }}]: "{{ $queue }}" is not a valid queue name; use a lower-case letter, then lower-case letters, digits, - and _ (63 characters at most).
{{- else if has $queue (list "in-process" "unacked" "unacked_index" "unacked_mutex") }}
workers.sets[{{ $name }}]: queue name "{{ $queue }}" is reserved (a Redis transport key, or the API's in-process queue); choose another name.
{{- end -}}
{{- $trigger := $queue | replace "-" "_" -}}
{{- if eq (get $triggers $trigger | default "") $queue }}
workers.sets[{{ $name }}]: lists queue "{{ $queue }}" twice; list it once.
{{- else if hasKey $triggers $trigger }}
workers.sets[{{ $name }}]: queues "{{ get $triggers $trigger }}" and "{{ $queue }}" differ only in "-" and "_", so their KEDA triggers would share a name; rename one.
{{- end -}}
{{- $_ := set $triggers $trigger $queue -}}
{{- end -}}
{{- $grace := int $set.terminationGracePeriodSeconds -}}
{{- $soft := float64 $set.softShutdownTimeoutSeconds -}}
{{- $preStop := int $set.preStopSleepSeconds -}}
{{- if le (float64 $grace) (addf $soft $preStop $margin) }}
workers.sets[{{ $name }}]: terminationGracePeriodSeconds ({{ $grace }}) must exceed softShutdownTimeoutSeconds ({{ $soft }}) + preStopSleepSeconds ({{ $preStop }}) + workers.gracePeriodMarginSeconds ({{ $margin }}), or running tasks are killed instead of handed back; raise terminationGracePeriodSeconds or lower softShutdownTimeoutSeconds.
{{- end -}}
{{- if and $.Values.keda.enabled (le (int $set.keda.cooldownPeriod) $grace) }}
workers.sets[{{ $name }}]: keda.cooldownPeriod ({{ $set.keda.cooldownPeriod }}) must exceed terminationGracePeriodSeconds ({{ $grace }}); raise the cooldown period.
{{- end -}}
{{- /* A running job's message is on no list: KEDA sees an empty queue and, after the cooldown,
       scales a set that may sleep at zero away under it. */ -}}
{{- if and $.Values.keda.enabled (eq (int $set.minReplicas) 0) -}}
{{- $longest := include "offload.longestTaskSeconds" (dict "ctx" $ "queues" $set.queues) | fromJson -}}
{{- if lt (int $set.keda.cooldownPeriod) (int $longest.seconds) }}
workers.sets[{{ $name }}]: keda.cooldownPeriod ({{ $set.keda.cooldownPeriod }}) is shorter than the longest task time limit of the set ({{ $longest.seconds }} s, {{ $longest.from }}); with minReplicas 0 KEDA would scale the set to zero while a job still runs and cut it off. Raise keda.cooldownPeriod to at least {{ $longest.seconds }}, or keep minReplicas >= 1.
{{- end -}}
{{- end -}}
{{- with $set.keda.fallback -}}
{{- if and $.Values.keda.enabled (gt (int .replicas) (int $set.maxReplicas)) }}
workers.sets[{{ $name }}]: keda.fallback.replicas ({{ .replicas }}) is above maxReplicas ({{ $set.maxReplicas }}).
{{- end -}}
{{- end -}}
{{- if gt (int $set.minReplicas) (int $set.maxReplicas) }}
workers.sets[{{ $name }}]: minReplicas ({{ $set.minReplicas }}) is above maxReplicas ({{ $set.maxReplicas }}).
{{- end -}}
{{- if lt (int $set.maxReplicas) 1 }}
workers.sets[{{ $name }}]: maxReplicas must be at least 1.
{{- end -}}
{{- if and (has "high" (default list $set.queues)) (lt (int $set.minReplicas) 1) }}
workers.sets[{{ $name }}]: consumes "high" and must keep minReplicas >= 1 (got {{ $set.minReplicas }}); critical notifications must not wait for a scale-up from zero.
{{- end -}}
{{- /* An image cannot run the other image's built-in jobs: their code is not in it. */ -}}
{{- $other := ternary "worker" "notifier" (eq $set.image "notifier") -}}
{{- range $queue := (default list $set.queues) -}}
{{- if has (toString $queue) (get $builtin $other) }}
workers.sets[{{ $name }}]: queue "{{ $queue }}" runs Offload's built-in jobs of the {{ $other }} image, whose code the {{ $set.image }} image lacks; move it to a set with image: {{ $other }}{{ if eq $other "notifier" }} (critical work never waits behind bulk work){{ end }}.
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $image, $queues := $builtin -}}
{{- range $queue := $queues -}}
{{- if not (hasKey $consumed $queue) }}
workers.sets: no set consumes the built-in queue "{{ $queue }}"; Offload's own jobs on it would wait forever. Add it to the queues of a set with image: {{ $image }}.
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "offload.checkConfig.tasks" -}}
{{- $c := .Values.config -}}
{{- if ge (int $c.taskSoftTimeLimitSeconds) (int $c.taskTimeLimitSeconds) }}
config: taskSoftTimeLimitSeconds ({{ $c.taskSoftTimeLimitSeconds }}) must be below taskTimeLimitSeconds ({{ $c.taskTimeLimitSeconds }}) so a task can record its timeout before it is killed.
{{- end -}}
{{- if le (float64 $c.visibilityTimeoutSeconds) (addf $c.taskTimeLimitSeconds $c.retryBackoffMaxSeconds) }}
config: visibilityTimeoutSeconds ({{ $c.visibilityTimeoutSeconds }}) must exceed taskTimeLimitSeconds + retryBackoffMaxSeconds ({{ addf $c.taskTimeLimitSeconds $c.retryBackoffMaxSeconds }}), or Redis hands running tasks to a second worker.
{{- end -}}
{{- /* The services check these at start; refusing them here beats pods that never start. */ -}}
{{- $reportSoft := int ($c.reports.softTimeLimitSeconds | default $c.taskSoftTimeLimitSeconds) -}}
{{- $reportHard := int ($c.reports.timeLimitSeconds | default $c.taskTimeLimitSeconds) -}}
{{- if ge $reportSoft $reportHard }}
config.reports: the report soft time limit ({{ $reportSoft }}) must be below its hard limit ({{ $reportHard }}); check softTimeLimitSeconds and timeLimitSeconds (unset, they are config.task*TimeLimitSeconds).
{{- end -}}
{{- if le (float64 $c.visibilityTimeoutSeconds) (addf $reportHard $c.retryBackoffMaxSeconds) }}
config: visibilityTimeoutSeconds ({{ $c.visibilityTimeoutSeconds }}) must exceed reports.timeLimitSeconds + retryBackoffMaxSeconds ({{ addf $reportHard $c.retryBackoffMaxSeconds }}), or Redis hands running reports to a second worker.
{{- end -}}
{{- $broker := $c.broker -}}
{{- $publish := mulf (add1 (int $broker.publishMaxRetries)) (addf $broker.connectTimeoutSeconds $broker.socketTimeoutSeconds) -}}
{{- if le (float64 $c.orphanSweep.graceSeconds) $publish }}
config.orphanSweep: graceSeconds ({{ $c.orphanSweep.graceSeconds }}) must exceed the longest publish, {{ $publish }} s = (broker.publishMaxRetries + 1) x (broker.connectTimeoutSeconds + broker.socketTimeoutSeconds), or a job still being published may be published twice.
{{- end -}}
{{- end -}}

{{/*
The longest hard time limit of the jobs on these queues, as {"seconds": n, "from": "<value>"}:
config.taskTimeLimitSeconds, or config.reports.timeLimitSeconds for a set consuming the
reports' queue (low) when that is longer. Call with (dict "ctx" $ "queues" <list>).
*/}}
{{- define "offload.longestTaskSeconds" -}}
{{- $config := .ctx.Values.config -}}
{{- $longest := dict "seconds" (int $config.taskTimeLimitSeconds) "from" "config.taskTimeLimitSeconds" -}}
{{- $report := int ($config.reports.timeLimitSeconds | default 0) -}}
{{- if and (has "low" (default list .queues)) (gt $report (int $longest.seconds)) -}}
{{- $longest = dict "seconds" $report "from" "config.reports.timeLimitSeconds" -}}
{{- end -}}
{{- toJson $longest -}}
{{- end -}}

{{- define "offload.checkConfig.redis" -}}
{{- if and .Values.redis.enabled (not .Values.externalRedis.enabled) (not (include "offload.redisMaxmemory" .)) }}
redis: maxmemory is empty and resources.limits.memory is not set (or not a memory quantity such as 1Gi), so no maxmemory can be derived and a full Redis would be killed instead of refusing writes; set redis.resources.limits.memory or redis.maxmemory (e.g. 1gb, or "0" for no limit).
{{- end -}}
{{- if and .Values.redis.enabled .Values.externalRedis.enabled }}
redis: redis.enabled and externalRedis.enabled are both true; set redis.enabled=false to use the external Redis.
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.externalRedis.enabled) }}
redis: neither redis.enabled nor externalRedis.enabled is true; Offload needs a Redis.
{{- end -}}
{{- $sentinel := .Values.externalRedis.sentinel -}}
{{- if and $sentinel.enabled .Values.redis.enabled }}
externalRedis.sentinel: the sentinels watch an external Redis, but redis.enabled runs the bundled one; set redis.enabled=false and externalRedis.enabled=true, or externalRedis.sentinel.enabled=false.
{{- else if and $sentinel.enabled (not .Values.externalRedis.enabled) }}
externalRedis.sentinel: externalRedis.sentinel.enabled needs externalRedis.enabled=true.
{{- end -}}
{{- if .Values.externalRedis.enabled -}}
{{- if $sentinel.enabled -}}
{{- if not $sentinel.addresses }}
externalRedis.sentinel: list every sentinel as host:port in externalRedis.sentinel.addresses.
{{- end -}}
{{- if and .Values.keda.enabled (ne $sentinel.tls .Values.externalRedis.tls) }}
externalRedis.sentinel: tls ({{ $sentinel.tls }}) differs from externalRedis.tls ({{ .Values.externalRedis.tls }}); KEDA's redis-sentinel scaler uses one TLS setting for both, so keda.enabled needs them equal.
{{- end -}}
{{- else -}}
{{- if and (not .Values.externalRedis.urlSecret.name) (not .Values.externalRedis.host) }}
externalRedis: set externalRedis.host (with passwordSecret) or externalRedis.urlSecret.name.
{{- end -}}
{{- if and .Values.keda.enabled (not .Values.externalRedis.host) }}
externalRedis: keda.enabled needs externalRedis.host (and passwordSecret when Redis has a password): the KEDA redis scaler cannot read a URL.
{{- end -}}
{{- end -}}
{{- if and .Values.externalRedis.tlsCaSecret.name (not (or .Values.externalRedis.tls $sentinel.tls)) }}
externalRedis.tlsCaSecret: a CA bundle is set but neither externalRedis.tls nor externalRedis.sentinel.tls is true; turn TLS on or remove the CA.
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "offload.checkConfig.flower" -}}
{{- if and .Values.flower.enabled .Values.flower.ingress.enabled -}}
{{- range .Values.flower.ingress.paths -}}
{{- $path := trimSuffix "/" .path -}}
{{- if or (and (eq .pathType "Prefix") (eq $path "")) (hasPrefix "/metrics" $path) (hasPrefix "/healthcheck" $path) }}
flower.ingress.paths: "{{ .path }}" ({{ .pathType }}) would route /metrics or /healthcheck, which answer without authentication; list the dashboard paths only.
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "offload.checkConfig.api" -}}
{{- if le (int .Values.api.terminationGracePeriodSeconds) (int .Values.api.preStopSleepSeconds) }}
api: terminationGracePeriodSeconds ({{ .Values.api.terminationGracePeriodSeconds }}) must exceed preStopSleepSeconds ({{ .Values.api.preStopSleepSeconds }}).
{{- end -}}
{{- if and .Values.api.autoscaling.enabled (gt (int .Values.api.autoscaling.minReplicas) (int .Values.api.autoscaling.maxReplicas)) }}
api.autoscaling: minReplicas ({{ .Values.api.autoscaling.minReplicas }}) is above maxReplicas ({{ .Values.api.autoscaling.maxReplicas }}).
{{- end -}}
{{- end -}}

{{- define "offload.checkConfig.delivery" -}}
{{- $smtp := .Values.delivery.smtp -}}
{{- if and $smtp.username (not $smtp.existingSecret) }}
delivery.smtp: username "{{ $smtp.username }}" needs a password from a Secret, and the chart never holds one in values: create a Secret with the password under key "{{ $smtp.existingSecretKey }}" and set delivery.smtp.existingSecret to its name.
{{- end -}}
{{- if and $smtp.existingSecret (not $smtp.username) }}
delivery.smtp: existingSecret "{{ $smtp.existingSecret }}" is set but username is empty, so its password would never be used; set delivery.smtp.username or clear existingSecret.
{{- end -}}
{{- if and (eq (int $smtp.port) 465) (eq $smtp.security "starttls") }}
delivery.smtp: port 465 speaks TLS from the first byte; set security: tls (starttls is for port 587).
{{- end -}}
{{- if and (eq (int $smtp.port) 587) (eq $smtp.security "tls") }}
delivery.smtp: port 587 expects starttls; set security: starttls (tls is for port 465).
{{- end -}}
{{- end -}}

{{- define "offload.checkConfig.blobStore" -}}
{{- $blobs := .Values.blobStore -}}
{{- if eq $blobs.backend "filesystem" -}}
{{- if and (not $blobs.filesystem.existingClaim) (not $blobs.filesystem.persistence.enabled) }}
blobStore: the filesystem backend needs a volume every API and worker pod shares (they run in separate pods, so a pod's own disk would hide uploads from the workers); set blobStore.filesystem.existingClaim to a ReadWriteMany claim, enable blobStore.filesystem.persistence, or use blobStore.backend=s3.
{{- end -}}
{{- else -}}
{{- if not $blobs.s3.bucket }}
blobStore: backend s3 needs blobStore.s3.bucket, an existing bucket to keep image and report blobs in.
{{- end -}}
{{- end -}}
{{- end -}}

