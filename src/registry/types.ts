// What the registry keeps about connections and credentials. Secrets are never part of these records: a
// connection's admin password and a credential's passwords live in a secret store and are referenced here.
import type { PasswordPolicy } from '../crypto/password.ts';
import type { StoreSpec } from './store-spec.ts';

export type { StoreSpec };

export interface TlsSpec {
  /** disable: plain TCP; require: TLS without verification; verify-full: TLS, certificate and host name checked. */
  mode: 'disable' | 'require' | 'verify-full';
  /** PEM of the CA that signs the server's certificate (verify-full). */
  ca?: string;
}

/**
 * Dual control (SPEC, "Dual control"): the sensitive operations on a credential or connection that carries one need
 * `required` approvals by principals other than the requester, each matching one of `approvers` ("role:<role>" or
 * "name:<principal name>").
 */
export interface ApprovalPolicy {
  required: number;
  approvers: string[];
}

export interface Connection {
  id: string;
  type: string;
  host: string;
  port: number;
  database?: string;
  tls?: TlsSpec;
  admin: { username: string };
  /** Target-specific settings, checked by the target's driver (e.g. the MySQL account host, a webhook's paths). */
  options?: Record<string, string | number | boolean>;
  /** Downstreams with a well-known address (TargetDriver.endpoint, AWS IAM): the region the SDK signs for. */
  region?: string;
  /**
   * Downstreams with a well-known address: the URL that replaces it (an emulator, a VPC endpoint). `host` and `port` are
   * derived from it, so that everything reading a connection's address (documents, audit, reads) still has one.
   */
  endpoint?: string;
  /** Where the admin password lives. */
  adminStore: StoreSpec;
  labels: Record<string, string>;
  /**
   * Set by PATCH {"paused": true}, removed by {"paused": false}: while set, scheduled rotations are skipped (each slot an
   * audited rotation.skipped); a manual rotate still runs. When, so the report and the metrics can say for how long.
   */
  pausedAt?: string;
  /** Scheduled rotation of the admin's own password (`POST /v1/connections/:id/rotate` rotates it now). */
  adminRotation?: AdminRotation;
  /** When the admin password was last given (registration, PATCH admin.password); an admin rotation's time is its subject's. */
  adminSetAt?: string;
  /** Dual control of its DELETE and of the changes of its admin or its address (src/service/approvals.ts). */
  approval?: ApprovalPolicy;
  createdAt: string;
  updatedAt: string;
}

export interface AdminRotation {
  schedule: Schedule;
  /** The admin password's age past which the compliance report calls it overdue. */
  maxAgeDays?: number;
}

/**
 * A connection's admin password rotates as a credential of its own, the connection's admin subject, with this id: the
 * same engine, four steps, write-ahead, lease and schedule. Why an id with ":": the API's ids cannot hold one, so no
 * credential route (its secret, leases, PATCH, DELETE) can ever address the admin subject, and no credential can
 * take its id. It is not in the credentials index either: lists, counts and the credential report never show it.
 */
export const ADMIN_SUBJECT_PREFIX = 'admin:';

export function adminSubjectId(connectionId: string): string {
  return `${ADMIN_SUBJECT_PREFIX}${connectionId}`;
}

/** The connection whose admin a credential id stands for, or undefined for an ordinary credential. */
export function adminConnectionOf(credentialId: string): string | undefined {
  return credentialId.startsWith(ADMIN_SUBJECT_PREFIX)
    ? credentialId.slice(ADMIN_SUBJECT_PREFIX.length)
    : undefined;
}

export type Schedule =
  | { every: string; window?: string; jitter?: string }
  | { cron: string; timezone?: string; window?: string; jitter?: string };

export type Strategy = 'single-user' | 'alternating-users';

/** The fields of a secret a sync can write, each under a key of the destination's choosing. */
export const SYNC_FIELDS = ['username', 'password', 'host', 'port', 'database', 'accessKeyId'] as const;
export type SyncField = (typeof SYNC_FIELDS)[number];

/**
 * Where a credential's working secret is copied after each rotation (SPEC, "Kubernetes sync"): a Kubernetes Secret
 * in `namespace`/`name`, its keys named by `keys` (default: the field names), and the Deployments to restart.
 */
export interface KubernetesSyncSpec {
  type: 'kubernetes';
  namespace: string;
  name: string;
  keys?: Partial<Record<SyncField, string>>;
  /** "deployment/<name>", in the same namespace. */
  rolloutRestart?: string[];
}

export type SyncSpec = KubernetesSyncSpec;

export interface CredentialSpec {
  id: string;
  connection: string;
  username: string;
  strategy: Strategy;
  schedule: Schedule;
  store: StoreSpec;
  password: PasswordPolicy;
  maxAgeDays?: number;
  /** alternating-users: how long the previous user keeps working after a rotation (duration string). */
  gracePeriod?: string;
  /**
   * How long before each scheduled rotation a `rotation.upcoming` event goes out (duration string): to the audit stream,
   * so to the notification webhooks and GET /v1/events, for the teams that want to watch a rotation happen.
   */
  notifyBefore?: string;
  labels: Record<string, string>;
  /**
   * Set by PATCH {"paused": true}, removed by {"paused": false}: while set, scheduled rotations are skipped (each slot an
   * audited rotation.skipped); a manual rotate still runs. When, so the report and the metrics can say for how long.
   */
  pausedAt?: string;
  /** Destinations the working secret is pushed to (src/sync); none when absent. */
  sync?: SyncSpec[];
  /** Dual control of its DELETE, its sync changes and a person's read of its secret (src/service/approvals.ts). */
  approval?: ApprovalPolicy;
  createdAt: string;
  updatedAt: string;
}

export type CredentialStatus = 'pending' | 'active' | 'rotating' | 'failed';

export interface CredentialState {
  status: CredentialStatus;
  /** Store version id of the current secret (the id of the rotation that made it, or "import"). */
  version?: string;
  /** Which downstream user the current version belongs to (alternating-users switches it). */
  activeUsername?: string;
  rotatedAt?: string;
  nextRotationAt?: string;
  lastRotationId?: string;
  lastOutcome?: 'succeeded' | 'failed' | 'skipped';
  /** Store version id of the previous secret (alternating-users: the user in its grace period). */
  previousVersion?: string;
  /** When the previous user's password was replaced after its grace period. */
  previousRevokedAt?: string;
  /**
   * alternating-users on a downstream that labels users (PostgreSQL, MySQL 8.0.21+): a rotation of the clone has
   * succeeded since Keyturn labels its clones, so the clone carries the label, and one without it is not Keyturn's
   * (someone dropped it and made another under that name). Unset: a clone made before labels is labelled at its
   * next rotation if the registry records it as Keyturn's.
   */
  cloneLabelled?: boolean;
  /** Consecutive failed rotations. */
  failures: number;
}

export interface Credential {
  spec: CredentialSpec;
  state: CredentialState;
}

// Naming of the second user of alternating-users, as in the AWS rotation templates (get_alt_username).
export const CLONE_SUFFIX = '_clone';

export function cloneUsername(username: string): string {
  return `${username}${CLONE_SUFFIX}`;
}
