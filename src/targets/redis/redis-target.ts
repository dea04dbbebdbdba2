// Redis ACL users, on ioredis. Redis lets a user hold several passwords, so single-user rotation overlaps: the
// new password is added next to the old one (ACL SETUSER u resetpass >old >new) and the old one is removed when
// the grace period ends (<old), or by the next rotation. Permissions are never touched by a password change
// (resetpass only clears passwords); a clone for alternating-users gets the original's rules exactly, copied
// from ACL LIST with the password hashes left out. Where Redis keeps its users in an ACL file, every change is
// followed by ACL SAVE, so that a restart does not bring the old passwords back.
import { Redis, type RedisOptions } from 'ioredis';
import { scrubText } from '../../crypto/scrub.ts';
import type { Connection } from '../../registry/types.ts';
import {
  type AuthOutcome,
  type Check,
  type DualPasswords,
  type LeaseUsers,
  type Login,
  nothingSent,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  TargetUnavailableError,
  type UserTemplate,
} from '../types.ts';

// Redis error replies that mean "these credentials were refused".
const AUTH_REJECTED = /^(WRONGPASS|NOAUTH|NOPERM)/;

/** Connection options without credentials: every login is an explicit AUTH (see #unauthenticated). */
function clientOptions(connection: Connection, timeoutMs: number): RedisOptions {
  const tls = connection.tls?.mode ?? 'disable';
  return {
    host: connection.host,
    port: connection.port,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    lazyConnect: true,
    // One attempt: the engine's retries and backoff decide what happens next.
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    enableOfflineQueue: false,
    ...(tls === 'disable'
      ? {}
      : {
          tls:
            tls === 'require'
              ? { rejectUnauthorized: false }
              : { ...(connection.tls?.ca ? { ca: connection.tls.ca } : {}) },
        }),
  };
}

/** Splits an ACL LIST rule string into rules, keeping a selector "(…)" whole. */
export function splitRules(text: string): string[] {
  const rules: string[] = [];
  let depth = 0;
  let current = '';
  for (const ch of text) {
    if (ch === ' ' && depth === 0) {
      if (current) rules.push(current);
      current = '';
      continue;
    }
    if (ch === '(') depth++;
    if (ch === ')') depth = Math.max(0, depth - 1);
    current += ch;
  }
  if (current) rules.push(current);
  return rules;
}

/** The rules of one user from ACL LIST, without its name and without anything about passwords. */
export function permissionRules(aclListLine: string): string[] {
  const [, , ...rules] = splitRules(aclListLine);
  return rules.filter(
    (r) => !r.startsWith('#') && !r.startsWith('>') && !r.startsWith('<') && r !== 'nopass',
  );
}

class RedisSession implements TargetSession {
  readonly #connection: Connection;
  readonly #admin: Login;
  readonly #timeoutMs: number;
  #client: Redis | undefined;
  #aclFile: boolean | undefined;

  constructor(connection: Connection, admin: Login, timeoutMs: number) {
    this.#connection = connection;
    this.#admin = admin;
    this.#timeoutMs = timeoutMs;
  }

  /** Two passwords per user (TargetSession.dualPasswords). */
  readonly dualPasswords: DualPasswords = {
    set: (username, passwords) => this.#setPasswords(username, passwords),
    remove: (username, passwords) => this.#removePassword(username, passwords),
  };

  /** The lease verbs (TargetSession.leaseUsers): this downstream makes short-lived users. */
  readonly leaseUsers: LeaseUsers = {
    create: (username, password, spec) => this.#createLeaseUser(username, password, spec),
    extend: (username, expiresAt) => this.#extendLeaseUser(username, expiresAt),
    drop: (username, spec) => this.#dropLeaseUser(username, spec),
  };

