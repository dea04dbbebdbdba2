// One contract, every target (issue 16): the same cases run against every downstream driver of src/targets, through
// targets/index.ts's map (the wrapper every session gets), on real servers: PostgreSQL (the run's password-checking
// cluster), MySQL/MariaDB, a Redis ACL server the fixture starts, the signed webhook service, the machine's RabbitMQ
// (its management API), a slapd of its own, and AWS IAM (the project's IAM/STS emulator, or a real endpoint with
// AWS_ENDPOINT_URL). The suite prints which targets ran and why any did not; a case a target does not declare (dual
// passwords, leases, minted secrets, a user look-up) is skipped for it with the reason.
//
// The cases are Vault's database plugin contract in Keyturn's words: authenticate right and wrong; update a password,
// idempotently; a user exists or not; create a second user with the same rights; delete, idempotently; the dual
// password, lease and minted-secret verbs where declared; and errors classified as unavailable (retry) or refused
// (roll back).
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Connection } from '../../src/registry/types.ts';
import { targetDriver } from '../../src/targets/index.ts';
import {
  type Login,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  TargetUnavailableError,
} from '../../src/targets/types.ts';
import { waitFor } from '../support/harness.ts';
import { freePort } from '../support/ports.ts';
import { CONTRACT_FIXTURES, type StartedTarget } from '../support/targets.ts';

const plan = await Promise.all(
  CONTRACT_FIXTURES.map(async (fixture) => ({ fixture, skip: await fixture.skipReason() })),
);
console.log(
  `target contract:\n${plan
    .map(
      ({ fixture, skip }) => `  ${skip ? 'skipped' : 'runs   '}  ${fixture.name}${skip ? `: ${skip}` : ''}`,
    )
    .join('\n')}`,
);

const TIMEOUT = { timeoutMs: 5000 };

/** The connection record a registration of this body makes (what a driver's open() receives). */
function connectionOf(started: StartedTarget, overrides: Partial<Connection> = {}): Connection {
  const body = started.connection as unknown as Connection & { admin: Login };
  return {
    id: `contract-${randomBytes(3).toString('hex')}`,
    type: body.type,
    host: body.host,
    port: body.port,
    ...(body.region ? { region: body.region } : {}),
    ...(body.endpoint ? { endpoint: body.endpoint } : {}),
    ...(body.database ? { database: body.database } : {}),
    ...(body.tls ? { tls: body.tls } : {}),
    ...(body.options ? { options: body.options } : {}),
    admin: { username: body.admin.username },
    adminStore: { type: 'local' },
    labels: {},
    createdAt: new Date().toISOString(),
    updatedAt: new Date().toISOString(),
    ...overrides,
  };
}

const adminOf = (started: StartedTarget): Login => (started.connection as { admin: Login }).admin;
const password = () => randomBytes(18).toString('base64url');

