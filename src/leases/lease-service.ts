// Short-lived credentials. A lease is a downstream user of its own, made for one caller with the access of a
// credential's user, and dropped when the lease ends. The life of a lease:
//
//   issue    record it as `creating` first (write-ahead: whatever happens next, the sweep knows the user may
//            exist), plan its revocation job, make the user downstream, check that it logs in, then mark it
//            `active` together with its audit event. The password goes to the caller and nowhere else.
//   renew    move expiresAt, never past maxExpiresAt (creation + the maximum TTL); downstreams that enforce an
//            expiry themselves (PostgreSQL's VALID UNTIL) are told first.
//   revoke   mark it `revoking` (with why), drop the user and end its sessions, check it is gone, then mark it
//            `revoked` together with its audit event. A failure leaves it `revoking`, due at once: the job's
//            retries and the sweep try again until the user is gone.
//
// Three things revoke: the delayed job planned at issue (on time), the sweep (every sweep interval, for any lease
// past due whose job was missed: worker down, job lost), and a person (DELETE). They may race; the record's `rev`
// check lets exactly one of them write `revoked` and its event, and dropping a user twice is harmless.
import { randomInt, randomUUID } from 'node:crypto';
import pLimit, { type LimitFunction } from 'p-limit';
import type { AuditLog } from '../audit/audit-log.ts';
import { generatePassword } from '../crypto/password.ts';
import { type ScrubbedError, scrubError } from '../crypto/scrub.ts';
import type { Logger } from '../logging/logger.ts';
import { ConflictError, NotFoundError, UnavailableError, UnprocessableError } from '../registry/errors.ts';
import type { Registry } from '../registry/registry.ts';
import type { Connection, Credential } from '../registry/types.ts';
import { openDownstream } from '../rotation/downstream.ts';
import type { StoreSet } from '../stores/index.ts';
import { StoreUnavailableError } from '../stores/types.ts';
import { TargetRefusedError, type TargetSession } from '../targets/types.ts';
import type { LeaseRepo } from './lease-repo.ts';
import type { Lease, RevokeReason } from './types.ts';

/** Where revocations are planned: the queue layer (scheduling/queues.ts) implements it. */
export interface LeaseRevocationPlanner {
  planLeaseRevocation(leaseId: string, at: Date): Promise<void>;
}

export interface LeaseSettings {
  defaultTtlMs: number;
  maxTtlMs: number;
  concurrency: number;
  retentionMs: number;
  downstreamTimeoutMs: number;
}

export interface IssuedLease {
  lease: Lease;
  /** The lease user's password: shown to the caller once, kept nowhere. */
  password: string;
  connection: Connection;
}

export type RevokeResult =
  /** `already`: it was revoked before this call. */
  | { outcome: 'revoked'; lease: Lease; already: boolean }
  /** Not due yet (renewed, or still being created): come back at `dueAt`. */
  | { outcome: 'not-due'; lease: Lease; dueAt: Date }
  /** The attempt failed; the lease stays `revoking` and is retried. */
  | { outcome: 'failed'; lease: Lease; error: ScrubbedError }
  /** No such lease (never existed, or its record passed its retention). */
  | { outcome: 'gone' };

/** Who revoked, for the audit event. */
export type Revoker = 'job' | 'sweep' | 'api';

/** "86400000" → "24h": the largest unit that divides the value. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
  ] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${Math.ceil(ms / 1000)}s`;
}

const USERNAME_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/**
 * A lease user's name: the credential's user name (lower-cased, cut to 16 characters) and a random suffix, 28
 * characters at most, so that it fits MySQL's 32-character limit and reads as whose it is in a user list.
 */
export function leaseUsername(of: string): string {
  const base =
    of
      .toLowerCase()
      .replace(/[^a-z0-9_]/g, '')
      .slice(0, 16) || 'lease';
  let suffix = '';
  for (let i = 0; i < 10; i++) suffix += USERNAME_ALPHABET[randomInt(USERNAME_ALPHABET.length)];
  return `${base}_l${suffix}`;
}

