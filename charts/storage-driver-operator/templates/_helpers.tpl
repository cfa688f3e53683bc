{{/* Names, labels and the few values that must be defined in exactly one place. */}}

{{- define "sdo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sdo.fullname" -}}
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

{{- define "sdo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sdo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: storage-driver-operator
{{- end -}}

{{/* Selector labels of one component: include "sdo.selectorLabels" (list . "agent") */}}
{{- define "sdo.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "sdo.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "sdo.componentLabels" -}}
{{ include "sdo.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "sdo.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "sdo.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sdo.agentServiceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (printf "%s-agent" (include "sdo.fullname" .)) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sdo.supervisorServiceAccountName" -}}
{{- printf "%s-supervisor" (include "sdo.fullname" .) -}}
{{- end -}}

{{- define "sdo.image" -}}
{{- printf "%s:%s" .repository (.tag | default .appVersion) -}}
{{- end -}}

{{/* The driver-host supervisor's command line: the one place it is defined
     (the protocol between agent and supervisor is in docs/driver-runtime.md). */}}
{{- define "sdo.supervisorCommand" -}}
- storage-agent
- supervise
- --state-dir
- {{ .Values.hostPaths.stateDir }}
{{- end -}}

{{/* Environment every component shares. */}}
{{- define "sdo.commonEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
{{- end -}}

{{- define "sdo.nodeEnv" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{ include "sdo.commonEnv" . }}
{{- end -}}

{{/* Pod-level security shared by every pod: the runtime's default seccomp profile. */}}
{{- define "sdo.podSeccomp" -}}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Command-line options from a settings map: (list SETTINGS (dict "valueKey" "option-name" ...)).
A null or empty value is left out (the component's default applies); a list becomes a
comma-separated value; a whole number is printed as an integer, not 1e+06.
*/}}
{{- define "sdo.settingsArgs" -}}
{{- $settings := index . 0 | default dict -}}
{{- range $key, $option := index . 1 -}}
{{- $value := index $settings $key -}}
{{- if kindIs "slice" $value -}}
{{- $value = join "," $value -}}
{{- end -}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) -}}
{{- $value = int64 $value -}}
{{- end -}}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
- {{ printf "--%s=%v" $option $value | quote }}
{{- end -}}
{{- end -}}
{{- end -}}
