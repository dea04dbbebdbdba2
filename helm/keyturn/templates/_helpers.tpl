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

{{/*
One env entry from a value: (list "NAME" value). Left out when the value is unset ("" or null, an empty list), so
that Keyturn's own default applies. Whole numbers are written as such (not 1e+06), lists comma-separated.
*/}}
{{- define "keyturn.envVar" -}}
{{- $text := include "keyturn.scalar" (index . 1) -}}
{{- if ne $text "" }}
- name: {{ index . 0 }}
  value: {{ $text | quote }}
{{- end }}
{{- end }}

{{- define "keyturn.scalar" -}}
{{- if kindIs "invalid" . }}
{{- else if kindIs "float64" . }}{{ int64 . }}
{{- else if kindIs "slice" . }}{{ join "," . }}
{{- else }}{{ . }}
{{- end }}
{{- end }}

{{/* Fails on a topology set twice or not at all; the application refuses the same (one line naming the variables). */}}
{{- define "keyturn.redisTopology" -}}
{{- $redis := .Values.redis -}}
{{- $set := list -}}
{{- if or $redis.url $redis.existingSecret }}{{ $set = append $set "redis.url/redis.existingSecret (REDIS_URL)" }}{{ end }}
{{- if $redis.sentinel.hosts }}{{ $set = append $set "redis.sentinel.hosts (REDIS_SENTINEL_HOSTS)" }}{{ end }}
{{- if $redis.cluster.hosts }}{{ $set = append $set "redis.cluster.hosts (REDIS_CLUSTER_HOSTS)" }}{{ end }}
{{- if gt (len $set) 1 }}
{{- fail (printf "%s are all set: Keyturn uses exactly one Redis topology; unset the others" (join " and " $set)) }}
{{- end }}
{{- if eq (len $set) 0 }}
{{- fail "set one Redis topology: redis.url (or redis.existingSecret), redis.sentinel.hosts with redis.sentinel.masterName, or redis.cluster.hosts" }}
{{- end }}
{{- if and $redis.sentinel.hosts (not $redis.sentinel.masterName) }}
{{- fail "redis.sentinel.masterName is required with redis.sentinel.hosts (the name in `sentinel monitor <name> ...`)" }}
{{- end }}
{{- if and $redis.username (not $redis.password.existingSecret) }}
{{- fail "redis.username needs redis.password.existingSecret (an ACL user logs in with both)" }}
{{- end }}
{{- end }}

{{/* Path of the token Vault's Kubernetes auth reads; "" for Keyturn's default. */}}
{{- define "keyturn.vaultTokenPath" -}}
{{- $k8s := .Values.vault.auth.kubernetes -}}
{{- if $k8s.tokenPath }}{{ $k8s.tokenPath }}
{{- else if $k8s.projectedToken.enabled }}/var/run/secrets/keyturn/vault/token
{{- end }}
{{- end }}

{{/* "true" when the pods get the projected service-account token for Vault. */}}
{{- define "keyturn.vaultProjectedToken" -}}
{{- $vault := .Values.vault -}}
{{- if and $vault.address $vault.auth.kubernetes.role $vault.auth.kubernetes.projectedToken.enabled (not $vault.auth.kubernetes.tokenPath) }}true{{ end }}
{{- end }}

