// Short-lived credentials on every target that makes lease users (PostgreSQL, MySQL/MariaDB, Redis ACL): a lease's
// user logs in, has the credential user's access, and is gone after expiry (revoked by the delayed job); with the
// worker SIGKILLed across the expiry, the sweep revokes it after a restart, including a lease whose job was lost.
// On PostgreSQL also: renewal up to the maximum TTL (VALID UNTIL follows), revocation by id, deleting the
// credential revokes its leases, input errors. No lease password reaches Redis, the logs or the audit trail.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  pgAdmin,
  pgInfo,
  registerPgConnection,
  spawnWorker,
  startKeyturn,
  testEnv,
  type WorkerProcess,
  waitFor,
} from '../support/harness.ts';
import { assertNoSecrets, monitorRedis, redisValues } from '../support/leaks.ts';
import { importTargetUser, type StartedTarget, TARGET_FIXTURES } from '../support/targets.ts';

const env = testEnv({
  KEYTURN_LEASE_SWEEP_INTERVAL_MS: '1000',
  KEYTURN_LEASE_DEFAULT_TTL: '10m',
  KEYTURN_LEASE_MAX_TTL: '1h',
});
let kt: Keyturn;
let worker: WorkerProcess;
const workers: WorkerProcess[] = [];
const leasePasswords: string[] = [];
let redisMonitor: Awaited<ReturnType<typeof monitorRedis>>;

function startWorker(): WorkerProcess {
  worker = spawnWorker(env);
  workers.push(worker);
  return worker;
}

beforeAll(async () => {
  redisMonitor = await monitorRedis(env.prefix);
  kt = await startKeyturn(env, { components: ['api'] });
  startWorker();
});
afterAll(async () => {
  redisMonitor?.stop();
  await Promise.all(workers.map((w) => w.kill('SIGKILL')));
  await kt?.close();
  await dropPrefix(env.prefix);
});

/** A downstream with a credential registered on it, and the ways to check a lease user there. */
interface LeaseTarget {
  credential: string;
  canLogin(username: string, password: string): Promise<boolean>;
  /** Whether the user still exists downstream (PostgreSQL refuses an expired user's login by itself). */
  exists(username: string, password: string): Promise<boolean>;
  /** Runs something only the credential's user may do, as the lease user. */
  useAccess(username: string, password: string): Promise<void>;
  stop(): Promise<void>;
}

async function postgresTarget(): Promise<LeaseTarget> {
  const connection = await registerPgConnection(kt);
  const { id, role } = await importCredential(kt, connection, { idPrefix: 'lease' });
  const table = `lease_t_${randomBytes(4).toString('hex')}`;
  await pgAdmin(async (c) => {
    await c.query(`CREATE TABLE ${table} (n int)`);
    await c.query(`INSERT INTO ${table} VALUES (42)`);
    await c.query(`GRANT SELECT ON ${table} TO ${pg.escapeIdentifier(role.group)}`);
  });
  return {
    credential: id,
    canLogin: (u, p) => canLogin(u, p),
    exists: async (u) =>
      pgAdmin(async (c) => (await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [u])).rowCount === 1),
    async useAccess(username, password) {
      const { host, port, database } = pgInfo();
      const c = new pg.Client({ host, port, database, user: username, password });
      await c.connect();
      try {
        const r = await c.query(`SELECT n FROM ${table}`);
        expect(r.rows).toEqual([{ n: 42 }]);
      } finally {
        await c.end();
      }
    },
    stop: async () => {
      await pgAdmin((c) => c.query(`DROP TABLE IF EXISTS ${table}`));
    },
  };
}

async function fixtureTarget(name: string): Promise<LeaseTarget> {
  const fixture = TARGET_FIXTURES.find((f) => f.name === name)!;
  const started: StartedTarget = await fixture.start();
  const connection = `lease-${name.replace(/[^a-z]/gi, '').toLowerCase()}`;
  const res = await kt.api('POST', '/v1/connections', { id: connection, ...started.connection });
  expect(res.status).toBe(201);
  const user = await started.createUser();
  const credential = await importTargetUser(kt, connection, user, 'single-user', 'lease');
  return {
    credential,
    canLogin: (u, p) => started.canLogin(u, p),
    exists: (u, p) => started.canLogin(u, p),
    // The fixtures' users may log in only with their grants (MariaDB: the test database; Redis: AUTH and PING).
    useAccess: async (u, p) => expect(await started.canLogin(u, p)).toBe(true),
    stop: () => started.stop(),
  };
}

