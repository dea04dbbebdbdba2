// The local store's envelope (crypto/envelope.ts) with the env key provider (keys/env-provider.ts): v2 values
// (the DEK wrapped by a provider and bound to the value's place), v1 values of stores written before key providers
// (read, never written, rewrapped to v2), several keys in one keyring (KEYTURN_MASTER_KEY_PREVIOUS), a rewrap to
// another primary key, and the DEK cache seen from the envelope (a second open makes no provider call).
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.ts';
import { DekCache } from '../../src/crypto/dek-cache.ts';
import {
  DecryptionError,
  Envelope,
  type KeyProvider,
  KeyProviderError,
  type SealContext,
  type SealedValue,
} from '../../src/crypto/envelope.ts';
import { createKeyring, EnvKeyProvider, keyringOf, masterKeyId } from '../../src/keys/index.ts';

const PLAINTEXT = 'correct-horse-battery-staple-Zx9Qw2';
const CONTEXT: SealContext = { secret: 'cred/app', version: '3f0c6a2e-version' };

type V1 = Extract<SealedValue, { v: 1 }>;
type V2 = Extract<SealedValue, { v: 2 }>;

const envelopeOf = (key: Buffer, cache?: DekCache) => new Envelope(keyringOf(new EnvKeyProvider(key)), cache);
const kidOfKey = (key: Buffer) => `env:${createHash('sha256').update(key).digest('hex').slice(0, 16)}`;

async function sealV2(env: Envelope, plaintext: string, context = CONTEXT): Promise<V2> {
  const sealed = await env.encrypt(plaintext, context);
  if (sealed.v !== 2) throw new Error(`encrypt wrote format ${sealed.v}, not 2`);
  return sealed;
}

/** What a rejected promise rejected with (fails the test when it resolves). */
async function rejection(p: Promise<unknown>): Promise<Error> {
  return p.then(
    (value) => {
      throw new Error(`expected a rejection, got ${JSON.stringify(value)}`);
    },
    (err: unknown) => err as Error,
  );
}

/** AES-256-GCM as the code before key providers called it (node:crypto directly, not src's helpers). */
function gcm(key: Buffer, plaintext: Buffer, aad: string): [string, string, string] {
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 });
  cipher.setAAD(Buffer.from(aad));
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return [nonce.toString('base64'), ct.toString('base64'), cipher.getAuthTag().toString('base64')];
}

/**
 * A v1 value, made exactly as the code before key providers made it: kid = the first 16 hex digits of SHA-256(KEK),
 * the DEK sealed under the KEK with AAD `keyturn:dek:<kid>` (no context), the data under the DEK with AAD
 * `keyturn:v1:<secret>:<version>` (the old context string was `<name>:<version>`).
 */
function sealV1(kek: Buffer, plaintext: string, context = CONTEXT): V1 {
  const kid = createHash('sha256').update(kek).digest('hex').slice(0, 16);
  const dek = randomBytes(32);
  return {
    v: 1,
    kid,
    dek: gcm(kek, dek, `keyturn:dek:${kid}`),
    data: gcm(dek, Buffer.from(plaintext), `keyturn:v1:${context.secret}:${context.version}`),
  };
}

/** Flips one bit of the decoded bytes of a base64 part and re-encodes it (so the base64 stays canonical). */
function flipBit(part: string, byteIndex: number, bit: number): string {
  const bytes = Buffer.from(part, 'base64');
  const i = byteIndex < 0 ? bytes.length + byteIndex : byteIndex;
  bytes[i]! ^= 1 << bit;
  return bytes.toString('base64');
}

/** The env provider's wrapped DEK is "<nonce>.<ct>.<tag>", each base64. */
const dekParts = (sealed: V2) => sealed.dek.split('.') as [string, string, string];

function withDekPart(sealed: V2, index: number, value: string): V2 {
  const parts = dekParts(sealed);
  parts[index] = value;
  return { ...structuredClone(sealed), dek: parts.join('.') };
}

