// Webhook notifications: what a delivery carries, and its job's data.
import type { NotificationEvent } from '../config/notification-events.ts';

/** The JSON body of a webhook delivery; every field comes from the audit event, which never holds a secret. */
export interface NotificationBody {
  /** The audit event id (stream id): the same for every retry, so a receiver can drop duplicates. */
  id: string;
  type: NotificationEvent;
  /** When the event happened (the audit event's time). */
  time: string;
  credential: string | null;
  rotation: string | null;
  /** The credential's version the event is about (the new one for rotation.succeeded), when it names one. */
  version: string | null;
  outcome: string;
  details: Record<string, string | number | boolean | null>;
}

/** BullMQ job data: ids only; the worker re-reads the event from the stream. */
export interface NotificationJobData {
  eventId: string;
  /** Position in KEYTURN_NOTIFY_WEBHOOK_URLS. */
  endpoint: number;
}
