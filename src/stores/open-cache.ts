// A bounded memo of opened (decrypted) local-store values, for the secret read path (rotation/secret-reader.ts).
//
// What it may and may not decide: nothing about which version a read serves. An entry is found only by the exact
// sealed text Redis returned in this very read (the value's AAD name and version id, and the sealed bytes, which
// carry a fresh data key and IV per write), so a hit returns what opening that text would return: it saves the
// AES-256-GCM opens and the JSON parse, never a Redis read. Which version to serve (I1) is decided on every read from
// Redis, in the same round trip that returns the sealed text.
//
// How long plaintext stays: an entry lives at most `ttlMs` after it was opened (then it must be opened again), is
// dropped as soon as a read of its secret shows its version no longer live (`retain`), and there are at most
// `maxEntries` (oldest dropped first). The plaintext is held as a Buffer and zeroed when its entry goes; a string
// made from it for one answer is garbage once that answer is sent (JavaScript cannot wipe a string). A timer sweeps
// expired entries even when nothing reads, so an entry never outlives its bound by more than one sweep interval.
import type { Clock } from '../clock.ts';

interface Entry {
  /** The sealed text it was opened from: a hit must match it exactly. */
  sealed: string;
  plain: Buffer;
  expiresAt: number;
}

export interface OpenCacheSettings {
  ttlMs: number;
  maxEntries: number;
  clock: Clock;
  /** How often expired entries are swept (ms); 0: never by timer (tests call sweep()). Default min(ttlMs, 1000). */
  sweepEveryMs?: number;
}

export class OpenCache {
  /** secret name → version id → entry; a Map keeps insertion order, so the oldest names come first. */
  readonly #byName = new Map<string, Map<string, Entry>>();
  #size = 0;
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #clock: Clock;
  #timer: NodeJS.Timeout | undefined;
  /** After close(): what an open still in flight returns is parsed, zeroed and not kept. */
  #closed = false;

  constructor(settings: OpenCacheSettings) {
    this.#ttlMs = settings.ttlMs;
    this.#max = settings.maxEntries;
    this.#clock = settings.clock;
    const every = settings.sweepEveryMs ?? Math.min(settings.ttlMs, 1000);
    if (every > 0 && this.#max > 0 && this.#ttlMs > 0) {
      this.#timer = setInterval(() => this.sweep(), every);
      this.#timer.unref();
    }
  }

  get size(): number {
    return this.#size;
  }

  /**
   * parse() of the plaintext opened from exactly `sealed` for (name, versionId), or of what open() returns, which is
   * then kept. parse runs at once on the cached bytes, before any other read can drop (and zero) them.
   */
  async open<T>(
    name: string,
    versionId: string,
    sealed: string,
    open: () => Promise<Buffer>,
    parse: (plain: Buffer) => T,
  ): Promise<T> {
    if (this.#max <= 0 || this.#ttlMs <= 0 || this.#closed) {
      const plain = await open();
      try {
        return parse(plain);
      } finally {
        plain.fill(0);
      }
    }
    const hit = this.#byName.get(name)?.get(versionId);
    if (hit && hit.sealed === sealed && hit.expiresAt > this.#clock.now()) return parse(hit.plain);
    if (hit) this.#drop(name, versionId);
    // The buffer open() returns becomes the cache's: zeroed when its entry goes.
    const kept = await open();
    if (this.#closed) {
      try {
        return parse(kept);
      } finally {
        kept.fill(0);
      }
    }
    // A read that missed at the same time may have kept its own copy meanwhile: this one replaces it.
    this.#drop(name, versionId);
    while (this.#size >= this.#max) this.#dropOldest();
    let map = this.#byName.get(name);
    if (!map) {
      map = new Map();
      this.#byName.set(name, map);
    }
    map.set(versionId, { sealed, plain: kept, expiresAt: this.#clock.now() + this.#ttlMs });
    this.#size++;
    return parse(kept);
  }

  /** Drops every entry of `name` whose version is not among `live` (what Redis just said may still be served). */
  retain(name: string, live: ReadonlyArray<string | null | undefined>): void {
    const versions = this.#byName.get(name);
    if (!versions) return;
    for (const versionId of [...versions.keys()]) if (!live.includes(versionId)) this.#drop(name, versionId);
  }

  /** Drops every entry of `name` (its secret was removed or rewritten by this process). */
  forget(name: string): void {
    const versions = this.#byName.get(name);
    if (!versions) return;
    for (const versionId of [...versions.keys()]) this.#drop(name, versionId);
  }

  /** Drops expired entries. */
  sweep(): void {
    const now = this.#clock.now();
    for (const [name, versions] of [...this.#byName]) {
      for (const [versionId, entry] of [...versions]) if (entry.expiresAt <= now) this.#drop(name, versionId);
    }
  }

  /** Drops everything and stops the sweep timer. */
  close(): void {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    for (const name of [...this.#byName.keys()]) this.forget(name);
  }

  #dropOldest(): void {
    const first = this.#byName.entries().next().value;
    if (!first) return;
    const [name, versions] = first;
    const versionId = versions.keys().next().value;
    if (versionId === undefined) this.#byName.delete(name);
    else this.#drop(name, versionId);
  }

  #drop(name: string, versionId: string): void {
    const versions = this.#byName.get(name);
    const entry = versions?.get(versionId);
    if (!versions || !entry) return;
    entry.plain.fill(0);
    versions.delete(versionId);
    this.#size--;
    if (versions.size === 0) this.#byName.delete(name);
  }
}
