{{/* Names, labels and the operator's RBAC rules, shared by every template. */}}

{{- define "modelyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelyard.fullname" -}}
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

{{- define "modelyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modelyard.labels" -}}
helm.sh/chart: {{ include "modelyard.chart" . }}
{{ include "modelyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: modelyard
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "modelyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelyard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelyard.image" -}}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}

{{/*
What the operator does in a namespace, and nothing more (operator/modelyard_operator: kube.py,
handlers/, builders/). Children are written with server-side apply, which needs create (for a
new object) and patch; they are read before each apply. configmaps also need update: the
operator creates Roles that grant get/patch/update on a training's progress ConfigMap, and RBAC
lets nobody grant what it does not hold itself.
*/}}
{{- define "modelyard.namespacedRules" -}}
- apiGroups: [modelyard.dev]
  resources: [modeltrainings, modeldeployments]
  verbs: [get, list, watch]
- apiGroups: [modelyard.dev]
  resources: [modeltrainings/status, modeldeployments/status]
  verbs: [patch]
# Children name their custom resource as owner with blockOwnerDeletion, which clusters running
# the OwnerReferencesPermissionEnforcement admission plugin allow only to who may update it.
- apiGroups: [modelyard.dev]
  resources: [modeltrainings/finalizers, modeldeployments/finalizers]
  verbs: [update]
# list + watch on every child kind the operator creates, and on pods: it caches its children
# and their pods (those labelled app.kubernetes.io/managed-by=modelyard-operator, filtered by
# the API server) from watches instead of reading them on every reconcile.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [serviceaccounts, services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [""]
  # list: the Events of a training's pod stuck in ContainerCreating (WorkersBlocked)
  resources: [events]
  verbs: [create, list]
{{- end }}

{{/*
Cluster-wide mode only. kopf lists and watches CRDs to notice the operator's own kinds when they
are installed after it starts; the operator reads the ServiceMonitor CRD to know whether it may
create ServiceMonitors. CRDs hold no secrets.
*/}}
{{- define "modelyard.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}

{{- define "modelyard.namespaces" -}}
{{- join "," .Values.watchNamespaces }}
{{- end }}
