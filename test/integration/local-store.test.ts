// The encrypted local store against a real Redis: the staging protocol (pending → current → previous, at most
// three versions), idempotency of every step, that nothing readable reaches Redis, that sealed values are bound
// to their secret and version, and that an unreachable Redis is reported as StoreUnavailableError. Since key
// providers (issue 17 §1): Keyturn's own keys (systemKey) are made once for every replica and sealed like secrets,
// sealedValues lists every sealed value, and rewrap moves one to the primary key in place unless it changed meanwhile.
import { createCipheriv, randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DecryptionError,
  Envelope,
  type KeyProvider,
  type SealContext,
  type SealedValue,
} from '../../src/crypto/envelope.ts';
import { generatePassword } from '../../src/crypto/password.ts';
import { EnvKeyProvider, envEnvelope, keyringOf, masterKeyId } from '../../src/keys/index.ts';
import { RedisKeys } from '../../src/registry/keys.ts';
import { LocalStore, type SealedField } from '../../src/stores/local-store.ts';
import {
  type SecretDocument,
  type SecretRef,
  StoreConflictError,
  StoreUnavailableError,
} from '../../src/stores/types.ts';
import { dropPrefix, REDIS_URL, testEnv } from '../support/harness.ts';

const { prefix } = testEnv();
const masterKey = randomBytes(32);
const keys = new RedisKeys(prefix);
let redis: Redis;
let store: LocalStore;

/** Every password written in this file, for the final leak scan. */
const written: string[] = [];

function doc(password = generatePassword()): SecretDocument {
  written.push(password);
  return { engine: 'postgres', host: 'db.internal', port: 5432, dbname: 'pay', username: 'app', password };
}

let refCounter = 0;
function newRef(label: string): SecretRef {
  refCounter += 1;
  return { spec: { type: 'local' }, name: `cred/${label}-${refCounter}` };
}

function hashKey(ref: SecretRef): string {
  return keys.localSecret(ref.name);
}

/** Every key under the test prefix and the text of everything in it (hash fields and values, strings). */
async function redisDump(): Promise<{ keys: string[]; text: string }> {
  let cursor = '0';
  const dump: string[] = [];
  const seenKeys: string[] = [];
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    for (const key of found) {
      seenKeys.push(key);
      const type = await redis.type(key);
      if (type === 'hash') {
        for (const [field, value] of Object.entries(await redis.hgetall(key))) dump.push(key, field, value);
      } else if (type === 'string') {
        dump.push(key, (await redis.get(key)) ?? '');
      } else {
        throw new Error(`unexpected ${type} key ${key}`);
      }
    }
  } while (cursor !== '0');
  return { keys: seenKeys, text: dump.join('\n') };
}

/** A 32-byte key as it could appear in Redis if it leaked: base64 (padded or not), base64url, hex. */
const keyEncodings = (key: Buffer) => [
  key.toString('base64'),
  key.toString('base64').replace(/=+$/, ''),
  key.toString('base64url'),
  key.toString('hex'),
];

/** Every key systemKey answered in this file, for the leak scans. */
const systemKeys: Buffer[] = [];

/** A provider that delegates to `inner`, with some methods replaced (to count, delay or fail its calls). */
function delegating(inner: KeyProvider, over: Partial<KeyProvider>): KeyProvider {
  return {
    name: inner.name,
    kid: inner.kid,
    canUnwrap: (kid) => inner.canUnwrap(kid),
    generate: (context) => inner.generate(context),
    unwrap: (kid, wrapped, context) => inner.unwrap(kid, wrapped, context),
    wrap: (plaintext, context) => inner.wrap(plaintext, context),
    isCurrent: (wrapped) => inner.isCurrent(wrapped),
    describe: () => inner.describe(),
    check: () => inner.check(),
    close: () => inner.close(),
    ...over,
  };
}

/** Resolves for everyone once `n` callers have arrived. */
function barrier(n: number): () => Promise<void> {
  let arrived = 0;
  let open!: () => void;
  const all = new Promise<void>((resolve) => {
    open = resolve;
  });
  return async () => {
    arrived += 1;
    if (arrived >= n) open();
    await all;
  };
}

async function collect(store: LocalStore): Promise<SealedField[][]> {
  const batches: SealedField[][] = [];
  for await (const batch of store.sealedValues()) batches.push(batch);
  return batches;
}

const envKid = (key: Buffer) => `env:${masterKeyId(key)}`;

