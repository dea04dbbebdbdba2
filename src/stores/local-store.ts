// Keyturn's own store: secrets in Redis, each version sealed with AES-256-GCM under a data key that is itself
// sealed under the master key (crypto/envelope.ts). Stage labels are plain (they are not secret); every
// multi-field change is one Lua script, so a crash never leaves labels half-moved.
//
// Layout of the hash <prefix>:secret:<name>:
//   stages      JSON {"current":vid,"previous":vid,"pending":vid}
//   v:<vid>     JSON {"createdAt":iso,"sealed":SealedValue}
// Versions that lose every label are deleted: the local store keeps at most current, previous and pending.

import { DecryptionError, type Envelope, type SealedValue } from '../crypto/envelope.ts';
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import {
  type SecretDocument,
  type SecretRef,
  type SecretStore,
  type SecretVersion,
  type Stage,
  StoreConflictError,
  StoreUnavailableError,
  type VersionSelector,
} from './types.ts';

const READ = `
local stagesRaw = redis.call('HGET', KEYS[1], 'stages')
local vid = ARGV[2]
if ARGV[1] == 'stage' then
  if not stagesRaw then return {false, false, false} end
  vid = cjson.decode(stagesRaw)[ARGV[2]]
  if not vid then return {stagesRaw, false, false} end
end
return {stagesRaw, vid, redis.call('HGET', KEYS[1], 'v:' .. vid)}
`;

const PUT_PENDING = `
local stages = cjson.decode(redis.call('HGET', KEYS[1], 'stages') or '{}')
local token = ARGV[1]
if redis.call('HEXISTS', KEYS[1], 'v:' .. token) == 1 then return 0 end
local old = stages['pending']
if old and old ~= token then
  stages['pending'] = nil
  if old ~= stages['current'] and old ~= stages['previous'] then redis.call('HDEL', KEYS[1], 'v:' .. old) end
end
stages['pending'] = token
redis.call('HSET', KEYS[1], 'v:' .. token, ARGV[2], 'stages', cjson.encode(stages))
return 1
`;

const PROMOTE = `
local stages = cjson.decode(redis.call('HGET', KEYS[1], 'stages') or '{}')
local token = ARGV[1]
if stages['current'] == token then return {0, ''} end
if redis.call('HEXISTS', KEYS[1], 'v:' .. token) == 0 then return redis.error_reply('NOVERSION') end
local oldPrevious = stages['previous']
local oldCurrent = stages['current']
stages['previous'] = oldCurrent
stages['current'] = token
if stages['pending'] == token then stages['pending'] = nil end
if oldPrevious and oldPrevious ~= token and oldPrevious ~= oldCurrent and oldPrevious ~= stages['pending'] then
  redis.call('HDEL', KEYS[1], 'v:' .. oldPrevious)
end
redis.call('HSET', KEYS[1], 'stages', cjson.encode(stages))
return {1, oldCurrent or ''}
`;

const DISCARD_PENDING = `
local stages = cjson.decode(redis.call('HGET', KEYS[1], 'stages') or '{}')
local token = ARGV[1]
if stages['current'] == token or stages['previous'] == token then return 0 end
if stages['pending'] == token then stages['pending'] = nil end
redis.call('HDEL', KEYS[1], 'v:' .. token)
if next(stages) == nil then
  if redis.call('HLEN', KEYS[1]) <= 1 then redis.call('DEL', KEYS[1]) return 1 end
end
redis.call('HSET', KEYS[1], 'stages', cjson.encode(stages))
return 1
`;

const PUT_CURRENT = `
local stages = cjson.decode(redis.call('HGET', KEYS[1], 'stages') or '{}')
local token = ARGV[1]
if stages['current'] == token then return 0 end
local oldPrevious = stages['previous']
stages['previous'] = stages['current']
stages['current'] = token
if stages['pending'] == token then stages['pending'] = nil end
if oldPrevious and oldPrevious ~= token and oldPrevious ~= stages['previous'] and oldPrevious ~= stages['pending'] then
  redis.call('HDEL', KEYS[1], 'v:' .. oldPrevious)
end
redis.call('HSET', KEYS[1], 'v:' .. token, ARGV[2], 'stages', cjson.encode(stages))
return 1
`;

