// End-to-end rotation against a real password-checking PostgreSQL, through the API, with workers in process.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canLogin,
  createAppRole,
  dropPrefix,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;
let connection: string;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
});
afterAll(async () => {
  if (process.env.KT_DEBUG) for (const l of kt?.logs ?? []) if (/"level":[4-6]0/.test(l)) console.log(l);
  await kt?.close();
  await dropPrefix(env.prefix);
});

async function readSecret(id: string) {
  const res = await kt.api('GET', `/v1/credentials/${id}/secret`);
  expect(res.status).toBe(200);
  return res.body as { username: string; password: string; version: string };
}

describe('single-user on PostgreSQL', () => {
  it('registers, rotates, and only the new password logs in', async () => {
    const role = await createAppRole();
    const created = await kt.api('POST', '/v1/credentials', {
      id: `cred-${role.name}`,
      connection,
      username: role.name,
      strategy: 'single-user',
      schedule: { every: '30d' },
    });
    expect(created.status).toBe(201);
    expect(created.body.rotation.status).toBe('queued');
    const first = await waitForRotation(kt, created.body.rotation.id);
    expect(first.status).toBe('succeeded');
    expect(first.steps.map((s: { step: string }) => s.step)).toEqual(['create', 'set', 'test', 'finish']);

    const s1 = await readSecret(`cred-${role.name}`);
    expect(s1.username).toBe(role.name);
    expect(await canLogin(s1.username, s1.password)).toBe(true);

    const rotate = await kt.api('POST', `/v1/credentials/cred-${role.name}/rotate`);
    expect(rotate.status).toBe(202);
    const second = await waitForRotation(kt, rotate.body.rotationId);
    expect(second.status).toBe('succeeded');

    const s2 = await readSecret(`cred-${role.name}`);
    expect(s2.version).toBe(rotate.body.rotationId);
    expect(s2.password).not.toBe(s1.password);
    expect(await canLogin(s2.username, s2.password)).toBe(true);
    expect(await canLogin(s1.username, s1.password)).toBe(false);

    const cred = await kt.api('GET', `/v1/credentials/cred-${role.name}`);
    expect(cred.body).toMatchObject({
      status: 'active',
      version: rotate.body.rotationId,
      lastOutcome: 'succeeded',
    });
    const cache = (await kt.api('GET', `/v1/credentials/cred-${role.name}/secret`)).headers.get(
      'cache-control',
    );
    // Bounded by KEYTURN_SECRET_MAX_AGE (5 minutes by default), not by the next rotation a month away.
    const maxAge = Number(/max-age=(\d+)/.exec(cache ?? '')?.[1]);
    expect(maxAge).toBeGreaterThan(290);
    expect(maxAge).toBeLessThanOrEqual(300);
  });

  it('imports a working password without rotating it, and refuses a wrong one', async () => {
    const role = await createAppRole();
    const { pgAdmin } = await import('../support/harness.ts');
    await pgAdmin((c) => c.query(`ALTER ROLE "${role.name}" PASSWORD 'imported-password-123'`));
    // The same registration each time, only the id and the password it claims the user has change.
    const importAs = (id: string, currentPassword: string) =>
      kt.api('POST', '/v1/credentials', {
        id,
        connection,
        username: role.name,
        strategy: 'single-user',
        schedule: { every: '30d' },
        import: true,
        currentPassword,
      });
    const bad = await importAs(`imp-bad-${role.name}`, 'not-the-password');
    expect(bad.status).toBe(422);
    expect(bad.text).not.toContain('not-the-password');
    const ok = await importAs(`imp-${role.name}`, 'imported-password-123');
    expect(ok.status).toBe(201);
    expect(ok.body.rotation).toBeNull();
    expect(ok.body.version).toMatch(/^import-[0-9a-f-]{36}$/);
    expect((await readSecret(`imp-${role.name}`)).password).toBe('imported-password-123');
    // Importing again under the same id is a conflict, and leaves the existing credential's secret alone.
    const again = await importAs(`imp-${role.name}`, 'imported-password-123');
    expect(again.status).toBe(409);
    const { pgAdmin: admin } = await import('../support/harness.ts');
    await admin((c) => c.query(`ALTER ROLE "${role.name}" PASSWORD 'another-password-456'`));
    const other = await importAs(`imp-${role.name}`, 'another-password-456');
    expect(other.status).toBe(409);
    const kept = await readSecret(`imp-${role.name}`);
    expect(kept.password).toBe('imported-password-123');
  });
});

