// The whole Redis key layout in one place (docs/architecture.md explains each). Every key starts with the
// configured prefix, so several Keyturn installations, or test runs, can share one Redis.
//
// Every script and transaction touches the keys of one owner only, each owner's keys sharing one Redis Cluster hash
// tag: a credential (its hash, in-flight pointer, execution lease, rotation list and records, lease list and records,
// audit outbox), a connection (its record, credentials, user-name claims), or the audit trail (stream, chain, head,
// checkpoints). Indexes over many owners (credentials, connections, active rotations, due leases) are written in
// steps of their own, ordered so that a crash between two steps leaves an entry readers skip and the reconciler
// removes, never a record no index finds. In a Cluster the tag is written in braces (`keyturn:cred:{payments}`), so
// credentials spread over the slots; on one node or Sentinel the keys are as they have always been, and no
// installation needs migrating.

export class RedisKeys {
  readonly prefix: string;
  /** Redis Cluster: owner ids in hash tags, and audit events through per-credential outboxes. */
  readonly clustered: boolean;
  constructor(prefix: string, options: { clustered?: boolean } = {}) {
    this.prefix = prefix;
    this.clustered = options.clustered ?? false;
  }
  /** An owner id as it appears in its keys: in braces (a hash tag) in a Cluster. */
  #tag(id: string): string {
    return this.clustered ? `{${id}}` : id;
  }
  /** The audit trail's keys share one slot: its scripts read and write several of them. */
  #audit(): string {
    return this.clustered ? `${this.prefix}:{${this.prefix}:audit}` : `${this.prefix}:audit`;
  }
  /** JSON of one connection (no secret). */
  connection(id: string): string {
    return `${this.prefix}:conn:${this.#tag(id)}`;
  }
  /** Sorted set of connection ids by creation time. */
  connections(): string {
    return `${this.prefix}:conns`;
  }
  /** Set of credential ids that use a connection (deleting the connection is refused while non-empty). */
  connectionUsers(id: string): string {
    return `${this.prefix}:conn:${this.#tag(id)}:creds`;
  }
  /**
   * Hash of the downstream user names a connection's credentials use → the credential id: its user and, for
   * alternating-users, its `_clone`. Claimed and released with the credential, so that two credentials never
   * rotate one downstream user (or one's clone) and break each other.
   */
  connectionUsernames(id: string): string {
    return `${this.prefix}:conn:${this.#tag(id)}:users`;
  }
  /**
   * Hash of the downstream users Keyturn made (or was told to adopt) → the credential they were made for: the
   * `_clone` of an alternating pair. A clone that exists and is not here belongs to someone else, and is never
   * rotated.
   */
  connectionMadeUsers(id: string): string {
    return `${this.prefix}:conn:${this.#tag(id)}:made`;
  }
  /** Count of a principal's failed imports in the current window (expires with it); the name is hashed. */
  importFailures(principalDigest: string): string {
    return `${this.prefix}:limits:import-failures:${principalDigest}`;
  }
  /**
   * Count of one rate-limit subject's requests in the current window (expires with it), shared by every API replica:
   * the subject (principal name or client address) is hashed. One key per counter, so any Cluster slot will do.
   */
  rateLimit(subjectDigest: string): string {
    return `${this.prefix}:limits:rate:${subjectDigest}`;
  }
  /** Set when the user-name claims of credentials registered before they existed have been written. */
  usernameClaimsMigrated(): string {
    return `${this.prefix}:migrated:username-claims`;
  }
  /** Hash of one credential: field `spec` (what the team registered) and field `state` (what rotation made of it). */
  credential(id: string): string {
    return `${this.prefix}:cred:${this.#tag(id)}`;
  }
  /** Sorted set of credential ids by creation time. */
  credentials(): string {
    return `${this.prefix}:creds`;
  }
  /** Sorted set of credential ids by when their next scheduled rotation is due (ms): scheduling/due-index.ts. */
  dueIndex(): string {
    return `${this.prefix}:due`;
  }
  /** The id of the rotation in flight for a credential (I3: at most one). */
  inflight(credentialId: string): string {
    return `${this.prefix}:cred:${this.#tag(credentialId)}:inflight`;
  }
  /** Execution lease: which worker may act on a credential's downstream right now, with a fencing token. */
  /** A connection's lock (rotation/lease.ts, ConnectionLock): shared holders, exclusive holder, exclusive wish. */
  connectionLock(connectionId: string): [string, string, string] {
    const base = `${this.prefix}:conn:${this.#tag(connectionId)}:lock`;
    return [`${base}:shared`, `${base}:excl`, `${base}:wish`];
  }
  lease(credentialId: string): string {
    return `${this.prefix}:cred:${this.#tag(credentialId)}:lease`;
  }
  /** Sorted set of a credential's rotation ids by start time. */
  credentialRotations(credentialId: string): string {
    return `${this.prefix}:cred:${this.#tag(credentialId)}:rots`;
  }
  /** JSON of one rotation: its state machine position, steps, attempts and scrubbed error. */
  rotation(credentialId: string, id: string): string {
    return this.clustered
      ? `${this.prefix}:rot:${this.#tag(credentialId)}:${id}`
      : `${this.prefix}:rot:${id}`;
  }
  /**
   * Cluster only: the credential a rotation id belongs to, so that a rotation found by id alone (its job, GET
   * /v1/rotations/:id) is found in its credential's slot. Written before the rotation, never changed.
   */
  rotationOwner(id: string): string {
    return `${this.prefix}:rot:${id}:cred`;
  }
  /** Sorted set of rotations not yet terminal, by start time: what the reconciler checks after a crash. */
  activeRotations(): string {
    return `${this.prefix}:rots:active`;
  }
  /** JSON of one short-lived credential (a lease made by POST /v1/credentials/:id/leases); never its password. */
  leaseRecord(credentialId: string, leaseId: string): string {
    return this.clustered
      ? `${this.prefix}:lease:${this.#tag(credentialId)}:${leaseId}`
      : `${this.prefix}:lease:${leaseId}`;
  }
  /** Cluster only: the credential a lease id belongs to (as rotationOwner); expires with the lease's record. */
  leaseOwner(leaseId: string): string {
    return `${this.prefix}:lease:${leaseId}:cred`;
  }
  /**
   * Sorted set of leases not yet revoked, scored by when their user must be gone (expiry; sooner for one whose
   * creation stalled or whose revocation was asked for): what the sweep reads.
   */
  leasesDue(): string {
    return `${this.prefix}:leases:due`;
  }
  /**
   * JSON of one approval of dual control (what it approves, who asked, the decisions; never a request body). One key per
   * approval, so that its check-and-set touches one slot of a Cluster; it expires a retention after the approval does.
   */
  approval(id: string): string {
    return `${this.prefix}:approval:${id}`;
  }
  /** Sorted set of approval ids by creation time (ms): GET /v1/approvals; entries whose record is gone are skipped. */
  approvals(): string {
    return `${this.prefix}:approvals`;
  }
  /** Sorted set of a credential's lease ids by creation time. */
  credentialLeases(credentialId: string): string {
    return `${this.prefix}:cred:${this.#tag(credentialId)}:leases`;
  }
  /** Local store: hash of one secret's sealed versions and its stage labels. */
  localSecret(name: string): string {
    return `${this.prefix}:secret:${name}`;
  }
  /** SCAN pattern of every localSecret key (the rekey walks them). */
  localSecretPattern(): string {
    return `${this.prefix.replace(/[*?[\]\\]/g, '\\$&')}:secret:*`;
  }
  /** Local store: hash of Keyturn's own keys (name → sealed 32 bytes), such as the approval body digest's key. */
  keyring(): string {
    return `${this.prefix}:keyring`;
  }
  /** The key rewrap's status record (keyturn rekey, GET /v1/rekey): JSON, one at a time. */
  rekey(): string {
    return `${this.prefix}:rekey`;
  }
  /** Audit stream: one entry per event, appended by every process (id: Redis's total order). */
  audit(): string {
    return `${this.#audit()}`;
  }
  /** The chain over the audit stream: one entry per sealed event, with the same id (seq, digest, prev, hash). */
  auditChain(): string {
    return `${this.#audit()}:chain`;
  }
  /** Hash: the sealed head (id, seq, hash) and the last checkpoint (cpN, cpSeq, cpHash, cpAt). */
  auditHead(): string {
    return `${this.#audit()}:head`;
  }
  /** Signed checkpoints, each with the id of the event it vouches for. */
  auditCheckpoints(): string {
    return `${this.#audit()}:checkpoints`;
  }
  /** Hash: where the stream's chain starts once archived events were trimmed (seq, hash, checkpoint). */
  auditAnchor(): string {
    return `${this.#audit()}:anchor`;
  }
  /** Which process seals (token, expiry): one at a time, so they don't all hash the same events. */
  auditSealerLock(): string {
    return `${this.#audit()}:sealer`;
  }
  /** The id an export wants signed: the sealer checkpoints up to it at once. */
  auditCheckpointWanted(): string {
    return `${this.#audit()}:checkpoint-wanted`;
  }
  /** Hash: the last day written to the archive folder (day), so trimming never passes it. */
  auditArchive(): string {
    return `${this.#audit()}:archive`;
  }
  /**
   * Hash of credential id → when the password of its last notified overdue lapse was set (ms): the overdue scan's
   * once-only mark, raised in the same script as the `credential.overdue` audit event.
   */
  overdueNotified(credentialId: string): string {
    return this.clustered
      ? `${this.prefix}:cred:${this.#tag(credentialId)}:overdue`
      : `${this.prefix}:overdue:notified`;
  }
  /**
   * Where a credential's audit events are written together with the change they record. On one node: the audit
   * stream itself. In a Cluster the stream lives in another slot, so they go to a stream in the credential's slot and
   * are relayed to the audit stream exactly once (audit/outbox.ts).
   */
  auditOutbox(credentialId: string): string {
    return this.clustered ? `${this.prefix}:cred:${this.#tag(credentialId)}:outbox` : this.audit();
  }
  /** Cluster: credentials whose outbox may hold events not yet relayed, scored by when one was last written. */
  auditOutboxes(): string {
    return `${this.#audit()}:outboxes`;
  }
  /** Cluster: credential → id of the last outbox entry relayed to the stream (what makes a relay exactly-once). */
  auditRelayed(): string {
    return `${this.#audit()}:relayed`;
  }
  /** Credential id → when it claimed its place on the connection (ms): tells a claim left by a crash from a new one. */
  connectionClaimTimes(id: string): string {
    return `${this.prefix}:conn:${this.#tag(id)}:since`;
  }
  /** BullMQ's own prefix: its queues' keys live below it (in a Cluster, in one slot, as BullMQ needs). */
  queuePrefix(): string {
    return this.clustered ? `${this.prefix}:{${this.prefix}:q}` : `${this.prefix}:q`;
  }
}
