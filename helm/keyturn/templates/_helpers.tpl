{{/* Chart name. */}}
{{- define "keyturn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name, max 63 chars (DNS label). */}}
{{- define "keyturn.fullname" -}}
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

{{/* Per-component name; fullname cut to leave room for "-worker". Call with (dict "root" $ "component" "api"). */}}
{{- define "keyturn.componentName" -}}
{{- printf "%s-%s" (include "keyturn.fullname" .root | trunc 56 | trimSuffix "-") .component }}
{{- end }}

{{- define "keyturn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keyturn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyturn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keyturn.labels" -}}
helm.sh/chart: {{ include "keyturn.chart" . }}
{{ include "keyturn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyturn
{{- end }}

{{/* (dict "root" $ "component" "api") */}}
{{- define "keyturn.componentSelectorLabels" -}}
{{ include "keyturn.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* (dict "root" $ "component" "api") */}}
{{- define "keyturn.componentLabels" -}}
{{ include "keyturn.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "keyturn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keyturn.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret holding KEYTURN_ADMIN_TOKEN and KEYTURN_MASTER_KEY. */}}
{{- define "keyturn.secretName" -}}
{{- if .Values.secrets.create }}
{{- include "keyturn.fullname" . }}
{{- else if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- fail "set secrets.existingSecret to a Secret with keys KEYTURN_ADMIN_TOKEN, KEYTURN_MASTER_KEY and KEYTURN_AUDIT_SIGNING_KEY, or secrets.create=true" }}
{{- end }}
{{- end }}

{{- define "keyturn.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* Env common to both components. (dict "root" $ "component" "api") */}}
{{- define "keyturn.env" -}}
{{- $v := .root.Values -}}
- name: NODE_ENV
  value: production
- name: HOST
  value: "0.0.0.0"
- name: PORT
  value: {{ $v.config.port | quote }}
- name: KEYTURN_COMPONENTS
  value: {{ .component | quote }}
- name: KEYTURN_PREFIX
  value: {{ $v.config.prefix | quote }}
- name: LOG_LEVEL
  value: {{ $v.config.logLevel | quote }}
- name: REDIS_URL
{{- if $v.redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.existingSecret }}
      key: {{ $v.redis.existingSecretKey }}
{{- else }}
  value: {{ required "set redis.url (or redis.existingSecret)" $v.redis.url | quote }}
{{- end }}
- name: KEYTURN_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "keyturn.secretName" .root }}
      key: KEYTURN_ADMIN_TOKEN
- name: KEYTURN_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "keyturn.secretName" .root }}
      key: KEYTURN_MASTER_KEY
# Signs audit checkpoints (workers); the API derives the public key from it. A worker refuses to start in
# production without it.
- name: KEYTURN_AUDIT_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "keyturn.secretName" .root }}
      key: KEYTURN_AUDIT_SIGNING_KEY
      optional: {{ ne .component "worker" }}
{{- if and (eq .component "worker") $v.storage.auditArchive.existingClaim }}
- name: KEYTURN_AUDIT_ARCHIVE_DIR
  value: /var/lib/keyturn/audit
- name: KEYTURN_AUDIT_STREAM_DAYS
  value: {{ $v.storage.auditArchive.streamDays | quote }}
- name: KEYTURN_AUDIT_RETENTION_DAYS
  value: {{ $v.storage.auditArchive.retentionDays | quote }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod template shared by both Deployments.
(dict "root" $ "component" "api" "cfg" $.Values.api "env" (list ...component env...))
*/}}
{{- define "keyturn.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $cfg := .cfg -}}
metadata:
  labels:
    {{- include "keyturn.componentLabels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- with $cfg.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or $v.secrets.create $cfg.podAnnotations }}
  annotations:
    {{- if $v.secrets.create }}
    # Roll pods when the chart-managed Secret changes.
    checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
    {{- end }}
    {{- with $cfg.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  serviceAccountName: {{ include "keyturn.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
  # Service links would inject KEYTURN_*/REDIS_* variables that collide with app config.
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .component }}
      image: {{ include "keyturn.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      ports:
        - name: http
          containerPort: {{ $v.config.port }}
          protocol: TCP
      env:
        {{- include "keyturn.env" (dict "root" $root "component" .component) | nindent 8 }}
        {{- with .env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $cfg.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.extraEnvFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml $v.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml $v.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml $v.probes.readiness | nindent 8 }}
      {{- if gt (int $cfg.preStopSleepSeconds) 0 }}
      lifecycle:
        preStop:
          exec:
            command: ["sleep", "{{ int $cfg.preStopSleepSeconds }}"]
      {{- end }}
      resources:
        {{- toYaml $cfg.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /app/.keyturn
        - name: tmp
          mountPath: /tmp
        {{- if and (eq .component "worker") $v.storage.auditArchive.existingClaim }}
        - name: audit-archive
          mountPath: /var/lib/keyturn/audit
        {{- end }}
  volumes:
    - name: data
      {{- if $v.storage.data.existingClaim }}
      persistentVolumeClaim:
        claimName: {{ $v.storage.data.existingClaim }}
      {{- else }}
      emptyDir:
        sizeLimit: {{ $v.storage.data.sizeLimit }}
      {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.storage.tmp.sizeLimit }}
    {{- if and (eq .component "worker") $v.storage.auditArchive.existingClaim }}
    - name: audit-archive
      persistentVolumeClaim:
        claimName: {{ $v.storage.auditArchive.existingClaim }}
    {{- end }}
  {{- with $cfg.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
