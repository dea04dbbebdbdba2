// From what a request presents to a principal: a verified client certificate (mTLS), or a bearer token that is
// the static admin token, a token of the tokens file, or a JWT from a trusted issuer. Static tokens are compared
// as SHA-256 digests in constant time, against every entry (no early exit that would tell which entry was near).
// Reasons for a refusal are safe to log and audit: they never contain the token.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { JwtAuthenticator } from './jwt.ts';
import type { Principal } from './principal.ts';
import type { TokensFile } from './tokens-file.ts';

export type AuthOutcome = { ok: true; principal: Principal } | { ok: false; reason: string };

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

/** Three base64url segments: a JWT rather than an opaque static token. */
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

const sha256 = (value: string): Buffer => createHash('sha256').update(value, 'utf8').digest();

export class Authenticator {
  readonly #static: StaticEntry[];
  readonly #certificates: Map<string, Principal>;
  readonly #jwt: JwtAuthenticator | undefined;

  constructor(options: { adminToken: string; tokens?: TokensFile; jwt?: JwtAuthenticator }) {
    this.#static = [
      {
        digest: sha256(options.adminToken),
        principal: { name: 'admin', roles: ['admin'], via: 'admin-token' },
      },
      ...(options.tokens?.tokens ?? []).map((t) => ({
        digest: Buffer.from(t.sha256, 'hex'),
        principal: bound({ name: t.name, roles: t.roles, via: 'static-token' }, t),
        ...(t.expiresAt ? { expiresAt: t.expiresAt.getTime() } : {}),
      })),
    ];
    this.#certificates = new Map(
      (options.tokens?.certificates ?? []).map((c) => [
        c.subject,
        bound({ name: c.name, roles: c.roles, via: 'certificate' }, c),
      ]),
    );
    this.#jwt = options.jwt;
  }

  async authenticate(presented: Presented): Promise<AuthOutcome> {
    const header = presented.authorization;
    if (header === undefined && presented.certificateSubject !== undefined) {
      const principal = this.#certificates.get(presented.certificateSubject);
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
    for (const entry of this.#static) {
      // Every entry is compared, whatever matched before: the time taken does not depend on which one matches.
      if (timingSafeEqual(entry.digest, digest) && !found) found = entry;
    }
    if (found) {
      if (found.expiresAt !== undefined && found.expiresAt <= Date.now()) {
        return { ok: false, reason: `token of "${found.principal.name}" expired` };
      }
      return { ok: true, principal: found.principal };
    }
    if (this.#jwt && JWT_SHAPE.test(token)) {
      const outcome = await this.#jwt.verify(token);
      return outcome.ok ? outcome : { ok: false, reason: `JWT refused: ${outcome.reason}` };
    }
    return { ok: false, reason: 'unknown token' };
  }
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
