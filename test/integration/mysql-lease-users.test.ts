// The MySQL target's lease verbs against the machine's real MySQL/MariaDB (test/support/mysql.ts: root with an
// empty password on 127.0.0.1:3306, or KEYTURN_TEST_MYSQL_URL), through the driver itself: a lease account gets
// exactly the template's grants, roles and default role, logs in and reads what the template may read; dropping
// it ends its open sessions and its logins; every verb may be repeated. Skipped, with the reason printed, when
// the server cannot be reached.
import { randomBytes } from 'node:crypto';
import mysql from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Connection } from '../../src/registry/types.ts';
import { mysqlTarget } from '../../src/targets/mysql/mysql-target.ts';
import { TargetRefusedError, type TargetSession } from '../../src/targets/types.ts';
import { asMysqlRoot, MYSQL_SERVER, mysqlCanLogin } from '../support/mysql.ts';

const DATABASE = 'keyturn_test';
const hex = (n: number) => randomBytes(n).toString('hex');
const run = hex(3);
const TABLE = `kt_lease_${run}`;
const template = { name: `kt_tpl_${run}`, password: randomBytes(18).toString('base64url') };
const role = `kt_lease_role_${run}`;
const accounts: string[] = [template.name];

const unavailable = await asMysqlRoot(async (c) => {
  await c.query('SELECT 1');
  return undefined;
}).catch(
  (err: Error) =>
    `cannot use MySQL at ${MYSQL_SERVER.host}:${MYSQL_SERVER.port} as "${MYSQL_SERVER.user}": ${err.message}`,
);
if (unavailable) console.warn(`skipping the MySQL lease-user tests: ${unavailable}`);

const canLogin = (user: string, password: string) => mysqlCanLogin(user, password, DATABASE);

/** SHOW GRANTS of an account, with its name replaced by USER and any password hash left out (MariaDB prints it). */
async function grantsOf(user: string): Promise<string[]> {
  const lines = await asMysqlRoot(async (c) => {
    const [rows] = await c.query({ sql: 'SHOW GRANTS FOR ?@?', rowsAsArray: true }, [user, '%']);
    return (rows as string[][]).map(([line]) => String(line));
  });
  return lines
    .map((line) =>
      line
        .replaceAll(`\`${user}\``, '`USER`')
        .replaceAll(`'${user}'`, "'USER'")
        .replace(/ IDENTIFIED (BY PASSWORD|VIA|WITH) .*$/, ''),
    )
    .sort();
}

function leaseName(): string {
  const name = `kt_lease_${run}_${hex(3)}`;
  accounts.push(name);
  return name;
}

const expiresAt = () => new Date(Date.now() + 3600_000);

let session: TargetSession;