{{/* Checks of combinations the application would refuse at start, made at render time with the values' names. */}}
{{- define "keyturn.validate" -}}
{{- $v := .Values -}}
{{- include "keyturn.redisTopology" . -}}
{{- if and $v.tokensFile.existingSecret $v.tokensFile.content }}
{{- fail "tokensFile.existingSecret and tokensFile.content exclude each other: set one" }}
{{- end }}
{{- if and $v.tls.clientCa.existingSecret (not $v.tls.existingSecret) }}
{{- fail "tls.clientCa.existingSecret (mTLS) needs HTTPS: set tls.existingSecret" }}
{{- end }}
{{- if and $v.tls.requireClientCert (not $v.tls.clientCa.existingSecret) }}
{{- fail "tls.requireClientCert needs tls.clientCa.existingSecret, the CA that signs client certificates" }}
{{- end }}
{{- $vault := $v.vault -}}
{{- if $vault.address }}
{{- $method := $vault.auth.method | default "" -}}
{{- if not (has $method (list "" "token" "approle" "kubernetes")) }}
{{- fail (printf "vault.auth.method must be token, approle, kubernetes or empty, got %q" $method) }}
{{- end }}
{{- if and (eq $method "kubernetes") (not $vault.auth.kubernetes.role) }}
{{- fail "vault.auth.method=kubernetes needs vault.auth.kubernetes.role" }}
{{- end }}
{{- if and $vault.auth.kubernetes.role (not (include "keyturn.vaultTokenPath" .)) (not $v.serviceAccount.automountServiceAccountToken) }}
{{- fail "Vault's Kubernetes auth needs a service-account token: keep vault.auth.kubernetes.projectedToken.enabled=true, set vault.auth.kubernetes.tokenPath, or serviceAccount.automountServiceAccountToken=true" }}
{{- end }}
{{- end }}
{{- $n := $v.notifications -}}
{{- if and (or $n.webhookUrls $n.urlsKey) (not $n.existingSecret) }}
{{- fail "notifications need notifications.existingSecret with the HMAC key (KEYTURN_NOTIFY_WEBHOOK_SECRET)" }}
{{- end }}
{{- if and $n.webhookUrls $n.urlsKey }}
{{- fail "notifications.webhookUrls and notifications.urlsKey exclude each other: set one" }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the tokens file, "" when there is none. */}}
{{- define "keyturn.tokensSecretName" -}}
{{- if .Values.tokensFile.existingSecret }}{{ .Values.tokensFile.existingSecret }}
{{- else if .Values.tokensFile.content }}{{ include "keyturn.fullname" . }}-tokens
{{- end }}
{{- end }}

