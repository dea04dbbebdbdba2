// Issue 13, part 2: the TypeScript client (`keyturn/client`) against a real Keyturn and real databases. getSecret
// honours the cache hint and shares concurrent reads; watch follows rotations; a lease is renewed and a failed
// renewal reported; the pg and mysql2 pools keep a steady query load through rotations (alternating-users on the
// password-checking PostgreSQL, single-user on MariaDB) with no failed query, old pools closed and no connection of
// an old login left. The 50-rotation runs are test/slow/client-pools.test.ts.
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMysqlPool, createPgPool, followRedisAuth, KeyturnClient } from '../../src/client/index.ts';
import { followsCurrent, loadThroughRotations } from '../support/client-scenario.ts';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  pgAdmin,
  registerPgConnection,
  startKeyturn,
  testEnv,
  waitFor,
} from '../support/harness.ts';
import { assertNoSecrets } from '../support/leaks.ts';
import { asMysqlRoot, MYSQL_SERVER } from '../support/mysql.ts';
import { startRedisAclServer } from '../support/redis-acl-server.ts';

const ROTATIONS = Number(process.env.KEYTURN_TEST_CLIENT_ROTATIONS ?? 5);
const env = testEnv();
let kt: Keyturn;
let client: KeyturnClient;
let connection: string;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
  client = new KeyturnClient({ url: kt.url, token: env.adminToken });
});

afterAll(async () => {
  client?.close();
  await kt?.close();
  await dropPrefix(env.prefix);
});

const readsOf = async (id: string) =>
  (await kt.api('GET', `/v1/audit?credential=${id}&action=secret.read&limit=1000`)).body.events
    .length as number;

describe('KeyturnClient', () => {
  it('getSecret shares concurrent reads and serves the cache hint from memory', async () => {
    const { id, password } = await importCredential(kt, connection);
    const secrets = await Promise.all(Array.from({ length: 10 }, () => client.getSecret(id)));
    expect(new Set(secrets.map((s) => s.password))).toEqual(new Set([password]));
    expect(await readsOf(id)).toBe(1);
    await client.getSecret(id);
    expect(await readsOf(id)).toBe(1); // within max-age
    await client.getSecret(id, { fresh: true });
    expect(await readsOf(id)).toBe(2);
    await expect(client.getSecret('no-such-credential')).rejects.toThrow(
      'Keyturn has no credential "no-such-credential" (404)',
    );
    const wrong = new KeyturnClient({ url: kt.url, token: 'not-a-token-of-this-keyturn' });
    const refused = await wrong.getSecret(id).catch((e: Error) => e);
    expect(String(refused)).toContain('(401)');
    expect(String(refused)).not.toContain('not-a-token-of-this-keyturn');
    wrong.close();
  });

  it('watch hands over each new version once, and only versions that log in', async () => {
    const { id } = await importCredential(kt, connection, { strategy: 'alternating-users' });
    const seen: string[] = [];
    const logins: boolean[] = [];
    const watch = client.watch(id, async (s) => {
      seen.push(s.version);
      logins.push(await canLogin(s.username, s.password));
    });
    await waitFor('the first version', async () => logins.length === 1 || undefined);
    for (let i = 0; i < 3; i++) {
      const res = await kt.api('POST', `/v1/credentials/${id}/rotate`);
      await waitFor(
        'the rotation to reach the watcher',
        async () => logins.length === i + 2 || undefined,
        20_000,
      );
      expect(seen[i + 1]).toBe(res.body.rotationId);
    }
    watch.close();
    expect(new Set(seen).size).toBe(4);
    expect(logins).toEqual([true, true, true, true]);
  });

  it('lease renews its user before it expires, and reports a renewal that fails', async () => {
    const { id } = await importCredential(kt, connection, { idPrefix: 'lease' });
    const failures: Error[] = [];
    const handle = await client.lease(id, { ttl: '3s', onRenewFailed: (e) => failures.push(e) });
    const first = handle.lease.expiresAt;
    // Past the lease's first expiry (3 s), with a renewal seen: only the renewal keeps its user alive, which is what
    // is checked (PostgreSQL's VALID UNTIL runs on real time, so real time has to pass it).
    await waitFor(
      'a renewal, and the first expiry passed',
      async () =>
        (Date.parse(handle.lease.expiresAt) > Date.parse(first) && Date.now() > Date.parse(first) + 500) ||
        undefined,
      15_000,
      50,
    );
    expect(Date.parse(handle.lease.expiresAt)).toBeGreaterThan(Date.parse(first));
    expect(await canLogin(handle.lease.username, handle.lease.password)).toBe(true);
    // Revoked behind the client's back: its next renewal fails and is reported.
    expect((await kt.api('DELETE', `/v1/leases/${handle.lease.id}`)).status).toBeLessThan(300);
    await waitFor('the failed renewal to be reported', async () => failures.length > 0 || undefined, 10_000);
    expect(failures[0]?.message).toContain(`/v1/leases/${handle.lease.id}/renew`);
    expect(failures[0]?.message).not.toContain(handle.lease.password);
    handle.close();
  });
});

