{{- define "edgefleet.labels" -}}
app.kubernetes.io/name: edgefleet-server
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "edgefleet.selector" -}}
app.kubernetes.io/name: edgefleet-server
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
