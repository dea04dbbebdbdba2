// The Target interface: the handful of verbs every downstream (database, cache, HTTP service) implements,
// after Vault's database plugin interface. The rotation engine only ever talks to this interface; a new
// downstream is a new folder under targets/ registered in targets/index.ts, never a change to the engine.
import type { Connection, Strategy } from '../registry/types.ts';

export interface Login {
  username: string;
  password: string;
  /**
   * Where the downstream names each secret of a user itself (AWS IAM: the access key id), which one `password` is.
   * Why not the username: an IAM user has up to two keys, and a login is made with a key, not with a user.
   */
  keyId?: string;
}

export type AuthOutcome =
  /** Logged in and ran the harmless query. */
  | { ok: true }
  /** The downstream answered and refused these credentials. */
  | { ok: false; reason: 'rejected'; message: string };

/** The downstream could not be reached or failed in a way that says nothing about the credentials. */
export class TargetUnavailableError extends Error {
  readonly code: string | undefined;
  /** See `nothingSent`. */
  beforeAnyChange = false;
  constructor(message: string, code?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TargetUnavailableError';
    this.code = code;
  }
}

/** The downstream refused an administrative change (missing privilege, missing user…): retrying will not help. */
export class TargetRefusedError extends Error {
  readonly code: string | undefined;
  /** See `nothingSent`. */
  beforeAnyChange = false;
  constructor(message: string, code?: string) {
    super(message);
    this.name = 'TargetRefusedError';
    this.code = code;
  }
}

/**
 * Marks a target error as raised before the verb could reach the downstream: the admin login failed, the address
 * refused the connection, the name did not resolve. Why: the engine saves the set step's write-ahead marker before a
 * password change goes out, and a failed first attempt then obliges it to put the old password back downstream
 * before it may give up, which cannot be done while the downstream is away. An error marked here proves that
 * attempt changed nothing, so the rotation fails cleanly instead of waiting for the downstream to come back. Mark
 * only what is certain: a timeout, a reset or an answer may all follow a change that landed.
 */
export function nothingSent<E extends Error>(err: E): E {
  if (err instanceof TargetUnavailableError || err instanceof TargetRefusedError) err.beforeAnyChange = true;
  return err;
}

/** Whether `err` is a target error marked by `nothingSent`. */
export function wasNothingSent(err: unknown): boolean {
  return (err instanceof TargetUnavailableError || err instanceof TargetRefusedError) && err.beforeAnyChange;
}

export interface UserTemplate {
  /** Create the new user with the same role memberships as this existing user. */
  like: string;
  /**
   * Only create: a user of that name that exists already is not Keyturn's to change (someone made it since Keyturn
   * looked), so createUser refuses it (TargetRefusedError, code "user-exists") and changes nothing.
   */
  exclusive?: boolean;
  /**
   * Keyturn's label for the user (`keyturn:<credential id>`, see labelOf). A session that can label users sets it in
   * the statements that create the user, and refuses (TargetRefusedError, code "not-keyturns") to change an existing
   * user that does not carry it. Ignored by sessions that cannot label users.
   */
  label?: string;
}

/** What labelOf finds: the user exists, with a label or none. */
export interface UserLabel {
  /**
   * The label as the downstream holds it (PostgreSQL: the role's comment, whoever wrote it; MySQL: the "keyturn" key
   * of the account's attributes), e.g. "keyturn:orders-db" on a user Keyturn made for credential orders-db; null:
   * none. What it means is decided above the targets (rotation/strategies.ts).
   */
  label: string | null;
}

/** A short-lived user made for one caller (a lease): the access of an existing user, until a given time. */
export interface LeaseUserSpec {
  /** The credential's user whose access the lease user gets (PostgreSQL: membership; MySQL: grants; Redis: rules). */
  of: string;
  /** When the lease ends. Downstreams that can enforce it themselves (PostgreSQL's VALID UNTIL) are told. */
  expiresAt: Date;
}

/**
 * What every verb of a session is given last, by the middleware that wraps every session (targets/middleware.ts).
 * Why: a verb that outlives its deadline must stop, not land later. After the engine gave up on a set and restored the
 * old password, a late ALTER ROLE would put the new one back behind its back: a lockout. A driver that can cancel its
 * I/O (the webhook: its request; PostgreSQL: its client) does so when `signal` aborts; the middleware rejects the call
 * at the deadline either way.
 */
export interface CallOptions {
  signal?: AbortSignal;
}

