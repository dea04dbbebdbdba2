// PostgreSQL target on node-postgres. Passwords are set with ALTER ROLE … PASSWORD: the literal is quoted by
// the driver's escapeLiteral and statements are never logged by Keyturn; the server's own log_statement could
// still record it, so each password statement runs in a transaction with log_statement switched off.
import { AsyncLocalStorage } from 'node:async_hooks';
import pg from 'pg';
import type { Connection } from '../../registry/types.ts';
import {
  type AuthOutcome,
  type CallOptions,
  type Check,
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

// SQLSTATEs that mean "these credentials were refused" rather than "the server is unwell".
const AUTH_REJECTED = new Set(['28P01', '28000']);
// SQLSTATE classes that mean the statement itself was refused (privileges, missing objects, bad names):
// retrying will not help.
const REFUSED_CLASSES = new Set(['42', '0L', '0P', '28']);

/**
 * Password methods a server may ask for, as libpq's `require_auth` names them. SCRAM never shows the password to the
 * server; md5 sends a hash an impostor can replay against the real server; "password" sends it in clear text.
 */
export const AUTH_METHODS = ['scram-sha-256', 'md5', 'password', 'none'] as const;
type AuthMethod = (typeof AUTH_METHODS)[number];
/**
 * Without `options.requireAuth`, only SCRAM: a server (or an impostor at the connection's address) asking for md5 or
 * cleartext is refused before a byte of any password is sent, and so is one asking for none at all (trust, libpq's
 * "none"): it proved nothing, and Keyturn's statements (ALTER ROLE … PASSWORD) would go to it.
 */
const DEFAULT_AUTH: readonly AuthMethod[] = ['scram-sha-256'];

/** The connection's accepted password methods: `options.requireAuth` ("scram-sha-256,md5"), else SCRAM only. */
function allowedAuth(connection: Connection): readonly AuthMethod[] {
  const raw = connection.options?.requireAuth;
  if (typeof raw !== 'string') return DEFAULT_AUTH;
  return raw
    .split(',')
    .map((m) => m.trim())
    .filter((m): m is AuthMethod => (AUTH_METHODS as readonly string[]).includes(m));
}

function validateOptions(options: Record<string, string | number | boolean>): string[] {
  const problems: string[] = [];
  for (const [key, value] of Object.entries(options)) {
    if (key !== 'requireAuth') {
      problems.push(`"${key}" is not an option of PostgreSQL connections (they take: requireAuth)`);
      continue;
    }
    const methods = typeof value === 'string' ? value.split(',').map((m) => m.trim()) : [];
    const unknown = methods.filter((m) => !(AUTH_METHODS as readonly string[]).includes(m));
    if (methods.length === 0 || methods.includes('') || unknown.length > 0) {
      problems.push(
        `requireAuth must be a comma-separated list of ${AUTH_METHODS.join(', ')}${unknown.length > 0 ? ` (not ${unknown.map((u) => `"${u}"`).join(', ')})` : ''}`,
      );
    }
  }
  return problems;
}

/** The server asked for a password method the connection does not accept; no password was sent. */
export class AuthMethodRefusedError extends TargetRefusedError {
  constructor(connection: Connection, asked: AuthMethod, allowed: readonly AuthMethod[]) {
    const what =
      asked === 'none'
        ? 'asked for no password at all (trust authentication: it proved nothing, and cannot tell a right password from a wrong one)'
        : `asked for ${asked === 'password' ? 'cleartext password' : asked} authentication`;
    super(
      `${connection.host}:${connection.port} ${what}, which connection "${connection.id}" does not accept (it accepts ${allowed.join(', ')}), so no password was sent, nor any statement. If that server is really yours, switch it to scram-sha-256 (password_encryption and pg_hba.conf), or, as an admin, set the connection's options.requireAuth to include "${asked}"`,
      'auth-method-refused',
    );
    this.name = 'AuthMethodRefusedError';
  }
}

/** node-postgres's handlers of the server's authentication requests (internal, stable since pg 8.0). */
interface AuthHandlers {
  _handleAuthCleartextPassword(this: pg.Client, msg: unknown): void;
  _handleAuthMD5Password(this: pg.Client, msg: unknown): void;
  _handleAuthSASL(this: pg.Client, msg: unknown): void;
  _handleReadyForQuery(this: pg.Client, msg: unknown): void;
}
const base = pg.Client.prototype as unknown as AuthHandlers;

/**
 * node-postgres answers whatever password method the server asks for. This client first checks the method against
 * the connection's list, like libpq's require_auth, and fails the connect without sending anything when it is not
 * there. A server that asks for none at all (trust) is refused when it says it is ready, before any statement, unless
 * the list has "none".
 */
class GuardedClient extends pg.Client {
  readonly #keyturnConnection: Connection;
  readonly #allowed: readonly AuthMethod[];
  #askedForPassword = false;

  constructor(config: pg.ClientConfig, connection: Connection) {
    super(config);
    this.#keyturnConnection = connection;
    this.#allowed = allowedAuth(connection);
  }

  #refuse(asked: AuthMethod): void {
    const internals = this as unknown as {
      connection: NodeJS.EventEmitter & { stream?: { destroy(): void } };
    };
    internals.connection.emit(
      'error',
      new AuthMethodRefusedError(this.#keyturnConnection, asked, this.#allowed),
    );
    internals.connection.stream?.destroy();
  }

  _handleAuthCleartextPassword(msg: unknown): void {
    this.#askedForPassword = true;
    if (this.#allowed.includes('password')) base._handleAuthCleartextPassword.call(this, msg);
    else this.#refuse('password');
  }

  _handleAuthMD5Password(msg: unknown): void {
    this.#askedForPassword = true;
    if (this.#allowed.includes('md5')) base._handleAuthMD5Password.call(this, msg);
    else this.#refuse('md5');
  }

  _handleAuthSASL(msg: unknown): void {
    this.#askedForPassword = true;
    if (this.#allowed.includes('scram-sha-256')) base._handleAuthSASL.call(this, msg);
    else this.#refuse('scram-sha-256');
  }

  _handleReadyForQuery(msg: unknown): void {
    const connecting = (this as unknown as { _connecting: boolean })._connecting;
    if (connecting && !this.#askedForPassword && !this.#allowed.includes('none')) this.#refuse('none');
    else base._handleReadyForQuery.call(this, msg);
  }
}

/** The roles `role` is a direct member of, by name. */
async function groupsOf(c: pg.Client, role: string): Promise<string[]> {
  const rows = await c.query<{ rolname: string }>(
    `SELECT r.rolname FROM pg_auth_members m
       JOIN pg_roles r ON r.oid = m.roleid
       JOIN pg_roles u ON u.oid = m.member
      WHERE u.rolname = $1
      ORDER BY r.rolname`,
    [role],
  );
  return rows.rows.map((r) => r.rolname);
}

/**
 * A role's label: its comment (COMMENT ON ROLE, shared across the cluster's databases), or null when the role does
 * not exist. Only a superuser, or a role with CREATEROLE (PostgreSQL 16+: with ADMIN OPTION on that role), may set it.
 */
async function labelIn(c: pg.Client, role: string): Promise<UserLabel | null> {
  const found = await c.query<{ label: string | null }>(
    "SELECT shobj_description(oid, 'pg_authid') AS label FROM pg_roles WHERE rolname = $1",
    [role],
  );
  const row = found.rows[0];
  return row ? { label: row.label } : null;
}

/**
 * createUser on a role that exists: refused, changing nothing, when the template says the role must be new, or must
 * carry Keyturn's label and does not (someone else's role under the name Keyturn meant to create).
 */
function refuseUnlabelled(role: string, existing: UserLabel, template: UserTemplate): void {
  if (template.exclusive) {
    throw new TargetRefusedError(
      `role "${role}" appeared while Keyturn was about to create it: someone else made it, so it was not changed`,
      'user-exists',
    );
  }
  if (template.label && existing.label !== template.label) {
    throw new TargetRefusedError(
      `role "${role}" exists without Keyturn's label "${template.label}" (its comment is ${existing.label === null ? 'empty' : `"${existing.label}"`}): Keyturn did not make it for this credential, so it was not changed`,
      'not-keyturns',
    );
  }
}

function clientConfig(connection: Connection, login: Login, timeoutMs: number): pg.ClientConfig {
  const tls = connection.tls?.mode ?? 'disable';
  return {
    host: connection.host,
    port: connection.port,
    database: connection.database ?? 'postgres',
    user: login.username,
    password: login.password,
    connectionTimeoutMillis: timeoutMs,
    statement_timeout: timeoutMs,
    query_timeout: timeoutMs,
    application_name: 'keyturn',
    ssl:
      tls === 'disable'
        ? false
        : tls === 'require'
          ? { rejectUnauthorized: false }
          : { rejectUnauthorized: true, ...(connection.tls?.ca ? { ca: connection.tls.ca } : {}) },
  };
}

function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Turns a driver error into a target error whose message names the failing action. */
function classify(action: string, err: unknown): Error {
  if (err instanceof TargetRefusedError || err instanceof TargetUnavailableError) return err;
  const code = sqlState(err);
  const message = `${action}: ${err instanceof Error ? err.message : String(err)}`;
  if (code && /^[0-9A-Z]{5}$/.test(code) && REFUSED_CLASSES.has(code.slice(0, 2))) {
    return new TargetRefusedError(message, code);
  }
  return new TargetUnavailableError(message, code, { cause: err });
}

const ident = (name: string): string => pg.escapeIdentifier(name);

/** A VALID UNTIL literal: the instant in ISO 8601 UTC, which PostgreSQL reads as a timestamptz. */
function validUntil(expiresAt: Date): string {
  if (!(expiresAt instanceof Date) || Number.isNaN(expiresAt.getTime())) {
    throw new TargetRefusedError(`a lease needs a valid expiry time, got ${String(expiresAt)}`);
  }
  return pg.escapeLiteral(expiresAt.toISOString());
}

/**
 * Closes a client without ever waiting forever: pg's end() waits for the socket's "end" event, which a half-open
 * connection may never send.
 */
async function close(client: pg.Client, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const ended = client.end().catch(() => {});
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), Math.min(timeoutMs, 5000));
  });
  if ((await Promise.race([ended, timedOut])) === 'timeout') {
    (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
  }
  clearTimeout(timer);
}

/** The cancellation signal of the verb being run (CallOptions), for every client it opens (#client). */
const callSignal = new AsyncLocalStorage<AbortSignal | undefined>();

/** Runs each verb of the session with its call's signal in reach of the clients it opens. */
function withCallSignal(session: PostgresSession): TargetSession {
  return new Proxy(session, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        const call = args.find(
          (a): a is CallOptions =>
            typeof a === 'object' && a !== null && (a as CallOptions).signal instanceof AbortSignal,
        );
        return callSignal.run(call?.signal, () =>
          (value as (...a: unknown[]) => unknown).apply(target, args),
        );
      };
    },
  });
}

