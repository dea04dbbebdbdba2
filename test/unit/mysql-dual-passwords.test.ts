// The statements the MySQL target sends a MySQL 8.0.14+ server for setPasswords and removePassword, and what they
// leave an account with. This machine has MariaDB only (no MySQL 8, no Docker), so these tests stand in for
// test/integration/rotation-mysql8.test.ts where no MySQL 8 server is reachable: mysql2's createConnection is
// replaced by a small recording fake that models one account's primary and secondary password the way MySQL 8
// documents ALTER USER … IDENTIFIED BY (the secondary is left as it is), … RETAIN CURRENT PASSWORD (the primary
// becomes the secondary) and … DISCARD OLD PASSWORD. Everything else about the target runs against the real
// MariaDB in the integration tests.
import { beforeEach, describe, expect, it, vi } from 'vitest';

const fake = vi.hoisted(() => {
  interface Account {
    primary: string;
    secondary?: string;
  }
  const state = {
    version: '8.4.3',
    admin: { username: 'kt_admin', password: 'admin-secret-0000' },
    accounts: new Map<string, Account>(),
    /** Statements run by the admin, with their values, in order (the sql_mode/sql_log_off preamble left out). */
    statements: [] as { sql: string; values?: unknown[] }[],
    /** Whether each admin connection asked for sql_log_off before its statements. */
    quietConnections: [] as boolean[],
    /** Logins tried as a non-admin user, with their outcome. */
    logins: [] as { user: string; ok: boolean }[],
    /** A password that must log in after every statement (checked by the fake, like a client trying all along). */
    mustKeepWorking: undefined as { user: string; password: string } | undefined,
    broken: [] as string[],
    /** An error the next statement matching `match` throws. */
    failNext: undefined as { match: RegExp; error: Record<string, unknown> } | undefined,
  };
  const logsIn = (user: string, password: string) => {
    const a = state.accounts.get(user);
    return Boolean(a && (a.primary === password || a.secondary === password));
  };
  const serverError = (errno: number, sqlState: string, message: string) =>
    Object.assign(new Error(message), { errno, sqlState, code: `ER_${errno}` });

  function createConnection(options: { user: string; password: string }) {
    const isAdmin = options.user === state.admin.username;
    if (isAdmin ? options.password !== state.admin.password : !logsIn(options.user, options.password)) {
      if (!isAdmin) state.logins.push({ user: options.user, ok: false });
      return Promise.reject(
        serverError(
          1045,
          '28000',
          `Access denied for user '${options.user}'@'localhost' (using password: YES)`,
        ),
      );
    }
    if (!isAdmin) state.logins.push({ user: options.user, ok: true });
    let quiet = false;
    if (isAdmin) state.quietConnections.push(false);
    const index = state.quietConnections.length - 1;
    const conn = {
      on() {},
      destroy() {},
      end: () => Promise.resolve(),
      query(q: { sql: string }, values?: unknown[]) {
        const { sql } = q;
        const rows = (r: unknown[][]) => Promise.resolve([r, []]);
        if (sql === 'SELECT 1') return rows([[1]]);
        if (!isAdmin) return Promise.reject(serverError(1227, '42000', 'Access denied'));
        if (sql === 'SELECT @@SESSION.sql_mode') return rows([['STRICT_TRANS_TABLES']]);
        if (sql === 'SET SESSION sql_log_off = 1') {
          quiet = true;
          state.quietConnections[index] = true;
          return rows([]);
        }
        if (sql === 'SELECT VERSION()') return rows([[state.version]]);
        state.statements.push({ sql, ...(values ? { values } : {}) });
        if (state.failNext?.match.test(sql)) {
          const { error } = state.failNext;
          state.failNext = undefined;
          return Promise.reject(Object.assign(new Error(String(error.message)), error));
        }
        const [user, , password] = (values ?? []) as string[];
        const account = state.accounts.get(user as string);
        if (/^ALTER USER /.test(sql) && !account) {
          return Promise.reject(serverError(1396, 'HY000', `Operation ALTER USER failed for '${user}'@'%'`));
        }
        if (sql === 'ALTER USER ?@? IDENTIFIED BY ?') {
          account!.primary = password as string;
        } else if (sql === 'ALTER USER ?@? IDENTIFIED BY ? RETAIN CURRENT PASSWORD') {
          if (!quiet) state.broken.push('RETAIN outside a quiet session');
          account!.secondary = account!.primary;
          account!.primary = password as string;
        } else if (sql === 'ALTER USER ?@? DISCARD OLD PASSWORD') {
          delete account!.secondary;
        } else {
          return Promise.reject(serverError(1064, '42000', `the fake does not know "${sql}"`));
        }
        const keep = state.mustKeepWorking;
        if (keep && !logsIn(keep.user, keep.password))
          state.broken.push(`"${keep.password}" stopped working`);
        return rows([]);
      },
    };
    return Promise.resolve(conn);
  }
  return { state, createConnection, logsIn };
});

