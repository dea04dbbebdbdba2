// The rotation event stream of one API process (GET /v1/events).
//
// One follower per process reads the audit stream (`<prefix>:audit`) with XREAD BLOCK on a connection of its own,
// from the last id it delivered, and fans every `rotation.succeeded` / `rotation.failed` out to this process's
// subscribers. The engine appends those events in the same script that ends the rotation, so the follower sees
// every rotation from every worker process, in stream order, and nothing else has to know about subscribers.
//
//   client ──GET /v1/events──▶ subscribe: registered at the follower's position ("live from")
//                                 │ Last-Event-ID given: replay (id, live from] from the stream with XRANGE while
//                                 │ live events wait in the subscriber's queue; then the queue; then live
//                                 ▼
//   audit stream ──XREAD BLOCK──▶ follower ──(labels of the credentials, cached)──▶ every subscriber that may see it
//
// No gap and no duplicate: the follower only moves its position after a batch went out to every subscriber, a
// subscriber starts exactly at that position, and each subscriber drops an event whose id is not past the last id
// it sent (a client resuming on a replica whose follower is a little behind another's).
// An idle stream gets a `: keep-alive` comment every heartbeat, followed by an id-only message carrying the
// follower's position: EventSource takes it as its last event id without dispatching anything, so a resume
// replays only what came after the last heartbeat, not everything since the credential last rotated.
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { decodeAuditEntry } from '../audit/audit-log.ts';
import { globMatch, hasRole, mayUseCredential, type Principal, UNBOUND_ROLES } from '../auth/principal.ts';
import type { Logger } from '../logging/logger.ts';
import type { RedisClient } from '../redis/client.ts';
import { UnavailableError } from '../registry/errors.ts';
import type { RedisKeys } from '../registry/keys.ts';
import type { Registry } from '../registry/registry.ts';
import {
  changesCredential,
  compareStreamIds,
  isStep,
  rotationEventOf,
  STREAM_START,
  type StreamEvent,
  sseComment,
  sseEvent,
  sseId,
  sseRetry,
  sseRotation,
} from './rotation-event.ts';

export interface EventHubSettings {
  /** Interval of the keep-alive comment (KEYTURN_EVENTS_HEARTBEAT_MS). */
  heartbeatMs: number;
  /** Subscribers this process serves at once (KEYTURN_EVENTS_MAX_CLIENTS). */
  maxClients: number;
}

export interface EventHubOptions {
  /** The process's command connection: the follower's starting point and replays. */
  redis: RedisClient;
  /** Makes the follower's own connection: a blocked XREAD would stall every other command on a shared one. */
  connectFollower: () => RedisClient;
  keys: RedisKeys;
  registry: Pick<Registry, 'findCredential'>;
  logger: Logger;
  settings: EventHubSettings;
}

export interface SubscribeOptions {
  principal: Principal;
  /** Only this credential id, or the ids this glob matches; undefined: every credential the principal may see. */
  credential?: string;
  /** The hijacked response the stream is written to. */
  res: ServerResponse;
  /** Also each rotation step as it lands (`event: step`): the console's live progress. Off by default. */
  steps?: boolean;
}

/** The reconnection delay sent in the `retry:` line, in milliseconds. */
export const RETRY_MS = 2000;
/** A resume replays at most this many events… */
export const REPLAY_MAX_EVENTS = 1000;
/** …and looks at most at this many audit entries; past either it sends `missed` and goes live. */
export const REPLAY_MAX_SCANNED = 20_000;
/**
 * Bytes a subscriber may leave unread in this process before it is disconnected: a client that does not read
 * must not make Keyturn buffer without bound. About a thousand events; an EventSource reconnects and resumes.
 */
export const MAX_BUFFERED_BYTES = 256 * 1024;
/** Live events a subscriber may queue while its replay runs. */
const MAX_QUEUED_WHILE_REPLAYING = 10_000;
const READ_BATCH = 500;
/** Bounded, so that a follower whose connection silently died still comes back within this long. */
const BLOCK_MS = 5000;
/** How long a credential's labels are trusted; a credential.* audit event drops them at once. */
const LABELS_TTL_MS = 5000;
const LABELS_CACHE_MAX = 10_000;

type Labels = Record<string, string>;

export class EventHub {
  readonly #redis: RedisClient;
  readonly #connectFollower: () => RedisClient;
  readonly #key: string;
  readonly #registry: Pick<Registry, 'findCredential'>;
  readonly #log: Logger;
  readonly settings: EventHubSettings;
  readonly #subscribers = new Set<Subscriber>();
  /** Every entry up to this id has gone out to every subscriber (or was not for it). */
  #delivered = STREAM_START;
  #starting: Promise<void> | undefined;
  #follower: RedisClient | undefined;
  #loop: Promise<void> | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  readonly #stop = new AbortController();
  #closed = false;
  readonly #labels = new Map<string, { labels: Labels | null; until: number }>();

