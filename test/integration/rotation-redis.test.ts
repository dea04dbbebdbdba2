// Redis ACL users on a private redis-server that keeps them in an ACL file: single-user overlaps the old and the
// new password (both work, the old one until the grace period ends), permissions stay exactly as they were,
// alternating-users clones a user with the same rules, ACL SAVE keeps the file in step, and a failed rotation
// leaves no extra password behind.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { permissionRules, splitRules } from '../../src/targets/redis/redis-target.ts';
import {
  dropPrefix,
  type Keyturn,
  spawnWorker,
  startKeyturn,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { type RedisAclServer, startRedisAclServer } from '../support/redis-acl-server.ts';

let server: RedisAclServer;
const env = testEnv();
let kt: Keyturn;
let connection: string;
let counter = 0;

beforeAll(async () => {
  server = await startRedisAclServer();
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = 'acl-redis';
  const res = await kt.api('POST', '/v1/connections', {
    id: connection,
    type: 'redis',
    host: server.host,
    port: server.port,
    admin: { username: server.adminUser, password: server.adminPassword },
  });
  expect(res.status).toBe(201);
});
afterAll(async () => {
  await kt?.close();
  await server?.stop();
  await dropPrefix(env.prefix);
});

/** A user with narrow permissions and a known password, imported into Keyturn. */
async function appUser(strategy: 'single-user' | 'alternating-users', extra: object = {}) {
  const name = `app${++counter}`;
  const password = `initial-password-${name}-0000000`;
  await server.admin(
    'ACL',
    'SETUSER',
    name,
    'on',
    `>${password}`,
    '~cache:*',
    '&events:*',
    '-@all',
    '+get',
    '+set',
    '+ping',
  );
  const id = `redis-${name}`;
  const res = await kt.api('POST', '/v1/credentials', {
    id,
    connection,
    username: name,
    strategy,
    schedule: { every: '30d' },
    import: true,
    currentPassword: password,
    ...extra,
  });
  expect(res.status).toBe(201);
  return { id, name, password };
}

const rulesOf = async (user: string) => {
  const list = (await server.admin('ACL', 'LIST')) as string[];
  const line = list.find((l) => splitRules(l)[1] === user);
  return line ? permissionRules(line) : undefined;
};
const passwordCount = async (user: string) => {
  const info = (await server.admin('ACL', 'GETUSER', user)) as unknown[];
  const i = info.indexOf('passwords');
  return (info[i + 1] as unknown[]).length;
};
const rotate = async (id: string) => {
  const res = await kt.api('POST', `/v1/credentials/${id}/rotate`);
  const rotation = await waitForRotation(kt, res.body.rotationId);
  expect(rotation.status).toBe('succeeded');
  return (await kt.api('GET', `/v1/credentials/${id}/secret`)).body as { username: string; password: string };
};

describe('Redis ACL target', () => {
  it('single-user overlaps: old and new both log in until the grace period ends; permissions unchanged', async () => {
    const { id, name, password } = await appUser('single-user', { gracePeriod: '3s' });
    const before = await rulesOf(name);
    const secret = await rotate(id);
    expect(secret.username).toBe(name);
    expect(await server.canLogin(name, secret.password)).toBe(true);
    // The overlap: no window for clients still holding the old password.
    expect(await server.canLogin(name, password)).toBe(true);
    expect(await passwordCount(name)).toBe(2);
    await waitFor(
      'the old password to be removed',
      async () => !(await server.canLogin(name, password)),
      20_000,
      250,
    );
    expect(await server.canLogin(name, secret.password)).toBe(true);
    expect(await passwordCount(name)).toBe(1);
    expect(await rulesOf(name)).toEqual(before);
    // ACL SAVE kept the file in step: the user's line there has exactly one password hash, and the same rules.
    const fileLine = readFileSync(server.aclFile, 'utf8')
      .split('\n')
      .find((l) => splitRules(l)[1] === name);
    expect(fileLine && splitRules(fileLine).filter((r) => r.startsWith('#'))).toHaveLength(1);
    expect(fileLine && permissionRules(fileLine)).toEqual(before);
  });

  it('single-user without a grace period keeps one old password until the next rotation', async () => {
    const { id, name, password } = await appUser('single-user');
    const first = await rotate(id);
    expect(await server.canLogin(name, password)).toBe(true);
    const second = await rotate(id);
    expect(await server.canLogin(name, second.password)).toBe(true);
    expect(await server.canLogin(name, first.password)).toBe(true);
    expect(await server.canLogin(name, password)).toBe(false);
    expect(await passwordCount(name)).toBe(2);
  });

  it('alternating-users clones the user with exactly the same rules, then alternates', async () => {
    const { id, name, password } = await appUser('alternating-users', { gracePeriod: '2s' });
    const first = await rotate(id);
    expect(first.username).toBe(`${name}_clone`);
    expect(await rulesOf(`${name}_clone`)).toEqual(await rulesOf(name));
    expect(await server.canLogin(first.username, first.password)).toBe(true);
    const second = await rotate(id);
    expect(second.username).toBe(name);
    expect(await server.canLogin(name, second.password)).toBe(true);
    expect(await server.canLogin(first.username, first.password)).toBe(true);
    await waitFor(
      'the previous user to be revoked',
      async () => !(await server.canLogin(first.username, first.password)),
      20_000,
      250,
    );
    expect(await server.canLogin(name, password)).toBe(false);
  });

  it('a failed rotation takes its new password away again: only the current one remains', async () => {
    const { id, name, password } = await appUser('single-user');
    // From here on a worker process whose test step always fails does the work (this is the last test that rotates).
    await kt.runtime.workers?.close();
    const worker = spawnWorker(env, { KEYTURN_FAILPOINTS: 'before-test=throw' });
    try {
      const res = await kt.api('POST', `/v1/credentials/${id}/rotate`);
      const rotation = await waitForRotation(kt, res.body.rotationId);
      expect(rotation.status).toBe('failed');
      expect(rotation.setStarted).toBe(true);
      expect(rotation.rollback.note).toContain('the pending password was taken away downstream');
      expect(await passwordCount(name)).toBe(1);
      expect(await server.canLogin(name, password)).toBe(true);
    } finally {
      await worker.kill();
    }
  });

  it('refuses a grace period for single-user on PostgreSQL, which holds one password per user', async () => {
    const { pgInfo } = await import('../support/harness.ts');
    const info = pgInfo();
    await kt.api('POST', '/v1/connections', {
      id: 'pg-for-grace',
      type: 'postgres',
      host: info.host,
      port: info.port,
      admin: { username: info.adminUser, password: info.adminPassword },
    });
    const res = await kt.api('POST', '/v1/credentials', {
      id: 'pg-grace',
      connection: 'pg-for-grace',
      username: 'nobody',
      strategy: 'single-user',
      schedule: { every: '30d' },
      gracePeriod: '1h',
    });
    expect(res.status).toBe(422);
    expect(res.body.error.message).toMatch(/gracePeriod applies to .*single-user.* two passwords/);
  });
});