/** A v1 value as the code before key providers wrote it (see test/unit/envelope.test.ts). */
function sealV1(kek: Buffer, plaintext: string, context: SealContext): SealedValue {
  const gcm = (key: Buffer, data: Buffer, aad: string): [string, string, string] => {
    const nonce = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 });
    cipher.setAAD(Buffer.from(aad));
    const ct = Buffer.concat([cipher.update(data), cipher.final()]);
    return [nonce.toString('base64'), ct.toString('base64'), cipher.getAuthTag().toString('base64')];
  };
  const kid = masterKeyId(kek);
  const dek = randomBytes(32);
  return {
    v: 1,
    kid,
    dek: gcm(kek, dek, `keyturn:dek:${kid}`),
    data: gcm(dek, Buffer.from(plaintext), `keyturn:v1:${context.secret}:${context.version}`),
  };
}

beforeAll(() => {
  redis = new Redis(REDIS_URL);
  store = new LocalStore(redis, keys, envEnvelope(masterKey));
});

afterAll(async () => {
  await dropPrefix(prefix);
  redis?.disconnect();
});

describe('rotation through the stages', () => {
  const ref = newRef('rotating');
  const v1 = doc();
  const v2 = doc();
  const v3 = doc();
  const v4 = doc();

  it('first rotation: putPending then promote sets current and no previous', async () => {
    expect(await store.describe(ref)).toBeNull();
    expect(await store.putPending(ref, 'tok-1', v1)).toEqual({ created: true });
    expect(await store.describe(ref)).toEqual({ 'tok-1': ['pending'] });
    const pending = await store.read(ref, { stage: 'pending' });
    expect(pending?.versionId).toBe('tok-1');
    expect(pending?.stages).toEqual(['pending']);
    expect(pending?.value).toEqual(v1);
    expect(await store.read(ref, { stage: 'current' })).toBeNull();

    const result = await store.promote(ref, 'tok-1');
    expect(result).toEqual({ promoted: true });
    expect(result).not.toHaveProperty('previousVersionId');

    const current = await store.read(ref, { stage: 'current' });
    expect(current?.versionId).toBe('tok-1');
    expect(current?.stages).toEqual(['current']);
    expect(current?.value).toEqual(v1);
    expect(await store.read(ref, { stage: 'previous' })).toBeNull();
    expect(await store.read(ref, { stage: 'pending' })).toBeNull();
    expect(await store.describe(ref)).toEqual({ 'tok-1': ['current'] });
  });

  it('second rotation keeps the old current as previous', async () => {
    expect(await store.putPending(ref, 'tok-2', v2)).toEqual({ created: true });
    expect(await store.describe(ref)).toEqual({ 'tok-1': ['current'], 'tok-2': ['pending'] });
    expect(await store.promote(ref, 'tok-2')).toEqual({ promoted: true, previousVersionId: 'tok-1' });
    expect((await store.read(ref, { stage: 'current' }))?.value).toEqual(v2);
    const previous = await store.read(ref, { stage: 'previous' });
    expect(previous?.versionId).toBe('tok-1');
    expect(previous?.stages).toEqual(['previous']);
    expect(previous?.value).toEqual(v1);
    expect(await store.describe(ref)).toEqual({ 'tok-1': ['previous'], 'tok-2': ['current'] });
  });

  it('third rotation prunes the oldest: only previous and current remain', async () => {
    expect(await store.putPending(ref, 'tok-3', v3)).toEqual({ created: true });
    expect(await store.describe(ref)).toEqual({
      'tok-1': ['previous'],
      'tok-2': ['current'],
      'tok-3': ['pending'],
    });
    expect(await store.promote(ref, 'tok-3')).toEqual({ promoted: true, previousVersionId: 'tok-2' });
    expect(await store.describe(ref)).toEqual({ 'tok-2': ['previous'], 'tok-3': ['current'] });
    expect(await store.read(ref, { versionId: 'tok-1' })).toBeNull();
    expect((await redis.hkeys(hashKey(ref))).sort()).toEqual(['stages', 'v:tok-2', 'v:tok-3']);
    expect((await store.read(ref, { stage: 'current' }))?.value).toEqual(v3);
    expect((await store.read(ref, { stage: 'previous' }))?.value).toEqual(v2);
  });

  it('with a new pending, exactly current, previous and pending remain', async () => {
    expect(await store.putPending(ref, 'tok-4', v4)).toEqual({ created: true });
    expect(await store.describe(ref)).toEqual({
      'tok-2': ['previous'],
      'tok-3': ['current'],
      'tok-4': ['pending'],
    });
    expect((await redis.hkeys(hashKey(ref))).sort()).toEqual(['stages', 'v:tok-2', 'v:tok-3', 'v:tok-4']);
  });

  it('reads by version id, with the stages that version carries and its creation time', async () => {
    for (const [id, value, stages] of [
      ['tok-2', v2, ['previous']],
      ['tok-3', v3, ['current']],
      ['tok-4', v4, ['pending']],
    ] as const) {
      const version = await store.read(ref, { versionId: id });
      expect(version?.versionId).toBe(id);
      expect(version?.value).toEqual(value);
      expect(version?.stages).toEqual(stages);
      const age = Date.now() - Date.parse(version?.createdAt ?? '');
      expect(age).toBeGreaterThanOrEqual(0);
      expect(age).toBeLessThan(60_000);
    }
    expect(await store.read(ref, { versionId: 'tok-unknown' })).toBeNull();
  });
});