export class LeaseService {
  readonly #registry: Registry;
  readonly #repo: LeaseRepo;
  readonly #stores: StoreSet;
  readonly #audit: AuditLog;
  readonly #log: Logger;
  readonly #settings: LeaseSettings;
  readonly #limits = new Map<string, LimitFunction>();
  readonly #planner: LeaseRevocationPlanner;

  constructor(deps: {
    registry: Registry;
    repo: LeaseRepo;
    stores: StoreSet;
    audit: AuditLog;
    logger: Logger;
    settings: LeaseSettings;
    /** Queues each lease's revocation at its expiry (scheduling/queues.ts). */
    planner: LeaseRevocationPlanner;
  }) {
    this.#planner = deps.planner;
    this.#registry = deps.registry;
    this.#repo = deps.repo;
    this.#stores = deps.stores;
    this.#audit = deps.audit;
    this.#log = deps.logger.child({ component: 'leases' });
    this.#settings = deps.settings;
  }

  /** A `creating` lease older than this is taken for abandoned (its issuer died) and revoked by the sweep. */
  get stalledAfterMs(): number {
    // Opening, creating, checking: three downstream round trips, each bounded by the timeout, plus queueing.
    return 4 * this.#settings.downstreamTimeoutMs + 30_000;
  }

  get settings(): Readonly<LeaseSettings> {
    return this.#settings;
  }

