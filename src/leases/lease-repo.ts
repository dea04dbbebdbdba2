// Lease records in Redis. Every change is one script that checks the record's `rev` (so a writer that read a
// stale record is refused and re-reads), writes the record and appends its audit event together (to the credential's
// outbox: audit/outbox.ts), so an event is never lost or written twice. A lease's keys are its credential's (one
// hash tag); the sweep's due index is moved around the script: made sooner before it, set exactly after it. A crash
// in between leaves an entry that is early (the sweep finds the lease not due and puts it back) or one for a revoked
// lease (the sweep drops it), never a lease the sweep would miss.

import { type AuditEventInput, auditAppendOp } from '../audit/audit-log.ts';
import { AuditOutbox } from '../audit/outbox.ts';
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import type { Lease } from './types.ts';

// KEYS: record, credential's leases, credential hash. ARGV: record JSON, created score, id.
// A lease is only recorded for a credential that exists at that instant.
const CREATE = `
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return -1 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
`;

// KEYS: record, the credential's audit outbox. ARGV: expected rev, new JSON, retention seconds ('' = keep), audit
// entry ('' = none).
const UPDATE = `
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
if tostring(cjson.decode(raw).rev) ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
if ARGV[3] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
if ARGV[4] ~= '' then redis.call('XADD', KEYS[2], '*', 'e', ARGV[4]) end
return 1
`;

export interface LeaseUpdate {
  /** When the lease's user must be gone (the sweep's index), or null once it is gone. */
  dueAt: Date | null;
  /** Keep the record only this long from now (set once revoked). */
  retainMs?: number;
  audit?: AuditEventInput;
}

export class LeaseRepo {
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;
  readonly #outbox: AuditOutbox;

  constructor(redis: RedisClient, keys: RedisKeys) {
    this.#redis = redis;
    this.#keys = keys;
    this.#outbox = new AuditOutbox(redis, keys);
  }

  /** Where a lease's record is, knowing only its id (in a Cluster, its credential's slot); null if unknown. */
  async #recordKey(id: string): Promise<string | null> {
    if (!this.#keys.clustered) return this.#keys.leaseRecord('', id);
    const credentialId = await this.#redis.get(this.#keys.leaseOwner(id));
    return credentialId ? this.#keys.leaseRecord(credentialId, id) : null;
  }

  /** Records a new lease; false when its credential no longer exists. */
  async create(lease: Lease, dueAt: Date): Promise<boolean> {
    const k = this.#keys;
    // Indexed before the record exists: the sweep must find every lease whose user may exist (an entry without a
    // record, it drops; the due time is ahead, so it never reads the entry before the record is written).
    if (k.clustered) await this.#redis.set(k.leaseOwner(lease.id), lease.credential);
    await this.#redis.zadd(k.leasesDue(), dueAt.getTime(), lease.id);
    const r = await this.#redis.eval(
      CREATE,
      3,
      k.leaseRecord(lease.credential, lease.id),
      k.credentialLeases(lease.credential),
      k.credential(lease.credential),
      JSON.stringify(lease),
      Date.parse(lease.createdAt),
      lease.id,
    );
    if (r === -1) throw new Error(`lease id ${lease.id} is already taken`);
    if (r !== 1) await this.forgetDue(lease.id);
    return r === 1;
  }

  async find(id: string): Promise<Lease | null> {
    const key = await this.#recordKey(id);
    const raw = key ? await this.#redis.get(key) : null;
    return raw ? (JSON.parse(raw) as Lease) : null;
  }

  /**
   * Replaces `current` (as read) with `next`; false when the record changed since it was read (or is gone): the
   * caller re-reads and decides again.
   */
  async update(current: Lease, next: Omit<Lease, 'rev'>, change: LeaseUpdate): Promise<Lease | null> {
    const k = this.#keys;
    const written: Lease = { ...next, rev: current.rev + 1 };
    const audit = change.audit ? (auditAppendOp(k.audit(), change.audit)[4] ?? '') : '';
    // Sooner first (LT never moves an entry later): a crash after the script cannot leave the sweep's entry late.
    if (change.dueAt) await this.#redis.zadd(k.leasesDue(), 'LT', change.dueAt.getTime(), current.id);
    if (audit) await this.#outbox.announce(current.credential);
    const retain = change.retainMs ? String(Math.ceil(change.retainMs / 1000)) : '';
    const r = await this.#redis.eval(
      UPDATE,
      2,
      k.leaseRecord(current.credential, current.id),
      k.auditOutbox(current.credential),
      String(current.rev),
      JSON.stringify(written),
      retain,
      audit,
    );
    if (r !== 1) return null;
    if (change.dueAt) await this.#redis.zadd(k.leasesDue(), change.dueAt.getTime(), current.id);
    else await this.forgetDue(current.id);
    if (retain && k.clustered) await this.#redis.expire(k.leaseOwner(current.id), retain);
    if (audit) {
      await this.#outbox.relay(current.credential).catch(() => {
        // Left in the outbox: the reconciler relays it (AuditOutbox.sweep).
      });
    }
    return written;
  }

  /** Puts a lease's entry in the due index back at its due time (the sweep found it early). */
  async setDue(id: string, dueAt: Date): Promise<void> {
    await this.#redis.zadd(this.#keys.leasesDue(), 'XX', dueAt.getTime(), id);
  }

  /** Ids of leases whose user should be gone by `now`, soonest first. */
  async dueIds(now: Date, limit: number): Promise<string[]> {
    return this.#redis.zrangebyscore(this.#keys.leasesDue(), '-inf', now.getTime(), 'LIMIT', 0, limit);
  }

  /** Drops an index entry whose record has gone (expired retention, or a half-deleted credential). */
  async forgetDue(id: string): Promise<void> {
    await this.#redis.zrem(this.#keys.leasesDue(), id);
  }

  /** A credential's leases, newest first; records past their retention are pruned from the list. */
  async listForCredential(credentialId: string, limit: number): Promise<Lease[]> {
    const key = this.#keys.credentialLeases(credentialId);
    const ids = await this.#redis.zrevrange(key, 0, limit - 1);
    if (ids.length === 0) return [];
    const raws = await this.#redis.mget(...ids.map((id) => this.#keys.leaseRecord(credentialId, id)));
    const gone = ids.filter((_, i) => raws[i] === null);
    if (gone.length > 0) await this.#redis.zrem(key, ...gone);
    return raws.filter((r): r is string => r !== null).map((r) => JSON.parse(r) as Lease);
  }

  /** Every lease of a credential that is not yet revoked. */
  async openForCredential(credentialId: string): Promise<Lease[]> {
    const key = this.#keys.credentialLeases(credentialId);
    const ids = await this.#redis.zrange(key, 0, -1);
    const out: Lease[] = [];
    for (let i = 0; i < ids.length; i += 500) {
      const batch = ids.slice(i, i + 500);
      const raws = await this.#redis.mget(...batch.map((id) => this.#keys.leaseRecord(credentialId, id)));
      for (const raw of raws) {
        if (!raw) continue;
        const lease = JSON.parse(raw) as Lease;
        if (lease.status !== 'revoked') out.push(lease);
      }
    }
    return out;
  }

  /** Forgets a deleted credential's list of leases (the records expire on their own). */
  async dropCredentialList(credentialId: string): Promise<void> {
    await this.#redis.del(this.#keys.credentialLeases(credentialId));
  }
}