function withDataPart(sealed: SealedValue, index: number, value: string): SealedValue {
  const copy = structuredClone(sealed);
  copy.data[index] = value;
  return copy;
}

/**
 * A provider that delegates to `inner` and records its calls and the buffers it handed out: the envelope's use of
 * the provider is what these tests observe (how often it unwraps, whether it zeroes the DEKs it was given).
 */
function counting(inner: KeyProvider) {
  const handed: Buffer[] = [];
  const calls = { generate: 0, unwrap: 0, wrap: 0 };
  let failUnwrap: Error | undefined;
  const provider: KeyProvider = {
    name: inner.name,
    kid: inner.kid,
    canUnwrap: (kid) => inner.canUnwrap(kid),
    generate: async (context) => {
      calls.generate++;
      const out = await inner.generate(context);
      handed.push(out.plaintext);
      return out;
    },
    unwrap: async (kid, wrapped, context) => {
      calls.unwrap++;
      if (failUnwrap) throw failUnwrap;
      const dek = await inner.unwrap(kid, wrapped, context);
      handed.push(dek);
      return dek;
    },
    wrap: async (plaintext, context) => {
      calls.wrap++;
      return inner.wrap(plaintext, context);
    },
    isCurrent: (wrapped) => inner.isCurrent(wrapped),
    describe: () => inner.describe(),
    check: () => inner.check(),
    close: () => inner.close(),
  };
  return {
    provider,
    calls,
    handed,
    failUnwrapWith(err: Error | undefined) {
      failUnwrap = err;
    },
  };
}

const zeroed = (b: Buffer) => b.every((byte) => byte === 0);

