// BullMQ queues, their producers and their workers.
//
//   schedule   light jobs: `reconcile` (its own scheduler) repairs what a crash may have left half-done. Scheduled
//              rotations are not jobs: every worker process drains the due-time index (scheduling/due-index.ts) and
//              asks the engine for a rotation of each credential that came due.
//   rotations  downstream work: `rotate`, `rollback`, `revoke-previous`.
//   leases     `revoke-lease`, planned at issue for the lease's expiry; the schedule queue's `lease-sweep` (its
//              own scheduler) catches any revocation that was missed.
//   notifications  `deliver`: one webhook delivery of one audit event to one endpoint (notifications/notifier.ts
//              enqueues them); the schedule queue's `overdue-scan` (its own scheduler) raises overdue credentials.
//
// Every job carries ids only (I5): a rotation id, a credential id, a version id. Rotation jobs are retried
// with capped exponential backoff; a job that finds the credential's lease taken is put back, not failed.
import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { DelayedError, type Job, Queue, type RedisConnection, Worker } from 'bullmq';
import type { AuditLog } from '../audit/audit-log.ts';
import type { AuditOutbox } from '../audit/outbox.ts';
import type { OverdueScanner, OverdueScanResult } from '../compliance/overdue-scan.ts';
import { parseDuration } from '../config/duration.ts';
import { scrubError } from '../crypto/scrub.ts';
import { runInNewSecretScope } from '../crypto/secret-scope.ts';
import type { LeaseRevocationPlanner, LeaseService } from '../leases/lease-service.ts';
import type { Logger } from '../logging/logger.ts';
import type { Notifier } from '../notifications/notifier.ts';
import type { NotificationJobData } from '../notifications/types.ts';
import type { RedisClient } from '../redis/client.ts';
import { adminSubjectSpec } from '../registry/admin-subject.ts';
import type { Registry } from '../registry/registry.ts';
import {
  adminConnectionOf,
  adminSubjectId,
  type Credential,
  type CredentialSpec,
} from '../registry/types.ts';
import type { RotationEngine, RotationHooks, RunResult } from '../rotation/engine.ts';
import type { RotationRepo } from '../rotation/rotation-repo.ts';
import type { Rotation } from '../rotation/types.ts';
import { type DueEntry, type DueIndex, upcomingEntry, upcomingOf } from './due-index.ts';
import { nextRun } from './schedule.ts';

export const SCHEDULE_QUEUE = 'schedule';
export const ROTATION_QUEUE = 'rotations';
export const LEASE_QUEUE = 'leases';
export const NOTIFICATION_QUEUE = 'notifications';

export interface QueueSettings {
  prefix: string;
  backoffMs: number;
  /** BullMQ lock duration and stalled-job check interval: how soon a dead worker's job moves on. */
  lockMs: number;
  concurrency: number;
  reconcileEveryMs: number;
  leaseSweepEveryMs: number;
  leaseConcurrency: number;
  overdueScanEveryMs: number;
}

type RotateData = { rotationId: string };
type RevokeData = { credentialId: string; versionId: string };
type LeaseData = { leaseId: string };

const MAX_BACKOFF_MS = 5 * 60_000;
/** Webhook deliveries in flight per worker process: each waits on a remote HTTP server, not on Redis. */
const NOTIFICATION_CONCURRENCY = 8;
const BUSY_RETRY_MS = 1000;
// Rolling back waits on a downstream that may be down for hours: keep trying, at most every five minutes.
const ROLLBACK_ATTEMPTS = 2000;

/** The BullMQ job scheduler id a credential had before the due-time index (migrated away at start). */
const LEGACY_SCHEDULER_PREFIX = 'cred-';
/** Due entries one drain takes at a time, and how many of them are handled at once. */
const DRAIN_BATCH = 500;
const DRAIN_PARALLEL = 32;
/** How often an idle drainer looks for due entries. */
const DRAIN_IDLE_MS = 500;
/** How long a claimed entry stays with its drainer before another may take it (its drainer died). */
const CLAIM_HOLD_MS = 60_000;