class PostgresSession implements TargetSession {
  readonly #connection: Connection;
  readonly #admin: Login;
  readonly #timeoutMs: number;

  constructor(connection: Connection, admin: Login, timeoutMs: number) {
    this.#connection = connection;
    this.#admin = admin;
    this.#timeoutMs = timeoutMs;
  }

  /** The lease verbs (TargetSession.leaseUsers): this downstream makes short-lived users. */
  readonly leaseUsers: LeaseUsers = {
    create: (username, password, spec) => this.#createLeaseUser(username, password, spec),
    extend: (username, expiresAt) => this.#extendLeaseUser(username, expiresAt),
    drop: (username, spec) => this.#dropLeaseUser(username, spec),
  };

  #client(login: Login): pg.Client {
    const client = new GuardedClient(
      clientConfig(this.#connection, login, this.#timeoutMs),
      this.#connection,
    );
    // An error event after connect (server restart) must not crash the process; the pending query fails anyway.
    client.on('error', () => {});
    // The verb's call was cancelled (the middleware's deadline): cut the connection, so that nothing it was sending
    // lands later; the statement then fails, and PostgreSQL ends the backend when it notices.
    const signal = callSignal.getStore();
    if (signal) {
      const cut = () =>
        (
          client as unknown as { connection?: { stream?: { destroy(): void } } }
        ).connection?.stream?.destroy();
      if (signal.aborted) cut();
      else {
        signal.addEventListener('abort', cut, { once: true });
        client.once('end', () => signal.removeEventListener('abort', cut));
      }
    }
    return client;
  }

