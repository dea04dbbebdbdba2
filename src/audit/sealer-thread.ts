// The audit sealer's loop in a worker thread, for a process that serves the API too (`npm start`): hashing the
// events (canonical JSON and two SHA-256 each), reading them in batches of a thousand and signing checkpoints then
// run beside the API's event loop instead of on it (docs/architecture.md, "The sealer off the API's event loop").
// The thread builds its own Redis connection and the same AuditSealer (and archiver) the worker component runs
// in-process; the sealing lock and the head check keep it one sealer among all processes, as before. The process
// keeps its in-process AuditSealer object for on-demand sealing (tests, `drain`), which the same lock and check make
// safe beside the thread.
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { systemClock } from '../clock.ts';
import type { RedisSettings } from '../config/redis-topology.ts';
import { createLogger, type Logger } from '../logging/logger.ts';
import { createRedisClient } from '../redis/client.ts';
import { RedisKeys } from '../registry/keys.ts';
import { AuditArchiver } from './archive.ts';
import { ChainStore } from './chain-store.ts';
import { AuditSealer, type SealerSettings } from './sealer.ts';

export interface SealerThreadData {
  kind: 'keyturn-audit-sealer';
  redis: RedisSettings;
  prefix: string;
  clustered: boolean;
  /** PKCS#8 PEM of KEYTURN_AUDIT_SIGNING_KEY (memory to memory, never written anywhere). */
  signerPem: string;
  /** SPKI PEMs of the keys checkpoints are verified with (the archiver's verification). */
  publicKeysPem: string[];
  settings: SealerSettings;
  archive?: { dir: string; retentionDays: number; streamDays: number };
  log: { level: string; format: 'json' | 'pretty' };
}

/** Runs the sealer loop in a worker thread; restarts it should the thread die. */
export class SealerThread {
  readonly #data: SealerThreadData;
  readonly #log: Logger;
  #worker: Worker | undefined;
  #closed = false;

  constructor(data: Omit<SealerThreadData, 'kind'>, logger: Logger) {
    this.#data = { kind: 'keyturn-audit-sealer', ...data };
    this.#log = logger.child({ component: 'audit-sealer' });
  }

  /** Starts the thread; resolves once its sealer runs (or the thread failed: it is restarted). */
  start(): Promise<void> {
    if (this.#worker || this.#closed) return Promise.resolve();
    const worker = new Worker(new URL(import.meta.url), { workerData: this.#data });
    this.#worker = worker;
    const ready = new Promise<void>((resolve) => {
      worker.once('message', () => resolve());
      worker.once('exit', () => resolve());
    });
    worker.on('error', (err) =>
      this.#log.error({ err: { message: err.message } }, 'the audit sealer thread failed; restarting it'),
    );
    worker.on('exit', () => {
      if (this.#worker === worker) this.#worker = undefined;
      if (!this.#closed) setTimeout(() => void this.start(), 1000).unref();
    });
    return ready;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const worker = this.#worker;
    if (!worker) return;
    const exited = new Promise((resolve) => worker.once('exit', resolve));
    worker.postMessage('close');
    // A thread that does not stop within its lock's wait is ended; the next sealer resumes from Redis.
    const timer = setTimeout(() => void worker.terminate(), 5000);
    await exited;
    clearTimeout(timer);
  }
}

async function runThread(data: SealerThreadData): Promise<void> {
  const logger = createLogger({ level: data.log.level as Logger['level'], format: data.log.format });
  const redis = createRedisClient(data.redis, 'commands', `${data.prefix}:audit-sealer`);
  redis.on('error', (err: Error) =>
    logger.warn({ err: { message: err.message } }, 'redis connection error (audit sealer thread)'),
  );
  await redis.connect();
  const keys = new RedisKeys(data.prefix, { clustered: data.clustered });
  const store = new ChainStore(redis, keys);
  const signer = createPrivateKey(data.signerPem);
  const sealer = new AuditSealer({
    redis,
    keys,
    store,
    signer,
    publicKey: createPublicKey(signer),
    settings: data.settings,
    clock: systemClock,
    logger,
  });
  if (data.archive) {
    const archiver = new AuditArchiver({
      redis,
      keys,
      store,
      publicKeys: data.publicKeysPem.map((pem) => createPublicKey(pem)),
      settings: data.archive,
      clock: systemClock,
      logger,
    });
    sealer.afterRound(() => archiver.runIfDue());
  }
  sealer.start();
  parentPort?.postMessage('ready');
  parentPort?.on('message', async (message) => {
    if (message !== 'close') return;
    await sealer.close().catch(() => {});
    await redis.quit().catch(() => redis.disconnect());
    process.exit(0);
  });
}

if (!isMainThread && (workerData as SealerThreadData | undefined)?.kind === 'keyturn-audit-sealer') {
  await runThread(workerData as SealerThreadData);
}