/** One thing rotations need of the downstream or of its admin, checked without changing anything a service uses. */
export interface Check {
  /** What was checked, short: "CREATEROLE", "administrator tag", "write under ou=services,dc=example,dc=org". */
  name: string;
  ok: boolean;
  /** What was found; when not ok, what to grant or change. Never a secret. */
  message: string;
}

/**
 * One open session with a downstream, made with the connection's admin login. Every verb takes `call` last
 * (CallOptions), given by the middleware, never by the engine.
 */
export interface TargetSession {
  /** What the server says it is (e.g. "10.11.6-MariaDB"), where the driver asked: for messages only. */
  readonly serverVersion?: string;
  /** Connects as `login` and runs a harmless query (SELECT 1, PING…). Throws TargetUnavailableError. */
  authenticate(login: Login, call?: CallOptions): Promise<AuthOutcome>;
  /**
   * Logs in as the admin and checks the privileges rotations need (PostgreSQL: CREATEROLE; MySQL: CREATE USER;
   * Redis: ACL SETUSER; RabbitMQ: the administrator tag; LDAP: a write under the accounts' container), changing
   * nothing a service uses. Why: a connection registered with an admin that cannot rotate fails only at the first
   * rotation, weeks later, as an incident; verify (registration) and dry run ask first. A refused admin login throws
   * as in every verb; a missing privilege is a check with ok false naming it.
   */
  checkAdmin(call?: CallOptions): Promise<Check[]>;
  /** Whether a user exists. */
  userExists(username: string, call?: CallOptions): Promise<boolean>;
  /** NewUser: creates `username` with `password`, copying the template's memberships; updates it if present. */
  createUser(
    username: string,
    password: string,
    template: UserTemplate,
    call?: CallOptions,
  ): Promise<'created' | 'updated'>;
  /** UpdateUser: sets the password of an existing user. */
  updatePassword(username: string, password: string, call?: CallOptions): Promise<void>;
  /** DeleteUser. */
  deleteUser(username: string, call?: CallOptions): Promise<void>;
  /**
   * A user's access in a form two users can be compared by (PostgreSQL: its group roles; MySQL: its grants with
   * its own name left out; Redis: its ACL rules), sorted; null when the user does not exist. Why: before Keyturn
   * adopts an existing `<user>_clone` it checks that the clone gives the service exactly what the user does.
   */
  accessOf?(username: string, call?: CallOptions): Promise<string[] | null>;
  /**
   * Downstreams that can label a user (PostgreSQL: COMMENT ON ROLE; MySQL 8.0.21+: the account's ATTRIBUTE): the
   * user's label (see UserLabel), or null when the user does not exist.
   * Why: a later check (registration, every rotation of an alternating pair's clone) tells the users Keyturn made from
   * one someone else made under the same name, even after the credential was deleted and registered again.
   */
  labelOf?(username: string, call?: CallOptions): Promise<UserLabel | null>;
  /** Downstreams that can label a user: puts Keyturn's label on an existing user (adoption; clones made before labels). */
  setLabel?(username: string, label: string, call?: CallOptions): Promise<void>;
  /**
   * Present exactly when this session's server can hold two passwords per user (Redis ACL: always; MySQL: 8.0.14+,
   * which the session asks the server at open; MariaDB: never). Single-user then overlaps the old and the new password
   * instead of having a window, and `gracePeriod` says when the old one goes. Why a group and no flag on the driver: a
   * capability is declared once, by its verbs; whoever needs to know asks a session (issue 16).
   */
  readonly dualPasswords?: DualPasswords;
  /** Present exactly when the downstream can make short-lived users for leases (its verbs below). */
  readonly leaseUsers?: LeaseUsers;
  /**
   * Present exactly when the downstream makes each secret itself and Keyturn can only ask for a new one (AWS IAM access
   * keys): updatePassword, createUser and the dual-password verbs do not apply, and the engine's set step mints instead
   * of sending a password it generated (see MintedSecrets).
   */
  readonly mintedSecrets?: MintedSecrets;
  /** Close: releases connections. */
  close(): Promise<void>;
}

/** Two passwords per user (TargetSession.dualPasswords). Every verb takes `call` last, as the session's do. */
export interface DualPasswords {
  /**
   * Leaves the user with exactly two passwords, `keep` and `password`, so that connections using either work while
   * clients move over. Idempotent.
   */
  set(username: string, passwords: { keep: string; password: string }, call?: CallOptions): Promise<void>;
  /**
   * Leaves the user with only `keep`; removes `remove` if it still has it. Idempotent. `keep` never stops working
   * meanwhile. Both are given because some downstreams cannot remove a password by its value (MySQL drops only the
   * secondary one, so it first makes `keep` the primary).
   */
  remove(username: string, passwords: { remove: string; keep: string }, call?: CallOptions): Promise<void>;
}

