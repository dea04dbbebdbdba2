// The SyncTarget interface: where a credential's working secret is pushed after it changes, so that workloads that
// cannot call Keyturn (they read a Kubernetes Secret, say) still get a password that works. Like the Target interface
// (src/targets/types.ts), a new destination is a new folder under sync/ registered in sync/index.ts; the job that
// decides when and what to push (sync-jobs.ts) stays as it is.
//
// A push is never part of a rotation: it runs after the rotation's step committed, as its own job, and whatever
// happens to it never rolls a rotation back (the downstream already accepts the new password).
import type { SyncSpec } from '../registry/types.ts';

export type SyncType = SyncSpec['type'];

/** What is pushed: one stored version of a credential's secret, with what orders it against other versions. */
export interface SyncPayload {
  credentialId: string;
  /** The store version id (the rotation id that made it, or "import-…"). */
  versionId: string;
  /**
   * When the store made this version. Why: versions of one credential are made one at a time (I3), so this orders
   * them; a job for an older version (a retry that ran late) must never overwrite a newer one.
   */
  createdAt: string;
  /** When the version became the one that works (the rotation's set or finish), for people reading the Secret. */
  rotatedAt: string;
  /** accessKeyId: a key the downstream made (AWS IAM), whose secret is the password. */
  fields: {
    username: string;
    password: string;
    host: string;
    port: number;
    database?: string;
    accessKeyId?: string;
  };
}

/** What a push did. */
export interface SyncResult {
  /**
   * created/replaced: the destination now holds this version; unchanged: it held it already; kept-newer: it holds a
   * newer version that still works, left alone; superseded: this version no longer works, nothing was written.
   */
  secret: 'created' | 'replaced' | 'unchanged' | 'kept-newer' | 'superseded';
  /** Workloads restarted to pick the version up ("deployment/x"). */
  restarted: string[];
  /** Optimistic-concurrency conflicts met and resolved by reading again. */
  conflicts: number;
}

/** Why a push failed, in words an operator can act on; `reason` is a metric label and an audit detail. */
export class SyncError extends Error {
  readonly reason: 'forbidden' | 'not-found' | 'not-keyturns' | 'unauthorized' | 'unavailable' | 'conflict';
  constructor(reason: SyncError['reason'], message: string) {
    super(message);
    this.name = 'SyncError';
    this.reason = reason;
  }
}

/**
 * What the push asks the caller, who knows the store and the rotations. Why a callback: whether a version still
 * works can change while a push waits on the API server, so it is asked again after every read of the destination.
 */
export interface VersionOracle {
  /** Whether this version is one a secret read may return now (current, or a single-user pending whose set landed). */
  isLive(versionId: string): Promise<boolean>;
}

export interface SyncTarget<S extends SyncSpec = SyncSpec> {
  readonly type: S['type'];
  /**
   * Problems the schema cannot see (two fields into one key, the same Secret twice), each naming the field. Why here:
   * the API refuses them at registration (422), so a sync that can never be right is not accepted.
   */
  validate(specs: S[]): string[];
  /**
   * Why this process cannot reach the destination at all (no configuration), or undefined. Why: a credential that
   * asks for this sync is refused at registration rather than failing every rotation.
   */
  unavailable(): string | undefined;
  /**
   * Writes the version into the destination, monotonically (never over a newer version that works), then restarts
   * the workloads that have not restarted since. Throws SyncError; safe to repeat.
   */
  push(spec: S, payload: SyncPayload, oracle: VersionOracle): Promise<SyncResult>;
}
