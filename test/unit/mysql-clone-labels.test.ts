// Finding 3 of issue 11 on MySQL 8.0.21+: the MySQL target labels the clones Keyturn makes in the account's attributes
// (CREATE USER … ATTRIBUTE '{"keyturn": "keyturn:<credential id>"}'), reads the label back from
// INFORMATION_SCHEMA.USER_ATTRIBUTES, and refuses to set the password of an existing account that does not carry the
// label it was asked for, or of any existing account when asked for a new one. This machine has MariaDB only (no
// MySQL 8, no Docker): mysql2's createConnection is replaced by a small recording fake that models accounts, their
// grants and their attributes the way MySQL 8 documents them (ALTER USER … ATTRIBUTE merges the object). The same
// path runs against a real MySQL 8 in test/integration/rotation-mysql8.test.ts where one is reachable, and the
// MariaDB side (no labels, the registry's record only) in test/integration/clone-adoption.test.ts.
import { beforeEach, describe, expect, it, vi } from 'vitest';

const fake = vi.hoisted(() => {
  interface Account {
    password: string;
    attributes: Record<string, unknown> | null;
    grants: string[];
  }
  const state = {
    version: '8.4.3',
    admin: { username: 'kt_admin', password: 'admin-secret-0000' },
    accounts: new Map<string, Account>(),
    /** Statements run by the admin, with their values, in order (the session preamble and look-ups left out). */
    statements: [] as { sql: string; values?: unknown[] }[],
  };
  const serverError = (errno: number, sqlState: string, message: string) =>
    Object.assign(new Error(message), { errno, sqlState, code: `ER_${errno}` });
  const LOOKUPS = new Set([
    'SELECT @@SESSION.sql_mode',
    'SET SESSION sql_log_off = 1',
    'SELECT VERSION()',
    'SELECT 1 FROM mysql.user WHERE User = ? AND Host = ?',
    'SHOW GRANTS FOR ?@?',
    'SELECT DEFAULT_ROLE_USER, DEFAULT_ROLE_HOST FROM mysql.default_roles WHERE USER = ? AND HOST = ?',
    'SELECT ATTRIBUTE FROM INFORMATION_SCHEMA.USER_ATTRIBUTES WHERE USER = ? AND HOST = ?',
  ]);

  function createConnection(options: { user: string; password: string }) {
    if (options.user !== state.admin.username || options.password !== state.admin.password) {
      return Promise.reject(serverError(1045, '28000', `Access denied for user '${options.user}'`));
    }
    const conn = {
      on() {},
      destroy() {},
      end: () => Promise.resolve(),
      query(q: { sql: string }, values: unknown[] = []) {
        const { sql } = q;
        const rows = (r: unknown[][]) => Promise.resolve([r, []]);
        if (!LOOKUPS.has(sql)) state.statements.push({ sql, values });
        const [user] = values as string[];
        const account = state.accounts.get(user ?? '');
        switch (sql) {
          case 'SELECT @@SESSION.sql_mode':
            return rows([['STRICT_TRANS_TABLES']]);
          case 'SET SESSION sql_log_off = 1':
            return rows([]);
          case 'SELECT VERSION()':
            return rows([[state.version]]);
          case 'SELECT 1 FROM mysql.user WHERE User = ? AND Host = ?':
            return rows(account ? [[1]] : []);
          case 'SHOW GRANTS FOR ?@?':
            return rows((account?.grants ?? []).map((g) => [`${g} TO \`${user}\`@\`%\``]));
          case 'SELECT DEFAULT_ROLE_USER, DEFAULT_ROLE_HOST FROM mysql.default_roles WHERE USER = ? AND HOST = ?':
            return rows([]);
          case 'SELECT ATTRIBUTE FROM INFORMATION_SCHEMA.USER_ATTRIBUTES WHERE USER = ? AND HOST = ?':
            return rows(account ? [[account.attributes ? JSON.stringify(account.attributes) : null]] : []);
          case 'CREATE USER ?@? IDENTIFIED BY ?':
          case 'CREATE USER ?@? IDENTIFIED BY ? ATTRIBUTE ?': {
            if (account) return Promise.reject(serverError(1396, 'HY000', `Operation CREATE USER failed`));
            const [, , password, attribute] = values as string[];
            state.accounts.set(user!, {
              password: password!,
              attributes: attribute === undefined ? null : JSON.parse(attribute),
              grants: [],
            });
            return rows([]);
          }
          case 'ALTER USER ?@? IDENTIFIED BY ?':
            if (!account) return Promise.reject(serverError(1396, 'HY000', 'Operation ALTER USER failed'));
            account.password = (values as string[])[2]!;
            return rows([]);
          case 'ALTER USER ?@? ATTRIBUTE ?':
            if (!account) return Promise.reject(serverError(1396, 'HY000', 'Operation ALTER USER failed'));
            account.attributes = { ...account.attributes, ...JSON.parse((values as string[])[2]!) };
            return rows([]);
        }
        const grant = /^(GRANT .+?) TO '(.+)'@'%'$/.exec(sql);
        const target = grant ? state.accounts.get(grant[2]!) : undefined;
        if (grant && target) {
          target.grants.push(grant[1]!);
          return rows([]);
        }
        return Promise.reject(serverError(1064, '42000', `the fake does not know "${sql}"`));
      },
    };
    return Promise.resolve(conn);
  }
  return { state, createConnection };
});

