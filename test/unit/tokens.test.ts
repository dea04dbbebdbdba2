import { timingSafeEqual } from 'node:crypto';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { Authenticator } from '../../src/auth/authenticator.ts';
import { sha256Hex } from '../../src/crypto/tokens.ts';

// Spy on timingSafeEqual (calling through to the real one) to check the comparison is the constant-time one.
vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  return { ...actual, timingSafeEqual: vi.fn(actual.timingSafeEqual) };
});

const TOKEN = 'k3y7urn-admin-token-0123456789abcdefghijklmnop';

describe('sha256Hex', () => {
  it('matches the published SHA-256 test vectors', () => {
    expect(sha256Hex('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(sha256Hex('')).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  it('hashes the UTF-8 bytes of the text (not Latin-1 or UTF-16)', () => {
    expect(sha256Hex('é')).toBe('4a99557e4033c3539de2eb65472017cad5f9557f7a0625a09f1c3f6e2ba69c4c');
    expect(sha256Hex('🔑')).toBe('c5c75521402748f523eee2f15d74f10f38acbb134ebd026d5777958c3df862cb');
  });

  it('is 64 lowercase hex characters', () => {
    expect(sha256Hex(TOKEN)).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('Authenticator: static tokens in constant time', () => {
  const others = [
    'reader-token-0123456789abcdefghijklmnopqrstu',
    'operator-token-0123456789abcdefghijklmnop',
  ];
  const authenticator = new Authenticator({
    adminToken: TOKEN,
    tokens: {
      tokens: others.map((token, i) => ({ name: `t${i}`, sha256: sha256Hex(token), roles: ['reader'] })),
      certificates: [],
      jwt: [],
    } as never,
  });

  beforeEach(() => {
    vi.mocked(timingSafeEqual).mockClear();
  });

  it('accepts each token as its principal and refuses near misses', async () => {
    expect(
      await authenticator.authenticate({ authorization: `Bearer ${TOKEN}`, certificateSubject: undefined }),
    ).toMatchObject({ ok: true, principal: { name: 'admin' } });
    expect(
      await authenticator.authenticate({
        authorization: `Bearer ${others[1]}`,
        certificateSubject: undefined,
      }),
    ).toMatchObject({ ok: true, principal: { name: 't1' } });
    for (const near of [TOKEN.slice(0, -1), `${TOKEN}x`, TOKEN.toUpperCase(), sha256Hex(TOKEN)]) {
      expect(
        await authenticator.authenticate({ authorization: `Bearer ${near}`, certificateSubject: undefined }),
      ).toEqual({ ok: false, reason: 'unknown token' });
    }
  });

  it('compares 32-byte digests with timingSafeEqual against every entry, whichever matches and whatever the length', async () => {
    const spy = vi.mocked(timingSafeEqual);
    for (const presented of [TOKEN, others[1]!, 'x', 'y'.repeat(10_000)]) {
      spy.mockClear();
      await authenticator.authenticate({
        authorization: `Bearer ${presented}`,
        certificateSubject: undefined,
      });
      expect(spy).toHaveBeenCalledTimes(3);
      for (const [a, b] of spy.mock.calls) {
        expect((a as Buffer).length).toBe(32);
        expect((b as Buffer).length).toBe(32);
      }
    }
  });
});