{{/* Env of one component. (dict "root" $ "component" "api") */}}
{{- define "keyturn.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $component := .component -}}
{{- $redis := $v.redis -}}
{{- $audit := $v.audit -}}
{{- $vault := $v.vault -}}
{{- $aws := $v.aws -}}
{{- $n := $v.notifications -}}
- name: NODE_ENV
  value: production
- name: KEYTURN_COMPONENTS
  value: {{ $component | quote }}
- name: KEYTURN_STATE_DIR
  value: /app/.keyturn
{{- include "keyturn.envVar" (list "HOST" $v.config.host) }}
{{- include "keyturn.envVar" (list "PORT" $v.config.port) }}
{{- include "keyturn.envVar" (list "LOG_LEVEL" $v.config.logLevel) }}
{{- include "keyturn.envVar" (list "LOG_FORMAT" $v.config.logFormat) }}
{{- include "keyturn.envVar" (list "KEYTURN_PREFIX" $v.config.prefix) }}
{{- include "keyturn.envVar" (list "KEYTURN_CORS_ORIGINS" $v.config.corsOrigins) }}
{{- include "keyturn.envVar" (list "KEYTURN_MAX_BODY_BYTES" $v.config.maxBodyBytes) }}
{{- include "keyturn.envVar" (list "KEYTURN_SECRET_MAX_AGE" $v.config.secretMaxAge) }}
{{- include "keyturn.envVar" (list "KEYTURN_RATE_LIMIT_MAX" $v.config.rateLimit.max) }}
{{- include "keyturn.envVar" (list "KEYTURN_RATE_LIMIT_WINDOW_MS" $v.config.rateLimit.windowMs) }}
{{- include "keyturn.envVar" (list "KEYTURN_IMPORT_FAILURES_MAX" $v.config.importFailures.max) }}
{{- include "keyturn.envVar" (list "KEYTURN_IMPORT_FAILURES_WINDOW" $v.config.importFailures.window) }}
{{- include "keyturn.envVar" (list "KEYTURN_EVENTS_HEARTBEAT_MS" $v.config.events.heartbeatMs) }}
{{- include "keyturn.envVar" (list "KEYTURN_EVENTS_MAX_CLIENTS" $v.config.events.maxClients) }}
{{- include "keyturn.envVar" (list "KEYTURN_OVERDUE_SCAN_INTERVAL_MS" $v.config.overdueScanIntervalMs) }}
{{- /* Redis: one topology (keyturn.validate refuses two), credentials and TLS for any of them. */}}
{{- if $redis.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $redis.existingSecret }}
      key: {{ $redis.existingSecretKey }}
{{- else }}
{{- include "keyturn.envVar" (list "REDIS_URL" $redis.url) }}
{{- end }}
{{- include "keyturn.envVar" (list "REDIS_SENTINEL_HOSTS" $redis.sentinel.hosts) }}
{{- include "keyturn.envVar" (list "REDIS_SENTINEL_MASTER_NAME" $redis.sentinel.masterName) }}
{{- if $redis.sentinel.password.existingSecret }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $redis.sentinel.password.existingSecret }}
      key: {{ $redis.sentinel.password.key }}
{{- end }}
{{- include "keyturn.envVar" (list "REDIS_CLUSTER_HOSTS" $redis.cluster.hosts) }}
{{- include "keyturn.envVar" (list "REDIS_USERNAME" $redis.username) }}
{{- if $redis.password.existingSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $redis.password.existingSecret }}
      key: {{ $redis.password.key }}
{{- end }}
{{- if $redis.tls.enabled }}
{{- include "keyturn.envVar" (list "REDIS_TLS" "true") }}
{{- end }}
{{- if $redis.tls.caSecret }}
{{- include "keyturn.envVar" (list "REDIS_TLS_CA_FILE" (printf "/etc/keyturn/redis-ca/%s" $redis.tls.caKey)) }}
{{- end }}
{{- include "keyturn.envVar" (list "KEYTURN_REDIS_MIN_REPLICAS_ACK" $redis.minReplicasAck) }}
{{- include "keyturn.envVar" (list "KEYTURN_REDIS_WAIT_TIMEOUT_MS" $redis.waitTimeoutMs) }}
- name: KEYTURN_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "keyturn.secretName" $root }}
      key: KEYTURN_ADMIN_TOKEN
{{- /* The key-encryption key: env keeps it in the Secret; aws-kms and vault-transit keep it in the provider, and the
Secret's KEYTURN_MASTER_KEY (and KEYTURN_MASTER_KEY_PREVIOUS) then only read what they sealed, until a rekey. */}}
{{- include "keyturn.envVar" (list "KEYTURN_KEK_PROVIDER" $v.kek.provider) }}
- name: KEYTURN_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "keyturn.secretName" $root }}
      key: KEYTURN_MASTER_KEY
      optional: {{ and $v.kek.provider (ne $v.kek.provider "env") }}
