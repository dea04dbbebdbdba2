// The records of dual control (SPEC, "Dual control"): one approval per gated request, kept as one JSON string under
// one key (keys.ts `approval`), so that every change of it is a check-and-set on that key alone and works in a Redis
// Cluster. Its body is never stored: only a keyed digest of it (service/approvals.ts), so that a PATCH carrying an
// admin password leaves nothing of the password in Redis. The policy rules (who may decide, what counts as the same
// request) are the service's; this module only keeps the records and changes them atomically.
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from './keys.ts';
import type { ApprovalPolicy } from './types.ts';

export type ApprovalStatus = 'pending' | 'approved' | 'denied' | 'expired' | 'used';
export const APPROVAL_STATUSES: readonly ApprovalStatus[] = [
  'pending',
  'approved',
  'denied',
  'expired',
  'used',
];

/** What an approval allows: one request, named by its method, route, target and body digest. */
export interface ApprovalOperation {
  /** "DELETE /v1/credentials/:id": the method and the route pattern. */
  route: string;
  /** What the request does, for people: "delete", "secret read", "admin change"… */
  action: string;
  target: { kind: 'credential' | 'connection'; id: string };
  /** Hex HMAC-SHA256 of the request body in canonical JSON (RFC 8785), under a key derived from the master key. */
  bodyDigest: string;
  /** The names of the body's fields (never their values), so that approvers see what kind of change it is. */
  fields: string[];
}

/** Who asked: the audit name, and how it authenticated (a JWT subject and a token of the same name are two). */
export interface ApprovalPrincipal {
  name: string;
  via: string;
}

export interface ApprovalDecision {
  by: string;
  via: string;
  decision: 'approve' | 'deny';
  reason: string;
  at: string;
}

export interface Approval {
  id: string;
  operation: ApprovalOperation;
  requester: ApprovalPrincipal;
  /** The target's policy when the request was made; the repeat is refused if the target's policy changed since. */
  policy: ApprovalPolicy;
  status: ApprovalStatus;
  createdAt: string;
  expiresAt: string;
  decisions: ApprovalDecision[];
  /** When it became approved, denied, expired or used. */
  decidedAt?: string;
  expiredAt?: string;
  usedAt?: string;
}

// Replaces an approval only if it is still the text the caller read (ARGV[1]): two decisions, or a decision and a
// use, never overwrite each other. Keeps the key's expiry. -1: gone; 0: changed since it was read; 1: replaced.
const SWAP = `
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
`;

export interface ApprovalCursor {
  at: number;
  id: string;
}

export class ApprovalRepo {
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;
  /** How long a record is kept after the approval expires (for the list and GET), in ms. */
  readonly #retentionMs: number;

  constructor(redis: RedisClient, keys: RedisKeys, options: { retentionMs: number }) {
    this.#redis = redis;
    this.#keys = keys;
    this.#retentionMs = options.retentionMs;
  }

  /** Writes a new approval (its id is a fresh uuid: NX only guards against a bug), then lists it. */
  async create(approval: Approval, now: number): Promise<void> {
    const keepMs = Math.max(1000, Date.parse(approval.expiresAt) - now + this.#retentionMs);
    const written = await this.#redis.set(
      this.#keys.approval(approval.id),
      JSON.stringify(approval),
      'PX',
      keepMs,
      'NX',
    );
    if (written !== 'OK') throw new Error(`approval ${approval.id} exists already`);
    // Listed once it exists; an entry whose record expired is skipped by readers and trimmed here.
    await this.#redis.zadd(this.#keys.approvals(), Date.parse(approval.createdAt), approval.id);
    await this.#redis.zremrangebyscore(this.#keys.approvals(), '-inf', `(${now - keepMs}`);
  }

  /** The approval and the exact text it was read as (for swap), or null. */
  async find(id: string): Promise<{ approval: Approval; raw: string } | null> {
    const raw = await this.#redis.get(this.#keys.approval(id));
    return raw ? { approval: JSON.parse(raw) as Approval, raw } : null;
  }

  /** Replaces the approval read as `raw` with `next`: 'swapped', 'changed' (read again) or 'gone'. */
  async swap(id: string, raw: string, next: Approval): Promise<'swapped' | 'changed' | 'gone'> {
    const r = await this.#redis.eval(SWAP, 1, this.#keys.approval(id), raw, JSON.stringify(next));
    return r === 1 ? 'swapped' : r === 0 ? 'changed' : 'gone';
  }

  /**
   * Up to `limit` ids, newest first, created before the cursor (exclusive), with their creation times. Members of one
   * millisecond come in descending id order, so the cursor's id tells where in its millisecond the page stopped.
   */
  async ids(limit: number, before?: ApprovalCursor): Promise<ApprovalCursor[]> {
    const flat = (await this.#redis.zrevrangebyscore(
      this.#keys.approvals(),
      before ? String(before.at) : '+inf',
      '-inf',
      'WITHSCORES',
      'LIMIT',
      0,
      limit + 64,
    )) as string[];
    const out: ApprovalCursor[] = [];
    for (let i = 0; i + 1 < flat.length && out.length < limit; i += 2) {
      const id = flat[i] as string;
      const at = Number(flat[i + 1]);
      if (before && at === before.at && id >= before.id) continue;
      out.push({ at, id });
    }
    return out;
  }

  /** The records of these ids, in their order; those gone left out. One GET each: they live in different slots. */
  async many(ids: string[]): Promise<Array<{ approval: Approval; raw: string }>> {
    const values = await Promise.all(ids.map((id) => this.#redis.get(this.#keys.approval(id))));
    return values
      .filter((v): v is string => v !== null)
      .map((raw) => ({ approval: JSON.parse(raw) as Approval, raw }));
  }
}
