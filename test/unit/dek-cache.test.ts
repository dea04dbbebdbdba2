// The cache of unwrapped data keys (crypto/dek-cache.ts), with an injected clock: a hit makes no provider call,
// concurrent misses share one, an entry lives at most its TTL and the count is bounded (oldest first), every caller
// gets a copy of its own, a failed unwrap is not remembered, and a disabled cache (TTL or max 0) keeps nothing.
//
// What can be observed of zeroing: the cache's own copy of a DEK is private. The tests check (1) that the buffer the
// provider returned is zeroed once every waiter has its copy, (2) that callers' copies are independent of the entry,
// and (3) through Node's small-buffer pool, where Buffer.from() places the entry's copy: the DEK's bytes are in
// the pool's memory while the entry lives and gone once it is dropped. (3) relies on Node pooling Buffer.from()
// copies under 4 KiB (documented: Buffer.poolSize); the test checks that it does before relying on it.
import { randomBytes } from 'node:crypto';
import { setImmediate as nextMacrotask } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { Clock } from '../../src/clock.ts';
import { DekCache } from '../../src/crypto/dek-cache.ts';
import type { SealContext } from '../../src/crypto/envelope.ts';

function fakeClock(start = 1_000_000): Clock & { advance(ms: number): void } {
  let now = start;
  return { now: () => now, advance: (ms) => (now += ms) };
}

const CTX: SealContext = { secret: 'cred/a', version: 'v1' };
const KID = 'env:0123456789abcdef';
const zeroed = (b: Buffer) => b.every((byte) => byte === 0);

/** An unwrap that counts its calls and returns a new buffer holding `dek` each time (what the cache copies). */
function unwrapper(dek = randomBytes(32)) {
  const returned: Buffer[] = [];
  let calls = 0;
  return {
    dek,
    returned,
    get calls() {
      return calls;
    },
    unwrap: async () => {
      calls++;
      // Not from the pool (Buffer.alloc never is), so the pool test below sees only the cache's copies.
      const b = Buffer.alloc(32);
      dek.copy(b);
      returned.push(b);
      return b;
    },
  };
}

/** An unwrap that waits until released: for concurrent misses. */
function deferredUnwrap(dek = randomBytes(32)) {
  let calls = 0;
  let release!: (b: Buffer) => void;
  let fail!: (e: Error) => void;
  const pending = new Promise<Buffer>((resolve, reject) => {
    release = resolve;
    fail = reject;
  });
  return {
    dek,
    get calls() {
      return calls;
    },
    unwrap: () => {
      calls++;
      return pending;
    },
    release: () => release(Buffer.from(dek)),
    fail: (e: Error) => fail(e),
  };
}

const settings = (clock: Clock, over: Partial<{ ttlMs: number; maxEntries: number }> = {}) => ({
  ttlMs: 60_000,
  maxEntries: 100,
  clock,
  sweepEveryMs: 0,
  ...over,
});