- name: KEYTURN_MASTER_KEY_PREVIOUS
  valueFrom:
    secretKeyRef:
      name: {{ include "keyturn.secretName" $root }}
      key: KEYTURN_MASTER_KEY_PREVIOUS
      optional: true
{{- include "keyturn.envVar" (list "KEYTURN_KMS_KEY_ID" $v.kek.kms.keyId) }}
{{- include "keyturn.envVar" (list "AWS_ENDPOINT_URL_KMS" $v.kek.kms.endpoint) }}
{{- include "keyturn.envVar" (list "KEYTURN_TRANSIT_KEY" $v.kek.transit.key) }}
{{- include "keyturn.envVar" (list "KEYTURN_TRANSIT_MOUNT" $v.kek.transit.mount) }}
{{- include "keyturn.envVar" (list "KEYTURN_KEK_CACHE_TTL" $v.kek.cacheTtl) }}
{{- include "keyturn.envVar" (list "KEYTURN_KEK_CACHE_MAX" $v.kek.cacheMax) }}
{{- /* Signs audit checkpoints (workers; a worker refuses to start in production without it); the API derives the public key from it. */}}
{{- if $audit.signingKey.asFile }}
{{- include "keyturn.envVar" (list "KEYTURN_AUDIT_SIGNING_KEY_FILE" (printf "/etc/keyturn/audit-signing/%s" $audit.signingKey.key)) }}
{{- else }}
- name: KEYTURN_AUDIT_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $audit.signingKey.existingSecret | default (include "keyturn.secretName" $root) }}
      key: {{ $audit.signingKey.key }}
      optional: {{ ne $component "worker" }}
{{- end }}
{{- if $audit.publicKeys.configMap }}
{{- include "keyturn.envVar" (list "KEYTURN_AUDIT_PUBLIC_KEY_FILE" (printf "/etc/keyturn/audit-public/%s" $audit.publicKeys.key)) }}
{{- end }}
{{- include "keyturn.envVar" (list "KEYTURN_AUDIT_CHECKPOINT_EVENTS" $audit.checkpointEvents) }}
{{- include "keyturn.envVar" (list "KEYTURN_AUDIT_CHECKPOINT_INTERVAL_MS" $audit.checkpointIntervalMs) }}
{{- if and (eq $component "worker") $audit.archive.existingClaim }}
{{- include "keyturn.envVar" (list "KEYTURN_AUDIT_ARCHIVE_DIR" "/var/lib/keyturn/audit") }}
{{- include "keyturn.envVar" (list "KEYTURN_AUDIT_STREAM_DAYS" $audit.archive.streamDays) }}
{{- include "keyturn.envVar" (list "KEYTURN_AUDIT_RETENTION_DAYS" $audit.archive.retentionDays) }}
{{- end }}
{{- if eq $component "api" }}
{{- if include "keyturn.tokensSecretName" $root }}
{{- include "keyturn.envVar" (list "KEYTURN_TOKENS_FILE" (printf "/etc/keyturn/tokens/%s" $v.tokensFile.key)) }}
{{- end }}
{{- if $v.tls.existingSecret }}
{{- include "keyturn.envVar" (list "KEYTURN_TLS_CERT_FILE" (printf "/etc/keyturn/tls/%s" $v.tls.certKey)) }}
{{- include "keyturn.envVar" (list "KEYTURN_TLS_KEY_FILE" (printf "/etc/keyturn/tls/%s" $v.tls.keyKey)) }}
{{- end }}
{{- if $v.tls.clientCa.existingSecret }}
{{- include "keyturn.envVar" (list "KEYTURN_TLS_CLIENT_CA_FILE" (printf "/etc/keyturn/client-ca/%s" $v.tls.clientCa.key)) }}
{{- end }}
{{- if $v.tls.requireClientCert }}
{{- include "keyturn.envVar" (list "KEYTURN_TLS_REQUIRE_CLIENT_CERT" "true") }}
{{- end }}
{{- end }}
{{- if eq $component "worker" }}
{{- include "keyturn.envVar" (list "KEYTURN_ROTATION_CONCURRENCY" $v.worker.concurrency) }}
{{- end }}
{{- include "keyturn.envVar" (list "KEYTURN_ROTATION_ATTEMPTS" $v.rotation.attempts) }}
{{- include "keyturn.envVar" (list "KEYTURN_ROTATION_BACKOFF_MS" $v.rotation.backoffMs) }}
{{- include "keyturn.envVar" (list "KEYTURN_ROTATION_LEASE_MS" $v.rotation.leaseMs) }}
{{- include "keyturn.envVar" (list "KEYTURN_DOWNSTREAM_TIMEOUT_MS" $v.rotation.downstreamTimeoutMs) }}
{{- include "keyturn.envVar" (list "KEYTURN_RECONCILE_INTERVAL_MS" $v.rotation.reconcileIntervalMs) }}
{{- include "keyturn.envVar" (list "KEYTURN_LEASE_DEFAULT_TTL" $v.leases.defaultTtl) }}
{{- include "keyturn.envVar" (list "KEYTURN_LEASE_MAX_TTL" $v.leases.maxTtl) }}
{{- include "keyturn.envVar" (list "KEYTURN_LEASE_SWEEP_INTERVAL_MS" $v.leases.sweepIntervalMs) }}
{{- include "keyturn.envVar" (list "KEYTURN_LEASE_CONCURRENCY" $v.leases.concurrency) }}
{{- include "keyturn.envVar" (list "KEYTURN_LEASE_RETENTION" $v.leases.retention) }}
{{- include "keyturn.envVar" (list "KEYTURN_APPROVAL_TTL" $v.approvals.ttl) }}
{{- /* The outbound fence: production refuses every downstream the allow list does not name. */}}
{{- include "keyturn.envVar" (list "KEYTURN_OUTBOUND_ALLOW" (join "," $v.outbound.allow)) }}
{{- include "keyturn.envVar" (list "KEYTURN_OUTBOUND_DENY" (join "," $v.outbound.deny)) }}
{{- /* Vault store. */}}
{{- if $vault.address }}
{{- include "keyturn.envVar" (list "VAULT_ADDR" $vault.address) }}
{{- include "keyturn.envVar" (list "VAULT_NAMESPACE" $vault.namespace) }}
{{- include "keyturn.envVar" (list "KEYTURN_VAULT_PENDING_PREFIX" $vault.pendingPrefix) }}
{{- include "keyturn.envVar" (list "VAULT_AUTH_METHOD" $vault.auth.method) }}
{{- if $vault.auth.token.existingSecret }}
- name: VAULT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $vault.auth.token.existingSecret }}
      key: {{ $vault.auth.token.key }}
{{- end }}
{{- if $vault.auth.appRole.existingSecret }}
- name: VAULT_ROLE_ID
  valueFrom:
    secretKeyRef:
      name: {{ $vault.auth.appRole.existingSecret }}
      key: {{ $vault.auth.appRole.roleIdKey }}
