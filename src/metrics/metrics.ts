// Prometheus metrics of one runtime (prom-client). Each runtime has its own registry, so that several runtimes in
// one process (the tests) never share or double-register a series; the Node process metrics, which describe the
// process and not a runtime, are collected once per process and merged into every scrape.
//
// Two kinds of series:
//   recorded  counted where things happen, in this process: rotations that ended here, HTTP requests answered
//             here, audit appends made here. A Prometheus sum over all pods gives the fleet's totals.
//   computed  read from Redis at scrape time (overdue credentials, credentials by status, queue depth): the same
//             fleet-wide value from whichever pod is scraped, so dashboards take max() over pods, not sum().
//
// Labels are types, outcomes, route patterns and queue names only: never a credential, connection or rotation id
// (a fleet has thousands; each would be a series), never a username, never anything secret (I5).

import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { type Clock, systemClock } from '../clock.ts';
import { isOverdue } from '../compliance/policy.ts';
import type { Logger } from '../logging/logger.ts';
import type { Credential, CredentialStatus } from '../registry/types.ts';
import type { RotationEnd, RotationObserver } from '../rotation/engine.ts';
import type { SyncObserver } from '../sync/sync-jobs.ts';
import { TARGET_CALL_CHANNEL, type TargetCall } from '../targets/middleware.ts';

/** What a queue must answer for the depth gauge: BullMQ's Queue does. */
export interface CountedQueue {
  readonly name: string;
  getJobCounts(...states: QueueState[]): Promise<Record<string, number>>;
}

export interface MetricSources {
  /** Every registered credential, a batch at a time: the overdue and status gauges. */
  credentials(): AsyncIterable<Credential[]>;
  /** Every queue whose depth is reported. */
  queues(): readonly CountedQueue[];
  /** The ids of the paused connections: their credentials count as paused. */
  pausedConnections?(): Promise<ReadonlySet<string>>;
}

export interface MetricsOptions {
  sources: MetricSources;
  logger: Logger;
  /** Connection types whose rotation series start at zero (so that rate() works before the first rotation). */
  targetTypes: readonly string[];
  /** The time the overdue rule is judged by: the compliance report's clock, so that both always agree. */
  clock?: Clock;
}

export const QUEUE_STATES = ['waiting', 'active', 'delayed', 'prioritized', 'failed'] as const;
export type QueueState = (typeof QUEUE_STATES)[number];
const CREDENTIAL_STATUSES: readonly CredentialStatus[] = ['pending', 'active', 'rotating', 'failed'];

// 10 ms (a local store and a near database) to 10 minutes (retries with backoff against a flaky downstream).
const ROTATION_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
// One XADD on a healthy Redis is well under a millisecond; seconds mean Redis is in trouble.
const AUDIT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
const HTTP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
// Like the readiness probe: a scrape must answer even when Redis does not (the queue connection waits forever).
const SOURCE_TIMEOUT_MS = 2000;

let processRegistry: Registry | undefined;
/** The Node process metrics (CPU, memory, event loop, GC): one set per process, whatever the runtimes in it. */
function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

