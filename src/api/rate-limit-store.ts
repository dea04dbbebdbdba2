// The rate limit's counters (hardening.ts), shared by every API replica through Redis: one key per subject and
// window, `<prefix>:limits:rate:<sha256 of the subject>`, made by INCR and expiring with the window, so N replicas
// allow `max` requests per window between them, not N × max. The subject is a principal's name or a client address,
// never a token; it is hashed all the same, so that Redis holds neither names nor addresses.
//
// Redis away (not connected, an error, or no answer within a second) must not turn every request into a 5xx, nor
// let requests through unlimited: the request is counted in this process instead (the plugin's behaviour before
// counters were shared), said once in the log, and Redis is tried again a few seconds later; its return is said
// once too.
import { createHash } from 'node:crypto';
import type { FastifyRateLimitStore, FastifyRateLimitStoreCtor } from '@fastify/rate-limit';
import type { Logger } from '../logging/logger.ts';
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';

/**
 * INCRBY a slice, and the window's expiry on the first request of a window; a counter that lost its expiry gets one
 * back. ARGV[1] the window (ms), ARGV[2] the slice.
 */
const INCR_SCRIPT = `local n = redis.call('INCRBY', KEYS[1], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}`;

export interface RateCount {
  /** Requests of the subject in the current window, this one included. */
  current: number;
  /** Milliseconds until the window ends. */
  ttl: number;
}

export interface SharedRateLimitOptions {
  redis: RedisClient;
  keys: RedisKeys;
  logger: Logger;
  /** How long Redis may take to answer before the request is counted in this process. Default 1000 ms. */
  timeoutMs?: number;
  /** After Redis failed, how long requests are counted in this process before Redis is tried again. Default 5 s. */
  retryMs?: number;
  /** Subjects the local (fallback) counter keeps at most; the oldest go first. Default 10,000. */
  localEntries?: number;
}

/**
 * How many counts of a window one Redis call takes for this process: a fiftieth of the limit, at least one. Why: a
 * round trip per request cost the secret read a third more Redis CPU (issue 17 §4, measured with `npm run bench read`);
 * with slices the counts stay shared and never admit more than `max` between all replicas (each admitted request
 * holds a count of its own), and a replica that does not use up its slice can only make the others refuse a little
 * early: at most a fiftieth of the limit per replica.
 */
export function sliceOf(max: number): number {
  return Number.isFinite(max) && max > 0 ? Math.max(1, Math.min(1000, Math.floor(max / 50))) : 1;
}

const digest = (subject: string): string => createHash('sha256').update(subject).digest('hex').slice(0, 32);

/** Fixed windows in this process's memory: the fallback while Redis is away. */
class LocalCounter {
  readonly #entries = new Map<string, { count: number; resetAt: number }>();
  readonly #max: number;

  constructor(maxEntries: number) {
    this.#max = maxEntries;
  }

  incr(subject: string, windowMs: number, now = Date.now()): RateCount {
    let entry = this.#entries.get(subject);
    if (!entry || entry.resetAt <= now) {
      entry = { count: 0, resetAt: now + windowMs };
      // Re-inserted at the end: the map's order is the order of last window starts, oldest first.
      this.#entries.delete(subject);
      this.#entries.set(subject, entry);
      if (this.#entries.size > this.#max) {
        const oldest = this.#entries.keys().next().value;
        if (oldest !== undefined) this.#entries.delete(oldest);
      }
    }
    entry.count += 1;
    return { current: entry.count, ttl: entry.resetAt - now };
  }
}

export class SharedRateLimit {
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;
  readonly #logger: Logger;
  readonly #timeoutMs: number;
  readonly #retryMs: number;
  readonly #local: LocalCounter;
  /** While set, Redis failed and counting is local until this time (ms). */
  #localUntil: number | undefined;
  /** Per subject: the counts of the slice this process took from Redis and has not handed out yet. */
  readonly #slices = new Map<string, { next: number; end: number; resetAt: number }>();
  readonly #maxSlices: number;
  /** Per subject: the slice being fetched from Redis, which requests arriving meanwhile wait for. */
  readonly #fetching = new Map<string, Promise<void>>();

  constructor(options: SharedRateLimitOptions) {
    this.#redis = options.redis;
    this.#keys = options.keys;
    this.#logger = options.logger;
    this.#timeoutMs = options.timeoutMs ?? 1000;
    this.#retryMs = options.retryMs ?? 5000;
    this.#local = new LocalCounter(options.localEntries ?? 10_000);
    this.#maxSlices = options.localEntries ?? 10_000;
  }

