{{/*
The operator's RBAC rules: exactly the API calls it makes (operator/genforge_operator/
kube.py, main.py, registry.py) and those kopf makes for it. No wildcards.
tests/chart/test_rbac.py pins the list; tests/chart/test_rbac_observed.py runs the real
operator against the emulated API server and checks every request it made is allowed.
*/}}

{{/* Rules for namespaced resources: in the ClusterRole, or in a Role per watched namespace. */}}
{{- define "genforge.operatorRules.namespaced" -}}
# kopf lists and watches the genforge kinds; the reconciler reads each object fresh
# (get); kopf patches its finalizer and its bookkeeping annotations (patch). The operator
# changes nothing else on these objects.
- apiGroups: [genforge.dev]
  resources: [budgets, datasets, finetunes, genmodels, trainingruns]
  verbs: [get, list, watch, patch]
# A pool's calibration run on demand (AcceleratorPool spec.calibration): its GenModel,
# Dataset and TrainingRun, created once in the namespace the pool names (an existing one
# is fine: HTTP 409). Nothing else of these kinds is ever created or changed.
- apiGroups: [genforge.dev]
  resources: [datasets, genmodels, trainingruns]
  verbs: [create]
# Phase, conditions, cost, progress, the model registry and Budget spending.
- apiGroups: [genforge.dev]
  resources: [budgets/status, datasets/status, finetunes/status, genmodels/status, trainingruns/status]
  verbs: [patch]
# Children carry an ownerReference with blockOwnerDeletion, which clusters running the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) allow only to
# whoever may update the owner's finalizers.
- apiGroups: [genforge.dev]
  resources: [datasets/finalizers, finetunes/finalizers, trainingruns/finalizers]
  verbs: [update]
# Trainer Jobs: indexed and watched (list, watch), read after a create (get), created,
# suspended/resumed and given a deadline (patch), stopped (delete).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Trainer pods: indexed and watched for phase, IP and termination message. Read-only.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# A run spec too large for the pod annotation that carries it (ConfigMap, over 64 KiB),
# the headless Service of multi-node runs, and the trainer
# ServiceAccount (no token, no role; a pod naming a missing one is never created): created
# once, never read back or changed (an existing one is fine: HTTP 409).
- apiGroups: [""]
  resources: [configmaps, serviceaccounts, services]
  verbs: [create]
# Events that explain decisions (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Kueue's Workload of a queued Job, read while Kueue holds it, to show why (quota,
# preemption) in the run's status. Read-only; without Kueue installed it is never used.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list]
{{- end }}

{{/* Rules for cluster-scoped resources: always in a ClusterRole. */}}
{{- define "genforge.operatorRules.cluster" -}}
# The price catalogue: indexed (list, watch), read before recording measured throughput.
- apiGroups: [genforge.dev]
  resources: [acceleratorpools]
  verbs: [get, list, watch]
# Measured throughput per architecture, the calibration, the calibration run's condition.
- apiGroups: [genforge.dev]
  resources: [acceleratorpools/status]
  verbs: [patch]
# kopf notices CRDs being added, changed or removed.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/* kopf, when watching a list of namespaces, follows their creation and deletion. */}}
{{- define "genforge.operatorRules.namespaces" -}}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}

{{/* kopf peering (replicas > 1): watch the peers, patch own keep-alives. */}}
{{- define "genforge.operatorRules.clusterPeering" -}}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [list, watch, patch]
{{- end }}

{{- define "genforge.operatorRules.namespacedPeering" -}}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [list, watch, patch]
{{- end }}