type Stages = Partial<Record<Stage, string>>;
const STAGE_NAMES: Stage[] = ['current', 'pending', 'previous'];

function stagesOf(stages: Stages, versionId: string): Stage[] {
  return STAGE_NAMES.filter((s) => stages[s] === versionId);
}

export class LocalStore implements SecretStore {
  readonly type = 'local' as const;
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;
  readonly #envelope: Envelope;

  constructor(redis: RedisClient, keys: RedisKeys, envelope: Envelope) {
    this.#redis = redis;
    this.#keys = keys;
    this.#envelope = envelope;
  }

  #key(ref: SecretRef): string {
    return this.#keys.localSecret(ref.name);
  }

  #seal(ref: SecretRef, versionId: string, value: SecretDocument): string {
    const sealed = this.#envelope.encrypt(JSON.stringify(value), `${ref.name}:${versionId}`);
    return JSON.stringify({ createdAt: new Date().toISOString(), sealed });
  }

  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof DecryptionError || err instanceof StoreConflictError) throw err;
      if (err instanceof Error && err.message.includes('NOVERSION'))
        throw new StoreConflictError(err.message);
      throw new StoreUnavailableError(`Local store (Redis) failed to ${what}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  async describe(ref: SecretRef): Promise<Record<string, Stage[]> | null> {
    return this.#call('describe a secret', async () => {
      const fields = await this.#redis.hkeys(this.#key(ref));
      if (fields.length === 0) return null;
      const stages = JSON.parse((await this.#redis.hget(this.#key(ref), 'stages')) ?? '{}') as Stages;
      const out: Record<string, Stage[]> = {};
      for (const f of fields) if (f.startsWith('v:')) out[f.slice(2)] = stagesOf(stages, f.slice(2));
      return out;
    });
  }

  async read(ref: SecretRef, selector: VersionSelector): Promise<SecretVersion | null> {
    // One script, so the labels and the version they point at are read at the same instant.
    const [stagesRaw, versionId, raw] = (await this.#call('read a secret', () =>
      this.#redis.eval(
        READ,
        1,
        this.#key(ref),
        'stage' in selector ? 'stage' : 'id',
        'stage' in selector ? selector.stage : selector.versionId,
      ),
    )) as [string | null, string | null, string | null];
    if (!versionId || !raw) return null;
    const stages = JSON.parse(stagesRaw ?? '{}') as Stages;
    const { createdAt, sealed } = JSON.parse(raw) as { createdAt: string; sealed: SealedValue };
    const value = JSON.parse(this.#envelope.decrypt(sealed, `${ref.name}:${versionId}`)) as SecretDocument;
    return { versionId, stages: stagesOf(stages, versionId), createdAt, value };
  }

  async putPending(ref: SecretRef, token: string, value: SecretDocument): Promise<{ created: boolean }> {
    const sealed = this.#seal(ref, token, value);
    const created = await this.#call('write a pending version', () =>
      this.#redis.eval(PUT_PENDING, 1, this.#key(ref), token, sealed),
    );
    return { created: created === 1 };
  }

  async promote(ref: SecretRef, token: string): Promise<{ promoted: boolean; previousVersionId?: string }> {
    const [promoted, previous] = (await this.#call('promote a version', () =>
      this.#redis.eval(PROMOTE, 1, this.#key(ref), token),
    )) as [number, string];
    return previous
      ? { promoted: promoted === 1, previousVersionId: previous }
      : { promoted: promoted === 1 };
  }

  async discardPending(ref: SecretRef, token: string): Promise<void> {
    await this.#call('discard a pending version', () =>
      this.#redis.eval(DISCARD_PENDING, 1, this.#key(ref), token),
    );
  }

  async putCurrent(ref: SecretRef, token: string, value: SecretDocument): Promise<void> {
    const sealed = this.#seal(ref, token, value);
    await this.#call('write a current version', () =>
      this.#redis.eval(PUT_CURRENT, 1, this.#key(ref), token, sealed),
    );
  }

  async remove(ref: SecretRef): Promise<void> {
    await this.#call('remove a secret', () => this.#redis.del(this.#key(ref)));
  }

  async ping(): Promise<void> {
    await this.#call('answer a ping', () => this.#redis.ping());
  }

  async close(): Promise<void> {
    // The Redis connection belongs to the runtime, which closes it.
  }
}