  /** True while requests are counted in this process only (Redis away). */
  get local(): boolean {
    return this.#localUntil !== undefined;
  }

  /** Counts one request of `subject` in its current window: in Redis, or in this process while Redis is away. */
  async incr(subject: string, windowMs: number, max = Number.POSITIVE_INFINITY): Promise<RateCount> {
    const slice = sliceOf(max);
    for (;;) {
      const now = Date.now();
      if (this.#localUntil !== undefined && now < this.#localUntil)
        return this.#local.incr(subject, windowMs);
      const held = this.#slices.get(subject);
      if (held && held.resetAt > now && held.next <= held.end) {
        return { current: held.next++, ttl: held.resetAt - now };
      }
      // One call per subject at a time: requests that arrive while a slice is being fetched wait for it and take their
      // counts from it. Without this, every request in flight when a slice ran out fetched a slice of its own and
      // kept one count of it: the limit was spent sixty times faster than requests came (found by `npm run bench`).
      // A slice of one (a limit under fifty) is nothing to share: each request asks Redis, as the plugin's store does.
      if (slice === 1) return this.#fetch(subject, windowMs, slice, now);
      const fetching = this.#fetching.get(subject);
      if (fetching) {
        await fetching;
        continue;
      }
      let first: RateCount | undefined;
      const fetch = this.#fetch(subject, windowMs, slice, now).then((count) => {
        first = count;
      });
      this.#fetching.set(subject, fetch);
      try {
        await fetch;
      } finally {
        this.#fetching.delete(subject);
      }
      return first ?? this.#local.incr(subject, windowMs);
    }
  }

  /** Takes a slice of the subject's counts from Redis and returns the first; counts in this process when it cannot. */
  async #fetch(subject: string, windowMs: number, slice: number, now: number): Promise<RateCount> {
    // Not connected (reconnecting, or closed): a command would wait in the offline queue; count here at once.
    if (this.#redis.status !== 'ready') {
      this.#fellBack(`the connection is ${this.#redis.status}`);
      return this.#local.incr(subject, windowMs);
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      const answer = (await Promise.race([
        this.#redis.eval(INCR_SCRIPT, 1, this.#keys.rateLimit(digest(subject)), windowMs, slice),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`no answer within ${this.#timeoutMs} ms`)),
            this.#timeoutMs,
          );
        }),
      ])) as [number, number];
      if (this.#localUntil !== undefined) {
        this.#localUntil = undefined;
        this.#logger.info(
          'rate limit: Redis answers again; requests are counted there, shared by every replica',
        );
      }
      const total = Number(answer[0]);
      const ttl = Math.max(0, Number(answer[1]));
      // This process holds the counts total - slice + 1 … total: the first is this request's.
      this.#slices.delete(subject);
      if (slice > 1) {
        this.#slices.set(subject, { next: total - slice + 2, end: total, resetAt: now + ttl });
        if (this.#slices.size > this.#maxSlices) {
          const oldest = this.#slices.keys().next().value;
          if (oldest !== undefined) this.#slices.delete(oldest);
        }
      }
      return { current: total - slice + 1, ttl };
    } catch (err) {
      this.#fellBack((err as Error).message);
      return this.#local.incr(subject, windowMs);
    } finally {
      clearTimeout(timer);
    }
  }

  #fellBack(reason: string): void {
    const first = this.#localUntil === undefined;
    this.#localUntil = Date.now() + this.#retryMs;
    if (!first) return;
    this.#logger.warn(
      { reason },
      `rate limit: Redis cannot count requests (${reason}); counting in this process until it answers again (tried every ${Math.round(this.#retryMs / 1000)} s): meanwhile each API replica allows the limit on its own`,
    );
  }

  /** The store class @fastify/rate-limit instantiates (its `store` option). */
  storeClass(): FastifyRateLimitStoreCtor {
    const shared = this;
    // A route with a limit of its own counts apart, as the plugin's own stores do (none does today).
    const storeFor = (scope: string): FastifyRateLimitStore => ({
      incr(key, callback, timeWindow, max) {
        // Never an error: the fallback always counts.
        shared.incr(`${scope}${key}`, timeWindow, max).then(
          (count) => callback(null, count),
          (err: Error) => callback(err),
        );
      },
      child: (options) => {
        const route = (options as unknown as { routeInfo?: { method?: unknown; url?: string } }).routeInfo;
        return storeFor(`${scope}${String(route?.method ?? '')}${route?.url ?? ''}-`);
      },
    });
    const root = storeFor('');
    return function SharedStore() {
      return root;
    } as unknown as FastifyRateLimitStoreCtor;
  }
}