const TARGETS: Array<{
  name: string;
  skip: () => Promise<string | undefined>;
  start(): Promise<LeaseTarget>;
}> = [
  { name: 'PostgreSQL', skip: async () => undefined, start: postgresTarget },
  ...['MySQL/MariaDB', 'Redis ACL'].map((name) => {
    const fixture = TARGET_FIXTURES.find((f) => f.name === name)!;
    return { name, skip: () => fixture.skipReason(), start: () => fixtureTarget(name) };
  }),
];
const plan = await Promise.all(TARGETS.map(async (t) => ({ ...t, reason: await t.skip() })));
for (const t of plan) if (t.reason) console.warn(`skipping lease tests on ${t.name}: ${t.reason}`);

async function issue(credential: string, ttl: string | number) {
  const res = await kt.api('POST', `/v1/credentials/${credential}/leases`, { ttl });
  expect(res.status, res.text).toBe(201);
  leasePasswords.push(res.body.password);
  return res.body as { id: string; username: string; password: string; expiresAt: string; status: string };
}

const leaseOf = async (id: string) => (await kt.api('GET', `/v1/leases/${id}`)).body;
const waitRevoked = (id: string, timeoutMs = 30_000) =>
  waitFor(
    `lease ${id} revoked`,
    async () => {
      const lease = await leaseOf(id);
      return lease.status === 'revoked' ? lease : undefined;
    },
    timeoutMs,
    200,
  );

async function auditOf(action: string, lease: string) {
  const res = await kt.api('GET', `/v1/audit?action=${action}&limit=1000`);
  return (res.body.events as Array<{ details?: Record<string, unknown> }>).filter(
    (e) => e.details?.lease === lease,
  );
}

for (const t of plan) {
  describe.skipIf(Boolean(t.reason))(`leases on ${t.name}`, () => {
    let target: LeaseTarget;
    beforeAll(async () => {
      target = await t.start();
    });
    afterAll(async () => {
      await target?.stop();
    });

    it('a lease user logs in with the access of the credential user until expiry, then is revoked on time', async () => {
      const lease = await issue(target.credential, '4s');
      expect(lease.status).toBe('active');
      expect(lease.username).toMatch(/_l[a-z0-9]{10}$/);
      expect(await target.canLogin(lease.username, lease.password)).toBe(true);
      expect(await target.canLogin(lease.username, `${lease.password}x`)).toBe(false);
      await target.useAccess(lease.username, lease.password);

      const read = await kt.api('GET', `/v1/leases/${lease.id}`);
      expect(read.status).toBe(200);
      expect(read.body.status).toBe('active');
      expect(read.text).not.toContain(lease.password);

      const revoked = await waitRevoked(lease.id);
      expect(revoked.revokeReason).toBe('expired');
      expect(await target.canLogin(lease.username, lease.password)).toBe(false);
      expect(await target.exists(lease.username, lease.password)).toBe(false);
      expect(await auditOf('lease.created', lease.id)).toHaveLength(1);
      const events = await auditOf('lease.revoked', lease.id);
      expect(events).toHaveLength(1);
      expect(events[0]!.details).toMatchObject({ reason: 'expired', username: lease.username });
    });

    it('with the worker killed across the expiry, the user outlives its lease until a worker is back; then the sweep revokes it', async () => {
      const withJob = await issue(target.credential, '3s');
      const jobLost = await issue(target.credential, '3s');
      // A lost job (a Redis fail-over that dropped it, an operator's obliterate): only the sweep can revoke it.
      expect(await kt.runtime.queues.leases.remove(`revoke-lease-${jobLost.id}`)).toBe(1);
      await worker.kill('SIGKILL');

      await waitFor(
        'both leases past their expiry',
        async () =>
          Date.now() > Date.parse(withJob.expiresAt) + 1500 &&
          Date.now() > Date.parse(jobLost.expiresAt) + 1500,
      );
      // Nobody revoked them: no worker runs.
      expect((await leaseOf(withJob.id)).status).toBe('active');
      expect(await target.exists(withJob.username, withJob.password)).toBe(true);
      expect(await target.exists(jobLost.username, jobLost.password)).toBe(true);

      startWorker();
      for (const lease of [withJob, jobLost]) {
        await waitRevoked(lease.id);
        expect(await target.canLogin(lease.username, lease.password)).toBe(false);
        expect(await target.exists(lease.username, lease.password)).toBe(false);
      }
      const [event] = await auditOf('lease.revoked', jobLost.id);
      expect(event!.details).toMatchObject({ reason: 'expired', by: 'sweep' });
      expect(Number(event!.details!.lateMs)).toBeGreaterThan(0);
    });
  });
}

