// Finding 3 of issue 11: alternating-users took over an existing `<username>_clone` that Keyturn did not create: it
// changed that role's password (locking its owner out) and handed the service the role's privileges. Keyturn now
// refuses such a clone at registration (409 naming it) unless the request adopts it, adopts it only when its access
// matches the user's, records the clones it makes, and fails a rotation, changing nothing, when a clone appeared
// that it did not make.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canLogin,
  createAppRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  pgAdmin,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  waitForRotation,
} from '../support/harness.ts';
import { asMysqlRoot, MYSQL_SERVER, mysqlCanLogin } from '../support/mysql.ts';

const id = pg.escapeIdentifier;
let env: TestEnv;
let kt: Keyturn;
let connection: string;

beforeAll(async () => {
  env = testEnv();
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
});
afterAll(async () => {
  await kt?.close();
  if (env) await dropPrefix(env.prefix);
});

/** Someone else's role named like the clone of `base`, with its own password and, unless told, its own group. */
async function foreignClone(base: string, groups: string[] = []) {
  const name = `${base}_clone`;
  const password = randomBytes(18).toString('base64url');
  const group = `${name}_own_grp`;
  await pgAdmin(async (c) => {
    if (groups.length === 0) await c.query(`CREATE ROLE ${id(group)} NOLOGIN`);
    await c.query(`CREATE ROLE ${id(name)} LOGIN PASSWORD ${pg.escapeLiteral(password)}`);
    for (const g of groups.length > 0 ? groups : [group]) await c.query(`GRANT ${id(g)} TO ${id(name)}`);
  });
  return { name, password, group };
}

const alternating = (username: string, extra: object = {}) => ({
  id: `alt-${username}`,
  connection,
  username,
  strategy: 'alternating-users',
  schedule: { every: '30d' },
  ...extra,
});

async function rotate(credential: string) {
  const res = await kt.api('POST', `/v1/credentials/${credential}/rotate`);
  expect(res.status, res.text).toBe(202);
  return waitForRotation(kt, res.body.rotationId);
}

describe('finding 3: alternating-users and an existing <user>_clone', () => {
  it('refuses at registration a clone Keyturn did not create, naming it; its owner keeps logging in', async () => {
    const app = await createAppRole();
    const clone = await foreignClone(app.name);
    const res = await kt.api('POST', '/v1/credentials', alternating(app.name));
    expect(res.status, res.text).toBe(409);
    expect(res.body.error.message).toContain(`User "${clone.name}" already exists`);
    expect(res.body.error.message).toContain('"adoptClone": true');
    expect((await kt.api('GET', `/v1/credentials/alt-${app.name}`)).status).toBe(404);
    expect(await canLogin(clone.name, clone.password)).toBe(true);
  });

  it('refuses to adopt a clone whose memberships differ, naming the difference', async () => {
    const app = await createAppRole();
    const clone = await foreignClone(app.name);
    const res = await kt.api('POST', '/v1/credentials', alternating(app.name, { adoptClone: true }));
    expect(res.status, res.text).toBe(409);
    expect(res.body.error.message).toContain(`it lacks: member of ${app.group}`);
    expect(res.body.error.message).toContain(`it has more: member of ${clone.group}`);
    expect(await canLogin(clone.name, clone.password)).toBe(true);
  });

  it('adopts a clone with the same memberships when asked, and rotates it', async () => {
    const app = await createAppRole();
    const clone = await foreignClone(app.name, [app.group]);
    const res = await kt.api('POST', '/v1/credentials', alternating(app.name, { adoptClone: true }));
    expect(res.status, res.text).toBe(201);
    const first = await waitForRotation(kt, res.body.rotation.id);
    expect(first.status).toBe('succeeded');
    const secret = (await kt.api('GET', `/v1/credentials/alt-${app.name}/secret`)).body;
    expect(secret.username).toBe(clone.name);
    expect(await canLogin(clone.name, secret.password)).toBe(true);
  });

  it('recognizes the clones it made, rotation after rotation', async () => {
    const imported = await importCredential(kt, connection, {
      strategy: 'alternating-users',
      idPrefix: 'made',
    });
    for (let i = 0; i < 3; i++) expect((await rotate(imported.id)).status).toBe('succeeded');
    const secret = (await kt.api('GET', `/v1/credentials/${imported.id}/secret`)).body;
    expect(secret.username).toBe(`${imported.role.name}_clone`);
    expect(await canLogin(secret.username, secret.password)).toBe(true);
  });

  it('fails a rotation, changing nothing, when a clone appeared that Keyturn did not make', async () => {
    const imported = await importCredential(kt, connection, {
      strategy: 'alternating-users',
      idPrefix: 'late',
    });
    const clone = await foreignClone(imported.role.name, [imported.role.group]);
    const rotation = await rotate(imported.id);
    expect(rotation.status).toBe('failed');
    expect(rotation.error.message).toContain(`user "${clone.name}" exists`);
    expect(rotation.error.message).toContain('nothing downstream was');
    expect(await canLogin(clone.name, clone.password)).toBe(true);
    expect(await canLogin(imported.role.name, imported.password)).toBe(true);
    const secret = (await kt.api('GET', `/v1/credentials/${imported.id}/secret`)).body;
    expect(secret).toMatchObject({ username: imported.role.name, password: imported.password });
  });
});

