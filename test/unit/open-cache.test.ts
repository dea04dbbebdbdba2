// Issue 14 guard: no decrypted secret is kept longer than its cache entry (stores/open-cache.ts). With the injected
// clock: an entry expires after its bound and its plaintext is zeroed, whether it is read again or swept; an entry is
// dropped (and zeroed) when Redis shows its version is no longer live; a hit needs the exact sealed text; the count
// is bounded.
import { describe, expect, it } from 'vitest';
import type { Clock } from '../../src/clock.ts';
import { OpenCache } from '../../src/stores/open-cache.ts';

function fakeClock(start = 1_000_000): Clock & { advance(ms: number): void } {
  let now = start;
  return { now: () => now, advance: (ms) => (now += ms) };
}

/** An opener that counts its calls and returns a fresh buffer each time (what the cache must keep and zero). */
function opener(text = '{"password":"hunter2"}') {
  const made: Buffer[] = [];
  return {
    made,
    open: () => {
      const b = Buffer.from(text);
      made.push(b);
      return b;
    },
  };
}

const zeroed = (b: Buffer) => b.every((byte) => byte === 0);

describe('OpenCache', () => {
  it('opens once for the same sealed text within the bound, and again after it', () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 10, clock, sweepEveryMs: 0 });
    const o = opener();
    cache.open('cred/a', 'v1', 'sealed-1', o.open);
    clock.advance(29_999);
    cache.open('cred/a', 'v1', 'sealed-1', o.open);
    expect(o.made).toHaveLength(1);
    clock.advance(1);
    cache.open('cred/a', 'v1', 'sealed-1', o.open);
    expect(o.made).toHaveLength(2);
    // The expired entry's plaintext was zeroed when it was replaced.
    expect(zeroed(o.made[0]!)).toBe(true);
    expect(zeroed(o.made[1]!)).toBe(false);
  });

  it('sweeps an expired entry even when nothing reads it, and zeroes its plaintext', () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 5_000, maxEntries: 10, clock, sweepEveryMs: 0 });
    const o = opener();
    cache.open('cred/a', 'v1', 'sealed-1', o.open);
    clock.advance(4_999);
    cache.sweep();
    expect(cache.size).toBe(1);
    expect(zeroed(o.made[0]!)).toBe(false);
    clock.advance(1);
    cache.sweep();
    expect(cache.size).toBe(0);
    expect(zeroed(o.made[0]!)).toBe(true);
  });

  it('sweeps on its own timer', async () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 1_000, maxEntries: 10, clock, sweepEveryMs: 5 });
    const o = opener();
    cache.open('cred/a', 'v1', 'sealed-1', o.open);
    clock.advance(1_000);
    await expect.poll(() => cache.size, { timeout: 2_000, interval: 5 }).toBe(0);
    expect(zeroed(o.made[0]!)).toBe(true);
    cache.close();
  });

  it('never answers for other sealed text (a rewritten value, another version, another secret)', () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 10, clock, sweepEveryMs: 0 });
    const a = opener('{"password":"old"}');
    const b = opener('{"password":"new"}');
    expect(cache.open('cred/a', 'v1', 'sealed-1', a.open).toString()).toContain('old');
    expect(cache.open('cred/a', 'v1', 'sealed-1-rewritten', b.open).toString()).toContain('new');
    expect(zeroed(a.made[0]!)).toBe(true);
    expect(cache.open('cred/a', 'v2', 'sealed-1-rewritten', b.open).toString()).toContain('new');
    expect(cache.open('cred/b', 'v1', 'sealed-1-rewritten', b.open).toString()).toContain('new');
    expect(b.made).toHaveLength(3);
  });

  it('drops (and zeroes) the versions Redis no longer shows live, keeps the live ones', () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 10, clock, sweepEveryMs: 0 });
    const o = opener();
    cache.open('cred/a', 'v1', 's1', o.open);
    cache.open('cred/a', 'v2', 's2', o.open);
    cache.open('cred/b', 'v9', 's9', o.open);
    cache.retain('cred/a', ['v2', null]);
    expect(cache.size).toBe(2);
    expect(zeroed(o.made[0]!)).toBe(true);
    expect(zeroed(o.made[1]!)).toBe(false);
    cache.forget('cred/a');
    expect(cache.size).toBe(1);
    expect(zeroed(o.made[1]!)).toBe(true);
    expect(zeroed(o.made[2]!)).toBe(false);
  });

  it('keeps at most maxEntries, dropping the oldest first; close drops everything', () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 2, clock, sweepEveryMs: 0 });
    const o = opener();
    cache.open('cred/a', 'v1', 's1', o.open);
    cache.open('cred/b', 'v1', 's1', o.open);
    cache.open('cred/c', 'v1', 's1', o.open);
    expect(cache.size).toBe(2);
    expect(zeroed(o.made[0]!)).toBe(true);
    cache.close();
    expect(cache.size).toBe(0);
    expect(o.made.every(zeroed)).toBe(true);
  });

  it('keeps nothing when disabled', () => {
    const cache = new OpenCache({ ttlMs: 0, maxEntries: 10, clock: fakeClock(), sweepEveryMs: 0 });
    const o = opener();
    cache.open('cred/a', 'v1', 's1', o.open);
    expect(cache.size).toBe(0);
  });
});
