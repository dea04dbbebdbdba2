// Webhook notifications (worker component). Two halves:
//
//   follow   a Redis consumer group `notifications` on the audit stream. Every worker process is one consumer, so
//            each event is handled by one of them; for an event of a notified action it enqueues one BullMQ job per
//            endpoint (job id from the event id and the endpoint's position, so enqueueing twice is harmless), then
//            acknowledges it (XACK). Events a dead worker read but never acknowledged are claimed by another after
//            `reclaimIdleMs` (XAUTOCLAIM). The group is created at the stream's end (`$`) the first time
//            notifications are switched on: webhooks report what happens from then on, not the history. Once it
//            exists, events appended while every worker is down are delivered when one is back.
//   deliver  the `notifications` queue's job: re-reads the event from the stream (job data holds ids only), POSTs
//            the signed JSON body, and throws on anything but a 2xx so BullMQ retries it with capped exponential
//            backoff. After the last attempt it appends `notification.failed` (the endpoint's host only).
//
// The webhook URLs (their paths may hold a token) and the HMAC secret are never logged, audited or put in a job.
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Job, Queue } from 'bullmq';
import type { AuditEvent, AuditLog } from '../audit/audit-log.ts';
import { decodeAuditEntry } from '../audit/audit-log.ts';
import type { NotificationEvent } from '../config/notification-events.ts';
import type { Logger } from '../logging/logger.ts';
import { duplicateClient, type RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import { EVENT_ID_HEADER, SIGNATURE_HEADER, signWebhook, TIMESTAMP_HEADER } from './signature.ts';
import type { NotificationBody, NotificationJobData } from './types.ts';

export const NOTIFY_GROUP = 'notifications';

export interface NotifierSettings {
  webhookUrls: string[];
  webhookSecret: string;
  events: readonly NotificationEvent[];
  attempts: number;
  backoffMs: number;
  timeoutMs: number;
  /** How long an event may stay read but unacknowledged before another worker takes it over. */
  reclaimIdleMs: number;
  /** How long one blocking read waits for new events (also how soon close() is noticed). */
  blockMs?: number;
}

const READ_COUNT = 100;
const ERROR_PAUSE_MS = 1000;
/** Consumers idle this long with nothing pending are removed from the group at start (gone processes). */
const STALE_CONSUMER_MS = 24 * 3_600_000;
/** Delivered jobs are kept this long so that a re-enqueued event (a reclaim) finds its job id and is not sent twice. */
const KEEP_COMPLETED_S = 24 * 3600;
const KEEP_FAILED_S = 7 * 24 * 3600;

type StreamEntry = [id: string, fields: string[] | null];

export function notificationBody(event: AuditEvent): NotificationBody {
  const details = event.details ?? {};
  return {
    id: event.id,
    type: event.action as NotificationEvent,
    time: event.time,
    credential: event.credential ?? null,
    rotation: event.rotation ?? null,
    version: typeof details.version === 'string' ? details.version : null,
    outcome: event.outcome,
    details,
  };
}

/** The part of an endpoint that may be logged and audited: scheme-less host and port, never path or query. */
export function endpointHost(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return 'invalid-url';
  }
}

interface Attempt {
  ok: boolean;
  status: number | null;
  reason: string;
}

export class Notifier {
  readonly settings: NotifierSettings;
  readonly #redis: RedisClient;
  readonly #streamKey: string;
  readonly #queue: Queue;
  readonly #audit: AuditLog;
  readonly #log: Logger;
  readonly #consumer = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  #blocking: RedisClient | undefined;
  #loop: Promise<void> | undefined;
  #closing = false;
  #lastReclaim = 0;

  constructor(deps: {
    redis: RedisClient;
    keys: RedisKeys;
    queue: Queue;
    audit: AuditLog;
    logger: Logger;
    settings: NotifierSettings;
  }) {
    this.settings = deps.settings;
    this.#redis = deps.redis;
    this.#streamKey = deps.keys.audit();
    this.#queue = deps.queue;
    this.#audit = deps.audit;
    this.#log = deps.logger.child({ component: 'notifier' });
  }

