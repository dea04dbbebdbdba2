// LDAP directory service accounts (type "ldap"), OpenLDAP and Active Directory alike, with ldapts. The connection's admin
// is a bind DN allowed to write the accounts' passwords (and, for alternating users, to add entries and group
// members); the credential's `username` is the account's naming value, placed into `options.userDn`
// ("uid={username},ou=services,dc=example,dc=org") as an escaped RDN value.
//
// Passwords:
//   - userPassword (the default): set with the Password Modify extended operation (RFC 3062), so the directory hashes
//     it by its own policy (OpenLDAP: {SSHA} unless olcPasswordHash says otherwise). A directory that does not
//     announce that operation gets a replace of userPassword, which such directories (389-DS, ApacheDS) hash on
//     write. Keyturn never writes a cleartext userPassword to a directory that would keep it so.
//   - unicodePwd (Active Directory): a replace of unicodePwd with the quoted password in UTF-16LE, which AD accepts
//     only over an encrypted connection; a connection with TLS disabled is refused before anything is sent.
// A directory keeps one password per account as far as Keyturn is concerned: single-user has a window, and
// alternating users make `<username>_clone` beside the account, with its object classes and attributes and the
// same group memberships (member, uniqueMember and memberUid groups under `options.groupBase`).
//
// TLS: verify-full unless the connection says otherwise; LDAPS on the connection's port (default 636), or StartTLS
// on a plain port with `options.startTls: true`. `tls: {mode: "disable"}` is plain LDAP, for tests and loopback.
import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import {
  AlreadyExistsError,
  Attribute,
  BerWriter,
  BusyError,
  Change,
  Client,
  ConfidentialityRequiredError,
  ConstraintViolationError,
  DN,
  EqualityFilter,
  InsufficientAccessError,
  InvalidCredentialsError,
  NoSuchAttributeError,
  NoSuchObjectError,
  ObjectClassViolationError,
  ResultCodeError,
  StrongAuthRequiredError,
  TypeOrValueExistsError,
  UnavailableError,
  UnwillingToPerformError,
} from 'ldapts';
import { scrubText } from '../../crypto/scrub.ts';
import type { Connection } from '../../registry/types.ts';
import {
  type AuthOutcome,
  type CallOptions,
  type Check,
  type Login,
  nothingSent,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  TargetUnavailableError,
  type UserTemplate,
} from '../types.ts';

