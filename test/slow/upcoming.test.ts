// Advance notice (issue 16 §4, SPEC's notifyBefore): a credential with `notifyBefore` gets a `rotation.upcoming` event
// that long before each scheduled rotation, in the audit stream, at the notification webhooks and on GET /v1/events,
// once per slot across worker processes; a paused credential's slot is not announced; a notice no longer asked for
// (notifyBefore: null) is not sent; notifyBefore must be shorter than the interval.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  waitFor,
} from '../support/harness.ts';
import { startNotificationReceiver } from '../support/notification-receiver.ts';
import { openSse, type SseStream } from '../support/sse.ts';

const secret = randomBytes(32).toString('base64url');

describe('rotation.upcoming (notifyBefore)', () => {
  let receiver: Awaited<ReturnType<typeof startNotificationReceiver>>;
  let env: ReturnType<typeof testEnv>;
  let kt: Keyturn;
  let second: Keyturn;
  let connection: string;
  let stream: SseStream;

  beforeAll(async () => {
    receiver = await startNotificationReceiver(secret, { '/ok': {} });
    env = testEnv({
      KEYTURN_NOTIFY_WEBHOOK_URLS: `${receiver.url}/ok`,
      KEYTURN_NOTIFY_WEBHOOK_SECRET: secret,
      KEYTURN_NOTIFY_EVENTS: 'rotation.upcoming,rotation.succeeded',
      LOG_LEVEL: 'warn',
    });
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    // A second worker process drains the same index: each notice still goes out once.
    second = await startKeyturn(env, { components: ['worker'] });
    connection = await registerPgConnection(kt);
    stream = await openSse(`${kt.url}/v1/events`, { headers: { authorization: `Bearer ${env.adminToken}` } });
  });
  afterAll(async () => {
    stream?.close();
    await second?.close();
    await kt?.close();
    await receiver?.close();
    if (env) await dropPrefix(env.prefix);
  });

  const auditOf = async (id: string, action: string) =>
    (
      (await kt.api('GET', `/v1/audit?action=${action}&limit=100`)).body.events as Array<{
        credential: string;
        time: string;
        details: Record<string, string>;
      }>
    ).filter((e) => e.credential === id);

  it('announces each scheduled rotation notifyBefore ahead, once, on every channel', async () => {
    const cred = await importCredential(kt, connection, {
      idPrefix: 'up',
      schedule: { every: '4s' },
      extra: { notifyBefore: '3s' },
    });
    expect((await kt.api('GET', `/v1/credentials/${cred.id}`)).body.notifyBefore).toBe('3s');
    // The first slot is 4 s after registration: its notice 1 s after registration, then the rotation.
    const rotated = await waitFor(
      'the first scheduled rotation',
      async () => {
        const done = await auditOf(cred.id, 'rotation.succeeded');
        return done.length > 0 && done;
      },
      20_000,
    );
    const notices = await auditOf(cred.id, 'rotation.upcoming');
    expect(notices).toHaveLength(1);
    const [notice] = notices;
    const plannedAt = Date.parse(String(notice?.details.plannedAt));
    const sentAt = Date.parse(notice!.time);
    // Sent about notifyBefore ahead of its slot (the drainer polls; a loaded machine is late, never early).
    expect(plannedAt - sentAt).toBeLessThanOrEqual(3000);
    expect(plannedAt - sentAt).toBeGreaterThan(0);
    expect(Date.parse(rotated[0]!.time)).toBeGreaterThanOrEqual(sentAt);
    expect(notice!.details.notifyBefore).toBe('3s');

    const delivered = await waitFor('the webhook delivery', async () => {
      const found = receiver.deliveries.filter(
        (d) => d.body?.type === 'rotation.upcoming' && d.body?.credential === cred.id,
      );
      return found.length > 0 && found;
    });
    expect(delivered).toHaveLength(1);
    expect(delivered[0]!.verified).toBe(true);
    const sse = await waitFor('the SSE event', async () => {
      const found = stream.messages.filter(
        (m) => m.event === 'upcoming' && JSON.parse(m.data).credential === cred.id,
      );
      return found.length > 0 && found;
    });
    expect(JSON.parse(sse[0]!.data)).toMatchObject({
      credential: cred.id,
      plannedAt: notice!.details.plannedAt,
    });

    // notifyBefore: null stops the notices; pausing too (no notice for a slot that will be skipped).
    expect((await kt.api('PATCH', `/v1/credentials/${cred.id}`, { notifyBefore: null })).status).toBe(200);
    expect((await kt.api('GET', `/v1/credentials/${cred.id}`)).body.notifyBefore).toBe(null);
    const before = (await auditOf(cred.id, 'rotation.upcoming')).length;
    await waitFor(
      'two more scheduled rotations',
      async () => (await auditOf(cred.id, 'rotation.succeeded')).length >= rotated.length + 2,
      30_000,
    );
    expect((await auditOf(cred.id, 'rotation.upcoming')).length).toBe(before);
  });

  it('says nothing for a paused credential', async () => {
    const cred = await importCredential(kt, connection, {
      idPrefix: 'up-paused',
      schedule: { every: '4s' },
      extra: { notifyBefore: '2s' },
    });
    expect((await kt.api('PATCH', `/v1/credentials/${cred.id}`, { paused: true })).status).toBe(200);
    await waitFor(
      'a skipped slot',
      async () => (await auditOf(cred.id, 'rotation.skipped')).length > 0,
      20_000,
    );
    expect(await auditOf(cred.id, 'rotation.upcoming')).toEqual([]);
  });

  it('refuses a notifyBefore as long as the interval, and one that is not a duration', async () => {
    const res = await kt.api('POST', '/v1/credentials', {
      id: 'up-bad',
      connection,
      username: 'nobody',
      strategy: 'single-user',
      schedule: { every: '1h' },
      notifyBefore: '1h',
    });
    expect(res.status).toBe(422);
    expect(res.body.error.message).toContain('notifyBefore must be shorter than the rotation interval');
    const notDuration = await kt.api('POST', '/v1/credentials', {
      id: 'up-bad',
      connection,
      username: 'nobody',
      strategy: 'single-user',
      schedule: { every: '1h' },
      notifyBefore: 'tomorrow',
    });
    expect(notDuration.status).toBe(400);
    expect(notDuration.text).toContain('notifyBefore');
  });
});
