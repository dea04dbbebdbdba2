// MySQL / MariaDB target on mysql2. Accounts are `user`@`accountHost` (connection option, default '%').
//
// Strategies: what `single-user` does depends on the server, which `open` asks (SELECT VERSION(), remembered per
// host:port for a minute). MySQL 8.0.14+ lets an account hold two passwords: its sessions have dualPasswords
// (set and remove: ALTER USER … RETAIN CURRENT PASSWORD / DISCARD OLD PASSWORD), so single-user overlaps the
// old and the new password and `gracePeriod` says when the old one goes. MariaDB and older MySQL hold one
// password per account: their sessions have no dualPasswords, and single-user has SPEC's brief window (new
// connections made with the old password fail between set and the readers picking up the new version;
// connections already open are not affected). `alternating-users` has no window on either.
//
// Passwords travel only in ALTER USER / CREATE USER … IDENTIFIED BY, quoted by mysql2's client-side escaping
// (each admin session first drops NO_BACKSLASH_ESCAPES from its sql_mode, which that escaping relies on) and
// never logged by Keyturn. mysql2 copies the formatted statement, password included, into its errors' `sql`
// property and into its `mysql2:query` diagnostics channel: errors are rebuilt here from errno and message only
// (never `err.sql`, never the raw error as a cause), and no tracing subscriber may be attached to mysql2 in a
// Keyturn process. The server's general log could still record the statement, so password statements first try
// `SET SESSION sql_log_off = 1` (needs SUPER; without it the statement still runs). The binary log is left on on
// purpose: account changes must reach the replicas.
//
// ALTER USER … IDENTIFIED BY resets the account's authentication to the default password plugin: on MariaDB an
// account `IDENTIFIED VIA unix_socket OR mysql_native_password` loses its unix_socket alternative.
//
// Leases: a lease user is an account with the grants, roles and default role of the credential's user, refused
// when those would let it act on other accounts (see accountAdminIn), at creation and at renewal. Neither
// server can expire an account at a given time, so Keyturn's revocation job and sweep drop it; dropping it also
// ends its open sessions, for which the admin needs PROCESS (to see other accounts' sessions: without it the
// process list shows only its own, and a lease user's open sessions would outlive the account until they
// disconnect) and CONNECTION_ADMIN or SUPER (MySQL) / CONNECTION ADMIN or SUPER (MariaDB) to kill them.
import { checkServerIdentity, TLSSocket } from 'node:tls';
import { authPlugins as standardAuthPlugins } from 'mysql2';
import mysql from 'mysql2/promise';
import type { Connection } from '../../registry/types.ts';
import {
  type AuthOutcome,
  type Check,
  type DualPasswords,
  type LeaseUserSpec,
  type LeaseUsers,
  type Login,
  nothingSent,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  TargetUnavailableError,
  type UserLabel,
  type UserTemplate,
} from '../types.ts';

type MysqlConnection = mysql.Connection;

const DEFAULT_ACCOUNT_HOST = '%';
const ACCOUNT_HOST_PATTERN = /^[A-Za-z0-9.\-_%:]{1,255}$/;

// Server errors at login that mean "these credentials were refused" (the account answers, the login does not work).
// 1698 is not only for empty passwords: for an account that does not exist, MariaDB fakes an authentication
// exchange (so that logins cannot tell which accounts exist) and answers 1698 instead of 1045 about one time in
// seven.
const AUTH_REJECTED: Record<number, string> = {
  1044: 'no access to the database',
  1045: 'access denied',
  1698: 'access denied',
  1820: 'password expired',
  1862: 'password expired',
  3118: 'account locked', // MySQL
  3955: 'account blocked after failed logins', // MySQL
  4151: 'account locked', // MariaDB
};

// Server errors that refuse the statement itself (privileges, unknown accounts or objects, bad names, password
// policy): retrying will not help. Together with the SQLSTATE classes below; everything else (connection limits,
// lost connections, timeouts, read-only during a failover, deadlocks) is "unavailable" and retried.
const REFUSED_ERRNOS = new Set([
  1044, 1045, 1049, 1064, 1095, 1130, 1131, 1132, 1133, 1141, 1142, 1143, 1146, 1211, 1227, 1396, 1410, 1449,
  1470, 1698, 1819, 1820, 1862, 3118, 3955, 4151,
]);
const REFUSED_SQLSTATE_CLASSES = new Set(['42', '28', '3D']);

interface MysqlError {
  code?: unknown;
  errno?: unknown;
  sqlState?: unknown;
  message?: unknown;
}

function serverErrno(err: unknown): number | undefined {
  const e = err as MysqlError | null;
  // Server errors carry the server's errno (before the handshake, without a SQLSTATE); Node's network errors carry
  // a negative one (ECONNREFUSED → -111).
  return typeof e?.errno === 'number' && e.errno > 0 ? e.errno : undefined;
}

/**
 * A code for the target error. mysql2 names server errors after MySQL's list, which gives MariaDB-only errnos the
 * wrong name (MariaDB's 4151 "account is locked" is MySQL's ER_BULK_PARSER_INCOMPLETE_ESCAPE_SEQUENCE): names are
 * kept only in the range both servers share.
 */
function errorCode(err: unknown): string | undefined {
  const e = err as MysqlError | null;
  const errno = serverErrno(err);
  if (errno !== undefined) {
    return errno < 1900 && typeof e?.code === 'string' ? e.code : `MYSQL_ERRNO_${errno}`;
  }
  return typeof e?.code === 'string' ? e.code : undefined;
}

/** The driver's message without any of `secrets` (mysql2 never puts the password there; a server echo could). */
function describe(err: unknown, secrets: string[]): string {
  const errno = serverErrno(err);
  // A syntax error quotes the statement near the error, which for password statements is the password.
  if (errno === 1064 && secrets.length > 0) return 'the server could not parse the statement (1064)';
  let text = err instanceof Error ? err.message : String((err as MysqlError | null)?.message ?? err);
  for (const secret of secrets) {
    if (!secret) continue;
    const escaped = mysql.escape(secret).slice(1, -1);
    text = text.split(secret).join('[redacted]').split(escaped).join('[redacted]');
  }
  return errno !== undefined ? `${text} (${errno})` : text;
}

