// JWT bearer authentication against real local OIDC issuers: a node:http server on 127.0.0.1 serving the discovery
// document and the JWKS, keys generated here. Acceptance and mapping, every kind of refusal (with its reason, never
// the token), Kubernetes-style tokens through discovery, JWKS key rotation, and an issuer that does not answer.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  type CryptoKey,
  exportJWK,
  exportSPKI,
  generateKeyPair,
  type JWK,
  type JWTPayload,
  SignJWT,
  UnsecuredJWT,
} from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JwtAuthenticator, type JwtOutcome } from '../../src/auth/jwt.ts';
import type { JwtIssuerConfig } from '../../src/auth/tokens-file.ts';

interface TestKey {
  kid: string;
  alg: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  jwk: JWK;
}

async function makeKey(kid: string, alg: 'RS256' | 'ES256' | 'RS512' = 'RS256'): Promise<TestKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, use: 'sig' };
  // RS512 keys are published without "alg" (as many issuers do), so only the allow-list stops RS512 tokens.
  if (alg !== 'RS512') jwk.alg = alg;
  return { kid, alg, privateKey, publicKey, jwk };
}

/** An OIDC issuer on 127.0.0.1: its keys, discovery document and availability can be changed by the test. */
interface Issuer {
  url: string;
  keys: TestKey[];
  jwksPath: string;
  /** Overrides the discovery document's issuer. */
  discoveryIssuer?: string;
  /** Answer every request with this status instead. */
  failWith?: number;
  /** Never answer (for timeouts). */
  hang?: boolean;
  jwksFetches: number;
  discoveryFetches: number;
  server: Server;
  close(): Promise<void>;
}

const servers: Issuer[] = [];