/** Told how late each scheduled rotation was asked for (metrics: keyturn_schedule_lag_seconds). */
export interface ScheduleObserver {
  scheduleLag(seconds: number): void;
}

/** Capped exponential backoff: base, 2·base, 4·base… never above five minutes. */
export function backoffDelay(attemptsMade: number, baseMs: number): number {
  return Math.min(baseMs * 2 ** Math.max(0, attemptsMade - 1), MAX_BACKOFF_MS);
}

/** The producer side: used by the API (register, change, rotate now) and by the engine's hooks. */
export class Queues implements RotationHooks, LeaseRevocationPlanner {
  readonly schedule: Queue;
  readonly rotations: Queue;
  readonly leases: Queue;
  readonly notifications: Queue;
  readonly #settings: QueueSettings;
  readonly #registry: Registry;
  /** When each credential's next scheduled rotation is due. */
  readonly due: DueIndex;

  constructor(connection: RedisClient, settings: QueueSettings, registry: Registry, due: DueIndex) {
    this.#settings = settings;
    this.#registry = registry;
    this.due = due;
    const opts = { connection: connection as unknown as RedisConnection, prefix: settings.prefix };
    this.schedule = new Queue(SCHEDULE_QUEUE, opts as never);
    this.rotations = new Queue(ROTATION_QUEUE, opts as never);
    this.leases = new Queue(LEASE_QUEUE, opts as never);
    this.notifications = new Queue(NOTIFICATION_QUEUE, opts as never);
    // Without a listener BullMQ prints each error of the shared connection to stderr, stack and all, many times per
    // failover. The runtime logs that connection's errors once already ("redis connection error"); a producer call
    // that fails still rejects to its caller (503 unavailable).
    for (const q of [this.schedule, this.rotations, this.leases, this.notifications]) q.on('error', () => {});
  }

  // LeaseRevocationPlanner

  async planLeaseRevocation(leaseId: string, at: Date): Promise<void> {
    await this.leases.add('revoke-lease', { leaseId } satisfies LeaseData, {
      jobId: `revoke-lease-${leaseId}`,
      delay: Math.max(0, at.getTime() - Date.now()),
      // A downstream that stays away keeps the lease `revoking`; after these attempts the sweep goes on trying.
      attempts: 20,
      backoff: { type: 'custom' },
      removeOnComplete: true,
      removeOnFail: 100,
    });
  }

  // RotationHooks

  async enqueueRotation(rotationId: string, delayMs = 0): Promise<void> {
    await this.rotations.add('rotate', { rotationId } satisfies RotateData, {
      jobId: `rotate-${rotationId}`,
      delay: delayMs,
      // The engine counts attempts in the rotation record (crashes included) and decides when to roll back;
      // BullMQ's count only has to be large enough never to cut it short.
      attempts: 1000,
      backoff: { type: 'custom' },
      removeOnComplete: true,
      removeOnFail: true,
    });
  }

  /** Starts a queued rotation now: its delayed job (a scheduled rotation waiting out its jitter) is promoted. */
  async promoteRotation(rotationId: string): Promise<void> {
    const job = await this.rotations.getJob(`rotate-${rotationId}`);
    if (!job) {
      await this.enqueueRotation(rotationId);
      return;
    }
    // A job that became active meanwhile cannot be promoted, and needs not be.
    if (await job.isDelayed()) await job.promote().catch(() => {});
  }

  /** Removes the job of a rotation that was cancelled before it started (its record already says so). */
  async cancelRotation(rotationId: string): Promise<void> {
    const job = await this.rotations.getJob(`rotate-${rotationId}`);
    // A job a worker took meanwhile finds the rotation ended and does nothing.
    await job?.remove().catch(() => {});
  }

