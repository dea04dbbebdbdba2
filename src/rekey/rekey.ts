// Rekey: every sealed value of the local store gets its data key wrapped again by the primary key provider
// (KEYTURN_KEK_PROVIDER), so that an old master key, KMS key, transit key version or a whole provider can be retired.
//
//   POST /v1/rekey (admin) or `keyturn rekey` ──▶ status record <prefix>:rekey {status: running} + audit
//     kek.rekey.requested ──▶ BullMQ queue `rekey`, one job per rekey (its id) ──▶ a worker walks the store:
//       1. counts the values by key id (`before`, `total`, `pending`: how many need a rewrap),
//       2. rewraps each one that is not current (LocalStore.rewrap: in place, only if unchanged since read, durable),
//       3. walks again until a walk finds nothing left to rewrap (values written meanwhile by a replica still on the
//          old key), then `succeeded` with `after`, and kek.rekey.finished.
//
// Online: the data is never re-encrypted, only its 32-byte key re-wrapped, and every configured provider still
// unwraps, so reads and rotations go on during a rekey; a rotation that replaces a value while it is being rewrapped
// wins (the rewrap sees the value changed and leaves it). Resumable: the walk is idempotent (a current value costs
// a JSON parse), so a worker killed mid-walk leaves its job to stall and another worker (or the same one restarted)
// runs it again from the start, keeping the counts; the status says how often it resumed. Progress: the status
// record, updated at most every 500 ms and at each phase, answered by GET /v1/rekey and followed by `keyturn rekey`.
// A value no configured provider can open is listed (secret and version, never content) and fails the rekey at the
// end, after every other value was rewrapped: the old key must stay until those are dealt with.
import { randomUUID } from 'node:crypto';
import { type Job, Queue, type RedisConnection, Worker } from 'bullmq';
import pLimit from 'p-limit';
import type { AuditLog } from '../audit/audit-log.ts';
import type { Clock } from '../clock.ts';
import type { Keyring } from '../crypto/envelope.ts';
import { scrubError } from '../crypto/scrub.ts';
import type { Logger } from '../logging/logger.ts';
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import type { Failpoints } from '../rotation/failpoints.ts';
import type { LocalStore, SealedField } from '../stores/local-store.ts';

export const REKEY_QUEUE = 'rekey';

/** How many walks after the first may still find values to rewrap before the rekey gives up (a writer on an old key). */
const MAX_WALKS = 5;
/** Values rewrapped at once: each is a provider call or two (KMS Decrypt, then Encrypt). */
const CONCURRENCY = 8;
/** Unopenable values listed in the status (the count is exact). */
const MAX_LISTED = 20;

export interface RekeyStatus {
  id: string;
  status: 'running' | 'succeeded' | 'failed';
  phase: 'queued' | 'counting' | 'rewrapping' | 'checking' | 'done';
  requestedBy: string;
  requestedAt: string;
  updatedAt: string;
  finishedAt?: string;
  /** The key every value is moved to. */
  to: string;
  /** Values in the store when the rekey counted them, by key id; and after it finished. */
  before?: Record<string, number>;
  after?: Record<string, number>;
  /** Values in the store, and how many of them needed a rewrap, at the count. */
  total?: number;
  pending?: number;
  /** Values rewrapped so far (every walk and every resumption together). */
  rewrapped: number;
  /** Values a rotation replaced or removed while they were being rewrapped (already on the primary key). */
  changed: number;
  /** Walks over the store so far. */
  walks: number;
  /**
   * Times a worker took the rekey up again after its previous run stopped: a worker that died (a crash, SIGKILL, a
   * deploy) or a run that failed on a provider or Redis outage and was retried.
   */
  resumed: number;
  /** Values no configured provider could open: secret name and version only. */
  unopenable: Array<{ secret: string; version: string; kid: string; reason: string }>;
  unopenableCount: number;
  /** Why it failed, or the last transient error it is retrying after. */
  error?: string;
}

export interface RekeySettings {
  /** BullMQ's prefix for the queue. */
  prefix: string;
  /** How long a worker holds the job without renewing before another may take it (a SIGKILLed worker's lock). */
  lockMs: number;
  /** First retry delay after a provider outage; doubling. */
  backoffMs: number;
}

export interface RekeyDeps {
  redis: RedisClient;
  connection: RedisClient;
  keys: RedisKeys;
  store: LocalStore;
  keyring: Keyring;
  audit: AuditLog;
  clock: Clock;
  logger: Logger;
  settings: RekeySettings;
  /** Test failpoints: rekey-before-rewrap (sleep: a slow provider), rekey-after-rewrap (kill: a crash mid-walk). */
  failpoints?: Failpoints;
}

export class RekeyService {
  readonly queue: Queue;
  readonly #deps: RekeyDeps;
  readonly #log: Logger;
  #worker: Worker | undefined;