describe('Envelope (v2, env key provider)', () => {
  it('round-trips values, including empty, unicode and long ones, and Buffers', async () => {
    const env = envelopeOf(randomBytes(32));
    for (const value of [
      PLAINTEXT,
      '',
      'pässwörd-🔑-パスワード',
      'x'.repeat(100_000),
      '{"password":"a\\"b"}',
    ]) {
      expect(await env.decrypt(await env.encrypt(value, CONTEXT), CONTEXT)).toBe(value);
    }
    const bytes = randomBytes(32);
    const opened = await env.decryptBytes(await env.encrypt(bytes, CONTEXT), CONTEXT);
    expect(opened.equals(bytes)).toBe(true);
  });

  it('a new Envelope over the same key (a restart) opens what the old one sealed', async () => {
    const key = randomBytes(32);
    const sealed = await envelopeOf(key).encrypt(PLAINTEXT, CONTEXT);
    expect(await envelopeOf(Buffer.from(key)).decrypt(sealed, CONTEXT)).toBe(PLAINTEXT);
  });

  it('the provider keeps its own copy of the key: clearing the caller buffer does not break it', async () => {
    const key = randomBytes(32);
    const env = envelopeOf(key);
    const sealed = await env.encrypt(PLAINTEXT, CONTEXT);
    key.fill(0);
    expect(await env.decrypt(sealed, CONTEXT)).toBe(PLAINTEXT);
    expect(await env.decrypt(await env.encrypt('after', CONTEXT), CONTEXT)).toBe('after');
  });

  it('has the documented v2 shape: kid "env:<first 16 hex of SHA-256(KEK)>", dek "<nonce>.<ct>.<tag>"', async () => {
    const key = randomBytes(32);
    const env = envelopeOf(key);
    const sealed = await sealV2(env, PLAINTEXT);
    const hex = createHash('sha256').update(key).digest('hex').slice(0, 16);
    expect(masterKeyId(key)).toBe(hex);
    expect(env.primary.kid).toBe(`env:${hex}`);
    expect(sealed.kid).toBe(`env:${hex}`);
    expect(sealed.kid).toMatch(/^env:[0-9a-f]{16}$/);
    expect(Object.keys(sealed).sort()).toEqual(['data', 'dek', 'kid', 'v']);
    expect(typeof sealed.dek).toBe('string');
    const [nonce, ct, tag] = dekParts(sealed);
    expect(sealed.dek.split('.')).toHaveLength(3);
    expect(Buffer.from(nonce, 'base64')).toHaveLength(12);
    expect(Buffer.from(ct, 'base64')).toHaveLength(32);
    expect(Buffer.from(tag, 'base64')).toHaveLength(16);
    expect(sealed.data).toHaveLength(3);
    expect(Buffer.from(sealed.data[0], 'base64')).toHaveLength(12);
    expect(Buffer.from(sealed.data[1], 'base64')).toHaveLength(Buffer.byteLength(PLAINTEXT));
    expect(Buffer.from(sealed.data[2], 'base64')).toHaveLength(16);
    expect(env.isCurrent(sealed)).toBe(true);
  });

  it('the sealed value contains no plaintext, in any common encoding', async () => {
    const env = envelopeOf(randomBytes(32));
    const json = JSON.stringify(await env.encrypt(PLAINTEXT, CONTEXT));
    const plain = Buffer.from(PLAINTEXT);
    for (const encoded of [
      PLAINTEXT,
      PLAINTEXT.slice(0, 12),
      plain.toString('base64'),
      plain.toString('base64').slice(0, 16),
      plain.toString('base64url'),
      plain.toString('hex'),
    ]) {
      expect(json).not.toContain(encoded);
    }
    // The decoded ciphertext bytes differ from the plaintext bytes too (no identity "encryption").
    const sealed = JSON.parse(json) as SealedValue;
    expect(Buffer.from(sealed.data[1], 'base64').equals(plain)).toBe(false);
  });

  it('two encryptions of the same value differ: fresh nonces and a fresh DEK each time', async () => {
    const env = envelopeOf(randomBytes(32));
    const a = await sealV2(env, PLAINTEXT);
    const b = await sealV2(env, PLAINTEXT);
    expect(a.data[0]).not.toBe(b.data[0]);
    expect(a.data[1]).not.toBe(b.data[1]);
    expect(dekParts(a)[0]).not.toBe(dekParts(b)[0]);
    expect(dekParts(a)[1]).not.toBe(dekParts(b)[1]);
    // Different DEKs: a's wrapped DEK (valid for this context) does not open b's data.
    const mixed: V2 = { ...structuredClone(b), dek: a.dek };
    const err = await rejection(env.decrypt(mixed, CONTEXT));
    expect(err).toBeInstanceOf(DecryptionError);
    expect(err.message).toMatch(/failed authentication/);
    const sealed = await Promise.all(Array.from({ length: 200 }, () => sealV2(env, 'x')));
    expect(new Set(sealed.map((s) => s.data[0])).size).toBe(200);
    expect(new Set(sealed.map((s) => dekParts(s)[0])).size).toBe(200);
  });

  it('encrypt and decrypt zero the DEKs the provider handed them', async () => {
    const spy = counting(new EnvKeyProvider(randomBytes(32)));
    const env = new Envelope(keyringOf(spy.provider));
    const sealed = await env.encrypt(PLAINTEXT, CONTEXT);
    expect(spy.handed).toHaveLength(1);
    expect(zeroed(spy.handed[0]!)).toBe(true);
    expect(await env.decrypt(sealed, CONTEXT)).toBe(PLAINTEXT);
    expect(spy.handed).toHaveLength(2);
    expect(zeroed(spy.handed[1]!)).toBe(true);
    // Also when the data fails to open.
    const tampered = withDataPart(sealed, 1, flipBit(sealed.data[1], 0, 0));
    await expect(env.decrypt(tampered, CONTEXT)).rejects.toBeInstanceOf(DecryptionError);
    expect(spy.handed).toHaveLength(3);
    expect(zeroed(spy.handed[2]!)).toBe(true);
  });

  describe('a flipped bit in any of the six parts fails authentication', () => {
    const PARTS = [
      ['dek', 0, 'DEK nonce'],
      ['dek', 1, 'wrapped DEK'],
      ['dek', 2, 'DEK tag'],
      ['data', 0, 'data nonce'],
      ['data', 1, 'data ciphertext'],
      ['data', 2, 'data tag'],
    ] as const;

    it.each(PARTS)('%s[%i] (%s)', async (field, index) => {
      const env = envelopeOf(randomBytes(32));
      const sealed = await sealV2(env, PLAINTEXT);
      for (const [byteIndex, bit] of [
        [0, 0],
        [0, 7],
        [-1, 0],
        [-1, 7],
        [3, 4],
      ] as const) {
        const tampered =
          field === 'dek'
            ? withDekPart(sealed, index, flipBit(dekParts(sealed)[index], byteIndex, bit))
            : withDataPart(sealed, index, flipBit(sealed.data[index], byteIndex, bit));
        expect(JSON.stringify(tampered)).not.toBe(JSON.stringify(sealed));
        const err = await rejection(env.decrypt(tampered, CONTEXT));
        expect(err).toBeInstanceOf(DecryptionError);
        expect(err.message).toMatch(/failed authentication/);
      }
      // Untouched, it still opens.
      expect(await env.decrypt(sealed, CONTEXT)).toBe(PLAINTEXT);
    });
  });

  it('a different context fails: a value cannot be moved to another credential or version', async () => {
    const env = envelopeOf(randomBytes(32));
    const here: SealContext = { secret: 'cred/app', version: 'v1' };
    const sealed = await env.encrypt(PLAINTEXT, here);
    for (const other of [
      { secret: 'cred/app', version: 'v2' },
      { secret: 'cred/other', version: 'v1' },
      { secret: '', version: '' },
      { secret: 'cred/app ', version: 'v1' },
      { secret: 'CRED/APP', version: 'V1' },
      { secret: 'keyring/app', version: 'v1' },
    ]) {
      const err = await rejection(env.decrypt(sealed, other));
      expect(err, JSON.stringify(other)).toBeInstanceOf(DecryptionError);
      expect(err.message).toMatch(/failed authentication/);
      expect(err.message).toMatch(/moved from another/);
    }
    expect(await env.decrypt(sealed, here)).toBe(PLAINTEXT);
  });

  it("the wrapped DEK is bound to its value: moved into another value's place it does not unwrap", async () => {
    const provider = new EnvKeyProvider(randomBytes(32));
    const env = new Envelope(keyringOf(provider));
    const a: SealContext = { secret: 'cred/a', version: 'v1' };
    const b: SealContext = { secret: 'cred/b', version: 'v1' };
    const sealedA = await sealV2(env, 'value of a', a);
    const sealedB = await sealV2(env, 'value of b', b);
    // The provider itself refuses A's wrapped DEK for B's context (not only the data's AAD).
    expect(await provider.unwrap(provider.kid, sealedA.dek, a)).toHaveLength(32);
    const unwrapErr = await rejection(provider.unwrap(provider.kid, sealedA.dek, b));
    expect(unwrapErr).toBeInstanceOf(DecryptionError);
    expect(unwrapErr.message).toMatch(/moved from another value/);
    // A's DEK and data copied over B: refused in B's place, whole or mixed with B's parts.
    for (const moved of [
      { ...sealedA },
      { ...sealedB, dek: sealedA.dek },
      { ...sealedA, data: sealedB.data },
    ] as V2[]) {
      await expect(env.decrypt(moved, b)).rejects.toBeInstanceOf(DecryptionError);
    }
    expect(await env.decrypt(sealedA, a)).toBe('value of a');
    expect(await env.decrypt(sealedB, b)).toBe('value of b');
  });

  it('a value whose kid no configured provider holds fails, naming the kid, the configured kids and the fix', async () => {
    const writerKey = randomBytes(32);
    const readerKey = randomBytes(32);
    const otherKey = randomBytes(32);
    const sealed = await envelopeOf(writerKey).encrypt(PLAINTEXT, CONTEXT);
    const reader = new Envelope(
      keyringOf(
        new EnvKeyProvider(readerKey),
        new EnvKeyProvider(otherKey, 'KEYTURN_MASTER_KEY_PREVIOUS[0]'),
      ),
    );
    const err = await rejection(reader.decrypt(sealed, CONTEXT));
    expect(err).toBeInstanceOf(DecryptionError);
    expect(err.name).toBe('DecryptionError');
    expect(err.message).toContain(kidOfKey(writerKey));
    expect(err.message).toContain(kidOfKey(readerKey));
    expect(err.message).toContain(kidOfKey(otherKey));
    expect(err.message).toContain('KEYTURN_MASTER_KEY_PREVIOUS');
    expect(err.message).toContain('keyturn rekey');
    expect(err.message).not.toContain(PLAINTEXT);
    // A provider of another kind, too: a kid the keyring has never heard of.
    const foreign = { ...(sealed as V2), kid: 'aws-kms:arn:aws:kms:eu-west-1:123456789012:key/x' };
    const foreignErr = await rejection(reader.decrypt(foreign, CONTEXT));
    expect(foreignErr).toBeInstanceOf(DecryptionError);
    expect(foreignErr.message).toContain('aws-kms:arn:aws:kms:eu-west-1:123456789012:key/x');
  });

  it('a forged kid does not help: a value sealed under another key still fails authentication', async () => {
    const reader = envelopeOf(randomBytes(32));
    const forged = { ...(await sealV2(envelopeOf(randomBytes(32)), PLAINTEXT)), kid: reader.primary.kid };
    const err = await rejection(reader.decrypt(forged, CONTEXT));
    expect(err).toBeInstanceOf(DecryptionError);
    expect(err.message).toMatch(/failed authentication/);
    // The same for a v1 value claiming the reader's key.
    const forgedV1 = { ...sealV1(randomBytes(32), PLAINTEXT), kid: reader.primary.kid.slice('env:'.length) };
    await expect(reader.decrypt(forgedV1, CONTEXT)).rejects.toThrow(/failed authentication/);
  });

  it.each([0, 3, '2', null])('an unknown format version (%s) is refused', async (v) => {
    const env = envelopeOf(randomBytes(32));
    const sealed = { ...(await env.encrypt(PLAINTEXT, CONTEXT)), v } as unknown as SealedValue;
    const err = await rejection(env.decrypt(sealed, CONTEXT));
    expect(err).toBeInstanceOf(DecryptionError);
    expect(err.message).toContain(`format ${String(v)}`);
  });

  // Regression guard (found by review of v1, fixed): Node accepts a GCM tag truncated to 4 bytes unless told the
  // length, which would make forging a value ~2^32 tries instead of 2^128. A tag that is not 16 bytes is refused, in
  // the wrapped DEK (the env provider's open) as in the data (the envelope's).
  it.each([
    ['dek', 4],
    ['dek', 12],
    ['data', 4],
    ['data', 8],
    ['data', 15],
  ] as const)('refuses a %s tag truncated to %i bytes', async (field, bytes) => {
    const env = envelopeOf(randomBytes(32));
    const sealed = await sealV2(env, PLAINTEXT);
    const cut = (tag: string) => Buffer.from(tag, 'base64').subarray(0, bytes).toString('base64');
    const truncated =
      field === 'dek'
        ? withDekPart(sealed, 2, cut(dekParts(sealed)[2]))
        : withDataPart(sealed, 2, cut(sealed.data[2]));
    await expect(env.decrypt(truncated, CONTEXT)).rejects.toBeInstanceOf(DecryptionError);
    // The same truncation of a v1 value.
    const v1Env = envelopeOf(Buffer.alloc(32, 7));
    const v1 = structuredClone(sealV1(Buffer.alloc(32, 7), PLAINTEXT));
    v1[field][2] = cut(v1[field][2]);
    await expect(v1Env.decrypt(v1, CONTEXT)).rejects.toBeInstanceOf(DecryptionError);
  });

  it('a malformed wrapped DEK is a DecryptionError', async () => {
    const env = envelopeOf(randomBytes(32));
    const sealed = await sealV2(env, PLAINTEXT);
    for (const dek of ['', 'abc', `${sealed.dek}.x`, dekParts(sealed).slice(0, 2).join('.')]) {
      await expect(env.decrypt({ ...sealed, dek }, CONTEXT)).rejects.toBeInstanceOf(DecryptionError);
    }
  });

  it('a provider that cannot answer is a KeyProviderError, not a DecryptionError (the value is intact)', async () => {
    const spy = counting(new EnvKeyProvider(randomBytes(32)));
    const env = new Envelope(keyringOf(spy.provider));
    const sealed = await env.encrypt(PLAINTEXT, CONTEXT);
    spy.failUnwrapWith(new KeyProviderError('unavailable', 'the provider is down'));
    const err = await rejection(env.decrypt(sealed, CONTEXT));
    expect(err).toBeInstanceOf(KeyProviderError);
    expect(err).not.toBeInstanceOf(DecryptionError);
    spy.failUnwrapWith(undefined);
    expect(await env.decrypt(sealed, CONTEXT)).toBe(PLAINTEXT);
  });

  it.each([0, 16, 31, 33, 64])('the env provider rejects a %i-byte key', (n) => {
    expect(() => new EnvKeyProvider(Buffer.alloc(n, 1))).toThrow(/32 bytes/);
  });

  it('different keys have different kids', () => {
    expect(new EnvKeyProvider(Buffer.alloc(32, 1)).kid).not.toBe(new EnvKeyProvider(Buffer.alloc(32, 2)).kid);
  });
});

