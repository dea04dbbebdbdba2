// The encrypted local store against a real Redis: the staging protocol (pending → current → previous, at most
// three versions), idempotency of every step, that nothing readable reaches Redis, that sealed values are bound
// to their secret and version, and that an unreachable Redis is reported as StoreUnavailableError.
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DecryptionError, Envelope } from '../../src/crypto/envelope.ts';
import { generatePassword } from '../../src/crypto/password.ts';
import { RedisKeys } from '../../src/registry/keys.ts';
import { LocalStore } from '../../src/stores/local-store.ts';
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

beforeAll(() => {
  redis = new Redis(REDIS_URL);
  store = new LocalStore(redis, keys, new Envelope(masterKey));
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
    await expect(store.read(b, { versionId: 'tok-1' })).rejects.toThrow(
      /moved from another credential or version/,
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
    const otherEnvelope = new Envelope(randomBytes(32));
    const other = new LocalStore(redis, keys, otherEnvelope);
    const error = await other.read(ref, { stage: 'current' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DecryptionError);
    expect((error as Error).message).toContain(new Envelope(masterKey).kid);
    expect((error as Error).message).toContain(otherEnvelope.kid);
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

    // The scan actually saw the sealed values (otherwise it would prove nothing).
    expect(seenKeys).toContain(hashKey(ref));
    expect(dump.some((s) => s.includes('"sealed"'))).toBe(true);
    const text = dump.join('\n');
    for (const needle of needles) expect(text.includes(needle), `found ${needle} in Redis`).toBe(false);
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
    deadStore = new LocalStore(dead, keys, new Envelope(masterKey));
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