const KNOWN_OPTIONS = ['userDn', 'passwordAttribute', 'startTls', 'groupBase'];
const PASSWORD_ATTRIBUTES = ['userPassword', 'unicodePwd'] as const;
type PasswordAttribute = (typeof PASSWORD_ATTRIBUTES)[number];
/** RFC 3062, Password Modify extended operation. */
export const PASSWORD_MODIFY_OID = '1.3.6.1.4.1.4203.1.11.1';
/** `attr={username},parent`: the account's RDN attribute and the DN of its container. */
const USER_DN = /^\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{username\}\s*,\s*(.+)$/;
/** Attributes a clone does not copy from its account: its naming value, passwords, and AD's per-object identity. */
const NOT_COPIED = new Set(
  [
    'dn',
    'userPassword',
    'unicodePwd',
    'objectGUID',
    'objectSid',
    'sAMAccountName',
    'userPrincipalName',
    'distinguishedName',
    'whenCreated',
    'whenChanged',
    'uSNCreated',
    'uSNChanged',
    'pwdLastSet',
    'memberOf',
    'name',
  ].map((a) => a.toLowerCase()),
);
/** Group attributes holding members: by DN (member, uniqueMember) or by naming value (memberUid, posixGroup). */
const MEMBER_ATTRIBUTES = ['member', 'uniqueMember', 'memberUid'] as const;
const MAX_REASON_CHARS = 200;
/** Errors of a connection that was never made: nothing can have reached the directory. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

function validateOptions(options: Record<string, string | number | boolean>): string[] {
  const problems: string[] = [];
  for (const name of Object.keys(options)) {
    if (!KNOWN_OPTIONS.includes(name)) {
      problems.push(`"${name}" is not an option of ldap connections (known: ${KNOWN_OPTIONS.join(', ')})`);
    }
  }
  const { userDn, passwordAttribute, startTls, groupBase } = options;
  if (userDn === undefined) {
    problems.push(
      'options.userDn is required: the DN of an account with {username} as its first RDN value, such as "uid={username},ou=services,dc=example,dc=org"',
    );
  } else if (typeof userDn !== 'string' || userDn.length > 1024 || !USER_DN.test(userDn)) {
    problems.push(
      'options.userDn must be a DN whose first RDN is attribute={username}, such as "uid={username},ou=services,dc=example,dc=org" or "cn={username},cn=Users,dc=corp,dc=example"',
    );
  } else if (userDn.split('{username}').length !== 2) {
    problems.push('options.userDn must hold {username} exactly once');
  }
  if (
    passwordAttribute !== undefined &&
    !PASSWORD_ATTRIBUTES.includes(passwordAttribute as PasswordAttribute)
  ) {
    problems.push(
      `options.passwordAttribute must be ${PASSWORD_ATTRIBUTES.map((a) => `"${a}"`).join(' or ')} (unicodePwd for Active Directory)`,
    );
  }
  if (startTls !== undefined && typeof startTls !== 'boolean') {
    problems.push('options.startTls must be true or false');
  }
  if (
    groupBase !== undefined &&
    !(
      typeof groupBase === 'string' &&
      groupBase.length > 0 &&
      groupBase.length <= 1024 &&
      groupBase.includes('=')
    )
  ) {
    problems.push('options.groupBase must be a DN, such as "ou=groups,dc=example,dc=org"');
  }
  return problems;
}

/**
 * The value AD's unicodePwd takes: the password in double quotes, encoded as UTF-16LE. Why exported: Active Directory
 * cannot run here, so its form is checked by a unit test.
 */
export function unicodePwdValue(password: string): Buffer {
  return Buffer.from(`"${password}"`, 'utf16le');
}

/** The modify AD takes to set a password as an admin: a replace of unicodePwd (not a delete and add, which is a user's own change). */
export function unicodePwdChange(password: string): Change {
  return new Change({
    operation: 'replace',
    modification: new Attribute({ type: 'unicodePwd', values: [unicodePwdValue(password)] }),
  });
}

/**
 * The Password Modify request value (RFC 3062): SEQUENCE { userIdentity [0] OCTET STRING, newPasswd [2] OCTET
 * STRING }, the old password left out because the admin sets it.
 */
export function passwordModifyValue(dn: string, password: string): Buffer {
  const writer = new BerWriter();
  writer.startSequence();
  writer.writeString(dn, 0x80);
  writer.writeString(password, 0x82);
  writer.endSequence();
  return writer.buffer;
}

/** The account's DN: `options.userDn` with its first RDN's value set to the username, escaped (RFC 4514). */
export function userDnOf(template: string, username: string): { dn: string; rdnAttribute: string } {
  const match = USER_DN.exec(template);
  if (!match)
    throw new TargetRefusedError(`options.userDn "${template}" has no attribute={username} first RDN`);
  const [, attribute, parent] = match as unknown as [string, string, string];
  return { dn: `${new DN({ [attribute]: username }).toString()},${parent.trim()}`, rdnAttribute: attribute };
}

const lower = (s: string) => s.toLowerCase();

class LdapSession implements TargetSession {
  readonly #connection: Connection;
  readonly #admin: Login;
  readonly #timeoutMs: number;
  readonly #tls: ConnectionOptions | undefined;
  readonly #startTls: boolean;
  readonly #attribute: PasswordAttribute;
  #client: Client | undefined;
  /** Whether the directory announces Password Modify (read from the root DSE once). */
  #passwordModify: boolean | undefined;
  #groupBase: string | undefined;

