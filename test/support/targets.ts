// Downstream targets other than PostgreSQL, as fixtures the target-generic tests (SIGKILL, secret leaks) run
// against: each starts or reaches its server, registers as a connection body, makes users and checks logins.
import { randomBytes, scryptSync, timingSafeEqual } from 'node:crypto';
import pg from 'pg';
import { iamSkipReason, startIamWorld } from './aws-iam.ts';
import {
  createAppRole,
  createPgAdminRole,
  type Keyturn,
  pgAdmin,
  canLogin as pgCanLogin,
  pgInfo,
} from './harness.ts';
import { asMysqlRoot, MYSQL_SERVER, mysqlCanLogin } from './mysql.ts';
import { startRedisAclServer } from './redis-acl-server.ts';
import { LDAP_SERVICES, ldapConnectionBody, slapdSkipReason, startSlapd } from './slapd.ts';
import { startWebhookServer } from './webhook-server.ts';

export interface StartedTarget {
  /** Body of POST /v1/connections, without the id. */
  connection: Record<string, unknown>;
  /** Whether single-user keeps the old password working (overlap) instead of replacing it. */
  dualPassword: boolean;
  /**
   * A fresh user with a known password, allowed to log in. Where the downstream makes the secrets (AWS IAM), the
   * password is one of the user's keys, and `keyId` names it.
   */
  createUser(): Promise<{ username: string; password: string; keyId?: string }>;
  canLogin(username: string, password: string, keyId?: string): Promise<boolean>;
  /**
   * An admin login the downstream accepts but that lacks a privilege rotations need, and the name of the check
   * (the session's checkAdmin) that must say so.
   */
  weakAdmin(): Promise<{ login: { username: string; password: string }; lacks: string }>;
  /** Whether the connection's admin logs in with this password (the admin rotation's tests). */
  adminCanLogin(password: string): Promise<boolean>;
  /** Secrets of the fixture itself (admin passwords, signing keys) that must never leak either. */
  secrets: string[];
  stop(): Promise<void>;
}

export interface TargetFixture {
  name: string;
  skipReason(): Promise<string | undefined>;
  start(): Promise<StartedTarget>;
}

const redisAcl: TargetFixture = {
  name: 'Redis ACL',
  async skipReason() {
    const { spawnSync } = await import('node:child_process');
    return spawnSync('redis-server', ['--version']).status === 0 ? undefined : 'no redis-server on the PATH';
  },
  async start() {
    const server = await startRedisAclServer();
    return {
      connection: {
        type: 'redis',
        host: server.host,
        port: server.port,
        admin: { username: server.adminUser, password: server.adminPassword },
      },
      dualPassword: true,
      async createUser() {
        const username = `u${randomBytes(4).toString('hex')}`;
        const password = randomBytes(18).toString('base64url');
        await server.admin(
          'ACL',
          'SETUSER',
          username,
          'on',
          `>${password}`,
          '~app:*',
          '-@all',
          '+get',
          '+ping',
        );
        return { username, password };
      },
      canLogin: (u, p) => server.canLogin(u, p),
      adminCanLogin: (p) => server.canLogin(server.adminUser, p),
      async weakAdmin() {
        const login = {
          username: `weak${randomBytes(4).toString('hex')}`,
          password: randomBytes(18).toString('base64url'),
        };
        await server.admin(
          'ACL',
          'SETUSER',
          login.username,
          'on',
          `>${login.password}`,
          '~*',
          '-@all',
          '+@read',
          '+ping',
        );
        return { login, lacks: 'ACL SETUSER' };
      },
      secrets: [server.adminPassword],
      stop: () => server.stop(),
    };
  },
};