describe('v1 values (written before key providers)', () => {
  it('still open, are not current, and are bound to their place as before', async () => {
    const key = randomBytes(32);
    const env = envelopeOf(key);
    const v1 = sealV1(key, PLAINTEXT);
    expect(await env.decrypt(v1, CONTEXT)).toBe(PLAINTEXT);
    expect(env.isCurrent(v1)).toBe(false);
    await expect(env.decrypt(v1, { ...CONTEXT, version: 'other' })).rejects.toBeInstanceOf(DecryptionError);
    for (const [field, index] of [
      ['dek', 1],
      ['dek', 2],
      ['data', 1],
    ] as const) {
      const tampered = structuredClone(v1);
      tampered[field][index] = flipBit(tampered[field][index], 0, 0);
      await expect(env.decrypt(tampered, CONTEXT)).rejects.toBeInstanceOf(DecryptionError);
    }
  });

  it('rewrap turns one into a v2 value that opens, with the data parts unchanged', async () => {
    const key = randomBytes(32);
    const env = envelopeOf(key);
    const v1 = sealV1(key, PLAINTEXT);
    const rewrapped = await env.rewrap(v1, CONTEXT);
    expect(rewrapped).not.toBeNull();
    const v2 = rewrapped as V2;
    expect(v2.v).toBe(2);
    expect(v2.kid).toBe(kidOfKey(key));
    expect(v2.data).toEqual(v1.data);
    expect(v2.dek.split('.')).toHaveLength(3);
    expect(env.isCurrent(v2)).toBe(true);
    expect(await env.decrypt(v2, CONTEXT)).toBe(PLAINTEXT);
    // Now bound to its place like any v2 value: its DEK does not unwrap elsewhere.
    await expect(env.decrypt(v2, { ...CONTEXT, secret: 'cred/other' })).rejects.toBeInstanceOf(
      DecryptionError,
    );
    expect(await env.rewrap(v2, CONTEXT)).toBeNull();
  });

  it('a v1 value of a previous key opens through a keyring that still holds it, and rewraps to the primary', async () => {
    const oldKey = randomBytes(32);
    const newKey = randomBytes(32);
    const env = new Envelope(
      keyringOf(new EnvKeyProvider(newKey), new EnvKeyProvider(oldKey, 'KEYTURN_MASTER_KEY_PREVIOUS[0]')),
    );
    const v1 = sealV1(oldKey, PLAINTEXT);
    expect(await env.decrypt(v1, CONTEXT)).toBe(PLAINTEXT);
    const v2 = (await env.rewrap(v1, CONTEXT)) as V2;
    expect(v2.kid).toBe(kidOfKey(newKey));
    expect(v2.data).toEqual(v1.data);
    expect(await envelopeOf(newKey).decrypt(v2, CONTEXT)).toBe(PLAINTEXT);
  });
});