/** Turns a driver error into a target error whose message names the failing action, never the password. */
function classify(action: string, err: unknown, secrets: string[] = []): Error {
  if (err instanceof TargetRefusedError || err instanceof TargetUnavailableError) return err;
  const errno = serverErrno(err);
  const sqlState = (err as MysqlError | null)?.sqlState;
  const code = errorCode(err);
  const message = `${action}: ${describe(err, secrets)}`;
  if (
    errno !== undefined &&
    (REFUSED_ERRNOS.has(errno) ||
      (typeof sqlState === 'string' && REFUSED_SQLSTATE_CLASSES.has(sqlState.slice(0, 2))))
  ) {
    return new TargetRefusedError(message, code);
  }
  // Never the raw error as the cause: a query error carries the formatted statement in `sql`.
  const carriesStatement = typeof err === 'object' && err !== null && 'sql' in err;
  return new TargetUnavailableError(message, code, carriesStatement ? {} : { cause: err });
}

function accountHostOf(connection: Connection): string {
  const host = connection.options?.accountHost;
  return typeof host === 'string' ? host : DEFAULT_ACCOUNT_HOST;
}

/**
 * Authentication methods (plugins) a MySQL or MariaDB server may ask for. mysql_native_password and
 * caching_sha2_password's fast path answer a scramble and never show the password; mysql_clear_password sends it in
 * clear text, sha256_password and caching_sha2_password's full authentication send the password itself, encrypted
 * to an RSA key the server hands out (an impostor hands out its own) or, in TLS, in clear.
 */
export const AUTH_METHODS = [
  'mysql_native_password',
  'caching_sha2_password',
  'sha256_password',
  'mysql_clear_password',
] as const;
type AuthMethod = (typeof AUTH_METHODS)[number];
/** Without `options.requireAuth`: the two scramble methods; caching_sha2 full authentication only in verified TLS. */
const DEFAULT_AUTH: readonly AuthMethod[] = ['mysql_native_password', 'caching_sha2_password'];
/** What the server asked for: a method, or caching_sha2_password's full authentication (counted as sha256_password). */
type AskedAuth = AuthMethod | 'caching_sha2_password full authentication';

/** The connection's accepted methods: `options.requireAuth` ("mysql_native_password,sha256_password"), else DEFAULT_AUTH. */
function allowedAuth(connection: Connection): readonly AuthMethod[] {
  const raw = connection.options?.requireAuth;
  if (typeof raw !== 'string') return DEFAULT_AUTH;
  return raw
    .split(',')
    .map((m) => m.trim())
    .filter((m): m is AuthMethod => (AUTH_METHODS as readonly string[]).includes(m));
}

function validateRequireAuth(value: unknown): string | undefined {
  const methods = typeof value === 'string' ? value.split(',').map((m) => m.trim()) : [];
  const unknown = methods.filter((m) => !(AUTH_METHODS as readonly string[]).includes(m));
  if (methods.length === 0 || methods.includes('') || unknown.length > 0) {
    return `requireAuth must be a comma-separated list of ${AUTH_METHODS.join(', ')}${unknown.length > 0 ? ` (not ${unknown.map((u) => `"${u}"`).join(', ')})` : ''}`;
  }
  return undefined;
}

const AUTH_WHAT: Record<AskedAuth, string> = {
  mysql_native_password: 'mysql_native_password authentication',
  caching_sha2_password: 'caching_sha2_password authentication',
  sha256_password:
    'sha256_password authentication, which sends the password itself (encrypted to an RSA key the server sends, or in clear inside TLS)',
  mysql_clear_password: 'mysql_clear_password authentication, which sends the password in clear text',
  'caching_sha2_password full authentication':
    'caching_sha2_password full authentication, which sends the password itself (encrypted to an RSA key the server sends, or in clear inside TLS; a real server asks for it when the account is not in its cache: after a password change or a restart)',
};

/** The server asked for an authentication method the connection does not accept; no password was sent. */
export class AuthMethodRefusedError extends TargetRefusedError {
  /** `unverified`: TLS is verify-full, but the server's certificate was not checked against the connection's host. */
  constructor(connection: Connection, asked: AskedAuth, allowed: readonly AuthMethod[], unverified?: string) {
    const fullAuth = asked === 'caching_sha2_password full authentication';
    const include = fullAuth ? 'sha256_password' : asked;
    const fix = unverified
      ? `give it a certificate that names ${connection.host} (${unverified})`
      : fullAuth
        ? `set the connection's tls.mode to verify-full (the server is then authenticated before it gets the password)`
        : asked === 'mysql_clear_password' || asked === 'sha256_password'
          ? `give its accounts caching_sha2_password (MySQL) or mysql_native_password (MariaDB)`
          : `give its accounts one of the methods the connection accepts`;
    super(
      `${connection.host}:${connection.port} asked for ${AUTH_WHAT[asked]}, which connection "${connection.id}" does not accept (it accepts ${allowed.join(', ')}${fullAuth ? "; caching_sha2_password's full authentication only with sha256_password listed or in TLS verify-full" : ''}), so no password was sent. If that server is really yours, ${fix}, or, as an admin, set the connection's options.requireAuth to include "${include}"`,
      'auth-method-refused',
    );
    this.name = 'AuthMethodRefusedError';
  }
}

/** caching_sha2_password's AuthMoreData asking for full authentication (the password itself). */
const PERFORM_FULL_AUTHENTICATION = Buffer.from([4]);

/**
 * Why the session's TLS peer is not the verified `connection.host`, or undefined when it is. mysql2 checks a host
 * name's certificate, but for an IP address it checks the name "localhost": before the password goes to a server
 * in verify-full, its certificate is checked against the connection's host here.
 */
function unverifiedPeer(connection: Connection, stream: unknown): string | undefined {
  if (!(stream instanceof TLSSocket) || !stream.authorized) return 'the session is not in verified TLS';
  const problem = checkServerIdentity(connection.host, stream.getPeerCertificate());
  return problem ? `its certificate does not name ${connection.host}` : undefined;
}

/**
 * mysql2's authentication plugins behind the connection's list, like libpq's require_auth: a plugin the list does
 * not name fails the connect before it answers, and caching_sha2_password's full authentication goes on only with
 * sha256_password listed or in TLS verify-full to a certificate that names the connection's host. All four are given, which also keeps mysql2 from answering the server's
 * greeting with a password-sending method (with a custom plugin for the greeting's method, mysql2 answers with a
 * mysql_native_password scramble and lets the server switch, which goes through these); a plugin name mysql2 does
 * not know fails the connect in mysql2. `refused` keeps the refusal for the caller, whatever mysql2 makes of it.
 */
