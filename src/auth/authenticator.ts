// From what a request presents to a principal: a verified client certificate (mTLS), or a bearer token that is
// the static admin token, a token of the tokens file, or a JWT from a trusted issuer. Static tokens are compared
// as SHA-256 digests in constant time, against every entry (no early exit that would tell which entry was near).
// Reasons for a refusal are safe to log and audit: they never contain the token.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { JwtAuthenticator } from './jwt.ts';
import type { Principal } from './principal.ts';
import type { TokensFile } from './tokens-file.ts';

/** A static token refused for what became of it: the principal it names is safe to audit, its value never is. */
export interface RefusedToken {
  /** The entry's name in the tokens file. */
  name: string;
  state: 'expired' | 'revoked';
  /** When it expired, or when the reload that removed it was applied (ISO 8601). */
  at: string;
}

export type AuthOutcome =
  | { ok: true; principal: Principal }
  | { ok: false; reason: string; token?: RefusedToken };

export interface Presented {
  /** The Authorization header as sent. */
  authorization: string | undefined;
  /** The CN of a client certificate the TLS layer verified, if any. */
  certificateSubject: string | undefined;
}

interface StaticEntry {
  digest: Buffer;
  principal: Principal;
  expiresAt?: number;
}

/** What a tokens file makes of the authenticator; replaced as a whole when the file is reloaded. */
interface FileState {
  /** The admin token's entry first (when there is one), then the file's tokens. */
  static: StaticEntry[];
  /** The file's tokens by name (names are unique in a file). */
  byName: Map<string, StaticEntry>;
  certificates: Map<string, Principal>;
  jwt: JwtAuthenticator | undefined;
  /** The file's JWT issuers: issuer → its configuration as JSON (to tell what a reload changed). */
  issuers: Map<string, string>;
}

/** What a reload changed, entry by entry (`token "ci"`, `certificate "payments-worker"`, `issuer https://…`). */
export interface TokensChange {
  added: string[];
  removed: string[];
  changed: string[];
  /** Names of the tokens whose value stopped working: removed from the file, or given another sha256. */
  revoked: string[];
}

/** Three base64url segments: a JWT rather than an opaque static token. */
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** Digests of revoked tokens remembered, so that their use is reported as such; the oldest are forgotten first. */
const REVOKED_REMEMBERED = 10_000;

const sha256 = (value: string): Buffer => createHash('sha256').update(value, 'utf8').digest();

export class Authenticator {
  readonly #admin: StaticEntry | undefined;
  #state: FileState;
  /** sha256 (hex) of tokens a reload removed → whose they were and when, until re-added. */
  readonly #revoked = new Map<string, { name: string; at: string }>();

  /**
   * `adminToken` is optional: in production the administrators may come from the tokens file or a JWT issuer
   * instead (boot.ts refuses to start when nothing provides one).
   */
  constructor(options: { adminToken?: string; tokens?: TokensFile; jwt?: JwtAuthenticator }) {
    this.#admin =
      options.adminToken === undefined
        ? undefined
        : {
            digest: sha256(options.adminToken),
            principal: { name: 'admin', roles: ['admin'], via: 'admin-token' },
          };
    this.#state = this.#build(options.tokens, options.jwt);
  }