describe('putPending', () => {
  it('is idempotent with the same token: created false, the stored value unchanged', async () => {
    const ref = newRef('idempotent-pending');
    const first = doc();
    const other = doc();
    expect(await store.putPending(ref, 'tok-a', first)).toEqual({ created: true });
    const rawBefore = await redis.hget(hashKey(ref), 'v:tok-a');
    expect(await store.putPending(ref, 'tok-a', other)).toEqual({ created: false });
    expect(await redis.hget(hashKey(ref), 'v:tok-a')).toBe(rawBefore);
    const pending = await store.read(ref, { stage: 'pending' });
    expect(pending?.versionId).toBe('tok-a');
    expect(pending?.value).toEqual(first);
    expect(pending?.value.password).not.toBe(other.password);
  });

  it('is a no-op for a token that was already promoted (a retried step)', async () => {
    const ref = newRef('retry-after-promote');
    const value = doc();
    await store.putPending(ref, 'tok-a', value);
    await store.promote(ref, 'tok-a');
    expect(await store.putPending(ref, 'tok-a', doc())).toEqual({ created: false });
    expect(await store.describe(ref)).toEqual({ 'tok-a': ['current'] });
    expect((await store.read(ref, { stage: 'current' }))?.value).toEqual(value);
  });

  it('a leftover pending version of another token loses its label and is deleted', async () => {
    const ref = newRef('leftover');
    const current = doc();
    await store.putCurrent(ref, 'tok-cur', current);
    await store.putPending(ref, 'tok-old', doc());
    const fresh = doc();
    expect(await store.putPending(ref, 'tok-new', fresh)).toEqual({ created: true });
    expect(await store.describe(ref)).toEqual({ 'tok-cur': ['current'], 'tok-new': ['pending'] });
    expect(await redis.hexists(hashKey(ref), 'v:tok-old')).toBe(0);
    expect(await store.read(ref, { versionId: 'tok-old' })).toBeNull();
    expect((await store.read(ref, { stage: 'pending' }))?.value).toEqual(fresh);
    expect((await store.read(ref, { stage: 'current' }))?.value).toEqual(current);
  });
});

describe('promote', () => {
  it('is idempotent: promoting the current token again changes nothing', async () => {
    const ref = newRef('idempotent-promote');
    await store.putPending(ref, 'tok-1', doc());
    await store.promote(ref, 'tok-1');
    await store.putPending(ref, 'tok-2', doc());
    expect(await store.promote(ref, 'tok-2')).toEqual({ promoted: true, previousVersionId: 'tok-1' });
    const rawBefore = await redis.hgetall(hashKey(ref));
    const again = await store.promote(ref, 'tok-2');
    expect(again).toEqual({ promoted: false });
    expect(await redis.hgetall(hashKey(ref))).toEqual(rawBefore);
    expect(await store.describe(ref)).toEqual({ 'tok-1': ['previous'], 'tok-2': ['current'] });
  });

  it('an unknown token is a StoreConflictError and changes nothing', async () => {
    const ref = newRef('promote-unknown');
    await store.putCurrent(ref, 'tok-1', doc());
    await store.putPending(ref, 'tok-2', doc());
    const rawBefore = await redis.hgetall(hashKey(ref));
    await expect(store.promote(ref, 'tok-nope')).rejects.toBeInstanceOf(StoreConflictError);
    expect(await redis.hgetall(hashKey(ref))).toEqual(rawBefore);
    // Also on a secret that does not exist at all, which must not be created.
    const missing = newRef('promote-missing');
    await expect(store.promote(missing, 'tok-1')).rejects.toBeInstanceOf(StoreConflictError);
    expect(await redis.exists(hashKey(missing))).toBe(0);
  });
});

