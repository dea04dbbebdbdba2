// LDAP service accounts rotated end to end (issue 16), on a slapd of the test's own (test/support/slapd.ts) with
// least-privilege ACLs, both strategies: after each rotation a bind with the new password works and one with the old
// password does not (single-user), and an alternating pair's clone has its account's object classes and groups.
// Also: StartTLS on the plain port, verify-full refusing a certificate it cannot check, and an admin without write
// rights failing cleanly with the account untouched.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropPrefix, type Keyturn, startKeyturn, testEnv, waitForRotation } from '../support/harness.ts';
import {
  LDAP_GROUPS,
  LDAP_SERVICES,
  LDAP_USER_DN,
  ldapConnectionBody,
  type Slapd,
  slapdSkipReason,
  startSlapd,
} from '../support/slapd.ts';
import { importTargetUser } from '../support/targets.ts';

const skip = slapdSkipReason();
if (skip) console.warn(`skipping the LDAP rotation tests: ${skip}`);

describe.skipIf(Boolean(skip))('LDAP target: rotations end to end', () => {
  const env = testEnv({ LOG_LEVEL: 'warn' });
  let kt: Keyturn;
  let slapd: Slapd;
  let n = 0;
  const account = async (groups = ['payments-readers']) => {
    const user = { username: `svc_${process.pid}_${++n}`, password: `initial-${n}-${Date.now()}-Aa1` };
    await slapd.addAccount(user.username, user.password, groups);
    return user;
  };
  const connection = (overrides: Record<string, unknown> = {}) => ldapConnectionBody(slapd, overrides);

  beforeAll(async () => {
    slapd = await startSlapd();
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    const res = await kt.api('POST', '/v1/connections', { id: 'ldap', ...connection() });
    expect(res.status, res.text).toBe(201);
  });
  afterAll(async () => {
    await kt?.close();
    await slapd?.stop();
    await dropPrefix(env.prefix);
  });

  const rotate = async (id: string, expected = 'succeeded') => {
    const asked = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(asked.status, asked.text).toBe(202);
    const done = await waitForRotation(kt, asked.body.rotationId);
    expect(done.status, JSON.stringify(done.error)).toBe(expected);
    return {
      done,
      secret: (await kt.api('GET', `/v1/credentials/${id}/secret`)).body as {
        username: string;
        password: string;
      },
    };
  };

  it('single-user over LDAPS: the new password binds, the old one no longer does; the directory keeps a hash', async () => {
    const user = await account();
    const id = await importTargetUser(kt, 'ldap', user, 'single-user', 'ldap');
    const { secret: first } = await rotate(id);
    expect(first.username).toBe(user.username);
    expect(await slapd.canBind(user.username, first.password)).toBe(true);
    expect(await slapd.canBind(user.username, user.password)).toBe(false);
    const { secret: second } = await rotate(id);
    expect(await slapd.canBind(user.username, second.password)).toBe(true);
    expect(await slapd.canBind(user.username, first.password)).toBe(false);
    // Set through Password Modify: the directory hashed it, no cleartext is kept.
    const stored = await slapd.read(`uid=${user.username},${LDAP_SERVICES}`, 'userPassword');
    expect(stored).toHaveLength(1);
    expect(stored[0]).toMatch(/^\{SSHA\}/);
    expect(stored[0]).not.toContain(second.password);
  });

  it('alternating-users: the clone has its account’s object classes and groups, and the two take turns', async () => {
    const user = await account(['payments-readers', 'ledger-writers']);
    const id = await importTargetUser(kt, 'ldap', user, 'alternating-users', 'ldap-alt');
    const { secret: first } = await rotate(id);
    expect(first.username).toBe(`${user.username}_clone`);
    expect(await slapd.canBind(first.username, first.password)).toBe(true);
    expect(await slapd.canBind(user.username, user.password)).toBe(true); // its grace: services move over
    const cloneDn = `uid=${first.username},${LDAP_SERVICES}`;
    expect((await slapd.read(cloneDn, 'objectClass')).sort()).toEqual(['inetOrgPerson', 'posixAccount']);
    for (const group of ['payments-readers', 'ledger-writers']) {
      expect(await slapd.read(`cn=${group},${LDAP_GROUPS}`, 'member')).toContain(cloneDn);
    }
    const { secret: second } = await rotate(id);
    expect(second.username).toBe(user.username);
    expect(await slapd.canBind(second.username, second.password)).toBe(true);
    expect(second.password).not.toBe(user.password);
  });

  it('StartTLS on the plain port works; verify-full refuses a certificate it cannot check', async () => {
    const startTls = await kt.api('POST', '/v1/connections', {
      id: 'ldap-starttls',
      ...connection({ port: slapd.port, options: { userDn: LDAP_USER_DN, startTls: true } }),
    });
    expect(startTls.status, startTls.text).toBe(201);
    const user = await account();
    const id = await importTargetUser(kt, 'ldap-starttls', user, 'single-user', 'ldap-stls');
    const { secret } = await rotate(id);
    expect(await slapd.canBind(user.username, secret.password)).toBe(true);

    // No CA given: the directory's certificate is not one the system trusts, and verify says so before saving.
    const untrusted = await kt.api('POST', '/v1/connections', {
      id: 'ldap-untrusted',
      ...connection({ tls: { mode: 'verify-full' } }),
    });
    expect(untrusted.status, untrusted.text).toBe(422);
    expect(untrusted.body.error.message).toMatch(/certificate/i);
    expect((await kt.api('GET', '/v1/connections/ldap-untrusted')).status).toBe(404);
  });

  it('an admin without write rights: the rotation fails saying what the admin needs, the account still binds', async () => {
    const weak = await kt.api('POST', '/v1/connections', {
      id: 'ldap-reader',
      ...connection({ admin: { username: slapd.reader.dn, password: slapd.reader.password }, verify: false }),
    });
    expect(weak.status, weak.text).toBe(201);
    const user = await account();
    const id = await importTargetUser(kt, 'ldap-reader', user, 'single-user', 'ldap-weak');
    const { done } = await rotate(id, 'failed');
    expect(done.error.message).toContain('needs write access');
    expect(done.error.message).not.toContain(slapd.reader.password);
    expect(await slapd.canBind(user.username, user.password)).toBe(true);
  });

  it('refuses a connection without userDn or with options it does not take, naming them', async () => {
    const res = await kt.api('POST', '/v1/connections', {
      ...connection({ options: { passwordAttribute: 'sambaNTPassword', base: 'dc=x' } }),
      id: 'ldap-bad',
    });
    expect(res.status).toBe(422);
    expect(res.body.error.message).toContain('options.userDn is required');
    expect(res.body.error.message).toContain('"base" is not an option of ldap connections');
    expect(res.body.error.message).toContain('options.passwordAttribute must be');
  });
});
