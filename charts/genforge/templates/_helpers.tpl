{{/*
Names, labels and the facts several templates share. One definition for each.
*/}}

{{- define "genforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "genforge.fullname" -}}
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

{{/*
A name made of the full name and a suffix, kept a valid DNS label (63 characters) for any
release name Helm accepts: the full name is cut to make room for "-<suffix>".
*/}}
{{- define "genforge.suffixed" -}}
{{- $ctx := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $room := sub 62 (len $suffix) | int -}}
{{- printf "%s-%s" (include "genforge.fullname" $ctx | trunc $room | trimSuffix "-") $suffix -}}
{{- end }}

{{- define "genforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "genforge.labels" -}}
helm.sh/chart: {{ include "genforge.chart" . }}
app.kubernetes.io/name: {{ include "genforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: genforge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The operator pods' selector (also what NetworkPolicies use to find them). */}}
{{- define "genforge.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "genforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The trainer pods, as the operator labels them (operator/genforge_operator/naming.py:
owner_labels). Not release-specific: the operator names itself `genforge`.
*/}}
{{- define "genforge.trainerSelectorLabels" -}}
app.kubernetes.io/managed-by: genforge
app.kubernetes.io/name: genforge-trainer
{{- end }}

{{/* The trainer's progress and metrics port (OperatorConfig.metrics_port; port name `metrics`). */}}
{{- define "genforge.trainerMetricsPort" -}}
9090
{{- end }}

{{/* kopf's liveness endpoint port (`genforge operator --liveness`). */}}
{{- define "genforge.healthPort" -}}
8081
{{- end }}

{{- define "genforge.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "genforge.suffixed" (list . "operator")) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "genforge.image" -}}
{{- $tag := default .context.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* "true" when the operator watches only `operator.watchNamespaces` (Role-per-namespace RBAC). */}}
{{- define "genforge.namespaced" -}}
{{- if .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/* "true" when the replicas coordinate through kopf peering. */}}
{{- define "genforge.peering" -}}
{{- if gt (int .Values.operator.replicas) 1 }}true{{ end }}
{{- end }}

{{- define "genforge.peeringName" -}}
{{- default (include "genforge.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{/*
Namespaces where runs happen and trainer pods need their ServiceAccount (and PVC,
NetworkPolicy): the watched namespaces (the release namespace when watching all of
them) and trainer.namespaces. A JSON list: use with `include … | fromJsonArray`.
*/}}
{{- define "genforge.trainerNamespaces" -}}
{{- $all := .Values.operator.watchNamespaces | default (list .Release.Namespace) }}
{{- concat $all .Values.trainer.namespaces | uniq | toJson }}
{{- end }}

{{/*
validateValues: what the schema cannot say, checked together, reported together.
Every problem found is listed; the install fails once, with all of them.
*/}}
{{- define "genforge.validateValues" -}}
{{- $problems := list }}
{{- $v := .Values }}
{{- if eq $v.storage.type "objectStore" }}
  {{- if not $v.storage.objectStore.uri }}
    {{- $problems = append $problems "storage.objectStore.uri: required when storage.type is objectStore (e.g. s3://my-bucket/genforge)" }}
  {{- else if hasPrefix "file://" $v.storage.objectStore.uri }}
    {{- $problems = append $problems (printf "storage.objectStore.uri: %q is a local path; use storage.type pvc for file:// storage" $v.storage.objectStore.uri) }}
  {{- end }}
  {{- if $v.storage.pvc.create }}
    {{- $problems = append $problems "storage.pvc.create: true has no effect with storage.type objectStore; set it to false" }}
  {{- end }}
{{- else if $v.storage.objectStore.uri }}
  {{- $problems = append $problems (printf "storage.objectStore.uri is set but storage.type is %q; set storage.type to objectStore to use it" $v.storage.type) }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.service.enabled) }}
  {{- $problems = append $problems "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor scrapes through the Service" }}
{{- end }}
{{- if eq (int $v.metrics.port) (int (include "genforge.healthPort" .)) }}
  {{- $problems = append $problems (printf "metrics.port: %d is kopf's liveness endpoint; pick another port" (int $v.metrics.port)) }}
{{- end }}
{{- if $v.operator.watchNamespaces }}
  {{- range $v.trainer.namespaces }}
    {{- if not (has . $v.operator.watchNamespaces) }}
      {{- $problems = append $problems (printf "trainer.namespaces: %q is not in operator.watchNamespaces; the operator would not see runs there" .) }}
    {{- end }}
  {{- end }}
  {{- range $v.budgets }}
    {{- $ns := default $.Release.Namespace .namespace }}
    {{- if not (has $ns $v.operator.watchNamespaces) }}
      {{- $problems = append $problems (printf "budgets: Budget %q is in namespace %q, which is not in operator.watchNamespaces; nothing would enforce it" .name $ns) }}
    {{- end }}
  {{- end }}
{{- end }}
{{- $seen := dict }}
{{- range $v.budgets }}
  {{- $key := printf "%s/%s" (default $.Release.Namespace .namespace) .name }}
  {{- if hasKey $seen $key }}
    {{- $problems = append $problems (printf "budgets: Budget %s is listed twice" $key) }}
  {{- end }}
  {{- $_ := set $seen $key true }}
{{- end }}
{{- range $name, $pool := $v.pools }}
  {{- $accel := $pool.accelerator | default dict }}
  {{- if and (eq (default "cpu" $accel.type) "cpu") $accel.resourceName }}
    {{- $problems = append $problems (printf "pools.%s: a cpu pool has no accelerator.resourceName (got %q)" $name $accel.resourceName) }}
  {{- end }}
  {{- if and (ne (default "cpu" $accel.type) "cpu") (not $accel.resourceName) }}
    {{- $problems = append $problems (printf "pools.%s: accelerator %q needs accelerator.resourceName (e.g. nvidia.com/gpu, google.com/tpu)" $name $accel.type) }}
  {{- end }}
  {{- if and $pool.tpu (ne (default "" $accel.resourceName) "google.com/tpu") }}
    {{- $problems = append $problems (printf "pools.%s: tpu is only valid for TPU pools (accelerator.resourceName google.com/tpu)" $name) }}
  {{- end }}
  {{- if and (eq (default "" $accel.resourceName) "google.com/tpu") (not $pool.tpu) }}
    {{- $problems = append $problems (printf "pools.%s: a TPU pool needs tpu.topology (e.g. 2x2)" $name) }}
  {{- end }}
{{- end }}
{{- if and (not $v.trainer.serviceAccount.create) (eq $v.trainer.serviceAccount.name "") }}
  {{- $problems = append $problems "trainer.serviceAccount.name: required (use \"default\" to run trainers as the namespace's default ServiceAccount)" }}
{{- end }}
{{- if $problems }}
{{- fail (printf "\n\ngenforge: %d problem(s) in the values:\n  - %s\n" (len $problems) (join "\n  - " $problems)) }}
{{- end }}
{{- end }}
