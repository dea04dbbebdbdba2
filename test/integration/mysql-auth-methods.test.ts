// Finding 1 of issue 11, MySQL side: a connection pointed at an impostor server (an admin's mistake, DNS, a
// compromised host) must not hand it the admin password or a credential's password. mysql2 answers whatever the
// server asks: sha256_password and caching_sha2_password's full authentication send the password encrypted to an RSA
// key the server itself sends (over plain TCP), or in clear inside TLS whatever the certificate.
//
// The MySQL target refuses, before answering, the methods that send the password itself unless the connection lists
// them in options.requireAuth (caching_sha2_password's full authentication counts as sha256_password, and is also
// allowed in TLS verify-full, where the server is authenticated). Checked against a fake server
// (test/support/fake-mysql.ts) that records every byte and decrypts what it can: the opt-in tests show that it does
// capture the password when the client sends it.
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { Connection } from '../../src/registry/types.ts';
import { AuthMethodRefusedError, mysqlTarget } from '../../src/targets/mysql/mysql-target.ts';
import {
  type FakeMysql,
  type FakeMysqlAsk,
  type FakeMysqlOptions,
  selfSignedCertificate,
  startFakeMysql,
} from '../support/fake-mysql.ts';

const ADMIN = { username: 'keyturn_admin', password: `admin-${randomBytes(12).toString('hex')}` };
const APP = { username: 'app', password: `app-${randomBytes(12).toString('hex')}` };
const ASKS: FakeMysqlAsk[] = ['mysql_clear_password', 'sha256_password', 'caching_sha2_password'];

function fakeConnection(
  port: number,
  extra: { options?: Connection['options']; tls?: Connection['tls'] } = {},
): Connection {
  return {
    id: 'impostor',
    type: 'mysql',
    host: '127.0.0.1',
    port,
    database: 'app',
    admin: { username: ADMIN.username },
    adminStore: { type: 'local' },
    labels: {},
    ...extra,
    createdAt: new Date().toISOString(),
    updatedAt: new Date().toISOString(),
  };
}

let fakes: FakeMysql[] = [];
async function fake(options: FakeMysqlOptions): Promise<FakeMysql> {
  const f = await startFakeMysql(options);
  fakes.push(f);
  return f;
}
afterEach(async () => {
  await Promise.all(fakes.map((f) => f.close()));
  fakes = [];
});

/** Nothing the fake received holds a password, and the client neither asked for a key nor answered the ask. */
function expectNothingSent(f: FakeMysql): void {
  expect(f.passwordsReceived).toEqual([]);
  expect(f.keyRequests).toBe(0);
  expect(f.answersToAsk).toEqual([]);
  const bytes = f.received();
  for (const secret of [ADMIN.password, APP.password]) {
    expect(bytes.includes(Buffer.from(secret))).toBe(false);
  }
}

/** How a promise settled: its value or its error (the leak is checked before what the driver said). */
const settled = <T>(p: Promise<T>): Promise<T | unknown> =>
  p.then(
    (v) => v,
    (e: unknown) => e,
  );

/** The session as the admin, on a fake that lets the admin in and asks `app` for `ask`. */
async function sessionOn(f: FakeMysql, extra: Parameters<typeof fakeConnection>[1] = {}) {
  return mysqlTarget.open(fakeConnection(f.port, extra), ADMIN, { timeoutMs: 3000 });
}

const certificate = selfSignedCertificate();
const tlsMissing = 'missing' in certificate ? certificate.missing : undefined;
if (tlsMissing) console.warn(`skipping the MySQL TLS impostor tests: ${tlsMissing}`);