describe('discardPending', () => {
  it('drops the pending version and is idempotent', async () => {
    const ref = newRef('discard');
    const current = doc();
    await store.putCurrent(ref, 'tok-1', doc());
    await store.putCurrent(ref, 'tok-2', current);
    await store.putPending(ref, 'tok-3', doc());
    await store.discardPending(ref, 'tok-3');
    expect(await store.describe(ref)).toEqual({ 'tok-1': ['previous'], 'tok-2': ['current'] });
    expect(await redis.hexists(hashKey(ref), 'v:tok-3')).toBe(0);
    await store.discardPending(ref, 'tok-3');
    expect(await store.describe(ref)).toEqual({ 'tok-1': ['previous'], 'tok-2': ['current'] });
    expect((await store.read(ref, { stage: 'current' }))?.value).toEqual(current);
  });

  it('never drops the current or the previous version', async () => {
    const ref = newRef('discard-guard');
    const previous = doc();
    const current = doc();
    await store.putCurrent(ref, 'tok-1', previous);
    await store.putCurrent(ref, 'tok-2', current);
    const rawBefore = await redis.hgetall(hashKey(ref));
    await store.discardPending(ref, 'tok-2');
    await store.discardPending(ref, 'tok-1');
    expect(await redis.hgetall(hashKey(ref))).toEqual(rawBefore);
    expect((await store.read(ref, { stage: 'current' }))?.value).toEqual(current);
    expect((await store.read(ref, { stage: 'previous' }))?.value).toEqual(previous);
  });

  it('removes the secret when its only version was the discarded pending, and creates nothing for a missing one', async () => {
    const ref = newRef('discard-only');
    await store.putPending(ref, 'tok-1', doc());
    await store.discardPending(ref, 'tok-1');
    expect(await store.describe(ref)).toBeNull();
    expect(await redis.exists(hashKey(ref))).toBe(0);
    const missing = newRef('discard-missing');
    await store.discardPending(missing, 'tok-1');
    expect(await redis.exists(hashKey(missing))).toBe(0);
  });
});

describe('putCurrent', () => {
  it('writes the current version directly, keeps one previous and prunes older ones', async () => {
    const ref = newRef('put-current');
    const [a, b, c] = [doc(), doc(), doc()];
    await store.putCurrent(ref, 'tok-a', a);
    expect(await store.describe(ref)).toEqual({ 'tok-a': ['current'] });
    expect((await store.read(ref, { stage: 'current' }))?.value).toEqual(a);
    expect(await store.read(ref, { stage: 'previous' })).toBeNull();

    await store.putCurrent(ref, 'tok-b', b);
    expect(await store.describe(ref)).toEqual({ 'tok-a': ['previous'], 'tok-b': ['current'] });

    await store.putCurrent(ref, 'tok-c', c);
    expect(await store.describe(ref)).toEqual({ 'tok-b': ['previous'], 'tok-c': ['current'] });
    expect((await store.read(ref, { stage: 'current' }))?.value).toEqual(c);
    expect((await store.read(ref, { stage: 'previous' }))?.value).toEqual(b);
  });

  it('is idempotent with the current token: the value is not replaced', async () => {
    const ref = newRef('put-current-idem');
    const a = doc();
    await store.putCurrent(ref, 'tok-a', a);
    const rawBefore = await redis.hgetall(hashKey(ref));
    await store.putCurrent(ref, 'tok-a', doc());
    expect(await redis.hgetall(hashKey(ref))).toEqual(rawBefore);
    expect((await store.read(ref, { stage: 'current' }))?.value).toEqual(a);
  });

  it('leaves a pending version of another token in place', async () => {
    const ref = newRef('put-current-pending');
    await store.putCurrent(ref, 'tok-a', doc());
    const pending = doc();
    await store.putPending(ref, 'tok-p', pending);
    await store.putCurrent(ref, 'tok-b', doc());
    expect(await store.describe(ref)).toEqual({
      'tok-a': ['previous'],
      'tok-b': ['current'],
      'tok-p': ['pending'],
    });
    expect((await store.read(ref, { stage: 'pending' }))?.value).toEqual(pending);
  });
});

