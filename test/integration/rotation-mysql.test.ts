// End-to-end rotation against the machine's real MySQL/MariaDB, through the API, with workers in process. Every
// claim about a password is checked by logging in with it through mysql2.
// Server: KEYTURN_TEST_MYSQL_URL (mysql://user:pass@host:port/db, a user that may create users and grant), else
// root with an empty password on 127.0.0.1:3306; skipped, with the reason printed, when it cannot be reached.
import { randomBytes } from 'node:crypto';
import mysql from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  dropPrefix,
  type Keyturn,
  startKeyturn,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { asMysqlRoot, MYSQL_SERVER, mysqlCanLogin } from '../support/mysql.ts';

const DATABASE = 'keyturn_test';

const server = MYSQL_SERVER;
const asRoot = asMysqlRoot;

const unavailable = await asRoot(async (c) => {
  await c.query('SELECT 1');
  return undefined;
}).catch(
  (err: Error) => `cannot use MySQL at ${server.host}:${server.port} as "${server.user}": ${err.message}`,
);
if (unavailable) console.warn(`skipping the MySQL rotation tests: ${unavailable}`);

const hex = (n: number) => randomBytes(n).toString('hex');
const created: string[] = [];
const roles: string[] = [];
/** Every password a test saw: none may reach Keyturn's logs. */
const seen = new Set<string>();

/** An account `name`@'%' with a random password and SELECT on keyturn_test.*, optionally a role it uses by default. */
async function createAppUser(options: { role?: string } = {}): Promise<{ name: string; password: string }> {
  const name = `kt_app_${hex(4)}`;
  const password = randomBytes(18).toString('base64url');
  created.push(name, `${name}_clone`);
  await asRoot(async (c) => {
    await c.query('CREATE USER ?@? IDENTIFIED BY ?', [name, '%', password]);
    await c.query(`GRANT SELECT ON \`${DATABASE}\`.* TO ?@?`, [name, '%']);
    if (options.role) {
      await c.query(`GRANT \`${options.role}\` TO ?@?`, [name, '%']);
      await c.query(`SET DEFAULT ROLE \`${options.role}\` FOR ?@?`, [name, '%']);
    }
  });
  return { name, password };
}

const canLogin = (user: string, password: string) => mysqlCanLogin(user, password, DATABASE);

async function grantsOf(user: string): Promise<string[]> {
  return asRoot(async (c) => {
    const [rows] = await c.query({ sql: 'SHOW GRANTS FOR ?@?', rowsAsArray: true }, [user, '%']);
    return (rows as string[][]).map(([line]) => String(line));
  });
}

const env = testEnv();
let kt: Keyturn;
let connection: string;
let admin: { name: string; password: string };
let role: string;

