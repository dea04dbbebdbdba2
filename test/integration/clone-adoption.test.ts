// Finding 3 of issue 11: alternating-users took over an existing `<username>_clone` that Keyturn did not create: it
// changed that role's password (locking its owner out) and handed the service the role's privileges. Keyturn now
// refuses such a clone at registration (409 clone_exists naming it) unless the request adopts it, adopts it only when
// its access matches the user's (409 clone_access_differs naming the difference), marks the clones it makes (on
// PostgreSQL a role comment "keyturn:<credential id>", on MariaDB and Redis the registry's record), and fails a
// rotation, changing nothing, when the clone is not Keyturn's.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Connection } from '../../src/registry/types.ts';
import { postgresTarget } from '../../src/targets/postgres/postgres-target.ts';
import type { TargetSession } from '../../src/targets/types.ts';
import {
  canLogin,
  createAppRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  pgAdmin,
  pgInfo,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  testKeys,
  testRedis,
  waitForRotation,
} from '../support/harness.ts';
import { asMysqlRoot, MYSQL_SERVER, mysqlCanLogin } from '../support/mysql.ts';
import { type RedisAclServer, startRedisAclServer } from '../support/redis-acl-server.ts';

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

/** A role's comment: where Keyturn labels the clones it makes ("keyturn:<credential id>"). */
async function commentOf(role: string): Promise<string | null> {
  return pgAdmin(async (c) => {
    const r = await c.query(
      "SELECT shobj_description(oid, 'pg_authid') AS label FROM pg_roles WHERE rolname = $1",
      [role],
    );
    return r.rows[0]?.label ?? null;
  });
}

