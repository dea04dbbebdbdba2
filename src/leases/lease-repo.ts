// Lease records in Redis. Every change is one script that checks the record's `rev` (so a writer that read a
// stale record is refused and re-reads), writes the record, moves it in the due index and appends its audit event
// together: an event is never lost or written twice, and the sweep's index never disagrees with the record.

import { type AuditEventInput, auditAppendOp } from '../audit/audit-log.ts';
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import type { Lease } from './types.ts';

// KEYS: record, due index, credential's leases, credential hash. ARGV: record JSON, due score, created score, id.
// A lease is only recorded for a credential that exists at that instant.
const CREATE = `
if redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return -1 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
`;

// KEYS: record, due index, audit stream. ARGV: expected rev, new JSON, due score ('' = leave the index),
// retention seconds ('' = keep), id, audit entry ('' = none).
const UPDATE = `
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
if tostring(cjson.decode(raw).rev) ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
if ARGV[3] == '' then redis.call('ZREM', KEYS[2], ARGV[5]) else redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5]) end
if ARGV[4] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
if ARGV[6] ~= '' then redis.call('XADD', KEYS[3], '*', 'e', ARGV[6]) end
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

  constructor(redis: RedisClient, keys: RedisKeys) {
    this.#redis = redis;
    this.#keys = keys;
  }

  /** Records a new lease; false when its credential no longer exists. */
  async create(lease: Lease, dueAt: Date): Promise<boolean> {
    const k = this.#keys;
    const r = await this.#redis.eval(
      CREATE,
      4,
      k.leaseRecord(lease.id),
      k.leasesDue(),
      k.credentialLeases(lease.credential),
      k.credential(lease.credential),
      JSON.stringify(lease),
      dueAt.getTime(),
      Date.parse(lease.createdAt),
      lease.id,
    );
    if (r === -1) throw new Error(`lease id ${lease.id} is already taken`);
    return r === 1;
  }

  async find(id: string): Promise<Lease | null> {
    const raw = await this.#redis.get(this.#keys.leaseRecord(id));
    return raw ? (JSON.parse(raw) as Lease) : null;
  }

  /**
   * Replaces `current` (as read) with `next`; false when the record changed since it was read (or is gone): the
   * caller re-reads and decides again.
   */
  async update(current: Lease, next: Omit<Lease, 'rev'>, change: LeaseUpdate): Promise<Lease | null> {
    const written: Lease = { ...next, rev: current.rev + 1 };
    const audit = change.audit ? (auditAppendOp(this.#keys.audit(), change.audit)[4] ?? '') : '';
    const r = await this.#redis.eval(
      UPDATE,
      3,
      this.#keys.leaseRecord(current.id),
      this.#keys.leasesDue(),
      this.#keys.audit(),
      String(current.rev),
      JSON.stringify(written),
      change.dueAt ? String(change.dueAt.getTime()) : '',
      change.retainMs ? String(Math.ceil(change.retainMs / 1000)) : '',
      current.id,
      audit,
    );
    return r === 1 ? written : null;
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
    const raws = await this.#redis.mget(...ids.map((id) => this.#keys.leaseRecord(id)));
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
      const raws = await this.#redis.mget(...batch.map((id) => this.#keys.leaseRecord(id)));
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