  /** Runs `fn` on a fresh client logged in as admin; short-lived clients keep no state across steps. */
  async #asAdmin<T>(action: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
    const client = this.#client(this.#admin);
    try {
      await client.connect();
    } catch (err) {
      const where = `${this.#connection.host}:${this.#connection.port}`;
      throw nothingSent(
        classify(`${action}: logging in to ${where} as admin "${this.#admin.username}" failed`, err),
      );
    }
    try {
      return await fn(client);
    } catch (err) {
      throw classify(action, err);
    } finally {
      await close(client, this.#timeoutMs);
    }
  }

  async authenticate(login: Login): Promise<AuthOutcome> {
    const client = this.#client(login);
    try {
      await client.connect();
      await client.query('SELECT 1');
      return { ok: true };
    } catch (err) {
      const code = sqlState(err);
      if (code && AUTH_REJECTED.has(code)) {
        return {
          ok: false,
          reason: 'rejected',
          message: `PostgreSQL refused the login of "${login.username}" (${code})`,
        };
      }
      throw classify(`logging in as "${login.username}"`, err);
    } finally {
      await close(client, this.#timeoutMs);
    }
  }

  async checkAdmin(): Promise<Check[]> {
    const admin = this.#admin.username;
    return this.#asAdmin(`checking the privileges of admin "${admin}"`, async (c) => {
      const r = await c.query('SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user');
      const row = r.rows[0] as { rolsuper?: boolean; rolcreaterole?: boolean } | undefined;
      const ok = Boolean(row?.rolsuper || row?.rolcreaterole);
      return [
        {
          name: 'CREATEROLE',
          ok,
          message: ok
            ? `"${admin}" has ${row?.rolsuper ? 'SUPERUSER' : 'CREATEROLE'}`
            : `"${admin}" lacks CREATEROLE, which changing other roles' passwords needs: ALTER ROLE ${ident(admin)} CREATEROLE`,
        },
      ];
    });
  }

  async userExists(username: string): Promise<boolean> {
    return this.#asAdmin(`looking up role "${username}"`, async (c) => {
      const r = await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [username]);
      return r.rowCount === 1;
    });
  }

  async #inQuietTransaction(c: pg.Client, statements: string[]): Promise<void> {
    await c.query('BEGIN');
    try {
      // Needs superuser; a plain admin with CREATEROLE cannot change it, and the statement still runs.
      await c.query('SAVEPOINT quiet');
      await c.query("SET LOCAL log_statement = 'none'").catch(() => c.query('ROLLBACK TO SAVEPOINT quiet'));
      for (const sql of statements) await c.query(sql);
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    }
  }

  async updatePassword(username: string, password: string): Promise<void> {
    await this.#asAdmin(`setting the password of role "${username}"`, (c) =>
      this.#inQuietTransaction(c, [
        `ALTER ROLE ${ident(username)} WITH LOGIN PASSWORD ${pg.escapeLiteral(password)}`,
      ]),
    );
  }

  async createUser(
    username: string,
    password: string,
    template: UserTemplate,
  ): Promise<'created' | 'updated'> {
    return this.#asAdmin(`creating role "${username}" like "${template.like}"`, async (c) => {
      const alter = `ALTER ROLE ${ident(username)} WITH LOGIN PASSWORD ${pg.escapeLiteral(password)}`;
      const existing = await labelIn(c, username);
      if (existing) {
        refuseUnlabelled(username, existing, template);
        await this.#inQuietTransaction(c, [alter]);
        return 'updated';
      }
      const memberships = await groupsOf(c, template.like);
      const like = await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [template.like]);
      if (like.rowCount !== 1) {
        throw new TargetRefusedError(
          `role "${template.like}" does not exist, so "${username}" cannot copy its memberships`,
        );
      }
      try {
        await this.#inQuietTransaction(c, [
          `CREATE ROLE ${ident(username)} WITH LOGIN PASSWORD ${pg.escapeLiteral(password)}`,
          ...memberships.map((group) => `GRANT ${ident(group)} TO ${ident(username)}`),
          // In the same transaction: a role Keyturn made never exists without its label.
          ...(template.label
            ? [`COMMENT ON ROLE ${ident(username)} IS ${pg.escapeLiteral(template.label)}`]
            : []),
        ]);
        return 'created';
      } catch (err) {
        // Someone created it between our look-up and CREATE ROLE (duplicate_object): another worker of this
        // rotation (set its password), or not Keyturn at all (refused as above).
        if (sqlState(err) !== '42710') throw err;
        refuseUnlabelled(username, (await labelIn(c, username)) ?? { label: null }, template);
        await this.#inQuietTransaction(c, [alter]);
        return 'updated';
      }
    });
  }

  async accessOf(username: string): Promise<string[] | null> {
    return this.#asAdmin(`reading the memberships of role "${username}"`, async (c) => {
      const exists = await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [username]);
      if (exists.rowCount !== 1) return null;
      const groups = await groupsOf(c, username);
      return groups.map((group) => `member of ${group}`);
    });
  }

  async labelOf(username: string): Promise<UserLabel | null> {
    return this.#asAdmin(`reading the comment of role "${username}"`, (c) => labelIn(c, username));
  }

  async setLabel(username: string, label: string): Promise<void> {
    await this.#asAdmin(`labelling role "${username}"`, async (c) => {
      await c.query(`COMMENT ON ROLE ${ident(username)} IS ${pg.escapeLiteral(label)}`);
    });
  }

  async deleteUser(username: string): Promise<void> {
    await this.#asAdmin(`dropping role "${username}"`, async (c) => {
      await c.query(`DROP ROLE IF EXISTS ${ident(username)}`);
    });
  }

  // Lease users. A lease user is a LOGIN role with the credential role's (`of`) group memberships, never a member
  // of `of` itself: a member could SET ROLE to it and ALTER ROLE … PASSWORD, a password that outlives the lease and
  // locks the service out. So the privileges a lease can use are those `of` has through its group roles (the way
  // the README asks privileges to be granted), without ADMIN OPTION; a lease is refused when those groups could
  // alter roles (SUPERUSER, CREATEROLE, the server-file roles that reach superuser, transitively) or are themselves
  // login roles a lease could act as. Renewal checks the lease role again, so a group that gained such a power since
  // is never extended. VALID UNTIL is the lease's end: PostgreSQL itself refuses password logins after it, a second
  // line of defence next to Keyturn's revocation (the revocation job and the sweep drop the role), in case those are
  // late or down. VALID UNTIL neither ends sessions that are already open nor applies to non-password
  // authentication (trust, peer, cert): leaseUsers.drop does that.

  /**
   * The roles `role` is a member of, directly or through others, with which it could change a login role's password
   * or act as one: SUPERUSER, CREATEROLE, a login role (SET ROLE to it, then ALTER ROLE … PASSWORD as its own), and
   * pg_execute_server_program / pg_write_server_files / pg_read_server_files, which PostgreSQL's documentation says
   * can be used to gain superuser-level access. Each with why, for the message.
   */
  async #alteringMemberships(c: pg.Client, role: string): Promise<string[]> {
    const found = await c.query<{ rolname: string; why: string }>(
      `SELECT r.rolname,
              CASE WHEN r.rolsuper THEN 'SUPERUSER' WHEN r.rolcreaterole THEN 'CREATEROLE'
                   WHEN r.rolcanlogin THEN 'LOGIN' ELSE 'reaches superuser through server files' END AS why
         FROM pg_roles r, pg_roles u
        WHERE u.rolname = $1 AND r.oid <> u.oid AND pg_has_role(u.oid, r.oid, 'MEMBER')
          AND (r.rolsuper OR r.rolcreaterole OR r.rolcanlogin
               OR r.rolname IN ('pg_execute_server_program', 'pg_write_server_files', 'pg_read_server_files'))
        ORDER BY r.rolname`,
      [role],
    );
    return found.rows.map((r) => `"${r.rolname}" (${r.why})`);
  }

  /** The group roles a lease of `of` joins, after checking that none lets the lease act as, or alter, a login role. */
  async #leaseGroups(c: pg.Client, of: string, username: string): Promise<string[]> {
    const parent = await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [of]);
    if (parent.rowCount !== 1) {
      throw new TargetRefusedError(
        `role "${of}" does not exist, so lease role "${username}" cannot get its access`,
      );
    }
    const powerful = await this.#alteringMemberships(c, of);
    if (powerful.length > 0) {
      throw new TargetRefusedError(
        `role "${of}" is a member of ${powerful.join(', ')}: a lease with that membership could change the passwords of "${of}" or of other login roles, so no lease is made. Grant the application's privileges to a NOLOGIN group role without CREATEROLE or SUPERUSER, make "${of}" a member of it (and of no login or admin role), and ask again`,
        'lease-would-alter-roles',
      );
    }
    const groups = await groupsOf(c, of);
    if (groups.length === 0) {
      throw new TargetRefusedError(
        `role "${of}" belongs to no group role: a lease gets the privileges of the credential's group roles, never the role itself (a member of it could change its password). Grant the application's privileges to a group role (CREATE ROLE app_access NOLOGIN; GRANT … TO app_access; GRANT app_access TO ${ident(of)}) and ask again`,
        'lease-no-group',
      );
    }
    return groups;
  }

  /**
   * What takes away a lease role's memberships beyond `keep` (all but the credential's groups when re-created; its
   * login roles, such as the credential's role that leases made before group roles were members of, when extended)
   * and any ADMIN OPTION, with which it could hand its groups to other roles.
   */
  async #trimMemberships(
    c: pg.Client,
    username: string,
    keep: (role: { rolname: string; rolcanlogin: boolean }) => boolean,
  ): Promise<string[]> {
    const held = await c.query<{ rolname: string; rolcanlogin: boolean; admin_option: boolean }>(
      `SELECT r.rolname, r.rolcanlogin, m.admin_option FROM pg_auth_members m
         JOIN pg_roles r ON r.oid = m.roleid
         JOIN pg_roles u ON u.oid = m.member
        WHERE u.rolname = $1`,
      [username],
    );
    return held.rows.flatMap((r) =>
      !keep(r)
        ? [`REVOKE ${ident(r.rolname)} FROM ${ident(username)}`]
        : r.admin_option
          ? [`REVOKE ADMIN OPTION FOR ${ident(r.rolname)} FROM ${ident(username)}`]
          : [],
    );
  }

  async #createLeaseUser(username: string, password: string, spec: LeaseUserSpec): Promise<void> {
    const { of } = spec;
    await this.#asAdmin(`creating lease role "${username}" of "${of}"`, async (c) => {
      if (username === of) {
        throw new TargetRefusedError(`lease role "${username}" cannot be the credential's own role "${of}"`);
      }
      const until = validUntil(spec.expiresAt);
      const groups = await this.#leaseGroups(c, of, username);
      const grants = groups.map((g) => `GRANT ${ident(g)} TO ${ident(username)}`);
      const exists = await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [username]);
      // An existing role of that name (a retry, a CREATE that raced ours, a lease made before leases got group roles
      // only): password, expiry and groups again, and no other membership (the credential's role least of all).
      const again = async () =>
        this.#inQuietTransaction(c, [
          `ALTER ROLE ${ident(username)} WITH LOGIN INHERIT PASSWORD ${pg.escapeLiteral(password)} VALID UNTIL ${until}`,
          ...(await this.#trimMemberships(c, username, (r) => groups.includes(r.rolname))),
          ...grants,
        ]);
      if (exists.rowCount === 1) {
        await again();
        return;
      }
      try {
        await this.#inQuietTransaction(c, [
          `CREATE ROLE ${ident(username)} WITH LOGIN INHERIT PASSWORD ${pg.escapeLiteral(password)} VALID UNTIL ${until}`,
          ...grants,
        ]);
      } catch (err) {
        if (sqlState(err) !== '42710') throw err;
        await again();
      }
    });
  }

  /**
   * Moves VALID UNTIL. First the lease role loses any membership in a login role (a lease made before leases got
   * group roles only was a member of the credential's role) and any ADMIN OPTION; then a lease whose groups could
   * still alter roles (one was given CREATEROLE since, say) is refused rather than extended.
   */
  async #extendLeaseUser(username: string, expiresAt: Date): Promise<void> {
    await this.#asAdmin(`extending lease role "${username}"`, async (c) => {
      const until = validUntil(expiresAt);
      const exists = await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [username]);
      if (exists.rowCount !== 1) {
        throw new TargetRefusedError(
          `lease role "${username}" does not exist (dropped already?), so its lease cannot be extended`,
          '42704',
        );
      }
      const trim = await this.#trimMemberships(c, username, (r) => !r.rolcanlogin);
      if (trim.length > 0) await this.#inQuietTransaction(c, trim);
      const powerful = await this.#alteringMemberships(c, username);
      if (powerful.length > 0) {
        throw new TargetRefusedError(
          `lease role "${username}" is a member of ${powerful.join(', ')}: with that membership it could change the passwords of login roles, so it is not extended. Revoke the lease, take that membership (or power) away from the credential role's groups, and ask for a new lease`,
          'lease-would-alter-roles',
        );
      }
      try {
        await c.query(`ALTER ROLE ${ident(username)} VALID UNTIL ${until}`);
      } catch (err) {
        if (sqlState(err) !== '42704') throw err;
        throw new TargetRefusedError(
          `lease role "${username}" does not exist (dropped already?), so its lease cannot be extended`,
          '42704',
        );
      }
    });
  }

  async #dropLeaseUser(username: string, spec: { of: string }): Promise<void> {
    const { of } = spec;
    await this.#asAdmin(`dropping lease role "${username}"`, async (c) => {
      if (username === of) {
        throw new TargetRefusedError(
          `lease role "${username}" is the credential's own role: not dropping it`,
        );
      }
      // NOLOGIN first, so that no new session starts while the open ones are ended.
      try {
        await c.query(`ALTER ROLE ${ident(username)} NOLOGIN`);
      } catch (err) {
        if (sqlState(err) === '42704') return; // gone already (an earlier attempt): nothing to do
        throw err;
      }
      try {
        await c.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [
          username,
        ]);
      } catch (err) {
        if (sqlState(err) !== '42501') throw err;
        throw new TargetRefusedError(
          `lease role "${username}" is NOLOGIN now, but its open sessions could not be ended: the admin ` +
            `"${this.#admin.username}" may not terminate them (grant it pg_signal_backend), then revoke again`,
          '42501',
        );
      }
      try {
        await c.query(`DROP ROLE IF EXISTS ${ident(username)}`);
        return;
      } catch (err) {
        if (sqlState(err) !== '2BP01') throw err;
      }
      // It owns objects or holds privileges (dependent_objects_still_exist). Its objects go to the credential's
      // role, never deleted; DROP OWNED then only revokes the privileges granted to it, since it owns nothing
      // here any more. Both act on this database only, and are committed together before the drop is retried.
      try {
        await c.query('BEGIN');
        await c.query(`REASSIGN OWNED BY ${ident(username)} TO ${ident(of)}`);
        await c.query(`DROP OWNED BY ${ident(username)}`);
        await c.query('COMMIT');
      } catch (err) {
        await c.query('ROLLBACK').catch(() => {});
        throw err;
      }
      try {
        await c.query(`DROP ROLE IF EXISTS ${ident(username)}`);
      } catch (err) {
        if (sqlState(err) !== '2BP01') throw err;
        // What is left is in other databases of the cluster, which this connection cannot reach.
        const detail = (err as { detail?: unknown }).detail;
        const where = typeof detail === 'string' ? ` (${detail.replaceAll('\n', '; ')})` : '';
        throw new TargetRefusedError(
          `lease role "${username}" cannot be dropped: it still owns objects or holds privileges in other ` +
            `databases of the cluster${where}. It can no longer log in and its sessions are ended. In each of ` +
            `those databases run REASSIGN OWNED BY ${ident(username)} TO ${ident(of)}; DROP OWNED BY ` +
            `${ident(username)}; then revoke the lease again`,
          '2BP01',
        );
      }
    });
  }

  async close(): Promise<void> {
    // Every call uses its own short-lived client: nothing to release.
  }
}

export const postgresTarget: TargetDriver = {
  type: 'postgres',
  engine: 'postgres',
  defaultPort: 5432,
  validateOptions,
  async open(connection, admin, options) {
    return withCallSignal(new PostgresSession(connection, admin, options.timeoutMs));
  },
};