describe('describe, read and remove', () => {
  it('a missing secret: describe null, reads null', async () => {
    const ref = newRef('missing');
    expect(await store.describe(ref)).toBeNull();
    expect(await store.read(ref, { stage: 'current' })).toBeNull();
    expect(await store.read(ref, { versionId: 'tok-1' })).toBeNull();
    expect(await redis.exists(hashKey(ref))).toBe(0);
  });

  it('remove deletes the secret and every version, and is idempotent', async () => {
    const ref = newRef('remove');
    await store.putCurrent(ref, 'tok-1', doc());
    await store.putCurrent(ref, 'tok-2', doc());
    await store.putPending(ref, 'tok-3', doc());
    await store.remove(ref);
    expect(await redis.exists(hashKey(ref))).toBe(0);
    expect(await store.describe(ref)).toBeNull();
    for (const versionId of ['tok-1', 'tok-2', 'tok-3'])
      expect(await store.read(ref, { versionId })).toBeNull();
    await expect(store.remove(ref)).resolves.toBeUndefined();
  });

  it('secrets are independent of each other', async () => {
    const a = newRef('indep-a');
    const b = newRef('indep-b');
    const va = doc();
    const vb = doc();
    await store.putCurrent(a, 'tok-1', va);
    await store.putCurrent(b, 'tok-1', vb);
    await store.remove(a);
    expect((await store.read(b, { stage: 'current' }))?.value).toEqual(vb);
  });

  it('ping answers', async () => {
    await expect(store.ping()).resolves.toBeUndefined();
  });
});

describe('sealed values are bound to their place', () => {
  it('a value copied by hand to another secret (same version id) fails to decrypt', async () => {
    const a = newRef('aad-a');
    const b = newRef('aad-b');
    await store.putCurrent(a, 'tok-1', doc());
    await store.putCurrent(b, 'tok-1', doc());
    const stolen = await redis.hget(hashKey(a), 'v:tok-1');
    expect(stolen).toBeTruthy();
    await redis.hset(hashKey(b), 'v:tok-1', stolen as string);
    await expect(store.read(b, { stage: 'current' })).rejects.toBeInstanceOf(DecryptionError);
    // The wrapped DEK is bound to its place too, so the provider is the first to refuse it.
    await expect(store.read(b, { versionId: 'tok-1' })).rejects.toThrow(
      /failed authentication.*moved from another/,
    );
    // The original still opens where it belongs.
    await expect(store.read(a, { stage: 'current' })).resolves.toMatchObject({ versionId: 'tok-1' });
  });

  it('a value copied to another version of the same secret fails to decrypt', async () => {
    const ref = newRef('aad-version');
    await store.putCurrent(ref, 'tok-1', doc());
    await store.putCurrent(ref, 'tok-2', doc());
    const older = await redis.hget(hashKey(ref), 'v:tok-1');
    await redis.hset(hashKey(ref), 'v:tok-2', older as string);
    await expect(store.read(ref, { stage: 'current' })).rejects.toBeInstanceOf(DecryptionError);
    await expect(store.read(ref, { stage: 'previous' })).resolves.toMatchObject({ versionId: 'tok-1' });
  });

  it('a store opened with another master key cannot read, and says which keys differ', async () => {
    const ref = newRef('other-key');
    await store.putCurrent(ref, 'tok-1', doc());
    const otherEnvelope = envEnvelope(randomBytes(32));
    const other = new LocalStore(redis, keys, otherEnvelope);
    const error = await other.read(ref, { stage: 'current' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DecryptionError);
    expect((error as Error).message).toContain(`env:${masterKeyId(masterKey)}`);
    expect((error as Error).message).toContain(otherEnvelope.primary.kid);
    expect((error as Error).message).toContain('KEYTURN_MASTER_KEY_PREVIOUS');
  });
});

describe("Keyturn's own keys (systemKey)", () => {
  it('two replicas racing to create a key both get the same 32 bytes, and it is sealed in Redis', async () => {
    const name = 'race-approvals';
    // Neither replica may write before both have read the key as missing and made their own: the race is certain.
    const arrive = barrier(2);
    let generated = 0;
    const replica = () => {
      const inner = new EnvKeyProvider(masterKey);
      const provider = delegating(inner, {
        generate: async (context) => {
          generated += 1;
          await arrive();
          return inner.generate(context);
        },
      });
      const conn = new Redis(REDIS_URL);
      return { conn, store: new LocalStore(conn, keys, new Envelope(keyringOf(provider))) };
    };
    const [a, b] = [replica(), replica()];
    try {
      const [ka, kb] = await Promise.all([a.store.systemKey(name), b.store.systemKey(name)]);
      systemKeys.push(Buffer.from(ka));
      expect(generated).toBe(2);
      expect(ka).toHaveLength(32);
      expect(ka.equals(kb)).toBe(true);
      expect(ka.every((byte) => byte === 0)).toBe(false);
      expect(ka).not.toBe(kb);
      // A third process, and a restart, read the kept one.
      expect((await store.systemKey(name)).equals(ka)).toBe(true);
      expect(
        (await new LocalStore(redis, keys, envEnvelope(Buffer.from(masterKey))).systemKey(name)).equals(ka),
      ).toBe(true);

      const raw = await redis.hget(keys.keyring(), name);
      expect(raw).toBeTruthy();
      const stored = JSON.parse(raw as string) as { createdAt: string; sealed: SealedValue };
      expect(stored.sealed.v).toBe(2);
      expect(stored.sealed.kid).toBe(envKid(masterKey));
      const dump = await redisDump();
      expect(dump.keys).toContain(keys.keyring());
      for (const needle of keyEncodings(ka))
        expect(dump.text.includes(needle), `found ${needle} in Redis`).toBe(false);
    } finally {
      a.conn.disconnect();
      b.conn.disconnect();
    }
  });

  it('different names are different keys; a key is bound to its name', async () => {
    const one = await store.systemKey('bound-one');
    const two = await store.systemKey('bound-two');
    systemKeys.push(Buffer.from(one), Buffer.from(two));
    expect(one.equals(two)).toBe(false);
    // The sealed key of one name copied under another name does not open there.
    await redis.hset(keys.keyring(), 'bound-copy', (await redis.hget(keys.keyring(), 'bound-one')) as string);
    await expect(store.systemKey('bound-copy')).rejects.toBeInstanceOf(DecryptionError);
  });

  it('a replica started with another master key fails to open the key, and does not replace it', async () => {
    const kept = await store.systemKey('wrong-key');
    systemKeys.push(Buffer.from(kept));
    const rawBefore = await redis.hget(keys.keyring(), 'wrong-key');
    const stranger = new LocalStore(redis, keys, envEnvelope(randomBytes(32)));
    const err = await stranger.systemKey('wrong-key').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DecryptionError);
    expect((err as Error).message).toContain(envKid(masterKey));
    expect(await redis.hget(keys.keyring(), 'wrong-key')).toBe(rawBefore);
    expect((await store.systemKey('wrong-key')).equals(kept)).toBe(true);
  });
});