describe('finding 3: alternating-users refuses an existing <user>_clone it did not create (PostgreSQL)', () => {
  it('refuses at registration a clone Keyturn did not create, naming it; its owner keeps logging in', async () => {
    const app = await createAppRole();
    const clone = await foreignClone(app.name);
    const res = await kt.api('POST', '/v1/credentials', alternating(app.name));
    expect(res.status, res.text).toBe(409);
    expect(res.body.error.code).toBe('clone_exists');
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
    expect(res.body.error.code).toBe('clone_access_differs');
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
    // Adopted, it is marked as Keyturn's like the clones Keyturn makes; the next rotations go on with it.
    expect(await commentOf(clone.name)).toBe(`keyturn:alt-${app.name}`);
    for (let i = 0; i < 2; i++) expect((await rotate(`alt-${app.name}`)).status).toBe('succeeded');
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
    expect(await commentOf(secret.username)).toBe(`keyturn:${imported.id}`);
  });

  it('recognizes the clone it made by its label when the credential is registered again; another credential must adopt it', async () => {
    const imported = await importCredential(kt, connection, {
      strategy: 'alternating-users',
      idPrefix: 'again',
    });
    const clone = `${imported.role.name}_clone`;
    expect((await rotate(imported.id)).status).toBe('succeeded');
    expect(await commentOf(clone)).toBe(`keyturn:${imported.id}`);
    expect((await kt.api('DELETE', `/v1/credentials/${imported.id}`)).status).toBe(204);
    const body = {
      connection,
      username: imported.role.name,
      strategy: 'alternating-users',
      schedule: { every: '30d' },
      import: true,
      currentPassword: imported.password,
    };
    const other = await kt.api('POST', '/v1/credentials', { ...body, id: `other-${imported.role.name}` });
    expect(other.status, other.text).toBe(409);
    expect(other.body.error.code).toBe('clone_exists');
    expect(other.body.error.message).toContain(`User "${clone}" already exists`);
    expect(other.body.error.message).toContain(`"${imported.id}"`);
    const again = await kt.api('POST', '/v1/credentials', { ...body, id: imported.id });
    expect(again.status, again.text).toBe(201);
    expect((await rotate(imported.id)).status).toBe('succeeded');
    const secret = (await kt.api('GET', `/v1/credentials/${imported.id}/secret`)).body;
    expect(secret.username).toBe(clone);
    expect(await canLogin(clone, secret.password)).toBe(true);
  });

  it('fails a rotation, changing nothing, when its clone was dropped and someone made another under that name', async () => {
    const imported = await importCredential(kt, connection, {
      strategy: 'alternating-users',
      idPrefix: 'swap',
    });
    for (let i = 0; i < 2; i++) expect((await rotate(imported.id)).status).toBe('succeeded');
    const before = (await kt.api('GET', `/v1/credentials/${imported.id}/secret`)).body;
    expect(before.username).toBe(imported.role.name);
    // Keyturn's clone goes; a role of the same name and the same group is someone else's now.
    await pgAdmin((c) => c.query(`DROP ROLE ${id(`${imported.role.name}_clone`)}`));
    const clone = await foreignClone(imported.role.name, [imported.role.group]);
    const rotation = await rotate(imported.id);
    expect(rotation.status).toBe('failed');
    expect(rotation.error.message).toContain(`user "${clone.name}" exists`);
    expect(rotation.error.message).toContain(`does not carry Keyturn's label "keyturn:${imported.id}"`);
    expect(rotation.error.message).toContain('nothing downstream was');
    expect(await canLogin(clone.name, clone.password)).toBe(true);
    expect(await commentOf(clone.name)).toBeNull();
    const secret = (await kt.api('GET', `/v1/credentials/${imported.id}/secret`)).body;
    expect(secret).toMatchObject({ username: before.username, password: before.password });
    expect(await canLogin(secret.username, secret.password)).toBe(true);
  });

  it('labels, at its next rotation, a clone it made before it labelled clones', async () => {
    const imported = await importCredential(kt, connection, {
      strategy: 'alternating-users',
      idPrefix: 'legacy',
    });
    const clone = `${imported.role.name}_clone`;
    for (let i = 0; i < 2; i++) expect((await rotate(imported.id)).status).toBe('succeeded');
    // As an earlier Keyturn left it: the registry records the clone as made for the credential, and neither the role
    // nor the credential's state knows about labels.
    await pgAdmin((c) => c.query(`COMMENT ON ROLE ${id(clone)} IS NULL`));
    const redis = testRedis();
    try {
      const key = testKeys(env.prefix).credential(imported.id);
      const state = JSON.parse((await redis.hget(key, 'state')) ?? '{}');
      expect(state.cloneLabelled).toBe(true);
      delete state.cloneLabelled;
      await redis.hset(key, 'state', JSON.stringify(state));
    } finally {
      redis.disconnect();
    }
    expect((await rotate(imported.id)).status).toBe('succeeded');
    expect(await commentOf(clone)).toBe(`keyturn:${imported.id}`);
    const secret = (await kt.api('GET', `/v1/credentials/${imported.id}/secret`)).body;
    expect(secret.username).toBe(clone);
    expect(await canLogin(clone, secret.password)).toBe(true);
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

describe('finding 3: the PostgreSQL target never changes a role it was asked to create as new or as labelled', () => {
  // What closes the gap between the engine's look and the change: a role made by someone else in between is refused
  // by createUser itself, unchanged.
  let session: TargetSession;
  beforeAll(async () => {
    const info = pgInfo();
    session = await postgresTarget.open(
      {
        id: 'direct',
        type: 'postgres',
        host: info.host,
        port: info.port,
        database: info.database,
        adminStore: { type: 'local' },
        labels: {},
        createdAt: '',
        updatedAt: '',
      } as unknown as Connection,
      { username: info.adminUser, password: info.adminPassword },
      { timeoutMs: 10_000 },
    );
  });

  it('refuses an existing role when asked for a new one, or for one with its label', async () => {
    const app = await createAppRole();
    const clone = await foreignClone(app.name, [app.group]);
    const password = randomBytes(18).toString('base64url');
    await expect(
      session.createUser(clone.name, password, { like: app.name, exclusive: true }),
    ).rejects.toMatchObject({ name: 'TargetRefusedError', code: 'user-exists' });
    await expect(
      session.createUser(clone.name, password, { like: app.name, label: 'keyturn:someone' }),
    ).rejects.toMatchObject({ name: 'TargetRefusedError', code: 'not-keyturns' });
    expect(await canLogin(clone.name, clone.password)).toBe(true);
    expect(await canLogin(clone.name, password)).toBe(false);
    // With the label it asks for, the role is Keyturn's: its password is set.
    await session.setLabel?.(clone.name, 'keyturn:someone');
    expect(await session.labelOf?.(clone.name)).toEqual({ label: 'keyturn:someone' });
    expect(await session.createUser(clone.name, password, { like: app.name, label: 'keyturn:someone' })).toBe(
      'updated',
    );
    expect(await canLogin(clone.name, password)).toBe(true);
    expect(await session.labelOf?.(`${clone.name}_none`)).toBeNull();
  });
});

const mysqlUnavailable = await asMysqlRoot(async (c) => {
  await c.query('SELECT 1');
  return undefined;
}).catch((err: Error) => `cannot use MySQL at ${MYSQL_SERVER.host}:${MYSQL_SERVER.port}: ${err.message}`);
if (mysqlUnavailable) console.warn(`skipping the MySQL clone tests: ${mysqlUnavailable}`);

describe.skipIf(mysqlUnavailable !== undefined)('finding 3: the same on MySQL/MariaDB', () => {
  const run = randomBytes(3).toString('hex');
  const admin = { name: `kt_admin_${run}`, password: randomBytes(18).toString('base64url') };
  const conn = `my-${run}`;
  const accounts: string[] = [admin.name];
  let n = 0;

  beforeAll(async () => {
    await asMysqlRoot(async (c) => {
      await c.query('CREATE DATABASE IF NOT EXISTS keyturn_test');
      // A dedicated admin: the API needs an admin password, and root here has none.
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [admin.name, '%', admin.password]);
      await c.query('GRANT ALL PRIVILEGES ON *.* TO ?@? WITH GRANT OPTION', [admin.name, '%']);
    });
    const res = await kt.api('POST', '/v1/connections', {
      id: conn,
      type: 'mysql',
      host: MYSQL_SERVER.host,
      port: MYSQL_SERVER.port,
      admin: { username: admin.name, password: admin.password },
      options: { accountHost: '%' },
    });
    if (res.status !== 201) throw new Error(`registering the MySQL connection failed: ${res.text}`);
  });
  afterAll(async () => {
    await asMysqlRoot(async (c) => {
      for (const u of accounts) await c.query('DROP USER IF EXISTS ?@?', [u, '%']);
    });
  });

  /** An account with a known password and `grant` on keyturn_test.* (SELECT unless told). */
  async function account(name: string, grant = 'SELECT') {
    const password = randomBytes(18).toString('base64url');
    accounts.push(name);
    await asMysqlRoot(async (c) => {
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [name, '%', password]);
      await c.query(`GRANT ${grant} ON keyturn_test.* TO ?@?`, [name, '%']);
    });
    return { name, password };
  }
  const user = () => account(`kt_alt_${run}_${++n}`);
  const body = (u: { name: string; password: string }, extra: object = {}) => ({
    id: `alt-${u.name}`,
    connection: conn,
    username: u.name,
    strategy: 'alternating-users',
    schedule: { every: '30d' },
    import: true,
    currentPassword: u.password,
    ...extra,
  });

  it('refuses a foreign clone, and its adoption while its grants differ', async () => {
    const u = await user();
    const clone = await account(`${u.name}_clone`, 'INSERT');
    const refused = await kt.api('POST', '/v1/credentials', body(u));
    expect(refused.status, refused.text).toBe(409);
    expect(refused.body.error.code).toBe('clone_exists');
    expect(refused.body.error.message).toContain(`User "${clone.name}" already exists`);
    const differs = await kt.api('POST', '/v1/credentials', body(u, { adoptClone: true }));
    expect(differs.status, differs.text).toBe(409);
    expect(differs.body.error.code).toBe('clone_access_differs');
    expect(differs.body.error.message).toMatch(/it lacks: GRANT SELECT/);
    expect(await mysqlCanLogin(clone.name, clone.password, 'keyturn_test')).toBe(true);
  });

  it('adopts a clone with the same grants when asked, and rotates it, rotation after rotation', async () => {
    const u = await user();
    const clone = await account(`${u.name}_clone`);
    const res = await kt.api('POST', '/v1/credentials', body(u, { adoptClone: true }));
    expect(res.status, res.text).toBe(201);
    for (let i = 0; i < 3; i++) expect((await rotate(`alt-${u.name}`)).status).toBe('succeeded');
    const secret = (await kt.api('GET', `/v1/credentials/alt-${u.name}/secret`)).body;
    expect(secret.username).toBe(clone.name);
    expect(await mysqlCanLogin(clone.name, secret.password, 'keyturn_test')).toBe(true);
  });

  it('a creation that failed leaves no record that would vouch for a clone someone makes later', async () => {
    const u = await user();
    expect((await kt.api('POST', '/v1/credentials', body(u))).status).toBe(201);
    // The clone cannot be made while the account it copies is gone: the rotation fails, nothing is made.
    await asMysqlRoot((c) => c.query('DROP USER ?@?', [u.name, '%']));
    expect((await rotate(`alt-${u.name}`)).status).toBe('failed');
    await asMysqlRoot(async (c) => {
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [u.name, '%', u.password]);
      await c.query('GRANT SELECT ON keyturn_test.* TO ?@?', [u.name, '%']);
    });
    const clone = await account(`${u.name}_clone`);
    const rotation = await rotate(`alt-${u.name}`);
    expect(rotation.status).toBe('failed');
    expect(rotation.error.message).toContain(`user "${clone.name}" exists`);
    expect(rotation.error.message).toContain('Keyturn did not make it for this credential');
    expect(await mysqlCanLogin(clone.name, clone.password, 'keyturn_test')).toBe(true);
    expect(await mysqlCanLogin(u.name, u.password, 'keyturn_test')).toBe(true);
  });
});

const noRedisServer = await import('node:child_process').then(({ spawnSync }) =>
  spawnSync('redis-server', ['--version']).status === 0 ? undefined : 'no redis-server on the PATH',
);
if (noRedisServer) console.warn(`skipping the Redis clone tests: ${noRedisServer}`);

describe.skipIf(noRedisServer !== undefined)('finding 3: the same on Redis ACL users', () => {
  let server: RedisAclServer;
  const conn = 'acl-redis';
  let n = 0;
  beforeAll(async () => {
    server = await startRedisAclServer();
    const res = await kt.api('POST', '/v1/connections', {
      id: conn,
      type: 'redis',
      host: server.host,
      port: server.port,
      admin: { username: server.adminUser, password: server.adminPassword },
    });
    if (res.status !== 201) throw new Error(`registering the Redis connection failed: ${res.text}`);
  });
  afterAll(async () => {
    await server?.stop();
  });

  async function aclUser(name: string, keys = '~cache:*') {
    const password = randomBytes(18).toString('base64url');
    await server.admin('ACL', 'SETUSER', name, 'on', `>${password}`, keys, '-@all', '+get', '+ping');
    return { name, password };
  }

  it('refuses a foreign clone, adopts one only with the same rules, and rotates it', async () => {
    const u = await aclUser(`app${++n}`);
    const clone = await aclUser(`${u.name}_clone`, '~other:*');
    const body = {
      id: `alt-${u.name}`,
      connection: conn,
      username: u.name,
      strategy: 'alternating-users',
      schedule: { every: '30d' },
      import: true,
      currentPassword: u.password,
    };
    const refused = await kt.api('POST', '/v1/credentials', body);
    expect(refused.status, refused.text).toBe(409);
    expect(refused.body.error.code).toBe('clone_exists');
    expect(refused.body.error.message).toContain(`User "${clone.name}" already exists`);
    const differs = await kt.api('POST', '/v1/credentials', { ...body, adoptClone: true });
    expect(differs.status, differs.text).toBe(409);
    expect(differs.body.error.code).toBe('clone_access_differs');
    expect(differs.body.error.message).toContain('~cache:*');
    expect(await server.canLogin(clone.name, clone.password)).toBe(true);

    await server.admin('ACL', 'SETUSER', clone.name, 'resetkeys', '~cache:*');
    const adopted = await kt.api('POST', '/v1/credentials', { ...body, adoptClone: true });
    expect(adopted.status, adopted.text).toBe(201);
    for (let i = 0; i < 3; i++) expect((await rotate(body.id)).status).toBe('succeeded');
    const secret = (await kt.api('GET', `/v1/credentials/${body.id}/secret`)).body;
    expect(secret.username).toBe(clone.name);
    expect(await server.canLogin(clone.name, secret.password)).toBe(true);
  });
});
