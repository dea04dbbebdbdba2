// Configuration comes from the environment (SPEC, Configuration) and is validated once, at start-up, with one
// message per bad variable, so that an operator fixes everything in one pass. Nothing secret is ever echoed:
// for secret variables the message names the variable and the rule, never the value.
import { Buffer } from 'node:buffer';
import { existsSync } from 'node:fs';
import { delimiter } from 'node:path';
import { parseSigningKey } from '../crypto/ed25519-keys.ts';
import { type OutboundPolicy, type OutboundRule, parseOutboundRule } from '../net/outbound.ts';
import { parseDuration } from './duration.ts';
import { NOTIFICATION_EVENTS, type NotificationEvent } from './notification-events.ts';
import { type RedisSettings, redisSettings } from './redis-topology.ts';

export type Component = 'api' | 'worker';

export interface KeyturnConfig {
  port: number;
  host: string;
  /** REDIS_URL of the standalone topology ('' for Sentinel and Cluster). */
  redisUrl: string;
  /** True when no topology was given: start-up may then launch a private redis-server. */
  redisUrlDefaulted: boolean;
  /** The Redis topology and its node credentials, TLS and durability settings (SPEC, "Redis topologies"). */
  redis: RedisSettings;
  prefix: string;
  adminToken: string | undefined;
  masterKey: Buffer | undefined;
  /** The key-encryption key's provider and the others still read (src/keys/; SPEC, "Key-encryption key"). */
  kek: KekSettings;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  logFormat: 'json' | 'pretty';
  components: Component[];
  /** Folder for development state: generated admin token and master key. */
  stateDir: string;
  rotation: {
    /** Attempts of one rotation before it is rolled back and marked failed. */
    attempts: number;
    /** First retry delay; each later one doubles. */
    backoffMs: number;
    concurrency: number;
    /** How long a worker holds a rotation before another may take it over (renewed while it works). */
    leaseMs: number;
    /** Timeout of every downstream connection and statement. */
    downstreamTimeoutMs: number;
    /** How often the reconciler repairs what a crash left half-done. */
    reconcileIntervalMs: number;
  };
  /** The static-token file (SPEC): tokens, and optionally JWT issuers and client certificates, as principals. */
  tokensFile: string | undefined;
  /** HTTPS for the API, and client-certificate (mTLS) authentication when a client CA is given. */
  tls:
    | {
        certFile: string;
        keyFile: string;
        /** PEM of the CA that signs client certificates: enables mTLS principals. */
        clientCaFile?: string;
        /** Refuse the TLS handshake of a client without a certificate (otherwise a bearer token still works). */
        requireClientCert: boolean;
      }
    | undefined;
  /** Requests per window per principal (per client address before authentication). */
  rateLimit: { max: number; windowMs: number };
  /** Origins allowed to call the API from a browser; empty: CORS off (no CORS headers at all). */
  corsOrigins: string[];
  /** KEYTURN_SECRET_MAX_AGE: the longest Cache-Control max-age a secret read gives (SPEC, "Cache hint"). */
  secretMaxAgeMs: number;
  /**
   * Failed imports (a currentPassword the downstream refused) a principal may make per window before imports answer
   * 429: Keyturn must not be a silent password oracle (finding 13 of issue 11).
   */
  importFailures: { max: number; windowMs: number };
  /** Where Keyturn may connect on an operator's behalf: KEYTURN_OUTBOUND_ALLOW and _DENY, stricter in production. */
  outbound: OutboundPolicy;
  /** KEYTURN_APPROVAL_TTL: how long a dual-control request waits for its decisions and its repeat (default 1h). */
  approvalTtlMs: number;
  /** Short-lived credentials (POST /v1/credentials/:id/leases). */
  leases: {
    /** TTL of a lease whose request names none. */
    defaultTtlMs: number;
    /** How long a lease may live, renewals included, counted from its creation. */
    maxTtlMs: number;
    /** How often the sweep revokes leases whose revocation was missed: the most an expired user outlives its lease. */
    sweepIntervalMs: number;
    /** Lease users made or dropped at once per connection by one process (each needs downstream connections). */
    concurrency: number;
    /** How long a revoked lease's record stays readable (GET /v1/leases/:id). */
    retentionMs: number;
  };
  /** HashiCorp Vault (KV v2) store, when VAULT_ADDR is set. */
  vault:
    | {
        address: string;
        auth: VaultAuth;
        namespace?: string;
        pendingPrefix: string;
      }
    | undefined;
  /** AWS Secrets Manager store, when any AWS region or endpoint variable is set (or KEYTURN_AWS=on). */
  aws:
    | {
        region?: string;
        endpoint?: string;
        maxAttempts: number;
        /** Static keys when given in the environment; otherwise the SDK's chain (profiles, roles) decides. */
        credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
      }
    | undefined;
  /**
   * Where Kubernetes Secret sync (src/sync/kubernetes) reaches the API server: the files of KUBECONFIG, else the pod's
   * service account (KUBERNETES_SERVICE_HOST set, as in every pod); undefined when neither, and then a credential
   * that asks for a Kubernetes sync is refused (422). ~/.kube/config is not read implicitly: a server must not pick
   * up whichever cluster a person's shell last pointed at.
   */
  kubernetes: { kubeconfig: string[] } | { inCluster: true } | undefined;
  /** GET /v1/events, the server-sent stream of rotation events. */
  events: {
    /** How often an idle stream gets a keep-alive comment, so that proxies do not cut it. */
    heartbeatMs: number;
    /** Streams one API process serves at once; one more is answered 503 with Retry-After. */
    maxClients: number;
  };
  /** Webhook notifications (rotation succeeded/failed, credential overdue); off while webhookUrls is empty. */
  notifications: {
    webhookUrls: string[];
    /** HMAC-SHA256 key of the signatures; set whenever webhookUrls is not empty. */
    webhookSecret: string | undefined;
    events: NotificationEvent[];
    /** Delivery attempts per event and endpoint, the first included. */
    attempts: number;
    /** First retry delay; each later one doubles, up to five minutes. */
    backoffMs: number;
    timeoutMs: number;
  };
  /** How often a worker looks for credentials past their policy (and raises `credential.overdue` once each). */
  overdueScanIntervalMs: number;
  /** The tamper-evident audit trail: checkpoint signing, archive and retention (src/audit/). */
  audit: {
    signingKey?: string;
    signingKeyFile?: string;
    publicKeyFile?: string;
    /** A signed checkpoint at least every this many events… */
    checkpointEvents: number;
    /** …and at least this often while events come. */
    checkpointIntervalMs: number;
    /** Folder of the day files; unset: no archive, and the stream is never trimmed. */
    archiveDir: string | undefined;
    /** Day files older than this are deleted. */
    retentionDays: number;
    /** Days of events kept in the stream (served by the API); older ones only once archived. */
    streamDays: number;
  };
  /** Test-only fault injection (see rotation/failpoints.ts); empty in production. */
  failpoints: string;
  maxBodyBytes: number;
}

