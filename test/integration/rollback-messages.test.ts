// Finding 13 of issue 11 (messages), on a downstream that holds two passwords per user (Redis ACL): a rollback after
// a failed admin login must say what it did. The admin's password is changed behind Keyturn's back, so the set step
// cannot log in and nothing changes downstream; the rollback must not claim to have taken a pending password away
// (nor need the admin to do so), and the current password must be the user's only one.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  dropPrefix,
  type Keyturn,
  startKeyturn,
  type TestEnv,
  testEnv,
  waitForRotation,
} from '../support/harness.ts';
import { type RedisAclServer, startRedisAclServer } from '../support/redis-acl-server.ts';

let server: RedisAclServer;
let env: TestEnv;
let kt: Keyturn;

const ADMIN = 'kt-own-admin';
const ADMIN_PASSWORD = 'own-admin-password-0123456789abcdef';

beforeAll(async () => {
  server = await startRedisAclServer([`user ${ADMIN} on >${ADMIN_PASSWORD} ~* &* +@all`]);
  env = testEnv({ KEYTURN_ROTATION_ATTEMPTS: '1' });
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  const res = await kt.api('POST', '/v1/connections', {
    id: 'own-admin',
    type: 'redis',
    host: server.host,
    port: server.port,
    admin: { username: ADMIN, password: ADMIN_PASSWORD },
  });
  expect(res.status, res.text).toBe(201);
});
afterAll(async () => {
  await kt?.close();
  await server?.stop();
  if (env) await dropPrefix(env.prefix);
});

const passwordCount = async (user: string) => {
  const info = (await server.admin('ACL', 'GETUSER', user)) as unknown[];
  return (info[info.indexOf('passwords') + 1] as unknown[]).length;
};

describe('finding 13: rollback messages on a two-password downstream', () => {
  it('after a failed admin login, the rollback says nothing was changed downstream, and the current password is the only one', async () => {
    const name = 'app-rollback';
    const password = 'app-rollback-password-0123456789abcd';
    await server.admin('ACL', 'SETUSER', name, 'on', `>${password}`, '~cache:*', '-@all', '+get', '+ping');
    const created = await kt.api('POST', '/v1/credentials', {
      id: 'rollback-redis',
      connection: 'own-admin',
      username: name,
      strategy: 'single-user',
      schedule: { every: '30d' },
      import: true,
      currentPassword: password,
    });
    expect(created.status, created.text).toBe(201);
    // The admin's password changes behind Keyturn's back: the set step cannot log in.
    await server.admin('ACL', 'SETUSER', ADMIN, 'resetpass', '>changed-behind-keyturns-back-0123456789');

    const rotate = await kt.api('POST', '/v1/credentials/rollback-redis/rotate');
    expect(rotate.status, rotate.text).toBe(202);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('failed');
    expect(rotation.rollback.outcome).toBe('done');
    expect(rotation.rollback.note).toContain(
      'the current password still logs in, so nothing was changed downstream',
    );
    expect(rotation.rollback.note).not.toMatch(/put back|taken away/);
    expect(await server.canLogin(name, password)).toBe(true);
    expect(await passwordCount(name)).toBe(1);
  });
});
