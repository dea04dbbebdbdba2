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

export class LeaseLostError extends Error {
  constructor(credentialId: string) {
    super(
      `Lost the execution lease of credential "${credentialId}" to another worker; stopping this attempt`,
    );
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

  constructor(redis: RedisClient, key: string, credentialId: string, token: string, ttlMs: number) {
    this.#redis = redis;
    this.#key = key;
    this.credentialId = credentialId;
    this.token = token;
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

  /** Takes the lease, or returns null when another worker holds it. */
  async tryAcquire(credentialId: string, holder: string): Promise<Lease | null> {
    const token = `${holder}:${randomUUID()}`;
    const key = this.#keys.lease(credentialId);
    const ok = await this.#redis.set(key, token, 'PX', this.#ttlMs, 'NX');
    return ok === 'OK' ? new Lease(this.#redis, key, credentialId, token, this.#ttlMs) : null;
  }
}