  async enqueueRollback(rotationId: string): Promise<void> {
    await this.rotations.add('rollback', { rotationId } satisfies RotateData, {
      jobId: `rollback-${rotationId}`,
      attempts: ROLLBACK_ATTEMPTS,
      backoff: { type: 'custom' },
      delay: this.#settings.backoffMs,
      removeOnComplete: true,
      removeOnFail: true,
    });
  }

  async afterSuccess(credential: Credential, _rotation: Rotation): Promise<void> {
    // `every` counts from the last rotation, so a rotate-now moves the next slot (as Vault and AWS do). From the spec
    // as it is now, not as the rotation read it: a PATCH may have changed the schedule meanwhile.
    await this.syncSchedule(credential.spec.id);
    await this.planGraceRevocation(credential);
  }

  /**
   * A credential with a grace period: plans the revocation of the previous secret at rotatedAt + grace (at
   * once if that has passed). The job id makes planning twice harmless; the revocation itself re-checks.
   */
  async planGraceRevocation({ spec, state }: Credential): Promise<void> {
    if (!spec.gracePeriod || !state.previousVersion) return;
    if (state.previousRevokedAt || !state.rotatedAt) return;
    const due = Date.parse(state.rotatedAt) + parseDuration(spec.gracePeriod);
    await this.rotations.add(
      'revoke-previous',
      { credentialId: spec.id, versionId: state.previousVersion } satisfies RevokeData,
      {
        jobId: `revoke-${spec.id}-${state.previousVersion}`,
        delay: Math.max(0, due - Date.now()),
        attempts: 50,
        backoff: { type: 'custom' },
        removeOnComplete: true,
        removeOnFail: 100,
      },
    );
  }

  nextRotationAt(spec: CredentialSpec, from: Date): Date | undefined {
    return nextRun(spec.schedule, from);
  }

  // Schedules

