// The audit stream: one Redis Stream entry per event, appended by the API and the workers. An event names who
// (actor), what (action), on what (credential, connection, rotation), with what outcome, and when; it never
// carries a secret value: `details` takes only scalars, and every call site passes ids and scrubbed messages.

import { randomBytes } from 'node:crypto';
import { scrubJsonLine } from '../crypto/secret-scope.ts';
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';

export type AuditOutcome = 'success' | 'failure' | 'denied';

export interface AuditEventInput {
  actor: string;
  action: string;
  outcome: AuditOutcome;
  credential?: string;
  connection?: string;
  rotation?: string;
  details?: Record<string, string | number | boolean | null>;
}

export interface AuditEvent extends AuditEventInput {
  /** Stream id: milliseconds-sequence, the total order of the log. */
  id: string;
  time: string;
}

export interface AuditQuery {
  credential?: string;
  actor?: string;
  action?: string;
  since?: Date;
  until?: Date;
  limit: number;
  /** Exclusive: events after this id. */
  after?: string;
}

const READ_BATCH = 500;

/** One stream entry as an event; undefined for an entry that is not an audit event (no `e` field). */
export function decodeAuditEntry(id: string, fields: string[]): AuditEvent | undefined {
  const raw = fields[fields.indexOf('e') + 1];
  if (fields.indexOf('e') < 0 || !raw) return undefined;
  return { id, ...(JSON.parse(raw) as Omit<AuditEvent, 'id'>) };
}

/** The stored form of an event, with every secret of the current operation's scope cut out (finding 10, issue 11). */
function encode(event: AuditEventInput, time: string): string {
  return scrubJsonLine(JSON.stringify({ time, ...event }));
}

export class AuditLog {
  readonly #redis: RedisClient;
  readonly #key: string;
  /** Called with each append's duration in seconds (the metrics' audit append latency). */
  onAppendLatency: ((seconds: number) => void) | undefined;

  constructor(redis: RedisClient, keys: RedisKeys) {
    this.#redis = redis;
    this.#key = keys.audit();
  }

  /** The stream events are appended to (for a script that appends one with its read: rotation/secret-reader.ts). */
  get streamKey(): string {
    return this.#key;
  }

  /** Reports the latency of an append made by a script of another module. */
  appendedBy(seconds: number): void {
    this.onAppendLatency?.(seconds);
  }

  /** Appends one event and returns its id. */
  async append(event: AuditEventInput): Promise<string> {
    const started = performance.now();
    const id = await this.#redis.xadd(this.#key, '*', 'e', encode(event, new Date().toISOString()));
    this.onAppendLatency?.((performance.now() - started) / 1000);
    return id as string;
  }

  /** Reads events oldest first; `next` is the cursor for the following page, or null at the end. */
  async read(query: AuditQuery): Promise<{ events: AuditEvent[]; next: string | null }> {
    const end = query.until ? `${query.until.getTime()}` : '+';
    let start = query.after ? `(${query.after}` : query.since ? `${query.since.getTime()}` : '-';
    const events: AuditEvent[] = [];
    for (;;) {
      const batch = (await this.#redis.xrange(this.#key, start, end, 'COUNT', READ_BATCH)) as Array<
        [string, string[]]
      >;
      for (const [id, fields] of batch) {
        const event = decodeAuditEntry(id, fields);
        if (!event) continue;
        if (query.credential && event.credential !== query.credential) continue;
        if (query.actor && event.actor !== query.actor) continue;
        if (query.action && event.action !== query.action) continue;
        events.push(event);
        if (events.length === query.limit) {
          // More may follow: the cursor is this event; an empty next page is possible and harmless.
          return { events, next: id };
        }
      }
      if (batch.length < READ_BATCH) return { events, next: null };
      start = `(${batch[batch.length - 1]![0]}`;
    }
  }
}

/** Stands for a value only a script knows (auditEventTemplate); random per process, so no input can forge it. */
const PLACEHOLDER = `@@${randomBytes(12).toString('hex')}@@`;

/**
 * An event's stored form cut around one `details` field whose value a script fills in (the secret read's version,
 * chosen in the same script that appends the event): `prefix + JSON string content + suffix` is what append would
 * store. The value must need no JSON escaping (a version id does not).
 */
export function auditEventTemplate(
  event: AuditEventInput,
  field: string,
): { prefix: string; suffix: string } {
  const encoded = encode(
    { ...event, details: { ...event.details, [field]: PLACEHOLDER } },
    new Date().toISOString(),
  );
  const at = encoded.indexOf(PLACEHOLDER);
  return { prefix: encoded.slice(0, at), suffix: encoded.slice(at + PLACEHOLDER.length) };
}

/** The append as a raw command, for scripts that apply it together with other writes (Lease.commit). */
export function auditAppendOp(streamKey: string, event: AuditEventInput): [string, ...string[]] {
  return ['XADD', streamKey, '*', 'e', encode(event, new Date().toISOString())];
}
