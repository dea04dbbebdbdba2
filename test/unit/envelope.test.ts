import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DecryptionError, Envelope, type SealedValue } from '../../src/crypto/envelope.ts';

const PLAINTEXT = 'correct-horse-battery-staple-Zx9Qw2';
const CONTEXT = 'cred/app:3f0c6a2e-version';

function clone(sealed: SealedValue): SealedValue {
  return structuredClone(sealed);
}

/** Flips one bit of the decoded bytes of a base64 part and re-encodes it (so the base64 stays canonical). */
function flipBit(part: string, byteIndex: number, bit: number): string {
  const bytes = Buffer.from(part, 'base64');
  const i = byteIndex < 0 ? bytes.length + byteIndex : byteIndex;
  bytes[i]! ^= 1 << bit;
  return bytes.toString('base64');
}

const PARTS = [
  ['dek', 0, 'DEK nonce'],
  ['dek', 1, 'sealed DEK'],
  ['dek', 2, 'DEK tag'],
  ['data', 0, 'data nonce'],
  ['data', 1, 'data ciphertext'],
  ['data', 2, 'data tag'],
] as const;

describe('Envelope', () => {
  it('round-trips values, including empty, unicode and long ones', () => {
    const env = new Envelope(randomBytes(32));
    for (const value of [
      PLAINTEXT,
      '',
      'pässwörd-🔑-パスワード',
      'x'.repeat(100_000),
      '{"password":"a\\"b"}',
    ]) {
      expect(env.decrypt(env.encrypt(value, CONTEXT), CONTEXT)).toBe(value);
    }
  });

  it('a new Envelope over the same key (a restart) opens what the old one sealed', () => {
    const key = randomBytes(32);
    const sealed = new Envelope(key).encrypt(PLAINTEXT, CONTEXT);
    expect(new Envelope(Buffer.from(key)).decrypt(sealed, CONTEXT)).toBe(PLAINTEXT);
  });

  it('keeps its own copy of the key: clearing the caller buffer does not break it', () => {
    const key = randomBytes(32);
    const env = new Envelope(key);
    const sealed = env.encrypt(PLAINTEXT, CONTEXT);
    key.fill(0);
    expect(env.decrypt(sealed, CONTEXT)).toBe(PLAINTEXT);
    expect(env.decrypt(env.encrypt('after', CONTEXT), CONTEXT)).toBe('after');
  });

  it('has the documented shape, with kid = first 8 bytes of SHA-256(KEK) in hex', () => {
    const key = randomBytes(32);
    const env = new Envelope(key);
    const sealed = env.encrypt(PLAINTEXT, CONTEXT);
    const kid = createHash('sha256').update(key).digest('hex').slice(0, 16);
    expect(env.kid).toBe(kid);
    expect(sealed.v).toBe(1);
    expect(sealed.kid).toBe(kid);
    expect(Buffer.from(sealed.dek[0], 'base64')).toHaveLength(12);
    expect(Buffer.from(sealed.dek[1], 'base64')).toHaveLength(32);
    expect(Buffer.from(sealed.dek[2], 'base64')).toHaveLength(16);
    expect(Buffer.from(sealed.data[0], 'base64')).toHaveLength(12);
    expect(Buffer.from(sealed.data[1], 'base64')).toHaveLength(Buffer.byteLength(PLAINTEXT));
    expect(Buffer.from(sealed.data[2], 'base64')).toHaveLength(16);
  });

  it('the sealed value contains no plaintext, in any common encoding', () => {
    const env = new Envelope(randomBytes(32));
    const json = JSON.stringify(env.encrypt(PLAINTEXT, CONTEXT));
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

  it('two encryptions of the same value differ: fresh nonces and a fresh DEK each time', () => {
    const env = new Envelope(randomBytes(32));
    const a = env.encrypt(PLAINTEXT, CONTEXT);
    const b = env.encrypt(PLAINTEXT, CONTEXT);
    expect(a.data[0]).not.toBe(b.data[0]);
    expect(a.dek[0]).not.toBe(b.dek[0]);
    expect(a.dek[1]).not.toBe(b.dek[1]);
    expect(a.data[1]).not.toBe(b.data[1]);
    // Different DEKs: a's DEK parts do not open b's data.
    const mixed = clone(b);
    mixed.dek = a.dek;
    expect(() => env.decrypt(mixed, CONTEXT)).toThrow(DecryptionError);
    const nonces = new Set(Array.from({ length: 200 }, () => env.encrypt('x', CONTEXT).data[0]));
    expect(nonces.size).toBe(200);
  });

  describe('a flipped bit in any of the six parts fails authentication', () => {
    const env = new Envelope(randomBytes(32));
    const sealed = env.encrypt(PLAINTEXT, CONTEXT);

    it.each(PARTS)('%s[%i] (%s)', (field, index) => {
      for (const [byteIndex, bit] of [
        [0, 0],
        [0, 7],
        [-1, 0],
        [-1, 7],
        [3, 4],
      ] as const) {
        const tampered = clone(sealed);
        tampered[field][index] = flipBit(tampered[field][index], byteIndex, bit);
        expect(tampered[field][index]).not.toBe(sealed[field][index]);
        expect(() => env.decrypt(tampered, CONTEXT)).toThrow(DecryptionError);
        expect(() => env.decrypt(tampered, CONTEXT)).toThrow(/failed authentication/);
      }
      // Untouched, it still opens.
      expect(env.decrypt(sealed, CONTEXT)).toBe(PLAINTEXT);
    });
  });

  it('a different context (additional data) fails: a value cannot be moved to another credential or version', () => {
    const env = new Envelope(randomBytes(32));
    const sealed = env.encrypt(PLAINTEXT, 'cred/app:v1');
    for (const other of ['cred/app:v2', 'cred/other:v1', '', 'cred/app:v1 ', 'CRED/APP:V1']) {
      expect(() => env.decrypt(sealed, other)).toThrow(DecryptionError);
      expect(() => env.decrypt(sealed, other)).toThrow(/moved from another credential or version/);
    }
    expect(env.decrypt(sealed, 'cred/app:v1')).toBe(PLAINTEXT);
  });

  it('a different master key fails with a message naming both key ids and the fix', () => {
    const writer = new Envelope(randomBytes(32));
    const reader = new Envelope(randomBytes(32));
    const sealed = writer.encrypt(PLAINTEXT, CONTEXT);
    let error: unknown;
    try {
      reader.decrypt(sealed, CONTEXT);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(DecryptionError);
    const message = (error as Error).message;
    expect((error as Error).name).toBe('DecryptionError');
    expect(message).toContain(writer.kid);
    expect(message).toContain(reader.kid);
    expect(message).toContain('KEYTURN_MASTER_KEY');
    expect(message).toMatch(/start Keyturn with the key that wrote the store/);
    expect(message).not.toContain(PLAINTEXT);
  });

  it('a forged kid does not help: a value sealed under another key still fails authentication', () => {
    const writer = new Envelope(randomBytes(32));
    const reader = new Envelope(randomBytes(32));
    const forged = clone(writer.encrypt(PLAINTEXT, CONTEXT));
    forged.kid = reader.kid;
    expect(() => reader.decrypt(forged, CONTEXT)).toThrow(DecryptionError);
    expect(() => reader.decrypt(forged, CONTEXT)).toThrow(/failed authentication/);
  });

  it('an unknown format version is refused', () => {
    const env = new Envelope(randomBytes(32));
    const sealed = { ...env.encrypt(PLAINTEXT, CONTEXT), v: 2 } as unknown as SealedValue;
    expect(() => env.decrypt(sealed, CONTEXT)).toThrow(DecryptionError);
    expect(() => env.decrypt(sealed, CONTEXT)).toThrow(/format 2/);
  });

  // Regression test (found by review, fixed): createDecipheriv is called without
  // { authTagLength: 16 } and the tag length is not checked, so Node accepts a GCM tag truncated to as little as
  // 4 bytes (it only prints DeprecationWarning DEP0182). A Redis writer can cut each tag to 4 bytes and forge a
  // value with ~2^32 tries instead of 2^128. A sealed value whose tag is not 16 bytes must be refused.
  it.each([
    ['dek', 4],
    ['dek', 12],
    ['data', 4],
    ['data', 8],
    ['data', 15],
  ] as const)('refuses a %s tag truncated to %i bytes', (field, bytes) => {
    const env = new Envelope(randomBytes(32));
    const sealed = env.encrypt(PLAINTEXT, CONTEXT);
    const truncated = clone(sealed);
    truncated[field][2] = Buffer.from(sealed[field][2], 'base64').subarray(0, bytes).toString('base64');
    expect(() => env.decrypt(truncated, CONTEXT)).toThrow(DecryptionError);
  });

  it.each([0, 16, 31, 33, 64])('the constructor rejects a %i-byte key', (n) => {
    expect(() => new Envelope(Buffer.alloc(n, 1))).toThrow(/32 bytes/);
  });

  it('different keys have different ids', () => {
    expect(new Envelope(Buffer.alloc(32, 1)).kid).not.toBe(new Envelope(Buffer.alloc(32, 2)).kid);
  });
});