/** A secret the downstream made: its id (AWS: the access key id, not secret) and its value. */
export interface MintedSecret {
  keyId: string;
  secret: string;
}

/** One of a user's secrets as the downstream lists it: never its value. */
export interface SecretKey {
  keyId: string;
  active: boolean;
  createdAt: Date;
}

/**
 * Secrets the downstream makes (TargetSession.mintedSecrets), after IAM's access keys: a user holds at most `limit` of
 * them, each active or not, and a new one may be refused for a while after it is made (eventual consistency). Why the
 * engine needs its own path for them: the secret exists only once the downstream answered, so it cannot be written to
 * the store before the change goes out (I2's write-ahead); the engine records which keys existed before it minted
 * (Rotation.keysBefore) and deletes any key it made but could not store. Every verb takes `call` last.
 */
export interface MintedSecrets {
  /** How many secrets a user may hold, active or not (AWS: two access keys). */
  readonly limit: number;
  /** How long a new secret may be refused after it was made before that means something (AWS: a few seconds). */
  readonly settleMs: number;
  /** The user's secrets, oldest first. TargetRefusedError (code "no-such-user") when the user does not exist. */
  list(username: string, call?: CallOptions): Promise<SecretKey[]>;
  /**
   * Makes a new, active secret for `username`. Not idempotent: each call makes another; the caller stores it at once.
   * TargetRefusedError (code "limit") when the user holds `limit` already.
   */
  mint(username: string, call?: CallOptions): Promise<MintedSecret>;
  /** Stops a secret from working, keeping it listed (AWS: Inactive). Idempotent. */
  deactivate(username: string, keyId: string, call?: CallOptions): Promise<void>;
  /** Deletes a secret. Idempotent: one that is gone already is fine. */
  delete(username: string, keyId: string, call?: CallOptions): Promise<void>;
}

/** Short-lived users for leases (TargetSession.leaseUsers), after Vault's NewUser with an expiration. */
export interface LeaseUsers {
  /**
   * Creates the short-lived user `username` with the access of `spec.of`. Idempotent: an existing user of that name
   * gets `password` and the expiry again.
   */
  create(username: string, password: string, spec: LeaseUserSpec, call?: CallOptions): Promise<void>;
  /**
   * Renewal: moves a lease user's expiry, where the downstream enforces one, after checking that the lease user still
   * cannot change other users' passwords (TargetRefusedError when it can: not extended).
   */
  extend(username: string, expiresAt: Date, call?: CallOptions): Promise<void>;
  /**
   * Drops a lease user and ends its open sessions; whatever it owns goes to `of`, never deleted. Idempotent: a missing
   * user is fine.
   */
  drop(username: string, spec: { of: string }, call?: CallOptions): Promise<void>;
}

export interface TargetDriver {
  /** The connection `type` this driver serves. */
  readonly type: string;
  /** The `engine` field written into the store document (AWS template layout). */
  readonly engine: string;
  readonly defaultPort: number;
  /**
   * The downstream service owns its users and has no look-up (webhook): `userExists` cannot tell whose a user is, so
   * the check that an existing `<user>_clone` is Keyturn's own does not apply; the service decides.
   */
  readonly serviceOwnsUsers?: boolean;
  /**
   * What registration accepts of this downstream where it is less than everything, and why (AWS IAM: single-user
   * only, as a user's two access keys are its alternation; no import, as a key is adopted only with its id). A
   * registration outside it is a 422 with `why`.
   */
  readonly registration?: { strategies: readonly Strategy[]; import: boolean; why: string };
  /**
   * Why the connection's admin cannot be rotated by Keyturn (a 422 with this text); absent when it can. Webhook: the
   * admin is a signing key the service holds too.
   */
  readonly adminRotationRefused?: string;
  /**
   * A downstream with one well-known address (AWS IAM: iam.amazonaws.com): the connection's host may be left out, and
   * its `region` and `endpoint` apply (an endpoint URL replaces host and port: an emulator, a VPC endpoint).
   */
  readonly endpoint?: { defaultHost: string };
  /** Problems with a connection's `options` for this target, each naming the option; empty when valid. */
  validateOptions?(options: Record<string, string | number | boolean>): string[];
  /** Initialize: opens a session with the connection's admin login. */
  open(connection: Connection, admin: Login, options: { timeoutMs: number }): Promise<TargetSession>;
}
