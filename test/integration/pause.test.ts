// Pause (issue 16 §4, SPEC "Rotation controls": `paused: true|false` on PATCH of a credential or a connection): scheduled
// rotations stop, each skipped slot is audited, a manual rotate still runs, the report and the metrics say what is
// paused and since when, and resuming picks the schedule up again.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';

const env = testEnv({ LOG_LEVEL: 'warn' });
let kt: Keyturn;
let connection: string;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
});

interface AuditEvent {
  action: string;
  outcome: string;
  details: Record<string, unknown>;
}
const eventsOf = async (id: string, action: string): Promise<AuditEvent[]> =>
  (await kt.api('GET', `/v1/audit?credential=${id}&action=${action}&limit=1000`)).body.events;
const rotationsOf = async (id: string): Promise<Array<{ id: string; trigger: string }>> =>
  (await kt.api('GET', `/v1/credentials/${id}/rotations`)).body.rotations;

describe('pausing a credential', () => {
  it('stops its scheduled rotations (each slot skipped and audited); a manual rotate still runs; resuming rotates again', async () => {
    const { id } = await importCredential(kt, connection, { idPrefix: 'pause', schedule: { every: '2s' } });
    const paused = await kt.api('PATCH', `/v1/credentials/${id}`, { paused: true });
    expect(paused.status, paused.text).toBe(200);
    expect(paused.body).toMatchObject({ paused: true, pausedSince: expect.any(String) });
    const since = paused.body.pausedSince as string;
    // Pausing again keeps the first pause's time: "for how long" counts from when it began.
    expect((await kt.api('PATCH', `/v1/credentials/${id}`, { paused: true })).body.pausedSince).toBe(since);

    const skipped = await waitFor(
      'two skipped slots',
      async () => {
        const events = await eventsOf(id, 'rotation.skipped');
        return events.length >= 2 ? events : undefined;
      },
      20_000,
      200,
    );
    expect(skipped[0]?.details).toMatchObject({
      reason: 'paused',
      pausedBy: 'credential',
      pausedSince: since,
    });
    expect((await rotationsOf(id)).filter((r) => r.trigger === 'schedule')).toEqual([]);

    // The report and the metrics say so.
    const report = (await kt.api('GET', '/v1/compliance')).body;
    expect(report.credentials.find((r: { id: string }) => r.id === id)).toMatchObject({
      paused: true,
      pausedSince: since,
    });
    expect(report.totals.paused).toBeGreaterThanOrEqual(1);
    const metrics = (await kt.api('GET', '/metrics')).text;
    expect(Number(/^keyturn_credentials_paused (\d+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1);
    const csv = (await kt.api('GET', '/v1/compliance?format=csv')).text;
    expect(csv.split('\r\n')[0]).toContain('paused,pausedSince');

    // A manual rotate is not a scheduled one: it runs.
    const manual = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(manual.status).toBe(202);
    expect((await waitForRotation(kt, manual.body.rotationId)).status).toBe('succeeded');

    const resumed = await kt.api('PATCH', `/v1/credentials/${id}`, { paused: false });
    expect(resumed.body).toMatchObject({ paused: false, pausedSince: null });
    const scheduled = await waitFor(
      'a scheduled rotation after resuming',
      async () => (await rotationsOf(id)).find((r) => r.trigger === 'schedule'),
      20_000,
      200,
    );
    expect((await waitForRotation(kt, scheduled.id)).status).toBe('succeeded');
    const updates = await eventsOf(id, 'credential.updated');
    expect(updates.map((e) => e.details.paused).filter((p) => p !== undefined)).toEqual(
      expect.arrayContaining([true, false]),
    );
  }, 90_000);
});

describe('pausing a connection', () => {
  it('stops the scheduled rotations of every credential on it until it resumes', async () => {
    const own = await registerPgConnection(kt);
    const { id } = await importCredential(kt, own, { idPrefix: 'cpause', schedule: { every: '2s' } });
    const paused = await kt.api('PATCH', `/v1/connections/${own}`, { paused: true });
    expect(paused.status, paused.text).toBe(200);
    const view = (await kt.api('GET', `/v1/connections/${own}`)).body;
    expect(view).toMatchObject({ paused: true, pausedSince: expect.any(String) });
    const skipped = await waitFor(
      'a slot skipped for the connection',
      async () => (await eventsOf(id, 'rotation.skipped'))[0],
      20_000,
      200,
    );
    expect(skipped.details).toMatchObject({
      reason: 'paused',
      pausedBy: 'connection',
      pausedSince: view.pausedSince,
    });
    const row = (await kt.api('GET', '/v1/compliance')).body.credentials.find(
      (r: { id: string }) => r.id === id,
    );
    expect(row).toMatchObject({ paused: true, pausedSince: view.pausedSince });
    const update = (await kt.api('GET', `/v1/audit?action=connection.updated&limit=1000`)).body.events.find(
      (e: { connection?: string; details: Record<string, unknown> }) => e.connection === own,
    );
    expect(update.details).toMatchObject({ 'pausedAt.from': '', 'pausedAt.to': view.pausedSince });

    expect((await kt.api('PATCH', `/v1/connections/${own}`, { paused: false })).body.paused).toBe(false);
    const scheduled = await waitFor(
      'a scheduled rotation after the connection resumed',
      async () => (await rotationsOf(id)).find((r) => r.trigger === 'schedule'),
      20_000,
      200,
    );
    expect((await waitForRotation(kt, scheduled.id)).status).toBe('succeeded');
  }, 90_000);

  it('refuses a paused value that is not a boolean, naming the field', async () => {
    const res = await kt.api('PATCH', `/v1/connections/${connection}`, { paused: 'yes' });
    expect(res.status).toBe(400);
    expect(res.body.error.message).toContain('paused');
  });
});