describe.skipIf(unavailable !== undefined)('MySQL lease users', () => {
  beforeAll(async () => {
    await asMysqlRoot(async (c) => {
      await c.query(`CREATE DATABASE IF NOT EXISTS \`${DATABASE}\``);
      await c.query(`CREATE TABLE \`${DATABASE}\`.\`${TABLE}\` (id INT PRIMARY KEY, label VARCHAR(20))`);
      await c.query(`INSERT INTO \`${DATABASE}\`.\`${TABLE}\` VALUES (1, 'one'), (2, 'two')`);
      await c.query(`CREATE ROLE \`${role}\``);
      await c.query(`GRANT INSERT ON \`${DATABASE}\`.\`${TABLE}\` TO \`${role}\``);
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [template.name, '%', template.password]);
      await c.query(`GRANT SELECT ON \`${DATABASE}\`.\`${TABLE}\` TO ?@?`, [template.name, '%']);
      await c.query(`GRANT \`${role}\` TO ?@?`, [template.name, '%']);
      await c.query(`SET DEFAULT ROLE \`${role}\` FOR ?@?`, [template.name, '%']);
    });
    const connection: Connection = {
      id: `mysql-lease-${run}`,
      type: 'mysql',
      host: MYSQL_SERVER.host,
      port: MYSQL_SERVER.port,
      database: DATABASE,
      options: { accountHost: '%' },
      admin: { username: MYSQL_SERVER.user },
      adminStore: { type: 'local' },
      labels: {},
      createdAt: new Date().toISOString(),
      updatedAt: new Date().toISOString(),
    };
    session = await mysqlTarget.open(
      connection,
      { username: MYSQL_SERVER.user, password: MYSQL_SERVER.password },
      { timeoutMs: 5000 },
    );
  });

  afterAll(async () => {
    await session?.close();
    await asMysqlRoot(async (c) => {
      for (const account of accounts) await c.query('DROP USER IF EXISTS ?@?', [account, '%']);
      await c.query(`DROP ROLE IF EXISTS \`${role}\``);
      await c.query(`DROP TABLE IF EXISTS \`${DATABASE}\`.\`${TABLE}\``);
    });
  });

  it('the driver makes lease users', () => {
    expect(typeof session.leaseUsers?.create).toBe('function');
    expect(typeof session.leaseUsers?.extend).toBe('function');
    expect(typeof session.leaseUsers?.drop).toBe('function');
  });

  it("creates an account with exactly the template's grants, which logs in and reads the table", async () => {
    const lease = leaseName();
    const password = randomBytes(18).toString('base64url');
    await session.leaseUsers!.create(lease, password, { of: template.name, expiresAt: expiresAt() });

    expect(await grantsOf(lease)).toEqual(await grantsOf(template.name));
    const asLease = await mysql.createConnection({
      host: MYSQL_SERVER.host,
      port: MYSQL_SERVER.port,
      user: lease,
      password,
      database: DATABASE,
    });
    try {
      const [rows] = await asLease.query({
        sql: `SELECT id, label FROM \`${TABLE}\` ORDER BY id`,
        rowsAsArray: true,
      });
      expect(rows).toEqual([
        [1, 'one'],
        [2, 'two'],
      ]);
      // The default role came along, and with it the role's INSERT.
      const [current] = await asLease.query({ sql: 'SELECT CURRENT_ROLE()', rowsAsArray: true });
      expect(current).toEqual([[role]]);
      // Nothing more than the template: no UPDATE.
      await expect(asLease.query(`UPDATE \`${TABLE}\` SET label = 'x'`)).rejects.toMatchObject({
        errno: 1142,
      });
    } finally {
      await asLease.end();
    }
    // The lease account's password is its own, never the template's.
    expect(await canLogin(lease, template.password)).toBe(false);
    expect(await canLogin(template.name, template.password)).toBe(true);
  });

  it('createLeaseUser twice is fine: the existing account gets the password, and keeps its grants', async () => {
    const lease = leaseName();
    const first = randomBytes(18).toString('base64url');
    await session.leaseUsers!.create(lease, first, { of: template.name, expiresAt: expiresAt() });
    await session.leaseUsers!.create(lease, first, { of: template.name, expiresAt: expiresAt() });
    expect(await canLogin(lease, first)).toBe(true);
    const second = randomBytes(18).toString('base64url');
    await session.leaseUsers!.create(lease, second, { of: template.name, expiresAt: expiresAt() });
    expect(await canLogin(lease, second)).toBe(true);
    expect(await canLogin(lease, first)).toBe(false);
    expect(await grantsOf(lease)).toEqual(await grantsOf(template.name));
  });

  it('extendLeaseUser has no expiry to move and does not fail for an ordinary lease', async () => {
    const lease = leaseName();
    const password = randomBytes(18).toString('base64url');
    await session.leaseUsers!.create(lease, password, { of: template.name, expiresAt: expiresAt() });
    await session.leaseUsers!.extend(lease, new Date(Date.now() + 7200_000));
    expect(await canLogin(lease, password)).toBe(true);
  });

  it('dropLeaseUser ends the open sessions and the logins; again is fine', async () => {
    const lease = leaseName();
    const password = randomBytes(18).toString('base64url');
    await session.leaseUsers!.create(lease, password, { of: template.name, expiresAt: expiresAt() });
    const open = await Promise.all(
      [0, 1].map(() =>
        mysql.createConnection({
          host: MYSQL_SERVER.host,
          port: MYSQL_SERVER.port,
          user: lease,
          password,
          database: DATABASE,
        }),
      ),
    );
    for (const c of open) c.on('error', () => {});
    try {
      for (const c of open) await expect(c.query(`SELECT COUNT(*) FROM \`${TABLE}\``)).resolves.toBeTruthy();
      await session.leaseUsers!.drop(lease, { of: template.name });

      for (const c of open) await expect(c.query('SELECT 1')).rejects.toThrow();
      expect(await canLogin(lease, password)).toBe(false);
      const left = await asMysqlRoot(async (c) => {
        const [rows] = await c.query({
          sql: 'SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ? AND COMMAND <> ?',
          rowsAsArray: true,
          values: [lease, 'Killed'],
        });
        const [exists] = await c.query({
          sql: 'SELECT COUNT(*) FROM mysql.user WHERE User = ?',
          rowsAsArray: true,
          values: [lease],
        });
        return {
          sessions: Number((rows as number[][])[0]![0]),
          accounts: Number((exists as number[][])[0]![0]),
        };
      });
      expect(left).toEqual({ sessions: 0, accounts: 0 });

      await session.leaseUsers!.drop(lease, { of: template.name });
      await session.leaseUsers!.drop(`kt_never_${run}`, { of: template.name });
    } finally {
      for (const c of open) c.destroy();
    }
    // The template is untouched.
    expect(await canLogin(template.name, template.password)).toBe(true);
  });

  it("refuses to make or drop the credential's own account as a lease user", async () => {
    await expect(
      session.leaseUsers!.create(template.name, 'x'.repeat(24), {
        of: template.name,
        expiresAt: expiresAt(),
      }),
    ).rejects.toBeInstanceOf(TargetRefusedError);
    await expect(session.leaseUsers!.drop(template.name, { of: template.name })).rejects.toBeInstanceOf(
      TargetRefusedError,
    );
    expect(await canLogin(template.name, template.password)).toBe(true);
  });

  it('refuses a lease of an account that does not exist, and leaves nothing behind', async () => {
    const lease = leaseName();
    await expect(
      session.leaseUsers!.create(lease, 'y'.repeat(24), { of: `kt_missing_${run}`, expiresAt: expiresAt() }),
    ).rejects.toBeInstanceOf(TargetRefusedError);
    expect(await session.userExists(lease)).toBe(false);
  });

  it("finding 4: a lease cannot change the credential's password (MySQL/MariaDB)", async () => {
    // The credential's account as it should be (the template), and as it may be: able to change accounts with
    // CREATE USER, or with UPDATE on a database pattern that also matches the `mysql` schema. Each lease is either
    // refused or made without the means to take the credential's account over.
    const cases: [string, string | null][] = [
      ['the template', null],
      ['CREATE USER ON *.*', 'CREATE USER ON *.* TO ?@?'],
      ['UPDATE ON `%`.*', 'UPDATE ON `%`.* TO ?@?'],
    ];
    for (const [what, grant] of cases) {
      const credential = grant
        ? { name: `kt_pow_${run}_${hex(2)}`, password: randomBytes(18).toString('base64url') }
        : template;
      if (grant) {
        accounts.push(credential.name);
        await asMysqlRoot(async (c) => {
          await c.query('CREATE USER ?@? IDENTIFIED BY ?', [credential.name, '%', credential.password]);
          await c.query(`GRANT SELECT ON \`${DATABASE}\`.* TO ?@?`, [credential.name, '%']);
          await c.query(`GRANT ${grant}`, [credential.name, '%']);
        });
      }
      const lease = leaseName();
      const password = randomBytes(18).toString('base64url');
      const refused = await session
        .leaseUsers!.create(lease, password, {
          of: credential.name,
          expiresAt: expiresAt(),
        })
        .then(
          () => undefined,
          (err: unknown) => err,
        );
      const takenOverBy: string[] = [];
      if (!refused) {
        const asLease = await mysql.createConnection({
          host: MYSQL_SERVER.host,
          port: MYSQL_SERVER.port,
          user: lease,
          password,
        });
        try {
          for (const sql of [
            "ALTER USER ?@'%' IDENTIFIED BY 'taken-over-by-a-lease'",
            "SET PASSWORD FOR ?@'%' = PASSWORD('taken-over-by-a-lease')",
            "UPDATE mysql.user SET authentication_string = '' WHERE User = ?",
          ]) {
            const outcome = await asLease.query(sql, [credential.name]).then(
              () => 'done',
              (err: { sqlState?: string }) => err.sqlState,
            );
            if (outcome === 'done') takenOverBy.push(sql);
            else expect(outcome, `${what}: ${sql}`).toBe('42000');
          }
        } finally {
          await asLease.end();
        }
      }
      expect(takenOverBy, what).toEqual([]);
      expect(await canLogin(credential.name, credential.password), what).toBe(true);
      expect(await canLogin(credential.name, 'taken-over-by-a-lease'), what).toBe(false);
      if (grant) {
        expect(refused, what).toBeInstanceOf(TargetRefusedError);
        expect((refused as TargetRefusedError).code).toBe('lease-would-alter-accounts');
        expect(await session.userExists(lease)).toBe(false);
      } else {
        expect(refused, what).toBeUndefined();
      }
    }
  });

  it('finding 4: refuses a lease whose copied grants could change other accounts, directly or through a role', async () => {
    const cases: [string, string, RegExp][] = [
      ['CREATE USER ON *.*', 'CREATE USER ON *.* TO ?@?', /CREATE USER ON \*\.\* \(granted directly\)/],
      ['UPDATE ON mysql.*', 'UPDATE ON mysql.* TO ?@?', /UPDATE ON mysql\.\* \(granted directly\)/],
      [
        'GRANT OPTION',
        `SELECT ON \`${DATABASE}\`.\`${TABLE}\` TO ?@? WITH GRANT OPTION`,
        /WITH GRANT OPTION/,
      ],
      // A database pattern that matches `mysql`.
      [
        'ALL ON `mysq_`.*',
        'ALL PRIVILEGES ON `mysq_`.* TO ?@?',
        /ALL PRIVILEGES ON mysq_\.\* \(its pattern matches the mysql schema\)/,
      ],
      [
        'UPDATE (Priv) ON mysql.global_priv',
        'UPDATE (Priv) ON mysql.global_priv TO ?@?',
        /UPDATE ON mysql\.global_priv/,
      ],
      // *.* covers the mysql schema too.
      ['DROP ON *.*', 'DROP ON *.* TO ?@?', /DROP ON \*\.\*/],
      // Any DEFINER for its routines and views.
      ['SET USER ON *.*', 'SET USER ON *.* TO ?@?', /SET USER ON \*\.\*/],
      // init_connect, which runs as every account that logs in.
      ['CONNECTION ADMIN ON *.*', 'CONNECTION ADMIN ON *.* TO ?@?', /CONNECTION ADMIN ON \*\.\*/],
      // CHANGE MASTER TO a server whose events change accounts.
      [
        'REPLICATION SLAVE ADMIN',
        'REPLICATION SLAVE ADMIN ON *.* TO ?@?',
        /REPLICATION SLAVE ADMIN ON \*\.\*/,
      ],
      // A role it could grant onwards.
      ['WITH ADMIN OPTION', `\`${role}\` TO ?@? WITH ADMIN OPTION`, /WITH ADMIN OPTION \(granted directly\)/],
    ];
    for (const [what, grant, message] of cases) {
      const account = `kt_pow_${run}_${hex(2)}`;
      accounts.push(account);
      await asMysqlRoot(async (c) => {
        await c.query('CREATE USER ?@? IDENTIFIED BY ?', [account, '%', template.password]);
        await c.query(`GRANT ${grant}`, [account, '%']);
      });
      const lease = leaseName();
      const err = await session
        .leaseUsers!.create(lease, 'z'.repeat(24), {
          of: account,
          expiresAt: expiresAt(),
        })
        .catch((e: unknown) => e);
      expect(err, what).toBeInstanceOf(TargetRefusedError);
      expect((err as Error).message, what).toMatch(message);
      expect(await session.userExists(lease)).toBe(false);
    }
    // Through a role: the role's privileges come with it.
    const powerful = `kt_pow_role_${run}`;
    const account = `kt_pow_${run}_${hex(2)}`;
    accounts.push(account);
    await asMysqlRoot(async (c) => {
      await c.query(`CREATE ROLE \`${powerful}\``);
      await c.query(`GRANT UPDATE ON mysql.* TO \`${powerful}\``);
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [account, '%', template.password]);
      await c.query(`GRANT \`${powerful}\` TO ?@?`, [account, '%']);
    });
    try {
      const lease = leaseName();
      const err = await session
        .leaseUsers!.create(lease, 'z'.repeat(24), {
          of: account,
          expiresAt: expiresAt(),
        })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TargetRefusedError);
      expect((err as Error).message).toContain(`through role \`${powerful}\``);
      expect(await session.userExists(lease)).toBe(false);
    } finally {
      await asMysqlRoot((c) => c.query(`DROP ROLE IF EXISTS \`${powerful}\``));
    }
  });
  it('finding 4: grants on application databases are not refused, whatever their pattern', async () => {
    const account = `kt_app_${run}_${hex(2)}`;
    accounts.push(account);
    await asMysqlRoot(async (c) => {
      await c.query('CREATE USER ?@? IDENTIFIED BY ?', [account, '%', template.password]);
      await c.query('GRANT ALL PRIVILEGES ON `kt\\_app\\_%`.* TO ?@?', [account, '%']);
      await c.query('GRANT SELECT, INSERT, UPDATE, DELETE ON `keyturn_test`.* TO ?@?', [account, '%']);
      await c.query('GRANT SELECT ON *.* TO ?@?', [account, '%']);
    });
    const lease = leaseName();
    await session.leaseUsers!.create(lease, 'w'.repeat(24), { of: account, expiresAt: expiresAt() });
    expect(await grantsOf(lease)).toEqual(await grantsOf(account));
  });

  it('finding 4: renewal refuses a lease whose grants could change other accounts since it was made', async () => {
    const lease = leaseName();
    const password = randomBytes(18).toString('base64url');
    await session.leaseUsers!.create(lease, password, { of: template.name, expiresAt: expiresAt() });
    // The template's role (which the lease has too) is given CREATE USER after the lease was made.
    await asMysqlRoot((c) => c.query(`GRANT CREATE USER ON *.* TO \`${role}\``));
    try {
      const err = await session
        .leaseUsers!.extend(lease, new Date(Date.now() + 7200_000))
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TargetRefusedError);
      expect((err as TargetRefusedError).code).toBe('lease-would-alter-accounts');
      expect((err as Error).message).toContain(`CREATE USER ON *.* (through role \`${role}\`)`);
      expect((err as Error).message).toMatch(/not extended.*Revoke the lease/);
    } finally {
      await asMysqlRoot((c) => c.query(`REVOKE CREATE USER ON *.* FROM \`${role}\``));
    }
    await session.leaseUsers!.extend(lease, new Date(Date.now() + 7200_000));
    // A lease already revoked (its account gone) is no error here.
    await session.leaseUsers!.extend(`kt_never_${run}`, new Date(Date.now() + 7200_000));
  });
});
