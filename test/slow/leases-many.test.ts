// 200 leases asked for at once on the password-checking PostgreSQL: every one is issued with its own user, every
// user logs in, and every one is revoked at expiry (no role left behind, no login left working).
import pLimit from 'p-limit';
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  pgAdmin,
  registerPgConnection,
  spawnWorker,
  startKeyturn,
  testEnv,
  type WorkerProcess,
  waitFor,
} from '../support/harness.ts';

const COUNT = 200;
const env = testEnv({ KEYTURN_LEASE_SWEEP_INTERVAL_MS: '2000' });
let kt: Keyturn;
let worker: WorkerProcess;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api'] });
  worker = spawnWorker(env);
});
afterAll(async () => {
  await worker?.kill('SIGKILL');
  await kt?.close();
  await dropPrefix(env.prefix);
});

it(`${COUNT} leases issued concurrently all work and are all revoked`, async () => {
  const connection = await registerPgConnection(kt);
  const { id } = await importCredential(kt, connection, { idPrefix: 'many' });
  // Long enough that every login below happens before the expiry, on a slow shared machine too.
  const responses = await Promise.all(
    Array.from({ length: COUNT }, () => kt.api('POST', `/v1/credentials/${id}/leases`, { ttl: '45s' })),
  );
  const failures = responses.filter((r) => r.status !== 201).map((r) => `${r.status} ${r.text}`);
  expect(failures).toEqual([]);
  const leases = responses.map((r) => r.body as { id: string; username: string; password: string });
  expect(new Set(leases.map((l) => l.username)).size).toBe(COUNT);
  expect(new Set(leases.map((l) => l.id)).size).toBe(COUNT);

  const limit = pLimit(10);
  const logins = await Promise.all(leases.map((l) => limit(() => canLogin(l.username, l.password))));
  expect(logins.filter((ok) => !ok)).toEqual([]);

  await waitFor(
    `all ${COUNT} leases revoked`,
    async () => {
      const { body } = await kt.api('GET', `/v1/credentials/${id}/leases?limit=1000`);
      const statuses = (body.leases as Array<{ status: string }>).map((l) => l.status);
      return statuses.length === COUNT && statuses.every((s) => s === 'revoked');
    },
    120_000,
    1000,
  );
  const left = await pgAdmin(async (c) => {
    const r = await c.query('SELECT rolname FROM pg_roles WHERE rolname = ANY($1)', [
      leases.map((l) => l.username),
    ]);
    return r.rows.map((row) => row.rolname as string);
  });
  expect(left).toEqual([]);
  const after = await Promise.all(leases.map((l) => limit(() => canLogin(l.username, l.password))));
  expect(after.filter((ok) => ok)).toEqual([]);
  const audit = await kt.api('GET', `/v1/audit?credential=${id}&action=lease.revoked&limit=1000`);
  expect(audit.body.events).toHaveLength(COUNT);
}, 240_000);