describe('sealedValues', () => {
  it('yields every version of every secret and every key of the keyring, each with its place', async () => {
    const svKeys = new RedisKeys(`${prefix}:sealed`);
    const sv = new LocalStore(redis, svKeys, envEnvelope(masterKey));
    const a = newRef('sv-a');
    const b = newRef('sv-b');
    await sv.putCurrent(a, 'tok-1', doc());
    await sv.putCurrent(a, 'tok-2', doc());
    await sv.putPending(a, 'tok-3', doc());
    await sv.putCurrent(b, 'tok-1', doc());
    // More secrets than one SCAN step returns (COUNT 200), so the cursor is followed.
    const many = Array.from({ length: 230 }, (_, i) => newRef(`sv-many-${i}`));
    await Promise.all(many.map((ref) => sv.putCurrent(ref, 'tok-1', doc())));
    systemKeys.push(Buffer.from(await sv.systemKey('k1')), Buffer.from(await sv.systemKey('k2')));

    const batches = await collect(sv);
    // The keyring comes first; every batch is one hash.
    expect(batches[0]!.map((f) => f.key)).toEqual([svKeys.keyring(), svKeys.keyring()]);
    for (const batch of batches) expect(new Set(batch.map((f) => f.key)).size).toBe(1);
    const listed = batches.flat().map((f) => `${f.key} ${f.field} ${f.context.secret} ${f.context.version}`);
    const expected = [
      `${svKeys.keyring()} k1 keyring/k1 1`,
      `${svKeys.keyring()} k2 keyring/k2 1`,
      ...['tok-1', 'tok-2', 'tok-3'].map((t) => `${svKeys.localSecret(a.name)} v:${t} ${a.name} ${t}`),
      `${svKeys.localSecret(b.name)} v:tok-1 ${b.name} tok-1`,
      ...many.map((ref) => `${svKeys.localSecret(ref.name)} v:tok-1 ${ref.name} tok-1`),
    ];
    expect(listed.sort()).toEqual(expected.sort());
    for (const field of batches.flat()) {
      expect(field.raw).toBe(await redis.hget(field.key, field.field));
      expect(sv.describeSealed(field)).toEqual({ kid: envKid(masterKey), current: true });
    }
    // Nothing of the main namespace, nor of any other, is listed.
    expect(listed.some((l) => l.startsWith(`${prefix}:secret:`))).toBe(false);
  });

  it('yields nothing for an empty store', async () => {
    const empty = new LocalStore(redis, new RedisKeys(`${prefix}:empty`), envEnvelope(masterKey));
    expect(await collect(empty)).toEqual([]);
  });
});

