{{/* The admission webhook (docs/security.md): names and the operator's settings for it. */}}

{{- define "sdo.webhookName" -}}
{{- printf "%s-webhook" (include "sdo.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Namespaces configMap driver sources may come from: the release namespace by default. */}}
{{- define "sdo.configMapNamespaces" -}}
{{- join "," (default (list .Release.Namespace) .Values.driverSources.configMapNamespaces) -}}
{{- end -}}

{{/* The operator's environment for the webhook and the source policy. */}}
{{- define "sdo.operatorAdmissionEnv" -}}
{{- if gt (int .Values.operator.replicas) 1 }}
- name: LEADER_ELECTION
  value: "true"
{{- end }}
- name: CONFIG_MAP_NAMESPACES
  value: {{ include "sdo.configMapNamespaces" . | quote }}
- name: REQUIRE_SHA256
  value: {{ .Values.driverSources.requireSha256 | quote }}
{{- if .Values.admission.enabled }}
- name: WEBHOOK_ADDRESS
  value: "0.0.0.0:{{ .Values.admission.port }}"
- name: WEBHOOK_SERVICE
  value: "{{ .Release.Namespace }}/{{ include "sdo.webhookName" . }}:443"
- name: WEBHOOK_CERT
  value: /etc/storage-operator/webhook/tls.crt
- name: WEBHOOK_KEY
  value: /etc/storage-operator/webhook/tls.key
- name: WEBHOOK_CA
  value: /etc/storage-operator/webhook/ca.crt
- name: WEBHOOK_CONFIGURATION
  value: {{ include "sdo.fullname" . | quote }}
- name: WEBHOOK_OWNER
  value: {{ printf "%s-operator-admission" (include "sdo.fullname" .) | quote }}
- name: AGENT_SERVICE_ACCOUNT
  value: "{{ .Release.Namespace }}:{{ include "sdo.agentServiceAccountName" . }}"
{{- end }}
{{- end -}}

{{/* The agent's environment for the source policy (checked again on the node). */}}
{{- define "sdo.agentSourceEnv" -}}
- name: CONFIG_MAP_NAMESPACES
  value: {{ include "sdo.configMapNamespaces" . | quote }}
- name: REQUIRE_SHA256
  value: {{ .Values.driverSources.requireSha256 | quote }}
{{- end -}}
