// The sync job: pushes one stored version of a credential to each of its sync destinations (src/sync/index.ts).
//
//   engine ──(single-user: set committed; any: finish committed; single-user rollback)──▶ secretChanged
//        ──▶ BullMQ queue `sync`, job `push` {credentialId, versionId} (ids only, I5)
//        ──▶ worker: reads the credential and the version from the store, asks whether the version still works
//            (current, or the pending of a single-user rotation whose set landed), pushes it, reports.
//
// A push never touches the rotation: it runs after the rotation's step committed and its failure is retried with
// backoff and reported (audit `credential.sync_failed` once per failing sync, `credential.synced` on success, both
// on GET /v1/events as `sync` events; the keyturn_sync_total metric), never rolled back.
import { type Job, Queue, type RedisConnection, Worker } from 'bullmq';
import type { AuditLog } from '../audit/audit-log.ts';
import { scrubError } from '../crypto/scrub.ts';
import { noteSecret, runInNewSecretScope } from '../crypto/secret-scope.ts';
import type { Logger } from '../logging/logger.ts';
import type { RedisClient } from '../redis/client.ts';
import type { Registry } from '../registry/registry.ts';
import type { Credential, SyncSpec } from '../registry/types.ts';
import type { RotationRepo } from '../rotation/rotation-repo.ts';
import { backoffDelay } from '../scheduling/queues.ts';
import { credentialSecretRef, type StoreSet } from '../stores/index.ts';
import type { SyncTargets } from './index.ts';
import { SyncError, type SyncPayload, type SyncResult, type SyncTarget } from './types.ts';

export const SYNC_QUEUE = 'sync';

export interface SyncJobData {
  credentialId: string;
  versionId: string;
  /** Indexes of the credential's sync entries whose failure was already reported (audit once per failing sync). */
  reported?: number[];
}

/** Told how every push ended; kept abstract so that this module does not depend on a metrics library. */
export interface SyncObserver {
  syncEnded(type: string, result: string): void;
  syncConflicts(type: string, count: number): void;
}

export interface SyncSettings {
  prefix: string;
  /** First retry delay; each later one doubles, capped at five minutes. */
  backoffMs: number;
  /** Attempts of one job before it gives up (the next rotation pushes again). */
  attempts: number;
  lockMs: number;
}

type Outcome = { ok: true; result: SyncResult } | { ok: false; error: { message: string }; reason: string };

export interface SyncDeps {
  connection: RedisClient;
  settings: SyncSettings;
  registry: Registry;
  rotations: RotationRepo;
  stores: StoreSet;
  audit: AuditLog;
  targets: SyncTargets;
  logger: Logger;
  observer?: SyncObserver;
}

export class SyncService {
  readonly queue: Queue;
  readonly #deps: SyncDeps;
  readonly #log: Logger;
  #worker: Worker | undefined;

  constructor(deps: SyncDeps) {
    this.#deps = deps;
    this.#log = deps.logger.child({ component: 'sync' });
    this.queue = new Queue(SYNC_QUEUE, {
      connection: deps.connection as unknown as RedisConnection,
      prefix: deps.settings.prefix,
    } as never);
  }

  /**
   * A version became the one a secret read returns (the engine's hook). Queues its push when the credential has sync
   * destinations. One job per version: a second call while the first waits is the same job.
   */
  async secretChanged(credential: Credential, versionId: string): Promise<void> {
    if (!credential.spec.sync?.length) return;
    await this.queue.add('push', { credentialId: credential.spec.id, versionId } satisfies SyncJobData, {
      jobId: `push-${credential.spec.id}-${versionId}`,
      attempts: this.#deps.settings.attempts,
      backoff: { type: 'custom' },
      removeOnComplete: true,
      removeOnFail: true,
    });
  }

