{{/* Names and labels shared by every template. */}}

{{- define "polca.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name; object names append a component suffix, so keep room for it. */}}
{{- define "polca.fullname" -}}
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

{{- define "polca.operator.fullname" -}}{{ include "polca.fullname" . }}-operator{{- end -}}
{{- define "polca.node.fullname" -}}{{ include "polca.fullname" . }}-node{{- end -}}
{{- define "polca.restore.fullname" -}}{{ include "polca.fullname" . }}-restore{{- end -}}

{{- define "polca.peeringName" -}}
{{- default (include "polca.fullname" .) .Values.operator.peering.name -}}
{{- end -}}

{{- define "polca.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "polca.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "polca.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: polca
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: `include "polca.selectorLabels" (list . "operator")`. */}}
{{- define "polca.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "polca.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "polca.componentLabels" -}}
{{ include "polca.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "polca.operator.serviceAccount" -}}{{ include "polca.operator.fullname" . }}{{- end -}}
{{- define "polca.node.serviceAccount" -}}{{ include "polca.node.fullname" . }}{{- end -}}

{{/* The username a service account authenticates as. */}}
{{- define "polca.node.username" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "polca.node.serviceAccount" . }}
{{- end -}}
{{- define "polca.operator.username" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "polca.operator.serviceAccount" . }}
{{- end -}}

{{/* Container securityContext shared by the non-root processes. */}}
{{- define "polca.restrictedContainerSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "polca.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Pod spec lines for `hostNetwork: true`: the node's network, and cluster DNS still first.
*/}}
{{- define "polca.hostNetwork" -}}
{{- if .Values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- end }}
