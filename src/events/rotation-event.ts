// What GET /v1/events sends, and how: one `rotation` event per finished rotation, taken from the audit stream's
// `rotation.succeeded` and `rotation.failed` events, written in the text/event-stream format (WHATWG HTML,
// "Server-sent events"). Nothing secret is in an event: the active username is what a service connects as, and
// it is in the secret read's answer too, but never a password, a store path or an error message.
import type { AuditEvent } from '../audit/audit-log.ts';

export interface RotationEvent {
  /** The audit stream id: the event's `id:` line, and what a client sends back as Last-Event-ID. */
  id: string;
  credential: string;
  rotation: string;
  /** The new version (succeeded); null when the rotation failed and the credential kept the version it had. */
  version: string | null;
  outcome: 'succeeded' | 'failed';
  /** The username now current (alternating users switch it at each rotation); null for a failed rotation. */
  username: string | null;
  /** When the rotation ended (its audit event's time). */
  time: string;
}

/**
 * A push of a version to a sync destination (src/sync), from the audit stream's `credential.synced` and
 * `credential.sync_failed`: sent as `event: sync`, so that a client that only listens for `rotation` is unaffected.
 * The error is left out, as it is from rotation events.
 */
export interface SyncEvent {
  id: string;
  credential: string;
  version: string | null;
  outcome: 'synced' | 'failed';
  sync: { type: string; namespace: string | null; name: string | null };
  time: string;
}

/**
 * A scheduled rotation announced ahead (a credential's notifyBefore), from the audit stream's `rotation.upcoming`: sent
 * as `event: upcoming`, so that a client that only listens for `rotation` is unaffected.
 */
export interface UpcomingEvent {
  id: string;
  credential: string;
  /** When the rotation is planned (its slot; jitter may start it a little later). */
  plannedAt: string | null;
  upcoming: true;
  time: string;
}

/**
 * One step of a rotation as it lands (the audit stream's `rotation.step`, and `rotation.step_failed` for an attempt
 * that will be retried), sent as `event: step` only to a client that asks for them (`?steps=true`): the console's live
 * progress. No error text, as in rotation events: GET /v1/rotations/:id has the scrubbed error.
 */
export interface StepEvent {
  id: string;
  credential: string;
  rotation: string;
  step: string;
  outcome: 'succeeded' | 'skipped' | 'failed';
  attempt: number | null;
  time: string;
}

/** What the stream sends: rotations, their steps, the pushes that follow them, and notices of rotations to come. */
export type StreamEvent = RotationEvent | SyncEvent | UpcomingEvent | StepEvent;

const isSync = (event: StreamEvent): event is SyncEvent => 'sync' in event;
const isUpcoming = (event: StreamEvent): event is UpcomingEvent => 'upcoming' in event;
export const isStep = (event: StreamEvent): event is StepEvent => 'step' in event;

/** The stream event an audit event stands for, or undefined for every other audit event. */
export function rotationEventOf(event: AuditEvent): StreamEvent | undefined {
  if (
    (event.action === 'credential.synced' || event.action === 'credential.sync_failed') &&
    event.credential
  ) {
    const text = (value: unknown) => (typeof value === 'string' ? value : null);
    return {
      id: event.id,
      credential: event.credential,
      version: text(event.details?.version),
      outcome: event.action === 'credential.synced' ? 'synced' : 'failed',
      sync: {
        type: text(event.details?.type) ?? 'unknown',
        namespace: text(event.details?.namespace),
        name: text(event.details?.name),
      },
      time: event.time,
    };
  }
  if (event.action === 'rotation.upcoming' && event.credential) {
    const plannedAt = event.details?.plannedAt;
    return {
      id: event.id,
      credential: event.credential,
      plannedAt: typeof plannedAt === 'string' ? plannedAt : null,
      upcoming: true,
      time: event.time,
    };
  }
  if ((event.action === 'rotation.step' || event.action === 'rotation.step_failed') && event.credential) {
    if (!event.rotation) return undefined;
    const failed = event.action === 'rotation.step_failed';
    const result = event.details?.result;
    const attempt = event.details?.attempt;
    return {
      id: event.id,
      credential: event.credential,
      rotation: event.rotation,
      step: typeof event.details?.step === 'string' ? event.details.step : 'unknown',
      outcome: failed ? 'failed' : result === 'skipped' ? 'skipped' : 'succeeded',
      attempt: typeof attempt === 'number' ? attempt : null,
      time: event.time,
    };
  }
  if (event.action !== 'rotation.succeeded' && event.action !== 'rotation.failed') return undefined;
  if (!event.credential || !event.rotation) return undefined;
  const succeeded = event.action === 'rotation.succeeded';
  const text = (value: unknown) => (typeof value === 'string' ? value : null);
  return {
    id: event.id,
    credential: event.credential,
    rotation: event.rotation,
    version: succeeded ? (text(event.details?.version) ?? event.rotation) : null,
    outcome: succeeded ? 'succeeded' : 'failed',
    username: succeeded ? text(event.details?.username) : null,
    time: event.time,
  };
}

/** Audit actions after which a credential's labels (which reader bindings may match) must be read again. */
export function changesCredential(event: AuditEvent): boolean {
  if (event.action === 'credential.synced' || event.action === 'credential.sync_failed') return false;
  return event.action.startsWith('credential.') && event.credential !== undefined;
}

/** Redis stream ids ("<ms>-<seq>") in stream order: negative, zero or positive. */
export function compareStreamIds(a: string, b: string): number {
  const [am = 0n, as = 0n] = a.split('-').map((part) => BigInt(part));
  const [bm = 0n, bs = 0n] = b.split('-').map((part) => BigInt(part));
  if (am !== bm) return am < bm ? -1 : 1;
  return as === bs ? 0 : as < bs ? -1 : 1;
}

/** The start of every stream: an id before any entry. */
export const STREAM_START = '0-0';

// The wire format. A message ends with a blank line; a line starting with ":" is a comment that EventSource
// ignores (the heartbeat); a message with an `id:` but no `data:` dispatches nothing yet moves the client's
// last event id, which is how an idle stream keeps its resume point recent.

export function sseEvent(type: string, data: unknown, id?: string): string {
  // JSON.stringify escapes newlines inside strings: the data is always one line.
  return `${id === undefined ? '' : `id: ${id}\n`}event: ${type}\ndata: ${JSON.stringify(data)}\n\n`;
}

export function sseRotation(event: StreamEvent): string {
  if (isUpcoming(event)) {
    const { id, upcoming: _, ...data } = event;
    return sseEvent('upcoming', data, id);
  }
  const { id, ...data } = event;
  return sseEvent(isSync(event) ? 'sync' : isStep(event) ? 'step' : 'rotation', data, id);
}

export function sseComment(text: string): string {
  return `: ${text}\n\n`;
}

export function sseId(id: string): string {
  return `id: ${id}\n\n`;
}

export function sseRetry(ms: number): string {
  return `retry: ${ms}\n\n`;
}
