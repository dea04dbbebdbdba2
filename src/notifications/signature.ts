// Webhook signatures, Stripe-style: `keyturn-signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` with
// `keyturn-timestamp` in unix seconds. Signing the timestamp with the body lets a receiver refuse a replayed
// delivery: it checks the signature over the raw body exactly as received, then that the timestamp is recent.
import { createHmac, timingSafeEqual } from 'node:crypto';

export const SIGNATURE_HEADER = 'keyturn-signature';
export const TIMESTAMP_HEADER = 'keyturn-timestamp';
export const EVENT_ID_HEADER = 'keyturn-event-id';

/** The signature header's value for a body sent at `timestamp` (unix seconds). */
export function signWebhook(secret: string, timestamp: number, body: string): string {
  return `v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

/**
 * For receivers written in Node: true when `header` holds a `v1=` signature of `body` made with `secret` at
 * `timestamp`, and that timestamp is within `toleranceSeconds` of `nowMs`. The comparison is constant-time. Pass the
 * raw body as received (a re-serialized JSON object does not match). The header may list several comma-separated
 * signatures; one matching is enough.
 */
export function verifyWebhookSignature(
  secret: string,
  timestamp: string | number | undefined,
  body: string | Buffer,
  header: string | undefined,
  toleranceSeconds = 300,
  nowMs: number = Date.now(),
): boolean {
  const ts = String(timestamp ?? '');
  if (!/^\d{1,12}$/.test(ts) || Math.abs(nowMs / 1000 - Number(ts)) > toleranceSeconds) return false;
  const expected = createHmac('sha256', secret)
    .update(`${ts}.`)
    .update(typeof body === 'string' ? Buffer.from(body, 'utf8') : body)
    .digest();
  let ok = false;
  for (const part of String(header ?? '').split(',')) {
    const m = /^\s*v1=([0-9a-f]{64})\s*$/.exec(part);
    // Every candidate is compared (no early exit), so the time taken says nothing about which one matched.
    if (m && timingSafeEqual(Buffer.from(m[1]!, 'hex'), expected)) ok = true;
  }
  return ok;
}