vi.mock('mysql2/promise', async (importOriginal) => {
  const real = (await importOriginal()) as { default: Record<string, unknown> };
  return { ...real, default: { ...real.default, createConnection: fake.createConnection } };
});

const { mysqlTarget } = await import('../../src/targets/mysql/mysql-target.ts');
const { TargetRefusedError, TargetUnavailableError } = await import('../../src/targets/types.ts');
type TargetSession = import('../../src/targets/types.ts').TargetSession;
type Connection = import('../../src/registry/types.ts').Connection;

const { state } = fake;
const USER = 'app';
let port = 40_000;

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
    createdAt: new Date().toISOString(),
    updatedAt: new Date().toISOString(),
  };
  return mysqlTarget.open(connection, state.admin, { timeoutMs: 1000 });
}

const passwordsOf = (user: string) => {
  const a = state.accounts.get(user);
  return a ? [a.primary, ...(a.secondary === undefined ? [] : [a.secondary])] : [];
};
const alters = () => state.statements.map(({ sql, values }) => ({ sql, values }));

beforeEach(() => {
  state.accounts.clear();
  state.statements.length = 0;
  state.quietConnections.length = 0;
  state.logins.length = 0;
  state.broken.length = 0;
  state.mustKeepWorking = undefined;
  state.failNext = undefined;
});

describe('MySQL target: which sessions are dual-password', () => {
  it.each([
    ['8.4.3', true],
    ['8.0.14', true],
    ['8.0.13', false],
    ['10.11.6-MariaDB-0+deb12u1', false],
  ])('a session with %s has setPasswords/removePassword: %s', async (version, dual) => {
    const session = await open(version);
    expect(typeof session.dualPasswords?.set === 'function').toBe(dual);
    expect(typeof session.dualPasswords?.remove === 'function').toBe(dual);
    expect((session as unknown as { serverVersion: string }).serverVersion).toBe(version);
  });

  it('asks the version once per host:port, not once per session', async () => {
    const session = await open('8.4.3');
    const versionLogins = state.quietConnections.length;
    const again = await mysqlTarget.open(
      {
        id: 'fake',
        type: 'mysql',
        host: '127.0.0.1',
        port: port - 1,
        admin: { username: state.admin.username },
        adminStore: { type: 'local' },
        labels: {},
        createdAt: '',
        updatedAt: '',
      },
      state.admin,
      { timeoutMs: 1000 },
    );
    expect(state.quietConnections.length).toBe(versionLogins);
    expect(typeof again.dualPasswords?.set).toBe(typeof session.dualPasswords?.set);
  });
});

