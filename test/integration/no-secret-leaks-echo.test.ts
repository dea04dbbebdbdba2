// Finding 10 of issue 11: a downstream that echoes the password it received in its error put the admin secret into a
// lease's 422 answer, its `lease.create_failed` audit event, log lines and the lease's `lastError`. Here a fake
// PostgreSQL that asks for a cleartext password (allowed on this connection with options.requireAuth, so that it
// receives them) answers every login with an error quoting that password, on the lease, rotation and import paths.
// Every password it received, the admin's included, must appear nowhere: answers, audit trail, rotation and lease
// records, logs, Redis values and the commands sent to Redis. The same holds for work a worker does outside any
// request or job: the lease sweep it runs as it starts.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FakePostgres, startFakePostgres } from '../support/fake-postgres.ts';
import {
  dropPrefix,
  type Keyturn,
  startKeyturn,
  type TestEnv,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { assertNoSecrets, monitorRedis, redisValues } from '../support/leaks.ts';

/** The connection lets the impostor ask for cleartext: the point here is what Keyturn does with the echo. */
const LET_IT_ASK = { requireAuth: 'scram-sha-256,password' };
const ADMIN_PASSWORD = `admin-${randomBytes(16).toString('hex')}`;
const IMPORT_PASSWORD = `import-${randomBytes(16).toString('hex')}`;

let env: TestEnv;
let kt: Keyturn;
let fake: FakePostgres;
let monitor: Awaited<ReturnType<typeof monitorRedis>>;
let worker: Keyturn | undefined;
const answers: string[] = [];

beforeAll(async () => {
  fake = await startFakePostgres({ auth: 'password' });
  // No scheduled lease sweep during the test: the one a worker runs as it starts is the one under test.
  env = testEnv({
    KEYTURN_ROTATION_ATTEMPTS: '1',
    LOG_LEVEL: 'debug',
    KEYTURN_LEASE_SWEEP_INTERVAL_MS: '3600000',
  });
  monitor = await monitorRedis(env.prefix);
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
});
afterAll(async () => {
  monitor?.stop();
  await worker?.close();
  await kt?.close();
  await fake?.close();
  if (env) await dropPrefix(env.prefix);
});

async function call(method: string, path: string, body?: unknown) {
  const res = await kt.api(method, path, body);
  answers.push(`${method} ${path} ${res.status} ${res.text}`);
  return res;
}

describe('finding 10: an echoing downstream leaks no password on any path', () => {
  it('lease, rotation and import errors carry no password the downstream echoed', async () => {
    const connection = await call('POST', '/v1/connections', {
      id: 'echo',
      type: 'postgres',
      host: '127.0.0.1',
      port: fake.port,
      database: 'app',
      admin: { username: 'keyturn_admin', password: ADMIN_PASSWORD },
      options: LET_IT_ASK,
      verify: false, // the fake refuses every login, echoing: the rotation and lease paths are what is tested
    });
    expect(connection.status, connection.text).toBe(201);

    // Rotation: registered, its first rotation fails against the echoing server.
    const created = await call('POST', '/v1/credentials', {
      id: 'echo-app',
      connection: 'echo',
      username: 'app',
      strategy: 'single-user',
      schedule: { every: '30d' },
    });
    expect(created.status, created.text).toBe(201);
    const rotation = await waitForRotation(kt, created.body.rotation.id);
    expect(rotation.status).toBe('failed');
    answers.push(JSON.stringify(rotation));

    // Import: the password check fails against it.
    const imported = await call('POST', '/v1/credentials', {
      id: 'echo-imported',
      connection: 'echo',
      username: 'other',
      strategy: 'single-user',
      schedule: { every: '30d' },
      import: true,
      currentPassword: IMPORT_PASSWORD,
    });
    expect(imported.status, imported.text).toBe(422);

    // Lease: the admin login fails, and the echo quotes the admin password.
    const lease = await call('POST', '/v1/credentials/echo-app/leases', { ttl: '5m' });
    expect(lease.status, lease.text).toBe(422);
    const leases = await call('GET', '/v1/credentials/echo-app/leases');
    expect(leases.body.leases).toHaveLength(1);
    // Revoking it on request: the admin login fails again, and the 202 answer says why.
    const revoke = await call('DELETE', `/v1/leases/${leases.body.leases[0].id}`);
    expect(revoke.status, revoke.text).toBe(202);
    await call('GET', '/v1/credentials/echo-app');
    await call('GET', '/v1/audit?limit=1000');
    // A dry run logs in as the admin (echoed) and reports why it could not; verify does the same at registration.
    const dry = await call('POST', '/v1/credentials/echo-app/rotate?dryRun=true');
    expect(dry.status, dry.text).toBe(200);
    expect(dry.body.ok).toBe(false);
    const verified = await call('PATCH', '/v1/connections/echo', { admin: { password: ADMIN_PASSWORD } });
    expect(verified.status, verified.text).toBe(422);

    // The echoes did happen: the fake received the admin password (and others) and quoted each in its error.
    expect(fake.passwordsReceived).toContain(ADMIN_PASSWORD);
    expect(fake.passwordsReceived).toContain(IMPORT_PASSWORD);
    const secrets = new Set([ADMIN_PASSWORD, IMPORT_PASSWORD, ...fake.passwordsReceived]);
    const audit = (await kt.api('GET', '/v1/audit?limit=1000')).body.events.map((e: unknown) =>
      JSON.stringify(e),
    );
    expect(audit.some((e: string) => e.includes('lease.create_failed'))).toBe(true);
    assertNoSecrets(secrets, [
      ['API answers', answers],
      ['audit trail', audit],
      ['logs', kt.logs],
      ['Redis values', await redisValues(env.prefix)],
      ['Redis commands', monitor.commands],
    ]);
  });

  it('a worker starting up sweeps the failed lease in a scope of its own: its lastError and logs carry no echo', async () => {
    const [before] = (await call('GET', '/v1/credentials/echo-app/leases')).body.leases;
    expect(before.status).toBe('revoking');
    const received = fake.passwordsReceived.length;
    worker = await startKeyturn(env, { components: ['worker'] });
    const started = worker;
    // The sweep it runs as it starts tries to drop the lease user: the admin login fails, echoed, and that failure is
    // logged and recorded in the lease.
    await waitFor('the start-up sweep to try the lease', async () =>
      started.logs.some((l) => l.includes('lease revocation failed')),
    );
    expect(fake.passwordsReceived.slice(received)).toContain(ADMIN_PASSWORD);
    const [after] = (await call('GET', '/v1/credentials/echo-app/leases')).body.leases;
    expect(after.revokeAttempts).toBeGreaterThan(before.revokeAttempts);
    expect(after.lastError).toMatch(/\[redacted\]/);
    const audit = (await kt.api('GET', '/v1/audit?limit=1000')).body.events.map((e: unknown) =>
      JSON.stringify(e),
    );
    assertNoSecrets(new Set(fake.passwordsReceived), [
      ['API answers', answers],
      ['audit trail', audit],
      ['start-up worker logs', started.logs],
      ['logs', kt.logs],
      ['Redis values', await redisValues(env.prefix)],
      ['Redis commands', monitor.commands],
    ]);
  });
});