const webhook: TargetFixture = {
  name: 'webhook',
  skipReason: async () => undefined,
  async start() {
    const signingKey = randomBytes(32).toString('base64url');
    const server = await startWebhookServer({ signingKey, keyId: 'kid-test' });
    // The example service keeps scrypt hashes (as docs/webhook-target.md shows); the fixture reads the same map.
    const check = (username: string, password: string) => {
      const user = server.users.get(username);
      return Boolean(user && timingSafeEqual(scryptSync(password, user.salt, 32), user.hash));
    };
    return {
      connection: {
        type: 'webhook',
        host: '127.0.0.1',
        port: server.port,
        tls: { mode: 'disable' },
        admin: { username: 'kid-test', password: signingKey },
      },
      dualPassword: false,
      async createUser() {
        const username = `svc_${randomBytes(4).toString('hex')}`;
        const password = randomBytes(18).toString('base64url');
        const salt = randomBytes(16);
        server.users.set(username, { salt, hash: scryptSync(password, salt, 32) });
        return { username, password };
      },
      canLogin: async (u, p) => check(u, p),
      adminCanLogin: async (p) => p === signingKey,
      // A signing key the service does not hold: its test answers 401.
      weakAdmin: async () => ({
        login: { username: 'kid-test', password: randomBytes(32).toString('base64url') },
        lacks: 'signed requests',
      }),
      secrets: [signingKey],
      stop: () => server.close(),
    };
  },
};

const mariadb: TargetFixture = {
  name: 'MySQL/MariaDB',
  async skipReason() {
    return asMysqlRoot((c) => c.query('SELECT 1')).then(
      () => undefined,
      (err: Error) => `cannot use MySQL at ${MYSQL_SERVER.host}:${MYSQL_SERVER.port}: ${err.message}`,
    );
  },
  async start() {
    const admin = {
      name: `kt_fx_admin_${randomBytes(4).toString('hex')}`,
      password: randomBytes(18).toString('base64url'),
    };
    const users: string[] = [];
    await asMysqlRoot(async (c) => {
      await c.query('CREATE DATABASE IF NOT EXISTS keyturn_test');
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [admin.name, '%', admin.password]);
      await c.query('GRANT ALL PRIVILEGES ON *.* TO ?@? WITH GRANT OPTION', [admin.name, '%']);
    });
    return {
      connection: {
        type: 'mysql',
        host: MYSQL_SERVER.host,
        port: MYSQL_SERVER.port,
        database: 'keyturn_test',
        admin: { username: admin.name, password: admin.password },
      },
      dualPassword: false,
      async createUser() {
        const username = `kt_fx_${randomBytes(4).toString('hex')}`;
        const password = randomBytes(18).toString('base64url');
        users.push(username, `${username}_clone`);
        await asMysqlRoot(async (c) => {
          await c.query('CREATE USER ?@? IDENTIFIED BY ?', [username, '%', password]);
          await c.query('GRANT SELECT ON keyturn_test.* TO ?@?', [username, '%']);
        });
        return { username, password };
      },
      canLogin: (username, password) => mysqlCanLogin(username, password, 'keyturn_test'),
      adminCanLogin: (p) => mysqlCanLogin(admin.name, p, 'keyturn_test'),
      async weakAdmin() {
        const login = {
          username: `kt_fx_weak_${randomBytes(4).toString('hex')}`,
          password: randomBytes(18).toString('base64url'),
        };
        users.push(login.username);
        await asMysqlRoot(async (c) => {
          await c.query('CREATE USER ?@? IDENTIFIED BY ?', [login.username, '%', login.password]);
          await c.query('GRANT SELECT ON keyturn_test.* TO ?@?', [login.username, '%']);
        });
        return { login, lacks: 'CREATE USER' };
      },
      secrets: [admin.password],
      async stop() {
        await asMysqlRoot(async (c) => {
          for (const user of [...users, admin.name]) await c.query('DROP USER IF EXISTS ?@?', [user, '%']);
        });
      },
    };
  },
};

/** The machine's RabbitMQ: its management API (the plugin) and AMQP on loopback, administered as `guest`. */
export const RABBITMQ = {
  host: '127.0.0.1',
  managementPort: Number(process.env.KEYTURN_TEST_RABBITMQ_MANAGEMENT_PORT ?? 15672),
  amqpPort: Number(process.env.KEYTURN_TEST_RABBITMQ_AMQP_PORT ?? 5672),
  admin: {
    username: process.env.KEYTURN_TEST_RABBITMQ_USER ?? 'guest',
    password: process.env.KEYTURN_TEST_RABBITMQ_PASSWORD ?? 'guest',
  },
};

