{{- define "pktstream.labels" -}}
app.kubernetes.io/part-of: pktstream
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pktstream.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "pktstream.kafkaSecret" -}}
{{ .Values.kafka.sasl.existingSecret | default (printf "%s-kafka" .Release.Name) }}
{{- end -}}
