// Audit events written with the change they record, across Redis Cluster slots. A rotation step, a lease change or an
// overdue mark is one script in its credential's slot, and its audit event must be neither lost nor written twice;
// the audit stream lives in another slot. So the script appends the event to the credential's outbox (a stream in its
// slot), and the relay copies it to the audit stream exactly once: each copy and the mark of how far the credential's
// outbox was copied are one script in the audit slot, and only copied entries are then removed from the outbox.
//
// On one node or Sentinel the outbox is the audit stream itself (keys.ts): nothing is relayed.

import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';

// KEYS: audit stream, relayed marks. ARGV: credential, outbox entry id, event JSON. Copies the entry unless an entry
// at or after it was copied already.
const COPY = `
local last = redis.call('HGET', KEYS[2], ARGV[1])
if last then
  local lm, ls = string.match(last, '^(%d+)-(%d+)$')
  local em, es = string.match(ARGV[2], '^(%d+)-(%d+)$')
  lm, ls, em, es = tonumber(lm), tonumber(ls), tonumber(em), tonumber(es)
  if em < lm or (em == lm and es <= ls) then return 0 end
end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
`;

// KEYS: outbox. Removes the copied entries (ARGV). The emptied stream stays: it remembers its last id, so a later
// entry always gets a greater one and is never taken for one already copied.
const TRIM = `
redis.call('XDEL', KEYS[1], unpack(ARGV))
return redis.call('XLEN', KEYS[1])
`;

// KEYS: outboxes index. Forgets a credential's outbox if nothing was written to it since it was read (ARGV[2]).
const FORGET = `
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
`;

const BATCH = 100;
/** An outbox untouched this long whose relay is not running is swept by the reconciler. */
const SWEEP_AFTER_MS = 30_000;

type Entry = [string, string[]];

export class AuditOutbox {
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;

  constructor(redis: RedisClient, keys: RedisKeys) {
    this.#redis = redis;
    this.#keys = keys;
  }

  /** Whether events go through outboxes (a Cluster) or straight to the stream. */
  get relays(): boolean {
    return this.#keys.clustered;
  }

  /**
   * Called before a script that may append to a credential's outbox: the outbox is indexed first, so that a crash
   * right after the script leaves an outbox the reconciler finds.
   */
  async announce(credentialId: string): Promise<void> {
    if (!this.relays) return;
    await this.#redis.zadd(this.#keys.auditOutboxes(), Date.now(), credentialId);
  }

  /** Copies a credential's outbox to the audit stream, exactly once per event. Returns how many were copied. */
  async relay(credentialId: string): Promise<number> {
    if (!this.relays) return 0;
    const k = this.#keys;
    const outbox = k.auditOutbox(credentialId);
    let copied = 0;
    for (;;) {
      const entries = (await this.#redis.xrange(outbox, '-', '+', 'COUNT', BATCH)) as Entry[];
      if (entries.length === 0) return copied;
      for (const [id, fields] of entries) {
        const event = fields[fields.indexOf('e') + 1];
        if (fields.indexOf('e') < 0 || event === undefined) continue;
        copied += (await this.#redis.eval(
          COPY,
          2,
          k.audit(),
          k.auditRelayed(),
          credentialId,
          id,
          event,
        )) as number;
      }
      const left = (await this.#redis.eval(TRIM, 1, outbox, ...entries.map(([id]) => id))) as number;
      if (left === 0) return copied;
    }
  }

  /**
   * The reconciler's part: relays every outbox left unrelayed (its writer died between its script and its relay) and
   * forgets the empty ones. Outboxes written in the last seconds are left to their writers.
   */
  async sweep(now = Date.now()): Promise<number> {
    if (!this.relays) return 0;
    const k = this.#keys;
    let copied = 0;
    const flat = await this.#redis.zrangebyscore(
      k.auditOutboxes(),
      '-inf',
      now - SWEEP_AFTER_MS,
      'WITHSCORES',
    );
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const credentialId = flat[i] as string;
      copied += await this.relay(credentialId);
      await this.#redis.eval(FORGET, 1, k.auditOutboxes(), credentialId, flat[i + 1] as string);
    }
    return copied;
  }
}