/** A management API call as the machine's RabbitMQ administrator; throws on anything but 2xx (and 404 on DELETE). */
export async function rabbitAdmin(method: string, path: string, body?: unknown): Promise<unknown> {
  const res = await fetch(`http://${RABBITMQ.host}:${RABBITMQ.managementPort}${path}`, {
    method,
    headers: {
      authorization: `Basic ${Buffer.from(`${RABBITMQ.admin.username}:${RABBITMQ.admin.password}`).toString('base64')}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(5000),
  });
  if (!res.ok && !(method === 'DELETE' && res.status === 404)) {
    throw new Error(`RabbitMQ ${method} ${path}: ${res.status} ${await res.text()}`);
  }
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

/** Whether an AMQP login with this password works on vhost "/" (false when RabbitMQ refuses it). */
export async function rabbitCanLogin(username: string, password: string): Promise<boolean> {
  const amqp = (await import('amqplib')).default;
  try {
    const connection = await amqp.connect(
      {
        protocol: 'amqp',
        hostname: RABBITMQ.host,
        port: RABBITMQ.amqpPort,
        username,
        password,
        vhost: '/',
        heartbeat: 0,
      },
      { timeout: 5000 },
    );
    await connection.close();
    return true;
  } catch (err) {
    if (/ACCESS_REFUSED|403/.test(String((err as Error).message))) return false;
    throw err;
  }
}

const rabbitmq: TargetFixture = {
  name: 'RabbitMQ',
  async skipReason() {
    return rabbitAdmin('GET', '/api/overview').then(
      () => undefined,
      (err: Error) =>
        `the RabbitMQ management API does not answer at ${RABBITMQ.host}:${RABBITMQ.managementPort} (${err.message}); start RabbitMQ and enable the plugin: rabbitmq-plugins enable rabbitmq_management`,
    );
  },
  async start() {
    const admin = {
      name: `kt_fx_admin_${randomBytes(4).toString('hex')}`,
      password: randomBytes(18).toString('base64url'),
    };
    const users: string[] = [admin.name];
    await rabbitAdmin('PUT', `/api/users/${admin.name}`, { password: admin.password, tags: 'administrator' });
    return {
      connection: {
        type: 'rabbitmq',
        host: RABBITMQ.host,
        port: RABBITMQ.managementPort,
        tls: { mode: 'disable' },
        options: { amqpPort: RABBITMQ.amqpPort, vhost: '/' },
        admin: { username: admin.name, password: admin.password },
      },
      dualPassword: false,
      async createUser() {
        const username = `kt_fx_${randomBytes(4).toString('hex')}`;
        const password = randomBytes(18).toString('base64url');
        users.push(username, `${username}_clone`);
        await rabbitAdmin('PUT', `/api/users/${username}`, { password, tags: 'monitoring' });
        await rabbitAdmin('PUT', `/api/permissions/%2F/${username}`, {
          configure: `^${username}\\.`,
          write: `^${username}\\.`,
          read: '.*',
        });
        return { username, password };
      },
      canLogin: rabbitCanLogin,
      async adminCanLogin(p) {
        const res = await fetch(`http://${RABBITMQ.host}:${RABBITMQ.managementPort}/api/whoami`, {
          headers: { authorization: `Basic ${Buffer.from(`${admin.name}:${p}`).toString('base64')}` },
          signal: AbortSignal.timeout(5000),
        });
        return res.ok;
      },
      async weakAdmin() {
        const login = {
          username: `kt_fx_weak_${randomBytes(4).toString('hex')}`,
          password: randomBytes(18).toString('base64url'),
        };
        users.push(login.username);
        await rabbitAdmin('PUT', `/api/users/${login.username}`, {
          password: login.password,
          tags: 'management',
        });
        return { login, lacks: 'administrator tag' };
      },
      secrets: [admin.password],
      async stop() {
        for (const user of users) await rabbitAdmin('DELETE', `/api/users/${user}`).catch(() => {});
      },
    };
  },
};

/** A slapd of the fixture's own (test/support/slapd.ts), reached over LDAPS with its certificate verified. */
const ldap: TargetFixture = {
  name: 'LDAP (OpenLDAP)',
  skipReason: async () => slapdSkipReason(),
  async start() {
    const server = await startSlapd();
    return {
      connection: ldapConnectionBody(server),
      dualPassword: false,
      async createUser() {
        const username = `svc_${randomBytes(4).toString('hex')}`;
        const password = randomBytes(18).toString('base64url');
        await server.addAccount(username, password, ['payments-readers']);
        return { username, password };
      },
      canLogin: (u, p) => server.canBind(u, p),
      adminCanLogin: (p) => server.canBindDn(server.admin.dn, p),
      weakAdmin: async () => ({
        login: { username: server.reader.dn, password: server.reader.password },
        lacks: `write under ${LDAP_SERVICES}`,
      }),
      secrets: [server.admin.password, server.reader.password],
      stop: () => server.stop(),
    };
  },
};