describe('rewrap (rekey to a new primary key)', () => {
  const keyA = randomBytes(32);
  const keyB = randomBytes(32);
  const rkKeys = new RedisKeys(`${prefix}:rekey`);
  const onA = () => new LocalStore(redis, rkKeys, envEnvelope(keyA));
  const onB = () => new LocalStore(redis, rkKeys, envEnvelope(keyB));
  /** Keyturn started with B as KEYTURN_MASTER_KEY and A in KEYTURN_MASTER_KEY_PREVIOUS. */
  const moving = () =>
    new LocalStore(
      redis,
      rkKeys,
      new Envelope(
        keyringOf(new EnvKeyProvider(keyB), new EnvKeyProvider(keyA, 'KEYTURN_MASTER_KEY_PREVIOUS[0]')),
      ),
    );

  it('moves every value (v2 and v1) to the new primary in place: the new key alone then opens everything', async () => {
    const before = onA();
    const r1 = newRef('rk-1');
    const r2 = newRef('rk-legacy');
    const values = { 'tok-1': doc(), 'tok-2': doc(), 'tok-3': doc() };
    await before.putCurrent(r1, 'tok-1', values['tok-1']);
    await before.putCurrent(r1, 'tok-2', values['tok-2']);
    await before.putPending(r1, 'tok-3', values['tok-3']);
    // A value written before key providers: a v1 envelope, as the old store wrote it.
    const legacy = doc();
    await redis.hset(rkKeys.localSecret(r2.name), {
      stages: JSON.stringify({ current: 'tok-old' }),
      'v:tok-old': JSON.stringify({
        createdAt: '2026-01-01T00:00:00.000Z',
        sealed: sealV1(keyA, JSON.stringify(legacy), { secret: r2.name, version: 'tok-old' }),
      }),
    });
    expect((await before.read(r2, { stage: 'current' }))?.value).toEqual(legacy);
    const systemKey = await before.systemKey('approvals');
    systemKeys.push(Buffer.from(systemKey));

    const mover = moving();
    const fields = (await collect(mover)).flat();
    expect(fields).toHaveLength(5);
    for (const field of fields) {
      expect(mover.describeSealed(field)).toEqual({ kid: envKid(keyA), current: false });
      expect(await mover.rewrap(field)).toBe('rewrapped');
      const was = JSON.parse(field.raw) as { createdAt: string; sealed: SealedValue };
      const now = JSON.parse((await redis.hget(field.key, field.field)) as string) as typeof was;
      expect(now.createdAt).toBe(was.createdAt);
      expect(now.sealed.v).toBe(2);
      expect(now.sealed.kid).toBe(envKid(keyB));
      // Only the DEK's wrapping changed: the data, its nonce and tag are as they were.
      expect(now.sealed.data).toEqual(was.sealed.data);
    }
    // Done: a second pass finds everything current and changes nothing.
    const snapshot = await redisDump();
    for (const field of (await collect(mover)).flat()) {
      expect(mover.describeSealed(field)).toEqual({ kid: envKid(keyB), current: true });
      expect(await mover.rewrap(field)).toBe('current');
    }
    expect((await redisDump()).text).toBe(snapshot.text);

    const after = onB();
    for (const [id, value] of Object.entries(values))
      expect((await after.read(r1, { versionId: id }))?.value).toEqual(value);
    expect(await after.describe(r1)).toEqual({
      'tok-1': ['previous'],
      'tok-2': ['current'],
      'tok-3': ['pending'],
    });
    expect((await after.read(r2, { stage: 'current' }))?.value).toEqual(legacy);
    expect((await after.systemKey('approvals')).equals(systemKey)).toBe(true);
    // The old key alone no longer opens anything: the move is real.
    const err = await onA()
      .read(r1, { stage: 'current' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DecryptionError);
    expect((err as Error).message).toContain(envKid(keyB));
  });

  it("a value overwritten or removed between the read and the rewrap is 'changed', and the new value is untouched", async () => {
    const before = onA();
    const ref = newRef('rk-race');
    await before.putCurrent(ref, 'tok-1', doc());
    await before.putCurrent(ref, 'tok-2', doc());
    await before.putPending(ref, 'tok-p', doc());
    const mover = moving();
    const read = (await collect(mover)).flat().filter((f) => f.key === rkKeys.localSecret(ref.name));
    expect(read.map((f) => f.field).sort()).toEqual(['v:tok-1', 'v:tok-2', 'v:tok-p']);

    // Meanwhile a rotation writes tok-p again as current (sealed by the primary already), and the oldest version
    // loses its label and is deleted.
    const fresh = doc();
    await mover.putCurrent(ref, 'tok-p', fresh);
    const between = await redis.hgetall(rkKeys.localSecret(ref.name));
    expect(Object.keys(between).sort()).toEqual(['stages', 'v:tok-2', 'v:tok-p']);

    const outcome = Object.fromEntries(
      await Promise.all(read.map(async (f) => [f.field, await mover.rewrap(f)] as const)),
    );
    expect(outcome).toEqual({ 'v:tok-1': 'changed', 'v:tok-2': 'rewrapped', 'v:tok-p': 'changed' });
    const now = await redis.hgetall(rkKeys.localSecret(ref.name));
    // The overwrite is exactly what putCurrent wrote; the removed version was not brought back.
    expect(now['v:tok-p']).toBe(between['v:tok-p']);
    expect(now.stages).toBe(between.stages);
    expect(now).not.toHaveProperty('v:tok-1');
    expect((JSON.parse(now['v:tok-2']!) as { sealed: SealedValue }).sealed.kid).toBe(envKid(keyB));
    const after = onB();
    expect((await after.read(ref, { stage: 'current' }))?.value).toEqual(fresh);
    expect((await after.read(ref, { stage: 'previous' }))?.versionId).toBe('tok-2');
  });
});

describe('nothing readable reaches Redis', () => {
  it('no plaintext password, nor its base64/base64url/hex, appears in any key under the prefix', async () => {
    // A few more secrets, so that the scan does not depend on the order of the tests above.
    const ref = newRef('leak-scan');
    await store.putCurrent(ref, 'tok-1', doc());
    await store.putPending(ref, 'tok-2', doc());

    const needles = written.flatMap((pw) => [
      pw,
      Buffer.from(pw).toString('base64').replace(/=+$/, ''),
      Buffer.from(pw).toString('base64url').replace(/=+$/, ''),
      Buffer.from(pw).toString('hex'),
    ]);
    expect(written.length).toBeGreaterThan(20);

    const dump = await redisDump();
    // The scan actually saw the sealed values and the keyring (otherwise it would prove nothing).
    expect(dump.keys).toContain(hashKey(ref));
    expect(dump.keys).toContain(keys.keyring());
    expect(dump.text).toContain('"sealed"');
    expect(systemKeys.length).toBeGreaterThan(0);
    const text = dump.text;
    for (const needle of needles) expect(text.includes(needle), `found ${needle} in Redis`).toBe(false);
    for (const key of systemKeys)
      for (const needle of keyEncodings(key))
        expect(text.includes(needle), 'found a system key in Redis').toBe(false);
    // Nor the document's shape in clear.
    expect(text).not.toContain('"password"');
    expect(text).not.toContain('db.internal');
  });
});

describe('an unreachable Redis', () => {
  let dead: Redis;
  let deadStore: LocalStore;

  beforeAll(async () => {
    // A port that was just free: listen on 0, note the port, close it.
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
      });
    });
    dead = new Redis({
      host: '127.0.0.1',
      port,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      retryStrategy: () => null,
    });
    dead.on('error', () => {});
    deadStore = new LocalStore(dead, keys, envEnvelope(masterKey));
  });

  afterAll(() => {
    dead?.disconnect();
  });

  it('every operation fails with StoreUnavailableError, and the message carries no secret', async () => {
    const ref = newRef('unreachable');
    const value = doc();
    const operations: Array<[string, () => Promise<unknown>]> = [
      ['describe', () => deadStore.describe(ref)],
      ['read by stage', () => deadStore.read(ref, { stage: 'current' })],
      ['read by id', () => deadStore.read(ref, { versionId: 'tok-1' })],
      ['putPending', () => deadStore.putPending(ref, 'tok-1', value)],
      ['promote', () => deadStore.promote(ref, 'tok-1')],
      ['discardPending', () => deadStore.discardPending(ref, 'tok-1')],
      ['putCurrent', () => deadStore.putCurrent(ref, 'tok-1', value)],
      ['remove', () => deadStore.remove(ref)],
      ['ping', () => deadStore.ping()],
      ['systemKey', () => deadStore.systemKey('k')],
      ['sealedValues', () => collect(deadStore)],
    ];
    for (const [name, op] of operations) {
      const error = await op().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error, name).toBeInstanceOf(StoreUnavailableError);
      expect((error as Error).name).toBe('StoreUnavailableError');
      expect((error as Error).message).toMatch(/^Local store \(Redis\) failed to /);
      expect((error as Error).message).not.toContain(value.password);
    }
  });
});