describe('lease lifecycle on PostgreSQL', () => {
  let target: LeaseTarget;
  beforeAll(async () => {
    target = await postgresTarget();
  });
  afterAll(async () => {
    await target?.stop();
  });

  const validUntil = async (username: string) =>
    pgAdmin(async (c) => {
      const r = await c.query('SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1', [username]);
      return r.rows[0]?.rolvaliduntil as Date | undefined;
    });

  it('renews up to the maximum TTL, moving VALID UNTIL; a renewed lease outlives its first expiry', async () => {
    const lease = await issue(target.credential, 3);
    expect((await validUntil(lease.username))?.getTime()).toBe(Date.parse(lease.expiresAt));

    const renewed = await kt.api('POST', `/v1/leases/${lease.id}/renew`, { ttl: '2m' });
    expect(renewed.status, renewed.text).toBe(200);
    expect(renewed.body.capped).toBe(false);
    expect(renewed.body.renewals).toBe(1);
    expect(Date.parse(renewed.body.expiresAt)).toBeGreaterThan(Date.parse(lease.expiresAt) + 100_000);
    expect((await validUntil(lease.username))?.getTime()).toBe(Date.parse(renewed.body.expiresAt));

    await waitFor('the first expiry to pass', async () => Date.now() > Date.parse(lease.expiresAt) + 2000);
    expect(await target.canLogin(lease.username, lease.password)).toBe(true);
    expect((await leaseOf(lease.id)).status).toBe('active');

    const tooLong = await kt.api('POST', `/v1/leases/${lease.id}/renew`, { ttl: '2h' });
    expect(tooLong.status).toBe(422);
    expect(tooLong.body.error.message).toContain('KEYTURN_LEASE_MAX_TTL');

    const capped = await kt.api('POST', `/v1/leases/${lease.id}/renew`, { ttl: '1h' });
    expect(capped.status).toBe(200);
    expect(capped.body.capped).toBe(true);
    expect(capped.body.expiresAt).toBe(capped.body.maxExpiresAt);
    expect((await auditOf('lease.renewed', lease.id)).length).toBe(2);

    const revoked = await kt.api('DELETE', `/v1/leases/${lease.id}`);
    expect(revoked.status).toBe(200);
    expect(revoked.body).toMatchObject({ status: 'revoked', revokeReason: 'requested' });
    expect(await target.exists(lease.username, lease.password)).toBe(false);
    expect(await target.canLogin(lease.username, lease.password)).toBe(false);
    expect((await kt.api('DELETE', `/v1/leases/${lease.id}`)).status).toBe(200);
    const late = await kt.api('POST', `/v1/leases/${lease.id}/renew`, {});
    expect(late.status).toBe(409);
    expect(late.body.error.message).toContain('revoked');
  });

  it('revoking by id ends the lease user’s open sessions', async () => {
    const lease = await issue(target.credential, '5m');
    const { host, port, database } = pgInfo();
    const session = new pg.Client({ host, port, database, user: lease.username, password: lease.password });
    session.on('error', () => {});
    await session.connect();
    await session.query('SELECT 1');
    expect((await kt.api('DELETE', `/v1/leases/${lease.id}`)).status).toBe(200);
    await expect(session.query('SELECT 1')).rejects.toThrow();
    await session.end().catch(() => {});
  });

  it('deleting the credential revokes its leases first', async () => {
    const connection = await registerPgConnection(kt);
    const { id } = await importCredential(kt, connection, { idPrefix: 'doomed' });
    const a = await issue(id, '10m');
    const b = await issue(id, '10m');
    const listed = await kt.api('GET', `/v1/credentials/${id}/leases`);
    expect(listed.body.leases.map((l: { id: string }) => l.id).sort()).toEqual([a.id, b.id].sort());
    expect((await kt.api('DELETE', `/v1/credentials/${id}`)).status).toBe(204);
    for (const lease of [a, b]) {
      expect((await leaseOf(lease.id)).revokeReason).toBe('credential-deleted');
      expect(await target.exists(lease.username, lease.password)).toBe(false);
    }
  });

  it('answers bad requests with a 4xx that names the problem', async () => {
    const cases: Array<[string, string, unknown, number, string]> = [
      ['POST', `/v1/credentials/${target.credential}/leases`, { ttl: 'soon' }, 400, 'ttl'],
      ['POST', `/v1/credentials/${target.credential}/leases`, { ttl: 0 }, 400, 'ttl'],
      ['POST', `/v1/credentials/${target.credential}/leases`, { ttl: '2h' }, 422, 'KEYTURN_LEASE_MAX_TTL'],
      ['POST', `/v1/credentials/${target.credential}/leases`, { ttl: '1m', user: 'x' }, 400, 'user'],
      ['POST', '/v1/credentials/no-such-credential/leases', {}, 404, 'no-such-credential'],
      ['GET', '/v1/leases/not-a-uuid', undefined, 400, 'id'],
      ['GET', '/v1/leases/00000000-0000-4000-8000-000000000000', undefined, 404, 'does not exist'],
      ['POST', '/v1/leases/00000000-0000-4000-8000-000000000000/renew', {}, 404, 'does not exist'],
      ['DELETE', '/v1/leases/00000000-0000-4000-8000-000000000000', undefined, 404, 'does not exist'],
    ];
    for (const [method, path, body, status, mention] of cases) {
      const res = await kt.api(method, path, body);
      expect(`${method} ${path} ${JSON.stringify(body)} → ${res.status}`).toBe(
        `${method} ${path} ${JSON.stringify(body)} → ${status}`,
      );
      expect(res.body.error.message).toContain(mention);
    }
    // No body at all takes the default TTL.
    const res = await kt.api('POST', `/v1/credentials/${target.credential}/leases`);
    expect(res.status).toBe(201);
    leasePasswords.push(res.body.password);
    expect(Date.parse(res.body.expiresAt) - Date.parse(res.body.createdAt)).toBe(600_000);
    expect((await kt.api('DELETE', `/v1/leases/${res.body.id}`)).status).toBe(200);
  });

  it('finding 4: a lease of a credential whose groups could alter roles is a 422 saying what to change; so is renewing one made before that', async () => {
    const connection = await registerPgConnection(kt);
    const { id, role } = await importCredential(kt, connection, { idPrefix: 'admins' });
    const admins = `${role.name}_admins`;
    const ident = pg.escapeIdentifier;
    await pgAdmin((c) => c.query(`CREATE ROLE ${ident(admins)} NOLOGIN CREATEROLE`));
    try {
      const lease = await issue(id, '10m');
      // After the lease was made, the credential's group is given a role that can change passwords.
      await pgAdmin((c) => c.query(`GRANT ${ident(admins)} TO ${ident(role.group)}`));
      const renewed = await kt.api('POST', `/v1/leases/${lease.id}/renew`, { ttl: '20m' });
      expect(renewed.status, renewed.text).toBe(422);
      expect(renewed.body.error.message).toContain(`"${admins}" (CREATEROLE)`);
      expect(renewed.body.error.message).toMatch(/not extended.*Revoke the lease/);
      expect((await leaseOf(lease.id)).expiresAt).toBe(lease.expiresAt);

      const refused = await kt.api('POST', `/v1/credentials/${id}/leases`, { ttl: '10m' });
      expect(refused.status, refused.text).toBe(422);
      expect(refused.body.error.message).toContain(
        `role "${role.name}" is a member of "${admins}" (CREATEROLE)`,
      );
      expect(refused.body.error.message).toMatch(/NOLOGIN group role without CREATEROLE or SUPERUSER/);
      expect((await kt.api('DELETE', `/v1/leases/${lease.id}`)).status).toBe(200);
      expect(await target.exists(lease.username, lease.password)).toBe(false);
    } finally {
      await pgAdmin(async (c) => {
        await c.query(`REVOKE ${ident(admins)} FROM ${ident(role.group)}`);
        await c.query(`DROP ROLE ${ident(admins)}`);
      });
    }
  });

  it('a webhook credential cannot have leases', async () => {
    const fixture = TARGET_FIXTURES.find((f) => f.name === 'webhook')!;
    const started = await fixture.start();
    try {
      expect(
        (await kt.api('POST', '/v1/connections', { id: 'lease-hook', ...started.connection })).status,
      ).toBe(201);
      const id = await importTargetUser(kt, 'lease-hook', await started.createUser(), 'single-user', 'lease');
      const res = await kt.api('POST', `/v1/credentials/${id}/leases`, { ttl: '1m' });
      expect(res.status).toBe(422);
      expect(res.body.error.message).toMatch(/webhook.*cannot make short-lived users/);
    } finally {
      await started.stop();
    }
  });
});

describe('secret hygiene of leases', () => {
  it('no lease password in Redis values, Redis commands, logs or audit events', async () => {
    expect(leasePasswords.length).toBeGreaterThan(5);
    const audit = await kt.api('GET', '/v1/audit?limit=1000');
    assertNoSecrets(leasePasswords, [
      ['Redis values', await redisValues(env.prefix)],
      ['Redis commands', redisMonitor.commands],
      ['API log', kt.logs],
      ['worker logs', workers.flatMap((w) => w.output)],
      ['audit', [audit.text]],
    ]);
    expect(redisMonitor.commands.length).toBeGreaterThan(0);
  });
});