export const TARGET_FIXTURES: TargetFixture[] = [redisAcl, webhook, mariadb, rabbitmq, ldap];

/**
 * PostgreSQL as a fixture, on the test run's password-checking cluster (test/support/postgres-cluster.ts), with an
 * admin role of its own (CREATEROLE, not the cluster's superuser). The SIGKILL and leak suites have PostgreSQL tests
 * of their own; the target contract runs it with the others.
 */
const postgres: TargetFixture = {
  name: 'PostgreSQL',
  skipReason: async () => undefined,
  async start() {
    const info = pgInfo();
    const admin = await createPgAdminRole();
    const made: string[] = [];
    return {
      connection: {
        type: 'postgres',
        host: info.host,
        port: info.port,
        database: info.database,
        admin: { username: admin.name, password: admin.password },
      },
      dualPassword: false,
      async createUser() {
        const role = await createAppRole(`kt_ct_${randomBytes(4).toString('hex')}`);
        const password = randomBytes(18).toString('base64url');
        await pgAdmin((c) =>
          c.query(`ALTER ROLE ${pg.escapeIdentifier(role.name)} PASSWORD ${pg.escapeLiteral(password)}`),
        );
        made.push(role.name, `${role.name}_clone`, role.group);
        return { username: role.name, password };
      },
      canLogin: (username, password) => pgCanLogin(username, password),
      adminCanLogin: (p) => pgCanLogin(admin.name, p),
      async weakAdmin() {
        const role = await createAppRole(`kt_weak_${randomBytes(4).toString('hex')}`);
        const password = randomBytes(18).toString('base64url');
        await pgAdmin((c) =>
          c.query(`ALTER ROLE ${pg.escapeIdentifier(role.name)} PASSWORD ${pg.escapeLiteral(password)}`),
        );
        made.push(role.name, role.group);
        return { login: { username: role.name, password }, lacks: 'CREATEROLE' };
      },
      secrets: [admin.password],
      async stop() {
        await pgAdmin(async (c) => {
          for (const role of [...made, admin.name])
            await c.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(role)}`);
        });
      },
    };
  },
};

/**
 * AWS IAM access keys, on the IAM/STS emulator (or a real endpoint with AWS_ENDPOINT_URL: test/support/aws-iam.ts).
 * New keys are refused for half a second, as IAM propagates them. Not among TARGET_FIXTURES: its credentials cannot be
 * imported (AWS makes the secrets), so its SIGKILL and leak tests are its own.
 */
const awsIam: TargetFixture = {
  name: 'AWS IAM',
  skipReason: async () => iamSkipReason(),
  async start() {
    const world = await startIamWorld({ propagationMs: 500 });
    return {
      connection: world.connection,
      dualPassword: true,
      async createUser() {
        const user = await world.createUser();
        return { username: user.username, password: user.secret, keyId: user.keyId };
      },
      canLogin: (username, password, keyId) =>
        keyId ? world.canLogin({ keyId, secret: password }, username) : Promise.resolve(false),
      adminCanLogin: (p) => world.canLogin({ keyId: world.connection.admin.username, secret: p }),
      weakAdmin: () => world.weakAdmin(),
      get secrets() {
        return world.secrets;
      },
      stop: () => world.stop(),
    };
  },
};

/** Every target the contract suite (test/targets/contract.test.ts) runs against. */
export const CONTRACT_FIXTURES: TargetFixture[] = [postgres, ...TARGET_FIXTURES, awsIam];

/** Registers a target's user as an imported credential (no rotation at registration); returns its id. */
export async function importTargetUser(
  kt: Keyturn,
  connection: string,
  user: { username: string; password: string },
  strategy: 'single-user' | 'alternating-users',
  idPrefix: string,
): Promise<string> {
  const id = `${idPrefix}-${user.username}`.replaceAll('_', '-');
  const created = await kt.api('POST', '/v1/credentials', {
    id,
    connection,
    username: user.username,
    strategy,
    schedule: { every: '30d' },
    import: true,
    currentPassword: user.password,
  });
  if (created.status !== 201) throw new Error(`importing ${id} failed: ${created.status} ${created.text}`);
  return id;
}
