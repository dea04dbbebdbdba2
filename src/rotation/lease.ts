// The execution lease of a credential: only the holder may act on the credential's downstream and write its
// rotation record. BullMQ's job lock already keeps one worker on one job; the lease adds mutual exclusion
// across different jobs of one credential (a rotation and a grace-period revocation) and fences a worker that
// stalled and lost its job to another: its writes check the lease token in the same script that applies them.
import { randomUUID } from 'node:crypto';
import type { RedisClient } from '../redis/client.ts';
import { type FencedOp, MERGE_FIELDS } from '../redis/fenced-op.ts';
import type { RedisKeys } from '../registry/keys.ts';

const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`;
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;
// Applies a list of writes only while the lease is held. Each op is [command, key, args…], or a field merge
// (redis/fenced-op.ts).
const FENCED = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LEASE_LOST') end
local ops = cjson.decode(ARGV[2])
for _, op in ipairs(ops) do
  if op[1] == '${MERGE_FIELDS}' then
    local raw = redis.call('HGET', op[2], op[3])
    if raw then
      local value = cjson.decode(raw)
      for name, v in pairs(cjson.decode(op[4])) do
        if v == cjson.null then value[name] = nil else value[name] = v end
      end
      redis.call('HSET', op[2], op[3], cjson.encode(value))
    end
  else
    redis.call(unpack(op))
  end
end
return #ops
`;

// The connection lock (see ConnectionLock): KEYS shared holders (sorted set, score = expiry ms), exclusive holder,
// exclusive wish; ARGV token, ttl ms, mode. Redis's own clock, so that workers' clocks do not matter. An exclusive
// taker that finds shared holders leaves a wish: no new shared holder enters until it ran (or its wish expired), so a
// busy connection cannot keep its admin rotation waiting for ever. Returns 1 when taken.
const LOCK_TAKE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('GET', KEYS[2])
if ARGV[3] == 'shared' then
  if held or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
if held and held ~= ARGV[1] then return 0 end
if redis.call('ZCARD', KEYS[1]) > 0 then
  redis.call('SET', KEYS[3], '1', 'PX', ttl)
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
redis.call('DEL', KEYS[3])
return 1
`;
// KEYS as LOCK_TAKE; ARGV token, ttl ms (renew) or '' (release).
const LOCK_KEEP = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('GET', KEYS[2]) == ARGV[1] then
  if ARGV[2] == '' then return redis.call('DEL', KEYS[2]) end
  return redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if ARGV[2] == '' then return redis.call('ZREM', KEYS[1], ARGV[1]) end
local r = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return r
`;

/**
 * Who else may work on a connection's downstream meanwhile. A credential's rotation, rollback or revocation holds it
 * shared: any number of them run side by side. The rotation of the connection's admin password holds it exclusive:
 * from its set step until its finish the admin's old password no longer logs in and the new one is not yet the
 * store's current version, so a credential rotation running then would fail its admin login (and could not roll
 * back); none runs meanwhile, and the admin rotation waits for those already running.
 */
export interface ConnectionLock {
  connection: string;
  mode: 'shared' | 'exclusive';
}

export class LeaseLostError extends Error {
  constructor(credentialId: string, what = 'the execution lease') {
    super(`Lost ${what} of credential "${credentialId}" to another worker; stopping this attempt`);
    this.name = 'LeaseLostError';
  }
}

export class Lease {
  readonly credentialId: string;
  readonly token: string;
  readonly #redis: RedisClient;
  readonly #key: string;
  readonly #timer: NodeJS.Timeout;
  #lost = false;
  /**
   * The connection lock expired and was not renewed (this process stalled past its TTL): another worker may hold it
   * exclusive now. The next commit stops the attempt, before its next change downstream (every downstream change is
   * preceded by a fenced write).
   */
  #lockLost = false;

  readonly #lockKeys: string[] | undefined;

  constructor(
    redis: RedisClient,
    key: string,
    credentialId: string,
    token: string,
    ttlMs: number,
    lockKeys?: string[],
  ) {
    this.#redis = redis;
    this.#key = key;
    this.credentialId = credentialId;
    this.token = token;
    this.#lockKeys = lockKeys;
    this.#timer = setInterval(
      () => {
        this.#redis
          .eval(RENEW, 1, this.#key, this.token, ttlMs)
          .then((r) => {
            if (r !== 1) this.#lost = true;
          })
          .catch(() => {
            // Redis unreachable: the next fenced write fails anyway and the attempt stops there.
          });
        // The connection lock lives as long as the lease: renewed with it, released with it.
        if (this.#lockKeys) {
          this.#redis
            .eval(LOCK_KEEP, 3, ...this.#lockKeys, this.token, ttlMs)
            .then((r) => {
              if (r !== 1) this.#lockLost = true;
            })
            .catch(() => {});
        }
      },
      Math.max(200, Math.floor(ttlMs / 3)),
    );
    this.#timer.unref();
  }

  get lost(): boolean {
    return this.#lost;
  }

  /** Applies the writes atomically if and only if this lease is still held. */
  async commit(ops: FencedOp[]): Promise<void> {
    if (this.#lockLost) {
      this.#lost = true;
      throw new LeaseLostError(this.credentialId, 'the connection lock');
    }
    try {
      await this.#redis.eval(FENCED, 1, this.#key, this.token, JSON.stringify(ops));
    } catch (err) {
      if (err instanceof Error && err.message.includes('LEASE_LOST')) {
        this.#lost = true;
        throw new LeaseLostError(this.credentialId);
      }
      throw err;
    }
  }

  async release(): Promise<void> {
    clearInterval(this.#timer);
    if (this.#lockKeys)
      await this.#redis.eval(LOCK_KEEP, 3, ...this.#lockKeys, this.token, '').catch(() => {});
    await this.#redis.eval(RELEASE, 1, this.#key, this.token).catch(() => {});
  }
}

export class LeaseManager {
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;
  readonly #ttlMs: number;

  constructor(redis: RedisClient, keys: RedisKeys, ttlMs: number) {
    this.#redis = redis;
    this.#keys = keys;
    this.#ttlMs = ttlMs;
  }

  /**
   * Takes the lease, and with it `lock` on the credential's connection when given; null when another worker holds the
   * lease, or the lock is not available now (then the lease is given back at once).
   */
  async tryAcquire(credentialId: string, holder: string, lock?: ConnectionLock): Promise<Lease | null> {
    const token = `${holder}:${randomUUID()}`;
    const key = this.#keys.lease(credentialId);
    const ok = await this.#redis.set(key, token, 'PX', this.#ttlMs, 'NX');
    if (ok !== 'OK') return null;
    if (!lock) return new Lease(this.#redis, key, credentialId, token, this.#ttlMs);
    const lockKeys = this.#keys.connectionLock(lock.connection);
    try {
      const taken = await this.#redis.eval(LOCK_TAKE, 3, ...lockKeys, token, this.#ttlMs, lock.mode);
      if (taken === 1) return new Lease(this.#redis, key, credentialId, token, this.#ttlMs, lockKeys);
    } catch (err) {
      await this.#redis.eval(RELEASE, 1, key, token).catch(() => {});
      throw err;
    }
    await this.#redis.eval(RELEASE, 1, key, token).catch(() => {});
    return null;
  }
}