  constructor(connection: Connection, admin: Login, timeoutMs: number) {
    this.#connection = connection;
    this.#admin = admin;
    this.#timeoutMs = timeoutMs;
    const mode = connection.tls?.mode ?? 'verify-full';
    const servername = isIP(connection.host) ? {} : { servername: connection.host };
    this.#tls =
      mode === 'disable'
        ? undefined
        : mode === 'require'
          ? { rejectUnauthorized: false, ...servername }
          : {
              rejectUnauthorized: true,
              ...servername,
              ...(connection.tls?.ca ? { ca: connection.tls.ca } : {}),
            };
    this.#startTls = connection.options?.startTls === true;
    this.#attribute =
      (connection.options?.passwordAttribute as PasswordAttribute | undefined) ?? 'userPassword';
  }

  get #where(): string {
    return `the directory at ${this.#connection.host}:${this.#connection.port}`;
  }

  #dn(username: string): { dn: string; rdnAttribute: string } {
    // The admin's own entry is its bind DN (the rotation of the admin's password); no credential can name the admin.
    if (username === this.#admin.username)
      return { dn: username, rdnAttribute: username.split('=')[0] ?? 'cn' };
    return userDnOf(String(this.#connection.options?.userDn ?? ''), username);
  }

  /** A client connected (LDAPS, or StartTLS when asked) and not yet bound. */
  async #connect(): Promise<Client> {
    const secure = this.#tls && !this.#startTls;
    const client = new Client({
      url: `${secure ? 'ldaps' : 'ldap'}://${isIP(this.#connection.host) === 6 ? `[${this.#connection.host}]` : this.#connection.host}:${this.#connection.port}`,
      timeout: this.#timeoutMs,
      connectTimeout: this.#timeoutMs,
      ...(secure ? { tlsOptions: this.#tls } : {}),
    });
    // The upgraded socket's certificate is checked against `host`; without it Node checks "localhost".
    if (this.#tls && this.#startTls) await client.startTLS({ ...this.#tls, host: this.#connection.host });
    return client;
  }

  /** The admin's bound client, made again after a cancelled call closed it. */
  async #bound(action: string): Promise<Client> {
    if (this.#client?.isBound) return this.#client;
    await this.#client?.unbind().catch(() => {});
    this.#client = undefined;
    let client: Client | undefined;
    try {
      client = await this.#connect();
      await client.bind(this.#admin.username, this.#admin.password);
    } catch (err) {
      await client?.unbind().catch(() => {});
      if (err instanceof InvalidCredentialsError) {
        throw nothingSent(
          new TargetRefusedError(
            `${action}: ${this.#where} refused the admin bind DN "${this.#admin.username}" (invalid credentials); check the connection's admin secret`,
            'LDAP_49',
          ),
        );
      }
      throw nothingSent(this.#classify(action, err, []));
    }
    this.#client = client;
    return client;
  }

  /**
   * Runs one admin operation, classified for the engine: a refusal by the directory (rights, schema, missing entry)
   * is TargetRefusedError, no answer or a busy directory TargetUnavailableError. A cancelled call closes the client.
   */
  async #run<T>(
    action: string,
    call: CallOptions | undefined,
    secrets: string[],
    op: (client: Client) => Promise<T>,
  ): Promise<T> {
    const client = await this.#bound(action);
    const cut = () => {
      if (this.#client === client) this.#client = undefined;
      client.unbind().catch(() => {});
    };
    if (call?.signal?.aborted) cut();
    call?.signal?.addEventListener('abort', cut, { once: true });
    try {
      return await op(client);
    } catch (err) {
      throw this.#classify(action, err, secrets);
    } finally {
      call?.signal?.removeEventListener('abort', cut);
    }
  }

  #classify(action: string, err: unknown, secrets: string[]): Error {
    if (err instanceof TargetRefusedError || err instanceof TargetUnavailableError) return err;
    const scrub = (text: string) =>
      scrubText(text.replace(/[\p{Cc}\s]+/gu, ' ').trim(), [...secrets, this.#admin.password]).slice(
        0,
        MAX_REASON_CHARS,
      );
    const message = scrub((err as Error)?.message ?? String(err));
    if (err instanceof ResultCodeError) {
      const code = `LDAP_${err.code}`;
      if (err instanceof BusyError || err instanceof UnavailableError) {
        return new TargetUnavailableError(
          `${action}: ${this.#where} is busy or unavailable (${message})`,
          code,
        );
      }
      if (err instanceof InsufficientAccessError) {
        return new TargetRefusedError(
          `${action}: ${this.#where} refused it for lack of rights (${message}); the admin "${this.#admin.username}" needs write access to the accounts' ${this.#attribute} and, for alternating users, to add entries and group members`,
          code,
        );
      }
      if (err instanceof ConfidentialityRequiredError || err instanceof StrongAuthRequiredError) {
        return new TargetRefusedError(
          `${action}: ${this.#where} requires an encrypted connection (${message}); set the connection's tls (LDAPS, or options.startTls)`,
          code,
        );
      }
      if (err instanceof ConstraintViolationError || err instanceof UnwillingToPerformError) {
        return new TargetRefusedError(
          `${action}: ${this.#where} refused the value (${message}); check the directory's password policy (length, history, complexity) against the credential's policy`,
          code,
        );
      }
      return new TargetRefusedError(`${action}: ${this.#where} refused it (${message})`, code);
    }
    const code = (err as { code?: string })?.code;
    const unavailable = new TargetUnavailableError(
      `${action}: ${this.#where} could not be reached or did not answer in time (${message}); check the host, the port and the TLS settings (LDAPS on 636, or options.startTls)`,
      code,
    );
    return code && NOT_CONNECTED.has(code) ? nothingSent(unavailable) : unavailable;
  }

  async #entry(
    client: Client,
    dn: string,
    attributes: string[],
  ): Promise<Record<string, string | string[] | Buffer | Buffer[]> | null> {
    try {
      const { searchEntries } = await client.search(dn, { scope: 'base', attributes });
      return searchEntries[0] ?? null;
    } catch (err) {
      if (err instanceof NoSuchObjectError) return null;
      throw err;
    }
  }

  async authenticate(login: Login, call?: CallOptions): Promise<AuthOutcome> {
    // An empty password is an unauthenticated bind (RFC 4513 §5.1.2), which many directories answer with success.
    if (login.password.length === 0) {
      return {
        ok: false,
        reason: 'rejected',
        message: `an empty password cannot log "${login.username}" in`,
      };
    }
    const { dn } = this.#dn(login.username);
    let client: Client | undefined;
    const cut = () => client?.unbind().catch(() => {});
    call?.signal?.addEventListener('abort', cut, { once: true });
    try {
      client = await this.#connect();
      await client.bind(dn, login.password);
      return { ok: true };
    } catch (err) {
      if (err instanceof InvalidCredentialsError) {
        return { ok: false, reason: 'rejected', message: `${this.#where} refused the bind of "${dn}"` };
      }
      throw this.#classify(`binding as "${dn}"`, err, [login.password]);
    } finally {
      call?.signal?.removeEventListener('abort', cut);
      await client?.unbind().catch(() => {});
    }
  }

  /**
   * A directory's ACLs cannot be read over LDAP, so the admin's write is proven by adding and deleting a probe entry
   * (an organizationalRole) under the accounts' container: the write alternating users need. The right to set
   * passwords itself shows at the first rotation.
   */
  async checkAdmin(call?: CallOptions): Promise<Check[]> {
    const container = this.#dn('keyturn-probe').dn.replace(/^[^,]+,/, '');
    const probe = `cn=keyturn-probe-${randomUUID()},${container}`;
    const name = `write under ${container}`;
    if (this.#attribute === 'unicodePwd' && !this.#tls) {
      return [
        {
          name: 'encrypted connection',
          ok: false,
          message:
            "Active Directory accepts unicodePwd only over LDAPS or StartTLS: set the connection's tls",
        },
      ];
    }
    return this.#run(`checking the rights of admin "${this.#admin.username}"`, call, [], async (c) => {
      try {
        await c.add(probe, { objectClass: 'organizationalRole', cn: probe.slice(3, probe.indexOf(',')) });
      } catch (err) {
        if (err instanceof InsufficientAccessError) {
          return [
            {
              name,
              ok: false,
              message: `"${this.#admin.username}" may not add entries under ${container}; grant it write there and to the accounts' ${this.#attribute}`,
            },
          ];
        }
        if (err instanceof NoSuchObjectError) {
          return [{ name, ok: false, message: `${container} does not exist: check options.userDn` }];
        }
        throw err;
      }
      await c.del(probe);
      return [
        {
          name,
          ok: true,
          message: `"${this.#admin.username}" may add and delete entries under ${container}`,
        },
      ];
    });
  }

  async userExists(username: string, call?: CallOptions): Promise<boolean> {
    const { dn } = this.#dn(username);
    return this.#run(
      `looking up "${dn}"`,
      call,
      [],
      async (c) => (await this.#entry(c, dn, ['1.1'])) !== null,
    );
  }

  /** AD takes unicodePwd only over an encrypted connection: refused before any connection is made. */
  #requireEncryption(): void {
    if (this.#attribute === 'unicodePwd' && !this.#tls) {
      throw nothingSent(
        new TargetRefusedError(
          `Active Directory accepts unicodePwd only over an encrypted connection; set the connection's tls (LDAPS on 636, or options.startTls) instead of mode "disable"`,
          'LDAP_TLS_REQUIRED',
        ),
      );
    }
  }

  async #setPassword(client: Client, dn: string, password: string): Promise<void> {
    if (this.#attribute === 'unicodePwd') {
      await client.modify(dn, unicodePwdChange(password));
      return;
    }
    if (this.#passwordModify === undefined) {
      const root = await this.#entry(client, '', ['supportedExtension']);
      const supported = [root?.supportedExtension ?? []].flat().map(String);
      this.#passwordModify = supported.includes(PASSWORD_MODIFY_OID);
    }
    if (this.#passwordModify) {
      await client.exop(PASSWORD_MODIFY_OID, passwordModifyValue(dn, password));
    } else {
      await client.modify(
        dn,
        new Change({
          operation: 'replace',
          modification: new Attribute({ type: 'userPassword', values: [password] }),
        }),
      );
    }
  }

  async updatePassword(username: string, password: string, call?: CallOptions): Promise<void> {
    this.#requireEncryption();
    const { dn } = this.#dn(username);
    await this.#run(`setting the password of "${dn}"`, call, [password], async (c) => {
      if (!(await this.#entry(c, dn, ['1.1']))) {
        throw new TargetRefusedError(`${this.#where} has no entry "${dn}"`, 'user-missing');
      }
      await this.#setPassword(c, dn, password);
    });
  }

  /** Where groups are looked for: options.groupBase, or the naming context that holds the accounts. */
  async #groupBaseOf(client: Client, dn: string): Promise<string> {
    if (this.#groupBase) return this.#groupBase;
    const configured = this.#connection.options?.groupBase;
    if (typeof configured === 'string') {
      this.#groupBase = configured;
      return configured;
    }
    const root = await this.#entry(client, '', ['namingContexts']);
    const contexts = [root?.namingContexts ?? []].flat().map(String);
    const suffix = contexts
      .filter((c) => lower(dn).endsWith(lower(c.replaceAll(/\s*,\s*/g, ','))))
      .sort((a, b) => b.length - a.length)[0];
    // Without a naming context that holds it, the accounts' container.
    this.#groupBase = suffix ?? dn.slice(dn.indexOf(',') + 1);
    return this.#groupBase;
  }

  /** The groups holding the account, by attribute: `member <group DN>`. */
  async #groupsOf(
    client: Client,
    dn: string,
    username: string,
  ): Promise<Array<{ group: string; attribute: string }>> {
    const base = await this.#groupBaseOf(client, dn);
    const found: Array<{ group: string; attribute: string }> = [];
    for (const attribute of MEMBER_ATTRIBUTES) {
      const value = attribute === 'memberUid' ? username : dn;
      try {
        const { searchEntries } = await client.search(base, {
          scope: 'sub',
          filter: new EqualityFilter({ attribute, value }),
          attributes: ['1.1'],
        });
        for (const entry of searchEntries) found.push({ group: entry.dn, attribute });
      } catch (err) {
        // A schema without the attribute answers an undefined-type filter with no entries or an error.
        if (err instanceof ResultCodeError && !(err instanceof InsufficientAccessError)) continue;
        throw err;
      }
    }
    return found;
  }

  async createUser(
    username: string,
    password: string,
    template: UserTemplate,
    call?: CallOptions,
  ): Promise<'created' | 'updated'> {
    this.#requireEncryption();
    const { dn, rdnAttribute } = this.#dn(username);
    const like = this.#dn(template.like);
    return this.#run(`creating "${dn}" like "${like.dn}"`, call, [password], async (c) => {
      const existing = await this.#entry(c, dn, ['1.1']);
      if (existing && template.exclusive) {
        throw new TargetRefusedError(
          `${this.#where} already has an entry "${dn}" that Keyturn did not make; it is left as it is`,
          'user-exists',
        );
      }
      const source = await this.#entry(c, like.dn, ['*']);
      if (!source)
        throw new TargetRefusedError(`${this.#where} has no entry "${like.dn}" to copy`, 'user-missing');
      if (!existing) {
        const attributes: Record<string, string[]> = {};
        for (const [name, value] of Object.entries(source)) {
          if (NOT_COPIED.has(lower(name)) || lower(name) === lower(rdnAttribute)) continue;
          const values = [value].flat().map(String);
          // ldapts lists a requested "*" as an attribute without values.
          if (values.length > 0) attributes[name] = values;
        }
        attributes[rdnAttribute] = [username];
        try {
          await c.add(dn, attributes);
        } catch (err) {
          // Made by an earlier attempt of this call: carry on as an update.
          if (!(err instanceof AlreadyExistsError)) throw err;
        }
      }
      await this.#setPassword(c, dn, password);
      const groups = await this.#groupsOf(c, like.dn, template.like);
      for (const { group, attribute } of groups) {
        try {
          await c.modify(
            group,
            new Change({
              operation: 'add',
              modification: new Attribute({
                type: attribute,
                values: [attribute === 'memberUid' ? username : dn],
              }),
            }),
          );
        } catch (err) {
          if (!(err instanceof TypeOrValueExistsError)) throw err;
        }
      }
      return existing ? 'updated' : 'created';
    });
  }

  async deleteUser(username: string, call?: CallOptions): Promise<void> {
    const { dn } = this.#dn(username);
    await this.#run(`deleting "${dn}"`, call, [], async (c) => {
      for (const { group, attribute } of await this.#groupsOf(c, dn, username)) {
        try {
          await c.modify(
            group,
            new Change({
              operation: 'delete',
              modification: new Attribute({
                type: attribute,
                values: [attribute === 'memberUid' ? username : dn],
              }),
            }),
          );
        } catch (err) {
          // Gone meanwhile; or the group's last member, which groupOfNames cannot lose: the group is left as it is.
          if (
            !(
              err instanceof NoSuchAttributeError ||
              err instanceof NoSuchObjectError ||
              err instanceof ObjectClassViolationError
            )
          )
            throw err;
        }
      }
      try {
        await c.del(dn);
      } catch (err) {
        if (!(err instanceof NoSuchObjectError)) throw err;
      }
    });
  }

  async accessOf(username: string, call?: CallOptions): Promise<string[] | null> {
    const { dn } = this.#dn(username);
    return this.#run(`reading the groups of "${dn}"`, call, [], async (c) => {
      const entry = await this.#entry(c, dn, ['objectClass']);
      if (!entry) return null;
      const groups = await this.#groupsOf(c, dn, username);
      return [
        ...[entry.objectClass ?? []].flat().map((o) => `objectClass ${lower(String(o))}`),
        ...groups.map(({ group, attribute }) => `${attribute} ${lower(group)}`),
      ].sort();
    });
  }

  async close(): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    await client?.unbind().catch(() => {});
  }
}

export const ldapTarget: TargetDriver = {
  type: 'ldap',
  engine: 'ldap',
  defaultPort: 636,
  validateOptions,
  async open(connection, admin, options) {
    return new LdapSession(connection, admin, options.timeoutMs);
  },
};