describe('rewrap', () => {
  it('returns null for a value that is current', async () => {
    const spy = counting(new EnvKeyProvider(randomBytes(32)));
    const env = new Envelope(keyringOf(spy.provider));
    const sealed = await env.encrypt(PLAINTEXT, CONTEXT);
    expect(await env.rewrap(sealed, CONTEXT)).toBeNull();
    // Nothing was unwrapped or wrapped to find that out.
    expect(spy.calls.unwrap).toBe(0);
    expect(spy.calls.wrap).toBe(0);
  });

  it('moves a value to a new primary: the result opens with a keyring holding only the new key', async () => {
    const oldKey = randomBytes(32);
    const newKey = randomBytes(32);
    const sealed = await sealV2(envelopeOf(oldKey), PLAINTEXT);
    const moving = new Envelope(keyringOf(new EnvKeyProvider(newKey), new EnvKeyProvider(oldKey)));
    expect(moving.isCurrent(sealed)).toBe(false);
    expect(await moving.decrypt(sealed, CONTEXT)).toBe(PLAINTEXT);
    const moved = (await moving.rewrap(sealed, CONTEXT)) as V2;
    expect(moved).not.toBeNull();
    expect(moved.v).toBe(2);
    expect(moved.kid).toBe(kidOfKey(newKey));
    expect(moved.data).toEqual(sealed.data);
    expect(moved.dek).not.toBe(sealed.dek);
    expect(moving.isCurrent(moved)).toBe(true);
    expect(await moving.rewrap(moved, CONTEXT)).toBeNull();
    expect(await envelopeOf(newKey).decrypt(moved, CONTEXT)).toBe(PLAINTEXT);
    // The old key alone no longer opens it (the move is real), and the moved DEK keeps its binding.
    await expect(envelopeOf(oldKey).decrypt(moved, CONTEXT)).rejects.toThrow(
      /no configured key provider holds/,
    );
    await expect(envelopeOf(newKey).decrypt(moved, { ...CONTEXT, version: 'x' })).rejects.toBeInstanceOf(
      DecryptionError,
    );
  });

  it('refuses to rewrap a value whose data does not open (it would store a value that never opens)', async () => {
    const oldKey = randomBytes(32);
    const sealed = await sealV2(envelopeOf(oldKey), PLAINTEXT);
    const spy = counting(new EnvKeyProvider(randomBytes(32)));
    const moving = new Envelope(keyringOf(spy.provider, new EnvKeyProvider(oldKey)));
    const tampered = withDataPart(sealed, 1, flipBit(sealed.data[1], 0, 0));
    await expect(moving.rewrap(tampered, CONTEXT)).rejects.toBeInstanceOf(DecryptionError);
    await expect(moving.rewrap(sealed, { ...CONTEXT, version: 'elsewhere' })).rejects.toBeInstanceOf(
      DecryptionError,
    );
    expect(spy.calls.wrap).toBe(0);
  });
});

