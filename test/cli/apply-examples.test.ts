// config/examples/ is a complete, working set (issue 18): applied with the real CLI against the test PostgreSQL and a
// private Redis with ACL users, every credential ends active with a password that logs in, and a second apply
// changes nothing. The copy applied differs from the examples only in where things are (host, port, database), the
// admin's name and the PostgreSQL user names (the test cluster is shared by every test, so its users are unique
// per run); the test checks that nothing else was touched.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { type CliTarget, runCli } from '../support/cli.ts';
import {
  canLogin,
  createPgAdminRole,
  dropPrefix,
  type Keyturn,
  pgAdmin,
  pgInfo,
  startKeyturn,
  testEnv,
} from '../support/harness.ts';
import { type RedisAclServer, startRedisAclServer } from '../support/redis-acl-server.ts';

const EXAMPLES = fileURLToPath(new URL('../../config/examples/', import.meta.url));
const env = testEnv();
let kt: Keyturn;
let target: CliTarget;
let redis: RedisAclServer;
let dir: string;
let pgAdminLogin: { name: string; password: string };
const suffix = randomBytes(3).toString('hex');
const renamed = (user: string) => `${user}_${suffix}`;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  target = { url: kt.url, token: env.adminToken };
  redis = await startRedisAclServer();
  pgAdminLogin = await createPgAdminRole();
  // The users the examples rotate exist downstream, with passwords nobody knows.
  for (const user of ['payments_api', 'payments_ledger']) {
    await pgAdmin((c) =>
      c.query(
        `CREATE ROLE ${pg.escapeIdentifier(renamed(user))} LOGIN PASSWORD ${pg.escapeLiteral(randomBytes(16).toString('hex'))}`,
      ),
    );
  }
  await redis.admin(
    'ACL',
    'SETUSER',
    'sessions_app',
    'on',
    `>${randomBytes(16).toString('hex')}`,
    '~session:*',
    '-@all',
    '+get',
    '+set',
    '+ping',
  );
  dir = mkdtempSync(join(tmpdir(), 'kt-examples-'));
  const info = pgInfo();
  for (const name of readdirSync(EXAMPLES).filter((n) => n.endsWith('.yaml'))) {
    const docs = parseAllDocuments(readFileSync(join(EXAMPLES, name), 'utf8'));
    const out: string[] = [];
    for (const doc of docs) {
      if (!('contents' in doc) || doc.errors.length > 0) throw new Error(`${name} does not parse`);
      const before = Object.keys(doc.toJS() as object).sort();
      if (doc.get('kind') === 'Connection' && doc.get('type') === 'postgres') {
        doc.set('host', info.host);
        doc.set('port', info.port);
        doc.set('database', info.database);
        doc.setIn(['admin', 'username'], pgAdminLogin.name);
      } else if (doc.get('kind') === 'Connection' && doc.get('type') === 'redis') {
        doc.set('host', redis.host);
        doc.set('port', redis.port);
        doc.setIn(['admin', 'username'], redis.adminUser);
      } else if (doc.get('kind') === 'Credential' && String(doc.get('connection')) === 'payments-pg') {
        doc.set('username', renamed(String(doc.get('username'))));
      }
      expect(Object.keys(doc.toJS() as object).sort(), `${name}: only values are adjusted`).toEqual(before);
      out.push(doc.toString());
    }
    // Every document after the first prints its own --- marker.
    writeFileSync(join(dir, name), out.join(''));
  }
});
afterAll(async () => {
  await kt?.close();
  await redis?.stop();
  await dropPrefix(env.prefix);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('config/examples', () => {
  const secrets = () => ({
    PAYMENTS_PG_ADMIN_PASSWORD: pgAdminLogin.password,
    SESSIONS_REDIS_ADMIN_PASSWORD: redis.adminPassword,
  });

  it('hold no secret: every admin password is a reference to the environment', () => {
    for (const name of readdirSync(EXAMPLES).filter((n) => n.endsWith('.yaml'))) {
      for (const doc of parseAllDocuments(readFileSync(join(EXAMPLES, name), 'utf8'))) {
        const value = doc.toJS() as { kind: string; admin?: { password: unknown } };
        if (value.kind === 'Connection')
          expect(value.admin?.password).toMatchObject({ fromEnv: expect.any(String) });
      }
    }
  });

  it('apply against the test cluster: two connections, three credentials, each rotated and logging in', async () => {
    const run = await runCli(target, ['apply', '-f', dir], { env: secrets() });
    expect(run.code, run.stderr + run.stdout).toBe(0);
    expect(run.stdout).toContain('Apply complete: 5 created, 0 changed, 0 deleted.');
    expect(run.stderr).toMatch(/first rotations: 3 succeeded/);

    const read = async (id: string) => {
      const cred = await kt.api('GET', `/v1/credentials/${id}`);
      expect(cred.body.status, id).toBe('active');
      return (await kt.api('GET', `/v1/credentials/${id}/secret`)).body as {
        username: string;
        password: string;
      };
    };
    const api = await read('payments-api');
    expect(api.username).toBe(renamed('payments_api'));
    expect(await canLogin(api.username, api.password)).toBe(true);
    const ledger = await read('payments-ledger');
    expect([renamed('payments_ledger'), `${renamed('payments_ledger')}_clone`]).toContain(ledger.username);
    expect(await canLogin(ledger.username, ledger.password)).toBe(true);
    expect((await kt.api('GET', '/v1/credentials/payments-ledger')).body).toMatchObject({
      strategy: 'alternating-users',
      schedule: { cron: '0 3 * * 1', timezone: 'Europe/London' },
      gracePeriod: '24h',
    });
    const sessions = await read('sessions-app');
    expect(sessions.username).toBe('sessions_app');
    expect(await redis.canLogin('sessions_app', sessions.password)).toBe(true);
  });

  it('apply again: no changes', async () => {
    const run = await runCli(target, ['apply', '-f', dir], { env: secrets() });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain('No changes: 5 object(s) match the files.');
  });
});