/** How the Vault store gets its token (VAULT_AUTH_METHOD). */
export type VaultAuth =
  | { method: 'token'; token: string }
  | { method: 'approle'; roleId: string; secretId: string; mount: string }
  /** Kubernetes auth: the service-account token is read from `tokenPath` at every login (kubelet rotates it). */
  | { method: 'kubernetes'; role: string; tokenPath: string; mount: string };

export const VAULT_K8S_DEFAULT_TOKEN_PATH = '/var/run/secrets/kubernetes.io/serviceaccount/token';

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

type Env = Record<string, string | undefined>;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Reads and validates the environment. Throws ConfigError listing every bad variable. */
export function loadConfig(env: Env = process.env): KeyturnConfig {
  const problems: string[] = [];

  const int = (name: string, fallback: number, min: number, max: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === '') return fallback;
    if (!/^\d+$/.test(raw.trim())) {
      problems.push(`${name} must be a whole number between ${min} and ${max}, got "${raw}"`);
      return fallback;
    }
    const value = Number(raw.trim());
    if (value < min || value > max) {
      problems.push(`${name} must be between ${min} and ${max}, got ${value}`);
      return fallback;
    }
    return value;
  };

  const port = int('PORT', 8080, 0, 65535);
  const host = env.HOST?.trim() || '127.0.0.1';

  const redis = redisSettings(env, int, problems);
  const redisUrl = redis.topology.kind === 'standalone' ? redis.topology.url : '';

  const prefix = env.KEYTURN_PREFIX?.trim() || 'keyturn';
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(prefix)) {
    problems.push('KEYTURN_PREFIX must be 1-64 characters of letters, digits, "_", "." or "-"');
  }

  const adminToken = env.KEYTURN_ADMIN_TOKEN?.trim() || undefined;
  if (adminToken !== undefined && adminToken.length < 32) {
    problems.push(
      'KEYTURN_ADMIN_TOKEN must be at least 32 characters (make one with `openssl rand -base64 32`)',
    );
  }

  let masterKey: Buffer | undefined;
  const masterKeyRaw = env.KEYTURN_MASTER_KEY?.trim();
  if (masterKeyRaw) {
    masterKey = base64Key(masterKeyRaw);
    if (!masterKey) {
      problems.push(
        'KEYTURN_MASTER_KEY must be the base64 encoding of exactly 32 random bytes (make one with `openssl rand -base64 32`)',
      );
    }
  }

  const kek = kekConfig(env, problems, { vault: Boolean(env.VAULT_ADDR?.trim()) });

  const logLevelRaw = (env.LOG_LEVEL?.trim() || 'info').toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(logLevelRaw)) {
    problems.push(`LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, got "${env.LOG_LEVEL}"`);
  }
  const logLevel = (
    (LOG_LEVELS as readonly string[]).includes(logLevelRaw) ? logLevelRaw : 'info'
  ) as KeyturnConfig['logLevel'];

  const production = env.NODE_ENV === 'production';
  const logFormatRaw = env.LOG_FORMAT?.trim() || (production || !process.stdout.isTTY ? 'json' : 'pretty');
  if (logFormatRaw !== 'json' && logFormatRaw !== 'pretty') {
    problems.push(`LOG_FORMAT must be "json" or "pretty", got "${logFormatRaw}"`);
  }

  const componentsRaw = (env.KEYTURN_COMPONENTS?.trim() || 'api,worker').split(',').map((c) => c.trim());
  const components = [...new Set(componentsRaw)].filter((c): c is Component => c === 'api' || c === 'worker');
  if (components.length === 0 || components.length !== new Set(componentsRaw).size) {
    problems.push(
      `KEYTURN_COMPONENTS must list api, worker or both, comma-separated; got "${env.KEYTURN_COMPONENTS}"`,
    );
  }

  let vault: KeyturnConfig['vault'];
  const vaultAddress = env.VAULT_ADDR?.trim();
  if (vaultAddress) {
    try {
      const u = new URL(vaultAddress);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('scheme');
    } catch {
      problems.push('VAULT_ADDR must be an http(s) URL such as https://vault.example.com:8200');
    }
    const auth = vaultAuthConfig(env, problems);
    const pendingPrefix = env.KEYTURN_VAULT_PENDING_PREFIX?.trim() || 'keyturn-pending';
    if (!/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/.test(pendingPrefix)) {
      problems.push('KEYTURN_VAULT_PENDING_PREFIX must be a KV path such as "keyturn-pending"');
    }
    if (auth) {
      vault = {
        address: vaultAddress,
        auth,
        ...(env.VAULT_NAMESPACE?.trim() ? { namespace: env.VAULT_NAMESPACE.trim() } : {}),
        pendingPrefix,
      };
    }
  }

  let aws: KeyturnConfig['aws'];
  const awsRegion = env.AWS_REGION?.trim() || env.AWS_DEFAULT_REGION?.trim() || undefined;
  const awsEndpoint =
    env.AWS_ENDPOINT_URL_SECRETS_MANAGER?.trim() || env.AWS_ENDPOINT_URL?.trim() || undefined;
  if (awsRegion || awsEndpoint || env.AWS_PROFILE || env.KEYTURN_AWS === 'on') {
    const accessKeyId = env.AWS_ACCESS_KEY_ID?.trim();
    const secretAccessKey = env.AWS_SECRET_ACCESS_KEY?.trim();
    const sessionToken = env.AWS_SESSION_TOKEN?.trim();
    aws = {
      ...(awsRegion ? { region: awsRegion } : {}),
      ...(awsEndpoint ? { endpoint: awsEndpoint } : {}),
      maxAttempts: int('KEYTURN_AWS_MAX_ATTEMPTS', 5, 1, 20),
      ...(accessKeyId && secretAccessKey
        ? { credentials: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) } }
        : {}),
    };
  }

  const duration = (name: string, fallback: string, minMs: number): number => {
    const raw = env[name]?.trim() || fallback;
    try {
      const ms = parseDuration(raw);
      if (ms >= minMs) return ms;
      problems.push(`${name} must be at least ${minMs / 1000}s, got "${raw}"`);
    } catch (err) {
      problems.push(`${name}: ${(err as Error).message}`);
    }
    return parseDuration(fallback);
  };
  const importFailures = {
    max: int('KEYTURN_IMPORT_FAILURES_MAX', 5, 1, 10_000),
    windowMs: duration('KEYTURN_IMPORT_FAILURES_WINDOW', '10m', 1000),
  };
  // "0" turns the cache hint off (max-age=0 on every secret read); a duration otherwise.
  const secretMaxAgeMs =
    env.KEYTURN_SECRET_MAX_AGE?.trim() === '0' ? 0 : duration('KEYTURN_SECRET_MAX_AGE', '5m', 1000);
  const approvalTtlMs = duration('KEYTURN_APPROVAL_TTL', '1h', 1000);
  const leases: KeyturnConfig['leases'] = {
    defaultTtlMs: duration('KEYTURN_LEASE_DEFAULT_TTL', '1h', 1000),
    maxTtlMs: duration('KEYTURN_LEASE_MAX_TTL', '24h', 1000),
    sweepIntervalMs: int('KEYTURN_LEASE_SWEEP_INTERVAL_MS', 60_000, 500, 3_600_000),
    concurrency: int('KEYTURN_LEASE_CONCURRENCY', 8, 1, 128),
    retentionMs: duration('KEYTURN_LEASE_RETENTION', '7d', 60_000),
  };
  if (leases.defaultTtlMs > leases.maxTtlMs) {
    problems.push('KEYTURN_LEASE_DEFAULT_TTL must not be longer than KEYTURN_LEASE_MAX_TTL');
  }

  const tokensFile = env.KEYTURN_TOKENS_FILE?.trim() || undefined;
  let tls: KeyturnConfig['tls'];
  const certFile = env.KEYTURN_TLS_CERT_FILE?.trim();
  const keyFile = env.KEYTURN_TLS_KEY_FILE?.trim();
  const clientCaFile = env.KEYTURN_TLS_CLIENT_CA_FILE?.trim();
  const requireRaw = env.KEYTURN_TLS_REQUIRE_CLIENT_CERT?.trim().toLowerCase();
  if (requireRaw && !['true', 'false', '1', '0'].includes(requireRaw)) {
    problems.push(`KEYTURN_TLS_REQUIRE_CLIENT_CERT must be true or false, got "${requireRaw}"`);
  }
  const requireClientCert = requireRaw === 'true' || requireRaw === '1';
  if (Boolean(certFile) !== Boolean(keyFile)) {
    problems.push('KEYTURN_TLS_CERT_FILE and KEYTURN_TLS_KEY_FILE go together (HTTPS needs both)');
  } else if (certFile && keyFile) {
    tls = { certFile, keyFile, ...(clientCaFile ? { clientCaFile } : {}), requireClientCert };
  }
  if (!tls && (clientCaFile || requireClientCert)) {
    problems.push(
      'KEYTURN_TLS_CLIENT_CA_FILE and KEYTURN_TLS_REQUIRE_CLIENT_CERT need HTTPS (KEYTURN_TLS_CERT_FILE and KEYTURN_TLS_KEY_FILE)',
    );
  }
  if (requireClientCert && !clientCaFile) {
    problems.push(
      'KEYTURN_TLS_REQUIRE_CLIENT_CERT needs KEYTURN_TLS_CLIENT_CA_FILE, the CA that signs client certificates',
    );
  }
  const rateLimit = {
    max: int('KEYTURN_RATE_LIMIT_MAX', 600, 1, 1_000_000),
    windowMs: int('KEYTURN_RATE_LIMIT_WINDOW_MS', 60_000, 1000, 3_600_000),
  };
  const corsOrigins = (env.KEYTURN_CORS_ORIGINS?.trim() ?? '')
    .split(',')
    .map((o) => o.trim())
    .filter(Boolean);
  for (const origin of corsOrigins) {
    if (!/^https?:\/\/[A-Za-z0-9.-]+(:\d{1,5})?$/.test(origin)) {
      problems.push(
        `KEYTURN_CORS_ORIGINS must list origins such as https://console.example.com, got "${origin}"`,
      );
    }
  }

  const notifications = notificationsConfig(env, int, problems);

  const auditSigningKey = env.KEYTURN_AUDIT_SIGNING_KEY?.trim() || undefined;
  if (auditSigningKey) {
    try {
      parseSigningKey(auditSigningKey, 'KEYTURN_AUDIT_SIGNING_KEY');
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  const audit: KeyturnConfig['audit'] = {
    ...(auditSigningKey ? { signingKey: auditSigningKey } : {}),
    ...(env.KEYTURN_AUDIT_SIGNING_KEY_FILE?.trim()
      ? { signingKeyFile: env.KEYTURN_AUDIT_SIGNING_KEY_FILE.trim() }
      : {}),
    ...(env.KEYTURN_AUDIT_PUBLIC_KEY_FILE?.trim()
      ? { publicKeyFile: env.KEYTURN_AUDIT_PUBLIC_KEY_FILE.trim() }
      : {}),
    checkpointEvents: int('KEYTURN_AUDIT_CHECKPOINT_EVENTS', 1000, 1, 1_000_000),
    checkpointIntervalMs: int('KEYTURN_AUDIT_CHECKPOINT_INTERVAL_MS', 60_000, 100, 86_400_000),
    archiveDir: env.KEYTURN_AUDIT_ARCHIVE_DIR?.trim() || undefined,
    retentionDays: int('KEYTURN_AUDIT_RETENTION_DAYS', 400, 1, 36_500),
    streamDays: int('KEYTURN_AUDIT_STREAM_DAYS', 92, 1, 36_500),
  };
  if (auditSigningKey && audit.signingKeyFile) {
    problems.push('KEYTURN_AUDIT_SIGNING_KEY and KEYTURN_AUDIT_SIGNING_KEY_FILE exclude each other: set one');
  }
  if (audit.streamDays > audit.retentionDays) {
    problems.push('KEYTURN_AUDIT_STREAM_DAYS must not be longer than KEYTURN_AUDIT_RETENTION_DAYS');
  }

  const failpoints = env.KEYTURN_FAILPOINTS?.trim() ?? '';
  let kubernetes: KeyturnConfig['kubernetes'];
  const kubeconfig = (env.KUBECONFIG ?? '').split(delimiter).filter(Boolean);
  if (kubeconfig.length > 0) {
    const missing = kubeconfig.filter((file) => !existsSync(file));
    if (missing.length > 0) {
      problems.push(`KUBECONFIG names files that do not exist: ${missing.join(', ')}`);
    }
    kubernetes = { kubeconfig };
  } else if (env.KUBERNETES_SERVICE_HOST?.trim()) {
    kubernetes = { inCluster: true };
  }

  const outboundRules = (name: string): OutboundRule[] | undefined => {
    const raw = env[name]?.trim();
    if (!raw) return undefined;
    const rules: OutboundRule[] = [];
    for (const entry of raw
      .split(',')
      .map((e) => e.trim())
      .filter(Boolean)) {
      const rule = parseOutboundRule(entry);
      if (typeof rule === 'string') problems.push(`${name}: ${rule}`);
      else rules.push(rule);
    }
    return rules;
  };
  const outboundAllow = outboundRules('KEYTURN_OUTBOUND_ALLOW');
  const outbound: OutboundPolicy = {
    loopback: !production,
    ...(outboundAllow ? { allow: outboundAllow } : {}),
    deny: outboundRules('KEYTURN_OUTBOUND_DENY') ?? [],
    denyByDefault: production,
  };

  if (failpoints && production) {
    problems.push('KEYTURN_FAILPOINTS is a test facility and is refused when NODE_ENV=production');
  }

  const config: KeyturnConfig = {
    port,
    host,
    redisUrl,
    redisUrlDefaulted: redis.urlDefaulted,
    redis: {
      topology: redis.topology,
      ...(redis.username ? { username: redis.username } : {}),
      ...(redis.password ? { password: redis.password } : {}),
      ...(redis.tls ? { tls: redis.tls } : {}),
      minReplicasAck: redis.minReplicasAck,
      waitTimeoutMs: redis.waitTimeoutMs,
    },
    prefix,
    adminToken,
    masterKey,
    kek,
    logLevel,
    logFormat: logFormatRaw === 'pretty' ? 'pretty' : 'json',
    components,
    stateDir: env.KEYTURN_STATE_DIR?.trim() || '.keyturn',
    rotation: {
      attempts: int('KEYTURN_ROTATION_ATTEMPTS', 5, 1, 100),
      backoffMs: int('KEYTURN_ROTATION_BACKOFF_MS', 2000, 10, 3_600_000),
      // A rotation mostly waits on its downstream and on Redis: 16 in flight keep a worker busy (issue 14: 4 left a
      // process idle a fifth of the time on a fast downstream). Each holds one downstream session while it runs.
      concurrency: int('KEYTURN_ROTATION_CONCURRENCY', 16, 1, 256),
      leaseMs: int('KEYTURN_ROTATION_LEASE_MS', 30_000, 1000, 600_000),
      downstreamTimeoutMs: int('KEYTURN_DOWNSTREAM_TIMEOUT_MS', 10_000, 100, 300_000),
      reconcileIntervalMs: int('KEYTURN_RECONCILE_INTERVAL_MS', 30_000, 500, 3_600_000),
    },
    tokensFile,
    tls,
    rateLimit,
    corsOrigins,
    secretMaxAgeMs,
    importFailures,
    outbound,
    approvalTtlMs,
    leases,
    vault,
    aws,
    kubernetes,
    events: {
      heartbeatMs: int('KEYTURN_EVENTS_HEARTBEAT_MS', 15_000, 100, 300_000),
      maxClients: int('KEYTURN_EVENTS_MAX_CLIENTS', 1000, 1, 100_000),
    },
    notifications,
    overdueScanIntervalMs: int('KEYTURN_OVERDUE_SCAN_INTERVAL_MS', 60_000, 500, 86_400_000),
    audit,
    failpoints,
    maxBodyBytes: int('KEYTURN_MAX_BODY_BYTES', 64 * 1024, 1024, 16 * 1024 * 1024),
  };

  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

const VAULT_AUTH_METHODS = ['token', 'approle', 'kubernetes'] as const;
const VAULT_MOUNT = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/;

/**
 * VAULT_AUTH_METHOD and the variables of each method. Without VAULT_AUTH_METHOD the method is inferred from the one
 * set of credentials given; two sets are ambiguous and refused, as are a method's credentials missing or another
 * method's credentials given beside an explicit choice. Messages name variables, never their values.
 */
function vaultAuthConfig(env: Env, problems: string[]): VaultAuth | undefined {
  const token = env.VAULT_TOKEN?.trim() || undefined;
  const roleId = env.VAULT_ROLE_ID?.trim() || undefined;
  const secretId = env.VAULT_SECRET_ID?.trim() || undefined;
  const k8sRole = env.VAULT_K8S_ROLE?.trim() || undefined;
  const given = {
    token: token ? ['VAULT_TOKEN'] : [],
    approle: [...(roleId ? ['VAULT_ROLE_ID'] : []), ...(secretId ? ['VAULT_SECRET_ID'] : [])],
    kubernetes: k8sRole ? ['VAULT_K8S_ROLE'] : [],
  };
  const before = problems.length;
  const raw = env.VAULT_AUTH_METHOD?.trim().toLowerCase() || undefined;
  let method: VaultAuth['method'] | undefined;
  if (raw !== undefined) {
    if ((VAULT_AUTH_METHODS as readonly string[]).includes(raw)) {
      method = raw as VaultAuth['method'];
      for (const other of VAULT_AUTH_METHODS) {
        if (other !== method && given[other].length > 0) {
          problems.push(
            `VAULT_AUTH_METHOD is ${method} but ${given[other].join(' and ')} (${other}) ${given[other].length > 1 ? 'are' : 'is'} also set: unset ${given[other].length > 1 ? 'them' : 'it'}, or set VAULT_AUTH_METHOD=${other}`,
          );
        }
      }
    } else {
      problems.push(`VAULT_AUTH_METHOD must be token, approle or kubernetes, got "${env.VAULT_AUTH_METHOD}"`);
    }
  } else {
    const present = VAULT_AUTH_METHODS.filter((m) => given[m].length > 0);
    if (present.length === 0) {
      problems.push(
        'VAULT_ADDR is set but no Vault authentication is: set VAULT_TOKEN, VAULT_ROLE_ID with VAULT_SECRET_ID (AppRole), or VAULT_K8S_ROLE (Kubernetes auth)',
      );
    } else if (present.length > 1) {
      problems.push(
        `Vault authentication is ambiguous: ${present.map((m) => `${given[m].join(' and ')} (${m})`).join(', ')} are set together; set VAULT_AUTH_METHOD to the one Keyturn uses`,
      );
    } else {
      method = present[0];
    }
  }
  if (method === 'token' && !token) {
    problems.push('VAULT_AUTH_METHOD=token needs VAULT_TOKEN');
  }
  if (method === 'approle' && !(roleId && secretId)) {
    problems.push(
      roleId || secretId
        ? 'VAULT_ROLE_ID and VAULT_SECRET_ID go together (AppRole): set both'
        : 'VAULT_AUTH_METHOD=approle needs VAULT_ROLE_ID and VAULT_SECRET_ID',
    );
  }
  const approleMount = env.VAULT_APPROLE_MOUNT?.trim() || 'approle';
  if (method === 'approle' && !VAULT_MOUNT.test(approleMount)) {
    problems.push(
      'VAULT_APPROLE_MOUNT must be the path the AppRole auth method is mounted at, such as "approle"',
    );
  }
  const k8sMount = env.VAULT_K8S_MOUNT?.trim() || 'kubernetes';
  const tokenPath = env.VAULT_K8S_TOKEN_PATH?.trim() || VAULT_K8S_DEFAULT_TOKEN_PATH;
  if (method === 'kubernetes') {
    if (!k8sRole) {
      problems.push(
        "VAULT_AUTH_METHOD=kubernetes needs VAULT_K8S_ROLE, the Vault role bound to Keyturn's service account",
      );
    }
    if (!VAULT_MOUNT.test(k8sMount)) {
      problems.push(
        'VAULT_K8S_MOUNT must be the path the Kubernetes auth method is mounted at, such as "kubernetes"',
      );
    }
    if (!tokenPath.startsWith('/')) {
      problems.push(
        `VAULT_K8S_TOKEN_PATH must be an absolute file path such as ${VAULT_K8S_DEFAULT_TOKEN_PATH}, got "${tokenPath}"`,
      );
    }
  }
  if (problems.length > before || !method) return undefined;
  switch (method) {
    case 'token':
      return { method, token: token! };
    case 'approle':
      return { method, roleId: roleId!, secretId: secretId!, mount: approleMount };
    case 'kubernetes':
      return { method, role: k8sRole!, tokenPath, mount: k8sMount };
  }
}

/** KEYTURN_NOTIFY_*: the webhook endpoints, their HMAC key, which events, and the retry policy. */
function notificationsConfig(
  env: Env,
  int: (name: string, fallback: number, min: number, max: number) => number,
  problems: string[],
): KeyturnConfig['notifications'] {
  const webhookUrls = (env.KEYTURN_NOTIFY_WEBHOOK_URLS?.trim() ?? '')
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean);
  webhookUrls.forEach((raw, i) => {
    // A webhook URL's path may hold a token (as chat webhooks do): messages name its position, never its text.
    const at = `KEYTURN_NOTIFY_WEBHOOK_URLS entry ${i + 1}`;
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      problems.push(`${at} is not a URL (expected https://host[:port]/path)`);
      return;
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      problems.push(`${at} must be an http:// or https:// URL, got "${url.protocol}//…"`);
    } else if (url.username || url.password) {
      problems.push(`${at} must not carry a user or password: the HMAC signature authenticates Keyturn`);
    }
  });
  const webhookSecret = env.KEYTURN_NOTIFY_WEBHOOK_SECRET?.trim() || undefined;
  if (webhookUrls.length > 0 && webhookSecret === undefined) {
    problems.push(
      'KEYTURN_NOTIFY_WEBHOOK_SECRET is required when KEYTURN_NOTIFY_WEBHOOK_URLS is set (make one with `openssl rand -base64 32`)',
    );
  } else if (webhookSecret !== undefined && webhookSecret.length < 32) {
    problems.push(
      'KEYTURN_NOTIFY_WEBHOOK_SECRET must be at least 32 characters (make one with `openssl rand -base64 32`)',
    );
  }
  const eventsRaw = env.KEYTURN_NOTIFY_EVENTS?.trim() || NOTIFICATION_EVENTS.join(',');
  const named = eventsRaw
    .split(',')
    .map((e) => e.trim())
    .filter(Boolean);
  const unknown = named.filter((e) => !(NOTIFICATION_EVENTS as readonly string[]).includes(e));
  if (unknown.length > 0 || named.length === 0) {
    problems.push(
      `KEYTURN_NOTIFY_EVENTS must list one or more of ${NOTIFICATION_EVENTS.join(', ')}, comma-separated; got "${eventsRaw}"`,
    );
  }
  return {
    webhookUrls,
    webhookSecret,
    events: [...new Set(named)].filter((e): e is NotificationEvent =>
      (NOTIFICATION_EVENTS as readonly string[]).includes(e),
    ),
    attempts: int('KEYTURN_NOTIFY_ATTEMPTS', 10, 1, 100),
    backoffMs: int('KEYTURN_NOTIFY_BACKOFF_MS', 1000, 10, 3_600_000),
    timeoutMs: int('KEYTURN_NOTIFY_TIMEOUT_MS', 5000, 100, 60_000),
  };
}