for (const { fixture, skip } of plan) {
  describe.skipIf(Boolean(skip))(`target contract: ${fixture.name}`, () => {
    let started: StartedTarget;
    let driver: TargetDriver;
    let session: TargetSession;
    const sessions: TargetSession[] = [];
    const open = async (connection: Connection, admin: Login) => {
      const s = await driver.open(connection, admin, TIMEOUT);
      sessions.push(s);
      return s;
    };

    beforeAll(async () => {
      started = await fixture.start();
      const found = targetDriver(String(started.connection.type));
      if (!found) throw new Error(`no driver in targets/index.ts for ${String(started.connection.type)}`);
      driver = found;
      session = await open(connectionOf(started), adminOf(started));
    });
    afterAll(async () => {
      for (const s of sessions) await s.close().catch(() => {});
      await started?.stop();
    });

    /** The password verbs do not apply where the downstream makes the secrets (mintedSecrets): said, and skipped. */
    const skipIfMinted = (ctx: { skip(note: string): void }, verb: string) => {
      if (session.mintedSecrets) {
        ctx.skip(
          `${fixture.name} makes its secrets itself (mintedSecrets): Keyturn never ${verb}; its cases follow`,
        );
      }
    };

    it('authenticate: the right password logs in, a wrong one is rejected (not thrown)', async () => {
      const user = await started.createUser();
      expect(await session.authenticate(user)).toEqual({ ok: true });
      const wrong = await session.authenticate({ ...user, password: password() });
      expect(wrong).toMatchObject({ ok: false, reason: 'rejected' });
    });

    it('updatePassword: the new password logs in and the old one no longer does; the same update again is harmless', async (ctx) => {
      skipIfMinted(ctx, 'sets a password');
      const user = await started.createUser();
      const next = password();
      await session.updatePassword(user.username, next);
      expect(await started.canLogin(user.username, next)).toBe(true);
      expect(await started.canLogin(user.username, user.password)).toBe(false);
      await session.updatePassword(user.username, next);
      expect(await started.canLogin(user.username, next)).toBe(true);
      expect(await session.authenticate({ username: user.username, password: next })).toEqual({ ok: true });
    });

    it("checkAdmin: the fixture's admin has what rotations need; an admin without it is told what it lacks", async () => {
      const checks = await session.checkAdmin();
      expect(checks.length).toBeGreaterThan(0);
      expect(checks.filter((c) => !c.ok)).toEqual([]);
      const weak = await started.weakAdmin();
      const weakSession = await open(connectionOf(started), weak.login);
      const found = await weakSession.checkAdmin();
      expect(
        found.find((c) => c.name === weak.lacks),
        JSON.stringify(found),
      ).toMatchObject({ ok: false });
      expect(JSON.stringify(found)).not.toContain(weak.login.password);
    });

    it('userExists: true for a user, false for a name nobody has (unless the service owns its users)', async (ctx) => {
      const user = await started.createUser();
      expect(await session.userExists(user.username)).toBe(true);
      if (driver.serviceOwnsUsers) {
        ctx.skip(`${fixture.name} owns its users and has no look-up (serviceOwnsUsers): every name "exists"`);
      }
      expect(await session.userExists(`nobody_${randomBytes(4).toString('hex')}`)).toBe(false);
    });

    it('createUser: a second user with the same rights logs in; creating it again updates it', async (ctx) => {
      skipIfMinted(ctx, 'creates a user');
      const user = await started.createUser();
      const clone = `${user.username}_clone`;
      const first = password();
      const created = await session.createUser(clone, first, { like: user.username });
      expect(created).toBe(driver.serviceOwnsUsers ? 'updated' : 'created');
      expect(await started.canLogin(clone, first)).toBe(true);
      if (session.accessOf)
        expect(await session.accessOf(clone)).toEqual(await session.accessOf(user.username));
      const second = password();
      expect(await session.createUser(clone, second, { like: user.username })).toBe('updated');
      expect(await started.canLogin(clone, second)).toBe(true);
    });

    it('deleteUser: the user can no longer log in; deleting it again is harmless', async (ctx) => {
      skipIfMinted(ctx, 'deletes a user');
      const user = await started.createUser();
      await session.deleteUser(user.username);
      expect(await started.canLogin(user.username, user.password)).toBe(false);
      if (!driver.serviceOwnsUsers) expect(await session.userExists(user.username)).toBe(false);
      await session.deleteUser(user.username);
    });

    it('dual passwords (where the session has them): both work while set, only the kept one after', async (ctx) => {
      const dual = session.dualPasswords;
      if (!dual) {
        ctx.skip(`${fixture.name} sessions declare no dual passwords (dualPasswords)`);
        return;
      }
      const user = await started.createUser();
      const next = password();
      await dual.set(user.username, { keep: user.password, password: next });
      await dual.set(user.username, { keep: user.password, password: next });
      expect(await started.canLogin(user.username, user.password)).toBe(true);
      expect(await started.canLogin(user.username, next)).toBe(true);
      await dual.remove(user.username, { remove: user.password, keep: next });
      await dual.remove(user.username, { remove: user.password, keep: next });
      expect(await started.canLogin(user.username, next)).toBe(true);
      expect(await started.canLogin(user.username, user.password)).toBe(false);
    });

    it('lease verbs (where declared): a lease user logs in with the access of its user, and is gone after the drop', async (ctx) => {
      const leases = session.leaseUsers;
      if (!leases) {
        ctx.skip(`${fixture.name} sessions declare no lease users (leaseUsers)`);
        return;
      }
      const user = await started.createUser();
      const lease = `${user.username.slice(0, 40)}_l${randomBytes(3).toString('hex')}`;
      const secret = password();
      const spec = { of: user.username, expiresAt: new Date(Date.now() + 600_000) };
      await leases.create(lease, secret, spec);
      await leases.create(lease, secret, spec);
      expect(await started.canLogin(lease, secret)).toBe(true);
      await leases.drop(lease, { of: user.username });
      await leases.drop(lease, { of: user.username });
      expect(await started.canLogin(lease, secret)).toBe(false);
      expect(await started.canLogin(user.username, user.password)).toBe(true);
    });

    it('minted secrets (where declared): list, mint up to the limit, the new key logs in once settled, deactivate and delete', async (ctx) => {
      const minted = session.mintedSecrets;
      if (!minted) {
        ctx.skip(`${fixture.name} sessions take the passwords Keyturn makes (no mintedSecrets)`);
        return;
      }
      const user = await started.createUser();
      expect((await minted.list(user.username)).map((k) => [k.keyId, k.active])).toEqual([
        [user.keyId, true],
      ]);
      const key = await minted.mint(user.username);
      expect(key.keyId).not.toBe(user.keyId);
      const login = { username: user.username, password: key.secret, keyId: key.keyId };
      await waitFor(
        'the new key to be accepted (within settleMs)',
        async () => (await session.authenticate(login)).ok,
        minted.settleMs,
      );
      expect(await started.canLogin(user.username, key.secret, key.keyId)).toBe(true);
      // The limit: one more is refused, and changes nothing.
      const over = await minted.mint(user.username).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(over).toBeInstanceOf(TargetRefusedError);
      expect((over as TargetRefusedError).code).toBe('limit');
      expect(await minted.list(user.username)).toHaveLength(minted.limit);
      await minted.deactivate(user.username, user.keyId!);
      await minted.deactivate(user.username, user.keyId!);
      expect(await started.canLogin(user.username, user.password, user.keyId)).toBe(false);
      expect((await minted.list(user.username)).find((k) => k.keyId === user.keyId)?.active).toBe(false);
      await minted.delete(user.username, user.keyId!);
      await minted.delete(user.username, user.keyId!);
      expect((await minted.list(user.username)).map((k) => k.keyId)).toEqual([key.keyId]);
      expect(await started.canLogin(user.username, key.secret, key.keyId)).toBe(true);
      // The password verbs are refused, changing nothing.
      await expect(session.updatePassword(user.username, password())).rejects.toBeInstanceOf(
        TargetRefusedError,
      );
    });

    it('errors: nothing listening is unavailable (retry); a wrong admin password is refused (roll back)', async () => {
      const user = await started.createUser();
      const port = await freePort();
      const body = started.connection as { endpoint?: string };
      const away = connectionOf(started, {
        port,
        ...(body.endpoint ? { endpoint: `http://127.0.0.1:${port}` } : {}),
      });
      // A verb that goes to the downstream as the admin: a password change, or where the downstream makes the secrets,
      // listing the user's keys.
      const adminVerb = (s: TargetSession) =>
        s.mintedSecrets ? s.mintedSecrets.list(user.username) : s.updatePassword(user.username, password());
      const unreachable = await (async () => {
        const s = await open(away, adminOf(started));
        return adminVerb(s);
      })().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(unreachable).toBeInstanceOf(TargetUnavailableError);
      const wrongAdmin = { username: adminOf(started).username, password: password() };
      const refused = await (async () => {
        const s = await open(connectionOf(started), wrongAdmin);
        return adminVerb(s);
      })().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(refused).toBeInstanceOf(TargetRefusedError);
      // Neither changed anything: the user still logs in with its password.
      expect(await started.canLogin(user.username, user.password, user.keyId)).toBe(true);
    });
  });
}