  #build(tokens: TokensFile | undefined, jwt: JwtAuthenticator | undefined): FileState {
    const entries: StaticEntry[] = (tokens?.tokens ?? []).map((t) => ({
      digest: Buffer.from(t.sha256, 'hex'),
      principal: bound({ name: t.name, roles: t.roles, via: 'static-token' }, t),
      ...(t.expiresAt ? { expiresAt: t.expiresAt.getTime() } : {}),
    }));
    return {
      static: this.#admin ? [this.#admin, ...entries] : entries,
      byName: new Map(entries.map((e) => [e.principal.name, e])),
      certificates: new Map(
        (tokens?.certificates ?? []).map((c) => [
          c.subject,
          bound({ name: c.name, roles: c.roles, via: 'certificate' }, c),
        ]),
      ),
      jwt,
      issuers: new Map((tokens?.jwt ?? []).map((j) => [j.issuer, JSON.stringify(j)])),
    };
  }

  /**
   * Puts a reloaded tokens file in force at once: the next request is judged by it. Tokens no longer in the file
   * (or whose sha256 changed) stop working, and their later use is refused as revoked. The static admin token, if
   * any, stays. `jwt` is the authenticator of the file's issuers (the caller keeps the old one when they did not
   * change, so that fetched keys are kept).
   */
  replace(tokens: TokensFile, jwt?: JwtAuthenticator, at = new Date()): TokensChange {
    const before = this.#state;
    const after = this.#build(tokens, jwt);
    const change: TokensChange = { added: [], removed: [], changed: [], revoked: [] };
    const compare = <T>(
      kind: string,
      old: Map<string, T>,
      now: Map<string, T>,
      same: (a: T, b: T) => boolean,
    ) => {
      for (const [name, entry] of now) {
        const was = old.get(name);
        if (was === undefined) change.added.push(`${kind} "${name}"`);
        else if (!same(was, entry)) change.changed.push(`${kind} "${name}"`);
      }
      for (const name of old.keys()) if (!now.has(name)) change.removed.push(`${kind} "${name}"`);
    };
    compare('token', before.byName, after.byName, (a, b) => sameEntry(a, b));
    compare(
      'certificate',
      new Map([...before.certificates.values()].map((p) => [p.name, p])),
      new Map([...after.certificates.values()].map((p) => [p.name, p])),
      (a, b) => JSON.stringify(a) === JSON.stringify(b),
    );
    compare('issuer', before.issuers, after.issuers, (a, b) => a === b);
    const kept = new Set(after.static.map((e) => e.digest.toString('hex')));
    for (const entry of before.static) {
      const hex = entry.digest.toString('hex');
      if (entry === this.#admin || kept.has(hex)) continue;
      change.revoked.push(entry.principal.name);
      this.#revoked.delete(hex);
      this.#revoked.set(hex, { name: entry.principal.name, at: at.toISOString() });
      if (this.#revoked.size > REVOKED_REMEMBERED) {
        const oldest = this.#revoked.keys().next().value;
        if (oldest !== undefined) this.#revoked.delete(oldest);
      }
    }
    for (const hex of kept) this.#revoked.delete(hex);
    this.#state = after;
    return change;
  }

  /**
   * Whether a principal authenticated earlier (an open event stream) would still be let in as it is: its token or
   * certificate still in the file with the same roles and bindings, and not expired. JWT principals carry their own
   * expiry, checked when they connected; the static admin token cannot change while the process runs.
   */
  stillValid(principal: Principal, now = Date.now()): boolean {
    if (principal.via === 'static-token') {
      const entry = this.#state.byName.get(principal.name);
      return (
        entry !== undefined &&
        (entry.expiresAt === undefined || entry.expiresAt > now) &&
        JSON.stringify(entry.principal) === JSON.stringify(principal)
      );
    }
    if (principal.via === 'certificate') {
      const same = JSON.stringify(principal);
      return [...this.#state.certificates.values()].some((p) => JSON.stringify(p) === same);
    }
    return true;
  }

  async authenticate(presented: Presented): Promise<AuthOutcome> {
    // One state for the whole request, even if a reload lands in the middle of it.
    const state = this.#state;
    const header = presented.authorization;
    if (header === undefined && presented.certificateSubject !== undefined) {
      const principal = state.certificates.get(presented.certificateSubject);
      return principal
        ? { ok: true, principal }
        : { ok: false, reason: 'client certificate not mapped to a principal in the tokens file' };
    }
    if (header === undefined) return { ok: false, reason: 'no Authorization header' };
    const match = /^Bearer[ ]+([^\s]+)\s*$/i.exec(header);
    const token = match?.[1];
    if (!token) return { ok: false, reason: 'not a Bearer token' };
    const digest = sha256(token);
    let found: StaticEntry | undefined;
    for (const entry of state.static) {
      // Every entry is compared, whatever matched before: the time taken does not depend on which one matches.
      if (timingSafeEqual(entry.digest, digest) && !found) found = entry;
    }
    if (found) {
      // Enforced at every request, not when the file was read: a token stops working the moment it expires.
      if (found.expiresAt !== undefined && found.expiresAt <= Date.now()) {
        const at = new Date(found.expiresAt).toISOString();
        return {
          ok: false,
          reason: `token of "${found.principal.name}" expired at ${at}`,
          token: { name: found.principal.name, state: 'expired', at },
        };
      }
      return { ok: true, principal: found.principal };
    }
    if (state.jwt && JWT_SHAPE.test(token)) {
      const outcome = await state.jwt.verify(token);
      return outcome.ok ? outcome : { ok: false, reason: `JWT refused: ${outcome.reason}` };
    }
    // Not a live token: one a reload removed is reported as revoked (a hash lookup, after the constant-time pass
    // over the live entries: it tells only a caller who holds the revoked token that it was revoked).
    const revoked = this.#revoked.get(digest.toString('hex'));
    if (revoked) {
      return {
        ok: false,
        reason: `token of "${revoked.name}" was revoked (removed from the tokens file at ${revoked.at})`,
        token: { name: revoked.name, state: 'revoked', at: revoked.at },
      };
    }
    return { ok: false, reason: 'unknown token' };
  }
}

function sameEntry(a: StaticEntry, b: StaticEntry): boolean {
  return (
    a.digest.equals(b.digest) &&
    a.expiresAt === b.expiresAt &&
    JSON.stringify(a.principal) === JSON.stringify(b.principal)
  );
}

/** A reader's bindings, only when it has them. */
function bound(
  principal: Principal,
  entry: { credentials?: string[]; labels?: Record<string, string> },
): Principal {
  return {
    ...principal,
    ...(entry.credentials?.length ? { credentials: entry.credentials } : {}),
    ...(entry.labels && Object.keys(entry.labels).length ? { labels: entry.labels } : {}),
  };
}