export const KEK_PROVIDERS = ['env', 'aws-kms', 'vault-transit'] as const;
export type KekProviderName = (typeof KEK_PROVIDERS)[number];

export interface KekSettings {
  /** KEYTURN_KEK_PROVIDER: who wraps every new data key. */
  provider: KekProviderName;
  /** KEYTURN_MASTER_KEY_PREVIOUS: earlier env keys, comma-separated, only read (until a rekey moved their values). */
  previousMasterKeys: Buffer[];
  /** KEYTURN_KMS_KEY_ID with the AWS region, endpoint (AWS_ENDPOINT_URL_KMS) and credentials of the environment. */
  kms?: {
    keyId: string;
    region?: string;
    endpoint?: string;
    maxAttempts: number;
    credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  };
  /** KEYTURN_TRANSIT_KEY at KEYTURN_TRANSIT_MOUNT (default transit), on the Vault of VAULT_ADDR. */
  transit?: { mount: string; key: string };
  /** KEYTURN_KEK_CACHE_TTL: how long an unwrapped data key stays in memory (0: never cached). */
  cacheTtlMs: number;
  /** KEYTURN_KEK_CACHE_MAX: how many unwrapped data keys at most. */
  cacheMaxEntries: number;
}

function base64Key(raw: string): Buffer | undefined {
  const decoded = /^[A-Za-z0-9+/]+={0,2}$/.test(raw) ? Buffer.from(raw, 'base64') : undefined;
  return decoded?.length === 32 ? decoded : undefined;
}

