// Findings 2 and 5 of issue 11: the downstream user a credential rotates must be Keyturn's to rotate, and only once.
//   2. the connection's own admin registered as a credential (or made the clone of an alternating pair) had its
//      password changed by the rotation, and every later rotation on the connection failed;
//   5. two credentials on one downstream user set passwords the other did not know.
// Each (connection, user name) is claimed by one credential in the same Redis step that creates it; the clone of an
// alternating pair is claimed too, and the claims go with the credential.
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canLogin,
  createAppRole,
  createPgAdminRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  testKeys,
  testRedis,
} from '../support/harness.ts';

let env: TestEnv;
let kt: Keyturn;

beforeAll(async () => {
  env = testEnv();
  // API only: registrations queue their first rotation, and nothing runs it, so no password changes here.
  kt = await startKeyturn(env);
});
afterAll(async () => {
  await kt?.close();
  if (env) await dropPrefix(env.prefix);
});

const registerConnection = (admin: { name: string; password: string }) =>
  registerPgConnection(kt, undefined, undefined, admin);

const credential = (connection: string, username: string, extra: object = {}) => ({
  id: `c-${randomUUID().slice(0, 8)}`,
  connection,
  username,
  strategy: 'single-user',
  schedule: { every: '30d' },
  ...extra,
});

describe("finding 2: the connection's admin cannot be registered as a credential", () => {
  it('refuses the admin user with a 422 that points to the admin rotation, and its password keeps working', async () => {
    const admin = await createPgAdminRole();
    const connection = await registerConnection(admin);
    const res = await kt.api('POST', '/v1/credentials', credential(connection, admin.name));
    expect(res.status, res.text).toBe(422);
    expect(res.body.error.message).toContain(
      `"${admin.name}" is the admin user of connection "${connection}"`,
    );
    expect(res.body.error.message).toContain(`PATCH /v1/connections/${connection}`);
    expect((await kt.api('GET', '/v1/credentials')).body.credentials).toEqual([]);
    expect(await canLogin(admin.name, admin.password)).toBe(true);
  });

  it('refuses alternating-users whose clone would be the admin user', async () => {
    const base = `app_${randomBytes(4).toString('hex')}`;
    const admin = await createPgAdminRole(`${base}_clone`);
    const connection = await registerConnection(admin);
    const res = await kt.api(
      'POST',
      '/v1/credentials',
      credential(connection, base, { strategy: 'alternating-users' }),
    );
    expect(res.status, res.text).toBe(422);
    expect(res.body.error.message).toMatch(/alternating-users would make ".*_clone", the admin user/);
    // single-user on the same name does not touch the clone: accepted.
    const single = await kt.api('POST', '/v1/credentials', credential(connection, base));
    expect(single.status, single.text).toBe(201);
  });

  it("refuses to make a credential's user the connection's admin", async () => {
    const admin = await createPgAdminRole();
    const connection = await registerConnection(admin);
    const app = await createAppRole();
    const cred = credential(connection, app.name);
    expect((await kt.api('POST', '/v1/credentials', cred)).status).toBe(201);
    const res = await kt.api('PATCH', `/v1/connections/${connection}`, { admin: { username: app.name } });
    expect(res.status, res.text).toBe(422);
    expect(res.body.error.message).toContain(`credential "${cred.id}"`);
  });
});

describe('finding 5: one credential per downstream user', () => {
  let connection: string;
  beforeAll(async () => {
    connection = await registerPgConnection(kt);
  });

  it('refuses a second credential on the same user with a 409 naming the first, until the first is deleted', async () => {
    // Imported, so that no first rotation is queued and the delete below goes through at once.
    const first = await importCredential(kt, connection);
    const app = first.role;
    const second = credential(connection, app.name);
    const res = await kt.api('POST', '/v1/credentials', second);
    expect(res.status, res.text).toBe(409);
    expect(res.body.error.message).toContain(`already rotated by credential "${first.id}"`);
    // The same user on another connection is another user (another server, or another cluster's role).
    const elsewhere = await registerPgConnection(kt);
    expect((await kt.api('POST', '/v1/credentials', credential(elsewhere, app.name))).status).toBe(201);

    expect((await kt.api('DELETE', `/v1/credentials/${first.id}`)).status).toBe(204);
    expect((await kt.api('POST', '/v1/credentials', second)).status).toBe(201);
  });

  it("refuses a user name that collides with another credential's clone, both ways", async () => {
    const base = `app_${randomBytes(4).toString('hex')}`;
    const alternating = credential(connection, base, { strategy: 'alternating-users' });
    expect((await kt.api('POST', '/v1/credentials', alternating)).status).toBe(201);
    const onClone = await kt.api('POST', '/v1/credentials', credential(connection, `${base}_clone`));
    expect(onClone.status, onClone.text).toBe(409);
    expect(onClone.body.error.message).toContain(`"${base}_clone"`);
    expect(onClone.body.error.message).toContain(`"${alternating.id}"`);

    const other = `app_${randomBytes(4).toString('hex')}`;
    const single = credential(connection, `${other}_clone`);
    expect((await kt.api('POST', '/v1/credentials', single)).status).toBe(201);
    const pair = await kt.api(
      'POST',
      '/v1/credentials',
      credential(connection, other, { strategy: 'alternating-users' }),
    );
    expect(pair.status, pair.text).toBe(409);
    expect(pair.body.error.message).toContain(`"${single.id}"`);
  });

  it('lets exactly one of 20 concurrent registrations on one user through', async () => {
    const app = await createAppRole();
    const bodies = Array.from({ length: 20 }, () => credential(connection, app.name));
    const results = await Promise.all(bodies.map((b) => kt.api('POST', '/v1/credentials', b)));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 201)).toHaveLength(1);
    expect(statuses.filter((s) => s === 409)).toHaveLength(19);
    const winner = bodies[results.findIndex((r) => r.status === 201)];
    const users = (await kt.api('GET', '/v1/credentials')).body.credentials.filter(
      (c: { username: string }) => c.username === app.name,
    );
    expect(users.map((c: { id: string }) => c.id)).toEqual([winner?.id]);
  });

  it('claims the users of credentials registered before claims existed, at start', async () => {
    const app = await createAppRole();
    const first = credential(connection, app.name);
    expect((await kt.api('POST', '/v1/credentials', first)).status).toBe(201);
    // As an installation upgraded from a version without claims: no claim hash, no migration marker.
    const keys = testKeys(env.prefix);
    const redis = testRedis();
    await redis.del(keys.connectionUsernames(connection));
    await redis.del(keys.usernameClaimsMigrated());
    redis.disconnect();
    await kt.close();
    kt = await startKeyturn(env);
    const res = await kt.api('POST', '/v1/credentials', credential(connection, app.name));
    expect(res.status, res.text).toBe(409);
    expect(res.body.error.message).toContain(`"${first.id}"`);
  });
});