async function bounded<T>(what: string, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} did not answer within ${SOURCE_TIMEOUT_MS} ms`)),
      SOURCE_TIMEOUT_MS,
    );
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export class Metrics implements RotationObserver, SyncObserver {
  readonly registry = new Registry();
  readonly #log: Logger;
  readonly #rotations: Counter<'outcome' | 'target'>;
  readonly #rotationSeconds: Histogram<'outcome' | 'target'>;
  readonly #auditAppendSeconds: Histogram;
  readonly #scheduleLagSeconds: Histogram;
  readonly #httpRequests: Counter<'method' | 'route' | 'status_class'>;
  readonly #httpSeconds: Histogram<'method' | 'route' | 'status_class'>;
  readonly #syncs: Counter<'type' | 'result'>;
  readonly #syncConflicts: Counter<'type'>;
  readonly #targetCalls: Counter<'target' | 'verb' | 'outcome'>;
  readonly #targetCallSeconds: Histogram<'target' | 'verb'>;
  /** Subscribed to the targets' middleware channel until close(). */
  readonly #onTargetCall = (message: unknown) => this.targetCalled(message as TargetCall);

  constructor(options: MetricsOptions) {
    const { sources } = options;
    const registers = [this.registry];
    const clock = options.clock ?? systemClock;
    this.#log = options.logger.child({ component: 'metrics' });
    this.#rotations = new Counter({
      name: 'keyturn_rotations_total',
      help: 'Rotations that ended in this process, by outcome and connection type.',
      labelNames: ['outcome', 'target'],
      registers,
    });
    this.#rotationSeconds = new Histogram({
      name: 'keyturn_rotation_duration_seconds',
      help: "Time from a rotation's first start to its end (retries and backoff included), by outcome and connection type.",
      labelNames: ['outcome', 'target'],
      buckets: ROTATION_BUCKETS,
      registers,
    });
    for (const target of options.targetTypes) {
      for (const outcome of ['succeeded', 'failed'] as const) {
        this.#rotations.inc({ outcome, target }, 0);
        this.#rotationSeconds.zero({ outcome, target });
      }
    }
    this.#auditAppendSeconds = new Histogram({
      name: 'keyturn_audit_append_duration_seconds',
      help: 'Time to append one audit event to the stream, in this process.',
      buckets: AUDIT_BUCKETS,
      registers,
    });
    this.#scheduleLagSeconds = new Histogram({
      name: 'keyturn_schedule_lag_seconds',
      help: "How late a scheduled rotation was asked for: from its credential's due time to a worker taking it from the due-time index, in this process.",
      buckets: [0.1, 0.5, 1, 2, 5, 15, 30, 60, 120, 300, 600, 1800, 3600],
      registers,
    });
    this.#httpRequests = new Counter({
      name: 'keyturn_http_requests_total',
      help: 'HTTP requests answered, by method, route pattern and status class.',
      labelNames: ['method', 'route', 'status_class'],
      registers,
    });
    this.#httpSeconds = new Histogram({
      name: 'keyturn_http_request_duration_seconds',
      help: 'Time to answer an HTTP request, by method, route pattern and status class.',
      labelNames: ['method', 'route', 'status_class'],
      buckets: HTTP_BUCKETS,
      registers,
    });
    this.#syncs = new Counter({
      name: 'keyturn_sync_total',
      help: 'Pushes of a credential version to a sync destination (Kubernetes Secret) in this process, by type and result: created, replaced, unchanged, kept_newer, superseded, or the failure (forbidden, not_found, not_keyturns, unauthorized, unavailable, conflict).',
      labelNames: ['type', 'result'],
      registers,
    });
    for (const result of ['created', 'replaced', 'forbidden', 'not_found', 'unavailable']) {
      this.#syncs.inc({ type: 'kubernetes', result }, 0);
    }
    this.#syncConflicts = new Counter({
      name: 'keyturn_sync_conflicts_total',
      help: 'Optimistic-concurrency conflicts (409) a push met and resolved by reading the destination again, by type.',
      labelNames: ['type'],
      registers,
    });
    this.#targetCalls = new Counter({
      name: 'keyturn_target_calls_total',
      help: 'Calls of a target session verb by this process (targets/middleware.ts), by target type, verb and outcome (ok, unavailable, refused, timeout: cancelled at its deadline, error).',
      labelNames: ['target', 'verb', 'outcome'],
      registers,
    });
    this.#targetCallSeconds = new Histogram({
      name: 'keyturn_target_call_duration_seconds',
      help: 'How long a target session verb took, by target type and verb.',
      labelNames: ['target', 'verb'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    subscribe(TARGET_CALL_CHANNEL, this.#onTargetCall);
    this.#syncConflicts.inc({ type: 'kubernetes' }, 0);
    const sourceErrors = new Counter({
      name: 'keyturn_metrics_source_errors_total',
      help: 'Scrapes in which a computed series could not be read (Redis away or slow); the series is then absent.',
      labelNames: ['source'],
      registers,
    });
    for (const source of ['registry', 'queues']) sourceErrors.inc({ source }, 0);
    const log = this.#log;

    // The two registry gauges come from one read of the credentials per scrape, counted a batch at a time (a fleet of
    // 100,000 is never held at once).
    type Counts = { overdue: number; paused: number; byStatus: Map<string, number> };
    let credentialsRead: Promise<Counts> | undefined;
    const count = async (): Promise<Counts> => {
      const at = clock.now();
      const counts: Counts = { overdue: 0, paused: 0, byStatus: new Map() };
      const pausedConnections = (await sources.pausedConnections?.()) ?? new Set<string>();
      for await (const batch of sources.credentials()) {
        for (const c of batch) {
          if (isOverdue(c, at)) counts.overdue++;
          if (c.spec.pausedAt !== undefined || pausedConnections.has(c.spec.connection)) counts.paused++;
          counts.byStatus.set(c.state.status, (counts.byStatus.get(c.state.status) ?? 0) + 1);
        }
      }
      return counts;
    };
    const readCredentials = () => {
      credentialsRead ??= bounded('the registry', count()).finally(() => {
        credentialsRead = undefined;
      });
      return credentialsRead;
    };
    new Gauge({
      name: 'keyturn_credentials_overdue',
      help: 'Credentials past their policy: older than maxAgeDays, or their scheduled rotation more than an hour late.',
      registers,
      async collect() {
        try {
          this.set((await readCredentials()).overdue);
        } catch (err) {
          this.reset();
          sourceErrors.inc({ source: 'registry' });
          log.warn({ err: { message: (err as Error).message } }, 'overdue credentials could not be counted');
        }
      },
    });
    new Gauge({
      name: 'keyturn_credentials_paused',
      help: 'Credentials whose scheduled rotations are stopped (paused themselves, or their connection is).',
      registers,
      async collect() {
        try {
          this.set((await readCredentials()).paused);
        } catch {
          // Counted and logged once, by the overdue gauge's read of the same source.
          this.reset();
        }
      },
    });
    new Gauge({
      name: 'keyturn_credentials',
      help: 'Registered credentials by status.',
      labelNames: ['status'],
      registers,
      async collect() {
        try {
          const { byStatus } = await readCredentials();
          this.reset();
          for (const status of CREDENTIAL_STATUSES) this.set({ status }, byStatus.get(status) ?? 0);
        } catch {
          // Counted and logged once, by the overdue gauge's read of the same source.
          this.reset();
        }
      },
    });
    new Gauge({
      name: 'keyturn_queue_jobs',
      help: 'Jobs in each BullMQ queue, by state.',
      labelNames: ['queue', 'state'],
      registers,
      async collect() {
        try {
          const counts = await bounded(
            'the queues',
            Promise.all(
              sources.queues().map(async (q) => [q.name, await q.getJobCounts(...QUEUE_STATES)] as const),
            ),
          );
          this.reset();
          for (const [queue, byState] of counts) {
            for (const state of QUEUE_STATES) this.set({ queue, state }, byState[state] ?? 0);
          }
        } catch (err) {
          this.reset();
          sourceErrors.inc({ source: 'queues' });
          log.warn({ err: { message: (err as Error).message } }, 'queue depths could not be read');
        }
      },
    });
  }

  /** RotationObserver: called by the engine after a rotation's terminal commit. */
  rotationEnded(end: RotationEnd): void {
    this.#rotations.inc({ outcome: end.outcome, target: end.target });
    this.#rotationSeconds.observe({ outcome: end.outcome, target: end.target }, end.seconds);
  }

  /** SyncObserver: one push to one destination ended. */
  syncEnded(type: string, result: string): void {
    this.#syncs.inc({ type, result });
  }

  syncConflicts(type: string, count: number): void {
    this.#syncConflicts.inc({ type }, count);
  }

  /** AuditLog.onAppendLatency. */
  auditAppended(seconds: number): void {
    this.#auditAppendSeconds.observe(seconds);
  }

  /** ScheduleObserver: one credential taken from the due-time index, this late. */
  scheduleLag(seconds: number): void {
    this.#scheduleLagSeconds.observe(seconds);
  }

  /** One call of a target session verb ended (published by targets/middleware.ts). */
  targetCalled(call: TargetCall): void {
    this.#targetCalls.inc({ target: call.target, verb: call.verb, outcome: call.outcome });
    this.#targetCallSeconds.observe({ target: call.target, verb: call.verb }, call.seconds);
  }

  /** Stops listening to the targets' channel (the runtime closes). */
  close(): void {
    unsubscribe(TARGET_CALL_CHANNEL, this.#onTargetCall);
  }

  /** `route` is the matched route's pattern ("/v1/credentials/:id"), never the URL the client sent. */
  httpAnswered(request: { method: string; route: string; statusCode: number; seconds: number }): void {
    const labels = {
      method: request.method,
      route: request.route,
      status_class: `${Math.floor(request.statusCode / 100)}xx`,
    };
    this.#httpRequests.inc(labels);
    this.#httpSeconds.observe(labels, request.seconds);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text: this runtime's series and the process's. */
  async text(): Promise<string> {
    return Registry.merge([this.registry, processMetrics()]).metrics();
  }
}