describe.skipIf(unavailable !== undefined)('rotation on MySQL/MariaDB', () => {
  beforeAll(async () => {
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    // A dedicated admin rather than root: the API requires an admin password, and the test owns what it makes.
    admin = { name: `keyturn_admin_${hex(4)}`, password: randomBytes(18).toString('base64url') };
    role = `kt_role_${hex(4)}`;
    roles.push(role);
    await asRoot(async (c) => {
      await c.query(`CREATE DATABASE IF NOT EXISTS \`${DATABASE}\``);
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [admin.name, '%', admin.password]);
      await c.query('GRANT ALL PRIVILEGES ON *.* TO ?@? WITH GRANT OPTION', [admin.name, '%']);
      await c.query(`CREATE ROLE \`${role}\``);
      await c.query(`GRANT INSERT ON \`${DATABASE}\`.* TO \`${role}\``);
      // Granting a role to someone takes its ADMIN OPTION, which ALL PRIVILEGES does not include.
      await c.query(`GRANT \`${role}\` TO ?@? WITH ADMIN OPTION`, [admin.name, '%']);
    });
    connection = `mysql-${hex(3)}`;
    const res = await kt.api('POST', '/v1/connections', {
      id: connection,
      type: 'mysql',
      host: server.host,
      port: server.port,
      database: DATABASE,
      admin: { username: admin.name, password: admin.password },
      options: { accountHost: '%' },
    });
    expect(res.status, res.text).toBe(201);
  });

  afterAll(async () => {
    if (process.env.KT_DEBUG) for (const l of kt?.logs ?? []) if (/"level":[4-6]0/.test(l)) console.log(l);
    await kt?.close();
    await dropPrefix(env.prefix);
    await asRoot(async (c) => {
      for (const user of [...created, ...(admin ? [admin.name] : [])]) {
        await c.query('DROP USER IF EXISTS ?@?', [user, '%']);
      }
      for (const r of roles) await c.query(`DROP ROLE IF EXISTS \`${r}\``);
    });
  });

  async function readSecret(id: string) {
    const res = await kt.api('GET', `/v1/credentials/${id}/secret`);
    expect(res.status, res.text).toBe(200);
    const secret = res.body as { username: string; password: string; version: string };
    seen.add(secret.password);
    return secret;
  }

  /** Waits for a rotation and expects it to have succeeded; on failure the message shows its steps and error. */
  async function rotated(rotationId: string) {
    const rotation = await waitForRotation(kt, rotationId);
    expect(rotation.status, JSON.stringify({ steps: rotation.steps, error: rotation.error })).toBe(
      'succeeded',
    );
    return rotation;
  }

  it('single-user: registers, rotates, and only the new password logs in', async () => {
    const user = await createAppUser();
    seen.add(user.password);
    const id = `my-${user.name}`;
    const registered = await kt.api('POST', '/v1/credentials', {
      id,
      connection,
      username: user.name,
      strategy: 'single-user',
      schedule: { every: '30d' },
    });
    expect(registered.status, registered.text).toBe(201);
    const first = await rotated(registered.body.rotation.id);
    expect(first.steps.map((s: { step: string }) => s.step)).toEqual(['create', 'set', 'test', 'finish']);

    const s1 = await readSecret(id);
    expect(s1.username).toBe(user.name);
    expect(await canLogin(s1.username, s1.password)).toBe(true);
    expect(await canLogin(user.name, user.password)).toBe(false);

    // A session opened with the old password outlives the change: MySQL checks passwords at login only.
    const open = await mysql.createConnection({
      host: server.host,
      port: server.port,
      user: s1.username,
      password: s1.password,
      database: DATABASE,
    });
    try {
      const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
      expect(rotate.status).toBe(202);
      await rotated(rotate.body.rotationId);

      const s2 = await readSecret(id);
      expect(s2.version).toBe(rotate.body.rotationId);
      expect(s2.password).not.toBe(s1.password);
      expect(await canLogin(s2.username, s2.password)).toBe(true);
      expect(await canLogin(s1.username, s1.password)).toBe(false);
      const [rows] = await open.query({ sql: 'SELECT 1', rowsAsArray: true });
      expect(rows).toEqual([[1]]);
    } finally {
      await open.end();
    }
    const cred = await kt.api('GET', `/v1/credentials/${id}`);
    expect(cred.body).toMatchObject({ status: 'active', lastOutcome: 'succeeded' });
  });

  it('alternating-users: the clone gets the grants, the previous user works through its grace period only', async () => {
    const user = await createAppUser({ role });
    const id = `alt-${user.name}`;
    const registered = await kt.api('POST', '/v1/credentials', {
      id,
      connection,
      username: user.name,
      strategy: 'alternating-users',
      schedule: { every: '30d' },
      gracePeriod: '3s',
    });
    expect(registered.status, registered.text).toBe(201);
    await rotated(registered.body.rotation.id);

    // The first rotation creates <user>_clone@'%' with the original's grants, role and default role.
    const s1 = await readSecret(id);
    const clone = `${user.name}_clone`;
    expect(s1.username).toBe(clone);
    expect(await canLogin(s1.username, s1.password)).toBe(true);
    const grants = await grantsOf(clone);
    const grantee = new RegExp(`TO [\`']${clone}[\`']@[\`']%[\`']`);
    expect(
      grants.some((g) => /^GRANT SELECT ON [`']keyturn_test[`']\.\* TO /.test(g) && grantee.test(g)),
    ).toBe(true);
    expect(grants.some((g) => g.startsWith(`GRANT \`${role}\` TO`) && grantee.test(g))).toBe(true);
    const hashes = await asRoot(async (c) => {
      const [rows] = await c.query(
        {
          sql: 'SELECT User, authentication_string FROM mysql.user WHERE User IN (?, ?) AND Host = ?',
          rowsAsArray: true,
        },
        [user.name, clone, '%'],
      );
      return new Map((rows as string[][]).map(([u, h]) => [u, h]));
    });
    // Never the original's password hash: the clone's is its own.
    expect(hashes.get(clone)).toBeTruthy();
    expect(hashes.get(clone)).not.toBe(hashes.get(user.name));
    // The default role came along: a fresh login as the clone has it active.
    const asClone = await mysql.createConnection({
      host: server.host,
      port: server.port,
      user: clone,
      password: s1.password,
      database: DATABASE,
    });
    try {
      const [rows] = await asClone.query({ sql: 'SELECT CURRENT_ROLE()', rowsAsArray: true });
      expect(rows).toEqual([[role]]);
    } finally {
      await asClone.end();
    }

    // The second rotation switches back to the original user, with a new password.
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    await rotated(rotate.body.rotationId);
    const s2 = await readSecret(id);
    expect(s2.username).toBe(user.name);
    expect(await canLogin(s2.username, s2.password)).toBe(true);
    expect(await canLogin(user.name, user.password)).toBe(false);
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
  });

  it('imports a working password without rotating it, and refuses a wrong one with 422', async () => {
    const user = await createAppUser();
    seen.add(user.password);
    const bad = await kt.api('POST', '/v1/credentials', {
      id: `imp-bad-${user.name}`,
      connection,
      username: user.name,
      strategy: 'single-user',
      schedule: { every: '30d' },
      import: true,
      currentPassword: 'not-the-password',
    });
    expect(bad.status, bad.text).toBe(422);
    expect(bad.text).not.toContain('not-the-password');
    const ok = await kt.api('POST', '/v1/credentials', {
      id: `imp-${user.name}`,
      connection,
      username: user.name,
      strategy: 'single-user',
      schedule: { every: '30d' },
      import: true,
      currentPassword: user.password,
    });
    expect(ok.status, ok.text).toBe(201);
    expect(ok.body.rotation).toBeNull();
    const secret = await readSecret(`imp-${user.name}`);
    expect(secret).toMatchObject({ username: user.name, password: user.password });
    expect(await canLogin(user.name, user.password)).toBe(true);
  });

  it('refuses unknown options and a bad accountHost with 422 naming them', async () => {
    const base = {
      type: 'mysql',
      host: server.host,
      port: server.port,
      admin: { username: admin.name, password: admin.password },
    };
    const unknown = await kt.api('POST', '/v1/connections', {
      ...base,
      id: `mysql-unknown-${hex(3)}`,
      options: { accountHost: '%', schema: 'x' },
    });
    expect(unknown.status).toBe(422);
    expect(unknown.text).toContain('schema');
    for (const accountHost of ["%' OR 1=1 --", '', 'a'.repeat(256), 'host/mask', true]) {
      const bad = await kt.api('POST', '/v1/connections', {
        ...base,
        id: `mysql-host-${hex(3)}`,
        options: { accountHost },
      });
      expect(bad.status, `accountHost ${JSON.stringify(accountHost)}`).toBe(422);
      expect(bad.text).toContain('accountHost');
    }
    const good = await kt.api('POST', '/v1/connections', {
      ...base,
      id: `mysql-good-${hex(3)}`,
      options: { accountHost: '10.0.%' },
    });
    expect(good.status, good.text).toBe(201);
  });

  it('wrote no password to its logs', () => {
    expect(seen.size).toBeGreaterThan(0);
    const logs = kt.logs.join('\n');
    for (const password of [...seen, admin.password]) expect(logs).not.toContain(password);
  });
});