  async issue(credentialId: string, ttlMs: number | undefined, actor: string): Promise<IssuedLease> {
    const credential = await this.#registry.getCredential(credentialId);
    const connection = await this.#registry.getConnection(credential.spec.connection);
    // Whether its downstream makes lease users is its sessions' to say (leaseUsers): asked before anything is written.
    const canLease = await this.#withSession(connection, async (session) => session.leaseUsers !== undefined);
    if (!canLease) {
      throw new UnprocessableError(
        `Credential "${credentialId}" is on a ${connection.type} connection, which cannot make short-lived users; leases work on PostgreSQL, MySQL/MariaDB and Redis ACL connections`,
      );
    }
    const ttl = ttlMs ?? this.#settings.defaultTtlMs;
    if (ttl > this.#settings.maxTtlMs) {
      throw new UnprocessableError(
        `ttl ${formatDuration(ttl)} is longer than the longest a lease may live, ${formatDuration(this.#settings.maxTtlMs)} (KEYTURN_LEASE_MAX_TTL)`,
      );
    }
    const now = Date.now();
    const lease: Lease = {
      id: randomUUID(),
      credential: credentialId,
      connection: connection.id,
      username: leaseUsername(credential.spec.username),
      of: credential.spec.username,
      status: 'creating',
      createdBy: actor,
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + ttl).toISOString(),
      maxExpiresAt: new Date(now + this.#settings.maxTtlMs).toISOString(),
      ttlSeconds: Math.ceil(ttl / 1000),
      renewals: 0,
      rev: 0,
    };
    // Write-ahead: recorded before anything exists downstream, due when its creation would count as stalled.
    if (!(await this.#repo.create(lease, new Date(now + Math.min(ttl, this.stalledAfterMs))))) {
      throw new NotFoundError(`Credential "${credentialId}" does not exist`);
    }
    await this.#plan(lease.id, new Date(now + ttl));
    const password = generatePassword(credential.spec.password);
    try {
      await this.#withSession(connection, async (session) => {
        if (!session.leaseUsers)
          throw new TargetRefusedError(`${connection.type} sessions cannot make lease users`);
        await session.leaseUsers.create(lease.username, password, {
          of: lease.of,
          expiresAt: new Date(lease.expiresAt),
        });
        const check = await session.authenticate({ username: lease.username, password });
        if (!check.ok) throw new TargetRefusedError(`the new lease user does not log in: ${check.message}`);
      });
    } catch (err) {
      await this.#creationFailed(lease, credential, err, password, actor);
    }
    const active = await this.#repo.update(
      lease,
      { ...lease, status: 'active' },
      {
        dueAt: new Date(lease.expiresAt),
        audit: {
          actor,
          action: 'lease.created',
          outcome: 'success',
          credential: credentialId,
          connection: connection.id,
          details: {
            lease: lease.id,
            username: lease.username,
            expiresAt: lease.expiresAt,
            ttl: lease.ttlSeconds,
          },
        },
      },
    );
    if (!active) {
      // The sweep took the creation for abandoned and revoked it meanwhile: the user is (being) dropped.
      throw new UnavailableError(
        `Lease ${lease.id} was revoked while it was being created: the downstream took longer than ${formatDuration(this.stalledAfterMs)}; ask again`,
      );
    }
    this.#log.info(
      { lease: lease.id, credential: credentialId, username: lease.username, expiresAt: lease.expiresAt },
      'lease issued',
    );
    return { lease: active, password, connection };
  }

  /** A creation that failed: whatever was made is taken back (now, or by the retries), and the caller told why. */
  async #creationFailed(
    lease: Lease,
    credential: Credential,
    err: unknown,
    password: string,
    actor: string,
  ): Promise<never> {
    const scrubbed = scrubError(err, [password]);
    this.#log.warn({ lease: lease.id, credential: lease.credential, err: scrubbed }, 'lease creation failed');
    await this.#audit.append({
      actor,
      action: 'lease.create_failed',
      outcome: 'failure',
      credential: lease.credential,
      connection: lease.connection,
      details: { lease: lease.id, username: lease.username, error: scrubbed.message },
    });
    const taken = await this.revoke(lease.id, 'creation-failed', actor, 'api').catch(() => undefined);
    if (taken?.outcome !== 'revoked') {
      this.#log.warn(
        { lease: lease.id },
        'could not yet drop the user of a failed lease creation; the revocation job and the sweep retry',
      );
    }
    const what = `Could not create a lease user for credential "${credential.spec.id}"`;
    if (err instanceof TargetRefusedError || err instanceof UnprocessableError) {
      throw new UnprocessableError(`${what}: ${scrubbed.message}`);
    }
    if (err instanceof StoreUnavailableError) {
      throw new UnavailableError(
        `${what}: the store that holds the connection's admin secret did not answer; retry`,
      );
    }
    throw new UnavailableError(`${what}: the downstream did not answer (${scrubbed.message}); retry`);
  }

  async find(id: string): Promise<Lease | null> {
    return this.#repo.find(id);
  }

  async get(id: string): Promise<Lease> {
    const lease = await this.#repo.find(id);
    if (!lease)
      throw new NotFoundError(`Lease "${id}" does not exist (or was revoked longer ago than its retention)`);
    return lease;
  }

  async list(credentialId: string, limit: number): Promise<Lease[]> {
    await this.#registry.getCredential(credentialId);
    return this.#repo.listForCredential(credentialId, limit);
  }

  /**
   * Moves an active lease's end to now + ttl (the TTL it was issued with when none is given), never past its
   * maximum and never earlier than it already is. `capped` says the maximum cut the request short.
   */
  async renew(
    id: string,
    ttlMs: number | undefined,
    actor: string,
  ): Promise<{ lease: Lease; capped: boolean }> {
    if (ttlMs !== undefined && ttlMs > this.#settings.maxTtlMs) {
      throw new UnprocessableError(
        `ttl ${formatDuration(ttlMs)} is longer than the longest a lease may live, ${formatDuration(this.#settings.maxTtlMs)} (KEYTURN_LEASE_MAX_TTL)`,
      );
    }
    for (;;) {
      const lease = await this.get(id);
      const now = Date.now();
      if (lease.status !== 'active') {
        throw new ConflictError(`Lease ${id} is ${lease.status}: only an active lease can be renewed`);
      }
      if (Date.parse(lease.expiresAt) <= now) {
        throw new ConflictError(`Lease ${id} expired at ${lease.expiresAt}: ask for a new lease`);
      }
      const wanted = now + (ttlMs ?? lease.ttlSeconds * 1000);
      const max = Date.parse(lease.maxExpiresAt);
      const capped = wanted > max;
      const expiresAt = Math.max(Math.min(wanted, max), Date.parse(lease.expiresAt));
      if (expiresAt === Date.parse(lease.expiresAt)) return { lease, capped };
      const connection = await this.#registry.getConnection(lease.connection).catch(() => null);
      if (!connection)
        throw new ConflictError(`Lease ${id}'s connection "${lease.connection}" no longer exists`);
      try {
        await this.#withSession(connection, (session) =>
          session.leaseUsers
            ? session.leaseUsers.extend(lease.username, new Date(expiresAt))
            : Promise.resolve(),
        );
      } catch (err) {
        const scrubbed = scrubError(err);
        if (err instanceof TargetRefusedError) {
          throw new UnprocessableError(`Could not extend lease ${id} downstream: ${scrubbed.message}`);
        }
        throw new UnavailableError(
          `Could not extend lease ${id}: the downstream did not answer (${scrubbed.message}); retry`,
        );
      }
      const iso = new Date(expiresAt).toISOString();
      const renewed = await this.#repo.update(
        lease,
        { ...lease, expiresAt: iso, renewals: lease.renewals + 1, renewedAt: new Date(now).toISOString() },
        {
          dueAt: new Date(expiresAt),
          audit: {
            actor,
            action: 'lease.renewed',
            outcome: 'success',
            credential: lease.credential,
            connection: lease.connection,
            details: { lease: id, username: lease.username, expiresAt: iso, capped },
          },
        },
      );
      // The revocation job planned for the old end finds the lease not due and moves itself to the new end.
      if (renewed) return { lease: renewed, capped };
    }
  }

  /**
   * Revokes a lease now (DELETE, credential deletion, a failed creation) or, for reason `expired`, once it is
   * due. Returns what happened; throws only when Redis fails.
   */
  async revoke(id: string, reason: RevokeReason, actor: string, by: Revoker): Promise<RevokeResult> {
    for (;;) {
      const found = await this.#repo.find(id);
      if (!found) {
        await this.#repo.forgetDue(id);
        return { outcome: 'gone' };
      }
      if (found.status === 'revoked') {
        await this.#repo.forgetDue(id); // an entry a crash left behind after the revocation landed
        return { outcome: 'revoked', lease: found, already: true };
      }
      const now = Date.now();
      let why = reason;
      if (reason === 'expired' && found.status !== 'revoking') {
        const due =
          found.status === 'creating'
            ? Math.min(Date.parse(found.createdAt) + this.stalledAfterMs, Date.parse(found.expiresAt))
            : Date.parse(found.expiresAt);
        if (due > now) {
          // Found early (an entry made sooner by a change that did not land): back to its due time.
          await this.#repo.setDue(id, new Date(due));
          return { outcome: 'not-due', lease: found, dueAt: new Date(due) };
        }
        if (found.status === 'creating' && Date.parse(found.expiresAt) > now) why = 'creation-stalled';
      }
      let lease = found;
      if (found.status !== 'revoking') {
        const marked = await this.#repo.update(
          found,
          { ...found, status: 'revoking', revokeReason: why },
          { dueAt: new Date(now) },
        );
        if (!marked) continue; // changed since read (renewed, activated, another revoker): decide again
        lease = marked;
      }
      const attempt = await this.#dropDownstream(lease);
      if (attempt) {
        const attempts = (lease.revokeAttempts ?? 0) + 1;
        const failed = await this.#repo.update(
          lease,
          { ...lease, revokeAttempts: attempts, lastError: attempt.message },
          {
            dueAt: new Date(now),
            // The first failure is an audit event; later ones are in the record and the log, not 1 event per try.
            ...(attempts === 1
              ? {
                  audit: {
                    actor,
                    action: 'lease.revoke_failed',
                    outcome: 'failure' as const,
                    credential: lease.credential,
                    connection: lease.connection,
                    details: { lease: id, username: lease.username, by, error: attempt.message },
                  },
                }
              : {}),
          },
        );
        this.#log.warn(
          { lease: id, attempts, by, err: attempt },
          'lease revocation failed; it will be retried',
        );
        if (!failed) continue;
        return { outcome: 'failed', lease: failed, error: attempt };
      }
      const revokedAt = new Date();
      const { lastError: _dropped, ...rest } = lease;
      const lateMs = Math.max(0, revokedAt.getTime() - Date.parse(lease.expiresAt));
      const done = await this.#repo.update(
        lease,
        { ...rest, status: 'revoked', revokedAt: revokedAt.toISOString() },
        {
          dueAt: null,
          retainMs: this.#settings.retentionMs,
          audit: {
            actor,
            action: 'lease.revoked',
            outcome: 'success',
            credential: lease.credential,
            connection: lease.connection,
            details: {
              lease: id,
              username: lease.username,
              reason: lease.revokeReason ?? why,
              by,
              ...(lease.revokeReason === 'expired' ? { lateMs } : {}),
            },
          },
        },
      );
      if (!done) continue; // another revoker finished first: the re-read sees `revoked`
      this.#log.info({ lease: id, username: lease.username, reason: done.revokeReason, by }, 'lease revoked');
      return { outcome: 'revoked', lease: done, already: false };
    }
  }

  /** Drops the lease user and checks it is gone; the scrubbed error when that did not work. */
  async #dropDownstream(lease: Lease): Promise<ScrubbedError | undefined> {
    const connection = await this.#registry.findConnection(lease.connection);
    if (!connection) {
      return {
        message: `connection "${lease.connection}" no longer exists, so user "${lease.username}" cannot be dropped by Keyturn: drop it by hand`,
      };
    }
    try {
      await this.#withSession(connection, async (session) => {
        if (session.leaseUsers) await session.leaseUsers.drop(lease.username, { of: lease.of });
        else await session.deleteUser(lease.username);
        if (await session.userExists(lease.username)) {
          throw new Error(`user "${lease.username}" still exists after it was dropped`);
        }
      });
      return undefined;
    } catch (err) {
      return scrubError(err);
    }
  }

  /**
   * Revokes every lease past due whose revocation has not happened (a worker was down when its job was due, the
   * job was lost, an earlier attempt failed, a creation was abandoned). Returns how many it revoked and how many
   * it could not.
   */
  async sweep(): Promise<{ revoked: number; failed: number }> {
    let revoked = 0;
    let failed = 0;
    const ids = await this.#repo.dueIds(new Date(), 5000);
    await Promise.all(
      ids.map(async (id) => {
        const r = await this.revoke(id, 'expired', 'keyturn', 'sweep');
        if (r.outcome === 'failed') failed++;
        else if (r.outcome === 'revoked' && !r.already) revoked++;
      }),
    );
    if (ids.length > 0) this.#log.info({ due: ids.length, revoked, failed }, 'lease sweep');
    return { revoked, failed };
  }

  /** Revokes every open lease of a credential (before it is deleted). Throws, naming them, if any stays. */
  async revokeAllOf(credentialId: string, actor: string): Promise<number> {
    const open = await this.#repo.openForCredential(credentialId);
    const results = await Promise.all(open.map((l) => this.revoke(l.id, 'credential-deleted', actor, 'api')));
    const stuck = results.filter((r) => r.outcome === 'failed');
    if (stuck.length > 0) {
      const names = stuck
        .map((r) => (r.outcome === 'failed' ? `${r.lease.id} (${r.error.message})` : ''))
        .slice(0, 5);
      throw new ConflictError(
        `Credential "${credentialId}" still has ${stuck.length} lease user(s) that could not be dropped: ${names.join('; ')}. They are retried; delete the credential once GET /v1/credentials/${credentialId}/leases shows them revoked`,
      );
    }
    await this.#repo.dropCredentialList(credentialId);
    return open.length;
  }

  async #plan(leaseId: string, at: Date): Promise<void> {
    try {
      await this.#planner.planLeaseRevocation(leaseId, at);
    } catch (err) {
      // Not fatal: the sweep revokes a lease whose job is missing, at most one sweep interval late.
      this.#log.warn(
        { lease: leaseId, err: scrubError(err) },
        'could not plan the lease revocation job; the sweep covers it',
      );
    }
  }

  /** Runs `fn` on a session with the connection's downstream, at most `concurrency` at once per connection. */
  async #withSession<T>(connection: Connection, fn: (session: TargetSession) => Promise<T>): Promise<T> {
    let limit = this.#limits.get(connection.id);
    if (!limit) {
      limit = pLimit(this.#settings.concurrency);
      this.#limits.set(connection.id, limit);
    }
    return limit(async () => {
      const { session } = await openDownstream(connection, this.#stores, this.#settings.downstreamTimeoutMs);
      try {
        return await fn(session);
      } finally {
        await session.close();
      }
    });
  }
}
