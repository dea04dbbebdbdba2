// Keyturn's own store: secrets in Redis, each version sealed with AES-256-GCM under a data key that is itself
// sealed under the master key (crypto/envelope.ts). Stage labels are plain (they are not secret); every
// multi-field change is one Lua script, so a crash never leaves labels half-moved.
//
// Layout of the hash <prefix>:secret:<name>:
//   stages      JSON {"current":vid,"previous":vid,"pending":vid}
//   v:<vid>     JSON {"createdAt":iso,"sealed":SealedValue}
// Versions that lose every label are deleted: the local store keeps at most current, previous and pending.
// The secret read path (rotation/secret-reader.ts) reads `stages` and `v:<vid>` in its own script, together with the
// credential (one round trip), and opens them with openRaw: a change of this layout changes that script too.
//
// Durable write-ahead (SPEC, "Durable write-ahead"): a pending secret is confirmed durable before putPending returns,
// that is before the engine changes the password downstream, so that a failover or a crash of Redis that loses the
// master's last writes cannot lose a password already set downstream. The write and the WAIT (or WAITAOF) go in one
// pipeline on a connection of their own: WAIT counts the acknowledgements of the connection's own last write, and in
// a Redis Cluster the keyed write decides the node the whole pipeline goes to.

import { randomBytes } from 'node:crypto';
import { Cluster } from 'ioredis';
import {
  DecryptionError,
  type Envelope,
  KeyProviderError,
  kidOf,
  type SealContext,
  type SealedValue,
} from '../crypto/envelope.ts';
import type { Durability } from '../redis/checks.ts';
import { duplicateClient, type RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import type { OpenCache } from './open-cache.ts';
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
if redis.call('HEXISTS', KEYS[1], 'v:' .. token) == 1 then
  -- Already written (by an attempt that may have failed waiting for replicas): the same value is written again, a
  -- write of this connection that the WAIT after it waits for, so that a retry confirms the version durable too.
  redis.call('HSET', KEYS[1], 'v:' .. token, redis.call('HGET', KEYS[1], 'v:' .. token))
  return 0
end
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

const REWRAP = `
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
`;

const PUT_KEY_IF_ABSENT = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`;

/** One sealed value of the store, where it lives: what the rekey reads and rewraps. */
export interface SealedField {
  key: string;
  field: string;
  context: SealContext;
  /** The field's JSON text as read ({createdAt, sealed}); a rewrap replaces it only if it is still this. */
  raw: string;
}

type Stages = Partial<Record<Stage, string>>;

const contextOf = (ref: SecretRef, versionId: string): SealContext => ({
  secret: ref.name,
  version: versionId,
});

const parseDocument = (plain: Buffer): SecretDocument => JSON.parse(plain.toString('utf8')) as SecretDocument;

/**
 * A key provider that cannot answer (down, throttling, or refusing: a disabled key, a missing permission) leaves the
 * store unable to open or seal: unavailable, so a rotation is retried and a read answers 503, with the provider's
 * reason. A value that does not open is a DecryptionError, as it was.
 */
function providerError(err: unknown): unknown {
  if (err instanceof KeyProviderError)
    return new StoreUnavailableError(`Local store: ${err.message}`, { cause: err });
  return err;
}
const STAGE_NAMES: Stage[] = ['current', 'pending', 'previous'];

function stagesOf(stages: Stages, versionId: string): Stage[] {
  return STAGE_NAMES.filter((s) => stages[s] === versionId);
}

export interface LocalStoreOptions {
  /** The secret read path's memo of opened values (open-cache.ts); none: every read opens. */
  openCache?: OpenCache;
  /** How a pending secret is confirmed durable before putPending returns (src/redis/checks.ts); none by default. */
  durability?: Durability;
  /** Name of the connection that makes durable writes (CLIENT LIST), when there is one. */
  connectionName?: string;
}

export class LocalStore implements SecretStore {
  readonly type = 'local' as const;
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;
  readonly #envelope: Envelope;
  readonly #durability: Durability;
  /** The connection of durable writes: a WAIT blocks its connection, which must not be the one the API uses. */
  #writer: RedisClient | undefined;
  readonly #writerName: string;
  readonly #opened: OpenCache | undefined;

  constructor(redis: RedisClient, keys: RedisKeys, envelope: Envelope, options: LocalStoreOptions = {}) {
    this.#redis = redis;
    this.#keys = keys;
    this.#envelope = envelope;
    this.#durability = options.durability ?? { mode: 'none' };
    this.#writerName = options.connectionName ?? 'keyturn:durable-writes';
    this.#opened = options.openCache;
  }

  /**
   * A version from the raw fields of the secret's hash (`stages` and `v:<versionId>`), read by the caller in a script
   * of its own (rotation/secret-reader.ts reads them in the same round trip as the credential). Opened through the
   * open cache when there is one: a hit needs the exact sealed text, so it returns what opening would.
   */
  async openRaw(
    ref: SecretRef,
    versionId: string,
    stagesRaw: string | null,
    raw: string,
  ): Promise<SecretVersion> {
    const { createdAt, sealed } = JSON.parse(raw) as { createdAt: string; sealed: SealedValue };
    const open = () => this.#open(sealed, contextOf(ref, versionId));
    const value = this.#opened
      ? await this.#opened.open(ref.name, versionId, raw, open, parseDocument)
      : await open().then((plain) => {
          try {
            return parseDocument(plain);
          } finally {
            plain.fill(0);
          }
        });
    const stages = JSON.parse(stagesRaw ?? '{}') as Stages;
    return { versionId, stages: stagesOf(stages, versionId), createdAt, value };
  }

  /** Opens a sealed value; a key provider that cannot answer makes the store unavailable (the caller retries). */
  async #open(sealed: SealedValue, context: SealContext): Promise<Buffer> {
    try {
      return await this.#envelope.decryptBytes(sealed, context);
    } catch (err) {
      throw providerError(err);
    }
  }

  /** Drops opened values of `ref` that are not among `live` (what Redis just said may still be served). */
  retainOpened(ref: SecretRef, live: ReadonlyArray<string | null | undefined>): void {
    this.#opened?.retain(ref.name, live);
  }

  #durableWriter(): RedisClient {
    if (!this.#writer) {
      this.#writer = duplicateClient(this.#redis, { name: this.#writerName });
      // Its failures reach the caller as StoreUnavailableError; the shared connection logs the same outages.
      this.#writer.on('error', () => {});
    }
    return this.#writer;
  }

  /**
   * Runs a write script and, with a durability mode, WAIT or WAITAOF on the same connection (and node) right after
   * it; fewer acknowledgements than required fail the write with StoreUnavailableError (the rotation is retried).
   */
  async #durably(what: string, key: string, script: string, args: string[]): Promise<unknown> {
    const d = this.#durability;
    if (d.mode === 'none') return this.#redis.eval(script, 1, key, ...args);
    const pipeline = this.#durableWriter()
      .pipeline()
      .eval(script, 1, key, ...args);
    if (d.mode === 'waitaof') pipeline.call('WAITAOF', d.local, d.replicas, d.timeoutMs);
    else pipeline.call('WAIT', d.replicas, d.timeoutMs);
    const replies = await pipeline.exec();
    if (!replies || replies.length < 2) throw new Error('the write pipeline was discarded');
    const [[writeErr, written], [waitErr, acked]] = replies as [
      [Error | null, unknown],
      [Error | null, unknown],
    ];
    if (writeErr) throw writeErr;
    if (waitErr) throw waitErr;
    const advice =
      'so nothing was changed downstream and the attempt is retried. Check that the replicas run and replicate (INFO replication on the master), or lower KEYTURN_REDIS_MIN_REPLICAS_ACK / raise KEYTURN_REDIS_WAIT_TIMEOUT_MS';
    if (d.mode === 'wait') {
      const replicas = Number(acked);
      if (replicas < d.replicas) {
        throw new StoreUnavailableError(
          `Local store (Redis): ${what} was written but only ${replicas} of the ${d.replicas} replica(s) required (KEYTURN_REDIS_MIN_REPLICAS_ACK) acknowledged it within ${d.timeoutMs} ms (WAIT), ${advice}`,
        );
      }
    } else {
      const [local, replicas] = (acked as [number, number]).map(Number) as [number, number];
      if (local < d.local || replicas < d.replicas) {
        throw new StoreUnavailableError(
          `Local store (Redis): ${what} was written but not confirmed durable within ${d.timeoutMs} ms (WAITAOF): fsynced on the master ${local} of ${d.local} required, on ${replicas} of the ${d.replicas} replica(s) required (KEYTURN_REDIS_MIN_REPLICAS_ACK), ${advice}`,
        );
      }
    }
    return written;
  }

  #key(ref: SecretRef): string {
    return this.#keys.localSecret(ref.name);
  }

  async #seal(ref: SecretRef, versionId: string, value: SecretDocument): Promise<string> {
    let sealed: SealedValue;
    try {
      sealed = await this.#envelope.encrypt(JSON.stringify(value), contextOf(ref, versionId));
    } catch (err) {
      throw providerError(err);
    }
    return JSON.stringify({ createdAt: new Date().toISOString(), sealed });
  }

  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (
        err instanceof DecryptionError ||
        err instanceof StoreConflictError ||
        err instanceof StoreUnavailableError
      )
        throw err;
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
    const plain = await this.#open(sealed, contextOf(ref, versionId));
    try {
      return { versionId, stages: stagesOf(stages, versionId), createdAt, value: parseDocument(plain) };
    } finally {
      plain.fill(0);
    }
  }

  async putPending(ref: SecretRef, token: string, value: SecretDocument): Promise<{ created: boolean }> {
    const sealed = await this.#seal(ref, token, value);
    // Returns only once the version is durable (#durably), whether this call wrote it or an earlier one did.
    const created = await this.#call('write a pending version', () =>
      this.#durably('the pending secret', this.#key(ref), PUT_PENDING, [token, sealed]),
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
    this.#opened?.forget(ref.name);
    await this.#call('discard a pending version', () =>
      this.#redis.eval(DISCARD_PENDING, 1, this.#key(ref), token),
    );
  }

  async putCurrent(ref: SecretRef, token: string, value: SecretDocument): Promise<void> {
    const sealed = await this.#seal(ref, token, value);
    await this.#call('write a current version', () =>
      this.#redis.eval(PUT_CURRENT, 1, this.#key(ref), token, sealed),
    );
  }

  async remove(ref: SecretRef): Promise<void> {
    this.#opened?.forget(ref.name);
    await this.#call('remove a secret', () => this.#redis.del(this.#key(ref)));
  }

  // Keyturn's own keys (the keyring hash): 32 random bytes each, sealed like a secret, so that they are as safe as
  // the secrets and move with them in a rekey. Used where a key must be shared by every replica and must not be
  // readable from Redis: the approval body digest's HMAC key (service/approvals.ts).

  /** The key `name` of the keyring, made by whichever process asks first (every other one reads that one). */
  async systemKey(name: string): Promise<Buffer> {
    const key = this.#keys.keyring();
    const context: SealContext = { secret: `keyring/${name}`, version: '1' };
    let raw = await this.#call('read a key of the keyring', () => this.#redis.hget(key, name));
    if (!raw) {
      const made = randomBytes(32);
      try {
        const sealed = await this.#envelope.encrypt(made, context).catch((err) => {
          throw providerError(err);
        });
        const text = JSON.stringify({ createdAt: new Date().toISOString(), sealed });
        await this.#call('write a key of the keyring', () =>
          this.#durably(`the keyring's key ${name}`, key, PUT_KEY_IF_ABSENT, [name, text]),
        );
      } finally {
        made.fill(0);
      }
      // Another process may have written its own first: every process uses the one that is stored.
      raw = await this.#call('read a key of the keyring', () => this.#redis.hget(key, name));
      if (!raw) throw new StoreUnavailableError(`Local store: the keyring's key ${name} was not kept`);
    }
    const { sealed } = JSON.parse(raw) as { sealed: SealedValue };
    return this.#open(sealed, context);
  }

  // Rekey (src/rekey/): every sealed value is read where it lives and its data key wrapped again by the primary key
  // provider, in place, only if the value is still what was read (a rotation may have replaced it meanwhile: the new
  // one is sealed by the primary already).

  /** Every sealed value of the store, a hash at a time: the versions of each local secret, and the keyring. */
  async *sealedValues(): AsyncGenerator<SealedField[]> {
    const keyring = this.#keys.keyring();
    const ringFields = await this.#call('read the keyring', () => this.#redis.hgetall(keyring));
    const ring = Object.entries(ringFields).map(([field, raw]) => ({
      key: keyring,
      field,
      context: { secret: `keyring/${field}`, version: '1' },
      raw,
    }));
    if (ring.length > 0) yield ring;
    const prefixLength = this.#keys.localSecret('').length;
    const nodes = this.#redis instanceof Cluster ? this.#redis.nodes('master') : [this.#redis];
    for (const node of nodes) {
      let cursor = '0';
      do {
        const [next, keys] = await this.#call('list the secrets', () =>
          node.scan(cursor, 'MATCH', this.#keys.localSecretPattern(), 'COUNT', 200),
        );
        cursor = next;
        for (const key of keys) {
          const fields = await this.#call('read a secret', () => this.#redis.hgetall(key));
          const name = key.slice(prefixLength);
          const values = Object.entries(fields)
            .filter(([field]) => field.startsWith('v:'))
            .map(([field, raw]) => ({ key, field, context: { secret: name, version: field.slice(2) }, raw }));
          if (values.length > 0) yield values;
        }
      } while (cursor !== '0');
    }
  }

  /** The kid of a sealed value, and whether the primary provider holds it at its current version. */
  describeSealed(value: SealedField): { kid: string; current: boolean } {
    const { sealed } = JSON.parse(value.raw) as { sealed: SealedValue };
    return { kid: kidOf(sealed), current: this.#envelope.isCurrent(sealed) };
  }

  /**
   * Wraps the value's data key again under the primary provider. 'current': nothing to do; 'changed': the value was
   * replaced or removed since it was read (what replaced it was sealed by the primary); 'rewrapped': done, and
   * durable as a pending secret is (#durably) before this returns.
   */
  async rewrap(value: SealedField): Promise<'rewrapped' | 'current' | 'changed'> {
    const parsed = JSON.parse(value.raw) as { createdAt: string; sealed: SealedValue };
    let rewrapped: SealedValue | null;
    try {
      rewrapped = await this.#envelope.rewrap(parsed.sealed, value.context);
    } catch (err) {
      throw providerError(err);
    }
    if (!rewrapped) return 'current';
    const text = JSON.stringify({ ...parsed, sealed: rewrapped });
    const done = await this.#call('rewrap a sealed value', () =>
      this.#durably('the rewrapped value', value.key, REWRAP, [value.field, value.raw, text]),
    );
    return done === 1 ? 'rewrapped' : 'changed';
  }

  async ping(): Promise<void> {
    await this.#call('answer a ping', () => this.#redis.ping());
  }

  async close(): Promise<void> {
    // The shared Redis connection belongs to the runtime, which closes it; the durable-write one is the store's.
    this.#opened?.close();
    const writer = this.#writer;
    this.#writer = undefined;
    await writer?.quit().catch(() => writer.disconnect());
  }
}
