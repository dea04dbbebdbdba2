import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canLogin,
  createPgAdminRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
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
    // The admin login failed before anything was sent: the rollback knows it without logging in downstream.
    expect(rotation.rollback.note).toContain(
      'nothing had been changed downstream; the pending version was dropped',
    );
    expect(rotation.rollback.note).not.toMatch(/put back|taken away/);
    expect(await server.canLogin(name, password)).toBe(true);
    expect(await passwordCount(name)).toBe(1);
  });
});

/** A CREATEROLE admin of Keyturn's own in the password-checking PostgreSQL, and a connection that uses it. */
async function ownPgAdmin() {
  const admin = await createPgAdminRole();
  const connection = await registerPgConnection(
    kt,
    `pg-${admin.name}`.replaceAll('_', '-'),
    undefined,
    admin,
  );
  return { connection, breakLogin: admin.breakLogin };
}

const rotateAndFail = async (id: string) => {
  const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
  expect(rotate.status, rotate.text).toBe(202);
  const rotation = await waitForRotation(kt, rotate.body.rotationId);
  expect(rotation.status).toBe('failed');
  expect(rotation.rollback.outcome).toBe('done');
  return rotation;
};

describe('finding 13: alternating-users rollback messages after a failed admin login', () => {
  it('in the grace period: nothing was changed downstream, and the previous user still logs in', async () => {
    const { connection, breakLogin } = await ownPgAdmin();
    const cred = await importCredential(kt, connection, {
      strategy: 'alternating-users',
      extra: { gracePeriod: '1h' },
    });
    const first = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    expect((await waitForRotation(kt, first.body.rotationId)).status).toBe('succeeded');
    const current = (await kt.api('GET', `/v1/credentials/${cred.id}/secret`)).body;
    await breakLogin();

    const rotation = await rotateAndFail(cred.id);
    // The admin login failed before anything was sent: the rollback knows it without logging in downstream.
    expect(rotation.rollback.note).toContain(
      'nothing had been changed downstream; the pending version was dropped',
    );
    expect(rotation.rollback.note).not.toMatch(/got its previous password back|unknown random password/);
    // Both users work as before: the current one, and the previous one through its grace period.
    expect(await canLogin(current.username, current.password)).toBe(true);
    expect(await canLogin(cred.role.name, cred.password)).toBe(true);
  });

  it('on the first rotation (no clone yet): nothing was changed downstream', async () => {
    const { connection, breakLogin } = await ownPgAdmin();
    const cred = await importCredential(kt, connection, { strategy: 'alternating-users' });
    await breakLogin();
    const rotation = await rotateAndFail(cred.id);
    expect(rotation.rollback.note).toMatch(/nothing (had been|was) changed downstream/);
    expect(rotation.rollback.note).not.toMatch(/got its previous password back|unknown random password/);
    expect(await canLogin(cred.role.name, cred.password)).toBe(true);
  });
});