describe('secret hygiene of the client', () => {
  it('never puts the token or a password in an error, whatever fails', async () => {
    const { id, password } = await importCredential(kt, connection, { idPrefix: 'leak' });
    const texts: string[] = [];
    const collect = async (p: Promise<unknown>) => {
      const err = await p.then(
        () => undefined,
        (e: Error) => e,
      );
      if (err) texts.push(String(err), err.stack ?? '', JSON.stringify(err));
    };
    const badToken = `wrong-${randomBytes(16).toString('hex')}`;
    const wrong = new KeyturnClient({ url: kt.url, token: badToken });
    await collect(wrong.getSecret(id)); // 401
    await collect(client.getSecret('no-such-credential-here')); // 404
    const down = new KeyturnClient({ url: 'http://127.0.0.1:9', token: env.adminToken });
    await collect(down.getSecret(id)); // unreachable
    await collect(down.lease(id, { ttl: '1m' }));
    await collect(wrong.lease(id, { ttl: '1m' }));
    const handle = await client.lease(id, {
      ttl: '2s',
      onRenewFailed: (e) => texts.push(String(e), e.stack ?? ''),
    });
    await kt.api('DELETE', `/v1/leases/${handle.lease.id}`);
    await waitFor(
      'the failed renewal',
      async () => texts.some((t) => t.includes('/renew')) || undefined,
      10_000,
    );
    const errors: string[] = [];
    const watch = wrong.watch(
      id,
      () => {},
      (e) => errors.push(String(e), e.stack ?? ''),
    );
    await waitFor('the watch to report its refused read', async () => errors.length > 0 || undefined);
    watch.close();
    for (const c of [wrong, down]) c.close();
    handle.close();
    expect(texts.length).toBeGreaterThan(6);
    assertNoSecrets(
      [env.adminToken, badToken, password, handle.lease.password],
      [
        ['client errors', texts],
        ['watch errors', errors],
      ],
    );
  });
});