describe('alternating-users on PostgreSQL', () => {
  it('alternates users, keeps the previous one working through its grace period, then revokes it', async () => {
    const role = await createAppRole();
    const id = `alt-${role.name}`;
    const created = await kt.api('POST', '/v1/credentials', {
      id,
      connection,
      username: role.name,
      strategy: 'alternating-users',
      schedule: { every: '30d' },
      gracePeriod: '4s',
    });
    expect(created.status).toBe(201);
    expect((await waitForRotation(kt, created.body.rotation.id)).status).toBe('succeeded');
    const s1 = await readSecret(id);
    // The first rotation makes the clone (with the original's memberships) and hands it out.
    expect(s1.username).toBe(`${role.name}_clone`);
    expect(await canLogin(s1.username, s1.password)).toBe(true);
    const { pgAdmin } = await import('../support/harness.ts');
    const groups = await pgAdmin((c) =>
      c.query(
        `SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1`,
        [s1.username],
      ),
    );
    expect(groups.rows.map((r) => r.rolname)).toEqual([role.group]);

    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
    const s2 = await readSecret(id);
    expect(s2.username).toBe(role.name);
    expect(await canLogin(s2.username, s2.password)).toBe(true);
    // No window: the previous user still logs in during its grace period…
    expect(await canLogin(s1.username, s1.password)).toBe(true);
    // …and not after it.
    await waitFor(
      'the previous user to be revoked',
      async () => !(await canLogin(s1.username, s1.password)),
      20_000,
      250,
    );
    expect(await canLogin(s2.username, s2.password)).toBe(true);
    // The user's password changes downstream a moment before the revocation's record and audit event are committed.
    const revoked = await waitFor('the revocation to be audited', async () => {
      const audit = await kt.api('GET', `/v1/audit?credential=${id}&action=credential.previous_revoked`);
      return audit.body.events.length > 0 ? audit.body.events : undefined;
    });
    expect(revoked).toHaveLength(1);

    // A third rotation goes back to the clone with a new password.
    const third = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect((await waitForRotation(kt, third.body.rotationId)).status).toBe('succeeded');
    const s3 = await readSecret(id);
    expect(s3.username).toBe(`${role.name}_clone`);
    expect(s3.password).not.toBe(s1.password);
    expect(await canLogin(s3.username, s3.password)).toBe(true);
    expect(await canLogin(s2.username, s2.password)).toBe(true);
  });
});

// The machine's own PostgreSQL on 5432 trusts every local connection: any password logs in there.
const TRUST_PORT = Number(process.env.KEYTURN_TEST_TRUST_PG_PORT ?? 5432);
const trustAvailable = await (async () => {
  const client = new pg.Client({
    host: '127.0.0.1',
    port: TRUST_PORT,
    user: 'postgres',
    password: 'x',
    database: 'postgres',
  });
  client.on('error', () => {});
  try {
    await client.connect();
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
})();
if (!trustAvailable)
  console.warn(
    `skipping the trust-authentication test: no PostgreSQL with trust auth on 127.0.0.1:${TRUST_PORT}`,
  );

describe.skipIf(!trustAvailable)('a downstream that does not check passwords', () => {
  it('still gets the new password set: "the pending password already works" is not trusted', async () => {
    const trust = async <T>(fn: (c: pg.Client) => Promise<T>) => {
      const c = new pg.Client({
        host: '127.0.0.1',
        port: TRUST_PORT,
        user: 'postgres',
        database: 'postgres',
      });
      await c.connect();
      try {
        return await fn(c);
      } finally {
        await c.end();
      }
    };
    const name = `trust_${randomBytes(4).toString('hex')}`;
    await trust((c) => c.query(`CREATE ROLE ${name} LOGIN PASSWORD 'before'`));
    const verifier = () =>
      trust(
        async (c) =>
          (await c.query('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [name])).rows[0].rolpassword,
      );
    try {
      const before = await verifier();
      const conn = `trust-${name}`.replaceAll('_', '-');
      const registered = await kt.api('POST', '/v1/connections', {
        id: conn,
        type: 'postgres',
        host: '127.0.0.1',
        port: TRUST_PORT,
        database: 'postgres',
        admin: { username: 'postgres', password: 'unused-with-trust' },
        // Trust must be allowed by name: by default Keyturn refuses a server that asks for no password.
        options: { requireAuth: 'scram-sha-256,none' },
      });
      expect(registered.status).toBe(201);
      const created = await kt.api('POST', '/v1/credentials', {
        id: conn,
        connection: conn,
        username: name,
        strategy: 'single-user',
        schedule: { every: '30d' },
      });
      const rotation = await waitForRotation(kt, created.body.rotation.id);
      expect(rotation.status).toBe('succeeded');
      expect(rotation.steps.find((s: { step: string }) => s.step === 'set').outcome).toBe('succeeded');
      expect(await verifier()).not.toBe(before);
      expect(kt.logs.some((l) => l.includes('does not check passwords'))).toBe(true);
    } finally {
      await trust((c) => c.query(`DROP ROLE IF EXISTS ${name}`));
    }
  });
});
