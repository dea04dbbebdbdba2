// Bearer JWTs from trusted OIDC issuers (SPEC, Authentication): the unverified `iss` only picks the issuer's
// configuration; the signature is checked against that issuer's JWKS (configured, or discovered from
// <issuer>/.well-known/openid-configuration, which is how a Kubernetes service-account token works through the
// cluster's OIDC issuer), then issuer, audience, algorithm allow-list and expiry (required) are enforced, and the
// issuer's rules map the verified claims to a principal. Reasons for refusal are fixed strings, safe to log and
// audit: never the token, never a claim's value.
import {
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  errors,
  type JWTPayload,
  type JWTVerifyGetKey,
  jwtVerify,
} from 'jose';
import picomatch from 'picomatch';
import type { Principal } from './principal.ts';
import type { JwtIssuerConfig, JwtRule } from './tokens-file.ts';

export type JwtOutcome = { ok: true; principal: Principal } | { ok: false; reason: string };

export interface JwtAuthenticatorOptions {
  /** Timeout of each discovery and JWKS request. Default 5 s. */
  fetchTimeoutMs?: number;
  /** jose's cooldownDuration: how soon after a fetch a token with an unknown kid may refetch the JWKS. Default 30 s. */
  cooldownMs?: number;
  /** How long a fetched JWKS (and a discovery document) is used before it is fetched again. Default 10 min. */
  cacheMaxAgeMs?: number;
}

/** Tokens longer than this are refused before any parsing. */
const MAX_TOKEN_LENGTH = 16 * 1024;
const MAX_NAME_LENGTH = 256;
/** After a failed discovery with nothing cached, the failure is answered for this long (at most) without a fetch. */
const MAX_DISCOVERY_RETRY_MS = 5_000;
/** Algorithms that cannot come from a JWKS of public keys (and `none`): refused in configuration. */
const SYMMETRIC_OR_NONE = /^(none|HS\d+)$/i;

type RemoteKeys = ReturnType<typeof createRemoteJWKSet>;
type Matcher = (value: string) => boolean;

interface CompiledRule {
  rule: JwtRule;
  match: { path: string[]; test: Matcher }[];
}

interface IssuerState {
  config: JwtIssuerConfig;
  rules: CompiledRule[];
  keys?: { url: string; getKey: JWTVerifyGetKey };
  /** Discovery only: when the discovery document is next fetched (or, after a failure, may be retried). */
  nextDiscoveryAt: number;
  pendingDiscovery?: Promise<{ url: string; getKey: JWTVerifyGetKey }>;
  lastDiscoveryFailure?: string;
}

/** A refusal with a reason that is safe to log, raised from the key lookup and discovery. */
class Refusal extends Error {
  readonly reason: string;
  constructor(reason: string) {
    super(reason);
    this.reason = reason;
  }
}

const UNREACHABLE = 'JWKS unreachable';

export class JwtAuthenticator {
  private readonly issuers = new Map<string, IssuerState>();
  private readonly fetchTimeoutMs: number;
  private readonly cooldownMs: number;
  private readonly cacheMaxAgeMs: number;

  constructor(issuers: JwtIssuerConfig[], options: JwtAuthenticatorOptions = {}) {
    this.fetchTimeoutMs = Math.max(1, Math.round(options.fetchTimeoutMs ?? 5_000));
    this.cooldownMs = Math.max(0, options.cooldownMs ?? 30_000);
    this.cacheMaxAgeMs = Math.max(0, options.cacheMaxAgeMs ?? 600_000);
    for (const config of issuers) {
      if (this.issuers.has(config.issuer)) throw new Error(`JWT issuer ${config.issuer} is configured twice`);
      if (config.algorithms.length === 0)
        throw new Error(`JWT issuer ${config.issuer}: no algorithms allowed`);
      const bad = config.algorithms.find((a) => SYMMETRIC_OR_NONE.test(a));
      if (bad)
        throw new Error(`JWT issuer ${config.issuer}: algorithm ${bad} cannot be verified with a JWKS`);
      if (config.audience.length === 0) throw new Error(`JWT issuer ${config.issuer}: no audience`);
      const state: IssuerState = { config, rules: config.rules.map(compileRule), nextDiscoveryAt: 0 };
      if (config.jwksUrl !== undefined) {
        const url = httpUrl(config.jwksUrl);
        if (!url) throw new Error(`JWT issuer ${config.issuer}: jwksUrl is not an http(s) URL`);
        state.keys = { url: url.href, getKey: this.remoteKeys(url) };
      } else if (!httpUrl(config.issuer)) {
        throw new Error(`JWT issuer ${config.issuer}: not an http(s) URL, so it needs a jwksUrl`);
      }
      this.issuers.set(config.issuer, state);
    }
  }

  /** Cheap syntactic check: three base64url segments — lets the caller tell a JWT from an opaque static token. */
  static looksLikeJwt(token: string): boolean {
    // The header is a JSON object, so its encoding starts with "ey" ('{"'); the signature may be empty (alg none:
    // still a JWT, refused here with a reason rather than looked up as a static token).
    return (
      token.length <= MAX_TOKEN_LENGTH && /^ey[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token)
    );
  }

