// Finding 1 of issue 11: an operator pointed a connection at an impostor server on loopback that asked for a
// cleartext password, and the next rotation handed it the admin password and the application's password.
//
// Fixed on two sides, each tested here:
//   - moving a connection (host, port, database, tls, options) is an admin action: an operator gets 403, and the
//     audit event carries the old and new values, for the denied attempt and for the admin's change;
//   - the PostgreSQL driver refuses a server asking for cleartext or md5 before it sends anything, unless the
//     connection allows that method (options.requireAuth, after libpq's require_auth).
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Connection } from '../../src/registry/types.ts';
import { AuthMethodRefusedError, postgresTarget } from '../../src/targets/postgres/postgres-target.ts';
import { type FakeAuth, type FakePostgres, startFakePostgres } from '../support/fake-postgres.ts';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  pgInfo,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  tokensFile,
  waitForRotation,
} from '../support/harness.ts';

const ADMIN_PASSWORD = `admin-${randomBytes(12).toString('hex')}`;
const APP_PASSWORD = `app-${randomBytes(12).toString('hex')}`;

function fakeConnection(port: number, options?: Connection['options']): Connection {
  return {
    id: 'impostor',
    type: 'postgres',
    host: '127.0.0.1',
    port,
    database: 'postgres',
    admin: { username: 'keyturn_admin' },
    adminStore: { type: 'local' },
    labels: {},
    ...(options ? { options } : {}),
    createdAt: new Date().toISOString(),
    updatedAt: new Date().toISOString(),
  };
}

describe('finding 1: the PostgreSQL driver sends no password to a server asking for cleartext or md5', () => {
  let fake: FakePostgres | undefined;
  afterAll(async () => {
    await fake?.close();
  });

  for (const auth of ['password', 'md5'] as FakeAuth[]) {
    it(`refuses ${auth} authentication by default, before sending anything (admin login and a user's login)`, async () => {
      await fake?.close();
      fake = await startFakePostgres({ auth });
      const session = await postgresTarget.open(
        fakeConnection(fake.port),
        { username: 'keyturn_admin', password: ADMIN_PASSWORD },
        { timeoutMs: 3000 },
      );
      const login = session.authenticate({ username: 'app', password: APP_PASSWORD });
      await expect(login).rejects.toBeInstanceOf(AuthMethodRefusedError);
      await expect(login).rejects.toThrow(/no password was sent/);
      await expect(session.userExists('app')).rejects.toBeInstanceOf(AuthMethodRefusedError);
      expect(fake.asked).toBe(2);
      expect(fake.passwordsReceived).toEqual([]);
    });
  }

  it('refuses a server that asks for no password at all (trust) before sending any statement, unless allowed', async () => {
    await fake?.close();
    fake = await startFakePostgres({ auth: 'none' });
    const session = await postgresTarget.open(
      fakeConnection(fake.port),
      { username: 'keyturn_admin', password: ADMIN_PASSWORD },
      { timeoutMs: 3000 },
    );
    const set = session.updatePassword('app', APP_PASSWORD);
    await expect(set).rejects.toBeInstanceOf(AuthMethodRefusedError);
    await expect(set).rejects.toThrow(/asked for no password at all/);
    expect(fake.statementsReceived).toEqual([]);
    // Allowed by name ("none", as libpq's require_auth), the statement goes: what the default prevents.
    const trusting = await postgresTarget.open(
      fakeConnection(fake.port, { requireAuth: 'scram-sha-256,none' }),
      { username: 'keyturn_admin', password: ADMIN_PASSWORD },
      { timeoutMs: 3000 },
    );
    await expect(trusting.userExists('app')).rejects.toThrow();
    expect(fake.statementsReceived.length).toBeGreaterThan(0);
  });

  it('sends the password only where the connection allows the method (options.requireAuth)', async () => {
    await fake?.close();
    fake = await startFakePostgres({ auth: 'password' });
    const session = await postgresTarget.open(
      fakeConnection(fake.port, { requireAuth: 'scram-sha-256,password' }),
      { username: 'keyturn_admin', password: ADMIN_PASSWORD },
      { timeoutMs: 3000 },
    );
    // The opt-in is real: the impostor now receives the password, which is what the default prevents.
    expect(await session.authenticate({ username: 'app', password: APP_PASSWORD })).toMatchObject({
      ok: false,
    });
    expect(fake.passwordsReceived).toEqual([APP_PASSWORD]);
  });

  it('checks options.requireAuth', () => {
    const validate = postgresTarget.validateOptions;
    expect(validate?.({ requireAuth: 'scram-sha-256,md5' })).toEqual([]);
    expect(validate?.({ requireAuth: 'scram-sha-256,none' })).toEqual([]);
    expect(validate?.({ requireAuth: 'scram-sha-256,trust' })?.join()).toMatch(/requireAuth.*"trust"/);
    expect(validate?.({ requireAuth: '' })?.join()).toMatch(/requireAuth/);
    expect(validate?.({ sslmode: 'disable' })?.join()).toMatch(/"sslmode" is not an option/);
  });
});

