// The authorization matrix: every route × every principal (admin token, tokens-file operator, auditor and readers
// bound by id, glob and label, a JWT reader) gets through or gets 403, as SPEC's roles say; no token, a wrong or
// expired token and JWTs with a wrong issuer, audience, algorithm, signature or expiry get 401 everywhere. A reader
// bound to one credential cannot read another's secret, lease or rotation; operators and auditors never receive a
// secret value. Denials and secret reads are audit events naming the principal.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../../src/crypto/tokens.ts';
import {
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
} from '../support/harness.ts';
import { openSse } from '../support/sse.ts';

type Who =
  | 'admin'
  | 'operator'
  | 'auditor'
  | 'readerA'
  | 'readerGlob'
  | 'readerLabel'
  | 'readerB'
  | 'jwtReaderA';
const EVERYONE: Who[] = [
  'admin',
  'operator',
  'auditor',
  'readerA',
  'readerGlob',
  'readerLabel',
  'readerB',
  'jwtReaderA',
];
const READERS_OF_A: Who[] = ['readerA', 'readerGlob', 'readerLabel', 'jwtReaderA'];

const tokens = Object.fromEntries(EVERYONE.map((w) => [w, randomBytes(32).toString('base64url')])) as Record<
  Who,
  string
>;
type SigningKey = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];
const expiredToken = randomBytes(32).toString('base64url');
let dir: string;
let jwks: Server;
let issuer: string;
let signingKey: SigningKey;
let otherKey: SigningKey;
let rs512Key: SigningKey;
let env: ReturnType<typeof testEnv>;
let kt: Keyturn;
let credA = '';
let credB = '';
let rotationA = '';
let leaseA = '';
let leaseB = '';

