// The due-time index: one sorted set, credential id → when its next scheduled rotation is due (ms since the epoch).
//
// It replaced one BullMQ job scheduler per credential (issue 14): a scheduler is a hash, a delayed job and entries in
// three of BullMQ's structures, about 1.6 KB a credential; an entry here is about 100 bytes. Every worker process
// drains it (scheduling/queues.ts, `QueueWorkers`), so scheduling scales with worker processes, with no leader.
//
//   arm     ZADD: the API (registration, a schedule PATCH), a finished rotation and the reconciler set the next due time.
//   claim   one script takes up to `limit` entries due by `now` and moves each to `now + holdMs` in the same step: no two
//           drainers take one entry, and an entry whose drainer dies comes due again once the hold has passed.
//   rearm   the drainer, when done with an entry, sets its next due time only if the entry still holds its claim: a
//           PATCH or a finished rotation that armed it meanwhile knew the newer schedule, and wins.
//
// It is an index over many owners (like the credentials index), written in its own step: in a Redis Cluster it lives
// in a slot of its own. A credential it names that no longer exists is dropped by the drainer; a credential it misses
// is armed again by the reconciler.
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';

// KEYS[1] index; ARGV now, limit, hold-until. Returns a flat list: id, due time (ms), id, due time…
const CLAIM = `
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], due[i]) end
return due
`;

// KEYS[1] index; ARGV id, the claim's hold-until, next due time ('' to drop it). 1 if written, 0 if armed meanwhile.
const REARM = `
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1]) end
return 1
`;

/**
 * The member of a credential's `rotation.upcoming` notice (notifyBefore) in the same index: an id no credential can
 * have (":" is not allowed in ids), so the drainer tells the two apart and one claim protocol serves both.
 */
export function upcomingEntry(credentialId: string): string {
  return `upcoming:${credentialId}`;
}

/** The credential a notice member announces, or undefined for a credential's own entry. */
export function upcomingOf(member: string): string | undefined {
  return member.startsWith('upcoming:') ? member.slice('upcoming:'.length) : undefined;
}

export interface DueEntry {
  credentialId: string;
  /** When it came due (ms): the scheduled time, or the end of an earlier claim whose drainer died. */
  dueAt: number;
  /** The hold this claim put on it: what `rearm` checks. */
  heldUntil: number;
}

export class DueIndex {
  readonly #redis: RedisClient;
  readonly #key: string;

  constructor(redis: RedisClient, keys: RedisKeys) {
    this.#redis = redis;
    this.#key = keys.dueIndex();
  }

  async arm(credentialId: string, at: number): Promise<void> {
    await this.#redis.zadd(this.#key, Math.round(at), credentialId);
  }

  async disarm(credentialId: string): Promise<void> {
    await this.#redis.zrem(this.#key, credentialId);
  }

  /** When a credential is due next (ms), or undefined when the index has no entry for it. */
  async dueAt(credentialId: string): Promise<number | undefined> {
    const score = await this.#redis.zscore(this.#key, credentialId);
    return score === null ? undefined : Number(score);
  }

  /** The due times of several credentials in one command, in their order (undefined: no entry). */
  async dueAtMany(credentialIds: string[]): Promise<Array<number | undefined>> {
    if (credentialIds.length === 0) return [];
    const scores = await this.#redis.zmscore(this.#key, ...credentialIds);
    return scores.map((score) => (score === null ? undefined : Number(score)));
  }

  /** Takes up to `limit` entries due by `now`, each held until `now + holdMs` (see the header). */
  async claim(now: number, limit: number, holdMs: number): Promise<DueEntry[]> {
    const heldUntil = Math.round(now + holdMs);
    const flat = (await this.#redis.eval(CLAIM, 1, this.#key, Math.round(now), limit, heldUntil)) as string[];
    const entries: DueEntry[] = [];
    for (let i = 0; i < flat.length; i += 2)
      entries.push({ credentialId: flat[i]!, dueAt: Number(flat[i + 1]), heldUntil });
    return entries;
  }

  /** Sets a claimed entry's next due time (undefined: drops it), unless it was armed since the claim. */
  async rearm(entry: DueEntry, next: number | undefined): Promise<boolean> {
    const r = await this.#redis.eval(
      REARM,
      1,
      this.#key,
      entry.credentialId,
      entry.heldUntil,
      next === undefined ? '' : Math.round(next),
    );
    return r === 1;
  }

  /** Entries in the index (metrics, tests). */
  async size(): Promise<number> {
    return this.#redis.zcard(this.#key);
  }
}