describe('pools that follow rotations', () => {
  it(`pg: alternating-users, ${ROTATIONS} rotations under load, no failed query, old pools closed`, async () => {
    const { id, role } = await importCredential(kt, connection, {
      strategy: 'alternating-users',
      idPrefix: 'pgpool',
      extra: { gracePeriod: '2s' },
    });
    const pool = await createPgPool(client, id, { max: 4 });
    const out = await loadThroughRotations(kt, pool, id, ROTATIONS);
    console.log(
      `[client] pg: ${ROTATIONS} rotations in ${out.ms} ms, ${out.queries} queries, ${out.failures.length} failed, ${out.closedPools} old pools closed`,
    );
    expect(out.failures).toEqual([]);
    expect(out.versions.size).toBeGreaterThan(ROTATIONS);
    expect(out.closedPools).toBeGreaterThanOrEqual(ROTATIONS);
    await followsCurrent(client, pool, id);
    await pool.end();
    // Every pool's connections are gone, old logins and the current one.
    const users = [role.name, `${role.name}_clone`];
    await waitFor('the pools connections to close', async () => {
      const { rows } = await pgAdmin((c) =>
        c.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = ANY($1)', [users]),
      );
      return rows[0].n === 0 || undefined;
    });
  });

  it(`mysql2: single-user, ${ROTATIONS} rotations under load, no failed query, old pools closed`, async () => {
    const ready = await asMysqlRoot((c) => c.query('SELECT 1')).catch(() => undefined);
    if (!ready) {
      console.log(`[skip] mysql2 pool: no MariaDB/MySQL at ${MYSQL_SERVER.host}:${MYSQL_SERVER.port}`);
      return;
    }
    const hex = randomBytes(4).toString('hex');
    const admin = { name: `kt_cadm_${hex}`, password: randomBytes(18).toString('base64url') };
    const app = { name: `kt_capp_${hex}`, password: randomBytes(18).toString('base64url') };
    await asMysqlRoot(async (c) => {
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [admin.name, '%', admin.password]);
      await c.query('GRANT ALL PRIVILEGES ON *.* TO ?@? WITH GRANT OPTION', [admin.name, '%']);
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [app.name, '%', app.password]);
    });
    try {
      const conn = `mysql-${hex}`;
      const made = await kt.api('POST', '/v1/connections', {
        id: conn,
        type: 'mysql',
        host: MYSQL_SERVER.host,
        port: MYSQL_SERVER.port,
        admin: { username: admin.name, password: admin.password },
        options: { accountHost: '%' },
      });
      expect(made.status, made.text).toBe(201);
      const id = `mypool-${hex}`;
      const reg = await kt.api('POST', '/v1/credentials', {
        id,
        connection: conn,
        username: app.name,
        strategy: 'single-user',
        schedule: { every: '30d' },
        import: true,
        currentPassword: app.password,
      });
      expect(reg.status, reg.text).toBe(201);
      const pool = await createMysqlPool(client, id, { connectionLimit: 4 });
      const out = await loadThroughRotations(kt, pool, id, ROTATIONS);
      console.log(
        `[client] mysql2: ${ROTATIONS} rotations in ${out.ms} ms, ${out.queries} queries, ${out.failures.length} failed, ${out.closedPools} old pools closed`,
      );
      expect(out.failures).toEqual([]);
      expect(out.closedPools).toBeGreaterThanOrEqual(ROTATIONS);
      await followsCurrent(client, pool, id);
      await pool.end();
      await waitFor('the pools connections to close', async () => {
        const [rows] = await asMysqlRoot((c) =>
          c.query('SELECT count(*) AS n FROM information_schema.PROCESSLIST WHERE USER = ?', [app.name]),
        );
        return Number((rows as Array<{ n: number }>)[0]?.n) === 0 || undefined;
      });
      await kt.api('DELETE', `/v1/credentials/${id}`);
      await kt.api('DELETE', `/v1/connections/${conn}`);
    } finally {
      await asMysqlRoot(async (c) => {
        await c.query('DROP USER IF EXISTS ?@?', [app.name, '%']);
        await c.query('DROP USER IF EXISTS ?@?', [admin.name, '%']);
      });
    }
  });

  it(`ioredis: alternating-users, ${ROTATIONS} rotations, re-AUTHed on each, no failed command`, async () => {
    const server = await startRedisAclServer();
    try {
      const conn = `acl-${randomBytes(3).toString('hex')}`;
      const made = await kt.api('POST', '/v1/connections', {
        id: conn,
        type: 'redis',
        host: server.host,
        port: server.port,
        admin: { username: server.adminUser, password: server.adminPassword },
      });
      expect(made.status, made.text).toBe(201);
      const name = `capp${randomBytes(3).toString('hex')}`;
      const password = `initial-password-${name}-0000000`;
      await server.admin(
        'ACL',
        'SETUSER',
        name,
        'on',
        `>${password}`,
        '~cache:*',
        '-@all',
        '+get',
        '+set',
        '+ping',
        '+acl|whoami',
      );
      const id = `redis-${name}`;
      const reg = await kt.api('POST', '/v1/credentials', {
        id,
        connection: conn,
        username: name,
        strategy: 'alternating-users',
        gracePeriod: '1s',
        schedule: { every: '30d' },
        import: true,
        currentPassword: password,
      });
      expect(reg.status, reg.text).toBe(201);
      const first = await client.getSecret(id);
      const redis = new Redis({
        host: server.host,
        port: server.port,
        username: first.username,
        password: first.password,
      });
      const follow = followRedisAuth(client, id, redis);
      let running = true;
      const failures: string[] = [];
      let commands = 0;
      const loop = (async () => {
        while (running) {
          try {
            await redis.set('cache:k', String(commands));
            await redis.get('cache:k');
            commands += 2;
          } catch (err) {
            failures.push((err as Error).message);
          }
        }
      })();
      for (let i = 0; i < ROTATIONS; i++) {
        const res = await kt.api('POST', `/v1/credentials/${id}/rotate`);
        const current = await waitFor('the rotation', async () => {
          const r = await kt.api('GET', `/v1/rotations/${res.body.rotationId}`);
          return r.body.status === 'succeeded' ? r.body : undefined;
        });
        expect(current.status).toBe('succeeded');
        const secret = await client.getSecret(id, { fresh: true });
        await waitFor(
          'the connection to be the new user',
          async () => (await redis.call('ACL', 'WHOAMI').catch(() => '')) === secret.username || undefined,
        );
        // Reconnects log in with the new version too.
        await redis.disconnect(true);
        await waitFor(
          'the reconnect',
          async () => (await redis.ping().catch(() => '')) === 'PONG' || undefined,
        );
      }
      running = false;
      await loop;
      follow.close();
      redis.disconnect();
      console.log(
        `[client] ioredis: ${ROTATIONS} rotations, ${commands} commands, ${failures.length} failed`,
      );
      expect(failures.filter((f) => !/Connection is closed|ECONNRESET/.test(f))).toEqual([]);
      expect(commands).toBeGreaterThan(ROTATIONS);
    } finally {
      await server.stop();
    }
  });
});
