// Lease users on the password-checking PostgreSQL: a LOGIN role with the credential role's group memberships (never
// a member of the credential's role itself: finding 4 of issue 11), with VALID UNTIL at the lease's end (enforced by
// PostgreSQL itself), moved by extend, and dropped with its sessions ended and whatever it owns handed to the
// credential's role.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Connection } from '../../src/registry/types.ts';
import { postgresTarget } from '../../src/targets/postgres/postgres-target.ts';
import { TargetRefusedError, type TargetSession } from '../../src/targets/types.ts';
import { canLogin, pgAdmin, pgInfo, waitFor } from '../support/harness.ts';

const info = pgInfo();
const run = randomBytes(4).toString('hex');
const of = `kt_lease_tpl_${run}`;
const group = `kt_lease_grp_${run}`;
const ofPassword = randomBytes(18).toString('base64url');
const table = `kt_lease_t_${run}`;
const otherDb = `kt_lease_db_${run}`;
const roles: string[] = [];
let session: TargetSession;
let counter = 0;

const id = pg.escapeIdentifier;
const hour = 3600_000;
/** A fresh lease user name and password, remembered for clean-up. */
const lease = () => {
  const username = `kt_lease_${run}_${++counter}`;
  roles.push(username);
  return { username, password: randomBytes(18).toString('base64url') };
};
const at = (msFromNow: number) => new Date(Date.now() + msFromNow);
const create = (username: string, password: string, expiresAt = at(hour)) =>
  session.leaseUsers!.create(username, password, { of, expiresAt });

function clientAs(user: string, password: string, database = info.database): pg.Client {
  const client = new pg.Client({
    host: info.host,
    port: info.port,
    database,
    user,
    password,
    connectionTimeoutMillis: 10_000,
  });
  client.on('error', () => {});
  return client;
}

async function queryAs<T extends pg.QueryResultRow>(user: string, password: string, sql: string) {
  const client = clientAs(user, password);
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end().catch(() => {});
  }
}

const role = async (name: string) =>
  (
    await pgAdmin((c) =>
      c.query<{ rolvaliduntil: Date | null; rolcanlogin: boolean }>(
        'SELECT rolvaliduntil, rolcanlogin FROM pg_roles WHERE rolname = $1',
        [name],
      ),
    )
  ).rows[0];

/** The roles a role is a direct member of. */
const memberships = async (name: string) =>
  (
    await pgAdmin((c) =>
      c.query<{ rolname: string }>(
        `SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
          WHERE m.member = $1::regrole ORDER BY 1`,
        [name],
      ),
    )
  ).rows.map((r) => r.rolname);

async function asAdminIn<T>(database: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = clientAs(info.adminUser, info.adminPassword, database);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

beforeAll(async () => {
  const connection: Connection = {
    id: 'pg-lease',
    type: 'postgres',
    host: info.host,
    port: info.port,
    database: info.database,
    admin: { username: info.adminUser },
    adminStore: { type: 'local' },
    labels: {},
    createdAt: '',
    updatedAt: '',
  };
  session = await postgresTarget.open(
    connection,
    { username: info.adminUser, password: info.adminPassword },
    { timeoutMs: 10_000 },
  );
  await pgAdmin(async (c) => {
    // As the README asks: the application's privileges on a group role, the credential's login role a member.
    await c.query(`CREATE ROLE ${id(group)} NOLOGIN`);
    await c.query(
      `CREATE ROLE ${id(of)} LOGIN PASSWORD ${pg.escapeLiteral(ofPassword)} IN ROLE ${id(group)}`,
    );
    await c.query(`CREATE TABLE ${id(table)} (n int)`);
    await c.query(`INSERT INTO ${id(table)} VALUES (42)`);
    await c.query(`GRANT SELECT ON ${id(table)} TO ${id(group)}`);
    // So that a lease user can make a table of its own (PostgreSQL 15 no longer lets PUBLIC create in public).
    await c.query(`GRANT CREATE ON SCHEMA public TO ${id(group)}`);
  });
});

afterAll(async () => {
  await session?.close();
  await pgAdmin(async (c) => {
    await c.query(`DROP DATABASE IF EXISTS ${id(otherDb)} WITH (FORCE)`);
    for (const name of [...roles, of, group]) {
      const exists = await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [name]);
      if (exists.rowCount === 1) {
        await c.query(`DROP OWNED BY ${id(name)}`);
        await c.query(`DROP ROLE ${id(name)}`);
      }
    }
    await c.query(`DROP TABLE IF EXISTS ${id(table)}`);
  });
});

