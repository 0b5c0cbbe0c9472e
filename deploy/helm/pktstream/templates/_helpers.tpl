{{- define "pktstream.labels" -}}
app.kubernetes.io/part-of: pktstream
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pktstream.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* the Secret of a role's Kafka credentials: (dict "root" $ "role" "producer") */}}
{{- define "pktstream.kafkaSecret" -}}
{{- if .root.Values.kafka.sasl.existingSecretPrefix -}}
{{ printf "%s-%s" .root.Values.kafka.sasl.existingSecretPrefix .role }}
{{- else -}}
{{ printf "%s-kafka-%s" .root.Release.Name .role }}
{{- end -}}
{{- end -}}