function guardedAuthPlugins(connection: Connection): {
  plugins: NonNullable<mysql.ConnectionOptions['authPlugins']>;
  refused(): AuthMethodRefusedError | undefined;
  switched(): boolean;
} {
  const allowed = allowedAuth(connection);
  let refusal: AuthMethodRefusedError | undefined;
  let switched = false;
  const refuse = (asked: AskedAuth, unverified?: string): never => {
    refusal = new AuthMethodRefusedError(connection, asked, allowed, unverified);
    // Thrown synchronously: mysql2 then fails the handshake as fatal and closes the socket, sending nothing more.
    throw refusal;
  };
  type Plugin = NonNullable<mysql.ConnectionOptions['authPlugins']>[string];
  type Metadata = Parameters<Plugin>[0];
  const guard =
    (
      method: AuthMethod,
      wrap?: (answer: ReturnType<Plugin>, metadata: Metadata) => ReturnType<Plugin>,
    ): Plugin =>
    (metadata) => {
      switched = true;
      if (!allowed.includes(method)) refuse(method);
      const answer = standardAuthPlugins[method]({})(metadata);
      return wrap ? wrap(answer, metadata) : answer;
    };
  return {
    plugins: {
      mysql_native_password: guard('mysql_native_password'),
      mysql_clear_password: guard('mysql_clear_password'),
      sha256_password: guard('sha256_password'),
      caching_sha2_password: guard('caching_sha2_password', (answer, metadata) => {
        let first = true;
        return (data) => {
          // After the scramble, the server answers 3 (fast authentication done) or 4 (send the password); mysql2's
          // plugin fails on anything else.
          if (!first && PERFORM_FULL_AUTHENTICATION.equals(data) && !allowed.includes('sha256_password')) {
            if (connection.tls?.mode !== 'verify-full') refuse('caching_sha2_password full authentication');
            const stream = (metadata.connection as unknown as { stream?: unknown }).stream;
            const unverified = unverifiedPeer(connection, stream);
            if (unverified) refuse('caching_sha2_password full authentication', unverified);
          }
          first = false;
          return answer(data);
        };
      }),
    },
    refused: () => refusal,
    switched: () => switched,
  };
}

function connectionOptions(
  connection: Connection,
  login: Login,
  timeoutMs: number,
  withDatabase: boolean,
  authPlugins: mysql.ConnectionOptions['authPlugins'],
): mysql.ConnectionOptions {
  const tls = connection.tls?.mode ?? 'disable';
  return {
    host: connection.host,
    port: connection.port,
    user: login.username,
    password: login.password,
    ...(withDatabase && connection.database ? { database: connection.database } : {}),
    connectTimeout: timeoutMs,
    multipleStatements: false,
    connectAttributes: { program_name: 'keyturn' },
    authPlugins,
    ...(tls === 'disable'
      ? {}
      : tls === 'require'
        ? { ssl: { rejectUnauthorized: false } }
        : {
            ssl: {
              rejectUnauthorized: true,
              verifyIdentity: true,
              ...(connection.tls?.ca ? { ca: connection.tls.ca } : {}),
            },
          }),
  };
}

/** Closes a connection without ever waiting forever: end() waits for the server's answer to COM_QUIT. */
async function close(conn: MysqlConnection, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const ended = conn.end().then(
    () => 'ended' as const,
    () => 'failed' as const,
  );
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), Math.min(timeoutMs, 5000));
  });
  if ((await Promise.race([ended, timedOut])) !== 'ended') conn.destroy();
  clearTimeout(timer);
}

const quoteBacktick = (s: string): string => `\`${s.replaceAll('`', '``')}\``;
const quoteSingle = (s: string): string => `'${s.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`;

// Tokens of a SHOW GRANTS line: blanks, quoted strings and identifiers (with their escapes), other runs.
const TOKEN_QUOTED = /'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`(?:[^`]|``)*`/g;
const TOKEN = /\s+|'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`(?:[^`]|``)*`|[^\s'"`]+/gy;

/** Drops `IDENTIFIED BY PASSWORD '…'` / `IDENTIFIED VIA … USING '…'` from the part of a line after the grantee. */
function withoutAuthentication(tail: string): string {
  const tokens = tail.match(TOKEN) ?? [];
  if (tokens.join('') !== tail) throw new Error('unbalanced quotes');
  const kept: string[] = [];
  let skipping = false;
  for (const token of tokens) {
    const word = token.toUpperCase();
    if (word === 'IDENTIFIED') skipping = true;
    else if (skipping && (word === 'REQUIRE' || word === 'WITH')) skipping = false;
    if (!skipping) kept.push(token);
  }
  const out = kept.join('').replace(/\s+/g, ' ').trim();
  // Whatever the server printed, a password or its hash is never copied to another account.
  if (/\b(PASSWORD|IDENTIFIED|USING)\b/i.test(out.replace(TOKEN_QUOTED, ''))) {
    throw new Error('an authentication clause remains');
  }
  return out;
}

/**
 * Rewrites one line of SHOW GRANTS FOR `from` so that it applies to `to` (an escaped grantee), or null when there
 * is nothing to copy (the bare `GRANT USAGE ON *.*`). MariaDB prints `GRANT … TO \`u\`@\`h\` [IDENTIFIED BY
 * PASSWORD '*hash'] [REQUIRE …] [WITH …]`, role grants `GRANT \`r\` TO \`u\`@\`h\``, and `SET DEFAULT ROLE \`r\`
 * FOR \`u\`@\`h\``; older servers quote with single quotes; MySQL 8 with partial revokes prints `REVOKE … FROM`.
 * Exported for unit tests.
 */
export function rewriteGrant(line: string, from: { user: string; host: string }, to: string): string | null {
  const text = line.trim();
  if (!/^(GRANT|REVOKE|SET\s+DEFAULT\s+ROLE)\s/i.test(text)) {
    throw new Error(`unexpected statement "${text.split(/\s/, 1)[0]}"`);
  }
  for (const grantee of [
    `${quoteBacktick(from.user)}@${quoteBacktick(from.host)}`,
    `${quoteSingle(from.user)}@${quoteSingle(from.host)}`,
  ]) {
    for (let at = text.lastIndexOf(grantee); at > 0; at = text.lastIndexOf(grantee, at - 1)) {
      const head = text.slice(0, at);
      const rest = text.slice(at + grantee.length);
      if (!/\s(TO|FROM|FOR)\s+$/i.test(head) || !/^(\s|$)/.test(rest)) continue;
      const tail = withoutAuthentication(rest);
      if (/^GRANT\s+USAGE\s+ON\s+\*\.\*\s+TO\s+$/i.test(head) && tail === '') return null;
      return `${head}${to}${tail ? ` ${tail}` : ''}`;
    }
  }
  throw new Error('the grantee is not where it was expected');
}