const mysqlUnavailable = await asMysqlRoot(async (c) => {
  await c.query('SELECT 1');
  return undefined;
}).catch((err: Error) => `cannot use MySQL at ${MYSQL_SERVER.host}:${MYSQL_SERVER.port}: ${err.message}`);
if (mysqlUnavailable) console.warn(`skipping the MySQL clone test: ${mysqlUnavailable}`);

describe.skipIf(mysqlUnavailable !== undefined)('finding 3: the same on MySQL/MariaDB', () => {
  const run = randomBytes(3).toString('hex');
  const user = `kt_alt_${run}`;
  const clone = `${user}_clone`;
  const clonePassword = randomBytes(18).toString('base64url');
  const admin = { name: `kt_admin_${run}`, password: randomBytes(18).toString('base64url') };
  afterAll(async () => {
    await asMysqlRoot(async (c) => {
      for (const u of [user, clone, admin.name]) await c.query('DROP USER IF EXISTS ?@?', [u, '%']);
    });
  });

  it('refuses a foreign clone, and its adoption while its grants differ', async () => {
    await asMysqlRoot(async (c) => {
      await c.query('CREATE DATABASE IF NOT EXISTS keyturn_test');
      // A dedicated admin: the API needs an admin password, and root here has none.
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [admin.name, '%', admin.password]);
      await c.query('GRANT ALL PRIVILEGES ON *.* TO ?@? WITH GRANT OPTION', [admin.name, '%']);
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [user, '%', randomBytes(18).toString('base64url')]);
      await c.query('GRANT SELECT ON keyturn_test.* TO ?@?', [user, '%']);
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [clone, '%', clonePassword]);
      await c.query('GRANT INSERT ON keyturn_test.* TO ?@?', [clone, '%']);
    });
    const conn = await kt.api('POST', '/v1/connections', {
      id: `my-${run}`,
      type: 'mysql',
      host: MYSQL_SERVER.host,
      port: MYSQL_SERVER.port,
      admin: { username: admin.name, password: admin.password },
      options: { accountHost: '%' },
    });
    if (conn.status !== 201) throw new Error(`registering the MySQL connection failed: ${conn.text}`);
    const body = {
      id: `alt-${user}`,
      connection: `my-${run}`,
      username: user,
      strategy: 'alternating-users',
      schedule: { every: '30d' },
    };
    const refused = await kt.api('POST', '/v1/credentials', body);
    expect(refused.status, refused.text).toBe(409);
    expect(refused.body.error.message).toContain(`User "${clone}" already exists`);
    const differs = await kt.api('POST', '/v1/credentials', { ...body, adoptClone: true });
    expect(differs.status, differs.text).toBe(409);
    expect(differs.body.error.message).toMatch(/it lacks: GRANT SELECT/);
    expect(await mysqlCanLogin(clone, clonePassword, 'keyturn_test')).toBe(true);
  });
});