describe('PostgreSQL lease users', () => {
  it('driver says it does leases', () => {});

  it('a lease user logs in with its password, reads what the credential reads, and expires when told', async () => {
    const { username, password } = lease();
    const expiresAt = at(hour);
    await create(username, password, expiresAt);
    expect(await canLogin(username, password)).toBe(true);
    expect(await canLogin(username, `${password}x`)).toBe(false);
    const rows = await queryAs<{ n: number }>(username, password, `SELECT n FROM ${id(table)}`);
    expect(rows).toEqual([{ n: 42 }]);
    expect((await role(username))?.rolvaliduntil?.getTime()).toBe(expiresAt.getTime());
    // Its access is the group membership, nothing granted to it directly, and never the credential's role.
    expect(await memberships(username)).toEqual([group]);
  });

  it('refuses a lease of a role that does not exist, naming it', async () => {
    const { username, password } = lease();
    const missing = `kt_lease_missing_${run}`;
    const err = await session
      .leaseUsers!.create(username, password, {
        of: missing,
        expiresAt: at(hour),
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TargetRefusedError);
    expect((err as Error).message).toContain(missing);
    expect(await role(username)).toBeUndefined();
  });

  it('PostgreSQL itself refuses the login once VALID UNTIL has passed; extend lets it in again', async () => {
    const { username, password } = lease();
    const expiresAt = at(4000);
    await create(username, password, expiresAt);
    await waitFor(
      'PostgreSQL to refuse the expired lease user',
      async () => !(await canLogin(username, password)),
      30_000,
      250,
    );
    // Refused by PostgreSQL, not by a drop: the role is still there, still LOGIN, and the expiry has passed.
    expect(Date.now()).toBeGreaterThanOrEqual(expiresAt.getTime());
    expect(await role(username)).toMatchObject({ rolcanlogin: true });
    await session.leaseUsers!.extend(username, at(hour));
    expect(await canLogin(username, password)).toBe(true);
  });

  it('extendLeaseUser moves VALID UNTIL; a missing role is refused', async () => {
    const { username, password } = lease();
    await create(username, password, at(hour));
    const later = at(2 * hour);
    await session.leaseUsers!.extend(username, later);
    expect((await role(username))?.rolvaliduntil?.getTime()).toBe(later.getTime());
    await expect(session.leaseUsers!.extend(`kt_lease_missing_${run}`, later)).rejects.toBeInstanceOf(
      TargetRefusedError,
    );
  });

  it('createLeaseUser twice: the second password and expiry win, one membership', async () => {
    const { username, password } = lease();
    await create(username, password, at(hour));
    const second = randomBytes(18).toString('base64url');
    const expiresAt = at(3 * hour);
    await create(username, second, expiresAt);
    expect(await canLogin(username, second)).toBe(true);
    expect(await canLogin(username, password)).toBe(false);
    expect((await role(username))?.rolvaliduntil?.getTime()).toBe(expiresAt.getTime());
    expect(await queryAs(username, second, `SELECT n FROM ${id(table)}`)).toEqual([{ n: 42 }]);
  });

  it('dropLeaseUser ends an open session and the login; twice is fine', async () => {
    const { username, password } = lease();
    await create(username, password);
    const open = clientAs(username, password);
    await open.connect();
    try {
      expect((await open.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      await session.leaseUsers!.drop(username, { of });
      // Ended by the server (FATAL 57P01), not by us: the client is still open from its side.
      await expect(open.query('SELECT 1')).rejects.toThrow(/connection|terminat/i);
    } finally {
      await open.end().catch(() => {});
    }
    expect(await canLogin(username, password)).toBe(false);
    expect(await role(username)).toBeUndefined();
    await session.leaseUsers!.drop(username, { of });
  });

  it('a lease user that owns a table and holds a grant is still dropped; the table goes to the credential role', async () => {
    const { username, password } = lease();
    await create(username, password);
    const own = `${username}_own`;
    await queryAs(username, password, `CREATE TABLE ${id(own)} (n int)`);
    // A privilege granted to the lease user directly: DROP OWNED takes it away.
    await pgAdmin((c) => c.query(`GRANT INSERT ON ${id(table)} TO ${id(username)}`));
    await session.leaseUsers!.drop(username, { of });
    expect(await role(username)).toBeUndefined();
    const owner = await pgAdmin((c) =>
      c.query<{ tableowner: string }>('SELECT tableowner FROM pg_tables WHERE tablename = $1', [own]),
    );
    expect(owner.rows).toEqual([{ tableowner: of }]);
  });

  it('objects in another database of the cluster block the drop: refused, saying what to do', async () => {
    const { username, password } = lease();
    await pgAdmin((c) => c.query(`CREATE DATABASE ${id(otherDb)}`));
    await asAdminIn(otherDb, (c) => c.query(`GRANT CREATE ON SCHEMA public TO ${id(group)}`));
    await create(username, password);
    const there = clientAs(username, password, otherDb);
    await there.connect();
    await there.query('CREATE TABLE elsewhere (n int)');
    await there.end();

    const err = await session.leaseUsers!.drop(username, { of }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TargetRefusedError);
    expect((err as Error).message).toContain(`"${username}"`);
    expect((err as Error).message).toMatch(/other databases/);
    expect((err as Error).message).toContain('REASSIGN OWNED BY');
    // It can no longer log in meanwhile.
    expect(await role(username)).toMatchObject({ rolcanlogin: false });

    // Done as the message says, the drop goes through.
    await asAdminIn(otherDb, async (c) => {
      await c.query(`REASSIGN OWNED BY ${id(username)} TO ${id(of)}`);
      await c.query(`DROP OWNED BY ${id(username)}`);
    });
    await session.leaseUsers!.drop(username, { of });
    expect(await role(username)).toBeUndefined();
  });

  it("finding 4: a lease cannot change the credential's password (PostgreSQL)", async () => {
    const { username, password } = lease();
    await create(username, password);
    const client = clientAs(username, password);
    await client.connect();
    try {
      // Not a member of the credential's role: it cannot become it, so ALTER ROLE is its own-password case no more.
      await expect(client.query(`SET ROLE ${id(of)}`)).rejects.toMatchObject({ code: '42501' });
      await expect(
        client.query(`ALTER ROLE ${id(of)} PASSWORD ${pg.escapeLiteral('taken-over-by-a-lease')}`),
      ).rejects.toMatchObject({ code: '42501' });
    } finally {
      await client.end().catch(() => {});
    }
    expect(await canLogin(of, ofPassword)).toBe(true);
    expect(await canLogin(of, 'taken-over-by-a-lease')).toBe(false);
  });

  it('finding 4: a lease made before the fix (a member of the credential role) loses that membership', async () => {
    const { username, password } = lease();
    await pgAdmin((c) =>
      c.query(`CREATE ROLE ${id(username)} LOGIN PASSWORD ${pg.escapeLiteral(password)} IN ROLE ${id(of)}`),
    );
    await session.leaseUsers!.extend(username, at(hour));
    expect(await memberships(username)).toEqual([]);
    await create(username, password);
    expect(await memberships(username)).toEqual([group]);
  });

  it('finding 4: refuses a lease whose groups could alter roles, or a credential role in no group', async () => {
    const admins = `kt_lease_admins_${run}`;
    const lonely = `kt_lease_lonely_${run}`;
    roles.push(admins, lonely);
    await pgAdmin(async (c) => {
      await c.query(`CREATE ROLE ${id(admins)} NOLOGIN CREATEROLE`);
      await c.query(`CREATE ROLE ${id(lonely)} LOGIN`);
      await c.query(`GRANT ${id(admins)} TO ${id(group)}`);
    });
    try {
      const { username, password } = lease();
      const err = await create(username, password).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TargetRefusedError);
      expect((err as Error).message).toContain(`"${admins}" (CREATEROLE)`);
      expect(await role(username)).toBeUndefined();
    } finally {
      await pgAdmin((c) => c.query(`REVOKE ${id(admins)} FROM ${id(group)}`));
    }
    const { username, password } = lease();
    const err = await session
      .leaseUsers!.create(username, password, { of: lonely, expiresAt: at(hour) })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TargetRefusedError);
    expect((err as Error).message).toMatch(/belongs to no group role/);
    expect(await role(username)).toBeUndefined();
  });
  it('finding 4: refuses a lease whose credential role reaches superuser through server files', async () => {
    // pg_execute_server_program runs programs as the server's OS user, who can log in as a superuser.
    const filer = `kt_lease_filer_${run}`;
    roles.push(filer);
    await pgAdmin(async (c) => {
      await c.query(`CREATE ROLE ${id(filer)} LOGIN IN ROLE ${id(group)}`);
      await c.query(`GRANT pg_execute_server_program TO ${id(filer)}`);
    });
    const { username, password } = lease();
    const err = await session
      .leaseUsers!.create(username, password, { of: filer, expiresAt: at(hour) })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TargetRefusedError);
    expect((err as TargetRefusedError).code).toBe('lease-would-alter-roles');
    expect((err as Error).message).toContain('"pg_execute_server_program"');
    expect((err as Error).message).toMatch(/NOLOGIN group role/);
    expect(await role(username)).toBeUndefined();
  });

  it('finding 4: a lease gets the groups without ADMIN OPTION, so it cannot hand them on; re-creating takes one away', async () => {
    const holder = `kt_lease_holder_${run}`;
    const bystander = `kt_lease_bystander_${run}`;
    roles.push(holder, bystander);
    await pgAdmin(async (c) => {
      await c.query(`CREATE ROLE ${id(holder)} LOGIN`);
      await c.query(`GRANT ${id(group)} TO ${id(holder)} WITH ADMIN OPTION`);
      await c.query(`CREATE ROLE ${id(bystander)} NOLOGIN`);
    });
    const adminOptions = async (name: string) =>
      (
        await pgAdmin((c) =>
          c.query<{ admin_option: boolean }>(
            'SELECT admin_option FROM pg_auth_members WHERE member = $1::regrole',
            [name],
          ),
        )
      ).rows.map((r) => r.admin_option);
    const { username, password } = lease();
    const spec = { of: holder, expiresAt: at(hour) };
    await session.leaseUsers!.create(username, password, spec);
    expect(await memberships(username)).toEqual([group]);
    expect(await adminOptions(username)).toEqual([false]);
    const client = clientAs(username, password);
    await client.connect();
    try {
      await expect(client.query(`GRANT ${id(group)} TO ${id(bystander)}`)).rejects.toMatchObject({
        code: '42501',
      });
    } finally {
      await client.end().catch(() => {});
    }
    // Given ADMIN OPTION behind Keyturn's back, the lease role loses it when it is made again (a retry).
    await pgAdmin((c) => c.query(`GRANT ${id(group)} TO ${id(username)} WITH ADMIN OPTION`));
    await session.leaseUsers!.create(username, password, spec);
    expect(await adminOptions(username)).toEqual([false]);
  });

  it('finding 4: renewal refuses a lease whose groups could alter roles since it was made', async () => {
    const admins = `kt_lease_admins2_${run}`;
    roles.push(admins);
    await pgAdmin((c) => c.query(`CREATE ROLE ${id(admins)} NOLOGIN CREATEROLE`));
    const { username, password } = lease();
    const first = at(hour);
    await create(username, password, first);
    await pgAdmin((c) => c.query(`GRANT ${id(admins)} TO ${id(group)}`));
    try {
      const err = await session.leaseUsers!.extend(username, at(2 * hour)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TargetRefusedError);
      expect((err as TargetRefusedError).code).toBe('lease-would-alter-roles');
      expect((err as Error).message).toContain(`"${admins}" (CREATEROLE)`);
      expect((err as Error).message).toMatch(/not extended.*Revoke the lease/);
      expect((await role(username))?.rolvaliduntil?.getTime()).toBe(first.getTime());
    } finally {
      await pgAdmin((c) => c.query(`REVOKE ${id(admins)} FROM ${id(group)}`));
    }
    const later = at(2 * hour);
    await session.leaseUsers!.extend(username, later);
    expect((await role(username))?.rolvaliduntil?.getTime()).toBe(later.getTime());
  });
});