  async verify(token: string): Promise<JwtOutcome> {
    if (token.length > MAX_TOKEN_LENGTH) return refuse('token too large');
    let unverifiedIssuer: unknown;
    let alg: unknown;
    try {
      unverifiedIssuer = decodeJwt(token).iss;
      alg = decodeProtectedHeader(token).alg;
    } catch {
      return refuse('malformed token');
    }
    if (typeof unverifiedIssuer !== 'string') return refuse('no issuer');
    const state = this.issuers.get(unverifiedIssuer);
    if (!state) return refuse('issuer not trusted');
    const { config } = state;

    let payload: JWTPayload;
    try {
      const getKey = await this.keysFor(state);
      const options = {
        issuer: config.issuer,
        audience: config.audience,
        algorithms: config.algorithms,
        clockTolerance: config.clockSkewSeconds,
        requiredClaims: ['exp'],
      };
      try {
        payload = (await jwtVerify(token, getKey, options)).payload;
      } catch (err) {
        // A token without kid and several keys that fit its alg: try each (jose's documented pattern).
        if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err;
        payload = await verifyWithAnyOf(token, err, options);
      }
    } catch (err) {
      return refuse(classify(err, alg));
    }

    const rule = state.rules.find((r) =>
      r.match.every((m) => claimMatches(resolveClaim(payload, m.path), m.test)),
    );
    if (!rule) return refuse('no rule maps these claims to roles');
    const name = resolveClaim(payload, splitPath(rule.rule.nameClaim ?? 'sub'));
    if (typeof name !== 'string' || name.length === 0) return refuse('name claim missing or not a string');
    if (name.length > MAX_NAME_LENGTH) return refuse('name claim too long');
    // The name goes into audit events and logs: no control characters or line separators.
    if (/[\p{Cc}\u2028\u2029]/u.test(name)) return refuse('name claim has control characters');

    const principal: Principal = { name, roles: [...rule.rule.roles], via: 'jwt' };
    if (rule.rule.credentials) principal.credentials = [...rule.rule.credentials];
    if (rule.rule.labels) principal.labels = { ...rule.rule.labels };
    return { ok: true, principal };
  }

  private remoteKeys(url: URL): JWTVerifyGetKey {
    const remote: RemoteKeys = createRemoteJWKSet(url, {
      timeoutDuration: this.fetchTimeoutMs,
      cooldownDuration: this.cooldownMs,
      cacheMaxAge: this.cacheMaxAgeMs,
    });
    // Tell a key that is not there (or a set that is not usable) apart from a set that could not be fetched.
    return async (header, token) => {
      try {
        return await remote(header, token);
      } catch (err) {
        throw fetchFailure(err) ? new Refusal(UNREACHABLE) : err;
      }
    };
  }

  private async keysFor(state: IssuerState): Promise<JWTVerifyGetKey> {
    if (state.config.jwksUrl !== undefined) return state.keys!.getKey;
    const now = Date.now();
    if (now < state.nextDiscoveryAt) {
      if (state.keys) return state.keys.getKey;
      throw new Refusal(state.lastDiscoveryFailure ?? UNREACHABLE);
    }
    state.pendingDiscovery ??= this.discover(state).finally(() => {
      state.pendingDiscovery = undefined;
    });
    return (await state.pendingDiscovery).getKey;
  }

  /** Fetches the discovery document; keeps the JWKS (and jose's cache of it) when its URL has not changed. */
  private async discover(state: IssuerState): Promise<{ url: string; getKey: JWTVerifyGetKey }> {
    const retryMs = Math.min(this.cooldownMs, MAX_DISCOVERY_RETRY_MS);
    try {
      const url = await this.discoverJwksUrl(state.config.issuer);
      if (state.keys?.url !== url.href) state.keys = { url: url.href, getKey: this.remoteKeys(url) };
      state.nextDiscoveryAt = Date.now() + this.cacheMaxAgeMs;
      state.lastDiscoveryFailure = undefined;
      return state.keys;
    } catch (err) {
      const reason = err instanceof Refusal ? err.reason : UNREACHABLE;
      state.nextDiscoveryAt = Date.now() + retryMs;
      // A discovery that worked before keeps being used while the issuer does not answer.
      if (state.keys) return state.keys;
      state.lastDiscoveryFailure = reason;
      throw new Refusal(reason);
    }
  }