vi.mock('mysql2/promise', async (importOriginal) => {
  const real = (await importOriginal()) as { default: Record<string, unknown> };
  return { ...real, default: { ...real.default, createConnection: fake.createConnection } };
});

const { mysqlTarget, supportsAccountAttributes } = await import('../../src/targets/mysql/mysql-target.ts');
type TargetSession = import('../../src/targets/types.ts').TargetSession;
type Connection = import('../../src/registry/types.ts').Connection;

const { state } = fake;
let port = 41_000;

/** A session with the fake server of `version`; each gets its own port, so the version cache never answers. */
async function open(version: string): Promise<TargetSession> {
  state.version = version;
  const connection: Connection = {
    id: 'fake',
    type: 'mysql',
    host: '127.0.0.1',
    port: port++,
    admin: { username: state.admin.username },
    adminStore: { type: 'local' },
    labels: {},
    createdAt: '',
    updatedAt: '',
  };
  return mysqlTarget.open(connection, state.admin, { timeoutMs: 1000 });
}

const account = (name: string, password: string, attributes: Record<string, unknown> | null = null) =>
  state.accounts.set(name, { password, attributes, grants: ['GRANT SELECT ON `app`.*'] });

beforeEach(() => {
  state.accounts.clear();
  state.statements.length = 0;
});

describe('finding 3: MySQL 8.0.21+ labels the clones Keyturn makes', () => {
  it.each([
    ['8.4.3', true],
    ['9.1.0', true],
    ['8.0.21', true],
    ['8.0.20', false],
    ['5.7.44', false],
    ['10.11.6-MariaDB-0+deb12u1', false],
  ])('a session with %s labels accounts: %s', async (version, labels) => {
    expect(supportsAccountAttributes(version)).toBe(labels);
    const session = await open(version);
    expect(typeof session.labelOf === 'function').toBe(labels);
    expect(typeof session.setLabel === 'function').toBe(labels);
  });

  it('creates the clone with its label in the CREATE USER, and reads it back', async () => {
    const session = await open('8.4.3');
    account('app', 'app-password');
    const made = await session.createUser('app_clone', 'clone-password', {
      like: 'app',
      exclusive: true,
      label: 'keyturn:orders',
    });
    expect(made).toBe('created');
    expect(state.statements[0]).toEqual({
      sql: 'CREATE USER ?@? IDENTIFIED BY ? ATTRIBUTE ?',
      values: ['app_clone', '%', 'clone-password', '{"keyturn":"keyturn:orders"}'],
    });
    expect(state.accounts.get('app_clone')?.grants).toEqual(['GRANT SELECT ON `app`.*']);
    expect(await session.labelOf!('app_clone')).toEqual({ label: 'keyturn:orders' });
    expect(await session.labelOf!('app')).toEqual({ label: null });
    expect(await session.labelOf!('nobody')).toBeNull();
    // Its label asked for, the clone is Keyturn's: its password is set.
    expect(await session.createUser('app_clone', 'next', { like: 'app', label: 'keyturn:orders' })).toBe(
      'updated',
    );
    expect(state.accounts.get('app_clone')?.password).toBe('next');
  });

  it('never sets the password of an account without the label asked for, nor of any account asked to be new', async () => {
    const session = await open('8.4.3');
    account('app', 'app-password');
    account('app_clone', 'owner-password', { comment: 'the reporting team' });
    await expect(
      session.createUser('app_clone', 'x', { like: 'app', label: 'keyturn:orders' }),
    ).rejects.toMatchObject({ name: 'TargetRefusedError', code: 'not-keyturns' });
    await expect(
      session.createUser('app_clone', 'x', { like: 'app', exclusive: true }),
    ).rejects.toMatchObject({
      name: 'TargetRefusedError',
      code: 'user-exists',
    });
    expect(state.accounts.get('app_clone')?.password).toBe('owner-password');
    expect(state.statements).toEqual([]);
  });

  it('labels an existing account, keeping its other attributes', async () => {
    const session = await open('8.4.3');
    account('app_clone', 'owner-password', { comment: 'adopted' });
    await session.setLabel!('app_clone', 'keyturn:orders');
    expect(state.accounts.get('app_clone')?.attributes).toEqual({
      comment: 'adopted',
      keyturn: 'keyturn:orders',
    });
    expect(await session.labelOf!('app_clone')).toEqual({ label: 'keyturn:orders' });
  });

  it('on MariaDB, which has no account attributes, creates without a label (the registry records the clone)', async () => {
    const session = await open('10.11.6-MariaDB-0+deb12u1');
    account('app', 'app-password');
    await session.createUser('app_clone', 'clone-password', {
      like: 'app',
      exclusive: true,
      label: 'keyturn:x',
    });
    expect(state.statements[0]?.sql).toBe('CREATE USER ?@? IDENTIFIED BY ?');
    await expect(
      session.createUser('app_clone', 'y', { like: 'app', exclusive: true }),
    ).rejects.toMatchObject({
      code: 'user-exists',
    });
  });
});