async function jwt(
  claims: Record<string, unknown>,
  options: { key?: SigningKey; alg?: string; kid?: string; iss?: string; aud?: string; exp?: number } = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT(claims)
    .setProtectedHeader({ alg: options.alg ?? 'RS256', kid: options.kid ?? 'k1' })
    .setIssuer(options.iss ?? issuer)
    .setAudience(options.aud ?? 'keyturn')
    .setIssuedAt(now)
    .setExpirationTime(options.exp ?? now + 300)
    .sign(options.key ?? signingKey);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kt-authz-'));
  ({ privateKey: signingKey } = await generateKeyPair('RS256', { extractable: true }).then(async (kp) => {
    publicJwk = { ...(await exportJWK(kp.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    return kp;
  }));
  ({ privateKey: otherKey } = await generateKeyPair('RS256'));
  ({ privateKey: rs512Key } = await generateKeyPair('RS512', { extractable: true }).then(async (kp) => {
    rs512Jwk = { ...(await exportJWK(kp.publicKey)), kid: 'k512', alg: 'RS512', use: 'sig' };
    return kp;
  }));
  jwks = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    if (req.url === '/.well-known/openid-configuration') {
      res.end(JSON.stringify({ issuer, jwks_uri: `${issuer}/jwks` }));
    } else if (req.url === '/jwks') {
      res.end(JSON.stringify({ keys: [publicJwk, rs512Jwk] }));
    } else {
      res.statusCode = 404;
      res.end('{}');
    }
  });
  await new Promise<void>((done) => jwks.listen(0, '127.0.0.1', done));
  issuer = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}`;

  // Admin first, to make the credentials the matrix needs (their ids are only known once imported).
  const boot = testEnv();
  env = boot;
  const file = join(dir, 'tokens.yaml');
  const writeTokens = (a: string, b: string) =>
    writeFile(
      file,
      [
        'tokens:',
        `  - {name: ops, sha256: ${sha256Hex(tokens.operator)}, roles: [operator]}`,
        `  - {name: audit-team, sha256: ${sha256Hex(tokens.auditor)}, roles: [auditor]}`,
        `  - {name: reader-a, sha256: ${sha256Hex(tokens.readerA)}, roles: [reader], credentials: [${a}]}`,
        `  - {name: reader-glob, sha256: ${sha256Hex(tokens.readerGlob)}, roles: [reader], credentials: ["pay-*"]}`,
        `  - {name: reader-label, sha256: ${sha256Hex(tokens.readerLabel)}, roles: [reader], labels: {team: payments}}`,
        `  - {name: reader-b, sha256: ${sha256Hex(tokens.readerB)}, roles: [reader], credentials: [${b}]}`,
        `  - {name: old-ci, sha256: ${sha256Hex(expiredToken)}, roles: [operator], expiresAt: 2020-01-01T00:00:00Z}`,
        'jwt:',
        `  - issuer: ${issuer}`,
        '    audience: keyturn',
        '    algorithms: [RS256]',
        '    clockSkewSeconds: 5',
        '    rules:',
        '      - match: {sub: "system:serviceaccount:payments:*"}',
        '        roles: [reader]',
        `        credentials: [${a}]`,
        '',
      ].join('\n'),
    );
  await writeTokens('placeholder-a', 'placeholder-b');
  env = testEnv({ KEYTURN_TOKENS_FILE: file });
  let admin = await startKeyturn(env, { components: ['api'] });
  const connection = await registerPgConnection(admin);
  credA = (
    await importCredential(admin, connection, { idPrefix: 'pay', extra: { labels: { team: 'payments' } } })
  ).id;
  credB = (
    await importCredential(admin, connection, { idPrefix: 'other', extra: { labels: { team: 'other' } } })
  ).id;
  await admin.close();
  // The same Redis prefix, now with readers bound to the real ids.
  await writeTokens(credA, credB);
  admin = await startKeyturn(env, { components: ['api'] });
  kt = admin;
  rotationA = (await kt.api('POST', `/v1/credentials/${credA}/rotate`)).body.rotationId;
  leaseA = (await kt.api('POST', `/v1/credentials/${credA}/leases`, { ttl: '10m' })).body.id;
  leaseB = (await kt.api('POST', `/v1/credentials/${credB}/leases`, { ttl: '10m' })).body.id;
  expect(rotationA && leaseA && leaseB).toBeTruthy();
});
let publicJwk: JWK;
let rs512Jwk: JWK;

afterAll(async () => {
  await kt?.close();
  await new Promise((done) => jwks?.close(done));
  if (dir) await rm(dir, { recursive: true, force: true });
  if (env) await dropPrefix(env.prefix);
});

async function bearer(who: Who): Promise<string> {
  if (who === 'admin') return env.adminToken;
  if (who === 'jwtReaderA') return jwt({ sub: 'system:serviceaccount:payments:api' });
  return tokens[who];
}

async function call(who: Who | string, method: string, path: string, body?: unknown) {
  const token = EVERYONE.includes(who as Who) ? await bearer(who as Who) : who;
  return kt.api(method, path, body, { authorization: `Bearer ${token}` });
}

interface Row {
  route: string;
  method: string;
  path: () => string;
  body?: () => unknown;
  allowed: Who[];
  /** The answer carries a secret value (only an allowed principal may ever see one). */
  secret?: boolean;
  /**
   * A server-sent event stream (GET only): an answer that gets through never ends, so only its status and
   * content-type are checked and the stream is closed; a refusal is read whole as usual.
   */
  stream?: boolean;
}

/** A streaming row's request: the error answer as call() gives it, or the stream's status once it is open. */
async function callStream(who: Who, path: string) {
  const stream = await openSse(`${kt.url}${path}`, {
    headers: { authorization: `Bearer ${await bearer(who)}` },
  });
  if (stream.status !== 200) return { status: stream.status, text: stream.raw, body: JSON.parse(stream.raw) };
  expect(stream.headers.get('content-type')).toMatch(/^text\/event-stream/);
  await stream.close();
  return { status: stream.status, text: '', body: undefined };
}

let n = 0;
const MANAGE: Who[] = ['admin', 'operator'];
const VIEW: Who[] = ['admin', 'operator', 'auditor'];
const ROWS: Row[] = [
  {
    route: 'POST /v1/connections',
    method: 'POST',
    path: () => '/v1/connections',
    body: () => ({
      id: `authz-${++n}`,
      type: 'postgres',
      host: '127.0.0.1',
      port: 1,
      admin: { username: 'a', password: 'not-real-password' },
    }),
    allowed: MANAGE,
  },
  { route: 'GET /v1/connections', method: 'GET', path: () => '/v1/connections', allowed: VIEW },
  { route: 'GET /v1/connections/:id', method: 'GET', path: () => '/v1/connections/authz-1', allowed: VIEW },
  {
    route: 'PATCH /v1/connections/:id',
    method: 'PATCH',
    path: () => '/v1/connections/authz-1',
    body: () => ({ labels: { touched: 'yes' } }),
    allowed: MANAGE,
  },
  {
    route: 'DELETE /v1/connections/:id',
    method: 'DELETE',
    path: () => '/v1/connections/nope',
    allowed: MANAGE,
  },
  {
    route: 'POST /v1/credentials',
    method: 'POST',
    path: () => '/v1/credentials',
    body: () => ({
      id: `authz-cred-${++n}`,
      connection: 'authz-1',
      username: 'someone',
      strategy: 'single-user',
      schedule: { every: '30d' },
    }),
    allowed: MANAGE,
  },
  // Every role: a reader's list holds only the credentials bound to it (checked below).
  { route: 'GET /v1/credentials', method: 'GET', path: () => '/v1/credentials', allowed: EVERYONE },
  {
    route: 'GET /v1/credentials/:id (A)',
    method: 'GET',
    path: () => `/v1/credentials/${credA}`,
    allowed: [...VIEW, ...READERS_OF_A],
  },
  {
    route: 'GET /v1/credentials/:id (B)',
    method: 'GET',
    path: () => `/v1/credentials/${credB}`,
    allowed: [...VIEW, 'readerB'],
  },
  {
    route: 'PATCH /v1/credentials/:id',
    method: 'PATCH',
    path: () => `/v1/credentials/${credA}`,
    body: () => ({ maxAgeDays: 90 }),
    allowed: MANAGE,
  },
  {
    route: 'DELETE /v1/credentials/:id',
    method: 'DELETE',
    path: () => '/v1/credentials/nope',
    allowed: MANAGE,
  },
  {
    route: 'POST /v1/credentials/:id/rotate',
    method: 'POST',
    path: () => '/v1/credentials/nope/rotate',
    allowed: MANAGE,
  },
  {
    route: 'GET /v1/credentials/:id/rotations',
    method: 'GET',
    path: () => `/v1/credentials/${credA}/rotations`,
    allowed: [...VIEW, ...READERS_OF_A],
  },
  {
    route: 'GET /v1/rotations/:id',
    method: 'GET',
    path: () => `/v1/rotations/${rotationA}`,
    allowed: [...VIEW, ...READERS_OF_A],
  },
  {
    route: 'GET /v1/credentials/:id/secret (A)',
    method: 'GET',
    path: () => `/v1/credentials/${credA}/secret`,
    allowed: ['admin', ...READERS_OF_A],
    secret: true,
  },
  {
    route: 'GET /v1/credentials/:id/secret (B)',
    method: 'GET',
    path: () => `/v1/credentials/${credB}/secret`,
    allowed: ['admin', 'readerB'],
    secret: true,
  },
  {
    route: 'POST /v1/credentials/:id/leases',
    method: 'POST',
    path: () => `/v1/credentials/${credA}/leases`,
    body: () => ({ ttl: '1m' }),
    allowed: ['admin', ...READERS_OF_A],
    secret: true,
  },
  {
    route: 'GET /v1/credentials/:id/leases',
    method: 'GET',
    path: () => `/v1/credentials/${credB}/leases`,
    allowed: ['admin', 'readerB'],
  },
  {
    route: 'GET /v1/leases/:id',
    method: 'GET',
    path: () => `/v1/leases/${leaseA}`,
    allowed: ['admin', ...READERS_OF_A],
  },
  {
    route: 'POST /v1/leases/:id/renew',
    method: 'POST',
    path: () => `/v1/leases/${leaseB}/renew`,
    body: () => ({}),
    allowed: ['admin', 'readerB'],
  },
  {
    route: 'DELETE /v1/leases/:id',
    method: 'DELETE',
    path: () => `/v1/leases/${leaseB}`,
    allowed: ['admin', 'operator', 'readerB'],
  },
  { route: 'GET /v1/audit', method: 'GET', path: () => '/v1/audit?limit=5', allowed: ['admin', 'auditor'] },
  {
    route: 'GET /v1/audit/verify',
    method: 'GET',
    path: () => '/v1/audit/verify',
    allowed: ['admin', 'auditor'],
  },
  {
    route: 'GET /v1/audit/export',
    method: 'GET',
    path: () => '/v1/audit/export?format=csv',
    allowed: ['admin', 'auditor'],
  },
  {
    route: 'GET /v1/audit/public-key',
    method: 'GET',
    path: () => '/v1/audit/public-key',
    allowed: ['admin', 'auditor'],
  },
  { route: 'GET /v1/compliance', method: 'GET', path: () => '/v1/compliance', allowed: ['admin', 'auditor'] },
  {
    route: 'GET /v1/compliance (CSV)',
    method: 'GET',
    path: () => '/v1/compliance?format=csv&overdue=false',
    allowed: ['admin', 'auditor'],
  },
  // Every role may listen; what a reader then receives is filtered per event (test/integration/events.test.ts).
  { route: 'GET /v1/events', method: 'GET', path: () => '/v1/events', allowed: EVERYONE, stream: true },
  {
    route: 'GET /v1/events?credential=A',
    method: 'GET',
    path: () => `/v1/events?credential=${credA}`,
    allowed: [...VIEW, ...READERS_OF_A],
    stream: true,
  },
  {
    route: 'GET /v1/events?credential=B',
    method: 'GET',
    path: () => `/v1/events?credential=${credB}`,
    allowed: [...VIEW, 'readerB'],
    stream: true,
  },
  // Dual control: every role may call these; what each sees and may decide is per approval (approvals.test.ts).
  { route: 'GET /v1/approvals', method: 'GET', path: () => '/v1/approvals', allowed: EVERYONE },
  {
    route: 'GET /v1/approvals?status=pending',
    method: 'GET',
    path: () => '/v1/approvals?status=pending',
    allowed: EVERYONE,
  },
  {
    route: 'GET /v1/approvals/:id',
    method: 'GET',
    path: () => '/v1/approvals/00000000-0000-4000-8000-000000000000',
    allowed: EVERYONE,
  },
  {
    route: 'POST /v1/approvals/:id/approve',
    method: 'POST',
    path: () => '/v1/approvals/00000000-0000-4000-8000-000000000000/approve',
    body: () => ({ reason: 'matrix' }),
    allowed: EVERYONE,
  },
  {
    route: 'POST /v1/approvals/:id/deny',
    method: 'POST',
    path: () => '/v1/approvals/00000000-0000-4000-8000-000000000000/deny',
    body: () => ({ reason: 'matrix' }),
    allowed: EVERYONE,
  },
  // The console's (issue 19): who the caller is, and the overview of the credentials it may see.
  { route: 'GET /v1/me', method: 'GET', path: () => '/v1/me', allowed: EVERYONE },
  { route: 'GET /v1/overview', method: 'GET', path: () => '/v1/overview?days=90', allowed: EVERYONE },
  // The key-encryption key decides what guards every secret: admins only.
  { route: 'GET /v1/rekey', method: 'GET', path: () => '/v1/rekey', allowed: ['admin'] },
  { route: 'POST /v1/rekey', method: 'POST', path: () => '/v1/rekey', allowed: ['admin'] },
];

describe('authorization matrix', () => {
  for (const row of ROWS) {
    it(`${row.route}: ${row.allowed.join(', ')} get through; everyone else 403`, async () => {
      const got: string[] = [];
      const want: string[] = [];
      for (const who of EVERYONE) {
        const res = row.stream
          ? await callStream(who, row.path())
          : await call(who, row.method, row.path(), row.body?.());
        const allowed = row.allowed.includes(who);
        got.push(`${who}: ${res.status === 403 ? 'denied' : res.status === 401 ? '401' : 'through'}`);
        want.push(`${who}: ${allowed ? 'through' : 'denied'}`);
        if (allowed) expect(res.status, `${who} ${res.text}`).toBeLessThan(500);
        else expect(res.body.error.code).toBe('forbidden');
        if (row.secret && !allowed) expect(res.text).not.toMatch(/password/);
        if (row.secret && allowed && res.status < 300) expect(res.body.password).toBeTruthy();
      }
      expect(got).toEqual(want);
    });
  }

  it('probes, metrics, docs and the console page need no token', async () => {
    for (const path of ['/healthz', '/readyz', '/metrics', '/docs', '/docs/json', '/ui', '/ui/app.js']) {
      const res = await kt.api('GET', path, undefined, { authorization: '' });
      expect(`${path} → ${res.status}`).toBe(`${path} → 200`);
    }
  });
});

describe('authentication failures are 401 on every route', () => {
  const cases: Array<[string, () => Promise<string | null>]> = [
    ['no token', async () => null],
    ['an unknown token', async () => randomBytes(32).toString('base64url')],
    ['an expired static token', async () => expiredToken],
    [
      'a JWT from another issuer',
      () => jwt({ sub: 'system:serviceaccount:payments:api' }, { iss: 'http://127.0.0.1:1' }),
    ],
    [
      'a JWT for another audience',
      () => jwt({ sub: 'system:serviceaccount:payments:api' }, { aud: 'vault' }),
    ],
    [
      'a JWT with an algorithm not allowed (RS512)',
      () => jwt({ sub: 'system:serviceaccount:payments:api' }, { key: rs512Key, alg: 'RS512', kid: 'k512' }),
    ],
    [
      'a JWT signed by another key',
      () => jwt({ sub: 'system:serviceaccount:payments:api' }, { key: otherKey }),
    ],
    [
      'an expired JWT',
      () => jwt({ sub: 'system:serviceaccount:payments:api' }, { exp: Math.floor(Date.now() / 1000) - 3600 }),
    ],
    ['a JWT no rule maps to a role', () => jwt({ sub: 'system:serviceaccount:other:api' })],
    [
      'an unsigned JWT (alg none)',
      async () => {
        const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
        const now = Math.floor(Date.now() / 1000);
        return `${enc({ alg: 'none' })}.${enc({ iss: issuer, aud: 'keyturn', sub: 'system:serviceaccount:payments:api', exp: now + 60 })}.`;
      },
    ],
  ];
  for (const [name, token] of cases) {
    it(`${name}: 401 on every route, and an audit event`, async () => {
      const presented = await token();
      for (const row of ROWS) {
        const res = await kt.api(row.method, row.path(), row.body?.(), {
          authorization: presented === null ? '' : `Bearer ${presented}`,
        });
        expect(`${row.route} → ${res.status}`).toBe(`${row.route} → 401`);
        expect(res.body.error.code).toBe('unauthorized');
      }
    });
  }
});

describe("roles before parsing (issue 17): a caller without access learns nothing of a route's schema", () => {
  const refusals: Array<[string, string, string, unknown]> = [
    ['no body', 'POST', '/v1/connections', undefined],
    ['an empty object', 'POST', '/v1/connections', {}],
    ['a body that is not JSON', 'POST', '/v1/connections', '{"id": '],
    ['fields the schema refuses', 'PATCH', '/v1/connections/no-such-connection', { nonsense: [1, 2, 3] }],
    ['a query the route does not take', 'GET', '/v1/audit?limit=not-a-number&bogus=1', undefined],
  ];
  for (const [what, method, path, body] of refusals) {
    it(`a reader sending ${what} to ${method} ${path.split('?')[0]} gets 403, not a 400 that describes the schema`, async () => {
      const res = await call('readerA', method, path, body);
      expect(res.status, res.text).toBe(403);
      expect(res.body.error.code).toBe('forbidden');
      expect(res.text).not.toMatch(/must have required property|must NOT have additional|must be|schema/i);
      // An admin sending the same gets the validation's answer: the schema speaks only to those who may use it.
      const admin = await call('admin', method, path, body);
      expect(admin.status, admin.text).toBeGreaterThanOrEqual(400);
      expect(admin.status).not.toBe(403);
    });
  }

  it('a body the caller may not send is not even read: a reader posting past the body limit gets 403, not 413', async () => {
    const res = await call('readerA', 'POST', '/v1/connections', { padding: 'x'.repeat(2 * 1024 * 1024) });
    expect(res.status).toBe(403);
  });
});

describe("a reader's lists (the console's credentials and overview) hold only what is bound to it", () => {
  const listed = async (who: Who) =>
    ((await call(who, 'GET', '/v1/credentials')).body.credentials as Array<{ id: string }>).map((c) => c.id);
  it('GET /v1/credentials: readers of A see A alone, reader B sees B alone, the others see both', async () => {
    for (const who of READERS_OF_A) expect(`${who}: ${await listed(who)}`).toBe(`${who}: ${credA}`);
    expect(await listed('readerB')).toEqual([credB]);
    for (const who of VIEW) expect((await listed(who)).sort()).toEqual([credA, credB].sort());
    // A filter narrows a reader's list further, never widens it.
    const filtered = await call('readerA', 'GET', '/v1/credentials?label=team%3Dother');
    expect(filtered.body.credentials).toEqual([]);
  });

  it('GET /v1/overview counts only those credentials; GET /v1/me names the caller and its bindings', async () => {
    const reader = (await call('readerLabel', 'GET', '/v1/overview')).body;
    expect(reader.credentials.total).toBe(1);
    expect(reader.nextDue.map((d: { id: string }) => d.id)).not.toContain(credB);
    expect(reader.rotationsPerDay).toHaveLength(30);
    expect((await call('auditor', 'GET', '/v1/overview')).body.credentials.total).toBe(2);
    const me = (await call('readerLabel', 'GET', '/v1/me')).body;
    expect(me).toEqual({
      name: 'reader-label',
      roles: ['reader'],
      via: 'static-token',
      credentials: null,
      labels: { team: 'payments' },
    });
    expect(JSON.stringify(me)).not.toContain(tokens.readerLabel);
  });
});

describe('audit of decisions', () => {
  it('a denial names the principal, never its token; a secret read names the reader', async () => {
    const denied = await call('readerB', 'GET', `/v1/credentials/${credA}/secret`);
    expect(denied.status).toBe(403);
    const read = await call('readerA', 'GET', `/v1/credentials/${credA}/secret`);
    expect(read.status).toBe(200);
    const audit = await kt.api('GET', '/v1/audit?limit=1000');
    const events = audit.body.events as Array<{ actor: string; action: string; credential?: string }>;
    expect(events.some((e) => e.action === 'auth.denied' && e.actor === 'reader-b')).toBe(true);
    expect(
      events.some((e) => e.action === 'secret.read' && e.actor === 'reader-a' && e.credential === credA),
    ).toBe(true);
    for (const token of [...Object.values(tokens), expiredToken]) expect(audit.text).not.toContain(token);
  });
});

describe('generated requests from every principal (fast-check)', () => {
  const RUNS = Number(process.env.KT_FC_RUNS ?? 3000);
  it(`${RUNS} generated requests: never a 5xx, never a secret to a principal not allowed it`, async () => {
    // Every secret the matrix could hand out: the credentials' current passwords and a lease of each.
    const secretA = (await call('admin', 'GET', `/v1/credentials/${credA}/secret`)).body.password as string;
    const secretB = (await call('admin', 'GET', `/v1/credentials/${credB}/secret`)).body.password as string;
    const leaseOfA = (await call('admin', 'POST', `/v1/credentials/${credA}/leases`, { ttl: '10m' })).body;
    const leaseOfB = (await call('admin', 'POST', `/v1/credentials/${credB}/leases`, { ttl: '10m' })).body;
    const secrets: Array<{ value: string; allowed: Who[] }> = [
      { value: secretA, allowed: ['admin', ...READERS_OF_A] },
      { value: leaseOfA.password, allowed: ['admin', ...READERS_OF_A] },
      { value: secretB, allowed: ['admin', 'readerB'] },
      { value: leaseOfB.password, allowed: ['admin', 'readerB'] },
    ];
    const id = fc.constantFrom(credA, credB, 'nope', 'pay-*', `${credA}.x`, '%2e%2e', '..');
    const uuid = fc.constantFrom(
      leaseA,
      leaseB,
      leaseOfA.id,
      leaseOfB.id,
      rotationA,
      '00000000-0000-4000-8000-000000000000',
    );
    const body = fc.oneof(
      fc.constant(undefined),
      fc.constant({}),
      fc.record({
        ttl: fc.oneof(fc.constantFrom('1m', '10m', '2h', 'x', '0s'), fc.integer({ min: -1, max: 90_000 })),
      }),
      fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }),
    );
    const request = fc.oneof(
      fc
        .tuple(fc.constantFrom('GET', 'DELETE', 'PATCH'), id)
        .map(([m, i]) => [m, `/v1/credentials/${i}`] as const),
      fc
        .tuple(fc.constantFrom('secret', 'leases', 'rotations', 'rotate'), id)
        .map(
          ([what, i]) =>
            [
              what === 'secret' || what === 'rotations' ? 'GET' : 'POST',
              `/v1/credentials/${i}/${what}`,
            ] as const,
        ),
      fc.tuple(fc.constantFrom('GET', 'DELETE'), uuid).map(([m, u]) => [m, `/v1/leases/${u}`] as const),
      uuid.map((u) => ['POST', `/v1/leases/${u}/renew`] as const),
      uuid.map((u) => ['GET', `/v1/rotations/${u}`] as const),
      fc.constantFrom(
        ['GET', '/v1/credentials'] as const,
        ['GET', '/v1/audit?limit=3'] as const,
        ['GET', '/v1/compliance'] as const,
        ['GET', '/v1/compliance?format=csv'] as const,
        ['GET', '/v1/connections'] as const,
        ['GET', '/v1/approvals'] as const,
      ),
    );
    const headers = fc.record(
      {
        'x-forwarded-for': fc.constantFrom('10.0.0.1', '1.2.3.4, 5.6.7.8'),
        'content-type': fc.constantFrom('application/json', 'text/plain', 'application/json; charset=utf-8'),
        accept: fc.constantFrom('*/*', 'text/html'),
      },
      { requiredKeys: [] },
    );
    let checked = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...EVERYONE),
        request,
        body,
        headers,
        async (who, [method, path], payload, extra) => {
          // DELETE of a credential would end the run's fixtures: only unknown ids are deleted.
          if (method === 'DELETE' && path.startsWith('/v1/credentials/') && !path.endsWith('/nope')) return;
          const res = await kt.api(method, path, method === 'GET' ? undefined : payload, {
            ...extra,
            authorization: `Bearer ${await bearer(who)}`,
          });
          expect(res.status, `${who} ${method} ${path} → ${res.text.slice(0, 300)}`).toBeLessThan(500);
          for (const s of secrets) {
            if (res.text.includes(s.value)) {
              expect(
                s.allowed,
                `${who} received a secret of another principal via ${method} ${path}`,
              ).toContain(who);
            }
          }
          checked++;
        },
      ),
      { numRuns: RUNS },
    );
    expect(checked).toBeGreaterThan(RUNS / 2);
  }, 300_000);
});