async function startIssuer(jwksPath = '/jwks'): Promise<Issuer> {
  const pending = new Set<ServerResponse>();
  const issuer = {
    keys: [] as TestKey[],
    jwksPath,
    jwksFetches: 0,
    discoveryFetches: 0,
  } as Issuer;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (issuer.hang) {
      pending.add(res);
      return;
    }
    if (issuer.failWith) {
      res.writeHead(issuer.failWith).end('no');
      return;
    }
    const send = (body: unknown) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    if (req.url === '/.well-known/openid-configuration') {
      issuer.discoveryFetches++;
      send({
        issuer: issuer.discoveryIssuer ?? issuer.url,
        jwks_uri: `${issuer.url}${issuer.jwksPath}`,
        response_types_supported: ['id_token'],
        subject_types_supported: ['public'],
        id_token_signing_alg_values_supported: ['RS256', 'ES256'],
      });
    } else if (req.url === issuer.jwksPath) {
      issuer.jwksFetches++;
      send({ keys: issuer.keys.map((k) => k.jwk) });
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  issuer.server = server;
  issuer.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  issuer.close = async () => {
    for (const res of pending) res.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  servers.push(issuer);
  return issuer;
}

const now = () => Math.floor(Date.now() / 1000);

async function sign(
  key: TestKey,
  claims: JWTPayload,
  opts: { exp?: number | null; alg?: string; kid?: string | null } = {},
): Promise<string> {
  const header: { alg: string; kid?: string; typ: string } = { alg: opts.alg ?? key.alg, typ: 'JWT' };
  if (opts.kid !== null) header.kid = opts.kid ?? key.kid;
  const jwt = new SignJWT(claims).setProtectedHeader(header).setIssuedAt();
  if (opts.exp !== null) jwt.setExpirationTime(opts.exp ?? now() + 300);
  return jwt.sign(key.privateKey);
}

function refused(outcome: JwtOutcome): string {
  expect(outcome.ok, JSON.stringify(outcome)).toBe(false);
  return outcome.ok ? '' : outcome.reason;
}

function accepted(outcome: JwtOutcome) {
  if (!outcome.ok) throw new Error(`refused: ${outcome.reason}`);
  return outcome.principal;
}

afterAll(async () => {
  await Promise.all(servers.map((s) => s.close().catch(() => undefined)));
});

describe('a configured issuer with a jwksUrl', () => {
  let idp: Issuer;
  let rsa: TestKey;
  let ec: TestKey;
  let auth: JwtAuthenticator;
  const AUD = 'keyturn';
  const base = (extra: JWTPayload = {}): JWTPayload => ({ iss: idp.url, aud: AUD, sub: 'alice', ...extra });

  beforeAll(async () => {
    idp = await startIssuer();
    rsa = await makeKey('rsa-1');
    ec = await makeKey('ec-1', 'ES256');
    idp.keys = [rsa, ec];
    const config: JwtIssuerConfig = {
      issuer: idp.url,
      audience: [AUD, 'keyturn-staging'],
      jwksUrl: `${idp.url}/jwks`,
      algorithms: ['RS256', 'ES256'],
      clockSkewSeconds: 30,
      rules: [
        { match: { groups: 'keyturn-admins' }, roles: ['admin'] },
        {
          match: { sub: 'svc-*', env: 'prod' },
          nameClaim: 'client_id',
          roles: ['reader'],
          labels: { env: 'prod' },
        },
        { match: { sub: 'alice' }, roles: ['operator', 'auditor'] },
        { match: { sub: 'reader-*' }, roles: ['reader'], credentials: ['payments-*'] },
        { match: { sub: 'named' }, nameClaim: 'profile.email', roles: ['auditor'] },
      ],
    };
    auth = new JwtAuthenticator([config]);
  });

  it('accepts an RS256 token and maps the first matching rule to a principal', async () => {
    const principal = accepted(await auth.verify(await sign(rsa, base())));
    expect(principal).toEqual({ name: 'alice', roles: ['operator', 'auditor'], via: 'jwt' });
  });

  it('accepts an ES256 token', async () => {
    const principal = accepted(await auth.verify(await sign(ec, base({ sub: 'reader-7' }))));
    expect(principal).toEqual({
      name: 'reader-7',
      roles: ['reader'],
      credentials: ['payments-*'],
      via: 'jwt',
    });
  });

  it('accepts any of the configured audiences, also in an aud list', async () => {
    accepted(await auth.verify(await sign(rsa, base({ aud: 'keyturn-staging' }))));
    accepted(await auth.verify(await sign(rsa, base({ aud: ['other', AUD] }))));
  });

  it('matches a rule on any element of an array claim (groups)', async () => {
    const token = await sign(rsa, base({ sub: 'bob', groups: ['devs', 'keyturn-admins'] }));
    expect(accepted(await auth.verify(token))).toEqual({ name: 'bob', roles: ['admin'], via: 'jwt' });
    const none = await sign(rsa, base({ sub: 'bob', groups: ['devs', 'keyturn-admins-not'] }));
    expect(refused(await auth.verify(none))).toBe('no rule maps these claims to roles');
  });

  it('needs every match entry of a rule, and takes the name from nameClaim', async () => {
    const svc = await sign(rsa, base({ sub: 'svc-billing', env: 'prod', client_id: 'billing-api' }));
    expect(accepted(await auth.verify(svc))).toEqual({
      name: 'billing-api',
      roles: ['reader'],
      labels: { env: 'prod' },
      via: 'jwt',
    });
    const staging = await sign(rsa, base({ sub: 'svc-billing', env: 'staging', client_id: 'billing-api' }));
    expect(refused(await auth.verify(staging))).toBe('no rule maps these claims to roles');
    const nested = await sign(rsa, base({ sub: 'named', profile: { email: 'n@example.com' } }));
    expect(accepted(await auth.verify(nested)).name).toBe('n@example.com');
  });

  it('refuses a principal name that is missing, empty, too long or has control characters', async () => {
    const noName = await sign(rsa, base({ sub: 'svc-x', env: 'prod' }));
    expect(refused(await auth.verify(noName))).toBe('name claim missing or not a string');
    const empty = await sign(rsa, base({ sub: 'svc-x', env: 'prod', client_id: '' }));
    expect(refused(await auth.verify(empty))).toBe('name claim missing or not a string');
    const number = await sign(rsa, base({ sub: 'svc-x', env: 'prod', client_id: 42 }));
    expect(refused(await auth.verify(number))).toBe('name claim missing or not a string');
    const long = await sign(rsa, base({ sub: 'svc-x', env: 'prod', client_id: 'x'.repeat(257) }));
    expect(refused(await auth.verify(long))).toBe('name claim too long');
    const max = await sign(rsa, base({ sub: 'svc-x', env: 'prod', client_id: 'x'.repeat(256) }));
    expect(accepted(await auth.verify(max)).name).toHaveLength(256);
    const injected = await sign(rsa, base({ sub: 'svc-x', env: 'prod', client_id: 'a\nforged audit line' }));
    expect(refused(await auth.verify(injected))).toBe('name claim has control characters');
  });

  it('refuses an issuer it does not trust', async () => {
    const token = await sign(rsa, base({ iss: 'https://evil.example.com' }));
    expect(refused(await auth.verify(token))).toBe('issuer not trusted');
    expect(refused(await auth.verify(await sign(rsa, base({ iss: undefined }))))).toBe('no issuer');
  });

  it('refuses another audience', async () => {
    expect(refused(await auth.verify(await sign(rsa, base({ aud: 'someone-else' }))))).toBe(
      'audience mismatch',
    );
    expect(refused(await auth.verify(await sign(rsa, base({ aud: undefined }))))).toBe('audience mismatch');
  });

  it('refuses an algorithm outside the allow-list (RS512 with [RS256, ES256])', async () => {
    const rs512 = await makeKey('rs512', 'RS512');
    idp.keys = [rsa, ec, rs512];
    try {
      expect(refused(await auth.verify(await sign(rs512, base())))).toBe('algorithm RS512 not allowed');
      // Also under an allowed key's kid: the allow-list is checked before any key is looked up.
      const underRsaKid = await sign(rs512, base(), { kid: rsa.kid });
      expect(refused(await auth.verify(underRsaKid))).toBe('algorithm RS512 not allowed');
    } finally {
      idp.keys = [rsa, ec];
    }
  });

  it('refuses alg none and an HS256 token forged with the public key as the secret', async () => {
    const unsecured = new UnsecuredJWT(base()).setIssuedAt().setExpirationTime('5m').encode();
    expect(JwtAuthenticator.looksLikeJwt(unsecured)).toBe(true);
    expect(refused(await auth.verify(unsecured))).toBe('algorithm none not allowed');

    const pem = await exportSPKI(rsa.publicKey);
    for (const secretText of [pem, JSON.stringify(rsa.jwk)]) {
      const forged = await new SignJWT(base())
        .setProtectedHeader({ alg: 'HS256', kid: rsa.kid })
        .setIssuedAt()
        .setExpirationTime('5m')
        .sign(new TextEncoder().encode(secretText));
      expect(refused(await auth.verify(forged))).toBe('algorithm HS256 not allowed');
    }
  });

  it('refuses a token signed by another key under the same kid', async () => {
    const impostor = await makeKey(rsa.kid);
    expect(refused(await auth.verify(await sign(impostor, base())))).toBe('signature does not verify');
    // A tampered payload under the real signature too.
    const [h, , s] = (await sign(rsa, base())).split('.');
    const payload = Buffer.from(JSON.stringify({ ...base({ sub: 'mallory' }), exp: now() + 300 })).toString(
      'base64url',
    );
    expect(refused(await auth.verify(`${h}.${payload}.${s}`))).toBe('signature does not verify');
  });

  it('refuses a token expired beyond the clock skew, accepts one expired within it', async () => {
    expect(refused(await auth.verify(await sign(rsa, base(), { exp: now() - 120 })))).toBe('expired');
    accepted(await auth.verify(await sign(rsa, base(), { exp: now() - 10 })));
  });

  it('refuses a token without exp, and one not yet valid', async () => {
    expect(refused(await auth.verify(await sign(rsa, base(), { exp: null })))).toBe('no expiry');
    expect(refused(await auth.verify(await sign(rsa, base({ nbf: now() + 600 }))))).toBe('not yet valid');
  });

  it('refuses a token whose kid is not in the JWKS, and a token without kid is checked against the keys', async () => {
    expect(refused(await auth.verify(await sign(rsa, base(), { kid: 'nope' })))).toBe(
      'no matching key in JWKS',
    );
    accepted(await auth.verify(await sign(rsa, base(), { kid: null })));
    // Two RS256 keys and no kid: each is tried.
    const second = await makeKey('rsa-2');
    idp.keys = [second, rsa, ec];
    try {
      const fresh = new JwtAuthenticator([
        {
          issuer: idp.url,
          audience: [AUD],
          jwksUrl: `${idp.url}/jwks`,
          algorithms: ['RS256'],
          clockSkewSeconds: 0,
          rules: [{ match: { sub: '*' }, roles: ['reader'] }],
        },
      ]);
      accepted(await fresh.verify(await sign(rsa, base(), { kid: null })));
      accepted(await fresh.verify(await sign(second, base(), { kid: null })));
      const stranger = await makeKey('x');
      expect(refused(await fresh.verify(await sign(stranger, base(), { kid: null })))).toBe(
        'signature does not verify',
      );
    } finally {
      idp.keys = [rsa, ec];
    }
  });

  it('refuses malformed and oversized tokens without throwing', async () => {
    expect(refused(await auth.verify('a.b.c'))).toBe('malformed token');
    expect(refused(await auth.verify('not a jwt'))).toBe('malformed token');
    expect(refused(await auth.verify(''))).toBe('malformed token');
    expect(refused(await auth.verify(`eyJ${'A'.repeat(20_000)}.e.e`))).toBe('token too large');
  });

  it('never puts the token or claim values in a reason', async () => {
    const secretish = 'sub-value-that-must-not-leak';
    const tokens = [
      await sign(rsa, base({ sub: secretish, aud: 'x' })),
      await sign(rsa, base({ sub: secretish }), { exp: now() - 3600 }),
      await sign(rsa, base({ sub: secretish, iss: `https://${secretish}` })),
      await sign(await makeKey(rsa.kid), base({ sub: secretish })),
      await sign(rsa, base({ sub: secretish })),
    ];
    for (const token of tokens) {
      const reason = refused(await auth.verify(token));
      expect(reason).not.toContain(secretish);
      expect(reason).not.toContain(token.split('.')[1]!.slice(0, 12));
    }
  });
});

describe('looksLikeJwt', () => {
  it('tells a compact JWT from an opaque token', async () => {
    const key = await makeKey('k');
    expect(JwtAuthenticator.looksLikeJwt(await sign(key, { sub: 'a' }))).toBe(true);
    expect(JwtAuthenticator.looksLikeJwt('k3y7urn-admin-token-0123456789abcdefghijklmnop')).toBe(false);
    expect(JwtAuthenticator.looksLikeJwt('a.b.c')).toBe(false);
    expect(JwtAuthenticator.looksLikeJwt('eyJh.b.c.d')).toBe(false);
    expect(JwtAuthenticator.looksLikeJwt('eyJh.b+c.d')).toBe(false);
    expect(JwtAuthenticator.looksLikeJwt('')).toBe(false);
  });
});

describe('configuration', () => {
  const cfg = (extra: Partial<JwtIssuerConfig>): JwtIssuerConfig => ({
    issuer: 'https://idp.example.com',
    audience: ['keyturn'],
    algorithms: ['RS256'],
    clockSkewSeconds: 0,
    rules: [],
    ...extra,
  });

  it('refuses symmetric algorithms, none, no audience, duplicate issuers and a non-URL issuer without jwksUrl', () => {
    expect(() => new JwtAuthenticator([cfg({ algorithms: ['RS256', 'HS256'] })])).toThrow(/HS256/);
    expect(() => new JwtAuthenticator([cfg({ algorithms: ['none'] })])).toThrow(/none/);
    expect(() => new JwtAuthenticator([cfg({ algorithms: [] })])).toThrow();
    expect(() => new JwtAuthenticator([cfg({ audience: [] })])).toThrow();
    expect(() => new JwtAuthenticator([cfg({}), cfg({})])).toThrow(/twice/);
    expect(() => new JwtAuthenticator([cfg({ issuer: 'corp-idp' })])).toThrow(/jwksUrl/);
    expect(() => new JwtAuthenticator([cfg({ jwksUrl: 'file:///etc/keys' })])).toThrow(/jwksUrl/);
    expect(
      () => new JwtAuthenticator([cfg({ issuer: 'corp-idp', jwksUrl: 'https://k.example.com/jwks' })]),
    ).not.toThrow();
  });
});

describe('a Kubernetes service-account token through OIDC discovery', () => {
  let cluster: Issuer;
  let key: TestKey;
  let auth: JwtAuthenticator;
  const k8sClaims = (namespace: string, sa: string, extra: JWTPayload = {}): JWTPayload => ({
    iss: cluster.url,
    sub: `system:serviceaccount:${namespace}:${sa}`,
    aud: ['https://kubernetes.default.svc.cluster.local', 'keyturn'],
    nbf: now() - 5,
    'kubernetes.io': {
      namespace,
      pod: { name: `${sa}-6d4f9c7b9-x2x7q`, uid: '6b0e4f3a-0000-4000-8000-000000000001' },
      serviceaccount: { name: sa, uid: '2c1f7c2e-0000-4000-8000-000000000002' },
    },
    ...extra,
  });

  beforeAll(async () => {
    cluster = await startIssuer('/openid/v1/jwks');
    key = await makeKey('k8s-sa-key-1');
    cluster.keys = [key];
    auth = new JwtAuthenticator([
      {
        issuer: cluster.url,
        audience: ['keyturn'],
        algorithms: ['RS256'],
        clockSkewSeconds: 60,
        rules: [
          {
            match: { sub: 'system:serviceaccount:payments:*' },
            roles: ['reader'],
            credentials: ['payments-*'],
          },
          {
            match: { 'kubernetes.io.namespace': 'platform', 'kubernetes.io.serviceaccount.name': 'rotator' },
            roles: ['operator'],
          },
        ],
      },
    ]);
  });

  it('discovers the JWKS from the issuer and maps the service account', async () => {
    const principal = accepted(await auth.verify(await sign(key, k8sClaims('payments', 'api'))));
    expect(principal).toEqual({
      name: 'system:serviceaccount:payments:api',
      roles: ['reader'],
      credentials: ['payments-*'],
      via: 'jwt',
    });
    expect(cluster.discoveryFetches).toBe(1);
    expect(cluster.jwksFetches).toBe(1);
    // Cached: neither is fetched again.
    accepted(await auth.verify(await sign(key, k8sClaims('payments', 'worker'))));
    expect(cluster.discoveryFetches).toBe(1);
    expect(cluster.jwksFetches).toBe(1);
  });

  it('matches nested claims by dot path (kubernetes.io.namespace)', async () => {
    const principal = accepted(await auth.verify(await sign(key, k8sClaims('platform', 'rotator'))));
    expect(principal).toEqual({
      name: 'system:serviceaccount:platform:rotator',
      roles: ['operator'],
      via: 'jwt',
    });
    const other = await sign(key, k8sClaims('platform', 'web'));
    expect(refused(await auth.verify(other))).toBe('no rule maps these claims to roles');
  });

  it('refuses a token for another audience (the cluster audience only)', async () => {
    const token = await sign(key, k8sClaims('payments', 'api', { aud: ['https://kubernetes.default.svc'] }));
    expect(refused(await auth.verify(token))).toBe('audience mismatch');
  });

  it('refuses when the discovery document names another issuer', async () => {
    const other = await startIssuer();
    other.keys = [key];
    other.discoveryIssuer = 'https://someone-else.example.com';
    const a = new JwtAuthenticator([
      { issuer: other.url, audience: ['keyturn'], algorithms: ['RS256'], clockSkewSeconds: 0, rules: [] },
    ]);
    const token = await sign(key, { iss: other.url, aud: 'keyturn', sub: 'x' });
    expect(refused(await a.verify(token))).toBe('discovery document names another issuer');
    expect(other.jwksFetches).toBe(0);
  });
});

describe('JWKS key rotation', () => {
  const config = (idp: Issuer): JwtIssuerConfig => ({
    issuer: idp.url,
    audience: ['keyturn'],
    algorithms: ['RS256', 'ES256'],
    clockSkewSeconds: 0,
    rules: [{ match: { sub: '*' }, roles: ['reader'] }],
  });
  const claims = (idp: Issuer) => ({ iss: idp.url, aud: 'keyturn', sub: 'rotating' });

  it('an unknown kid refetches the JWKS: the new key verifies, the removed one is refused', async () => {
    const idp = await startIssuer();
    const oldKey = await makeKey('2025-01');
    const newKey = await makeKey('2025-02', 'ES256');
    idp.keys = [oldKey];
    const auth = new JwtAuthenticator([config(idp)], { cooldownMs: 0, cacheMaxAgeMs: 60_000 });
    const oldToken = await sign(oldKey, claims(idp));
    accepted(await auth.verify(oldToken));
    expect(idp.jwksFetches).toBe(1);

    idp.keys = [newKey];
    accepted(await auth.verify(await sign(newKey, claims(idp))));
    expect(idp.jwksFetches).toBe(2);
    // The cached set is now the new one: the old key's token no longer verifies.
    expect(refused(await auth.verify(oldToken))).toBe('no matching key in JWKS');
  });

  it('within the cooldown an unknown kid does not refetch; the cache max age does', async () => {
    const idp = await startIssuer();
    const oldKey = await makeKey('old');
    const newKey = await makeKey('new');
    idp.keys = [oldKey];
    const auth = new JwtAuthenticator([config(idp)], { cooldownMs: 60_000, cacheMaxAgeMs: 1_000 });
    const oldToken = await sign(oldKey, claims(idp));
    const newToken = await sign(newKey, claims(idp));
    accepted(await auth.verify(oldToken));

    idp.keys = [newKey];
    // Still the cached set: the old key verifies, the new one is unknown and may not refetch yet.
    accepted(await auth.verify(oldToken));
    expect(refused(await auth.verify(newToken))).toBe('no matching key in JWKS');
    expect(idp.jwksFetches).toBe(1);

    // jose's remote JWKS set keeps its cooldown on its own Date.now(), which no injected clock reaches: real time has
    // to pass it.
    await new Promise((r) => setTimeout(r, 1_200));
    expect(refused(await auth.verify(oldToken))).toBe('no matching key in JWKS');
    accepted(await auth.verify(newToken));
    expect(idp.jwksFetches).toBe(2);
  });

  it('discovery is refetched after the cache max age; an issuer that stops answering is refused, then recovers', async () => {
    const idp = await startIssuer();
    const k = await makeKey('k1');
    idp.keys = [k];
    const auth = new JwtAuthenticator([config(idp)], { cooldownMs: 0, cacheMaxAgeMs: 300 });
    accepted(await auth.verify(await sign(k, claims(idp))));
    // Past the 300 ms cache max age, which jose's JWKS set also keeps on its own Date.now(): real time has to pass.
    await new Promise((r) => setTimeout(r, 400));
    accepted(await auth.verify(await sign(k, claims(idp))));
    expect(idp.discoveryFetches).toBe(2);
    // Discovery then fails: the JWKS found before keeps being used. (Past the max age again, as above.)
    await new Promise((r) => setTimeout(r, 400));
    idp.failWith = 503;
    const first = await auth.verify(await sign(k, claims(idp)));
    // The JWKS itself is past its max age too and does not answer: refused, but as unreachable, not a crash.
    expect(refused(first)).toBe('JWKS unreachable');
    idp.failWith = undefined;
    accepted(await auth.verify(await sign(k, claims(idp))));
  });
});

describe('an issuer that does not answer', () => {
  const config = (url: string, jwksUrl?: string): JwtIssuerConfig => ({
    issuer: url,
    audience: ['keyturn'],
    ...(jwksUrl ? { jwksUrl } : {}),
    algorithms: ['RS256'],
    clockSkewSeconds: 0,
    rules: [{ match: { sub: '*' }, roles: ['reader'] }],
  });
  let key: TestKey;
  beforeAll(async () => {
    key = await makeKey('k');
  });

  it('refuses with "JWKS unreachable" when the JWKS server is down, and recovers when it is back', async () => {
    const idp = await startIssuer();
    idp.keys = [key];
    const url = idp.url;
    await idp.close();
    const auth = new JwtAuthenticator([config(url, `${url}/jwks`)], { fetchTimeoutMs: 1_000 });
    const token = await sign(key, { iss: url, aud: 'keyturn', sub: 'a' });
    expect(refused(await auth.verify(token))).toBe('JWKS unreachable');
    expect(refused(await auth.verify(token))).toBe('JWKS unreachable');

    // Same port again: the authenticator fetches on the next request.
    const port = Number(new URL(url).port);
    await new Promise<void>((resolve, reject) => {
      idp.server.once('error', reject);
      idp.server.listen(port, '127.0.0.1', resolve);
    });
    accepted(await auth.verify(token));
    await idp.close();
  });

  it('refuses with "JWKS unreachable" when discovery is down', async () => {
    const idp = await startIssuer();
    const url = idp.url;
    await idp.close();
    const auth = new JwtAuthenticator([config(url)], { fetchTimeoutMs: 1_000 });
    const token = await sign(key, { iss: url, aud: 'keyturn', sub: 'a' });
    expect(refused(await auth.verify(token))).toBe('JWKS unreachable');
  });

  it('refuses with "JWKS unreachable" on an error status or a timeout', async () => {
    const idp = await startIssuer();
    idp.keys = [key];
    const token = await sign(key, { iss: idp.url, aud: 'keyturn', sub: 'a' });
    idp.failWith = 500;
    const a = new JwtAuthenticator([config(idp.url, `${idp.url}/jwks`)]);
    expect(refused(await a.verify(token))).toBe('JWKS unreachable');
    idp.failWith = undefined;
    idp.hang = true;
    const b = new JwtAuthenticator([config(idp.url, `${idp.url}/jwks`)], { fetchTimeoutMs: 200 });
    const started = Date.now();
    expect(refused(await b.verify(token))).toBe('JWKS unreachable');
    expect(Date.now() - started).toBeLessThan(5_000);
    const c = new JwtAuthenticator([config(idp.url)], { fetchTimeoutMs: 200 });
    expect(refused(await c.verify(token))).toBe('JWKS unreachable');
  });

  it('refuses a JWKS that is not a key set', async () => {
    const idp = await startIssuer();
    // A private key published by mistake, and then garbage.
    const { privateKey } = await generateKeyPair('RS256', { extractable: true });
    idp.keys = [{ ...key, jwk: { ...(await exportJWK(privateKey)), kid: key.kid, alg: 'RS256' } }];
    const token = await sign(key, { iss: idp.url, aud: 'keyturn', sub: 'a' });
    const a = new JwtAuthenticator([config(idp.url, `${idp.url}/jwks`)]);
    expect(refused(await a.verify(token))).toBe('JWKS invalid');
  });
});
