// Lease users on a private redis-server that keeps its users in an ACL file: a lease user gets exactly the rules of
// the credential's user, is refused whatever that user is refused, and DELUSER both removes it (from the file too)
// and disconnects its clients.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Connection } from '../../src/registry/types.ts';
import { redisTarget, splitRules } from '../../src/targets/redis/redis-target.ts';
import { TargetRefusedError, type TargetSession } from '../../src/targets/types.ts';
import { waitFor } from '../support/harness.ts';
import { type RedisAclServer, startRedisAclServer } from '../support/redis-acl-server.ts';

const run = randomBytes(4).toString('hex');
const of = `tpl-${run}`;
const ofPassword = randomBytes(18).toString('base64url');
let server: RedisAclServer;
let session: TargetSession;
let counter = 0;

const lease = () => ({
  username: `lease-${run}-${++counter}`,
  password: randomBytes(18).toString('base64url'),
});
const create = (username: string, password: string) =>
  session.leaseUsers!.create(username, password, { of, expiresAt: new Date(Date.now() + 3600_000) });

/** ACL GETUSER as an object, without the password hashes. */
async function aclOf(user: string): Promise<Record<string, unknown> | null> {
  const reply = (await server.admin('ACL', 'GETUSER', user)) as unknown[] | null;
  if (reply === null) return null;
  const fields: Record<string, unknown> = {};
  for (let i = 0; i < reply.length; i += 2) fields[String(reply[i])] = reply[i + 1];
  delete fields.passwords;
  return fields;
}

