// A bounded memo of unwrapped data keys, so that a value read again after the open cache (stores/open-cache.ts) let
// it go costs no call to the key provider (AWS KMS, Vault transit): a read path that called KMS on every miss would
// be as available as KMS and pay its latency and its price per request.
//
// What it may hold: a DEK, found only by the exact (kid, wrapped form, context) it was unwrapped from, so a hit is
// what the provider would answer. Never written anywhere: memory only, each entry zeroed when it goes. How long: at
// most `ttlMs` after it was unwrapped (KEYTURN_KEK_CACHE_TTL), at most `maxEntries` (oldest dropped first), and a
// timer sweeps expired entries even when nothing reads. Callers get a copy, which they zero: an entry that goes while
// a caller still uses its DEK cannot zero the caller's bytes.
//
// Concurrent misses of one key share one unwrap: a burst of reads after an entry expired makes one provider call.
import type { Clock } from '../clock.ts';
import type { SealContext } from './envelope.ts';

interface Entry {
  dek: Buffer;
  expiresAt: number;
}

export interface DekCacheSettings {
  ttlMs: number;
  maxEntries: number;
  clock: Clock;
  /** How often expired entries are swept (ms); 0: never by timer. Default min(ttlMs, 5000). */
  sweepEveryMs?: number;
}

export class DekCache {
  /** Insertion order is age order: the first entry is the oldest. */
  readonly #entries = new Map<string, Entry>();
  readonly #inflight = new Map<string, Promise<Buffer>>();
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #clock: Clock;
  #timer: NodeJS.Timeout | undefined;
  /** After close(): an unwrap still in flight hands its key to its callers and keeps nothing. */
  #closed = false;
  /** Unwraps the cache asked a provider for (hits are not counted): for tests and the rekey's report. */
  misses = 0;

  constructor(settings: DekCacheSettings) {
    this.#ttlMs = settings.ttlMs;
    this.#max = settings.maxEntries;
    this.#clock = settings.clock;
    const every = settings.sweepEveryMs ?? Math.min(settings.ttlMs, 5000);
    if (every > 0 && this.#enabled) {
      this.#timer = setInterval(() => this.sweep(), every);
      this.#timer.unref();
    }
  }

  get #enabled(): boolean {
    return this.#max > 0 && this.#ttlMs > 0;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** A copy of the DEK of (kid, wrapped, context), from memory or from unwrap(). */
  async get(
    kid: string,
    wrapped: string,
    context: SealContext,
    unwrap: () => Promise<Buffer>,
  ): Promise<Buffer> {
    if (!this.#enabled || this.#closed) {
      this.misses++;
      return unwrap();
    }
    const key = `${kid}\n${context.secret}\n${context.version}\n${wrapped}`;
    const hit = this.#entries.get(key);
    if (hit && hit.expiresAt > this.#clock.now()) return Buffer.from(hit.dek);
    if (hit) this.#drop(key);
    let pending = this.#inflight.get(key);
    if (!pending) {
      this.misses++;
      pending = unwrap().then(
        (dek) => {
          this.#inflight.delete(key);
          if (!this.#closed) {
            while (this.#entries.size >= this.#max) this.#dropOldest();
            this.#entries.set(key, { dek: Buffer.from(dek), expiresAt: this.#clock.now() + this.#ttlMs });
          }
          // Every waiter copies `dek` in a microtask of this resolution; a macrotask runs only after them all.
          setImmediate(() => dek.fill(0));
          return dek;
        },
        (err: unknown) => {
          this.#inflight.delete(key);
          throw err;
        },
      );
      this.#inflight.set(key, pending);
    }
    return Buffer.from(await pending);
  }

  /** Drops expired entries. */
  sweep(): void {
    const now = this.#clock.now();
    for (const [key, entry] of [...this.#entries]) if (entry.expiresAt <= now) this.#drop(key);
  }

  /** Drops everything and stops the sweep timer. */
  close(): void {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    for (const key of [...this.#entries.keys()]) this.#drop(key);
  }

  #dropOldest(): void {
    const first = this.#entries.keys().next();
    if (!first.done) this.#drop(first.value);
  }

  #drop(key: string): void {
    const entry = this.#entries.get(key);
    if (!entry) return;
    entry.dek.fill(0);
    this.#entries.delete(key);
  }
}