describe('finding 1: the MySQL driver sends no password to a server asking for cleartext or sha256/caching_sha2 full authentication', () => {
  for (const ask of ASKS) {
    it(`refuses ${ask}${ask === 'caching_sha2_password' ? "'s full authentication" : ''} by default over plain TCP, for the admin's login and a user's`, async () => {
      const all = await fake({ ask, greeting: 'caching_sha2_password' });
      const opening = await settled(mysqlTarget.open(fakeConnection(all.port), ADMIN, { timeoutMs: 3000 }));
      expect(all.asked).toBeGreaterThan(0);
      expectNothingSent(all);
      expect(opening).toBeInstanceOf(AuthMethodRefusedError);
      expect(opening).toMatchObject({
        code: 'auth-method-refused',
        message: expect.stringMatching(/no password was sent/),
      });

      const users = await fake({ ask, letIn: [ADMIN.username] });
      const session = await sessionOn(users);
      const login = await settled(session.authenticate(APP));
      expect(users.asked).toBe(1);
      expectNothingSent(users);
      expect(login).toBeInstanceOf(AuthMethodRefusedError);
      expect((login as Error).message).toMatch(
        ask === 'caching_sha2_password'
          ? /caching_sha2_password full authentication.*so no password was sent.*verify-full.*"sha256_password"/
          : new RegExp(`${ask} authentication.*so no password was sent.*requireAuth to include "${ask}"`),
      );
      expect((login as Error).message).not.toContain(APP.password);
    });
  }

  it('sends the password only where the connection lists the method (options.requireAuth), and the fake sees it', async () => {
    // The opt-in is real: the impostor then captures the password, which is what the default prevents.
    for (const [ask, requireAuth] of [
      ['mysql_clear_password', 'mysql_native_password,mysql_clear_password'],
      ['sha256_password', 'mysql_native_password,sha256_password'],
      ['caching_sha2_password', 'mysql_native_password,caching_sha2_password,sha256_password'],
    ] as const) {
      const f = await fake({ ask, letIn: [ADMIN.username] });
      const session = await sessionOn(f, { options: { requireAuth } });
      expect(await session.authenticate(APP), ask).toMatchObject({ ok: false, reason: 'rejected' });
      expect(f.passwordsReceived, ask).toEqual([APP.password]);
      expect(f.keyRequests, ask).toBe(ask === 'mysql_clear_password' ? 0 : 1);
    }
  });

  it("logs in by default through caching_sha2_password's fast path (MySQL 8's usual login, a scramble)", async () => {
    const f = await fake({
      ask: 'caching_sha2_password',
      greeting: 'caching_sha2_password',
      cached: [ADMIN.username, APP.username],
    });
    const session = await sessionOn(f);
    expect(await session.authenticate(APP)).toEqual({ ok: true });
    expect(f.asked).toBe(0);
    expectNothingSent(f);
  });

  it('refuses a server that takes a mysql_native_password answer when the connection does not list it', async () => {
    const f = await fake({ ask: 'caching_sha2_password', letIn: [ADMIN.username] });
    const opening = sessionOn(f, { options: { requireAuth: 'caching_sha2_password' } });
    await expect(opening).rejects.toBeInstanceOf(AuthMethodRefusedError);
    await expect(opening).rejects.toThrow(/mysql_native_password authentication.*does not accept/);
  });

  it('checks options.requireAuth', () => {
    const validate = mysqlTarget.validateOptions;
    expect(
      validate?.({ requireAuth: 'mysql_native_password,caching_sha2_password,sha256_password' }),
    ).toEqual([]);
    expect(validate?.({ requireAuth: 'caching_sha2_password', accountHost: '%' })).toEqual([]);
    expect(validate?.({ requireAuth: 'mysql_native_password,dialog' })?.join()).toMatch(
      /requireAuth.*"dialog"/,
    );
    expect(validate?.({ requireAuth: '' })?.join()).toMatch(/requireAuth/);
    expect(validate?.({ requireAuth: true })?.join()).toMatch(/requireAuth/);
    expect(validate?.({ sslmode: 'disable' })?.join()).toMatch(/"sslmode".*requireAuth/);
  });

  describe.skipIf(tlsMissing !== undefined)('in TLS', () => {
    const tls = 'missing' in certificate ? undefined : certificate;

    for (const ask of ASKS) {
      it(`refuses ${ask} in TLS mode require (the server is not verified), also when the greeting names it`, async () => {
        const f = await fake({ ask, tls, letIn: [ADMIN.username] });
        const session = await sessionOn(f, { tls: { mode: 'require' } });
        const login = await settled(session.authenticate(APP));
        expectNothingSent(f);
        expect(login).toBeInstanceOf(AuthMethodRefusedError);
      });
    }

    it('lets caching_sha2_password do full authentication in TLS verify-full, where the server is authenticated', async () => {
      const f = await fake({ ask: 'caching_sha2_password', tls, letIn: [ADMIN.username] });
      const session = await sessionOn(f, { tls: { mode: 'verify-full', ca: tls?.cert } });
      expect(await session.authenticate(APP)).toMatchObject({ ok: false, reason: 'rejected' });
      expect(f.passwordsReceived).toEqual([APP.password]);
      expect(f.keyRequests).toBe(0);
    });

    it('in verify-full, sends nothing to a server whose certificate does not name the host (mysql2 checks an IP against "localhost")', async () => {
      // This certificate passes mysql2's check for 127.0.0.1; Keyturn checks it against the connection's host.
      const localhost = selfSignedCertificate('DNS:localhost');
      if ('missing' in localhost) throw new Error(localhost.missing);
      const tlsLocalhost = { tls: { mode: 'verify-full' as const, ca: localhost.cert } };

      // caching_sha2_password's full authentication, during the handshake: refused before the password goes.
      const f = await fake({ ask: 'caching_sha2_password', tls: localhost });
      const opening = await settled(sessionOn(f, tlsLocalhost));
      expectNothingSent(f);
      expect(opening).toBeInstanceOf(AuthMethodRefusedError);
      expect((opening as Error).message).toMatch(/certificate that names 127\.0\.0\.1/);

      // A server that takes the scramble: the session is closed before any statement (they carry passwords).
      const g = await fake({ ask: 'caching_sha2_password', tls: localhost, letIn: [ADMIN.username] });
      const session = await settled(sessionOn(g, tlsLocalhost));
      expect(session).toMatchObject({ code: 'tls-unverified' });
      expect((session as Error).message).toMatch(/does not name 127\.0\.0\.1.*before any statement/);
      expect(g.received().includes(Buffer.from('SELECT'))).toBe(false);
    });

    it('still refuses sha256_password and mysql_clear_password in TLS verify-full unless listed', async () => {
      for (const ask of ['sha256_password', 'mysql_clear_password'] as const) {
        const f = await fake({ ask, tls, letIn: [ADMIN.username] });
        const session = await sessionOn(f, { tls: { mode: 'verify-full', ca: tls?.cert } });
        const login = await settled(session.authenticate(APP));
        expectNothingSent(f);
        expect(login, ask).toBeInstanceOf(AuthMethodRefusedError);
      }
    });
  });
});
