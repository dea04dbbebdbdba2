// The parts of the LDAP target that no server here can show: Active Directory's unicodePwd form (AD cannot run on
// this machine), the Password Modify request's bytes (RFC 3062), the escaping of a username into a DN (RFC 4514), and
// the option checks. The target against a real directory: test/integration/rotation-ldap.test.ts and the contract.
import { BerWriter } from 'ldapts';
import { describe, expect, it } from 'vitest';
import type { Connection } from '../../src/registry/types.ts';
import {
  ldapTarget,
  passwordModifyValue,
  unicodePwdChange,
  unicodePwdValue,
  userDnOf,
} from '../../src/targets/ldap/ldap-target.ts';
import { TargetRefusedError } from '../../src/targets/types.ts';

describe('LDAP target', () => {
  it('unicodePwd is the password in double quotes, UTF-16LE, as Active Directory requires', () => {
    const value = unicodePwdValue('Pa55-wörd');
    expect(value.toString('hex')).toBe(Buffer.from('"Pa55-wörd"', 'utf16le').toString('hex'));
    expect(value.subarray(0, 2)).toEqual(Buffer.from([0x22, 0x00])); // '"' little-endian
    expect(value.subarray(-2)).toEqual(Buffer.from([0x22, 0x00]));
    expect(value.length).toBe(2 * '"Pa55-wörd"'.length);
  });

  it('the admin sets it with one replace of unicodePwd, the value sent as binary', () => {
    const writer = new BerWriter();
    unicodePwdChange('s3cret').write(writer);
    const bytes = writer.buffer;
    expect(bytes[0]).toBe(0x30); // SEQUENCE { operation, modification }
    expect(bytes.subarray(2, 5)).toEqual(Buffer.from([0x0a, 0x01, 0x02])); // ENUMERATED replace (2)
    expect(bytes.includes(Buffer.from('unicodePwd'))).toBe(true);
    expect(bytes.includes(unicodePwdValue('s3cret'))).toBe(true);
  });

  it('the Password Modify request value is SEQUENCE { [0] userIdentity, [2] newPasswd }, no old password', () => {
    const value = passwordModifyValue('uid=a,dc=x', 'pw');
    expect(value.toString('hex')).toBe(
      `30${(2 + 10 + 2 + 2).toString(16).padStart(2, '0')}800a${Buffer.from('uid=a,dc=x').toString('hex')}8202${Buffer.from('pw').toString('hex')}`,
    );
  });

  it('puts the username into the DN as an escaped RDN value: no injection of RDNs or containers', () => {
    const template = 'uid={username},ou=services,dc=example,dc=org';
    expect(userDnOf(template, 'svc_payments')).toEqual({
      dn: 'uid=svc_payments,ou=services,dc=example,dc=org',
      rdnAttribute: 'uid',
    });
    const hostile = userDnOf(template, 'x,ou=admins+cn=root');
    expect(hostile.dn).toBe('uid=x\\,ou\\=admins\\+cn\\=root,ou=services,dc=example,dc=org');
    expect(userDnOf('CN={username},CN=Users,DC=corp,DC=example', 'svc').dn).toBe(
      'CN=svc,CN=Users,DC=corp,DC=example',
    );
    expect(() => userDnOf('ou=services,dc=x', 'svc')).toThrow(TargetRefusedError);
  });

  it('checks its options, naming each problem', () => {
    const check = (options: Record<string, string | number | boolean>) =>
      ldapTarget.validateOptions?.(options) ?? [];
    expect(check({ userDn: 'uid={username},ou=s,dc=x' })).toEqual([]);
    expect(
      check({
        userDn: 'uid={username},ou=s,dc=x',
        passwordAttribute: 'unicodePwd',
        startTls: true,
        groupBase: 'ou=g,dc=x',
      }),
    ).toEqual([]);
    expect(check({})).toEqual([expect.stringContaining('options.userDn is required')]);
    expect(check({ userDn: 'ou=services,dc=x' })).toEqual([
      expect.stringContaining('first RDN is attribute={username}'),
    ]);
    expect(check({ userDn: 'uid={username},cn={username},dc=x' })).toEqual([
      expect.stringContaining('exactly once'),
    ]);
    expect(check({ userDn: 'uid={username},dc=x', passwordAttribute: 'sambaNTPassword' })).toEqual([
      expect.stringContaining('"userPassword" or "unicodePwd"'),
    ]);
    expect(check({ userDn: 'uid={username},dc=x', startTls: 'yes' })).toEqual([
      'options.startTls must be true or false',
    ]);
    expect(check({ userDn: 'uid={username},dc=x', groupBase: 'groups' })).toEqual([
      expect.stringContaining('groupBase must be a DN'),
    ]);
    expect(check({ userDn: 'uid={username},dc=x', filter: '(x)' })).toEqual([
      expect.stringContaining('"filter" is not an option of ldap connections'),
    ]);
  });

  it('unicodePwd over a connection with TLS disabled is refused before anything is sent', async () => {
    const connection: Connection = {
      id: 'ad',
      type: 'ldap',
      host: '127.0.0.1',
      port: 1, // nothing listens: the refusal must come before any connection is tried
      tls: { mode: 'disable' },
      options: { userDn: 'CN={username},CN=Users,DC=corp,DC=example', passwordAttribute: 'unicodePwd' },
      admin: { username: 'CN=keyturn,CN=Users,DC=corp,DC=example' },
      adminStore: { type: 'local' },
      labels: {},
      createdAt: new Date().toISOString(),
      updatedAt: new Date().toISOString(),
    };
    const session = await ldapTarget.open(
      connection,
      { username: connection.admin.username, password: 'x' },
      { timeoutMs: 1000 },
    );
    const err = await session.updatePassword('svc', 'new-password').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TargetRefusedError);
    expect((err as Error).message).toContain('only over an encrypted connection');
    await session.close();
  });
});
