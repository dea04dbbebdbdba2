// single-user on MySQL 8.0.14+, which lets an account hold two passwords: the rotation overlaps the old and the
// new one (ALTER USER … RETAIN CURRENT PASSWORD), the grace period or the next rotation removes the old one
// (DISCARD OLD PASSWORD), and a failed rotation leaves only the current password. End to end through the API,
// every claim checked by logging in through mysql2 and by the account's secondary password in mysql.user.
//
// Server: KEYTURN_TEST_MYSQL8_URL (mysql://user:pass@host:port, a user that may create users and grant), else a
// testcontainers mysql:8.4 when a Docker engine answers, else that part is skipped with the reason printed
// (test/unit/mysql-dual-passwords.test.ts then stands in for it with a recording fake).
//
// The second part runs against the machine's MariaDB (test/support/mysql.ts), which holds one password per
// account: there `gracePeriod` on a single-user credential is refused with 422 naming the server, and so it is
// when the server cannot be asked.
import { randomBytes } from 'node:crypto';
import mysql from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { supportsDualPasswords } from '../../src/targets/mysql/mysql-target.ts';
import {
  dropPrefix,
  type Keyturn,
  spawnWorker,
  startKeyturn,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { asMysqlRoot, MYSQL_SERVER } from '../support/mysql.ts';
import { freePort } from '../support/ports.ts';

const DATABASE = 'keyturn_test';
const NO_SERVER = 'no MySQL 8 server: set KEYTURN_TEST_MYSQL8_URL or run a Docker engine';
const hex = (n: number) => randomBytes(n).toString('hex');
const newPassword = () => randomBytes(18).toString('base64url');

interface ServerAddress {
  host: string;
  port: number;
  user: string;
  password: string;
}

// Where the MySQL 8 server comes from, decided before the tests are collected.
const fromEnv = process.env.KEYTURN_TEST_MYSQL8_URL;
const noDocker = fromEnv
  ? undefined
  : await import('testcontainers')
      .then(({ getContainerRuntimeClient }) => getContainerRuntimeClient())
      .then(
        () => undefined,
        (err: Error) => `no Docker engine answers (${err.message.split('\n')[0]})`,
      );
const skipMysql8 = noDocker !== undefined;
if (skipMysql8) console.warn(`skipping the MySQL 8 dual-password rotation tests: ${NO_SERVER} (${noDocker})`);

function parseUrl(raw: string): ServerAddress {
  const url = new URL(raw);
  if (url.protocol !== 'mysql:')
    throw new Error('KEYTURN_TEST_MYSQL8_URL must be mysql://user:pass@host:port');
  return {
    host: url.hostname,
    port: Number(url.port || 3306),
    user: decodeURIComponent(url.username || 'root'),
    password: decodeURIComponent(url.password),
  };
}

async function asRootOf<T>(server: ServerAddress, fn: (c: mysql.Connection) => Promise<T>): Promise<T> {
  const c = await mysql.createConnection({ ...server, connectTimeout: 5000 });
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

describe.skipIf(skipMysql8)('single-user on MySQL 8 (dual passwords)', () => {
  let server: ServerAddress;
  let stopContainer: (() => Promise<unknown>) | undefined;
  const env = testEnv();
  let kt: Keyturn;
  let connection: string;
  const admin = { name: `kt_admin_${hex(4)}`, password: newPassword() };
  const created: string[] = [];
  const seen = new Set<string>();

  const asRoot = <T>(fn: (c: mysql.Connection) => Promise<T>) => asRootOf(server, fn);

  async function canLogin(user: string, password: string): Promise<boolean> {
    let c: mysql.Connection | undefined;
    try {
      c = await mysql.createConnection({
        host: server.host,
        port: server.port,
        user,
        password,
        database: DATABASE,
        connectTimeout: 5000,
      });
      await c.query('SELECT 1');
      return true;
    } catch (err) {
      if ((err as { errno?: number }).errno === 1045) return false;
      throw err;
    } finally {
      await c?.end().catch(() => {});
    }
  }

  /** How many passwords the account holds: its primary, plus the secondary MySQL keeps in User_attributes. */
  async function passwordCount(user: string): Promise<number> {
    return asRoot(async (c) => {
      const [rows] = await c.query({
        sql: "SELECT JSON_EXTRACT(User_attributes, '$.additional_password') IS NOT NULL FROM mysql.user WHERE User = ? AND Host = ?",
        rowsAsArray: true,
        values: [user, '%'],
      });
      return 1 + Number((rows as number[][])[0]![0]);
    });
  }

  async function grantsOf(user: string): Promise<string[]> {
    return asRoot(async (c) => {
      const [rows] = await c.query({ sql: 'SHOW GRANTS FOR ?@?', rowsAsArray: true }, [user, '%']);
      return (rows as string[][]).map(([line]) => String(line));
    });
  }

  /** An account with a known password and SELECT on keyturn_test.*, imported as a single-user credential. */
  async function importedUser(extra: object = {}) {
    const name = `kt_app_${hex(4)}`;
    const password = newPassword();
    seen.add(password);
    created.push(name);
    await asRoot(async (c) => {
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [name, '%', password]);
      await c.query(`GRANT SELECT ON \`${DATABASE}\`.* TO ?@?`, [name, '%']);
    });
    const id = `my8-${name}`.replaceAll('_', '-');
    const res = await kt.api('POST', '/v1/credentials', {
      id,
      connection,
      username: name,
      strategy: 'single-user',
      schedule: { every: '30d' },
      import: true,
      currentPassword: password,
      ...extra,
    });
    expect(res.status, res.text).toBe(201);
    return { id, name, password };
  }

  async function rotate(id: string) {
    const res = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(res.status, res.text).toBe(202);
    const rotation = await waitForRotation(kt, res.body.rotationId);
    expect(rotation.status, JSON.stringify({ steps: rotation.steps, error: rotation.error })).toBe(
      'succeeded',
    );
    const secret = (await kt.api('GET', `/v1/credentials/${id}/secret`)).body as {
      username: string;
      password: string;
    };
    seen.add(secret.password);
    return secret;
  }

  beforeAll(async () => {
    if (fromEnv) {
      server = parseUrl(fromEnv);
    } else {
      const { GenericContainer, Wait } = await import('testcontainers');
      const rootPassword = hex(16);
      const container = await new GenericContainer('mysql:8.4')
        .withEnvironment({ MYSQL_ROOT_PASSWORD: rootPassword })
        .withExposedPorts(3306)
        // The entrypoint's temporary server (during initialisation) listens on port 0; the real one on 3306.
        .withWaitStrategy(Wait.forLogMessage(/ready for connections.*port: 3306/))
        .withStartupTimeout(240_000)
        .start();
      stopContainer = () => container.stop();
      server = {
        host: container.getHost(),
        port: container.getMappedPort(3306),
        user: 'root',
        password: rootPassword,
      };
    }
    const version = await waitFor(
      `MySQL 8 at ${server.host}:${server.port} to accept its root login`,
      () =>
        asRoot(async (c) => {
          const [rows] = await c.query({ sql: 'SELECT VERSION()', rowsAsArray: true });
          return String((rows as string[][])[0]![0]);
        }),
      60_000,
      500,
    );
    if (!supportsDualPasswords(version)) {
      throw new Error(
        `KEYTURN_TEST_MYSQL8_URL must point at MySQL 8.0.14 or later, which holds two passwords per account; ${server.host}:${server.port} is ${version}`,
      );
    }
    await asRoot(async (c) => {
      await c.query(`CREATE DATABASE IF NOT EXISTS \`${DATABASE}\``);
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [admin.name, '%', admin.password]);
      // ALL at the global level includes CREATE USER, which lets it RETAIN/DISCARD other accounts' passwords.
      await c.query('GRANT ALL PRIVILEGES ON *.* TO ?@? WITH GRANT OPTION', [admin.name, '%']);
    });
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    connection = `mysql8-${hex(3)}`;
    const res = await kt.api('POST', '/v1/connections', {
      id: connection,
      type: 'mysql',
      host: server.host,
      port: server.port,
      database: DATABASE,
      admin: { username: admin.name, password: admin.password },
      // Plain TCP to the test server: caching_sha2_password's full authentication (the first login after each
      // password change, and the admin's first) sends the password to the server's RSA key, which a connection
      // allows only when it lists sha256_password (or uses TLS verify-full).
      options: {
        accountHost: '%',
        requireAuth: 'mysql_native_password,caching_sha2_password,sha256_password',
      },
    });
    expect(res.status, res.text).toBe(201);
  }, 360_000);

  afterAll(async () => {
    if (process.env.KT_DEBUG) for (const l of kt?.logs ?? []) if (/"level":[4-6]0/.test(l)) console.log(l);
    await kt?.close();
    await dropPrefix(env.prefix);
    if (server && !stopContainer) {
      await asRoot(async (c) => {
        for (const user of [...created, admin.name]) await c.query('DROP USER IF EXISTS ?@?', [user, '%']);
      }).catch(() => {});
    }
    await stopContainer?.();
  }, 120_000);

  it('overlaps: old and new both log in until the grace period ends, then only the new one; grants unchanged', async () => {
    const { id, name, password } = await importedUser({ gracePeriod: '3s' });
    const grants = await grantsOf(name);
    const secret = await rotate(id);
    expect(secret.username).toBe(name);
    expect(secret.password).not.toBe(password);
    // No window: clients still holding the old password go on logging in.
    expect(await canLogin(name, secret.password)).toBe(true);
    expect(await canLogin(name, password)).toBe(true);
    expect(await passwordCount(name)).toBe(2);

    await waitFor(
      'the old password to be removed',
      async () => !(await canLogin(name, password)),
      20_000,
      250,
    );
    expect(await canLogin(name, secret.password)).toBe(true);
    expect(await passwordCount(name)).toBe(1);
    expect(await grantsOf(name)).toEqual(grants);
    // The user's password changes downstream a moment before the revocation's record and audit event are committed.
    const revoked = await waitFor('the revocation to be audited', async () => {
      const audit = await kt.api('GET', `/v1/audit?credential=${id}&action=credential.previous_revoked`);
      return audit.body.events.length > 0 ? audit.body.events : undefined;
    });
    expect(revoked).toHaveLength(1);
  });

  it('without a grace period, one old password stays until the next rotation removes it', async () => {
    const { id, name, password } = await importedUser();
    const first = await rotate(id);
    expect(await canLogin(name, first.password)).toBe(true);
    expect(await canLogin(name, password)).toBe(true);
    const second = await rotate(id);
    expect(await canLogin(name, second.password)).toBe(true);
    expect(await canLogin(name, first.password)).toBe(true);
    expect(await canLogin(name, password)).toBe(false);
    expect(await passwordCount(name)).toBe(2);
  });

  it('finding 3: alternating-users labels the clone it makes (account attribute) and refuses one it did not make', async () => {
    const { id, name } = await importedUser({ strategy: 'alternating-users' });
    created.push(`${name}_clone`);
    const secret = await rotate(id);
    expect(secret.username).toBe(`${name}_clone`);
    expect(await canLogin(secret.username, secret.password)).toBe(true);
    const attribute = await asRoot(async (c) => {
      const [rows] = await c.query({
        sql: 'SELECT ATTRIBUTE FROM INFORMATION_SCHEMA.USER_ATTRIBUTES WHERE USER = ? AND HOST = ?',
        rowsAsArray: true,
        values: [secret.username, '%'],
      });
      const raw = (rows as unknown[][])[0]?.[0];
      return typeof raw === 'string' ? JSON.parse(raw) : raw;
    });
    expect(attribute).toEqual({ keyturn: `keyturn:${id}` });
    expect((await rotate(id)).username).toBe(name);
    expect((await rotate(id)).username).toBe(`${name}_clone`);

    // Someone else's account under the name of another user's clone: registration refuses it, its owner keeps it.
    const owner = { name: `kt_app_${hex(4)}`, password: newPassword() };
    const clone = { name: `${owner.name}_clone`, password: newPassword() };
    created.push(owner.name, clone.name);
    seen.add(owner.password);
    await asRoot(async (c) => {
      for (const u of [owner, clone]) {
        await c.query('CREATE USER ?@? IDENTIFIED BY ?', [u.name, '%', u.password]);
        await c.query(`GRANT SELECT ON \`${DATABASE}\`.* TO ?@?`, [u.name, '%']);
      }
    });
    const refused = await kt.api('POST', '/v1/credentials', {
      id: `my8-${owner.name}`.replaceAll('_', '-'),
      connection,
      username: owner.name,
      strategy: 'alternating-users',
      schedule: { every: '30d' },
      import: true,
      currentPassword: owner.password,
    });
    expect(refused.status, refused.text).toBe(409);
    expect(refused.body.error.code).toBe('clone_exists');
    expect(await canLogin(clone.name, clone.password)).toBe(true);
  });

  it('a rotation that fails after set is rolled back: only the current password logs in', async () => {
    const { id, name, password } = await importedUser({ gracePeriod: '1h' });
    // From here on a worker process whose test step always fails does the work (the last test that rotates).
    await kt.runtime.workers?.close();
    const worker = spawnWorker(env, { KEYTURN_FAILPOINTS: 'before-test=throw' });
    try {
      const res = await kt.api('POST', `/v1/credentials/${id}/rotate`);
      const rotation = await waitForRotation(kt, res.body.rotationId);
      expect(rotation.status).toBe('failed');
      expect(rotation.setStarted).toBe(true);
      expect(await canLogin(name, password)).toBe(true);
      // The pending password (dropped from the store with the rollback) is gone from the account too.
      expect(await passwordCount(name)).toBe(1);
      const secret = (await kt.api('GET', `/v1/credentials/${id}/secret`)).body;
      expect(secret.password).toBe(password);
    } finally {
      await worker.kill();
    }
  });

  it('wrote no password to its logs', () => {
    expect(seen.size).toBeGreaterThan(0);
    const logs = kt.logs.join('\n');
    for (const password of [...seen, admin.password]) expect(logs).not.toContain(password);
  });
});

