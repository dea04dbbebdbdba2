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
    open: async () => {
      const b = Buffer.from(text);
      made.push(b);
      return b;
    },
  };
}

const zeroed = (b: Buffer) => b.every((byte) => byte === 0);
/** The parse callback of most tests: the text, made while the cache's bytes are valid. */
const text = (plain: Buffer) => plain.toString('utf8');

describe('OpenCache', () => {
  it('opens once for the same sealed text within the bound, and again after it', async () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 10, clock, sweepEveryMs: 0 });
    const o = opener();
    await cache.open('cred/a', 'v1', 'sealed-1', o.open, text);
    clock.advance(29_999);
    await cache.open('cred/a', 'v1', 'sealed-1', o.open, text);
    expect(o.made).toHaveLength(1);
    clock.advance(1);
    await cache.open('cred/a', 'v1', 'sealed-1', o.open, text);
    expect(o.made).toHaveLength(2);
    // The expired entry's plaintext was zeroed when it was replaced.
    expect(zeroed(o.made[0]!)).toBe(true);
    expect(zeroed(o.made[1]!)).toBe(false);
  });

  it('sweeps an expired entry even when nothing reads it, and zeroes its plaintext', async () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 5_000, maxEntries: 10, clock, sweepEveryMs: 0 });
    const o = opener();
    await cache.open('cred/a', 'v1', 'sealed-1', o.open, text);
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
    await cache.open('cred/a', 'v1', 'sealed-1', o.open, text);
    clock.advance(1_000);
    await expect.poll(() => cache.size, { timeout: 2_000, interval: 5 }).toBe(0);
    expect(zeroed(o.made[0]!)).toBe(true);
    cache.close();
  });

  it('never answers for other sealed text (a rewritten value, another version, another secret)', async () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 10, clock, sweepEveryMs: 0 });
    const a = opener('{"password":"old"}');
    const b = opener('{"password":"new"}');
    expect(await cache.open('cred/a', 'v1', 'sealed-1', a.open, text)).toContain('old');
    expect(await cache.open('cred/a', 'v1', 'sealed-1-rewritten', b.open, text)).toContain('new');
    expect(zeroed(a.made[0]!)).toBe(true);
    expect(await cache.open('cred/a', 'v2', 'sealed-1-rewritten', b.open, text)).toContain('new');
    expect(await cache.open('cred/b', 'v1', 'sealed-1-rewritten', b.open, text)).toContain('new');
    expect(b.made).toHaveLength(3);
  });

  it('drops (and zeroes) the versions Redis no longer shows live, keeps the live ones', async () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 10, clock, sweepEveryMs: 0 });
    const o = opener();
    await cache.open('cred/a', 'v1', 's1', o.open, text);
    await cache.open('cred/a', 'v2', 's2', o.open, text);
    await cache.open('cred/b', 'v9', 's9', o.open, text);
    cache.retain('cred/a', ['v2', null]);
    expect(cache.size).toBe(2);
    expect(zeroed(o.made[0]!)).toBe(true);
    expect(zeroed(o.made[1]!)).toBe(false);
    cache.forget('cred/a');
    expect(cache.size).toBe(1);
    expect(zeroed(o.made[1]!)).toBe(true);
    expect(zeroed(o.made[2]!)).toBe(false);
  });

  it('keeps at most maxEntries, dropping the oldest first; close drops everything', async () => {
    const clock = fakeClock();
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 2, clock, sweepEveryMs: 0 });
    const o = opener();
    await cache.open('cred/a', 'v1', 's1', o.open, text);
    await cache.open('cred/b', 'v1', 's1', o.open, text);
    await cache.open('cred/c', 'v1', 's1', o.open, text);
    expect(cache.size).toBe(2);
    expect(zeroed(o.made[0]!)).toBe(true);
    cache.close();
    expect(cache.size).toBe(0);
    expect(o.made.every(zeroed)).toBe(true);
  });

  it('keeps nothing when disabled, and zeroes what it opened once parsed', async () => {
    const cache = new OpenCache({ ttlMs: 0, maxEntries: 10, clock: fakeClock(), sweepEveryMs: 0 });
    const o = opener();
    expect(await cache.open('cred/a', 'v1', 's1', o.open, text)).toBe('{"password":"hunter2"}');
    expect(cache.size).toBe(0);
    expect(zeroed(o.made[0]!)).toBe(true);
    await cache.open('cred/a', 'v1', 's1', o.open, text);
    expect(o.made).toHaveLength(2);
    // Zeroed even when parse throws.
    await expect(
      cache.open('cred/a', 'v1', 's1', o.open, () => {
        throw new SyntaxError('bad JSON');
      }),
    ).rejects.toThrow('bad JSON');
    expect(zeroed(o.made[2]!)).toBe(true);
  });

  it('parse runs on the cached bytes, so a hit answers the parsed value of exactly that text', async () => {
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 10, clock: fakeClock(), sweepEveryMs: 0 });
    const o = opener();
    const parse = (plain: Buffer) => JSON.parse(plain.toString('utf8')) as { password: string };
    expect(await cache.open('cred/a', 'v1', 's1', o.open, parse)).toEqual({ password: 'hunter2' });
    const hit = await cache.open('cred/a', 'v1', 's1', o.open, parse);
    expect(hit).toEqual({ password: 'hunter2' });
    expect(o.made).toHaveLength(1);
    cache.close();
  });

  it('an open that fails keeps nothing, and the next read opens again', async () => {
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 10, clock: fakeClock(), sweepEveryMs: 0 });
    await expect(
      cache.open(
        'cred/a',
        'v1',
        's1',
        async () => {
          throw new Error('authentication failed');
        },
        text,
      ),
    ).rejects.toThrow('authentication failed');
    expect(cache.size).toBe(0);
    const o = opener();
    expect(await cache.open('cred/a', 'v1', 's1', o.open, text)).toContain('hunter2');
    expect(cache.size).toBe(1);
    cache.close();
  });

  describe('two concurrent misses of one value', () => {
    /** An opener whose calls wait until released, in any order. */
    function gatedOpener(textOf: (call: number) => string) {
      const made: Buffer[] = [];
      const gates: Array<() => void> = [];
      return {
        made,
        gates,
        open: () =>
          new Promise<Buffer>((resolve) => {
            const b = Buffer.from(textOf(made.length));
            made.push(b);
            gates.push(() => resolve(b));
          }),
      };
    }

    it.each([
      ['in order', [0, 1]],
      ['in reverse order', [1, 0]],
    ] as const)(
      'resolved %s: both parse the right value, one entry is kept, the other is zeroed',
      async (_n, order) => {
        const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 10, clock: fakeClock(), sweepEveryMs: 0 });
        const o = gatedOpener(() => '{"password":"hunter2"}');
        const first = cache.open('cred/a', 'v1', 's1', o.open, text);
        const second = cache.open('cred/a', 'v1', 's1', o.open, text);
        await expect.poll(() => o.gates.length).toBe(2);
        o.gates[order[0]]!();
        await new Promise((r) => setImmediate(r));
        o.gates[order[1]]!();
        expect(await Promise.all([first, second])).toEqual([
          '{"password":"hunter2"}',
          '{"password":"hunter2"}',
        ]);
        expect(cache.size).toBe(1);
        // The copy of the first to finish was replaced by the second's, and zeroed: no plaintext left unaccounted.
        expect(zeroed(o.made[order[0]]!)).toBe(true);
        expect(zeroed(o.made[order[1]]!)).toBe(false);
        // The kept one answers a hit.
        const hit = opener();
        expect(await cache.open('cred/a', 'v1', 's1', hit.open, text)).toBe('{"password":"hunter2"}');
        expect(hit.made).toHaveLength(0);
        cache.close();
        expect(o.made.every(zeroed)).toBe(true);
        expect(cache.size).toBe(0);
      },
    );

    it('with the bound at one entry, neither drops the other secret twice nor leaves the count wrong', async () => {
      const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 1, clock: fakeClock(), sweepEveryMs: 0 });
      const other = opener('{"password":"other"}');
      await cache.open('cred/b', 'v1', 's1', other.open, text);
      const o = gatedOpener((call) => `{"password":"concurrent-${call}"}`);
      const first = cache.open('cred/a', 'v1', 's1', o.open, text);
      const second = cache.open('cred/a', 'v1', 's1', o.open, text);
      await expect.poll(() => o.gates.length).toBe(2);
      o.gates[0]!();
      o.gates[1]!();
      // Each caller parses the bytes its own open returned.
      expect(await Promise.all([first, second])).toEqual([
        '{"password":"concurrent-0"}',
        '{"password":"concurrent-1"}',
      ]);
      expect(cache.size).toBe(1);
      expect(zeroed(other.made[0]!)).toBe(true);
      expect(zeroed(o.made[0]!)).toBe(true);
      cache.close();
      expect(cache.size).toBe(0);
      expect(o.made.every(zeroed)).toBe(true);
    });
  });
});

describe('OpenCache after close()', () => {
  it('an open in flight when the cache closes is parsed for its caller, zeroed, and not kept', async () => {
    const cache = new OpenCache({ ttlMs: 30_000, maxEntries: 10, clock: fakeClock(), sweepEveryMs: 0 });
    let release!: (b: Buffer) => void;
    const made = Buffer.from('{"password":"in-flight"}');
    const pending = cache.open(
      'cred/a',
      'v1',
      'sealed-1',
      () => new Promise<Buffer>((r) => (release = r)),
      text,
    );
    cache.close();
    release(made);
    expect(await pending).toBe('{"password":"in-flight"}');
    expect(cache.size).toBe(0);
    expect(zeroed(made)).toBe(true);
  });
});