  /** Joins the consumer group (creating it at the stream's end the first time) and starts following. */
  async start(): Promise<void> {
    try {
      await this.#redis.xgroup('CREATE', this.#streamKey, NOTIFY_GROUP, '$', 'MKSTREAM');
      this.#log.info('notification consumer group created at the end of the audit stream');
    } catch (err) {
      if (!String((err as Error).message).includes('BUSYGROUP')) throw err;
    }
    await this.#forgetStaleConsumers().catch((err) =>
      this.#log.warn({ err: { message: (err as Error).message } }, 'could not tidy the consumer group'),
    );
    // A connection of its own: a blocking read holds it for up to blockMs.
    this.#blocking = duplicateClient(this.#redis);
    this.#blocking.on('error', () => {}); // reported by the loop, which retries
    this.#loop = this.#follow();
  }

  async close(): Promise<void> {
    this.#closing = true;
    this.#blocking?.disconnect();
    await this.#loop;
  }

  async #follow(): Promise<void> {
    const blocking = this.#blocking as RedisClient;
    while (!this.#closing) {
      try {
        if (Date.now() - this.#lastReclaim >= this.settings.reclaimIdleMs / 2) await this.#reclaim();
        const reply = (await blocking.xreadgroup(
          'GROUP',
          NOTIFY_GROUP,
          this.#consumer,
          'COUNT',
          READ_COUNT,
          'BLOCK',
          this.settings.blockMs ?? 5000,
          'STREAMS',
          this.#streamKey,
          '>',
        )) as Array<[string, StreamEntry[]]> | null;
        const entries = reply?.[0]?.[1] ?? [];
        if (entries.length > 0) await this.#handle(entries);
      } catch (err) {
        if (this.#closing) break;
        // Unacknowledged entries stay pending and are reclaimed; nothing is lost by pausing here.
        this.#log.error({ err: { message: (err as Error).message } }, 'following the audit stream failed');
        await new Promise((r) => setTimeout(r, ERROR_PAUSE_MS));
      }
    }
  }

  /** Takes over events another consumer (a dead worker) read and never acknowledged. */
  async #reclaim(): Promise<void> {
    this.#lastReclaim = Date.now();
    let cursor = '0-0';
    do {
      const [next, entries] = (await this.#redis.xautoclaim(
        this.#streamKey,
        NOTIFY_GROUP,
        this.#consumer,
        this.settings.reclaimIdleMs,
        cursor,
        'COUNT',
        READ_COUNT,
      )) as [string, StreamEntry[]];
      if (entries.length > 0) {
        this.#log.warn({ events: entries.length }, 'took over audit events another worker left unhandled');
        await this.#handle(entries);
      }
      cursor = next;
    } while (cursor !== '0-0' && !this.#closing);
  }

  /** Enqueues the deliveries of a batch of stream entries, then acknowledges the whole batch. */
  async #handle(entries: StreamEntry[]): Promise<void> {
    const jobs: Array<{ name: string; data: NotificationJobData; opts: object }> = [];
    for (const [id, fields] of entries) {
      const event = this.#decode(id, fields);
      if (!event || !(this.settings.events as readonly string[]).includes(event.action)) continue;
      this.settings.webhookUrls.forEach((_, endpoint) => {
        jobs.push({
          name: 'deliver',
          data: { eventId: id, endpoint },
          opts: {
            jobId: `notify-${id}-${endpoint}`,
            attempts: this.settings.attempts,
            backoff: { type: 'custom' },
            removeOnComplete: { age: KEEP_COMPLETED_S, count: 10_000 },
            removeOnFail: { age: KEEP_FAILED_S, count: 10_000 },
          },
        });
      });
    }
    if (jobs.length > 0) await this.#queue.addBulk(jobs);
    await this.#redis.xack(this.#streamKey, NOTIFY_GROUP, ...entries.map(([id]) => id));
  }

  #decode(id: string, fields: string[] | null): AuditEvent | undefined {
    if (!fields) return undefined; // trimmed from the stream since it was read
    try {
      return decodeAuditEntry(id, fields);
    } catch {
      this.#log.warn({ event: id }, 'audit entry is not valid JSON; not notified');
      return undefined;
    }
  }

  async #forgetStaleConsumers(): Promise<void> {
    const consumers = (await this.#redis.xinfo('CONSUMERS', this.#streamKey, NOTIFY_GROUP)) as unknown[][];
    for (const raw of consumers) {
      const info = new Map<string, unknown>();
      for (let i = 0; i + 1 < raw.length; i += 2) info.set(String(raw[i]), raw[i + 1]);
      if (Number(info.get('pending')) === 0 && Number(info.get('idle')) > STALE_CONSUMER_MS) {
        await this.#redis.xgroup('DELCONSUMER', this.#streamKey, NOTIFY_GROUP, String(info.get('name')));
      }
    }
  }

  /** The `notifications` queue's job: one delivery attempt of one event to one endpoint. */
  async deliver(job: Job<NotificationJobData>): Promise<void> {
    const { eventId, endpoint } = job.data;
    const url = this.settings.webhookUrls[endpoint];
    if (!url) {
      this.#log.warn({ event: eventId, endpoint }, 'webhook endpoint no longer configured; delivery dropped');
      return;
    }
    const entries = (await this.#redis.xrange(this.#streamKey, eventId, eventId)) as StreamEntry[];
    const event = entries[0] ? this.#decode(entries[0][0], entries[0][1]) : undefined;
    if (!event) {
      this.#log.warn({ event: eventId }, 'audit event no longer in the stream; delivery dropped');
      return;
    }
    const host = endpointHost(url);
    const attempt = await this.#post(url, event.id, JSON.stringify(notificationBody(event)));
    if (attempt.ok) {
      this.#log.info({ event: event.id, type: event.action, endpoint: host }, 'notification delivered');
      return;
    }
    const attemptsMade = job.attemptsMade + 1;
    const maxAttempts = job.opts.attempts ?? 1;
    if (attemptsMade >= maxAttempts) {
      await this.#audit.append({
        actor: 'system',
        action: 'notification.failed',
        outcome: 'failure',
        ...(event.credential ? { credential: event.credential } : {}),
        ...(event.rotation ? { rotation: event.rotation } : {}),
        details: {
          event: event.id,
          type: event.action,
          endpoint: host,
          status: attempt.status,
          reason: attempt.reason,
          attempts: attemptsMade,
        },
      });
      this.#log.error(
        {
          event: event.id,
          type: event.action,
          endpoint: host,
          status: attempt.status,
          attempts: attemptsMade,
        },
        'notification not delivered; giving up',
      );
    } else {
      this.#log.warn(
        { event: event.id, endpoint: host, status: attempt.status, attempt: attemptsMade, of: maxAttempts },
        'notification not delivered; retrying',
      );
    }
    throw new Error(`notification ${event.id} to ${host}: ${attempt.reason}`);
  }

  async #post(url: string, eventId: string, body: string): Promise<Attempt> {
    const timestamp = Math.floor(Date.now() / 1000);
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'keyturn',
          [EVENT_ID_HEADER]: eventId,
          [TIMESTAMP_HEADER]: String(timestamp),
          [SIGNATURE_HEADER]: signWebhook(this.settings.webhookSecret, timestamp, body),
        },
        body,
        // A redirect could carry the signed event to a host nobody configured: it counts as a failure.
        redirect: 'manual',
        signal: AbortSignal.timeout(this.settings.timeoutMs),
      });
      await res.body?.cancel().catch(() => {});
      if (res.status >= 200 && res.status < 300) return { ok: true, status: res.status, reason: 'delivered' };
      const redirect = res.status >= 300 && res.status < 400 ? ' (redirects are not followed)' : '';
      return { ok: false, status: res.status, reason: `answered ${res.status}${redirect}` };
    } catch (err) {
      const e = err as Error & { cause?: { code?: string } };
      if (e.name === 'TimeoutError' || e.name === 'AbortError') {
        return { ok: false, status: null, reason: `no answer within ${this.settings.timeoutMs} ms` };
      }
      return { ok: false, status: null, reason: `network error (${e.cause?.code ?? e.name})` };
    }
  }
}