function kekConfig(env: Env, problems: string[], facts: { vault: boolean }): KekSettings {
  const raw = env.KEYTURN_KEK_PROVIDER?.trim().toLowerCase() || 'env';
  let provider: KekProviderName = 'env';
  if ((KEK_PROVIDERS as readonly string[]).includes(raw)) provider = raw as KekProviderName;
  else problems.push(`KEYTURN_KEK_PROVIDER must be one of ${KEK_PROVIDERS.join(', ')}, got "${raw}"`);

  const previousMasterKeys: Buffer[] = [];
  const badEntries: number[] = [];
  for (const [i, part] of (env.KEYTURN_MASTER_KEY_PREVIOUS ?? '').split(',').entries()) {
    if (!part.trim()) continue;
    const key = base64Key(part.trim());
    if (key) previousMasterKeys.push(key);
    else badEntries.push(i + 1);
  }
  if (badEntries.length > 0) {
    const one = badEntries.length === 1;
    problems.push(
      `KEYTURN_MASTER_KEY_PREVIOUS: ${one ? 'entry' : 'entries'} ${badEntries.join(', ')} ${one ? 'is' : 'are'} not the base64 encoding of exactly 32 bytes (the earlier KEYTURN_MASTER_KEY values, comma-separated)`,
    );
  }

  let kms: KekSettings['kms'];
  const keyId = env.KEYTURN_KMS_KEY_ID?.trim();
  if (keyId) {
    if (
      !/^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)\/[A-Za-z0-9/_-]+|alias\/[A-Za-z0-9/_-]+|[0-9a-f-]{36}|mrk-[0-9a-f]{32})$/.test(
        keyId,
      )
    ) {
      problems.push(
        `KEYTURN_KMS_KEY_ID must be a KMS key id, key ARN, alias/<name> or alias ARN, got "${keyId}"`,
      );
    }
    const region = env.AWS_REGION?.trim() || env.AWS_DEFAULT_REGION?.trim() || undefined;
    const endpoint = env.AWS_ENDPOINT_URL_KMS?.trim() || env.AWS_ENDPOINT_URL?.trim() || undefined;
    const accessKeyId = env.AWS_ACCESS_KEY_ID?.trim();
    const secretAccessKey = env.AWS_SECRET_ACCESS_KEY?.trim();
    const sessionToken = env.AWS_SESSION_TOKEN?.trim();
    kms = {
      keyId,
      ...(region ? { region } : {}),
      ...(endpoint ? { endpoint } : {}),
      maxAttempts: 3,
      ...(accessKeyId && secretAccessKey
        ? { credentials: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) } }
        : {}),
    };
  } else if (provider === 'aws-kms') {
    problems.push(
      'KEYTURN_KEK_PROVIDER=aws-kms needs KEYTURN_KMS_KEY_ID (a key id, key ARN or alias/<name>)',
    );
  }

  let transit: KekSettings['transit'];
  const transitKey = env.KEYTURN_TRANSIT_KEY?.trim();
  const mount = env.KEYTURN_TRANSIT_MOUNT?.trim() || 'transit';
  if (transitKey) {
    const wrong = [
      ...(/^[A-Za-z0-9_.-]+$/.test(transitKey)
        ? []
        : [`must be a transit key name (letters, digits, _ . -), got "${transitKey}"`]),
      ...(facts.vault
        ? []
        : ['needs VAULT_ADDR and Vault authentication (the transit engine is on that Vault)']),
    ];
    if (wrong.length > 0) problems.push(`KEYTURN_TRANSIT_KEY ${wrong.join('; and it ')}`);
    if (!/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/.test(mount))
      problems.push(`KEYTURN_TRANSIT_MOUNT must be a mount path such as "transit", got "${mount}"`);
    transit = { mount, key: transitKey };
  } else if (provider === 'vault-transit') {
    problems.push('KEYTURN_KEK_PROVIDER=vault-transit needs KEYTURN_TRANSIT_KEY (a transit key name)');
  }

  let cacheTtlMs = 300_000;
  const ttlRaw = env.KEYTURN_KEK_CACHE_TTL?.trim();
  if (ttlRaw) {
    try {
      cacheTtlMs = ttlRaw === '0' ? 0 : parseDuration(ttlRaw);
      if (cacheTtlMs > 3_600_000) problems.push('KEYTURN_KEK_CACHE_TTL must be at most 1h');
    } catch (err) {
      problems.push(`KEYTURN_KEK_CACHE_TTL: ${(err as Error).message}`);
    }
  }
  const maxRaw = env.KEYTURN_KEK_CACHE_MAX?.trim();
  const cacheMaxEntries = maxRaw ? Number(maxRaw) : 10_000;
  if (!Number.isInteger(cacheMaxEntries) || cacheMaxEntries < 0 || cacheMaxEntries > 1_000_000)
    problems.push(`KEYTURN_KEK_CACHE_MAX must be a whole number from 0 to 1000000, got "${maxRaw}"`);

  return {
    provider,
    previousMasterKeys,
    ...(kms ? { kms } : {}),
    ...(transit ? { transit } : {}),
    cacheTtlMs,
    cacheMaxEntries,
  };
}