- name: VAULT_SECRET_ID
  valueFrom:
    secretKeyRef:
      name: {{ $vault.auth.appRole.existingSecret }}
      key: {{ $vault.auth.appRole.secretIdKey }}
{{- include "keyturn.envVar" (list "VAULT_APPROLE_MOUNT" $vault.auth.appRole.mount) }}
{{- end }}
{{- if $vault.auth.kubernetes.role }}
{{- include "keyturn.envVar" (list "VAULT_K8S_ROLE" $vault.auth.kubernetes.role) }}
{{- include "keyturn.envVar" (list "VAULT_K8S_MOUNT" $vault.auth.kubernetes.mount) }}
{{- include "keyturn.envVar" (list "VAULT_K8S_TOKEN_PATH" (include "keyturn.vaultTokenPath" $root)) }}
{{- end }}
{{- end }}
{{- /* AWS Secrets Manager store. Without static keys the SDK's default chain (IRSA, EKS Pod Identity) applies. */}}
{{- if $aws.enabled }}
{{- include "keyturn.envVar" (list "KEYTURN_AWS" "on") }}
{{- end }}
{{- include "keyturn.envVar" (list "AWS_REGION" $aws.region) }}
{{- include "keyturn.envVar" (list "AWS_ENDPOINT_URL_SECRETS_MANAGER" $aws.endpoint) }}
{{- include "keyturn.envVar" (list "KEYTURN_AWS_MAX_ATTEMPTS" $aws.maxAttempts) }}
{{- if $aws.credentials.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $aws.credentials.existingSecret }}
      key: {{ $aws.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $aws.credentials.existingSecret }}
      key: {{ $aws.credentials.secretAccessKeyKey }}
{{- if $aws.credentials.sessionTokenKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $aws.credentials.existingSecret }}
      key: {{ $aws.credentials.sessionTokenKey }}
{{- end }}
{{- end }}
{{- /* Webhook notifications. */}}
{{- if $n.urlsKey }}
- name: KEYTURN_NOTIFY_WEBHOOK_URLS
  valueFrom:
    secretKeyRef:
      name: {{ $n.existingSecret }}
      key: {{ $n.urlsKey }}
{{- else }}
{{- include "keyturn.envVar" (list "KEYTURN_NOTIFY_WEBHOOK_URLS" $n.webhookUrls) }}
{{- end }}
{{- if $n.existingSecret }}
- name: KEYTURN_NOTIFY_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $n.existingSecret }}
      key: {{ $n.secretKey }}
{{- end }}
{{- include "keyturn.envVar" (list "KEYTURN_NOTIFY_EVENTS" $n.events) }}
{{- include "keyturn.envVar" (list "KEYTURN_NOTIFY_ATTEMPTS" $n.attempts) }}
{{- include "keyturn.envVar" (list "KEYTURN_NOTIFY_BACKOFF_MS" $n.backoffMs) }}
{{- include "keyturn.envVar" (list "KEYTURN_NOTIFY_TIMEOUT_MS" $n.timeoutMs) }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volume mounts of one component beyond data and tmp. (dict "root" $ "component" "api" "cfg" $.Values.api) */}}
{{- define "keyturn.volumeMounts" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- if and (eq .component "worker") $v.audit.archive.existingClaim }}
- name: audit-archive
  mountPath: /var/lib/keyturn/audit
{{- end }}
{{- if $v.redis.tls.caSecret }}
- name: redis-ca
  mountPath: /etc/keyturn/redis-ca
  readOnly: true
{{- end }}
{{- if $v.audit.signingKey.asFile }}
- name: audit-signing
  mountPath: /etc/keyturn/audit-signing
  readOnly: true
{{- end }}
{{- if $v.audit.publicKeys.configMap }}
- name: audit-public
  mountPath: /etc/keyturn/audit-public
  readOnly: true
{{- end }}
{{- if include "keyturn.vaultProjectedToken" $root }}
- name: vault-token
  mountPath: /var/run/secrets/keyturn/vault
  readOnly: true
{{- end }}
{{- if eq .component "api" }}
{{- if include "keyturn.tokensSecretName" $root }}
- name: tokens
  mountPath: /etc/keyturn/tokens
  readOnly: true
{{- end }}
{{- if $v.tls.existingSecret }}
- name: tls
  mountPath: /etc/keyturn/tls
  readOnly: true
{{- end }}
{{- if $v.tls.clientCa.existingSecret }}
- name: client-ca
  mountPath: /etc/keyturn/client-ca
  readOnly: true
{{- end }}
{{- end }}
{{- with $v.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- with .cfg.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes of one component beyond data and tmp. (dict "root" $ "component" "api" "cfg" $.Values.api) */}}
{{- define "keyturn.volumes" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- if and (eq .component "worker") $v.audit.archive.existingClaim }}
- name: audit-archive
  persistentVolumeClaim:
    claimName: {{ $v.audit.archive.existingClaim }}
{{- end }}
{{- if $v.redis.tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ $v.redis.tls.caSecret }}
    items:
      - key: {{ $v.redis.tls.caKey }}
        path: {{ $v.redis.tls.caKey }}
{{- end }}
{{- if $v.audit.signingKey.asFile }}
- name: audit-signing
  secret:
    secretName: {{ $v.audit.signingKey.existingSecret | default (include "keyturn.secretName" $root) }}
    items:
      - key: {{ $v.audit.signingKey.key }}
        path: {{ $v.audit.signingKey.key }}
    # The API only derives the public key from it; a worker needs it.
    optional: {{ ne .component "worker" }}
{{- end }}
{{- if $v.audit.publicKeys.configMap }}
- name: audit-public
  configMap:
    name: {{ $v.audit.publicKeys.configMap }}
    items:
      - key: {{ $v.audit.publicKeys.key }}
        path: {{ $v.audit.publicKeys.key }}
{{- end }}
{{- if include "keyturn.vaultProjectedToken" $root }}
- name: vault-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: {{ int64 $v.vault.auth.kubernetes.projectedToken.expirationSeconds }}
          {{- with $v.vault.auth.kubernetes.projectedToken.audience }}
          audience: {{ . | quote }}
          {{- end }}
{{- end }}
{{- if eq .component "api" }}
{{- with include "keyturn.tokensSecretName" $root }}
- name: tokens
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $v.tokensFile.key }}
        path: {{ $v.tokensFile.key }}
{{- end }}
{{- if $v.tls.existingSecret }}
- name: tls
  secret:
    secretName: {{ $v.tls.existingSecret }}
    items:
      - key: {{ $v.tls.certKey }}
        path: {{ $v.tls.certKey }}
      - key: {{ $v.tls.keyKey }}
        path: {{ $v.tls.keyKey }}
{{- end }}
{{- if $v.tls.clientCa.existingSecret }}
- name: client-ca
  secret:
    secretName: {{ $v.tls.clientCa.existingSecret }}
    items:
      - key: {{ $v.tls.clientCa.key }}
        path: {{ $v.tls.clientCa.key }}
{{- end }}
{{- end }}
{{- with $v.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- with .cfg.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
A probe's handler: HTTP(S) GET of the path, or a TCP check when the API refuses clients without a certificate (the
kubelet has none). (dict "root" $ "component" "api" "path" "/healthz")
*/}}
{{- define "keyturn.probeHandler" -}}
{{- $v := .root.Values -}}
{{- $api := eq .component "api" -}}
{{- if and $api $v.tls.requireClientCert }}
tcpSocket:
  port: http
{{- else }}
httpGet:
  path: {{ .path }}
  port: http
  {{- if and $api $v.tls.existingSecret }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{- end }}