  #fail(action: string, err: unknown, secrets: string[] = []): Error {
    if (err instanceof TargetRefusedError || err instanceof TargetUnavailableError) return err;
    // Redis echoes the failing ACL modifier (">password") in its error: scrub before it goes anywhere.
    const message = scrubText(`${action}: ${(err as Error)?.message ?? String(err)}`, [
      ...secrets,
      this.#admin.password,
    ]);
    const code = (err as { code?: string }).code;
    if (/^(ERR|NOPERM|WRONGPASS|NOAUTH)/.test((err as Error)?.message ?? ''))
      return new TargetRefusedError(message, code);
    return new TargetUnavailableError(message, code, { cause: err });
  }

  async #adminClient(): Promise<Redis> {
    if (this.#client) return this.#client;
    const client = this.#unauthenticated();
    const where = `${this.#connection.host}:${this.#connection.port}`;
    try {
      await client.connect();
      await client.call('AUTH', this.#admin.username, this.#admin.password);
    } catch (err) {
      client.disconnect();
      if (AUTH_REJECTED.test((err as Error)?.message ?? '')) {
        throw nothingSent(
          new TargetRefusedError(
            `Redis ${where} refused the admin login of "${this.#admin.username}": check the connection's admin secret`,
          ),
        );
      }
      throw nothingSent(this.#fail(`logging in to Redis ${where} as admin "${this.#admin.username}"`, err));
    }
    this.#client = client;
    return client;
  }

  /**
   * A client that has not logged in yet. AUTH is then sent as a command of its own: given to the constructor, a
   * refusal surfaces only as a closed connection, indistinguishable from a network failure. No ready check
   * either: its INFO would be refused before AUTH.
   */
  #unauthenticated(): Redis {
    const client = new Redis({
      ...clientOptions(this.#connection, this.#timeoutMs),
      enableReadyCheck: false,
    });
    client.on('error', () => {});
    return client;
  }

  async #acl(action: string, secrets: string[], ...args: string[]): Promise<unknown> {
    const client = await this.#adminClient();
    try {
      return await client.call('ACL', ...args);
    } catch (err) {
      throw this.#fail(action, err, secrets);
    }
  }

  /** ACL SAVE where Redis keeps its users in an ACL file; elsewhere the users live in memory (and redis.conf). */
  async #persist(): Promise<void> {
    if (this.#aclFile === undefined) {
      const client = await this.#adminClient();
      // CONFIG may be renamed or denied to the admin; without it, ACL SAVE answers for itself.
      const reply = (await client.call('CONFIG', 'GET', 'aclfile').catch(() => null)) as string[] | null;
      this.#aclFile = reply ? Boolean(reply[1]) : true;
    }
    if (!this.#aclFile) return;
    try {
      await this.#acl('saving the ACL file', [], 'SAVE');
    } catch (err) {
      // "This Redis instance is not configured to use an ACL file": nothing to persist.
      if (/not configured to use an ACL file/i.test((err as Error).message)) this.#aclFile = false;
      else throw err;
    }
  }

  async authenticate(login: Login): Promise<AuthOutcome> {
    const client = this.#unauthenticated();
    try {
      await client.connect();
      await client.call('AUTH', login.username, login.password);
      await client.ping();
      return { ok: true };
    } catch (err) {
      const message = (err as Error)?.message ?? '';
      if (AUTH_REJECTED.test(message)) {
        return { ok: false, reason: 'rejected', message: `Redis refused the login of "${login.username}"` };
      }
      throw this.#fail(`logging in to Redis as "${login.username}"`, err, [login.password]);
    } finally {
      client.disconnect();
    }
  }

  async checkAdmin(): Promise<Check[]> {
    const admin = this.#admin.username;
    const name = 'ACL SETUSER';
    const lacks = `"${admin}" may not run ACL SETUSER, which changing other users' passwords needs: grant it +acl (or +@admin)`;
    // Redis 7 answers whether the admin may run a command without running it; Redis 6 has no DRYRUN.
    const action = `checking the privileges of admin "${admin}"`;
    let reply: unknown;
    try {
      reply = await this.#acl(action, [], 'DRYRUN', admin, 'ACL', 'SETUSER', 'keyturn-probe');
    } catch (err) {
      const message = (err as Error).message ?? '';
      if (/NOPERM/i.test(message)) return [{ name, ok: false, message: lacks }];
      if (!/unknown subcommand|wrong number/i.test(message)) throw err;
      // Redis 6: an ACL command the admin may run is the best evidence short of running SETUSER.
      const list = await this.#acl(action, [], 'LIST').then(
        () => true,
        (e: Error) => {
          if (/NOPERM/i.test(e.message)) return false;
          throw e;
        },
      );
      return [{ name, ok: list, message: list ? `"${admin}" may run ACL commands` : lacks }];
    }
    const ok = String(reply) === 'OK';
    return [{ name, ok, message: ok ? `"${admin}" may run ACL SETUSER` : lacks }];
  }

  async userExists(username: string): Promise<boolean> {
    return (await this.#acl(`looking up ACL user "${username}"`, [], 'GETUSER', username)) !== null;
  }

  async #requireUser(username: string): Promise<void> {
    if (!(await this.userExists(username))) {
      throw new TargetRefusedError(
        `Redis has no ACL user "${username}": create it (with its permissions) first`,
      );
    }
  }

  async updatePassword(username: string, password: string): Promise<void> {
    await this.#requireUser(username);
    // SETUSER would create a missing user; the check above keeps a typo from making an empty one.
    await this.#acl(
      `setting the password of ACL user "${username}"`,
      [password],
      'SETUSER',
      username,
      'resetpass',
      `>${password}`,
    );
    await this.#persist();
  }

  async #setPasswords(username: string, passwords: { keep: string; password: string }): Promise<void> {
    await this.#requireUser(username);
    await this.#acl(
      `setting the passwords of ACL user "${username}"`,
      [passwords.keep, passwords.password],
      'SETUSER',
      username,
      'resetpass',
      `>${passwords.keep}`,
      `>${passwords.password}`,
    );
    await this.#persist();
  }

  async #removePassword(username: string, passwords: { remove: string; keep: string }): Promise<void> {
    try {
      await this.#acl(
        `removing a password of ACL user "${username}"`,
        [passwords.remove],
        'SETUSER',
        username,
        `<${passwords.remove}`,
      );
    } catch (err) {
      // Already gone (an earlier attempt, or a rotation that replaced the list): nothing to do. Redis 7 says "The
      // password you are trying to remove from the user does not exist" (the target contract's second call found it).
      if (!/no such password|password.*(not found|does not exist)/i.test((err as Error).message)) throw err;
    }
    await this.#persist();
  }

  async createUser(
    username: string,
    password: string,
    template: UserTemplate,
  ): Promise<'created' | 'updated'> {
    const list = (await this.#acl('listing ACL users', [], 'LIST')) as string[];
    if (list.some((l) => splitRules(l)[1] === username)) {
      // Redis has no create-only SETUSER: `exclusive` is this check, a moment before the SETUSER below.
      if (template.exclusive) {
        throw new TargetRefusedError(
          `ACL user "${username}" appeared while Keyturn was about to create it: someone else made it, so it was not changed`,
          'user-exists',
        );
      }
      await this.updatePassword(username, password);
      return 'updated';
    }
    const line = list.find((l) => splitRules(l)[1] === template.like);
    if (!line) {
      throw new TargetRefusedError(
        `Redis has no ACL user "${template.like}", so "${username}" cannot copy its rules`,
      );
    }
    await this.#acl(
      `creating ACL user "${username}" like "${template.like}"`,
      [password],
      'SETUSER',
      username,
      // A new user starts with nothing (no "reset", which would add flags the original may not have).
      ...permissionRules(line),
      `>${password}`,
    );
    await this.#persist();
    return 'created';
  }

  async deleteUser(username: string): Promise<void> {
    await this.#acl(`deleting ACL user "${username}"`, [], 'DELUSER', username);
    await this.#persist();
  }

  // Lease users. Redis has no expiry for ACL users: a lease user stays valid until Keyturn drops it, which the
  // revocation job (at the lease's end) and the sweep (for any it missed) do.

  async accessOf(username: string): Promise<string[] | null> {
    const list = (await this.#acl('listing ACL users', [], 'LIST')) as string[];
    const line = list.find((l) => splitRules(l)[1] === username);
    // ACL LIST prints a user's rules in a normal form; their order matters to Redis, so it is kept.
    return line ? permissionRules(line) : null;
  }

  async #createLeaseUser(username: string, password: string, spec: { of: string }): Promise<void> {
    const { of } = spec;
    if (username === of) {
      throw new TargetRefusedError(`lease user "${username}" cannot be the credential's own user "${of}"`);
    }
    const list = (await this.#acl('listing ACL users', [], 'LIST')) as string[];
    const line = list.find((l) => splitRules(l)[1] === of);
    if (!line) {
      throw new TargetRefusedError(
        `Redis has no ACL user "${of}", so lease user "${username}" cannot copy its rules`,
      );
    }
    await this.#refuseUserAdmin(of, username, line);
    const existing = list.find((l) => splitRules(l)[1] === username);
    // An existing user (a retry) gets its permissions cleared first, so that it ends up with exactly the rules of
    // `of` again. Not "reset": that adds the sanitize-payload flag, which `of` may not have. clearselectors only
    // where there are selectors to clear (Redis 7; older versions do not know the rule).
    const clear = existing
      ? [
          'resetkeys',
          'resetchannels',
          '-@all',
          ...(splitRules(existing).some((r) => r.startsWith('(')) ? ['clearselectors'] : []),
        ]
      : [];
    await this.#acl(
      `creating lease user "${username}" of "${of}"`,
      [password],
      'SETUSER',
      username,
      ...clear,
      ...permissionRules(line),
      'on',
      'resetpass',
      `>${password}`,
    );
    await this.#persist();
  }

  /**
   * Refuses a lease when `of`'s rules (root permissions and selectors) let it change users: with ACL SETUSER a lease
   * could give `of` a password of its own, with CONFIG SET requirepass change the default user's, with MODULE LOAD
   * anything, with REPLICAOF (SLAVEOF, FAILOVER, CLUSTER REPLICATE) make this server follow another one, whose
   * replication stream runs any command, ACL SETUSER included.
   */
  async #refuseUserAdmin(of: string, username: string, aclListLine: string): Promise<void> {
    const allowed = await this.#userAdminOf(of, aclListLine);
    if (allowed.length > 0) {
      throw new TargetRefusedError(
        `ACL user "${of}" may run ${allowed.join(', ')}: a lease with its rules could change the passwords of "${of}" or of other users, so lease user "${username}" is not made. Take those commands from the application's user (for example -@admin) and ask again`,
        'lease-would-alter-users',
      );
    }
  }

  /**
   * Which of the commands that can change users `user` may run. Redis 7 answers each with ACL DRYRUN (a command
   * this server does not have is skipped); older servers, without it, by the rules' text, which errs on the side of
   * refusing.
   */
  async #userAdminOf(user: string, aclListLine: string): Promise<string[]> {
    // The command as the message names it, and an ACL DRYRUN of it.
    const probes: [string, string[]][] = [
      ['ACL SETUSER', ['ACL', 'SETUSER', user]],
      ['ACL DELUSER', ['ACL', 'DELUSER', user]],
      ['ACL LOAD', ['ACL', 'LOAD']],
      ['CONFIG SET', ['CONFIG', 'SET', 'requirepass', 'x']],
      ['MODULE LOAD', ['MODULE', 'LOAD', 'x']],
      ['MODULE LOADEX', ['MODULE', 'LOADEX', 'x']],
      ['REPLICAOF', ['REPLICAOF', '127.0.0.1', '1']],
      ['SLAVEOF', ['SLAVEOF', '127.0.0.1', '1']],
      ['FAILOVER', ['FAILOVER']],
      ['CLUSTER REPLICATE', ['CLUSTER', 'REPLICATE', 'x']],
    ];
    const allowed: string[] = [];
    for (const [name, probe] of probes) {
      let reply: unknown;
      try {
        reply = await this.#acl(`checking what "${user}" may run`, [], 'DRYRUN', user, ...probe);
      } catch (err) {
        const message = (err as Error).message;
        // A command (or subcommand) this server does not have: nobody can run it.
        if (/ERR (Command '[^']*' not found|unknown subcommand '(?!dryrun'))/i.test(message)) continue;
        if (!/ERR Unknown .*'dryrun'/i.test(message)) throw err;
        // Redis 6: no DRYRUN. Any rule that could reach one of them counts.
        const rules = permissionRules(aclListLine).join(' ');
        if (
          /(^|\s)(allcommands|\+@all|\+@admin|\+@dangerous|\+@slow|\+acl|\+config|\+module|\+replicaof|\+slaveof|\+failover|\+cluster)(\s|\||$)/i.test(
            rules,
          )
        ) {
          allowed.push('ACL, CONFIG, MODULE or REPLICAOF (its rules allow them)');
        }
        break;
      }
      if (reply === 'OK') allowed.push(name);
    }
    return allowed;
  }

  /**
   * Nothing to move: Redis has no expiry; the lease's end lives in Keyturn, whose revocation job drops the user when
   * it comes. What it checks: a lease user whose rules let it change users (a lease made before leases were checked)
   * is refused rather than extended. A missing user is fine here: its lease is being revoked.
   */
  async #extendLeaseUser(username: string, _expiresAt: Date): Promise<void> {
    const list = (await this.#acl('listing ACL users', [], 'LIST')) as string[];
    const line = list.find((l) => splitRules(l)[1] === username);
    if (!line) return;
    const allowed = await this.#userAdminOf(username, line);
    if (allowed.length > 0) {
      throw new TargetRefusedError(
        `lease user "${username}" may run ${allowed.join(', ')}: with those it could change the passwords of the credential's user or of other users, so it is not extended. Revoke the lease, take those commands from the credential's user (for example -@admin), and ask for a new lease`,
        'lease-would-alter-users',
      );
    }
  }

  async #dropLeaseUser(username: string, spec: { of: string }): Promise<void> {
    if (username === spec.of) {
      throw new TargetRefusedError(`lease user "${username}" is the credential's own user: not deleting it`);
    }
    // DELUSER also disconnects every client logged in as the user; it answers 0 for a user that is gone already.
    await this.#acl(`deleting lease user "${username}"`, [], 'DELUSER', username);
    await this.#persist();
  }

  async close(): Promise<void> {
    this.#client?.disconnect();
    this.#client = undefined;
  }
}

export const redisTarget: TargetDriver = {
  type: 'redis',
  engine: 'redis',
  defaultPort: 6379,
  async open(connection, admin, options) {
    return new RedisSession(connection, admin, options.timeoutMs);
  },
};
