// The whole Redis key layout in one place (docs/architecture.md explains each). Every key starts with the
// configured prefix, so several Keyturn installations, or test runs, can share one Redis. Lua scripts that touch
// several keys of one credential assume a single Redis or a Sentinel set-up; Redis Cluster would need the
// credential id in a hash tag.

export class RedisKeys {
  readonly prefix: string;
  constructor(prefix: string) {
    this.prefix = prefix;
  }
  /** JSON of one connection (no secret). */
  connection(id: string): string {
    return `${this.prefix}:conn:${id}`;
  }
  /** Sorted set of connection ids by creation time. */
  connections(): string {
    return `${this.prefix}:conns`;
  }
  /** Set of credential ids that use a connection (deleting the connection is refused while non-empty). */
  connectionUsers(id: string): string {
    return `${this.prefix}:conn:${id}:creds`;
  }
  /**
   * Hash of the downstream user names a connection's credentials use → the credential id: its user and, for
   * alternating-users, its `_clone`. Claimed and released with the credential, so that two credentials never
   * rotate one downstream user (or one's clone) and break each other.
   */
  connectionUsernames(id: string): string {
    return `${this.prefix}:conn:${id}:users`;
  }
  /**
   * Hash of the downstream users Keyturn made (or was told to adopt) → the credential they were made for: the
   * `_clone` of an alternating pair. A clone that exists and is not here belongs to someone else, and is never
   * rotated.
   */
  connectionMadeUsers(id: string): string {
    return `${this.prefix}:conn:${id}:made`;
  }
  /** Count of a principal's failed imports in the current window (expires with it); the name is hashed. */
  importFailures(principalDigest: string): string {
    return `${this.prefix}:limits:import-failures:${principalDigest}`;
  }
  /** Set when the user-name claims of credentials registered before they existed have been written. */
  usernameClaimsMigrated(): string {
    return `${this.prefix}:migrated:username-claims`;
  }
  /** Hash of one credential: field `spec` (what the team registered) and field `state` (what rotation made of it). */
  credential(id: string): string {
    return `${this.prefix}:cred:${id}`;
  }
  /** Sorted set of credential ids by creation time. */
  credentials(): string {
    return `${this.prefix}:creds`;
  }
  /** The id of the rotation in flight for a credential (I3: at most one). */
  inflight(credentialId: string): string {
    return `${this.prefix}:cred:${credentialId}:inflight`;
  }
  /** Execution lease: which worker may act on a credential's downstream right now, with a fencing token. */
  lease(credentialId: string): string {
    return `${this.prefix}:cred:${credentialId}:lease`;
  }
  /** Sorted set of a credential's rotation ids by start time. */
  credentialRotations(credentialId: string): string {
    return `${this.prefix}:cred:${credentialId}:rots`;
  }
  /** JSON of one rotation: its state machine position, steps, attempts and scrubbed error. */
  rotation(id: string): string {
    return `${this.prefix}:rot:${id}`;
  }
  /** Sorted set of rotations not yet terminal, by start time: what the reconciler checks after a crash. */
  activeRotations(): string {
    return `${this.prefix}:rots:active`;
  }
  /** JSON of one short-lived credential (a lease made by POST /v1/credentials/:id/leases); never its password. */
  leaseRecord(leaseId: string): string {
    return `${this.prefix}:lease:${leaseId}`;
  }
  /**
   * Sorted set of leases not yet revoked, scored by when their user must be gone (expiry; sooner for one whose
   * creation stalled or whose revocation was asked for): what the sweep reads.
   */
  leasesDue(): string {
    return `${this.prefix}:leases:due`;
  }
  /** Sorted set of a credential's lease ids by creation time. */
  credentialLeases(credentialId: string): string {
    return `${this.prefix}:cred:${credentialId}:leases`;
  }
  /** Local store: hash of one secret's sealed versions and its stage labels. */
  localSecret(name: string): string {
    return `${this.prefix}:secret:${name}`;
  }
  /** Audit stream: one entry per event, appended by every process (id: Redis's total order). */
  audit(): string {
    return `${this.prefix}:audit`;
  }
  /** The chain over the audit stream: one entry per sealed event, with the same id (seq, digest, prev, hash). */
  auditChain(): string {
    return `${this.prefix}:audit:chain`;
  }
  /** Hash: the sealed head (id, seq, hash) and the last checkpoint (cpN, cpSeq, cpHash, cpAt). */
  auditHead(): string {
    return `${this.prefix}:audit:head`;
  }
  /** Signed checkpoints, each with the id of the event it vouches for. */
  auditCheckpoints(): string {
    return `${this.prefix}:audit:checkpoints`;
  }
  /** Hash: where the stream's chain starts once archived events were trimmed (seq, hash, checkpoint). */
  auditAnchor(): string {
    return `${this.prefix}:audit:anchor`;
  }
  /** Which process seals (token, expiry): one at a time, so they don't all hash the same events. */
  auditSealerLock(): string {
    return `${this.prefix}:audit:sealer`;
  }
  /** The id an export wants signed: the sealer checkpoints up to it at once. */
  auditCheckpointWanted(): string {
    return `${this.prefix}:audit:checkpoint-wanted`;
  }
  /** Hash: the last day written to the archive folder (day), so trimming never passes it. */
  auditArchive(): string {
    return `${this.prefix}:audit:archive`;
  }
  /**
   * Hash of credential id → when the password of its last notified overdue lapse was set (ms): the overdue scan's
   * once-only mark, raised in the same script as the `credential.overdue` audit event.
   */
  overdueNotified(): string {
    return `${this.prefix}:overdue:notified`;
  }
  /** BullMQ's own prefix: its queues' keys live below it. */
  queuePrefix(): string {
    return `${this.prefix}:q`;
  }
}
