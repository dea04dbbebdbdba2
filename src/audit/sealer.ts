// The sealer builds the hash chain behind the appenders. Every API and worker process appends to the audit stream
// with a plain XADD (or inside its commit script), so Redis alone gives the events one total order and no append
// ever waits on another. The sealer, one process at a time (a lock), reads the events after the sealed head in
// that order, hashes them (chain.ts) and writes their chain entries and the new head in one script that first
// checks the head is still the one it read: a second sealer that raced it (a paused process whose lock expired)
// loses that check and starts over, so the chain never forks. It then signs a checkpoint every so many events,
// every so often, at every UTC day boundary (so each archived day ends on one), and whenever an export asks.
import { createHash, type KeyObject, randomUUID } from 'node:crypto';
import type { Clock } from '../clock.ts';
import type { Logger } from '../logging/logger.ts';
import { duplicateClient, type RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import { decodeAuditEntry } from './audit-log.ts';
import { checkpointHash, eventDigest, GENESIS_HASH, keyId, linkHash, signCheckpoint } from './chain.ts';
import type { ChainStore } from './chain-store.ts';
import { compareStreamIds } from './verifier.ts';

export interface SealerSettings {
  /** A checkpoint at least every this many events. */
  checkpointEvents: number;
  /** …and at least this often while events keep coming. */
  checkpointIntervalMs: number;
  /** Events hashed per script call. */
  batch: number;
}

const LOCK_MS = 15_000;
const WAIT_MS = 1000;
/** How long events gather between rounds once the sealer has caught up: the most sealing lags under load. */
const GATHER_MS = 100;

// KEYS: head, chain. ARGV: expected seq, then id, seq, digest, prev, hash for each event.
const SEAL_SCRIPT = `
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if seq ~= tonumber(ARGV[1]) then return 0 end
local n = (#ARGV - 1) / 5
for i = 0, n - 1 do
  local b = 2 + i * 5
  redis.call('XADD', KEYS[2], ARGV[b], 's', ARGV[b + 1], 'd', ARGV[b + 2], 'p', ARGV[b + 3], 'h', ARGV[b + 4])
end
local last = 2 + (n - 1) * 5
redis.call('HSET', KEYS[1], 'id', ARGV[last], 'seq', ARGV[last + 1], 'hash', ARGV[last + 4])
return 1
`;

// KEYS: head, checkpoints, wanted. ARGV: expected cpN, id, json, n, seq, hash (of the checkpoint), at.
const CHECKPOINT_SCRIPT = `
local n = tonumber(redis.call('HGET', KEYS[1], 'cpN') or '0')
if n ~= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[2], ARGV[2], 'c', ARGV[3])
redis.call('HSET', KEYS[1], 'cpN', ARGV[4], 'cpSeq', ARGV[5], 'cpHash', ARGV[6], 'cpAt', ARGV[7], 'cpId', ARGV[2])
return 1
`;

// KEYS: lock. ARGV: token, ms. Take the lock if free or renew it if ours.
const LOCK_SCRIPT = `
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`;

const UNLOCK_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

type Entry = [string, string[]];

const dayOf = (id: string): number => Math.floor(Number(id.split('-')[0]) / 86_400_000);

function digestOf(id: string, fields: string[]): string {
  try {
    const event = decodeAuditEntry(id, fields);
    if (event) return eventDigest(event);
  } catch {
    // An entry that does not decode is sealed as it is: verification then reports it as altered.
  }
  return createHash('sha256')
    .update(`unreadable\n${fields.join('\n')}`)
    .digest('hex');
}

/** Events hashed between two turns of the event loop. */
const YIELD_EVERY = 50;

export class AuditSealer {
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;
  readonly #store: ChainStore;
  readonly #signer: KeyObject;
  readonly #keyId: string;
  readonly #settings: SealerSettings;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #token = randomUUID();
  /** Work done after each round while holding the lock (the archiver). */
  readonly #afterRound: Array<() => Promise<void>> = [];
  #blocking: RedisClient | undefined;
  #running: Promise<void> | undefined;
  #closed = false;

  constructor(options: {
    redis: RedisClient;
    keys: RedisKeys;
    store: ChainStore;
    signer: KeyObject;
    publicKey: KeyObject;
    settings: SealerSettings;
    clock: Clock;
    logger: Logger;
  }) {
    this.#redis = options.redis;
    this.#keys = options.keys;
    this.#store = options.store;
    this.#signer = options.signer;
    this.#keyId = keyId(options.publicKey);
    this.#settings = options.settings;
    this.#clock = options.clock;
    this.#log = options.logger.child({ component: 'audit-sealer' });
  }

  /** Runs `task` after every sealing round, under the sealer's lock. */
  afterRound(task: () => Promise<void>): void {
    this.#afterRound.push(task);
  }

  /**
   * Seals the next batch of events after the head. Returns how many were sealed (0: nothing new, or another
   * sealer moved the head first). Stops a batch at a UTC day boundary, so that day's last event gets a checkpoint
   * before the next day's first one is sealed.
   */
  async sealOnce(): Promise<number> {
    const head = await this.#store.head();
    const entries = (await this.#redis.xrange(
      this.#keys.audit(),
      head.id ? `(${head.id}` : '-',
      '+',
      'COUNT',
      this.#settings.batch,
    )) as Entry[];
    if (entries.length === 0) return 0;
    if (head.id && head.checkpoint?.id !== head.id && dayOf(entries[0]![0]) !== dayOf(head.id)) {
      // The day turned since the last sealed event: sign that day's end first.
      if (!(await this.checkpoint(head))) return 0;
    }
    const args: string[] = [String(head.seq)];
    let { seq, hash: prev } = head;
    const firstDay = dayOf(entries[0]![0]);
    let hashed = 0;
    for (const [id, fields] of entries) {
      if (dayOf(id) !== firstDay) break;
      // In a process that also serves the API, a batch hashed in one go held its event loop for milliseconds (the
      // secret read's p99, docs/architecture.md "The sealer yields"): give requests a turn every few dozen events.
      // The head check in SEAL_SCRIPT makes the pause harmless: a sealer that lost the race starts again.
      if (++hashed % YIELD_EVERY === 0) await new Promise((resolve) => setImmediate(resolve));
      seq += 1;
      const digest = digestOf(id, fields);
      const hash = linkHash(seq, prev, digest);
      args.push(id, String(seq), digest, prev, hash);
      prev = hash;
    }
    const done = await this.#redis.eval(
      SEAL_SCRIPT,
      2,
      this.#keys.auditHead(),
      this.#keys.auditChain(),
      ...args,
    );
    return done === 1 ? (args.length - 1) / 5 : 0;
  }

  /** Signs a checkpoint at the current head if one is due (or `force`). Returns whether one was written. */
  async checkpointIfDue(force = false): Promise<boolean> {
    const head = await this.#store.head();
    if (!head.id || head.checkpoint?.seq === head.seq) return false;
    const last = head.checkpoint;
    const wanted = await this.#redis.get(this.#keys.auditCheckpointWanted());
    // Without a checkpoint yet, the oldest unsigned event is the first one sealed.
    const since = last ? last.at : await this.#firstSealedAt();
    const due =
      force ||
      head.seq - (last?.seq ?? 0) >= this.#settings.checkpointEvents ||
      this.#clock.now() - since >= this.#settings.checkpointIntervalMs ||
      (wanted !== null && compareStreamIds(wanted, head.id) <= 0);
    if (!due) return false;
    const written = await this.checkpoint(head);
    if (written && wanted !== null && compareStreamIds(wanted, head.id) <= 0) {
      await this.#redis.eval(UNLOCK_SCRIPT, 1, this.#keys.auditCheckpointWanted(), wanted);
    }
    return written;
  }

  async #firstSealedAt(): Promise<number> {
    const [first] = (await this.#redis.xrange(this.#keys.auditChain(), '-', '+', 'COUNT', 1)) as Entry[];
    return first ? Number(first[0].split('-')[0]) : this.#clock.now();
  }

  /** Signs a checkpoint for the given head. */
  async checkpoint(head: Awaited<ReturnType<ChainStore['head']>>): Promise<boolean> {
    if (!head.id) return false;
    const n = (head.checkpoint?.n ?? 0) + 1;
    let prevCheckpoint = GENESIS_HASH;
    if (head.checkpoint) {
      // Trimmed with its day, the last checkpoint is kept in the anchor.
      const anchor = (await this.#store.anchor()).checkpoint;
      const previous =
        (await this.#store.checkpointAt(head.checkpoint.id)) ??
        (anchor?.n === head.checkpoint.n ? anchor : null);
      if (previous) prevCheckpoint = checkpointHash(previous);
    }
    const now = this.#clock.now();
    const record = signCheckpoint(
      {
        type: 'checkpoint',
        n,
        seq: head.seq,
        id: head.id,
        hash: head.hash,
        prevCheckpoint,
        time: new Date(now).toISOString(),
        keyId: this.#keyId,
      },
      this.#signer,
    );
    const done = await this.#redis.eval(
      CHECKPOINT_SCRIPT,
      2,
      this.#keys.auditHead(),
      this.#keys.auditCheckpoints(),
      String(n - 1),
      head.id,
      JSON.stringify(record),
      String(n),
      String(head.seq),
      head.hash,
      String(now),
    );
    return done === 1;
  }

  /** Seals and checkpoints everything appended so far (tests, and a worker's shutdown). */
  async drain(): Promise<void> {
    while ((await this.sealOnce()) > 0) await this.checkpointIfDue();
    await this.checkpointIfDue(true);
  }

  /** Starts the sealing loop (worker component). */
  start(): void {
    if (this.#running) return;
    this.#blocking = duplicateClient(this.#redis, { blocking: true });
    this.#blocking.on('error', () => {});
    this.#running = this.#loop();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#blocking?.disconnect();
    await this.#running?.catch(() => {});
    await this.#redis.eval(UNLOCK_SCRIPT, 1, this.#keys.auditSealerLock(), this.#token).catch(() => {});
  }

  async #loop(): Promise<void> {
    let lockedAt = 0;
    while (!this.#closed) {
      try {
        // The lock is renewed a few times per its lifetime, not every round. Should it lapse anyway, the head
        // check in the sealing script still keeps a second sealer from forking the chain.
        if (Date.now() - lockedAt > LOCK_MS / 3) {
          const mine = await this.#redis.eval(
            LOCK_SCRIPT,
            1,
            this.#keys.auditSealerLock(),
            this.#token,
            String(LOCK_MS),
          );
          if (mine !== 1) {
            lockedAt = 0;
            await this.#wait(undefined);
            continue;
          }
          lockedAt = Date.now();
        }
        // Another process may have sealed while this one waited for the lock: the rounds below start from Redis.
        const sealed = await this.sealOnce();
        await this.checkpointIfDue();
        for (const task of this.#afterRound) await task();
        if (sealed === 0) await this.#wait((await this.#store.head()).id ?? '0-0');
        // A partial batch means the sealer has caught up: let events gather for a moment instead of sealing them
        // a few at a time, which under a steady load would keep Redis and this process busy for little.
        else if (sealed < this.#settings.batch) await this.#pause(GATHER_MS);
      } catch (err) {
        if (this.#closed) return;
        this.#log.error({ err: { message: (err as Error).message } }, 'audit sealing failed; retrying');
        await new Promise((resolve) => setTimeout(resolve, WAIT_MS));
      }
    }
  }

  async #pause(ms: number): Promise<void> {
    if (!this.#closed) await new Promise((resolve) => setTimeout(resolve, ms));
  }

  /** Waits up to a second for an event after `after` (or just a second when not holding the lock). */
  async #wait(after: string | undefined): Promise<void> {
    if (this.#closed) return;
    if (!this.#blocking || after === undefined) {
      await new Promise((resolve) => setTimeout(resolve, WAIT_MS));
      return;
    }
    await this.#blocking.xread('BLOCK', WAIT_MS, 'STREAMS', this.#keys.audit(), after).catch(() => {});
  }
}