describe('MySQL 8 setPasswords', () => {
  it('from one password: keep becomes the primary, then the new one with RETAIN CURRENT PASSWORD', async () => {
    const session = await open('8.4.3');
    state.accounts.set(USER, { primary: 'old-A' });
    state.mustKeepWorking = { user: USER, password: 'old-A' };
    await session.dualPasswords!.set(USER, { keep: 'old-A', password: 'new-B' });
    expect(alters()).toEqual([
      { sql: 'ALTER USER ?@? IDENTIFIED BY ?', values: [USER, '%', 'old-A'] },
      { sql: 'ALTER USER ?@? IDENTIFIED BY ? RETAIN CURRENT PASSWORD', values: [USER, '%', 'new-B'] },
    ]);
    expect(passwordsOf(USER)).toEqual(['new-B', 'old-A']);
    expect(state.broken).toEqual([]);
    // Both statements ran on one admin connection that first asked the server not to log them.
    expect(state.quietConnections.at(-1)).toBe(true);
  });

  it('drops an older password still held as the secondary (a grace period not yet over)', async () => {
    const session = await open('8.4.3');
    state.accounts.set(USER, { primary: 'old-A', secondary: 'older-P' });
    state.mustKeepWorking = { user: USER, password: 'old-A' };
    await session.dualPasswords!.set(USER, { keep: 'old-A', password: 'new-B' });
    expect(passwordsOf(USER)).toEqual(['new-B', 'old-A']);
    expect(fake.logsIn(USER, 'older-P')).toBe(false);
    expect(state.broken).toEqual([]);
  });

  it('keeps `keep` working when it is only the secondary, and makes it the secondary again', async () => {
    const session = await open('8.4.3');
    // An earlier attempt that got half-way, or a change made by hand: keep is the secondary of some other primary.
    state.accounts.set(USER, { primary: 'stray-X', secondary: 'old-A' });
    state.mustKeepWorking = { user: USER, password: 'old-A' };
    await session.dualPasswords!.set(USER, { keep: 'old-A', password: 'new-B' });
    expect(passwordsOf(USER)).toEqual(['new-B', 'old-A']);
    expect(fake.logsIn(USER, 'stray-X')).toBe(false);
    expect(state.broken).toEqual([]);
  });

  it('is idempotent: when both passwords already log in it changes nothing', async () => {
    const session = await open('8.4.3');
    state.accounts.set(USER, { primary: 'new-B', secondary: 'old-A' });
    await session.dualPasswords!.set(USER, { keep: 'old-A', password: 'new-B' });
    expect(alters()).toEqual([]);
    expect(passwordsOf(USER)).toEqual(['new-B', 'old-A']);
  });

  it('tries the new password first, so that a first attempt costs one failed login', async () => {
    const session = await open('8.4.3');
    state.accounts.set(USER, { primary: 'old-A' });
    await session.dualPasswords!.set(USER, { keep: 'old-A', password: 'new-B' });
    expect(state.logins).toEqual([{ user: USER, ok: false }]);
  });

  it('never puts a password in its errors, even when the server echoes it', async () => {
    const session = await open('8.4.3');
    state.accounts.set(USER, { primary: 'old-A' });
    state.failNext = {
      match: /RETAIN/,
      error: {
        errno: 3878,
        sqlState: 'HY000',
        code: 'ER_X',
        message: "Cannot retain 'new-B-secret' for 'old-A-secret'",
        sql: "ALTER USER 'app'@'%' IDENTIFIED BY 'new-B-secret' RETAIN CURRENT PASSWORD",
      },
    };
    const failure = await session
      .dualPasswords!.set(USER, {
        keep: 'old-A-secret',
        password: 'new-B-secret',
      })
      .then(
        () => undefined,
        (err: Error) => err,
      );
    expect(failure).toBeInstanceOf(TargetUnavailableError);
    expect(failure?.message).toMatch(/setting the passwords of account "app"@"%"/);
    expect(JSON.stringify({ message: failure?.message, cause: String(failure?.cause) })).not.toMatch(
      /new-B-secret|old-A-secret/,
    );
  });

  it('reports a missing account as refused (no retry helps)', async () => {
    const session = await open('8.4.3');
    await expect(session.dualPasswords!.set('ghost', { keep: 'a', password: 'b' })).rejects.toBeInstanceOf(
      TargetRefusedError,
    );
  });
});

describe('MySQL 8 removePassword', () => {
  it('grace period over: keep (the current password) stays the primary, the old secondary is discarded', async () => {
    const session = await open('8.4.3');
    state.accounts.set(USER, { primary: 'new-B', secondary: 'old-A' });
    state.mustKeepWorking = { user: USER, password: 'new-B' };
    await session.dualPasswords!.remove(USER, { remove: 'old-A', keep: 'new-B' });
    expect(alters()).toEqual([
      { sql: 'ALTER USER ?@? IDENTIFIED BY ?', values: [USER, '%', 'new-B'] },
      { sql: 'ALTER USER ?@? DISCARD OLD PASSWORD', values: [USER, '%'] },
    ]);
    expect(passwordsOf(USER)).toEqual(['new-B']);
    expect(state.broken).toEqual([]);
    expect(state.quietConnections.at(-1)).toBe(true);
  });

  it('rollback: the pending primary goes, the current secondary becomes the only password', async () => {
    const session = await open('8.4.3');
    // After setPasswords(keep: current, password: pending): {pending (primary), current (secondary)}.
    state.accounts.set(USER, { primary: 'pending-B', secondary: 'current-A' });
    state.mustKeepWorking = { user: USER, password: 'current-A' };
    await session.dualPasswords!.remove(USER, { remove: 'pending-B', keep: 'current-A' });
    expect(passwordsOf(USER)).toEqual(['current-A']);
    expect(fake.logsIn(USER, 'pending-B')).toBe(false);
    expect(state.broken).toEqual([]);
  });

  it('is idempotent: again on a user that holds only keep leaves it so', async () => {
    const session = await open('8.4.3');
    state.accounts.set(USER, { primary: 'new-B' });
    state.mustKeepWorking = { user: USER, password: 'new-B' };
    await session.dualPasswords!.remove(USER, { remove: 'old-A', keep: 'new-B' });
    await session.dualPasswords!.remove(USER, { remove: 'old-A', keep: 'new-B' });
    expect(passwordsOf(USER)).toEqual(['new-B']);
    expect(state.broken).toEqual([]);
  });
});