// Global privileges with which an account can change another account's password (or its authentication), act as
// another account, or make access that outlives it. CREATE USER, SUPER, ROLE_ADMIN, SYSTEM_USER and GRANT OPTION
// directly; SET USER (MariaDB) / SET_USER_ID, SET_ANY_DEFINER (MySQL) through a routine or view it gives any DEFINER;
// CONNECTION ADMIN (MariaDB) / SYSTEM_VARIABLES_ADMIN (MySQL) through init_connect, which runs as every account that
// logs in (`SET PASSWORD = …` runs as the credential's user at its next login); REPLICATION SLAVE ADMIN (MariaDB) /
// REPLICATION_SLAVE_ADMIN (MySQL) by making the server replicate from one whose events change accounts; BINLOG REPLAY
// (MariaDB) / BINLOG_ADMIN, REPLICATION_APPLIER (MySQL) by replaying such events itself.
const ACCOUNT_ADMIN_GLOBAL = new Set([
  'ALL',
  'ALL PRIVILEGES',
  'CREATE USER',
  'SUPER',
  'GRANT OPTION',
  'ROLE_ADMIN',
  'SYSTEM_USER',
  'SET USER',
  'SET_USER_ID',
  'SET_ANY_DEFINER',
  'CONNECTION ADMIN',
  'SYSTEM_VARIABLES_ADMIN',
  'REPLICATION SLAVE ADMIN',
  'REPLICATION_SLAVE_ADMIN',
  'BINLOG REPLAY',
  'BINLOG_ADMIN',
  'REPLICATION_APPLIER',
]);
// Privileges on the `mysql` schema (granted on it, on a pattern that matches it, or on *.*) that let an account
// write the account tables: UPDATE mysql.global_priv, or replace a table of it.
const ACCOUNT_ADMIN_ON_MYSQL = new Set([
  'ALL',
  'ALL PRIVILEGES',
  'UPDATE',
  'INSERT',
  'DELETE',
  'CREATE',
  'DROP',
  'ALTER',
]);

/** Whether a database name pattern of a grant (`%` and `_` wildcards, `\` escapes, as MySQL reads it) matches `name`. */
function dbPatternMatches(pattern: string, name: string): boolean {
  const literal = (ch: string) => ch.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  let source = '';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i] ?? '';
    if (ch === '\\' && i + 1 < pattern.length) source += literal(pattern[++i] ?? '');
    else source += ch === '%' ? '.*' : ch === '_' ? '.' : literal(ch);
  }
  // Case-insensitively: whether the server folds names (lower_case_table_names) is not asked.
  return new RegExp(`^${source}$`, 'is').test(name);
}

/**
 * Why a copied grant would let a lease account act on other accounts (change a password, grant onwards, act as
 * another user), or null. Exported for unit tests.
 */
export function accountAdminIn(grant: string): string | null {
  // Blanks inside quoted names become a character no pattern or keyword matches, so that the line splits on blanks.
  const text = grant.trim().replace(TOKEN_QUOTED, (q) => q.replace(/\s/g, '\u0001'));
  if (/\bWITH\b.*\bGRANT\s+OPTION\b/i.test(text)) return 'WITH GRANT OPTION';
  // A role granted WITH ADMIN OPTION: the lease could grant that role to other accounts, which outlive it.
  if (/\bWITH\b.*\bADMIN\s+OPTION\b/i.test(text)) return 'WITH ADMIN OPTION';
  const on = /^GRANT\s+(.+?)\s+ON\s+(\S+)\s+TO\s/i.exec(text);
  if (!on) return null;
  const [, privilegeList = '', object = ''] = on;
  if (/^PROXY$/i.test(privilegeList.trim())) return 'PROXY';
  // "SELECT, UPDATE (`a`, `b`), CREATE USER": the names, without column lists.
  const privileges = privilegeList
    .replace(/\([^)]*\)/g, '')
    .split(',')
    .map((p) => p.trim().replace(/\s+/g, ' ').toUpperCase());
  const db = /^(\*|`(?:[^`]|``)*`|[^.`]+)\./.exec(object)?.[1];
  if (db === undefined) return null; // FUNCTION / PROCEDURE / PACKAGE grants: EXECUTE and ALTER ROUTINE only
  const hit = (set: Set<string>) => privileges.find((p) => set.has(p));
  if (db === '*') {
    const global = hit(ACCOUNT_ADMIN_GLOBAL) ?? hit(ACCOUNT_ADMIN_ON_MYSQL);
    return global ? `${global} ON *.*` : null;
  }
  const name = (db.startsWith('`') ? db.slice(1, -1).replaceAll('``', '`') : db).replaceAll('\u0001', ' ');
  const write = dbPatternMatches(name, 'mysql') ? hit(ACCOUNT_ADMIN_ON_MYSQL) : undefined;
  if (!write) return null;
  const shown = object.replaceAll('\u0001', ' ').replaceAll('`', '');
  return `${write} ON ${shown}${name === 'mysql' ? '' : ' (its pattern matches the mysql schema)'}`;
}

/** The role a `GRANT role TO …` line grants (no ON clause), as SHOW GRANTS FOR accepts it, or null. */
function grantedRole(grant: string): string | null {
  const m =
    /^GRANT\s+((?:`(?:[^`]|``)*`|'(?:[^'\\]|\\.)*')(?:@(?:`(?:[^`]|``)*`|'(?:[^'\\]|\\.)*'))?)\s+TO\s/i.exec(
      grant.trim(),
    );
  return m?.[1] ?? null;
}

function validateAccountHost(value: unknown): string | undefined {
  if (typeof value !== 'string') return 'accountHost must be a string';
  if (!ACCOUNT_HOST_PATTERN.test(value)) {
    return 'accountHost must be a MySQL host pattern: 1-255 letters, digits, ".", "-", "_", "%" or ":"';
  }
  return undefined;
}

/**
 * Whether a server whose `SELECT VERSION()` answers `version` lets an account hold two passwords (ALTER USER
 * … RETAIN CURRENT PASSWORD): MySQL from 8.0.14 on. MariaDB, whose VERSION() says so ("10.11.6-MariaDB-0+deb12u1"),
 * never does, whatever its number; neither does an answer that does not start with a version number.
 */
export function supportsDualPasswords(version: string): boolean {
  if (/mariadb/i.test(version)) return false;
  const match = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(version.trim());
  if (!match) return false;
  const [major, minor, patch] = [Number(match[1]), Number(match[2]), Number(match[3] ?? 0)];
  if (major !== 8) return major > 8;
  return minor > 0 || patch >= 14;
}

/**
 * Whether a server whose `SELECT VERSION()` answers `version` keeps attributes on accounts (CREATE/ALTER USER …
 * ATTRIBUTE, INFORMATION_SCHEMA.USER_ATTRIBUTES): MySQL from 8.0.21 on; never MariaDB.
 */
