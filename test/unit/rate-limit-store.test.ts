// The rate limit's shared counters (src/api/rate-limit-store.ts) against a stand-in for Redis: counted there while it
// answers, in the process while it does not (disconnected, failing, or silent), said once each way, never an error.
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { SharedRateLimit, sliceOf } from '../../src/api/rate-limit-store.ts';
import { createLogger } from '../../src/logging/logger.ts';
import type { RedisClient } from '../../src/redis/client.ts';
import { RedisKeys } from '../../src/registry/keys.ts';

/** Redis as far as the store uses it: `status` and `eval` of its counting script, with what a test decides. */
class FakeRedis {
  status = 'ready';
  mode: 'count' | 'fail' | 'silent' = 'count';
  readonly counters = new Map<string, number>();
  readonly calls: Array<{ key: string; windowMs: number }> = [];

  eval(_script: string, _keys: number, key: string, windowMs: number, slice = 1): Promise<[number, number]> {
    this.calls.push({ key, windowMs });
    if (this.mode === 'fail') return Promise.reject(new Error('ECONNRESET'));
    if (this.mode === 'silent') return new Promise(() => {});
    const n = (this.counters.get(key) ?? 0) + Number(slice);
    this.counters.set(key, n);
    return Promise.resolve([n, windowMs - 1]);
  }
}

function setup(options: { retryMs?: number; timeoutMs?: number; redis?: FakeRedis } = {}) {
  const redis = options.redis ?? new FakeRedis();
  const lines: Array<{ level: number; msg: string }> = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  const limit = new SharedRateLimit({
    redis: redis as unknown as RedisClient,
    keys: new RedisKeys('kt-unit'),
    logger: createLogger({ level: 'info', format: 'json', destination }),
    retryMs: options.retryMs ?? 60_000,
    timeoutMs: options.timeoutMs ?? 1000,
  });
  return { redis, lines, limit };
}

describe('SharedRateLimit', () => {
  it('takes the limit in slices (a fiftieth each): two replicas never admit more than max between them, with a Redis call per slice', async () => {
    const redis = new FakeRedis();
    const a = setup({ redis }).limit;
    const b = setup({ redis }).limit;
    expect(sliceOf(500)).toBe(10);
    expect(sliceOf(6)).toBe(1);
    expect(sliceOf(Number.POSITIVE_INFINITY)).toBe(1);
    let admitted = 0;
    for (let i = 0; i < 600; i++) {
      const { current } = await (i % 3 === 0 ? a : b).incr('p:reader', 60_000, 500);
      if (current <= 500) admitted++;
    }
    // Every admitted request holds a count of its own; a replica's unused slice can only refuse a little early.
    expect(admitted).toBeLessThanOrEqual(500);
    expect(admitted).toBeGreaterThanOrEqual(500 - 2 * 9);
    expect(redis.calls.length).toBeLessThanOrEqual(600 / 10 + 2);
  });

  it('requests in flight when a slice runs out wait for one fetch and share it, instead of each spending a slice', async () => {
    const { redis, limit } = setup();
    // 640 requests, 64 at a time, against a limit of 50,000 (slices of 1,000).
    for (let round = 0; round < 10; round++) {
      await Promise.all(Array.from({ length: 64 }, () => limit.incr('p:reader', 60_000, 50_000)));
    }
    expect(redis.calls.length).toBe(1);
    expect(redis.counters.get(redis.calls[0]?.key ?? '')).toBe(1000);
    const next = await limit.incr('p:reader', 60_000, 50_000);
    expect(next.current).toBe(641);
  });

  it('counts in Redis under the prefix, one key per subject, named by a hash of it', async () => {
    const { redis, limit } = setup();
    expect(await limit.incr('p:payments-api', 60_000)).toEqual({ current: 1, ttl: 59_999 });
    expect(await limit.incr('p:payments-api', 60_000)).toEqual({ current: 2, ttl: 59_999 });
    expect(await limit.incr('ip:10.0.0.7', 60_000)).toMatchObject({ current: 1 });
    const keys = [...new Set(redis.calls.map((c) => c.key))];
    expect(keys).toHaveLength(2);
    for (const key of keys) {
      expect(key).toMatch(/^kt-unit:limits:rate:[0-9a-f]{32}$/);
      expect(key).not.toContain('payments');
      expect(key).not.toContain('10.0.0.7');
    }
    expect(limit.local).toBe(false);
  });

  it('counts in the process while Redis fails, says so once, and never throws', async () => {
    const { redis, lines, limit } = setup();
    redis.mode = 'fail';
    for (let i = 1; i <= 5; i++) expect(await limit.incr('p:ci', 60_000)).toMatchObject({ current: i });
    expect(limit.local).toBe(true);
    // Tried once, then left alone until retryMs has passed.
    expect(redis.calls).toHaveLength(1);
    const warnings = lines.filter((l) => l.level === 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.msg).toMatch(
      /^rate limit: Redis cannot count requests \(ECONNRESET\); counting in this process/,
    );
  });

  it('does not wait on a connection that is not ready', async () => {
    const { redis, limit } = setup();
    redis.status = 'reconnecting';
    expect(await limit.incr('p:ci', 60_000)).toMatchObject({ current: 1 });
    expect(redis.calls).toHaveLength(0);
    expect(limit.local).toBe(true);
  });

  it('gives up on a Redis that does not answer within the timeout', async () => {
    const { redis, lines, limit } = setup({ timeoutMs: 50 });
    redis.mode = 'silent';
    expect(await limit.incr('p:ci', 60_000)).toMatchObject({ current: 1 });
    expect(lines.some((l) => l.msg.includes('no answer within 50 ms'))).toBe(true);
  });

  it('goes back to Redis once it answers again, and says so once', async () => {
    const { redis, lines, limit } = setup({ retryMs: 0 });
    redis.mode = 'fail';
    await limit.incr('p:ci', 60_000);
    await limit.incr('p:ci', 60_000);
    redis.mode = 'count';
    expect(await limit.incr('p:ci', 60_000)).toMatchObject({ current: 1 });
    expect(await limit.incr('p:ci', 60_000)).toMatchObject({ current: 2 });
    expect(limit.local).toBe(false);
    expect(lines.filter((l) => l.level === 40)).toHaveLength(1);
    expect(lines.filter((l) => l.msg.startsWith('rate limit: Redis answers again'))).toHaveLength(1);
  });

  it('starts a new local window when the old one ends', async () => {
    const { redis, limit } = setup();
    redis.status = 'end';
    expect(await limit.incr('p:ci', 50)).toMatchObject({ current: 1 });
    expect(await limit.incr('p:ci', 50)).toMatchObject({ current: 2 });
    await new Promise((r) => setTimeout(r, 80));
    const next = await limit.incr('p:ci', 50);
    expect(next.current).toBe(1);
    expect(next.ttl).toBeGreaterThan(0);
  });
});