describe('DekCache', () => {
  it('a hit makes no unwrap call and answers the same key', async () => {
    const cache = new DekCache(settings(fakeClock()));
    const u = unwrapper();
    const first = await cache.get(KID, 'wrapped-1', CTX, u.unwrap);
    const second = await cache.get(KID, 'wrapped-1', CTX, u.unwrap);
    expect(u.calls).toBe(1);
    expect(cache.misses).toBe(1);
    expect(cache.size).toBe(1);
    expect(first.equals(u.dek)).toBe(true);
    expect(second.equals(u.dek)).toBe(true);
    cache.close();
  });

  it('is keyed by the exact kid, wrapped form and context: anything else is a miss', async () => {
    const cache = new DekCache(settings(fakeClock()));
    const u = unwrapper();
    await cache.get(KID, 'wrapped-1', CTX, u.unwrap);
    await cache.get('env:fedcba9876543210', 'wrapped-1', CTX, u.unwrap);
    await cache.get(KID, 'wrapped-2', CTX, u.unwrap);
    await cache.get(KID, 'wrapped-1', { secret: 'cred/b', version: 'v1' }, u.unwrap);
    await cache.get(KID, 'wrapped-1', { secret: 'cred/a', version: 'v2' }, u.unwrap);
    // Fields that would run together if the key were a plain concatenation.
    await cache.get(KID, 'wrapped-1', { secret: 'cred/av1', version: '' }, u.unwrap);
    expect(u.calls).toBe(6);
    expect(cache.size).toBe(6);
    await cache.get(KID, 'wrapped-1', CTX, u.unwrap);
    expect(u.calls).toBe(6);
    cache.close();
  });

  it('concurrent misses of one key share one unwrap, and each caller gets its own buffer', async () => {
    const cache = new DekCache(settings(fakeClock()));
    const d = deferredUnwrap();
    const waiting = [1, 2, 3].map(() => cache.get(KID, 'w', CTX, d.unwrap));
    await nextMacrotask();
    expect(d.calls).toBe(1);
    d.release();
    const got = await Promise.all(waiting);
    expect(d.calls).toBe(1);
    expect(cache.misses).toBe(1);
    for (const b of got) expect(b.equals(d.dek)).toBe(true);
    expect(new Set(got).size).toBe(3);
    // Zeroing one caller's copy does not touch the others'.
    got[0]!.fill(0);
    expect(got[1]!.equals(d.dek)).toBe(true);
    cache.close();
  });

  it('each caller gets its own copy: zeroing it does not break the next hit', async () => {
    const cache = new DekCache(settings(fakeClock()));
    const u = unwrapper();
    const first = await cache.get(KID, 'w', CTX, u.unwrap);
    first.fill(0);
    const second = await cache.get(KID, 'w', CTX, u.unwrap);
    expect(u.calls).toBe(1);
    expect(second.equals(u.dek)).toBe(true);
    second.fill(0);
    expect((await cache.get(KID, 'w', CTX, u.unwrap)).equals(u.dek)).toBe(true);
    cache.close();
  });

  it('the buffer unwrap returned is zeroed once every waiter has copied it', async () => {
    const cache = new DekCache(settings(fakeClock()));
    const u = unwrapper();
    const [a, b] = await Promise.all([
      cache.get(KID, 'w', CTX, u.unwrap),
      cache.get(KID, 'w', CTX, u.unwrap),
    ]);
    expect(u.returned).toHaveLength(1);
    // The cache zeroes it after the waiters' microtasks: one macrotask later at the latest.
    await nextMacrotask();
    expect(zeroed(u.returned[0]!)).toBe(true);
    expect(a.equals(u.dek)).toBe(true);
    expect(b.equals(u.dek)).toBe(true);
    expect((await cache.get(KID, 'w', CTX, u.unwrap)).equals(u.dek)).toBe(true);
    cache.close();
  });

  it('an entry expires after its TTL: read again, it is unwrapped again', async () => {
    const clock = fakeClock();
    const cache = new DekCache(settings(clock, { ttlMs: 30_000 }));
    const u = unwrapper();
    await cache.get(KID, 'w', CTX, u.unwrap);
    clock.advance(29_999);
    await cache.get(KID, 'w', CTX, u.unwrap);
    expect(u.calls).toBe(1);
    clock.advance(1);
    const again = await cache.get(KID, 'w', CTX, u.unwrap);
    expect(u.calls).toBe(2);
    expect(again.equals(u.dek)).toBe(true);
    expect(cache.size).toBe(1);
    cache.close();
  });

  it('sweep drops expired entries even when nothing reads them', async () => {
    const clock = fakeClock();
    const cache = new DekCache(settings(clock, { ttlMs: 5_000 }));
    const u = unwrapper();
    await cache.get(KID, 'w1', CTX, u.unwrap);
    clock.advance(2_000);
    await cache.get(KID, 'w2', CTX, u.unwrap);
    clock.advance(2_999);
    cache.sweep();
    expect(cache.size).toBe(2);
    clock.advance(1);
    cache.sweep();
    expect(cache.size).toBe(1);
    clock.advance(2_000);
    cache.sweep();
    expect(cache.size).toBe(0);
    cache.close();
  });

  it('sweeps on its own timer', async () => {
    const clock = fakeClock();
    const cache = new DekCache({ ttlMs: 1_000, maxEntries: 10, clock, sweepEveryMs: 5 });
    await cache.get(KID, 'w', CTX, unwrapper().unwrap);
    expect(cache.size).toBe(1);
    clock.advance(1_000);
    await expect.poll(() => cache.size, { timeout: 2_000, interval: 5 }).toBe(0);
    cache.close();
  });

  it('keeps at most maxEntries, dropping the oldest first (hits do not make an entry younger)', async () => {
    const cache = new DekCache(settings(fakeClock(), { maxEntries: 2 }));
    const u = unwrapper();
    await cache.get(KID, 'a', CTX, u.unwrap);
    await cache.get(KID, 'b', CTX, u.unwrap);
    await cache.get(KID, 'a', CTX, u.unwrap);
    expect(u.calls).toBe(2);
    await cache.get(KID, 'c', CTX, u.unwrap);
    expect(cache.size).toBe(2);
    expect(u.calls).toBe(3);
    // a was the oldest: gone; b and c are hits.
    await cache.get(KID, 'b', CTX, u.unwrap);
    await cache.get(KID, 'c', CTX, u.unwrap);
    expect(u.calls).toBe(3);
    await cache.get(KID, 'a', CTX, u.unwrap);
    expect(u.calls).toBe(4);
    expect(cache.size).toBe(2);
    cache.close();
  });

  it('a failed unwrap is not cached: its waiters all fail, and the next call tries again', async () => {
    const cache = new DekCache(settings(fakeClock()));
    const d = deferredUnwrap();
    const waiting = [1, 2].map(() => cache.get(KID, 'w', CTX, d.unwrap));
    await nextMacrotask();
    d.fail(new Error('the provider is down'));
    for (const w of waiting) await expect(w).rejects.toThrow('the provider is down');
    expect(d.calls).toBe(1);
    expect(cache.size).toBe(0);
    const u = unwrapper();
    expect((await cache.get(KID, 'w', CTX, u.unwrap)).equals(u.dek)).toBe(true);
    expect(u.calls).toBe(1);
    expect(cache.misses).toBe(2);
    cache.close();
  });

  it.each([
    ['ttl 0', { ttlMs: 0 }],
    ['max 0', { maxEntries: 0 }],
  ])('%s disables it: every get unwraps and nothing is kept', async (_name, over) => {
    const cache = new DekCache({ ...settings(fakeClock(), over), sweepEveryMs: undefined });
    const u = unwrapper();
    for (let i = 0; i < 3; i++) expect((await cache.get(KID, 'w', CTX, u.unwrap)).equals(u.dek)).toBe(true);
    expect(u.calls).toBe(3);
    expect(cache.misses).toBe(3);
    expect(cache.size).toBe(0);
    cache.close();
  });

  it('close drops everything; a later get unwraps again', async () => {
    const cache = new DekCache(settings(fakeClock()));
    const u = unwrapper();
    await cache.get(KID, 'w1', CTX, u.unwrap);
    await cache.get(KID, 'w2', CTX, u.unwrap);
    cache.close();
    expect(cache.size).toBe(0);
    await cache.get(KID, 'w1', CTX, u.unwrap);
    expect(u.calls).toBe(3);
    cache.close();
  });

  describe("the entry's own copy is zeroed when it goes (seen through Node's buffer pool)", () => {
    /** Starts a fresh slab of the pool when less than 1 KiB is left, so the next small copies land in one slab. */
    function freshSlab(): ArrayBufferLike {
      for (let i = 0; i < 16 && Buffer.allocUnsafe(1).byteOffset > Buffer.poolSize - 1024; i++)
        Buffer.allocUnsafe(512);
      return Buffer.allocUnsafe(1).buffer;
    }

    /** How many times `needle` occurs in `slab`. */
    function occurrences(slab: ArrayBufferLike, needle: Buffer): number {
      const hay = Buffer.from(slab);
      let count = 0;
      for (let at = hay.indexOf(needle); at !== -1; at = hay.indexOf(needle, at + 1)) count++;
      return count;
    }

    it.each([
      ['expiry (sweep)', 'sweep'],
      ['the max-entries bound', 'bound'],
      ['expiry seen by a read', 'read'],
      ['close', 'close'],
    ] as const)('dropped by %s', async (_name, how) => {
      const clock = fakeClock();
      const cache = new DekCache(settings(clock, { maxEntries: 1, ttlMs: 1_000 }));
      const u = unwrapper();
      const slab = freshSlab();
      const copy = await cache.get(KID, 'w', CTX, u.unwrap);
      // Node pools this small copy (the precondition of this test): the caller's copy sits in the slab.
      expect(copy.buffer, 'Buffer.from() of 32 bytes is expected to come from the pool').toBe(slab);
      copy.fill(0);
      await nextMacrotask();
      expect(zeroed(u.returned[0]!)).toBe(true);
      // Only the entry's copy still holds the DEK.
      expect(occurrences(slab, u.dek)).toBe(1);
      if (how === 'sweep') {
        clock.advance(1_000);
        cache.sweep();
      } else if (how === 'bound') {
        (await cache.get(KID, 'other', CTX, unwrapper().unwrap)).fill(0);
      } else if (how === 'read') {
        clock.advance(1_000);
        const other = unwrapper(Buffer.alloc(32, 0xee));
        (await cache.get(KID, 'w', CTX, other.unwrap)).fill(0);
      } else {
        cache.close();
      }
      expect(occurrences(slab, u.dek)).toBe(0);
      cache.close();
    });
  });
});

describe('DekCache after close()', () => {
  it('an unwrap in flight when the cache closes hands its key to its caller and keeps nothing', async () => {
    const cache = new DekCache(settings(fakeClock()));
    const d = deferredUnwrap();
    const got = cache.get(KID, 'wrapped', CTX, d.unwrap);
    cache.close();
    d.release();
    expect((await got).equals(d.dek)).toBe(true);
    expect(cache.size).toBe(0);
    // And later reads go to the provider each time: nothing is kept once closed.
    const u = unwrapper();
    await cache.get(KID, 'wrapped-2', CTX, u.unwrap);
    expect(cache.size).toBe(0);
  });
});