export function supportsAccountAttributes(version: string): boolean {
  if (/mariadb/i.test(version)) return false;
  const match = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(version.trim());
  if (!match) return false;
  const [major, minor, patch] = [Number(match[1]), Number(match[2]), Number(match[3] ?? 0)];
  if (major !== 8) return major > 8;
  return minor > 0 || patch >= 21;
}

/** The key of an account's attributes under which Keyturn keeps its label. */
const LABEL_ATTRIBUTE = 'keyturn';

/** How long a server's VERSION() is remembered: each rotation step opens a session, and each asks. */
const VERSION_TTL_MS = 60_000;
/** VERSION() by host:port, with when it was asked. */
const serverVersions = new Map<string, { version: string; at: number }>();

class MysqlSession implements TargetSession {
  readonly #connection: Connection;
  readonly #admin: Login;
  readonly #timeoutMs: number;
  protected readonly accountHost: string;
  /** The server's VERSION(), e.g. "8.4.3" or "10.11.6-MariaDB-0+deb12u1" (the registry names it when refusing). */
  readonly serverVersion: string;

  constructor(connection: Connection, admin: Login, timeoutMs: number, serverVersion: string) {
    this.#connection = connection;
    this.#admin = admin;
    this.#timeoutMs = timeoutMs;
    this.accountHost = accountHostOf(connection);
    this.serverVersion = serverVersion;
  }

  /** The lease verbs (TargetSession.leaseUsers): this downstream makes short-lived users. */
  readonly leaseUsers: LeaseUsers = {
    create: (username, password, spec) => this.#createLeaseUser(username, password, spec),
    extend: (username, expiresAt) => this.#extendLeaseUser(username, expiresAt),
    drop: (username, spec) => this.#dropLeaseUser(username, spec),
  };

  /**
   * The server's VERSION(), asked with the admin login at most once a minute per host:port. Throws the
   * classified error when the server cannot be asked (TargetUnavailableError: the caller retries).
   */
  static async versionOf(connection: Connection, admin: Login, timeoutMs: number): Promise<string> {
    const key = `${connection.host}:${connection.port}`;
    const known = serverVersions.get(key);
    if (known && Date.now() - known.at < VERSION_TTL_MS) return known.version;
    const probe = new MysqlSession(connection, admin, timeoutMs, '');
    const version = await probe.asAdmin('asking the server its version', async (c) => {
      const [value] = (await probe.query(c, 'SELECT VERSION()'))[0] ?? [];
      return String(value ?? '');
    });
    serverVersions.set(key, { version, at: Date.now() });
    return version;
  }

  protected account(username: string): string {
    return `"${username}"@"${this.accountHost}"`;
  }

