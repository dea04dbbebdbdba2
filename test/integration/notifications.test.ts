// Acceptance (issue 6): webhooks on rotation succeeded and failed, signed with HMAC-SHA256 (checked in the receiver
// with the exported verifier and recomputed here with node:crypto) and retried with backoff through BullMQ: a receiver
// answering 500 twice gets the event on the third attempt; receivers that never answer 2xx (an error status, a
// redirect, no answer within the timeout) end in one `notification.failed` audit event each after the configured
// attempts. No password, admin password, HMAC secret or URL token appears in a delivery, a job, the audit or the
// logs. An event a dead worker read and never acknowledged is taken over by another (XAUTOCLAIM).

import { createHmac, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NOTIFY_GROUP } from '../../src/notifications/notifier.ts';
import { signWebhook, verifyWebhookSignature } from '../../src/notifications/signature.ts';
import type { RedisClient } from '../../src/redis/client.ts';
import {
  createAppRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  pgInfo,
  registerPgConnection,
  startKeyturn,
  testEnv,
  testKeys,
  testRedis,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { type Delivery, startNotificationReceiver } from '../support/notification-receiver.ts';

const secret = randomBytes(32).toString('base64url');
/** A token in one webhook URL's path and query, as chat webhooks carry: it must never be logged or audited. */
const urlToken = randomBytes(12).toString('hex');
const ATTEMPTS = 3;
const DOWN = `/down/${urlToken}`;

let receiver: Awaited<ReturnType<typeof startNotificationReceiver>>;
let env: ReturnType<typeof testEnv>;
let kt: Keyturn;
let redis: RedisClient;

beforeAll(async () => {
  receiver = await startNotificationReceiver(secret, {
    '/ok': {},
    '/flaky': { script: [500, 500] },
    [DOWN]: { always: 503 },
    '/moved': { always: 302 },
    '/hang': { hang: true },
  });
  const urls = ['/ok', '/flaky', `${DOWN}?key=${urlToken}`, '/moved', '/hang'].map((p) => receiver.url + p);
  env = testEnv({
    KEYTURN_NOTIFY_WEBHOOK_URLS: urls.join(','),
    KEYTURN_NOTIFY_WEBHOOK_SECRET: secret,
    KEYTURN_NOTIFY_ATTEMPTS: String(ATTEMPTS),
    KEYTURN_NOTIFY_BACKOFF_MS: '50',
    KEYTURN_NOTIFY_TIMEOUT_MS: '300',
    LOG_LEVEL: 'debug',
  });
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  redis = testRedis();
});

afterAll(async () => {
  await kt?.close();
  await receiver?.close();
  redis?.disconnect();
  if (env) await dropPrefix(env.prefix);
});

const streamKey = () => testKeys(env.prefix).audit();
const deliveriesOf = (eventId: string, path?: string) =>
  receiver.deliveries.filter((d) => d.headers['keyturn-event-id'] === eventId && (!path || d.path === path));

/** Every delivery that could still come has come: nothing pending in the group, the queue drained. */
async function settled(runtime: Keyturn): Promise<void> {
  await waitFor(
    'notifications to settle',
    async () => {
      const pending = (await redis.xpending(streamKey(), NOTIFY_GROUP)) as [number, ...unknown[]];
      const counts = await runtime.runtime.queues.notifications.getJobCounts('waiting', 'active', 'delayed');
      return pending[0] === 0 && Object.values(counts).every((n) => n === 0);
    },
    30_000,
  );
}

async function auditEvents(query: string): Promise<any[]> {
  return (await kt.api('GET', `/v1/audit?limit=1000&${query}`)).body.events;
}

describe('rotation notifications', () => {
  it('are delivered signed, retried with backoff, and given up on with notification.failed', async () => {
    const started = Date.now();
    const connection = await registerPgConnection(kt);
    const good = await importCredential(kt, connection, { idPrefix: 'notify-ok' });
    // A connection whose admin password is wrong: the first rotation of a credential on it fails.
    const badAdminPassword = randomBytes(18).toString('base64url');
    const info = pgInfo();
    const badConnection = await kt.api('POST', '/v1/connections', {
      id: `notify-bad-${randomBytes(3).toString('hex')}`,
      type: 'postgres',
      host: info.host,
      port: info.port,
      database: info.database,
      admin: { username: info.adminUser, password: badAdminPassword },
      verify: false, // its rotation must fail downstream
    });
    expect(badConnection.status, badConnection.text).toBe(201);
    const role = await createAppRole();
    const failing = await kt.api('POST', '/v1/credentials', {
      id: `notify-fail-${role.name}`,
      connection: badConnection.body.id,
      username: role.name,
      strategy: 'single-user',
      schedule: { every: '30d' },
    });
    expect(failing.status, failing.text).toBe(201);

    const rotate = await kt.api('POST', `/v1/credentials/${good.id}/rotate`);
    const succeeded = await waitForRotation(kt, rotate.body.rotationId);
    expect(succeeded.status).toBe('succeeded');
    const failed = await waitForRotation(kt, failing.body.rotation.id);
    expect(failed.status).toBe('failed');

    const [okEvent] = await auditEvents(`action=rotation.succeeded&credential=${good.id}`);
    const [koEvent] = await auditEvents(`action=rotation.failed&credential=${failing.body.id}`);
    expect(okEvent && koEvent).toBeTruthy();
    await waitFor('every attempt of both events', async () =>
      [okEvent, koEvent].every(
        (e) =>
          deliveriesOf(e.id, '/flaky').length === ATTEMPTS &&
          deliveriesOf(e.id, DOWN).length === ATTEMPTS &&
          deliveriesOf(e.id, '/moved').length === ATTEMPTS &&
          deliveriesOf(e.id, '/hang').length === ATTEMPTS,
      ),
    );
    await settled(kt);
    console.log(`rotation notifications: 2 events × 5 endpoints settled in ${Date.now() - started} ms`);

    for (const [event, version] of [
      [okEvent, succeeded.id],
      [koEvent, null],
    ] as const) {
      // One delivery where the receiver says 200; three attempts where it says 500, 500, 200; three elsewhere.
      expect(deliveriesOf(event.id, '/ok').map((d) => d.status)).toEqual([200]);
      expect(deliveriesOf(event.id, '/flaky').map((d) => d.status)).toEqual([500, 500, 200]);
      expect(deliveriesOf(event.id, DOWN).map((d) => d.status)).toEqual([503, 503, 503]);
      expect(deliveriesOf(event.id, '/moved').map((d) => d.status)).toEqual([302, 302, 302]);
      expect(deliveriesOf(event.id, '/hang')).toHaveLength(ATTEMPTS);
      for (const d of deliveriesOf(event.id)) {
        expect(d.verified, `${d.path} attempt ${d.attempt}`).toBe(true);
        // Recomputed independently of the verifier: v1= hex HMAC-SHA256 over "<timestamp>.<raw body>".
        const ts = String(d.headers['keyturn-timestamp']);
        expect(Math.abs(Number(ts) - Date.now() / 1000)).toBeLessThan(60);
        const mac = createHmac('sha256', secret).update(`${ts}.${d.raw}`).digest('hex');
        expect(d.headers['keyturn-signature']).toBe(`v1=${mac}`);
        expect(d.headers['content-type']).toBe('application/json');
        expect(d.headers['user-agent']).toBe('keyturn');
        expect(d.body).toEqual({
          id: event.id,
          type: event.action,
          time: event.time,
          credential: event.credential,
          rotation: event.rotation,
          version,
          outcome: event.outcome,
          details: event.details,
        });
      }
    }
    expect(deliveriesOf(okEvent.id, '/ok')[0]!.body.outcome).toBe('success');
    expect(deliveriesOf(koEvent.id, '/ok')[0]!.body.details.error).toMatch(/password authentication failed/);

    // The redirect was not followed: /ok got exactly one request per event.
    expect(receiver.deliveries.filter((d) => d.path === '/ok')).toHaveLength(2);

    // One notification.failed per event and endpoint that never answered 2xx, naming the host only.
    const gaveUp = await auditEvents('action=notification.failed');
    expect(gaveUp).toHaveLength(6);
    for (const event of [okEvent, koEvent]) {
      const mine = gaveUp.filter((e) => e.details.event === event.id);
      expect(mine.map((e) => e.details.status).sort()).toEqual([302, 503, null]);
      for (const e of mine) {
        expect(e).toMatchObject({ actor: 'system', outcome: 'failure', credential: event.credential });
        expect(e.details).toMatchObject({ type: event.action, endpoint: receiver.host, attempts: ATTEMPTS });
      }
      expect(mine.find((e) => e.details.status === null).details.reason).toBe('no answer within 300 ms');
      expect(mine.find((e) => e.details.status === 302).details.reason).toMatch(/redirects are not followed/);
    }

    // Job data: ids only.
    const jobs = await kt.runtime.queues.notifications.getJobs(['completed', 'failed']);
    expect(jobs.length).toBe(10);
    for (const job of jobs) expect(Object.keys(job.data).sort()).toEqual(['endpoint', 'eventId']);

    // Nothing secret anywhere: the credentials' passwords (imported and rotated), the bad admin password, the
    // HMAC secret and the URL's token.
    const current = (await kt.api('GET', `/v1/credentials/${good.id}/secret`)).body.password as string;
    const forbidden = [good.password, current, badAdminPassword, secret, urlToken];
    const delivered = receiver.deliveries.map((d: Delivery) => `${d.raw}\n${JSON.stringify(d.headers)}`);
    const audit = JSON.stringify(await auditEvents(''));
    const logs = kt.logs.join('\n');
    const jobData = JSON.stringify(jobs.map((j) => j.data));
    for (const value of forbidden) {
      for (const text of delivered) expect(text.includes(value)).toBe(false);
      expect(logs.includes(value), 'logs').toBe(false);
      expect(audit.includes(value), 'audit').toBe(false);
      expect(jobData.includes(value), 'jobs').toBe(false);
    }
    expect(logs).toContain('notification not delivered; giving up');
  });

  it('the exported verifier refuses a changed body, a stale timestamp and another key', () => {
    const body = '{"id":"1-0","type":"rotation.succeeded"}';
    const now = Date.now();
    const ts = Math.floor(now / 1000);
    const header = signWebhook(secret, ts, body);
    expect(verifyWebhookSignature(secret, ts, body, header, 300, now)).toBe(true);
    expect(verifyWebhookSignature(secret, String(ts), Buffer.from(body), header, 300, now)).toBe(true);
    expect(verifyWebhookSignature(secret, ts, body.replace('1-0', '2-0'), header, 300, now)).toBe(false);
    expect(verifyWebhookSignature(secret, ts, body, header, 300, now + 301_000)).toBe(false);
    expect(verifyWebhookSignature(secret, ts + 1, body, header, 300, now)).toBe(false);
    expect(verifyWebhookSignature(`${secret}x`, ts, body, header, 300, now)).toBe(false);
    expect(verifyWebhookSignature(secret, ts, body, undefined, 300, now)).toBe(false);
    expect(verifyWebhookSignature(secret, 'soon', body, header, 300, now)).toBe(false);
    expect(verifyWebhookSignature(secret, ts, body, `v1=${'0'.repeat(64)}, ${header}`, 300, now)).toBe(true);
  });
});

describe('a worker that dies after reading an event', () => {
  it('leaves it pending, and another worker takes it over and delivers it', async () => {
    await settled(kt);
    await kt.close();
    // The event is read by a consumer that never acknowledges it: a worker killed right after its read.
    const credential = `ghost-${randomBytes(3).toString('hex')}`;
    const id = (await redis.xadd(
      streamKey(),
      '*',
      'e',
      JSON.stringify({
        time: new Date().toISOString(),
        actor: 'system',
        action: 'credential.overdue',
        outcome: 'failure',
        credential,
        details: { ageDays: 3, maxAgeDays: 2, rotatedAt: new Date().toISOString() },
      }),
    )) as string;
    const read = (await redis.xreadgroup(
      'GROUP',
      NOTIFY_GROUP,
      'dead-worker',
      'COUNT',
      10,
      'STREAMS',
      streamKey(),
      '>',
    )) as Array<[string, Array<[string, string[]]>]>;
    expect(read[0]![1].map(([entryId]) => entryId)).toContain(id);

    const started = Date.now();
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    const delivery = await waitFor('the taken-over event', async () => deliveriesOf(id, '/ok')[0], 30_000);
    const tookMs = Date.now() - started;
    // Taken over once idle for 2 × KEYTURN_ROTATION_LEASE_MS (2 s in tests), checked every half of that.
    console.log(`event left pending by a dead consumer delivered ${tookMs} ms after a new worker started`);
    expect(delivery.verified).toBe(true);
    expect(delivery.body).toMatchObject({ id, type: 'credential.overdue', credential });
    await settled(kt);
    expect(deliveriesOf(id, '/ok')).toHaveLength(1);
  });
});