  constructor(deps: RekeyDeps) {
    this.#deps = deps;
    this.#log = deps.logger.child({ component: 'rekey' });
    this.queue = new Queue(REKEY_QUEUE, {
      connection: deps.connection as unknown as RedisConnection,
      prefix: deps.settings.prefix,
    } as never);
  }

  /** The key providers of this process, as an operator may see them (never key material). */
  providers(): { primary: Record<string, unknown>; readable: Array<Record<string, unknown>> } {
    const { keyring } = this.#deps;
    return { primary: keyring.primary.describe(), readable: keyring.all.slice(1).map((p) => p.describe()) };
  }

  async status(): Promise<RekeyStatus | null> {
    const raw = await this.#deps.redis.get(this.#deps.keys.rekey());
    return raw ? (JSON.parse(raw) as RekeyStatus) : null;
  }

  /**
   * Starts a rekey to the primary key, or answers the one running (created: false): one at a time. The record is
   * written before the job is queued, so a crash between leaves a running record that the next call queues again.
   */
  async start(actor: string): Promise<{ status: RekeyStatus; created: boolean }> {
    const running = await this.status();
    if (running?.status === 'running') {
      await this.#enqueue(running.id);
      return { status: running, created: false };
    }
    const now = new Date(this.#deps.clock.now()).toISOString();
    const status: RekeyStatus = {
      id: randomUUID(),
      status: 'running',
      phase: 'queued',
      requestedBy: actor,
      requestedAt: now,
      updatedAt: now,
      to: this.#deps.keyring.primary.kid,
      rewrapped: 0,
      changed: 0,
      walks: 0,
      resumed: 0,
      unopenable: [],
      unopenableCount: 0,
    };
    // Only one: a concurrent start that wrote first wins, and this one answers it.
    const written = await this.#deps.redis.eval(
      `local cur = redis.call('GET', KEYS[1])
       if cur and cjson.decode(cur)['status'] == 'running' then return cur end
       redis.call('SET', KEYS[1], ARGV[1])
       return false`,
      1,
      this.#deps.keys.rekey(),
      JSON.stringify(status),
    );
    if (typeof written === 'string') return { status: JSON.parse(written) as RekeyStatus, created: false };
    await this.#deps.audit.append({
      actor,
      action: 'kek.rekey.requested',
      outcome: 'success',
      details: { rekey: status.id, to: status.to },
    });
    await this.#enqueue(status.id);
    return { status, created: true };
  }

  async #enqueue(id: string): Promise<void> {
    await this.queue.add(
      'rekey',
      { id },
      {
        jobId: `rekey-${id}`,
        attempts: 20,
        backoff: { type: 'exponential', delay: this.#deps.settings.backoffMs },
        removeOnComplete: true,
        removeOnFail: 100,
      },
    );
  }

  async startWorker(): Promise<void> {
    const { settings } = this.#deps;
    this.#worker = new Worker(REKEY_QUEUE, (job) => this.#job(job), {
      connection: this.#deps.connection as unknown as RedisConnection,
      prefix: settings.prefix,
      lockDuration: settings.lockMs,
      stalledInterval: settings.lockMs,
      // A rekey killed with its worker is resumed however often that happens: each run is idempotent.
      maxStalledCount: 1000,
      concurrency: 1,
    } as never);
    this.#worker.on('error', (err) => this.#log.error({ err: scrubError(err) }, 'rekey worker error'));
    await this.#worker.waitUntilReady();
  }

  async close(): Promise<void> {
    await this.#worker?.close();
    await this.queue.close();
  }

  async #job(job: Job): Promise<void> {
    const { id } = job.data as { id: string };
    const status = await this.status();
    if (!status || status.id !== id || status.status !== 'running') return;
    const last = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
    try {
      await this.run(status);
    } catch (err) {
      const message = scrubError(err).message;
      if (last) {
        await this.#finish(status, 'failed', { error: message });
      } else {
        await this.#save(status, { error: `${message} (retrying)` });
      }
      throw err;
    }
  }

  /** Runs (or resumes) the rekey `status` describes to its end. Exposed for tests that drive it without a queue. */
  async run(status: RekeyStatus): Promise<RekeyStatus> {
    const { store, keyring, audit } = this.#deps;
    const resuming = status.phase !== 'queued';
    // A transit key may have a newer version since start: what is current is decided now.
    await keyring.primary.check();
    status.to = keyring.primary.kid;
    if (resuming) status.resumed++;
    await this.#save(status, { phase: 'counting' }, true);
    await audit.append({
      actor: 'keyturn',
      action: resuming ? 'kek.rekey.resumed' : 'kek.rekey.started',
      outcome: 'success',
      details: { rekey: status.id, to: status.to, resumed: status.resumed },
    });

    const counted = await this.#count();
    status.before ??= counted.byKid;
    status.total ??= counted.total;
    status.pending ??= counted.pending;
    await this.#save(status, { phase: 'rewrapping' }, true);

    for (let walk = 0; ; walk++) {
      const unopenable: RekeyStatus['unopenable'] = [];
      let unopenableCount = 0;
      let left = 0;
      const limit = pLimit(CONCURRENCY);
      for await (const batch of store.sealedValues()) {
        await Promise.all(
          batch.map((value) =>
            limit(async () => {
              if (store.describeSealed(value).current) return;
              left++;
              await this.#deps.failpoints?.hit('rekey-before-rewrap');
              const outcome = await this.#rewrap(value);
              await this.#deps.failpoints?.hit('rekey-after-rewrap');
              if (outcome === 'rewrapped') status.rewrapped++;
              else if (outcome === 'changed') status.changed++;
              else if (outcome !== 'current') {
                unopenableCount++;
                if (unopenable.length < MAX_LISTED) unopenable.push(outcome.unopenable);
              }
            }),
          ),
        );
        await this.#save(status, {});
      }
      status.walks++;
      status.unopenable = unopenable;
      status.unopenableCount = unopenableCount;
      // Done when a walk rewrapped nothing but what cannot be opened (a walk that rewrapped values proves nothing
      // about those written behind it: walk again).
      if (left === unopenableCount) break;
      if (walk + 1 >= MAX_WALKS) {
        return this.#finish(status, 'failed', {
          error: `after ${MAX_WALKS} walks values sealed by another key still appear: a Keyturn process still runs with another KEYTURN_KEK_PROVIDER or key; give every replica the same key settings, then rekey again`,
        });
      }
      await this.#save(status, { phase: 'checking' }, true);
    }

    const after = await this.#count();
    status.after = after.byKid;
    if (status.unopenableCount > 0) {
      return this.#finish(status, 'failed', {
        error: `${status.unopenableCount} value(s) could not be opened by any configured key provider (listed in unopenable) and keep their old key; every other value was rewrapped. Configure the key they name (KEYTURN_MASTER_KEY_PREVIOUS, KEYTURN_KMS_KEY_ID or KEYTURN_TRANSIT_KEY) and rekey again, or remove the credentials they belong to`,
      });
    }
    return this.#finish(status, 'succeeded', {});
  }

  /** Rewraps one value; a value no provider opens is reported, not thrown (the rest still get rewrapped). */
  async #rewrap(
    value: SealedField,
  ): Promise<'rewrapped' | 'current' | 'changed' | { unopenable: RekeyStatus['unopenable'][number] }> {
    try {
      return await this.#deps.store.rewrap(value);
    } catch (err) {
      if ((err as Error).name !== 'DecryptionError') throw err;
      return {
        unopenable: {
          secret: value.context.secret,
          version: value.context.version,
          kid: this.#deps.store.describeSealed(value).kid,
          reason: (err as Error).message,
        },
      };
    }
  }

  async #count(): Promise<{ byKid: Record<string, number>; total: number; pending: number }> {
    const byKid: Record<string, number> = {};
    let total = 0;
    let pending = 0;
    for await (const batch of this.#deps.store.sealedValues()) {
      for (const value of batch) {
        const { kid, current } = this.#deps.store.describeSealed(value);
        byKid[kid] = (byKid[kid] ?? 0) + 1;
        total++;
        if (!current) pending++;
      }
    }
    return { byKid, total, pending };
  }

  #savedAt = 0;

  /** Writes the status record (at most every 500 ms unless `force`), unless another rekey replaced it. */
  async #save(status: RekeyStatus, change: Partial<RekeyStatus>, force = false): Promise<void> {
    Object.assign(status, change);
    const now = this.#deps.clock.now();
    if (!force && now - this.#savedAt < 500) return;
    this.#savedAt = now;
    status.updatedAt = new Date(now).toISOString();
    await this.#deps.redis.eval(
      `local cur = redis.call('GET', KEYS[1])
       if cur and cjson.decode(cur)['id'] ~= ARGV[1] then return 0 end
       redis.call('SET', KEYS[1], ARGV[2])
       return 1`,
      1,
      this.#deps.keys.rekey(),
      status.id,
      JSON.stringify(status),
    );
  }

  async #finish(
    status: RekeyStatus,
    outcome: 'succeeded' | 'failed',
    change: Partial<RekeyStatus>,
  ): Promise<RekeyStatus> {
    const now = new Date(this.#deps.clock.now()).toISOString();
    await this.#save(status, { ...change, status: outcome, phase: 'done', finishedAt: now }, true);
    await this.#deps.audit.append({
      actor: 'keyturn',
      action: outcome === 'succeeded' ? 'kek.rekey.finished' : 'kek.rekey.failed',
      outcome: outcome === 'succeeded' ? 'success' : 'failure',
      details: {
        rekey: status.id,
        to: status.to,
        rewrapped: status.rewrapped,
        changed: status.changed,
        walks: status.walks,
        resumed: status.resumed,
        unopenable: status.unopenableCount,
        after: JSON.stringify(status.after ?? {}),
        ...(status.error ? { error: status.error } : {}),
      },
    });
    this.#log.info(
      { rekey: status.id, outcome, rewrapped: status.rewrapped, unopenable: status.unopenableCount },
      'rekey ended',
    );
    return status;
  }
}