  private async discoverJwksUrl(issuer: string): Promise<URL> {
    const where = `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
    let doc: unknown;
    try {
      const res = await fetch(where, {
        redirect: 'manual',
        headers: { accept: 'application/json' },
        signal: AbortSignal.timeout(this.fetchTimeoutMs),
      });
      if (res.status !== 200) {
        await res.body?.cancel();
        throw new Refusal(UNREACHABLE);
      }
      doc = await res.json();
    } catch {
      throw new Refusal(UNREACHABLE);
    }
    if (typeof doc !== 'object' || doc === null) throw new Refusal('discovery document is not an object');
    const { issuer: named, jwks_uri: jwksUri } = doc as Record<string, unknown>;
    if (named !== issuer) throw new Refusal('discovery document names another issuer');
    const url = typeof jwksUri === 'string' ? httpUrl(jwksUri) : undefined;
    if (!url) throw new Refusal('discovery document has no usable jwks_uri');
    // An https issuer's keys are not taken over plain http.
    if (new URL(issuer).protocol === 'https:' && url.protocol !== 'https:') {
      throw new Refusal('discovery document has no usable jwks_uri');
    }
    return url;
  }
}

function refuse(reason: string): JwtOutcome {
  return { ok: false, reason };
}

function httpUrl(value: string): URL | undefined {
  try {
    const url = new URL(value);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url : undefined;
  } catch {
    return undefined;
  }
}

/** Whether an error from jose's remote key set means the JWKS could not be fetched (vs. a key that is not there). */
function fetchFailure(err: unknown): boolean {
  if (err instanceof errors.JWKSTimeout) return true;
  // jose raises its base JOSEError (no subclass) for a non-200 answer or a body that is not JSON.
  if (err instanceof errors.JOSEError) return err.code === errors.JOSEError.code;
  // fetch itself raises TypeError ("fetch failed"), or an AbortError; WebCrypto refusing a key raises other
  // DOMExceptions (DataError…), which are a bad key set, not an unreachable one.
  if (err instanceof DOMException) return err.name === 'AbortError' || err.name === 'TimeoutError';
  return err instanceof TypeError;
}

async function verifyWithAnyOf(
  token: string,
  multiple: InstanceType<typeof errors.JWKSMultipleMatchingKeys>,
  options: Parameters<typeof jwtVerify>[2],
): Promise<JWTPayload> {
  let last: unknown = new errors.JWSSignatureVerificationFailed();
  for await (const key of multiple) {
    try {
      return (await jwtVerify(token, key, options)).payload;
    } catch (err) {
      last = err;
      if (!(err instanceof errors.JWSSignatureVerificationFailed)) break;
    }
  }
  throw last;
}

function classify(err: unknown, alg: unknown): string {
  if (err instanceof Refusal) return err.reason;
  if (err instanceof errors.JWTExpired) return 'expired';
  if (err instanceof errors.JWTClaimValidationFailed) {
    switch (err.claim) {
      case 'iss':
        return 'issuer mismatch';
      case 'aud':
        return 'audience mismatch';
      case 'exp':
        return err.reason === 'missing' ? 'no expiry' : 'expiry invalid';
      case 'nbf':
        return 'not yet valid';
      default:
        return /^[a-z_]{1,20}$/.test(err.claim) ? `claim ${err.claim} invalid` : 'claims invalid';
    }
  }
  if (err instanceof errors.JOSEAlgNotAllowed) {
    // The header's alg is the caller's text: only a plausible algorithm name goes into the reason.
    return typeof alg === 'string' && /^[A-Za-z0-9+-]{1,16}$/.test(alg)
      ? `algorithm ${alg} not allowed`
      : 'algorithm not allowed';
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) return 'signature does not verify';
  if (err instanceof errors.JWKSNoMatchingKey) return 'no matching key in JWKS';
  if (err instanceof errors.JWKSMultipleMatchingKeys) return 'signature does not verify';
  if (err instanceof errors.JWKSInvalid) return 'JWKS invalid';
  if (err instanceof errors.JWKSTimeout) return UNREACHABLE;
  if (err instanceof errors.JOSENotSupported) return 'key or algorithm not supported';
  if (err instanceof errors.JWTInvalid || err instanceof errors.JWSInvalid) return 'malformed token';
  if (err instanceof errors.JWKInvalid) return 'JWKS invalid';
  return 'token refused';
}

// --- claim rules -------------------------------------------------------------------------------------------------

function compileRule(rule: JwtRule): CompiledRule {
  return {
    rule,
    match: Object.entries(rule.match).map(([claim, glob]) => ({
      path: splitPath(claim),
      // As for credential globs: `*` does not cross "/" (use `**` for values like paths or URLs); dots are ordinary.
      test: picomatch(glob, { dot: true, nobrace: true, noextglob: true }),
    })),
  };
}

function splitPath(claim: string): string[] {
  return claim.split('.');
}

/**
 * The claim at a dot path. A key may itself contain dots (Kubernetes' `kubernetes.io`), so at each level the
 * longest run of segments naming an existing key is tried first, then shorter ones.
 */
function resolveClaim(value: unknown, path: string[]): unknown {
  if (path.length === 0) return value;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  for (let i = path.length; i >= 1; i--) {
    const key = path.slice(0, i).join('.');
    if (!Object.hasOwn(value, key)) continue;
    const found = resolveClaim((value as Record<string, unknown>)[key], path.slice(i));
    if (found !== undefined) return found;
  }
  return undefined;
}

function claimMatches(value: unknown, test: Matcher): boolean {
  if (Array.isArray(value)) return value.some((v) => scalarMatches(v, test));
  return scalarMatches(value, test);
}

function scalarMatches(value: unknown, test: Matcher): boolean {
  if (typeof value === 'string') return test(value);
  if (typeof value === 'number' || typeof value === 'boolean') return test(String(value));
  return false;
}
