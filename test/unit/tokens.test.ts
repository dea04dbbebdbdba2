import { timingSafeEqual } from 'node:crypto';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { sha256Hex, tokenMatchesDigest } from '../../src/crypto/tokens.ts';

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

describe('tokenMatchesDigest', () => {
  const digest = sha256Hex(TOKEN);

  beforeEach(() => {
    vi.mocked(timingSafeEqual).mockClear();
  });

  it('accepts the token whose digest it is', () => {
    expect(tokenMatchesDigest(TOKEN, digest)).toBe(true);
    expect(
      tokenMatchesDigest('abc', 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'),
    ).toBe(true);
  });

  it('accepts an upper-case hex digest', () => {
    expect(tokenMatchesDigest(TOKEN, digest.toUpperCase())).toBe(true);
  });

  it.each([
    ['a different token', 'another-token-0123456789abcdefghijklmnopqrs'],
    ['a prefix of the token', TOKEN.slice(0, -1)],
    ['the token with one more character', `${TOKEN}x`],
    ['the token with a different case', TOKEN.toUpperCase()],
    ['the token with surrounding spaces', ` ${TOKEN} `],
    ['the empty string', ''],
    ['the digest itself', digest],
  ])('refuses %s', (_what, presented) => {
    expect(tokenMatchesDigest(presented, digest)).toBe(false);
  });

  it.each([
    ['empty', ''],
    ['not hex', 'z'.repeat(64)],
    ['too short', digest.slice(0, 62)],
    ['odd length', digest.slice(0, 63)],
    ['too long', `${digest}00`],
    ['a SHA-1 digest', 'a9993e364706816aba3e25717850c26c9cd0d89d'],
  ])('refuses, without throwing, when the expected digest is malformed (%s)', (_what, expected) => {
    expect(() => tokenMatchesDigest(TOKEN, expected)).not.toThrow();
    expect(tokenMatchesDigest(TOKEN, expected)).toBe(false);
  });

  it('compares 32-byte digests with timingSafeEqual, whatever the length of the presented token', () => {
    const spy = vi.mocked(timingSafeEqual);
    for (const presented of [TOKEN, 'x', 'y'.repeat(10_000), '']) {
      spy.mockClear();
      tokenMatchesDigest(presented, digest);
      expect(spy).toHaveBeenCalledTimes(1);
      const [a, b] = spy.mock.calls[0]!;
      expect((a as Buffer).length).toBe(32);
      expect((b as Buffer).length).toBe(32);
    }
  });
});