  async #connect(login: Login, withDatabase: boolean): Promise<MysqlConnection> {
    const auth = guardedAuthPlugins(this.#connection);
    let conn: MysqlConnection;
    try {
      conn = await mysql.createConnection(
        connectionOptions(this.#connection, login, this.#timeoutMs, withDatabase, auth.plugins),
      );
    } catch (err) {
      throw auth.refused() ?? err;
    }
    // A fatal error while no query is pending (server restart) must not crash the process.
    conn.on('error', () => {});
    // The server took mysql2's first answer, a mysql_native_password scramble, without switching methods: it
    // authenticated with mysql_native_password, which the connection may not accept. Nothing has run yet.
    const allowed = allowedAuth(this.#connection);
    if (!auth.switched() && !allowed.includes('mysql_native_password')) {
      conn.destroy();
      throw new AuthMethodRefusedError(this.#connection, 'mysql_native_password', allowed);
    }
    // Statements carry passwords (ALTER USER … IDENTIFIED BY): in verify-full they go only to a server whose
    // certificate names the connection's host, which mysql2 does not check for an IP address.
    if (this.#connection.tls?.mode === 'verify-full') {
      const core = (conn as unknown as { connection?: { stream?: unknown } }).connection;
      const unverified = unverifiedPeer(this.#connection, core?.stream);
      if (unverified) {
        conn.destroy();
        const { host, port, id } = this.#connection;
        throw new TargetRefusedError(
          `${host}:${port} is not verified for connection "${id}" (TLS verify-full): ${unverified}, so the session was closed before any statement. Give the server a certificate whose subjectAltName names ${host}, or set the connection's host to a name its certificate holds`,
          'tls-unverified',
        );
      }
    }
    return conn;
  }

  protected async query(conn: MysqlConnection, sql: string, values?: unknown[]): Promise<unknown[][]> {
    const [rows] = await conn.query({ sql, timeout: this.#timeoutMs, rowsAsArray: true }, values);
    return Array.isArray(rows) ? (rows as unknown[][]) : [];
  }

  /** Runs `fn` on a fresh connection logged in as admin; short-lived connections keep no state across steps. */
  protected async asAdmin<T>(
    action: string,
    fn: (conn: MysqlConnection) => Promise<T>,
    options: { secrets?: string[]; quiet?: boolean } = {},
  ): Promise<T> {
    let conn: MysqlConnection;
    try {
      conn = await this.#connect(this.#admin, false);
    } catch (err) {
      const where = `${this.#connection.host}:${this.#connection.port}`;
      throw nothingSent(
        classify(`${action}: logging in to ${where} as admin "${this.#admin.username}" failed`, err),
      );
    }
    try {
      // mysql2 escapes with backslashes, which NO_BACKSLASH_ESCAPES would turn into literal characters.
      const [mode] = (await this.query(conn, 'SELECT @@SESSION.sql_mode'))[0] ?? [];
      if (typeof mode === 'string' && /NO_BACKSLASH_ESCAPES/i.test(mode)) {
        const modes = mode.split(',').filter((m) => m.toUpperCase() !== 'NO_BACKSLASH_ESCAPES');
        await this.query(conn, 'SET SESSION sql_mode = ?', [modes.join(',')]);
      }
      if (options.quiet) await this.query(conn, 'SET SESSION sql_log_off = 1').catch(() => {});
      return await fn(conn);
    } catch (err) {
      throw classify(action, err, options.secrets);
    } finally {
      await close(conn, this.#timeoutMs);
    }
  }

  async authenticate(login: Login): Promise<AuthOutcome> {
    let conn: MysqlConnection | undefined;
    try {
      conn = await this.#connect(login, true);
      await this.query(conn, 'SELECT 1');
      return { ok: true };
    } catch (err) {
      const errno = serverErrno(err);
      // SQLSTATE 28000 is "invalid authorization specification", whatever errno a server version gives it.
      const why =
        errno === undefined
          ? undefined
          : (AUTH_REJECTED[errno] ??
            ((err as MysqlError).sqlState === '28000' ? 'authorization refused' : undefined));
      if (errno !== undefined && why) {
        return {
          ok: false,
          reason: 'rejected',
          message: `MySQL refused the login of "${login.username}": ${why} (${errno})`,
        };
      }
      throw classify(`logging in as "${login.username}"`, err, [login.password]);
    } finally {
      if (conn) await close(conn, this.#timeoutMs);
    }
  }

  async #exists(conn: MysqlConnection, username: string): Promise<boolean> {
    const rows = await this.query(conn, 'SELECT 1 FROM mysql.user WHERE User = ? AND Host = ?', [
      username,
      this.accountHost,
    ]);
    return rows.length > 0;
  }

  async checkAdmin(): Promise<Check[]> {
    const admin = this.#admin.username;
    return this.asAdmin(`checking the privileges of admin "${admin}"`, async (c) => {
      // The admin's global grants as the server reports them (SHOW GRANTS: its own, whatever host it matched).
      const grants = (await this.query(c, 'SHOW GRANTS')).map((row) => String(row[0]));
      const global = grants.filter((g) => /\bON \*\.\* TO\b/i.test(g));
      const ok = global.some((g) => /^GRANT (ALL PRIVILEGES|.*\bCREATE USER\b).* ON \*\.\*/i.test(g));
      return [
        {
          name: 'CREATE USER',
          ok,
          message: ok
            ? `"${admin}" may change other accounts (CREATE USER)`
            : `"${admin}" lacks the global CREATE USER privilege, which ALTER USER of other accounts needs: GRANT CREATE USER ON *.* TO '${admin}'@'<host>' (and GRANT OPTION, for alternating users)`,
        },
      ];
    });
  }

  async userExists(username: string): Promise<boolean> {
    return this.asAdmin(`looking up account ${this.account(username)}`, (c) => this.#exists(c, username));
  }

  async #setPassword(conn: MysqlConnection, username: string, password: string): Promise<void> {
    await this.query(conn, 'ALTER USER ?@? IDENTIFIED BY ?', [username, this.accountHost, password]);
  }

  async updatePassword(username: string, password: string): Promise<void> {
    await this.asAdmin(
      `setting the password of account ${this.account(username)}`,
      (c) => this.#setPassword(c, username, password),
      { secrets: [password], quiet: true },
    );
  }

  /** The statements that give `to` the grants, roles and default role of `like`, password clauses removed. */
  async #grantsOf(conn: MysqlConnection, like: string, to: string): Promise<string[]> {
    const rows = await this.query(conn, 'SHOW GRANTS FOR ?@?', [like, this.accountHost]);
    const statements: string[] = [];
    for (const [line] of rows) {
      let statement: string | null;
      try {
        statement = rewriteGrant(String(line), { user: like, host: this.accountHost }, to);
      } catch (err) {
        // The line itself may hold a password hash: only its first word goes into the message.
        throw new TargetRefusedError(
          `SHOW GRANTS FOR ${this.account(like)} printed a line Keyturn cannot copy ("${String(line).trim().split(/\s/, 1)[0]} …": ${(err as Error).message})`,
        );
      }
      if (statement) statements.push(statement);
    }
    // MySQL 8 keeps default roles out of SHOW GRANTS (MariaDB prints SET DEFAULT ROLE, handled above).
    const [version] = (await this.query(conn, 'SELECT VERSION()'))[0] ?? [];
    if (!/mariadb/i.test(String(version))) {
      const roles = await this.query(
        conn,
        'SELECT DEFAULT_ROLE_USER, DEFAULT_ROLE_HOST FROM mysql.default_roles WHERE USER = ? AND HOST = ?',
        [like, this.accountHost],
      );
      if (roles.length > 0) {
        const list = roles.map(([u, h]) => `${mysql.escape(String(u))}@${mysql.escape(String(h))}`);
        statements.push(`SET DEFAULT ROLE ${list.join(', ')} TO ${to}`);
      }
    }
    return statements;
  }

  async createUser(
    username: string,
    password: string,
    template: UserTemplate,
  ): Promise<'created' | 'updated'> {
    return this.#createLike(
      `creating account ${this.account(username)} like ${this.account(template.like)}`,
      username,
      password,
      template.like,
      undefined,
      template,
    );
  }

  /**
   * An account's label: the "keyturn" key of its attributes (MySQL 8.0.21+, INFORMATION_SCHEMA.USER_ATTRIBUTES;
   * null when it has none), or null when the account does not exist.
   */
  protected async accountLabel(c: MysqlConnection, username: string): Promise<UserLabel | null> {
    if (!(await this.#exists(c, username))) return null;
    const rows = await this.query(
      c,
      'SELECT ATTRIBUTE FROM INFORMATION_SCHEMA.USER_ATTRIBUTES WHERE USER = ? AND HOST = ?',
      [username, this.accountHost],
    );
    const raw = rows[0]?.[0];
    let attributes: unknown = raw;
    if (typeof raw === 'string') {
      try {
        attributes = JSON.parse(raw);
      } catch {
        attributes = null;
      }
    }
    const label =
      attributes && typeof attributes === 'object'
        ? (attributes as Record<string, unknown>)[LABEL_ATTRIBUTE]
        : null;
    return { label: typeof label === 'string' ? label : null };
  }

  /**
   * createUser on an account that exists: refused, unchanged, when the template says it must be new (it appeared
   * since Keyturn looked), or, where accounts carry labels, must carry Keyturn's label and does not.
   */
  async #mayChange(c: MysqlConnection, username: string, template: Partial<UserTemplate>): Promise<void> {
    if (template.exclusive) {
      throw new TargetRefusedError(
        `account ${this.account(username)} appeared while Keyturn was about to create it: someone else made it, so it was not changed`,
        'user-exists',
      );
    }
    if (!template.label || !supportsAccountAttributes(this.serverVersion)) return;
    const found = await this.accountLabel(c, username);
    if (found && found.label !== template.label) {
      throw new TargetRefusedError(
        `account ${this.account(username)} exists without Keyturn's label "${template.label}" (its "${LABEL_ATTRIBUTE}" attribute is ${found.label === null ? 'not set' : `"${found.label}"`}): Keyturn did not make it for this credential, so it was not changed`,
        'not-keyturns',
      );
    }
  }

  /**
   * Creates `username` with `password` and the grants, roles and default role of `like`; an existing account
   * only gets the password, unless `template` refuses it (see #mayChange). Where accounts carry attributes, one made
   * with `template.label` gets it in its CREATE USER.
   */
  async #createLike(
    action: string,
    username: string,
    password: string,
    like: string,
    vet?: (c: MysqlConnection) => Promise<void>,
    template: Partial<UserTemplate> = {},
  ): Promise<'created' | 'updated'> {
    return this.asAdmin(
      action,
      async (c) => {
        await vet?.(c);
        if (await this.#exists(c, username)) {
          await this.#mayChange(c, username, template);
          await this.#setPassword(c, username, password);
          return 'updated';
        }
        if (!(await this.#exists(c, like))) {
          throw new TargetRefusedError(
            `account ${this.account(like)} does not exist, so ${this.account(username)} cannot copy its grants`,
          );
        }
        // Read and rewrite every grant before creating anything: a line that cannot be copied leaves no account.
        const grants = await this.#grantsOf(c, like, mysql.format('?@?', [username, this.accountHost]));
        try {
          const label =
            template.label && supportsAccountAttributes(this.serverVersion) ? template.label : undefined;
          // The label in the same statement: an account Keyturn made never exists without it.
          await this.query(c, `CREATE USER ?@? IDENTIFIED BY ?${label ? ' ATTRIBUTE ?' : ''}`, [
            username,
            this.accountHost,
            password,
            ...(label ? [JSON.stringify({ [LABEL_ATTRIBUTE]: label })] : []),
          ]);
        } catch (err) {
          // Another worker created it between the look-up and CREATE USER (ER_CANNOT_USER): set its password.
          if (serverErrno(err) !== 1396 || !(await this.#exists(c, username))) throw err;
          await this.#mayChange(c, username, template);
          await this.#setPassword(c, username, password);
          return 'updated';
        }
        for (const grant of grants) {
          try {
            await this.query(c, grant);
          } catch (err) {
            // A half-granted account would be taken for a finished one by the next attempt ("exists → set the
            // password"): take it back so that the retry starts over.
            await this.query(c, 'DROP USER IF EXISTS ?@?', [username, this.accountHost]).catch(() => {});
            throw classify(`${action}: copying "${grant}"`, err);
          }
        }
        return 'created';
      },
      { secrets: [password], quiet: true },
    );
  }

  async accessOf(username: string): Promise<string[] | null> {
    return this.asAdmin(`reading the grants of account ${this.account(username)}`, async (c) => {
      if (!(await this.#exists(c, username))) return null;
      return (await this.#grantsOf(c, username, '<user>')).sort();
    });
  }

  async deleteUser(username: string): Promise<void> {
    await this.asAdmin(`dropping account ${this.account(username)}`, async (c) => {
      await this.query(c, 'DROP USER IF EXISTS ?@?', [username, this.accountHost]);
    });
  }

  // Leases

  /**
   * An account `username`@accountHost with the grants, roles and default role of `spec.of`; an existing one only
   * gets the password (a retry). `spec.expiresAt` is not used: neither MySQL nor MariaDB can end an account at a
   * given time (PASSWORD EXPIRE only forces a password change at the next login, which a client could make), so
   * Keyturn's lease revocation job and its sweep drop the account when the lease ends.
   */
  async #createLeaseUser(username: string, password: string, spec: LeaseUserSpec): Promise<void> {
    if (username === spec.of) {
      throw new TargetRefusedError(
        `lease account ${this.account(username)} cannot be the credential's own account`,
      );
    }
    await this.#createLike(
      `creating lease account ${this.account(username)} like ${this.account(spec.of)}`,
      username,
      password,
      spec.of,
      (c) => this.#refuseAccountAdmin(c, spec.of, username),
    );
  }

  /**
   * Refuses a lease when the grants it would copy (the account's, and its roles', recursively) let it act on other
   * accounts: with CREATE USER, UPDATE on mysql.* and the like it could change the credential's password, with
   * GRANT OPTION pass its privileges to accounts that outlive it, with PROXY act as another user.
   */
  async #refuseAccountAdmin(c: MysqlConnection, of: string, username: string): Promise<void> {
    if (!(await this.#exists(c, of))) return; // #createLike says that the account is missing
    const found = await this.#accountAdminOf(c, of);
    if (found.length > 0) {
      throw new TargetRefusedError(
        `${this.account(of)} holds ${found.join(', ')}: a lease account with its grants could change the passwords of other accounts (${this.account(of)}'s included) or keep access after the lease, so lease ${this.account(username)} is not made. Give the application's account only the privileges it needs on its own databases, and ask again`,
        'lease-would-alter-accounts',
      );
    }
  }

  /** What in an account's grants, and its roles' (recursively), lets it act on other accounts (see accountAdminIn). */
  async #accountAdminOf(c: MysqlConnection, user: string): Promise<string[]> {
    const found: string[] = [];
    const seen = new Set<string>();
    // Every role reached is read once (MySQL and MariaDB refuse cycles; `seen` stops one anyway), however deep.
    const visit = async (grantee: string, label: string): Promise<void> => {
      if (seen.has(grantee)) return;
      seen.add(grantee);
      const rows = await this.query(c, `SHOW GRANTS FOR ${grantee}`);
      for (const [line] of rows) {
        const why = accountAdminIn(String(line));
        if (why) found.push(`${why} (${label})`);
        const role = grantedRole(String(line));
        if (role) await visit(role, `through role ${role}`);
      }
    };
    await visit(mysql.format('?@?', [user, this.accountHost]), 'granted directly');
    return found;
  }

  /**
   * The server holds no expiry for the account (see leaseUsers.create); Keyturn's own moves. What it checks: a lease
   * account whose grants (or its roles') now let it act on other accounts (a lease made before leases were checked,
   * or one whose role was given CREATE USER since) is refused rather than extended. A missing account is fine here:
   * its lease is being revoked.
   */
  async #extendLeaseUser(username: string, _expiresAt: Date): Promise<void> {
    await this.asAdmin(`extending lease account ${this.account(username)}`, async (c) => {
      if (!(await this.#exists(c, username))) return;
      const found = await this.#accountAdminOf(c, username);
      if (found.length > 0) {
        throw new TargetRefusedError(
          `lease account ${this.account(username)} holds ${found.join(', ')}: with those it could change the passwords of other accounts, the credential's included, so it is not extended. Revoke the lease, take those privileges away from the credential's account (and its roles), and ask for a new lease`,
          'lease-would-alter-accounts',
        );
      }
    });
  }

  /**
   * Drops the lease account and ends its open sessions: DROP USER closes none (MySQL and MariaDB check passwords
   * at login only). The account goes first, so that no new session can start between the kills and the drop;
   * then every session of that user name is killed. A lease user's name is Keyturn's and unique, so the process
   * list's USER (a name, without the account host) picks its sessions only. Nothing is handed to `spec.of` (it is
   * only checked not to be `username`): MySQL accounts own no objects, only the DEFINER of routines, views,
   * triggers and events names them; those are left as they are (MySQL 8.0.22+ refuses to drop an account named
   * as a definer unless the admin has SET_USER_ID or SET_ANY_DEFINER: reported as refused).
   * Idempotent: a missing account and sessions that already ended are fine.
   */
  async #dropLeaseUser(username: string, spec: { of: string }): Promise<void> {
    if (username === spec.of) {
      throw new TargetRefusedError(
        `lease account ${this.account(username)} is the credential's own account: not dropping it`,
      );
    }
    const action = `dropping lease account ${this.account(username)}`;
    await this.asAdmin(action, async (c) => {
      try {
        await this.query(c, 'DROP USER IF EXISTS ?@?', [username, this.accountHost]);
      } catch (err) {
        // ER_CANNOT_USER_REFERENCED_AS_DEFINER (MySQL 8.0.22+; MariaDB drops definers without a word).
        if (serverErrno(err) === 4006 && !/mariadb/i.test(this.serverVersion)) {
          throw new TargetRefusedError(
            `${action}: it is the DEFINER of stored objects, and MySQL drops such an account only for an admin with SET_USER_ID or SET_ANY_DEFINER (4006)`,
            'MYSQL_ERRNO_4006',
          );
        }
        throw err;
      }
      const sessions = await this.query(
        c,
        'SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()',
        [username],
      );
      for (const [id] of sessions) {
        if (!/^\d+$/.test(String(id))) continue;
        try {
          await this.query(c, `KILL CONNECTION ${String(id)}`);
        } catch (err) {
          // ER_NO_SUCH_THREAD: that session ended in the meantime.
          if (serverErrno(err) !== 1094) throw err;
        }
      }
    });
  }

  async close(): Promise<void> {
    // Every call uses its own short-lived connection: nothing to release.
  }
}

/**
 * A session with MySQL 8.0.14+, where an account holds a primary and a secondary password: the dual-password
 * verbs. MySQL can change the primary (IDENTIFIED BY, leaving the secondary as it is), move the primary to the
 * secondary (RETAIN CURRENT PASSWORD, replacing the secondary) or drop the secondary (DISCARD OLD PASSWORD), but
 * never drop one password by its value: each verb therefore first makes the password that must go on working
 * the primary, which it can do without that password ever stopping working.
 */
class MysqlDualPasswordSession extends MysqlSession {
  /** Two passwords per user (TargetSession.dualPasswords). */
  readonly dualPasswords: DualPasswords = {
    set: (username, passwords) => this.#setPasswords(username, passwords),
    remove: (username, passwords) => this.#removePassword(username, passwords),
  };

  /**
   * Leaves `username` with exactly {password (primary), keep (secondary)}. When both already log in there is
   * nothing to do (a retry: MySQL holds at most two passwords, so these are the two); the new password is tried
   * first, so that a first attempt costs one failed login.
   */
  async #setPasswords(username: string, passwords: { keep: string; password: string }): Promise<void> {
    const { keep, password } = passwords;
    if (
      (await this.authenticate({ username, password })).ok &&
      (await this.authenticate({ username, password: keep })).ok
    ) {
      return;
    }
    await this.asAdmin(
      `setting the passwords of account ${this.account(username)}`,
      async (c) => {
        // `keep` becomes the primary: it works throughout, as the primary or as the secondary left alone.
        await this.query(c, 'ALTER USER ?@? IDENTIFIED BY ?', [username, this.accountHost, keep]);
        // `password` becomes the primary and `keep` the secondary, replacing any older one.
        await this.query(c, 'ALTER USER ?@? IDENTIFIED BY ? RETAIN CURRENT PASSWORD', [
          username,
          this.accountHost,
          password,
        ]);
      },
      { secrets: [keep, password], quiet: true },
    );
  }

  /**
   * Leaves `username` with only `passwords.keep`: it becomes the primary (the secondary, `remove` or another,
   * is left as it is and `keep` works throughout), then the secondary is discarded. Idempotent.
   */
  async #removePassword(username: string, passwords: { remove: string; keep: string }): Promise<void> {
    await this.asAdmin(
      `removing the old password of account ${this.account(username)}`,
      async (c) => {
        await this.query(c, 'ALTER USER ?@? IDENTIFIED BY ?', [username, this.accountHost, passwords.keep]);
        await this.query(c, 'ALTER USER ?@? DISCARD OLD PASSWORD', [username, this.accountHost]);
      },
      { secrets: [passwords.keep, passwords.remove], quiet: true },
    );
  }
}

/**
 * A session with MySQL 8.0.21+, where an account carries attributes (CREATE/ALTER USER … ATTRIBUTE, a JSON object):
 * Keyturn labels the clones it makes under the "keyturn" key (see rotation/strategies.ts). MariaDB has no account
 * attributes or comments (writing mysql.global_priv by hand would be too invasive): there the registry's record is
 * the only mark of the clones Keyturn made.
 */
class MysqlLabelledSession extends MysqlDualPasswordSession {
  async labelOf(username: string): Promise<UserLabel | null> {
    return this.asAdmin(`reading the attributes of account ${this.account(username)}`, (c) =>
      this.accountLabel(c, username),
    );
  }

  /** ALTER USER … ATTRIBUTE merges the object into the account's attributes: its other keys stay. */
  async setLabel(username: string, label: string): Promise<void> {
    await this.asAdmin(`labelling account ${this.account(username)}`, async (c) => {
      await this.query(c, 'ALTER USER ?@? ATTRIBUTE ?', [
        username,
        this.accountHost,
        JSON.stringify({ [LABEL_ATTRIBUTE]: label }),
      ]);
    });
  }
}

export const mysqlTarget: TargetDriver = {
  type: 'mysql',
  engine: 'mysql',
  defaultPort: 3306,
  // Depending on the server: sessions with MySQL 8.0.14+ have dualPasswords, others do not.
  validateOptions(options) {
    const problems: string[] = [];
    for (const [name, value] of Object.entries(options)) {
      if (name === 'accountHost' || name === 'requireAuth') {
        const problem = name === 'accountHost' ? validateAccountHost(value) : validateRequireAuth(value);
        if (problem) problems.push(problem);
      } else {
        problems.push(`unknown option "${name}" (MySQL connections take: accountHost, requireAuth)`);
      }
    }
    return problems;
  },
  async open(connection, admin, options) {
    const version = await MysqlSession.versionOf(connection, admin, options.timeoutMs);
    if (supportsAccountAttributes(version)) {
      return new MysqlLabelledSession(connection, admin, options.timeoutMs, version);
    }
    return supportsDualPasswords(version)
      ? new MysqlDualPasswordSession(connection, admin, options.timeoutMs, version)
      : new MysqlSession(connection, admin, options.timeoutMs, version);
  },
};
