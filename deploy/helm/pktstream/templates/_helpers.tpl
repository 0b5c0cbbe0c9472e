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

{{/* values of an older chart that would otherwise be ignored without a word (set ones only: a
     values file copied from it carries them empty) */}}
{{- define "pktstream.checkValues" -}}
{{- $sasl := .Values.kafka.sasl -}}
{{- range $old := list "username" "password" "existingSecret" -}}
{{- if index $sasl $old -}}
{{- fail (printf "kafka.sasl.%s is no longer read: each role has its own Kafka user (kafka.sasl.users.producer|usage|alerts.username/password, or kafka.sasl.existingSecretPrefix); see docs/deployment.md, \"Least privilege\"" $old) -}}
{{- end -}}
{{- end -}}
{{- end -}}
