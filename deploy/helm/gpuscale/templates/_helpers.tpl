{{/* Labels of every object: what deploy/ sets, plus Helm's own. */}}
{{- define "gpuscale.labels" -}}
app.kubernetes.io/name: gpuscale
app.kubernetes.io/component: {{ . }}
app.kubernetes.io/part-of: gpuscale
{{- end }}

{{- define "gpuscale.helmLabels" -}}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* metadata.labels for component (dict "root" $ "component" "controller"). */}}
{{- define "gpuscale.metaLabels" -}}
labels:
  {{- include "gpuscale.labels" .component | nindent 2 }}
  {{- include "gpuscale.helmLabels" .root | nindent 2 }}
{{- end }}

{{- define "gpuscale.selector" -}}
app.kubernetes.io/name: gpuscale
app.kubernetes.io/component: {{ . }}
{{- end }}

{{- define "gpuscale.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{- define "gpuscale.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
{{- if . }}
fsGroup: 65532
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "gpuscale.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "gpuscale.validate" -}}
{{- if not (has .Values.actuation (list "hpa" "prometheus")) }}
{{- fail (printf "actuation: expected hpa or prometheus, got %q" .Values.actuation) }}
{{- end }}
{{- if not (has .Values.tls.source (list "cert-manager" "caBundle")) }}
{{- fail (printf "tls.source: expected cert-manager or caBundle, got %q" .Values.tls.source) }}
{{- end }}
{{- if and (eq .Values.actuation "hpa") (eq .Values.tls.source "caBundle") (not .Values.tls.caBundle) }}
{{- fail "tls.caBundle: required with tls.source=caBundle (base64 PEM of the CA that signed Secret tls.secretName)" }}
{{- end }}
{{- if not (has .Values.scheduler.extender.scoring (list "binpack" "spread" "fragmentation")) }}
{{- fail (printf "scheduler.extender.scoring: expected binpack, spread or fragmentation, got %q" .Values.scheduler.extender.scoring) }}
{{- end }}
{{- range .Values.scheduler.extender.inventory }}
{{- if not (has . (list "annotation" "dcgm" "gfd" "dra")) }}
{{- fail (printf "scheduler.extender.inventory: unknown source %q (expected annotation, dcgm, gfd, dra)" .) }}
{{- end }}
{{- end }}
{{- if and (has "dcgm" .Values.scheduler.extender.inventory) (not .Values.scheduler.extender.prometheusUrl) }}
{{- fail "scheduler.extender.prometheusUrl: required for inventory source dcgm" }}
{{- end }}
{{- $plugin := .Values.nodeAgent.devicePlugin }}
{{- if and .Values.nodeAgent.enabled $plugin.enabled $plugin.nvidiaDevicePluginOnSameNodes }}
{{- fail "nodeAgent.devicePlugin.enabled: NVIDIA's device plugin would hand out the same GPUs on the node agent's nodes (nodeAgent.devicePlugin.nvidiaDevicePluginOnSameNodes is true); keep it off them (its DaemonSet's affinity) or uninstall it, then set nvidiaDevicePluginOnSameNodes=false" }}
{{- end }}
{{- end }}

{{/* The node agent runs as root with the device plugin (the kubelet's sockets are root's). */}}
{{- define "gpuscale.rootSecurity" -}}
runAsNonRoot: false
runAsUser: 0
runAsGroup: 0
{{- end }}