describe('a keyring of KEYTURN_MASTER_KEY_PREVIOUS readers', () => {
  it('opens the values of every previous key and seals with the primary (from the configuration)', async () => {
    const [current, prev0, prev1, unknown] = [
      randomBytes(32),
      randomBytes(32),
      randomBytes(32),
      randomBytes(32),
    ];
    const config = loadConfig({
      KEYTURN_MASTER_KEY: current.toString('base64'),
      KEYTURN_MASTER_KEY_PREVIOUS: `${prev0.toString('base64')}, ${prev1.toString('base64')}`,
    });
    const keyring = createKeyring({ ...config.kek, masterKey: config.masterKey!, timeoutMs: 1000 }, {});
    expect(keyring.primary.kid).toBe(kidOfKey(current));
    expect(keyring.all.map((p) => p.kid)).toEqual([kidOfKey(current), kidOfKey(prev0), kidOfKey(prev1)]);
    const env = new Envelope(keyring);

    const fromPrev0 = await envelopeOf(prev0).encrypt('sealed under prev0', CONTEXT);
    const fromPrev1 = sealV1(prev1, 'sealed under prev1 (v1)');
    expect(await env.decrypt(fromPrev0, CONTEXT)).toBe('sealed under prev0');
    expect(await env.decrypt(fromPrev1, CONTEXT)).toBe('sealed under prev1 (v1)');
    expect(env.isCurrent(fromPrev0)).toBe(false);
    expect(env.isCurrent(fromPrev1)).toBe(false);

    const fresh = await sealV2(env, PLAINTEXT);
    expect(fresh.kid).toBe(kidOfKey(current));
    expect(await envelopeOf(current).decrypt(fresh, CONTEXT)).toBe(PLAINTEXT);

    const stranger = await envelopeOf(unknown).encrypt(PLAINTEXT, CONTEXT);
    const err = await rejection(env.decrypt(stranger, CONTEXT));
    expect(err).toBeInstanceOf(DecryptionError);
    expect(err.message).toContain(kidOfKey(unknown));
  });
});