describe('finding 1: an operator cannot repoint a connection', () => {
  let tokens: Awaited<ReturnType<typeof tokensFile>>;
  let env: TestEnv;
  let kt: Keyturn;
  let fake: FakePostgres;
  const asOperator = { authorization: '' };

  beforeAll(async () => {
    tokens = await tokensFile({ ops: 'roles: [operator]' });
    asOperator.authorization = `Bearer ${tokens.tokens.ops}`;
    env = testEnv({ KEYTURN_TOKENS_FILE: tokens.path, KEYTURN_ROTATION_ATTEMPTS: '1' });
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    fake = await startFakePostgres({ auth: 'password' });
  });
  afterAll(async () => {
    await kt?.close();
    await fake?.close();
    if (env) await dropPrefix(env.prefix);
    await tokens?.remove();
  });

  async function auditOf(connection: string, outcome: string) {
    const res = await kt.api('GET', `/v1/audit?action=connection.updated&limit=100`);
    expect(res.status).toBe(200);
    return (
      res.body.events as {
        connection?: string;
        outcome: string;
        actor: string;
        details: Record<string, unknown>;
      }[]
    ).filter((e) => e.connection === connection && e.outcome === outcome);
  }

  it('answers 403 to an operator changing host, port, database, tls or options, and audits old and new values', async () => {
    const connection = await registerPgConnection(kt);
    const before = (await kt.api('GET', `/v1/connections/${connection}`)).body;
    const attempts: [string, object][] = [
      ['port', { port: fake.port }],
      ['host', { host: '127.0.0.2' }],
      ['database', { database: 'other' }],
      ['tls', { tls: { mode: 'require' } }],
      ['options', { options: { requireAuth: 'password' } }],
      // Sending the admin password again does not make it an operator's change: the credentials' passwords follow.
      ['port', { port: fake.port, admin: { password: pgInfo().adminPassword } }],
    ];
    for (const [field, body] of attempts) {
      const res = await kt.api('PATCH', `/v1/connections/${connection}`, body, asOperator);
      expect(res.status, `${field}: ${res.text}`).toBe(403);
      expect(res.body.error.code).toBe('forbidden');
      expect(res.body.error.message).toContain(field);
      expect(res.body.error.message).toMatch(/admin role/);
    }
    expect((await kt.api('GET', `/v1/connections/${connection}`)).body).toEqual(before);
    const denied = await auditOf(connection, 'denied');
    expect(denied).toHaveLength(attempts.length);
    expect(denied[0]).toMatchObject({
      actor: 'ops',
      details: { 'port.from': String(pgInfo().port), 'port.to': String(fake.port) },
    });
    expect(JSON.stringify(denied)).not.toContain(pgInfo().adminPassword);

    // Labels do not move the connection: an operator may change them, and the audit shows both values.
    const labelled = await kt.api(
      'PATCH',
      `/v1/connections/${connection}`,
      { labels: { team: 'x' } },
      asOperator,
    );
    expect(labelled.status).toBe(200);
    const [ok] = await auditOf(connection, 'success');
    expect(ok).toMatchObject({ actor: 'ops', details: { 'labels.from': '{}', 'labels.to': '{"team":"x"}' } });
  });

  it('lets an admin repoint, audits old and new values, and the impostor still receives no password', async () => {
    const connection = await registerPgConnection(kt);
    const cred = await importCredential(kt, connection);
    // verify (the default) logs in where the connection would point: the impostor asks for a cleartext password
    // and gets none, and the change is refused, naming why.
    const verified = await kt.api('PATCH', `/v1/connections/${connection}`, { port: fake.port });
    expect(verified.status, verified.text).toBe(422);
    expect(verified.body.error.message).toMatch(/verify: .*cleartext password authentication/);
    expect(fake.passwordsReceived).toEqual([]);
    const moved = await kt.api('PATCH', `/v1/connections/${connection}`, { port: fake.port, verify: false });
    expect(moved.status, moved.text).toBe(200);
    const [event] = await auditOf(connection, 'success');
    expect(event?.details).toMatchObject({
      'port.from': String(pgInfo().port),
      'port.to': String(fake.port),
    });

    const rotate = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    expect(rotate.status, rotate.text).toBe(202);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('failed');
    expect(rotation.error.message).toMatch(/cleartext password authentication.*no password was sent/);
    expect(fake.passwordsReceived).toEqual([]);
    expect(fake.asked).toBeGreaterThan(0);

    // Pointed back, nothing was lost: the application's password still logs in.
    const back = await kt.api('PATCH', `/v1/connections/${connection}`, { port: pgInfo().port });
    expect(back.status).toBe(200);
    expect(await canLogin(cred.role.name, cred.password)).toBe(true);
  });
});