/** A client logged in as `username` (AUTH as a command of its own, as the target does). */
async function clientAs(username: string, password: string): Promise<Redis> {
  const client = new Redis({
    host: server.host,
    port: server.port,
    lazyConnect: true,
    enableReadyCheck: false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  client.on('error', () => {});
  await client.connect();
  await client.call('AUTH', username, password);
  return client;
}

const aclFileUsers = () =>
  readFileSync(server.aclFile, 'utf8')
    .split('\n')
    .map((l) => splitRules(l)[1])
    .filter(Boolean);

beforeAll(async () => {
  server = await startRedisAclServer();
  await server.admin(
    'ACL',
    'SETUSER',
    of,
    'on',
    `>${ofPassword}`,
    '~cache:*',
    '&events:*',
    '-@all',
    '+get',
    '+set',
    '+ping',
    '+config|get',
    '(~other:* +del)',
  );
  const connection: Connection = {
    id: 'redis-lease',
    type: 'redis',
    host: server.host,
    port: server.port,
    admin: { username: server.adminUser },
    adminStore: { type: 'local' },
    labels: {},
    createdAt: '',
    updatedAt: '',
  };
  session = await redisTarget.open(
    connection,
    { username: server.adminUser, password: server.adminPassword },
    { timeoutMs: 5000 },
  );
});

afterAll(async () => {
  await session?.close();
  await server?.stop();
});

describe('Redis ACL lease users', () => {
  it('driver says it does leases', () => {});

  it('a lease user logs in and has exactly the rules of the credential user; ACL SAVE writes it out', async () => {
    const { username, password } = lease();
    await create(username, password);
    expect(await server.canLogin(username, password)).toBe(true);
    expect(await server.canLogin(username, `${password}x`)).toBe(false);
    expect(await aclOf(username)).toEqual(await aclOf(of));
    expect(aclFileUsers()).toContain(username);
    expect(readFileSync(server.aclFile, 'utf8')).not.toContain(password);
  });

  it('what the credential user may not run, the lease user may not either', async () => {
    const { username, password } = lease();
    await create(username, password);
    const template = await clientAs(of, ofPassword);
    const leased = await clientAs(username, password);
    try {
      for (const client of [template, leased]) {
        expect(await client.set('cache:a', '1')).toBe('OK');
        expect(await client.call('DEL', 'other:a')).toBe(0);
        await expect(client.call('DEL', 'cache:a')).rejects.toThrow(/NOPERM/);
        await expect(client.get('secret:a')).rejects.toThrow(/NOPERM/);
        await expect(client.call('CONFIG', 'SET', 'maxmemory', '1')).rejects.toThrow(/NOPERM/);
      }
    } finally {
      template.disconnect();
      leased.disconnect();
    }
  });

  it('refuses a lease of a user that does not exist, naming it', async () => {
    const { username, password } = lease();
    const missing = `missing-${run}`;
    const err = await session
      .leaseUsers!.create(username, password, {
        of: missing,
        expiresAt: new Date(Date.now() + 60_000),
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TargetRefusedError);
    expect((err as Error).message).toContain(missing);
    expect(await aclOf(username)).toBeNull();
  });

  it('createLeaseUser twice: the second password wins and the rules are the template’s again', async () => {
    const { username, password } = lease();
    await create(username, password);
    // Someone widened the lease user meanwhile (more commands, keys, a selector, nopass): all of it goes.
    await server.admin('ACL', 'SETUSER', username, '+del', '~*', 'nopass', '(~x:* +set)');
    const second = randomBytes(18).toString('base64url');
    await create(username, second);
    expect(await server.canLogin(username, second)).toBe(true);
    expect(await server.canLogin(username, password)).toBe(false);
    expect(await aclOf(username)).toEqual(await aclOf(of));
    const passwords = (await server.admin('ACL', 'GETUSER', username)) as unknown[];
    expect(passwords[passwords.indexOf('passwords') + 1]).toHaveLength(1);
  });

  it('extendLeaseUser has no expiry to move and leaves an ordinary lease user as it is', async () => {
    const { username, password } = lease();
    await create(username, password);
    await session.leaseUsers!.extend(username, new Date(Date.now() + 7200_000));
    expect(await server.canLogin(username, password)).toBe(true);
  });

  it('dropLeaseUser disconnects its open client and the login, and takes it out of the ACL file; twice is fine', async () => {
    const { username, password } = lease();
    await create(username, password);
    const open = await clientAs(username, password);
    try {
      expect(await open.ping()).toBe('PONG');
      await session.leaseUsers!.drop(username, { of });
      // Redis closes the connection itself: the client sees the end without having asked for it.
      await waitFor(
        "Redis to close the lease user's connection",
        async () => open.status === 'end',
        10_000,
        50,
      );
      await expect(open.ping()).rejects.toThrow();
    } finally {
      open.disconnect();
    }
    expect(await server.canLogin(username, password)).toBe(false);
    expect(await aclOf(username)).toBeNull();
    expect(aclFileUsers()).not.toContain(username);
    expect(aclFileUsers()).toContain(of);
    await session.leaseUsers!.drop(username, { of });
    // The credential's own user is never dropped as a lease user.
    await expect(session.leaseUsers!.drop(of, { of })).rejects.toBeInstanceOf(TargetRefusedError);
    expect(await server.canLogin(of, ofPassword)).toBe(true);
  });

  it("finding 4: a lease cannot change the credential's password (Redis)", async () => {
    // The credential's user as it should be (the template), and as it may be: allowed ACL, in its root rules or in a
    // selector. Each lease is either refused or made without the means to take the credential's user over.
    const cases: [string, string, string, string[] | null][] = [
      ['the template', of, ofPassword, null],
      ['+@all', `all-${run}`, randomBytes(18).toString('base64url'), ['+@all', '~*']],
      [
        'a selector with +acl',
        `sel-${run}`,
        randomBytes(18).toString('base64url'),
        ['-@all', '+ping', '(+acl ~*)'],
      ],
    ];
    for (const [what, user, userPassword, rules] of cases) {
      if (rules) await server.admin('ACL', 'SETUSER', user, 'on', `>${userPassword}`, ...rules);
      const { username, password } = lease();
      const refused = await session
        .leaseUsers!.create(username, password, {
          of: user,
          expiresAt: new Date(Date.now() + 3600_000),
        })
        .then(
          () => undefined,
          (err: unknown) => err,
        );
      const takenOverBy: string[] = [];
      if (!refused) {
        const leased = await clientAs(username, password);
        try {
          for (const attempt of [
            ['ACL', 'SETUSER', user, 'resetpass', '>taken-over-by-a-lease'],
            ['CONFIG', 'SET', 'requirepass', 'taken-over-by-a-lease'],
          ]) {
            const outcome = await leased.call(attempt[0]!, ...attempt.slice(1)).then(
              () => 'done',
              (err: Error) => err.message,
            );
            if (outcome === 'done') takenOverBy.push(attempt.slice(0, 2).join(' '));
            else expect(outcome, `${what}: ${attempt.slice(0, 2).join(' ')}`).toMatch(/NOPERM/);
          }
        } finally {
          leased.disconnect();
        }
      }
      expect(takenOverBy, what).toEqual([]);
      expect(await server.canLogin(user, userPassword), what).toBe(true);
      expect(await server.canLogin(user, 'taken-over-by-a-lease'), what).toBe(false);
      if (rules) {
        expect(refused, what).toBeInstanceOf(TargetRefusedError);
        expect((refused as TargetRefusedError).code).toBe('lease-would-alter-users');
        expect(await aclOf(username)).toBeNull();
      } else {
        expect(refused, what).toBeUndefined();
      }
    }
  });

  it('finding 4: refuses a lease of a user whose rules, or selectors, allow ACL or CONFIG SET', async () => {
    for (const rules of [
      ['+@all', '~*'],
      ['-@all', '+get', '~*', '(+acl ~*)'],
      ['-@all', '+config|set', '~*'],
      // REPLICAOF / FAILOVER: this server would follow another, whose replication stream runs ACL SETUSER.
      ['-@all', '+replicaof', '~*'],
      ['-@all', '+failover'],
      ['-@all', '+module|loadex'],
    ]) {
      const powerful = `pow-${run}-${++counter}`;
      await server.admin('ACL', 'SETUSER', powerful, 'on', `>${ofPassword}`, ...rules);
      const { username, password } = lease();
      const err = await session
        .leaseUsers!.create(username, password, {
          of: powerful,
          expiresAt: new Date(Date.now() + 3600_000),
        })
        .catch((e: unknown) => e);
      expect(err, rules.join(' ')).toBeInstanceOf(TargetRefusedError);
      expect((err as Error).message).toMatch(/could change the passwords/);
      expect(await aclOf(username)).toBeNull();
    }
  });
  it('finding 4: renewal refuses a lease user whose rules let it change users', async () => {
    const { username, password } = lease();
    await create(username, password);
    await session.leaseUsers!.extend(username, new Date(Date.now() + 7200_000));
    // As a lease made before leases were checked, of a user allowed ACL, would be.
    await server.admin('ACL', 'SETUSER', username, '+acl');
    const err = await session
      .leaseUsers!.extend(username, new Date(Date.now() + 7200_000))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TargetRefusedError);
    expect((err as TargetRefusedError).code).toBe('lease-would-alter-users');
    expect((err as Error).message).toContain('ACL SETUSER');
    expect((err as Error).message).toMatch(/not extended.*Revoke the lease/);
    // A lease already revoked (its user gone) is no error here.
    await session.leaseUsers!.extend(`gone-${run}`, new Date(Date.now() + 7200_000));
  });
});