describe('Envelope with a DekCache', () => {
  const clock = () => ({ now: () => 1_000_000 });

  it('a second decrypt of the same value calls the provider once; another value is its own unwrap', async () => {
    const spy = counting(new EnvKeyProvider(randomBytes(32)));
    const cache = new DekCache({ ttlMs: 60_000, maxEntries: 100, clock: clock(), sweepEveryMs: 0 });
    const env = new Envelope(keyringOf(spy.provider), cache);
    const a = await env.encrypt('value a', CONTEXT);
    const b = await env.encrypt('value b', { ...CONTEXT, version: 'v2' });
    expect(await env.decrypt(a, CONTEXT)).toBe('value a');
    expect(await env.decrypt(a, CONTEXT)).toBe('value a');
    expect(spy.calls.unwrap).toBe(1);
    expect(await env.decrypt(b, { ...CONTEXT, version: 'v2' })).toBe('value b');
    expect(spy.calls.unwrap).toBe(2);
    expect(cache.misses).toBe(2);
    // Concurrent opens of one value share one unwrap too.
    const c = await env.encrypt('value c', { ...CONTEXT, version: 'v3' });
    expect(await Promise.all([1, 2, 3].map(() => env.decrypt(c, { ...CONTEXT, version: 'v3' })))).toEqual([
      'value c',
      'value c',
      'value c',
    ]);
    expect(spy.calls.unwrap).toBe(3);
    cache.close();
  });

  it('a hit does not bypass authentication: tampered data, another place or a tampered DEK still fail', async () => {
    const spy = counting(new EnvKeyProvider(randomBytes(32)));
    const cache = new DekCache({ ttlMs: 60_000, maxEntries: 100, clock: clock(), sweepEveryMs: 0 });
    const env = new Envelope(keyringOf(spy.provider), cache);
    const sealed = await sealV2(env, PLAINTEXT);
    expect(await env.decrypt(sealed, CONTEXT)).toBe(PLAINTEXT);
    await expect(
      env.decrypt(withDataPart(sealed, 1, flipBit(sealed.data[1], 0, 0)), CONTEXT),
    ).rejects.toBeInstanceOf(DecryptionError);
    await expect(env.decrypt(sealed, { ...CONTEXT, version: 'moved' })).rejects.toBeInstanceOf(
      DecryptionError,
    );
    const badDek = withDekPart(sealed, 1, flipBit(dekParts(sealed)[1], 0, 0));
    await expect(env.decrypt(badDek, CONTEXT)).rejects.toBeInstanceOf(DecryptionError);
    // Each of the last two was a miss (another context, another wrapped form), so the provider judged it.
    expect(spy.calls.unwrap).toBe(3);
    cache.close();
  });
});