  constructor(options: EventHubOptions) {
    this.#redis = options.redis;
    this.#connectFollower = options.connectFollower;
    this.#key = options.keys.audit();
    this.#registry = options.registry;
    this.#log = options.logger.child({ component: 'events' });
    this.settings = options.settings;
  }

  /** Subscribers connected to this process. */
  get size(): number {
    return this.#subscribers.size;
  }

  /** The stream id up to which every subscriber has been served. */
  get position(): string {
    return this.#delivered;
  }

  /** Starts the follower on first use; resolves once it knows where the stream ends. */
  ready(): Promise<void> {
    if (this.#closed) return Promise.reject(new UnavailableError('Keyturn is shutting down'));
    this.#starting ??= this.#start().catch((err) => {
      // The next subscriber tries again.
      this.#starting = undefined;
      this.#log.warn({ err: { message: (err as Error).message } }, 'cannot start following the audit stream');
      throw new UnavailableError('The audit stream cannot be read right now; try again shortly');
    });
    return this.#starting;
  }

  async #start(): Promise<void> {
    const last = (await this.#redis.xrevrange(this.#key, '+', '-', 'COUNT', 1)) as Array<[string, string[]]>;
    if (this.#closed) throw new Error('closed while starting');
    this.#delivered = last[0]?.[0] ?? STREAM_START;
    const follower = this.#connectFollower();
    let failing = false;
    follower.on('error', (err) => {
      if (failing) return;
      failing = true;
      this.#log.warn(
        { err: { message: err.message }, from: this.#delivered },
        'the audit stream follower lost Redis; it resumes from its last id when Redis is back',
      );
    });
    follower.on('ready', () => {
      if (failing) this.#log.info({ from: this.#delivered }, 'the audit stream follower is back');
      failing = false;
    });
    this.#follower = follower;
    this.#loop = this.#follow(follower);
    this.#heartbeat = setInterval(() => {
      for (const subscriber of this.#subscribers) subscriber.heartbeat(this.#delivered);
    }, this.settings.heartbeatMs);
    this.#heartbeat.unref();
    this.#log.info({ from: this.#delivered }, 'following the audit stream for /v1/events');
  }

  async #follow(follower: RedisClient): Promise<void> {
    let failures = 0;
    while (!this.#closed) {
      try {
        const reply = (await follower.xread(
          'COUNT',
          READ_BATCH,
          'BLOCK',
          BLOCK_MS,
          'STREAMS',
          this.#key,
          this.#delivered,
        )) as Array<[string, Array<[string, string[]]>]> | null;
        failures = 0;
        const entries = reply?.[0]?.[1];
        if (entries?.length) await this.#deliver(entries);
      } catch (err) {
        if (this.#closed) break;
        // The connection retries by itself; this covers what else can fail (a label lookup on the command
        // connection, a reply Redis refused). The position did not move: the same entries are read again.
        failures++;
        if (failures === 1) {
          this.#log.warn(
            { err: { message: (err as Error).message }, from: this.#delivered },
            'reading the audit stream failed; retrying',
          );
        }
        await sleep(Math.min(100 * 2 ** failures, 5000), undefined, { signal: this.#stop.signal }).catch(
          () => {},
        );
      }
    }
  }

  async #deliver(entries: Array<[string, string[]]>): Promise<void> {
    const events: StreamEvent[] = [];
    for (const [id, fields] of entries) {
      const audit = this.#decode(id, fields);
      if (!audit) continue;
      if (changesCredential(audit)) this.#labels.delete(audit.credential as string);
      const event = rotationEventOf(audit);
      if (event) events.push(event);
    }
    if (events.length > 0 && this.#subscribers.size > 0) {
      const labels = await this.#labelsOf(events.map((e) => e.credential));
      for (const event of events) {
        for (const subscriber of this.#subscribers) subscriber.offer(event, labels.get(event.credential));
      }
    }
    this.#delivered = (entries.at(-1) as [string, string[]])[0];
  }

  #decode(id: string, fields: string[]) {
    try {
      return decodeAuditEntry(id, fields);
    } catch (err) {
      this.#log.warn({ id, err: { message: (err as Error).message } }, 'skipping an unreadable audit entry');
      return undefined;
    }
  }

  /** The labels of each credential (null: deleted or unknown), from a short-lived cache or the registry. */
  async #labelsOf(ids: string[]): Promise<Map<string, Labels | null>> {
    const now = Date.now();
    const result = new Map<string, Labels | null>();
    const missing: string[] = [];
    for (const id of new Set(ids)) {
      const cached = this.#labels.get(id);
      if (cached && cached.until > now) result.set(id, cached.labels);
      else missing.push(id);
    }
    const found = await Promise.all(missing.map((id) => this.#registry.findCredential(id)));
    if (this.#labels.size + missing.length > LABELS_CACHE_MAX) this.#labels.clear();
    missing.forEach((id, i) => {
      const labels = found[i]?.spec.labels ?? null;
      result.set(id, labels);
      this.#labels.set(id, { labels, until: now + LABELS_TTL_MS });
    });
    return result;
  }

  /**
   * Registers a subscriber at the follower's current position (call after ready(), with no await in between), or
   * returns undefined when this process already serves maxClients streams. Nothing is written until start().
   */
  subscribe(options: SubscribeOptions): Subscriber | undefined {
    if (this.#closed) throw new UnavailableError('Keyturn is shutting down');
    if (this.#subscribers.size >= this.settings.maxClients) return undefined;
    const subscriber = new Subscriber(this, options, this.#delivered, () =>
      this.#subscribers.delete(subscriber),
    );
    if (!subscriber.ended) this.#subscribers.add(subscriber);
    return subscriber;
  }

  /** Replays (after, upTo] to the subscriber; false when it had to give up (its `missed` event says why). */
  async replay(subscriber: Subscriber, after: string, upTo: string): Promise<boolean> {
    if (after !== STREAM_START) {
      const found = (await this.#redis.xrange(this.#key, after, after)) as unknown[];
      if (found.length === 0) {
        subscriber.missed(
          `event ${after} is not in the audit stream (archived and trimmed, or from another Keyturn): events may have been missed`,
        );
        return false;
      }
    }
    subscriber.resumeAfter(after);
    if (compareStreamIds(after, upTo) >= 0) return true;
    let start = `(${after}`;
    let scanned = 0;
    let sent = 0;
    for (;;) {
      const batch = (await this.#redis.xrange(this.#key, start, upTo, 'COUNT', READ_BATCH)) as Array<
        [string, string[]]
      >;
      if (subscriber.ended) return false;
      const events: StreamEvent[] = [];
      for (const [id, fields] of batch) {
        const audit = this.#decode(id, fields);
        const event = audit && rotationEventOf(audit);
        if (event) events.push(event);
      }
      const labels = events.length ? await this.#labelsOf(events.map((e) => e.credential)) : new Map();
      for (const event of events) {
        if (!subscriber.sees(event, labels.get(event.credential))) continue;
        if (sent === REPLAY_MAX_EVENTS) {
          subscriber.missed(
            `more than ${REPLAY_MAX_EVENTS} events to replay after ${after}: events may have been missed`,
          );
          return false;
        }
        subscriber.send(event);
        sent++;
      }
      scanned += batch.length;
      if (batch.length < READ_BATCH) return true;
      if (scanned >= REPLAY_MAX_SCANNED) {
        subscriber.missed(
          `more than ${REPLAY_MAX_SCANNED} audit entries to look through after ${after}: events may have been missed`,
        );
        return false;
      }
      start = `(${(batch.at(-1) as [string, string[]])[0]}`;
    }
  }

  /**
   * Ends every stream (the app is closing: the server cannot close while they are open), or those whose principal
   * `which` picks (its token expired or was revoked); returns how many ended.
   */
  endStreams(reason = 'Keyturn is shutting down', which?: (principal: Principal) => boolean): number {
    let ended = 0;
    for (const subscriber of [...this.#subscribers]) {
      if (which && !which(subscriber.principal)) continue;
      subscriber.end(reason);
      ended++;
    }
    return ended;
  }

  /** Ends every stream and stops the follower, closing its connection (a blocked XREAD ends with it). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.endStreams();
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#stop.abort();
    await this.#starting?.catch(() => {});
    this.#follower?.disconnect();
    await this.#loop;
  }

  get log(): Logger {
    return this.#log;
  }
}

/** One client's stream. */
export class Subscriber {
  readonly #hub: EventHub;
  readonly #res: ServerResponse;
  readonly #principal: Principal;
  readonly #unbound: boolean;
  readonly #filter: ((id: string) => boolean) | undefined;
  readonly #steps: boolean;
  /** The follower's position when this subscriber was registered: replay covers up to it, live starts after. */
  readonly liveFrom: string;
  readonly #onEnd: () => void;
  /** The last id this client was given (an event's or an id-only message's): nothing at or before it is sent. */
  #lastId = STREAM_START;
  #replaying = true;
  #queued: StreamEvent[] = [];
  #ended = false;
  /** Rotation events written. */
  sent = 0;
  /** Why the stream ended, once it did. */
  endReason: string | undefined;

  /** Who opened the stream. */
  get principal(): Principal {
    return this.#principal;
  }

  constructor(hub: EventHub, options: SubscribeOptions, liveFrom: string, onEnd: () => void) {
    this.#hub = hub;
    this.#res = options.res;
    this.#principal = options.principal;
    this.#unbound = hasRole(options.principal, UNBOUND_ROLES.events);
    const asked = options.credential;
    this.#filter = asked === undefined ? undefined : (id) => globMatch(asked, id);
    this.#steps = options.steps === true;
    this.liveFrom = liveFrom;
    this.#onEnd = onEnd;
    this.#res.on('close', () => this.#finish('client disconnected'));
    if (this.#res.destroyed) this.#finish('client disconnected');
  }

  get ended(): boolean {
    return this.#ended;
  }

  /**
   * Writes the `retry:` line, replays what came after `lastEventId` (when the client sent one), then the live
   * events that arrived meanwhile, and from then on each one as it comes.
   */
  async start(lastEventId: string | undefined): Promise<void> {
    this.#write(sseRetry(RETRY_MS));
    if (lastEventId !== undefined) {
      try {
        await this.#hub.replay(this, lastEventId, this.liveFrom);
      } catch (err) {
        this.#hub.log.warn(
          { err: { message: (err as Error).message } },
          'replaying events to a resuming client failed',
        );
        this.missed('the events after Last-Event-ID could not be read: events may have been missed');
      }
    }
    if (this.#ended) return;
    this.#advance(this.liveFrom);
    this.#replaying = false;
    const queued = this.#queued;
    this.#queued = [];
    for (const event of queued) this.send(event);
  }

  /** Whether this subscriber may see the event: the credential filter, then the principal's access. */
  sees(event: StreamEvent, labels: Labels | null | undefined): boolean {
    if (!this.#steps && isStep(event)) return false;
    if (this.#filter && !this.#filter(event.credential)) return false;
    if (this.#unbound) return true;
    // A reader: bound by id, glob or label to a credential that still exists.
    if (!labels) return false;
    return mayUseCredential(this.#principal, { id: event.credential, labels });
  }

  /** A live event from the follower. */
  offer(event: StreamEvent, labels: Labels | null | undefined): void {
    if (this.#ended || !this.sees(event, labels)) return;
    if (!this.#replaying) {
      this.send(event);
      return;
    }
    this.#queued.push(event);
    if (this.#queued.length > MAX_QUEUED_WHILE_REPLAYING) this.end('too many events while replaying');
  }

  send(event: StreamEvent): void {
    if (compareStreamIds(event.id, this.#lastId) <= 0) return;
    this.#lastId = event.id;
    this.sent++;
    this.#write(sseRotation(event));
  }

  /** The client's Last-Event-ID is in the stream: it has everything up to it. */
  resumeAfter(id: string): void {
    if (compareStreamIds(id, this.#lastId) > 0) this.#lastId = id;
  }

  /** Tells the client that events may have been lost, so that it re-reads what it depends on. */
  missed(reason: string): void {
    this.#write(sseEvent('missed', { reason }));
  }

  heartbeat(position: string): void {
    this.#write(sseComment('keep-alive'));
    if (!this.#replaying) this.#advance(position);
  }

  #advance(id: string): void {
    if (compareStreamIds(id, this.#lastId) <= 0) return;
    this.#lastId = id;
    this.#write(sseId(id));
  }

  #write(text: string): void {
    if (this.#ended) return;
    this.#res.write(text);
    if (this.#res.writableLength > MAX_BUFFERED_BYTES) {
      this.#hub.log.warn(
        { principal: this.#principal.name, buffered: this.#res.writableLength },
        'disconnecting an event stream client that does not read',
      );
      this.#finish('client does not read');
      this.#res.destroy();
    }
  }

  /** Ends the stream cleanly (a final comment, then the end of the response). */
  end(reason: string): void {
    if (this.#ended) return;
    this.#write(sseComment(reason));
    this.#finish(reason);
    this.#res.end();
  }

  #finish(reason: string): void {
    if (this.#ended) return;
    this.#ended = true;
    this.endReason = reason;
    this.#queued = [];
    this.#onEnd();
  }
}