// The same registration on the machine's MariaDB, which holds one password per account.

const mariadb = await asMysqlRoot(async (c) => {
  const [rows] = await c.query({ sql: 'SELECT VERSION()', rowsAsArray: true });
  return { version: String((rows as string[][])[0]![0]) };
}).catch((err: Error) => ({
  skip: `cannot use MySQL at ${MYSQL_SERVER.host}:${MYSQL_SERVER.port} as "${MYSQL_SERVER.user}": ${err.message}`,
}));
const mariadbSkip =
  'skip' in mariadb
    ? mariadb.skip
    : supportsDualPasswords(mariadb.version)
      ? `the server at ${MYSQL_SERVER.host}:${MYSQL_SERVER.port} is ${mariadb.version}, which holds two passwords per account`
      : undefined;
if (mariadbSkip) console.warn(`skipping the single-password (MariaDB) gracePeriod tests: ${mariadbSkip}`);

describe.skipIf(mariadbSkip !== undefined)(
  'single-user gracePeriod on a server with one password per account',
  () => {
    const env = testEnv();
    let kt: Keyturn;
    const connection = `mariadb-${hex(3)}`;
    const version = 'version' in mariadb ? mariadb.version : '';
    const admin = { name: `kt_admin_${hex(4)}`, password: newPassword() };
    const user = { name: `kt_app_${hex(4)}`, password: newPassword() };

    beforeAll(async () => {
      await asMysqlRoot(async (c) => {
        await c.query(`CREATE DATABASE IF NOT EXISTS \`${DATABASE}\``);
        await c.query('CREATE USER ?@? IDENTIFIED BY ?', [admin.name, '%', admin.password]);
        await c.query('GRANT ALL PRIVILEGES ON *.* TO ?@? WITH GRANT OPTION', [admin.name, '%']);
        await c.query('CREATE USER ?@? IDENTIFIED BY ?', [user.name, '%', user.password]);
        await c.query(`GRANT SELECT ON \`${DATABASE}\`.* TO ?@?`, [user.name, '%']);
      });
      kt = await startKeyturn(env);
      const res = await kt.api('POST', '/v1/connections', {
        id: connection,
        type: 'mysql',
        host: MYSQL_SERVER.host,
        port: MYSQL_SERVER.port,
        database: DATABASE,
        admin: { username: admin.name, password: admin.password },
      });
      expect(res.status, res.text).toBe(201);
    });

    afterAll(async () => {
      await kt?.close();
      await dropPrefix(env.prefix);
      await asMysqlRoot(async (c) => {
        for (const name of [admin.name, user.name]) await c.query('DROP USER IF EXISTS ?@?', [name, '%']);
      });
    });

    const refusal = (id: string) =>
      `gracePeriod on "single-user" needs a server that holds two passwords per user (MySQL 8.0.14+ or Redis); connection "${id}" is ${version}`;

    it('refuses a new single-user credential with a grace period, naming the server, and registers nothing', async () => {
      const id = `grace-${user.name}`.replaceAll('_', '-');
      for (const extra of [{}, { import: true, currentPassword: user.password }]) {
        const res = await kt.api('POST', '/v1/credentials', {
          id,
          connection,
          username: user.name,
          strategy: 'single-user',
          schedule: { every: '30d' },
          gracePeriod: '1h',
          ...extra,
        });
        expect(res.status, res.text).toBe(422);
        expect(res.body.error.message).toBe(refusal(connection));
        expect(res.text).not.toContain(admin.password);
        expect(res.text).not.toContain(user.password);
        expect((await kt.api('GET', `/v1/credentials/${id}`)).status).toBe(404);
      }
    });

    it('refuses adding a grace period to an existing single-user credential; other changes still go through', async () => {
      const id = `nograce-${user.name}`.replaceAll('_', '-');
      const created = await kt.api('POST', '/v1/credentials', {
        id,
        connection,
        username: user.name,
        strategy: 'single-user',
        schedule: { every: '30d' },
        import: true,
        currentPassword: user.password,
      });
      expect(created.status, created.text).toBe(201);
      const patched = await kt.api('PATCH', `/v1/credentials/${id}`, { gracePeriod: '1h' });
      expect(patched.status, patched.text).toBe(422);
      expect(patched.body.error.message).toBe(refusal(connection));
      const cred = await kt.api('GET', `/v1/credentials/${id}`);
      expect(cred.body.gracePeriod ?? null).toBeNull();
      const relabelled = await kt.api('PATCH', `/v1/credentials/${id}`, { labels: { team: 'x' } });
      expect(relabelled.status, relabelled.text).toBe(200);
      // One credential per downstream user: the next test registers this user again.
      expect((await kt.api('DELETE', `/v1/credentials/${id}`)).status).toBe(204);
    });

    it('alternating-users keeps its grace period on the same server', async () => {
      const res = await kt.api('POST', '/v1/credentials', {
        id: `alt-${user.name}`.replaceAll('_', '-'),
        connection,
        username: user.name,
        strategy: 'alternating-users',
        schedule: { every: '30d' },
        gracePeriod: '1h',
        import: true,
        currentPassword: user.password,
      });
      expect(res.status, res.text).toBe(201);
    });

    it('answers 422 "could not be checked, retry" when the server cannot be asked', async () => {
      const unreachable = `mysql-down-${hex(3)}`;
      const conn = await kt.api('POST', '/v1/connections', {
        id: unreachable,
        type: 'mysql',
        host: '127.0.0.1',
        port: await freePort(),
        admin: { username: admin.name, password: admin.password },
        verify: false, // registered offline: the credential's gracePeriod check is what meets the closed port
      });
      expect(conn.status, conn.text).toBe(201);
      const res = await kt.api('POST', '/v1/credentials', {
        id: `down-${hex(3)}`,
        connection: unreachable,
        username: user.name,
        strategy: 'single-user',
        schedule: { every: '30d' },
        gracePeriod: '1h',
      });
      expect(res.status, res.text).toBe(422);
      expect(res.body.error.message).toMatch(
        new RegExp(
          `connection "${unreachable}" could not be checked: the downstream did not answer .*; retry`,
        ),
      );
      expect(res.text).not.toContain(admin.password);
    });
  },
);