  async start(): Promise<void> {
    const { settings } = this.#deps;
    this.#worker = new Worker(SYNC_QUEUE, (job) => runInNewSecretScope(() => this.#job(job)), {
      connection: this.#deps.connection as unknown as RedisConnection,
      prefix: settings.prefix,
      lockDuration: settings.lockMs,
      stalledInterval: settings.lockMs,
      concurrency: 4,
      settings: { backoffStrategy: (attemptsMade: number) => backoffDelay(attemptsMade, settings.backoffMs) },
    } as never);
    this.#worker.on('error', (err) => this.#log.error({ err: scrubError(err) }, 'sync worker error'));
    await this.#worker.waitUntilReady();
  }

  async close(): Promise<void> {
    await this.#worker?.close();
    await this.queue.close();
  }

  async #job(job: Job): Promise<void> {
    if (job.name !== 'push') {
      this.#log.warn({ job: job.name }, 'unknown sync job; dropped');
      return;
    }
    const data = job.data as SyncJobData;
    const last = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
    const failed = await this.run(data, { attempt: job.attemptsMade + 1, last });
    if (failed.length === 0) return;
    const reported = [...new Set([...(data.reported ?? []), ...failed])];
    if (reported.length !== (data.reported ?? []).length) {
      await job.updateData({ ...data, reported } satisfies SyncJobData).catch(() => {});
    }
    throw new Error(
      `sync of credential ${data.credentialId} version ${data.versionId}: ${failed.length} destination(s) failed; retrying`,
    );
  }

  /**
   * Pushes the version to every destination of the credential. Returns the indexes of the destinations that failed
   * (each reported once per job through `reported`); the caller retries the job.
   */
  async run(data: SyncJobData, options: { attempt: number; last: boolean }): Promise<number[]> {
    const { registry, stores, targets, audit } = this.#deps;
    const credential = await registry.findCredential(data.credentialId);
    const specs = credential?.spec.sync ?? [];
    if (!credential || specs.length === 0) return [];
    const store = stores.get(credential.spec.store);
    const ref = credentialSecretRef(credential.spec);
    const version = await store.read(ref, { versionId: data.versionId });
    if (!version) {
      // Dropped (a rolled-back pending) or pruned: a newer version's job pushes that one.
      for (const spec of specs) this.#deps.observer?.syncEnded(spec.type, 'superseded');
      return [];
    }
    noteSecret(version.value.password);
    const secrets = [version.value.password];
    const payload: SyncPayload = {
      credentialId: credential.spec.id,
      versionId: version.versionId,
      createdAt: version.createdAt,
      rotatedAt: await this.#rotatedAt(credential, version.versionId),
      fields: {
        username: version.value.username,
        password: version.value.password,
        host: version.value.host,
        port: version.value.port,
        ...(version.value.dbname ? { database: version.value.dbname } : {}),
        ...(version.value.accessKeyId ? { accessKeyId: version.value.accessKeyId } : {}),
      },
    };
    const oracle = { isLive: (versionId: string) => this.#isLive(credential, versionId) };
    const failed: number[] = [];
    for (const [index, spec] of specs.entries()) {
      const target = targets[spec.type] as SyncTarget<SyncSpec>;
      const outcome: Outcome = await target.push(spec, payload, oracle).then(
        (result) => ({ ok: true as const, result }),
        (error: unknown) => ({
          ok: false as const,
          // Scrubbed before anything keeps it: a message must never carry the password it failed to push.
          error: scrubError(error, secrets),
          reason: error instanceof SyncError ? error.reason : 'unavailable',
        }),
      );
      const where = { type: spec.type, namespace: spec.namespace, name: spec.name };
      if (outcome.ok) {
        const { result } = outcome;
        this.#deps.observer?.syncEnded(spec.type, result.secret.replace('-', '_'));
        if (result.conflicts > 0) this.#deps.observer?.syncConflicts(spec.type, result.conflicts);
        const wrote = result.secret === 'created' || result.secret === 'replaced';
        if (wrote || result.restarted.length > 0 || result.conflicts > 0) {
          await audit.append({
            actor: 'keyturn',
            action: 'credential.synced',
            outcome: 'success',
            credential: credential.spec.id,
            details: {
              ...where,
              version: payload.versionId,
              result: result.secret,
              restarted: result.restarted.join(','),
              conflicts: result.conflicts,
              attempt: options.attempt,
            },
          });
        }
        this.#log.info(
          { credential: credential.spec.id, version: payload.versionId, ...where, ...result },
          'sync pushed',
        );
        continue;
      }
      const { reason } = outcome;
      this.#deps.observer?.syncEnded(spec.type, reason.replace('-', '_'));
      failed.push(index);
      this.#log.warn(
        {
          credential: credential.spec.id,
          version: payload.versionId,
          ...where,
          attempt: options.attempt,
          err: { message: outcome.error.message },
        },
        options.last
          ? 'sync failed and gives up; the rotation stands, the next rotation pushes again'
          : 'sync failed; will retry',
      );
      if (!(data.reported ?? []).includes(index)) {
        await audit.append({
          actor: 'keyturn',
          action: 'credential.sync_failed',
          outcome: 'failure',
          credential: credential.spec.id,
          details: {
            ...where,
            version: payload.versionId,
            reason,
            error: outcome.error.message,
            attempt: options.attempt,
            retrying: !options.last,
          },
        });
      }
    }
    return failed;
  }

  /** Whether a version is one a secret read may return now (rotation/secret-reader.ts, without the probe). */
  async #isLive(credential: Credential, versionId: string): Promise<boolean> {
    const store = this.#deps.stores.get(credential.spec.store);
    const version = await store.read(credentialSecretRef(credential.spec), { versionId });
    if (!version) return false;
    if (version.stages.includes('current')) return true;
    if (!version.stages.includes('pending') || credential.spec.strategy !== 'single-user') return false;
    const inflight = await this.#deps.rotations.inflight(credential.spec.id);
    return inflight?.id === versionId && inflight.setDone && inflight.status !== 'rolling_back';
  }

  /** When the version started to work: the credential's rotation time once current, else its set step's. */
  async #rotatedAt(credential: Credential, versionId: string): Promise<string> {
    if (credential.state.version === versionId && credential.state.rotatedAt)
      return credential.state.rotatedAt;
    const rotation = await this.#deps.rotations.find(versionId).catch(() => null);
    const set = rotation?.steps.find((s) => s.step === 'set' && s.outcome !== 'failed');
    return set?.at ?? new Date().toISOString();
  }
}
