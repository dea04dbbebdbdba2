// Admin rotation on a schedule, and side by side with credential rotations (issue 16 §3). Two worker processes;
// a connection whose admin rotates every two seconds; five credentials on it rotated over and over meanwhile. Every
// rotation succeeds, and no admin rotation's run overlaps a credential rotation's on the connection (the exclusive
// connection lock): read back from the rotation records. The compliance report lists the admin with its age.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createPgAdminRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  pgInfo,
  startKeyturn,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';

interface RotationRecord {
  id: string;
  status: string;
  actor: string;
  startedAt?: string;
  finishedAt?: string;
}

describe('admin rotation on a schedule, interleaved with credential rotations', () => {
  const env = testEnv({ LOG_LEVEL: 'warn' });
  let kt: Keyturn;
  let second: Keyturn;
  const connection = 'pg-adm';

  beforeAll(async () => {
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    second = await startKeyturn(env, { components: ['worker'] });
    // An admin of the test's own: rotating it must not touch the run's cluster admin that other tests log in with.
    const admin = await createPgAdminRole();
    const info = pgInfo();
    const res = await kt.api('POST', '/v1/connections', {
      id: connection,
      type: 'postgres',
      host: info.host,
      port: info.port,
      database: info.database,
      admin: { username: admin.name, password: admin.password },
      adminRotation: { schedule: { every: '2s' }, maxAgeDays: 30 },
    });
    expect(res.status, res.text).toBe(201);
    expect(res.body.adminRotation).toEqual({ schedule: { every: '2s' }, maxAgeDays: 30 });
  });
  afterAll(async () => {
    await second?.close();
    await kt?.close();
    await dropPrefix(env.prefix);
  });

  const adminRotations = async (): Promise<RotationRecord[]> => {
    const audit = await kt.api('GET', '/v1/audit?action=rotation.succeeded&limit=1000');
    const ids = (audit.body.events as Array<{ credential: string; rotation: string }>)
      .filter((e) => e.credential === `admin:${connection}`)
      .map((e) => e.rotation);
    return Promise.all(ids.map(async (id) => (await kt.api('GET', `/v1/rotations/${id}`)).body));
  };

  it('never overlaps a credential rotation, and every rotation succeeds', async () => {
    const credentials = await Promise.all(
      Array.from({ length: 5 }, (_, i) => importCredential(kt, connection, { idPrefix: `adm-il-${i}` })),
    );
    const records: RotationRecord[] = [];
    for (let round = 0; round < 4; round++) {
      const asked = await Promise.all([
        ...credentials.map((c) => kt.api('POST', `/v1/credentials/${c.id}/rotate`)),
        // A manual admin rotation too, in the same burst as the credentials'.
        kt.api('POST', `/v1/connections/${connection}/rotate`),
      ]);
      for (const a of asked) expect(a.status, a.text).toBe(202);
      const done = await Promise.all(asked.slice(0, -1).map((a) => waitForRotation(kt, a.body.rotationId)));
      for (const d of done) expect(d.status, JSON.stringify(d.error)).toBe('succeeded');
      records.push(...done);
      expect((await waitForRotation(kt, asked.at(-1)!.body.rotationId)).status).toBe('succeeded');
    }
    const admins = await waitFor('scheduled admin rotations', async () => {
      const found = await adminRotations();
      return found.filter((r) => r.actor === 'scheduler').length >= 2 && found;
    });
    expect(admins.length).toBeGreaterThanOrEqual(6);
    const span = (r: RotationRecord) => [Date.parse(r.startedAt!), Date.parse(r.finishedAt!)] as const;
    for (const admin of admins) {
      const [a0, a1] = span(admin);
      for (const credential of records) {
        const [c0, c1] = span(credential);
        expect(
          a1 < c0 || c1 < a0,
          `admin ${admin.id} [${admin.startedAt}, ${admin.finishedAt}] overlaps credential rotation ${credential.id} [${credential.startedAt}, ${credential.finishedAt}]`,
        ).toBe(true);
      }
    }
    // The services' passwords all work after it: each credential's current secret logs in.
    for (const c of credentials) {
      const dry = await kt.api('POST', `/v1/credentials/${c.id}/rotate?dryRun=true`);
      expect(dry.body.ok, JSON.stringify(dry.body.checks)).toBe(true);
    }
  });

  it('the compliance report lists the admin with its age; adminRotation: null stops the schedule', async () => {
    const report = await kt.api('GET', '/v1/compliance');
    const row = (report.body.admins as Array<Record<string, unknown>>).find(
      (a) => a.connection === connection,
    );
    expect(row).toMatchObject({
      targetType: 'postgres',
      scheduled: true,
      maxAgeDays: 30,
      overdue: false,
      lastOutcome: 'succeeded',
    });
    expect(row?.ageDays).toBe(0);
    expect(Date.parse(String(row?.lastRotatedAt))).toBeGreaterThan(Date.now() - 60_000);
    // Admin subjects are not credentials: the credential rows do not show them.
    expect((report.body.credentials as Array<{ id: string }>).some((c) => c.id.startsWith('admin:'))).toBe(
      false,
    );

    const stopped = await kt.api('PATCH', `/v1/connections/${connection}`, { adminRotation: null });
    expect(stopped.status, stopped.text).toBe(200);
    expect(stopped.body.adminRotation).toBe(null);
    // Whatever was in flight ends; after that, no scheduled one starts.
    await waitFor('no admin rotation in flight', async () =>
      (await adminRotations()).every((r) => r.status === 'succeeded'),
    );
    const settled = (await adminRotations()).length;
    await new Promise((resolve) => setTimeout(resolve, 4500)); // two of the old slots: only waiting shows nothing comes
    expect((await adminRotations()).length).toBe(settled);
    const after = (await kt.api('GET', '/v1/compliance')).body.admins.find(
      (a: { connection: string }) => a.connection === connection,
    );
    expect(after).toMatchObject({ scheduled: false, nextRotationAt: null });
  });

  it('refuses an adminRotation that is not a schedule, naming it', async () => {
    const bad = await kt.api('PATCH', `/v1/connections/${connection}`, {
      adminRotation: { schedule: { cron: '99 99 * * *' } },
    });
    expect(bad.status).toBe(422);
    expect(bad.body.error.message).toContain('adminRotation.');
    const unknown = await kt.api('PATCH', `/v1/connections/${connection}`, {
      adminRotation: { every: '1d' },
    });
    expect(unknown.status).toBe(400);
  });
});