  /**
   * Arms a credential's scheduler and records its next rotation from its spec and last rotation as they are now
   * (finding 6 of issue 11). A schedule PATCH and a finishing rotation each call this after their own write, and may
   * race: each arms from what it read, then records the next rotation only if neither the spec nor the last rotation
   * changed since (else it reads and arms again). So whoever arms last read the newest of both, and neither leaves a
   * stale scheduler or next rotation behind. A credential deleted meanwhile loses the scheduler it was just given.
   */
  async syncSchedule(credentialId: string): Promise<void> {
    // A connection's admin subject has slots only while its connection asks for them (adminRotation).
    const adminOf = adminConnectionOf(credentialId);
    if (adminOf !== undefined && !(await this.#registry.findConnection(adminOf))?.adminRotation) {
      await this.removeSchedule(credentialId);
      return;
    }
    for (let attempt = 0; attempt < 10; attempt++) {
      const basis = await this.#registry.scheduleBasis(credentialId);
      if (!basis) return;
      const last = basis.rotatedAt ? new Date(basis.rotatedAt) : new Date();
      await this.upsertSchedule(basis.spec, last);
      const next = this.nextRotationAt(basis.spec, 'every' in basis.spec.schedule ? last : new Date());
      const outcome = await this.#registry.setNextRotationAt(credentialId, next, basis);
      if (outcome === 'set') return;
      if (outcome === 'missing') {
        await this.removeSchedule(credentialId);
        return;
      }
    }
    throw new Error(
      `the schedule of credential "${credentialId}" kept changing while it was armed; the reconciler arms it again`,
    );
  }

  /**
   * Whether a credential's due entry (`at`) exists and may follow its spec's schedule (what the reconciler checks): due
   * already or held by a drainer, or no further out than the schedule allows (for cron: exactly its next slot). An
   * entry armed from a schedule a PATCH replaced, and not armed again because a process died in between, fails this.
   */
  scheduleFollows(spec: CredentialSpec, at: number | undefined, now = Date.now()): boolean {
    if (at === undefined) return false;
    if (at <= now + CLAIM_HOLD_MS) return true;
    const s = spec.schedule;
    if ('every' in s) return at <= now + parseDuration(s.every) + CLAIM_HOLD_MS;
    return at === nextRun(s, new Date(now)).getTime();
  }

  /** Arms a credential's next scheduled rotation in the due-time index; a changed schedule takes effect at once. */
  async upsertSchedule(spec: CredentialSpec, lastRotation: Date = new Date()): Promise<void> {
    const s = spec.schedule;
    const at =
      'every' in s
        ? Math.max(lastRotation.getTime() + parseDuration(s.every), Date.now() + 1)
        : nextRun(s, new Date()).getTime();
    await this.due.arm(spec.id, at);
    await this.armNotice(spec, at);
  }

  /**
   * Arms the `rotation.upcoming` notice of the slot due at `at` (spec.notifyBefore ahead of it), in the same index under
   * its own member (upcomingEntry), or removes a notice the spec no longer asks for. A notice whose time has passed
   * when its slot is armed (a slot armed closer than notifyBefore) is not sent: it would arrive as late as the change.
   */
  async armNotice(spec: CredentialSpec, at: number): Promise<void> {
    const noticeAt = spec.notifyBefore ? at - parseDuration(spec.notifyBefore) : undefined;
    if (noticeAt !== undefined && noticeAt > Date.now()) await this.due.arm(upcomingEntry(spec.id), noticeAt);
    else await this.due.disarm(upcomingEntry(spec.id));
  }

  async removeSchedule(credentialId: string): Promise<void> {
    await this.due.disarm(credentialId);
    await this.due.disarm(upcomingEntry(credentialId));
  }

  async hasSchedule(credentialId: string): Promise<boolean> {
    return (await this.due.dueAt(credentialId)) !== undefined;
  }

  /** Every queue this producer owns, found from its fields so that a queue added later is listed too (metrics). */
  all(): Queue[] {
    return Object.values(this).filter((value): value is Queue => value instanceof Queue);
  }

  async close(): Promise<void> {
    await Promise.all([
      this.schedule.close(),
      this.rotations.close(),
      this.leases.close(),
      this.notifications.close(),
    ]);
  }
}

/** The consumer side: the worker processes of `workers/` and `npm start`. */
export class QueueWorkers {
  readonly #workers: Worker[] = [];
  readonly #log: Logger;
  readonly #stopping = new AbortController();
  #draining: Promise<void> | undefined;
  readonly deps: {
    connection: RedisClient;
    settings: QueueSettings;
    queues: Queues;
    engine: RotationEngine;
    registry: Registry;
    rotations: RotationRepo;
    audit: AuditLog;
    /** Audit events a crash left in credential outboxes (Redis Cluster) are relayed by the reconciler. */
    outbox: AuditOutbox;
    leases: LeaseService;
    logger: Logger;
    overdue: OverdueScanner;
    /** Set when webhook notifications are configured. */
    notifier?: Notifier;
    /** Told the lag of each scheduled rotation (metrics). */
    observer?: ScheduleObserver;
  };

  constructor(deps: QueueWorkers['deps']) {
    this.deps = deps;
    this.#log = deps.logger.child({ component: 'worker' });
  }