{{/*
Pod template shared by both Deployments.
(dict "root" $ "component" "api" "cfg" $.Values.api)
*/}}
{{- define "keyturn.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $cfg := .cfg -}}
{{- include "keyturn.validate" $root -}}
metadata:
  labels:
    {{- include "keyturn.componentLabels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- with $cfg.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or $v.secrets.create $v.tokensFile.content $cfg.podAnnotations }}
  annotations:
    {{- if $v.secrets.create }}
    # Roll pods when the chart-managed Secret changes.
    checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
    {{- end }}
    {{- if $v.tokensFile.content }}
    # Roll pods when the chart-rendered tokens file changes (it is read at start).
    checksum/tokens: {{ include (print $root.Template.BasePath "/secret-tokens.yaml") $root | sha256sum }}
    {{- end }}
    {{- with $cfg.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  serviceAccountName: {{ include "keyturn.serviceAccountName" $root }}
  automountServiceAccountToken: {{ or $v.serviceAccount.automountServiceAccountToken $v.kubernetesSync.enabled }}
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
        {{- with $cfg.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if or $v.extraEnvFrom $cfg.extraEnvFrom }}
      envFrom:
        {{- with $v.extraEnvFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $cfg.extraEnvFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      startupProbe:
        {{- include "keyturn.probeHandler" (dict "root" $root "component" .component "path" "/healthz") | nindent 8 }}
        {{- toYaml $v.probes.startup | nindent 8 }}
      livenessProbe:
        {{- include "keyturn.probeHandler" (dict "root" $root "component" .component "path" "/healthz") | nindent 8 }}
        {{- toYaml $v.probes.liveness | nindent 8 }}
      readinessProbe:
        {{- include "keyturn.probeHandler" (dict "root" $root "component" .component "path" "/readyz") | nindent 8 }}
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
        {{- with include "keyturn.volumeMounts" (dict "root" $root "component" .component "cfg" $cfg) | trim }}
        {{- . | nindent 8 }}
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
    {{- with include "keyturn.volumes" (dict "root" $root "component" .component "cfg" $cfg) | trim }}
    {{- . | nindent 4 }}
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