describe('while the admin rotates', () => {
  // A test step that takes two seconds: long enough to act while the rotation is between its set and its finish.
  const env = testEnv({ LOG_LEVEL: 'warn', KEYTURN_FAILPOINTS: 'before-test=sleep:2000' });
  let kt: Keyturn;

  beforeAll(async () => {
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
  });
  afterAll(async () => {
    await kt?.close();
    await dropPrefix(env.prefix);
  });

  it("refuses to change or delete the connection's admin until it ends; a credential rotation waits for it", async () => {
    const admin = await createPgAdminRole();
    const info = pgInfo();
    const created = await kt.api('POST', '/v1/connections', {
      id: 'pg-busy',
      type: 'postgres',
      host: info.host,
      port: info.port,
      database: info.database,
      admin: { username: admin.name, password: admin.password },
    });
    expect(created.status, created.text).toBe(201);
    const cred = await importCredential(kt, 'pg-busy', { idPrefix: 'busy' });
    const asked = await kt.api('POST', '/v1/connections/pg-busy/rotate');
    await waitFor('the admin rotation past its set step', async () => {
      const r = (await kt.api('GET', `/v1/rotations/${asked.body.rotationId}`)).body;
      return r.step === 'test' && r.status === 'running';
    });
    const patch = await kt.api('PATCH', '/v1/connections/pg-busy', {
      admin: { password: 'another-0123456789-Aa' },
    });
    expect(patch.status).toBe(409);
    expect(patch.body.error.message).toContain('is being rotated');
    const del = await kt.api('DELETE', '/v1/connections/pg-busy');
    expect(del.status).toBe(409);
    const meanwhile = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    const done = await waitForRotation(kt, asked.body.rotationId);
    expect(done.status).toBe('succeeded');
    const after = await waitForRotation(kt, meanwhile.body.rotationId);
    expect(after.status).toBe('succeeded');
    expect(Date.parse(after.startedAt)).toBeGreaterThanOrEqual(Date.parse(done.finishedAt));
  });
});