  async start(): Promise<void> {
    const { connection, settings } = this.deps;
    const common = {
      connection: connection as unknown as RedisConnection,
      prefix: settings.prefix,
      lockDuration: settings.lockMs,
      stalledInterval: settings.lockMs,
      // A worker killed mid-rotation makes its job "stalled"; that is a normal event here, not a poison job.
      maxStalledCount: 20,
      settings: { backoffStrategy: (attemptsMade: number) => backoffDelay(attemptsMade, settings.backoffMs) },
    };
    const rotationWorker = new Worker(
      ROTATION_QUEUE,
      (job, token) => runInNewSecretScope(() => this.#rotationJob(job, token)),
      {
        ...common,
        concurrency: settings.concurrency,
      } as never,
    );
    const scheduleWorker = new Worker(
      SCHEDULE_QUEUE,
      (job) => runInNewSecretScope(() => this.#scheduleJob(job)),
      {
        ...common,
        concurrency: 1,
      } as never,
    );
    const leaseWorker = new Worker(
      LEASE_QUEUE,
      (job, token) => runInNewSecretScope(() => this.#leaseJob(job, token)),
      {
        ...common,
        concurrency: settings.leaseConcurrency,
      } as never,
    );
    const notifier = this.deps.notifier;
    const notificationWorker = notifier
      ? new Worker(
          NOTIFICATION_QUEUE,
          (job) => runInNewSecretScope(() => notifier.deliver(job as Job<NotificationJobData>)),
          {
            ...common,
            concurrency: NOTIFICATION_CONCURRENCY,
            settings: {
              backoffStrategy: (attemptsMade: number) =>
                backoffDelay(attemptsMade, notifier.settings.backoffMs),
            },
          } as never,
        )
      : undefined;
    for (const w of [
      rotationWorker,
      scheduleWorker,
      leaseWorker,
      ...(notificationWorker ? [notificationWorker] : []),
    ]) {
      w.on('error', (err) => this.#log.error({ err: scrubError(err) }, 'queue worker error'));
      this.#workers.push(w);
    }
    await this.deps.queues.schedule.upsertJobScheduler(
      'reconcile',
      { every: settings.reconcileEveryMs },
      { name: 'reconcile', data: {}, opts: { removeOnComplete: true, removeOnFail: 10 } },
    );
    await this.deps.queues.schedule.upsertJobScheduler(
      'lease-sweep',
      { every: settings.leaseSweepEveryMs },
      { name: 'lease-sweep', data: {}, opts: { removeOnComplete: true, removeOnFail: 10 } },
    );
    await this.deps.queues.schedule.upsertJobScheduler(
      'overdue-scan',
      { every: settings.overdueScanEveryMs },
      { name: 'overdue-scan', data: {}, opts: { removeOnComplete: true, removeOnFail: 10 } },
    );
    await Promise.all(this.#workers.map((w) => w.waitUntilReady()));
    await notifier?.start();
    const moved = await this.migrateJobSchedulers();
    if (moved > 0)
      this.#log.info(
        { credentials: moved },
        'moved credential schedules from BullMQ job schedulers to the due-time index',
      );
    this.#draining = this.#drain();
    // A worker that starts after downtime revokes what expired meanwhile at once, not one interval later. Like a job,
    // in a secret scope of its own: it logs in with admin secrets and records what the downstream answered.
    void runInNewSecretScope(() => this.#sweepLeases());
    // Likewise, a lapse that happened while no worker ran is raised now.
    void runInNewSecretScope(() =>
      this.scanOverdue().catch((err) =>
        this.#log.error({ err: scrubError(err) }, 'overdue scan failed; the next one retries'),
      ),
    );
  }

  /** Raises `credential.overdue` for each credential newly past its policy (once per lapse, across workers). */
  async scanOverdue(): Promise<OverdueScanResult> {
    return this.deps.overdue.scan();
  }

  async #sweepLeases(): Promise<void> {
    try {
      await this.deps.leases.sweep();
    } catch (err) {
      this.#log.error({ err: scrubError(err) }, 'lease sweep failed; the next one retries');
    }
  }

  async #leaseJob(job: Job, token: string | undefined): Promise<void> {
    if (job.name !== 'revoke-lease') {
      this.#log.warn({ job: job.name }, 'unknown lease job; dropped');
      return;
    }
    const result = await this.deps.leases.revoke(
      (job.data as LeaseData).leaseId,
      'expired',
      'keyturn',
      'job',
    );
    if (result.outcome === 'not-due') {
      // Renewed (or still being created): wait for the new end without spending an attempt.
      await job.moveToDelayed(result.dueAt.getTime(), token);
      throw new DelayedError();
    }
    if (result.outcome === 'failed') {
      throw new Error(`lease ${result.lease.id} revocation failed (${result.error.message}); retrying`);
    }
  }

  async #rotationJob(job: Job, token: string | undefined): Promise<void> {
    let result: RunResult;
    switch (job.name) {
      case 'rotate':
        result = await this.deps.engine.run((job.data as RotateData).rotationId);
        break;
      case 'rollback':
        result = await this.deps.engine.rollback((job.data as RotateData).rotationId);
        if (result.rotation?.status === 'rolling_back') {
          throw new Error('rollback still waiting for the downstream; will retry');
        }
        break;
      case 'revoke-previous': {
        const { credentialId, versionId } = job.data as RevokeData;
        result = await this.deps.engine.revokePrevious(credentialId, versionId);
        break;
      }
      default:
        this.#log.warn({ job: job.name }, 'unknown rotation job; dropped');
        return;
    }
    if (result.outcome === 'busy') {
      // Another worker holds the credential: come back shortly without spending an attempt.
      await job.moveToDelayed(Date.now() + BUSY_RETRY_MS, token);
      throw new DelayedError();
    }
    if (result.outcome === 'retry') {
      throw new Error(
        `rotation ${result.rotation?.id} attempt ${result.rotation?.attempts} failed; retrying`,
      );
    }
  }

  async #scheduleJob(job: Job): Promise<void> {
    // `tick` jobs came from the job schedulers of before the due-time index; one still planned when a worker started
    // is dropped: start() moved its credential to the index.
    if (job.name === 'reconcile') return this.reconcile();
    if (job.name === 'lease-sweep') return this.#sweepLeases();
    if (job.name === 'overdue-scan') {
      await this.scanOverdue();
    }
  }

  /**
   * Drains the due-time index until close(): claims what came due (the claim is exactly-once across every worker
   * process, see due-index.ts), asks for each rotation, and sleeps only when nothing more is due.
   */
  async #drain(): Promise<void> {
    while (!this.#stopping.signal.aborted) {
      let claimed: DueEntry[] = [];
      try {
        claimed = await this.drainOnce();
      } catch (err) {
        this.#log.error({ err: scrubError(err) }, 'draining the due-time index failed; retrying');
      }
      if (claimed.length < DRAIN_BATCH) {
        // Cut short by close(); the rejection that says so is the loop's end.
        await sleep(DRAIN_IDLE_MS, undefined, { signal: this.#stopping.signal }).catch(() => {});
      }
    }
  }

  /** One drain: claims up to a batch of due credentials and asks for their rotations; returns what it claimed. */
  async drainOnce(now = Date.now()): Promise<DueEntry[]> {
    const claimed = await this.deps.queues.due.claim(now, DRAIN_BATCH, CLAIM_HOLD_MS);
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(DRAIN_PARALLEL, claimed.length) }, async () => {
        while (next < claimed.length) {
          const entry = claimed[next++]!;
          await runInNewSecretScope(() => this.#due(entry)).catch((err) =>
            // Its claim runs out and another drain takes it again.
            this.#log.error(
              { credential: entry.credentialId, err: scrubError(err) },
              'a scheduled rotation could not be asked for; retried when its claim runs out',
            ),
          );
        }
      }),
    );
    return claimed;
  }

  /** One credential that came due: a rotation asked for (or a missed window recorded), and its next slot armed. */
  async #due(entry: DueEntry): Promise<void> {
    const { credentialId } = entry;
    const { due } = this.deps.queues;
    const announced = upcomingOf(credentialId);
    if (announced !== undefined) return this.#notice(entry, announced);
    const credential = await this.deps.registry.findCredential(credentialId);
    if (!credential) {
      // Deleted since it was armed: its entry goes (unless a new credential of that id armed it meanwhile).
      await due.rearm(entry, undefined);
      return;
    }
    const { schedule } = credential.spec;
    const now = Date.now();
    const lateMs = Math.max(0, now - entry.dueAt);
    this.deps.observer?.scheduleLag(lateMs / 1000);
    // Paused (PATCH {"paused": true} on the credential or its connection): this slot is skipped, audited, and the next
    // one armed as usual, so that resuming picks the schedule up where it stands.
    const pausedSince = await this.#pausedSince(credential);
    if (pausedSince) {
      await this.deps.audit.append({
        actor: 'scheduler',
        action: 'rotation.skipped',
        outcome: 'success',
        credential: credentialId,
        details: {
          reason: 'paused',
          pausedBy: credential.spec.pausedAt ? 'credential' : 'connection',
          pausedSince,
          plannedAt: new Date(entry.dueAt).toISOString(),
        },
      });
      this.#log.info({ credential: credentialId, pausedSince }, 'scheduled rotation skipped: paused');
    } else if (schedule.window && lateMs > parseDuration(schedule.window)) {
      // A slot missed during downtime waits for the next one unless its window is still open.
      await this.deps.audit.append({
        actor: 'scheduler',
        action: 'rotation.skipped',
        outcome: 'failure',
        credential: credentialId,
        details: { reason: 'missed its window', plannedAt: new Date(entry.dueAt).toISOString(), lateMs },
      });
      this.#log.warn(
        { credential: credentialId, lateMs },
        'scheduled rotation missed its window; waiting for the next slot',
      );
    } else {
      const jitterMs = schedule.jitter ? randomInt(parseDuration(schedule.jitter) + 1) : 0;
      await this.deps.engine.request(credentialId, 'schedule', 'scheduler', { delayMs: jitterMs });
    }
    // The next slot: for cron, the one after now; for `every`, one interval on (a rotation that succeeds arms it
    // again from its own end, which wins over this if it came first).
    const next = nextRun(schedule, new Date(now)).getTime();
    if (await due.rearm(entry, next)) await this.deps.queues.armNotice(credential.spec, next);
  }

  /** Since when a credential's scheduled rotations are paused: its own pause, else its connection's; undefined if not. */
  async #pausedSince(credential: Credential): Promise<string | undefined> {
    return (
      credential.spec.pausedAt ??
      (await this.deps.registry.findConnection(credential.spec.connection))?.pausedAt
    );
  }

  /**
   * A `rotation.upcoming` notice that came due: appended to the audit stream (from which the notifier's webhooks and
   * GET /v1/events take it), once, for a credential that still exists, is not paused and still has its slot ahead.
   */
  async #notice(entry: DueEntry, credentialId: string): Promise<void> {
    const { due } = this.deps.queues;
    const credential = await this.deps.registry.findCredential(credentialId);
    const plannedAt = credential ? await due.dueAt(credentialId) : undefined;
    const paused = credential && (await this.#pausedSince(credential));
    if (credential?.spec.notifyBefore && plannedAt !== undefined && plannedAt > Date.now() && !paused) {
      await this.deps.audit.append({
        actor: 'scheduler',
        action: 'rotation.upcoming',
        outcome: 'success',
        credential: credentialId,
        details: { plannedAt: new Date(plannedAt).toISOString(), notifyBefore: credential.spec.notifyBefore },
      });
    }
    // Sent or not needed: the next one is armed with the next slot.
    await due.rearm(entry, undefined);
  }

  /**
   * Moves the credentials of the BullMQ job schedulers Keyturn used before the due-time index into the index, and
   * removes those schedulers. Idempotent; every worker process does it at start, so an upgrade needs no step of its
   * own. Returns how many it moved.
   */
  async migrateJobSchedulers(): Promise<number> {
    const { queues } = this.deps;
    let moved = 0;
    for (;;) {
      const page = (await queues.schedule.getJobSchedulers(0, 999, true)).filter((s) =>
        s.key.startsWith(LEGACY_SCHEDULER_PREFIX),
      );
      if (page.length === 0) return moved;
      for (const scheduler of page) {
        const credentialId = scheduler.key.slice(LEGACY_SCHEDULER_PREFIX.length);
        // Armed first, removed after: a crash between the two leaves a scheduler the next start moves again.
        if (await this.deps.registry.findCredential(credentialId)) await queues.syncSchedule(credentialId);
        await queues.schedule.removeJobScheduler(scheduler.key);
        moved++;
      }
    }
  }

  /**
   * Repairs what a crash between two writes can leave: a rotation with no job (the process died after creating
   * it), a credential without its scheduler, a grace period that ended without its revocation, index entries out of
   * step with their records, audit events waiting in an outbox.
   */
  async reconcile(): Promise<void> {
    const { rotations, queues, registry, outbox } = this.deps;
    const relayed = await outbox.sweep();
    if (relayed > 0) this.#log.warn({ events: relayed }, 'relayed audit events a crash left in outboxes');
    const repaired = await registry.repairIndexes();
    if (repaired > 0)
      this.#log.warn({ entries: repaired }, 'repaired index entries a crash left out of step');
    const now0 = Date.now();
    for (const id of await rotations.activeIds()) {
      const rotation = await rotations.find(id);
      // Ended, or never created (an entry written before a creation that was refused or crashed): not active.
      if (!rotation || rotation.status === 'succeeded' || rotation.status === 'failed') {
        if (rotation || now0 - (await rotations.activeSince(id)) > 60_000) await rotations.forgetEnded(id);
        continue;
      }
      const rollback = rotation.status === 'rolling_back';
      const job = await queues.rotations.getJob(rollback ? `rollback-${id}` : `rotate-${id}`);
      if (!job) {
        this.#log.warn({ rotation: id }, 'active rotation had no job; re-queued');
        if (rollback) await queues.enqueueRollback(id);
        else await queues.enqueueRotation(id);
      }
    }
    // Connections whose admin rotates on a schedule: a subject a crash kept from being written, or a slot not armed.
    for (const connection of await registry.listConnections()) {
      if (!connection.adminRotation) continue;
      const id = adminSubjectId(connection.id);
      const subject = await registry.findCredential(id);
      if (!subject) {
        await registry.putAdminSubject(adminSubjectSpec(connection), {
          status: 'active',
          activeUsername: connection.admin.username,
          failures: 0,
        });
      }
      if (!subject || !queues.scheduleFollows(subject.spec, await queues.due.dueAt(id))) {
        await queues.syncSchedule(id);
      }
    }
    const now = Date.now();
    // A batch at a time (bounded memory however large the fleet), with the due times of a batch in one command.
    for await (const batch of registry.credentialBatches()) {
      const dueTimes = await queues.due.dueAtMany(batch.map((c) => c.spec.id));
      for (const [i, credential] of batch.entries()) {
        const { spec, state } = credential;
        // Missing, or armed from a schedule the spec no longer has (a crash between a change and its arming).
        if (!queues.scheduleFollows(spec, dueTimes[i], now)) await queues.syncSchedule(spec.id);
        // A grace period that ended without its revocation (the process died between finish and planning it).
        const graceOver =
          spec.gracePeriod &&
          state.rotatedAt &&
          Date.parse(state.rotatedAt) + parseDuration(spec.gracePeriod) < now;
        if (graceOver && state.previousVersion && !state.previousRevokedAt) {
          await queues.planGraceRevocation(credential);
        }
      }
    }
  }

  /** Stops taking jobs and waits for the running ones (each is resumable anyway, I4). */
  async close(): Promise<void> {
    this.#stopping.abort();
    await this.#draining;
    await this.deps.notifier?.close();
    await Promise.all(this.#workers.map((w) => w.close()));
  }
}
