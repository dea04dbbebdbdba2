// Hardening of the HTTP API (src/api/hardening.ts): security headers on every answer, CORS only for configured
// origins, the rate limit per principal (per address before authentication), the body limit, and HTTPS with
// client certificates (mTLS), with certificates made at test time by the openssl CLI.
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropPrefix, type Keyturn, startKeyturn, type TestEnv, testEnv } from '../support/harness.ts';
import { makePki, type Pki } from '../support/pki.ts';

const started: Array<{ kt: Keyturn; env: TestEnv }> = [];

async function start(overrides: Record<string, string> = {}): Promise<{ kt: Keyturn; env: TestEnv }> {
  const env = testEnv({ LOG_LEVEL: 'warn', ...overrides });
  const kt = await startKeyturn(env, { components: ['api'] });
  started.push({ kt, env });
  return { kt, env };
}

afterAll(async () => {
  for (const { kt, env } of started) {
    await kt.close();
    await dropPrefix(env.prefix);
  }
});

function expectSecurityHeaders(headers: Headers, what: string) {
  expect(headers.get('x-content-type-options'), what).toBe('nosniff');
  expect(headers.get('x-frame-options'), what).toBe('DENY');
  expect(headers.get('referrer-policy'), what).toBe('no-referrer');
  expect(headers.get('cache-control'), what).toBe('no-store');
  expect(headers.get('content-security-policy'), what).toBe("default-src 'none';frame-ancestors 'none'");
  expect(headers.get('strict-transport-security'), what).toMatch(/^max-age=\d+/);
  expect(headers.get('x-powered-by'), what).toBeNull();
}

function corsHeaders(headers: Headers): string[] {
  return [...headers.keys()].filter((k) => k.startsWith('access-control-'));
}

function expectErrorShape(body: unknown, code: string) {
  expect(body).toEqual({ error: { code, message: expect.any(String) } });
}

describe('security headers and CORS', () => {
  let kt: Keyturn;
  beforeAll(async () => {
    ({ kt } = await start());
  });

  it('sets the security headers on a 200, a 401 and a 400', async () => {
    const ok = await kt.api('GET', '/v1/connections');
    expect(ok.status, ok.text).toBe(200);
    expectSecurityHeaders(ok.headers, '200');

    const unauthorized = await kt.api('GET', '/v1/connections', undefined, { authorization: '' });
    expect(unauthorized.status).toBe(401);
    expectErrorShape(unauthorized.body, 'unauthorized');
    expectSecurityHeaders(unauthorized.headers, '401');

    const invalid = await kt.api('POST', '/v1/connections', { id: 'x', type: 'nope' });
    expect(invalid.status).toBe(400);
    expectSecurityHeaders(invalid.headers, '400');

    // Refused before routing (bad percent-encoding): Fastify's frameworkErrors path.
    const badUrl = await kt.api('GET', '/v1/credentials/%E0%A4%A');
    expect(badUrl.status).toBe(400);
    expectSecurityHeaders(badUrl.headers, 'bad URL');

    const probe = await kt.api('GET', '/healthz', undefined, { authorization: '' });
    expect(probe.status).toBe(200);
    expectSecurityHeaders(probe.headers, 'probe');
  });

  it('sets the security headers on a 404', async () => {
    const notFound = await kt.api('GET', '/v1/no-such-route');
    expect(notFound.status, notFound.text).toBe(404);
    expectErrorShape(notFound.body, 'not_found');
    expectSecurityHeaders(notFound.headers, '404');
    const anonymous = await kt.api('GET', '/v1/no-such-route', undefined, { authorization: '' });
    expect(anonymous.status).toBe(401);
    expectSecurityHeaders(anonymous.headers, '401 of an unknown route');
  });

  it('sends no CORS headers at all when no origin is configured', async () => {
    const origin = 'https://console.example.com';
    const get = await kt.api('GET', '/v1/connections', undefined, { origin });
    expect(get.status).toBe(200);
    expect(corsHeaders(get.headers)).toEqual([]);

    const preflight = await fetch(`${kt.url}/v1/connections`, {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization, content-type',
      },
    });
    await preflight.text();
    expect(preflight.status).toBeGreaterThanOrEqual(400);
    expect(corsHeaders(preflight.headers)).toEqual([]);
  });

  it('with KEYTURN_CORS_ORIGINS allows a preflight from that origin only', async () => {
    const allowed = 'https://console.example.com';
    const { kt: cors } = await start({ KEYTURN_CORS_ORIGINS: allowed });
    const preflight = (origin: string) =>
      fetch(`${cors.url}/v1/credentials`, {
        method: 'OPTIONS',
        headers: {
          origin,
          'access-control-request-method': 'PATCH',
          'access-control-request-headers': 'authorization, content-type',
        },
      });

    const yes = await preflight(allowed);
    await yes.text();
    expect(yes.status).toBe(204);
    expect(yes.headers.get('access-control-allow-origin')).toBe(allowed);
    expect(yes.headers.get('access-control-allow-methods')).toBe('GET, POST, PATCH, DELETE');
    expect(yes.headers.get('access-control-allow-headers')).toBe(
      'authorization, content-type, x-keyturn-approval, x-keyturn-break-glass',
    );
    expect(yes.headers.get('access-control-allow-credentials')).toBeNull();
    expect(yes.headers.get('x-content-type-options')).toBe('nosniff');

    const no = await preflight('https://evil.example.net');
    await no.text();
    expect(no.headers.get('access-control-allow-origin')).toBeNull();
    expect(no.headers.get('access-control-allow-credentials')).toBeNull();

    // The actual request: the allowed origin may read the answer, another may not.
    const get = await cors.api('GET', '/v1/connections', undefined, { origin: allowed });
    expect(get.status).toBe(200);
    expect(get.headers.get('access-control-allow-origin')).toBe(allowed);
    expect(get.headers.get('vary')).toMatch(/origin/i);
    const other = await cors.api('GET', '/v1/connections', undefined, { origin: 'https://evil.example.net' });
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
  });
});

describe('rate limit', () => {
  const MAX = 5;
  const operatorToken = randomBytes(32).toString('base64url');
  let kt: Keyturn;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kt-ratelimit-'));
    const tokensFile = join(dir, 'tokens.yaml');
    const sha256 = createHash('sha256').update(operatorToken).digest('hex');
    writeFileSync(tokensFile, JSON.stringify({ tokens: [{ name: 'ops-bot', sha256, roles: ['operator'] }] }));
    ({ kt } = await start({ KEYTURN_RATE_LIMIT_MAX: String(MAX), KEYTURN_TOKENS_FILE: tokensFile }));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('answers the 6th request of a principal within the window 429 with Retry-After, in the SPEC shape', async () => {
    for (let i = 1; i <= MAX; i++) {
      const res = await kt.api('GET', '/v1/connections');
      expect(res.status, res.text).toBe(200);
      expect(res.headers.get('x-ratelimit-limit')).toBe(String(MAX));
      expect(res.headers.get('x-ratelimit-remaining')).toBe(String(MAX - i));
    }
    const limited = await kt.api('GET', '/v1/connections');
    expect(limited.status).toBe(429);
    const retryAfter = Number(limited.headers.get('retry-after'));
    expect(retryAfter).toBeGreaterThan(0);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(limited.headers.get('content-type')).toMatch(/^application\/json/);
    expect(limited.body).toEqual({
      error: {
        code: 'rate_limited',
        message: `Too many requests for admin: at most ${MAX} per 60s; retry after ${retryAfter} seconds`,
      },
    });
    expectSecurityHeaders(limited.headers, '429');
    // Every route counts against the same principal: a 404 or a write is refused too, before any work.
    expect((await kt.api('GET', '/v1/no-such-route')).status).toBe(429);
    expect((await kt.api('POST', '/v1/connections', { id: 'x' })).status).toBe(429);
  });

  it('counts another principal separately', async () => {
    const auth = { authorization: `Bearer ${operatorToken}` };
    for (let i = 1; i <= MAX; i++) {
      const res = await kt.api('GET', '/v1/connections', undefined, auth);
      expect(res.status, res.text).toBe(200);
    }
    const limited = await kt.api('GET', '/v1/connections', undefined, auth);
    expect(limited.status).toBe(429);
    expect(limited.body.error.message).toMatch(/^Too many requests for ops-bot: at most 5 per 60s;/);
  });

  it('counts unauthenticated requests per client address: 401 until the limit, then 429', async () => {
    for (let i = 1; i <= MAX; i++) {
      const res = await kt.api('GET', '/v1/connections', undefined, {
        authorization: i % 2 ? 'Bearer wrong-token' : '',
      });
      expect(res.status, res.text).toBe(401);
    }
    const limited = await kt.api('GET', '/v1/connections', undefined, { authorization: 'Bearer guess' });
    expect(limited.status).toBe(429);
    expect(limited.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(limited.body.error.code).toBe('rate_limited');
    expect(limited.body.error.message).toMatch(
      /^Too many requests for address 127\.0\.0\.1: at most 5 per 60s; retry after \d+ seconds$/,
    );
  });

  it('never limits the probes', async () => {
    for (let i = 0; i < 4 * MAX; i++) {
      for (const path of ['/healthz', '/readyz']) {
        const res = await kt.api('GET', path, undefined, { authorization: '' });
        expect(res.status, `${path} #${i}`).toBe(200);
        expect(res.headers.get('x-ratelimit-limit')).toBeNull();
      }
    }
  });
});

describe('body limit', () => {
  it('answers a body over KEYTURN_MAX_BODY_BYTES 413 payload_too_large', async () => {
    const { kt } = await start({ KEYTURN_MAX_BODY_BYTES: '2048' });
    const body = {
      id: 'big',
      type: 'postgres',
      host: '127.0.0.1',
      port: 5432,
      database: 'x'.repeat(4096),
      admin: { username: 'a', password: 'b' },
    };
    expect(JSON.stringify(body).length).toBeGreaterThan(4096);
    const res = await kt.api('POST', '/v1/connections', body);
    expect(res.status).toBe(413);
    expectErrorShape(res.body, 'payload_too_large');
    expectSecurityHeaders(res.headers, '413');
  });
});

// HTTPS and mTLS

const opensslVersion = spawnSync('openssl', ['version'], { encoding: 'utf8' });
const hasOpenssl = opensslVersion.status === 0;
if (!hasOpenssl) {
  console.log(
    `hardening.test.ts: skipping the HTTPS tests: the openssl CLI is not available (${opensslVersion.error?.message ?? opensslVersion.stderr})`,
  );
}

interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: any;
}

/** One request on a fresh TLS connection (no agent: each call does its own handshake). */
function httpsGet(
  url: string,
  path: string,
  options: { ca: Buffer; cert?: Buffer; key?: Buffer; headers?: Record<string, string> },
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      `${url}${path}`,
      {
        method: 'GET',
        agent: false,
        ca: options.ca,
        ...(options.cert ? { cert: options.cert, key: options.key } : {}),
        headers: options.headers ?? {},
        timeout: 5000,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => {
          text += chunk;
        });
        res.on('end', () => {
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            // not JSON
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

function httpGet(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false, timeout: 5000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

describe.skipIf(!hasOpenssl)('HTTPS', () => {
  let pki: Pki;
  let tokensFile: string;
  beforeAll(() => {
    pki = makePki();
    tokensFile = join(pki.dir, 'tokens.yaml');
    writeFileSync(
      tokensFile,
      [
        'certificates:',
        '  - name: payments-worker',
        '    subject: payments-worker',
        '    roles: [operator]',
        '',
      ].join('\n'),
    );
  });
  afterAll(() => {
    if (pki) rmSync(pki.dir, { recursive: true, force: true });
  });

  const tlsEnv = () => ({ KEYTURN_TLS_CERT_FILE: pki.serverCert, KEYTURN_TLS_KEY_FILE: pki.serverKey });

  it('serves over TLS with the configured certificate; plain HTTP to the port fails', async () => {
    const { kt, env } = await start(tlsEnv());
    expect(kt.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const health = await httpsGet(kt.url, '/healthz', { ca: pki.ca });
    expect(health.status).toBe(200);
    expect(health.body).toEqual({ status: 'ok' });
    expect(health.headers['strict-transport-security']).toMatch(/^max-age=/);

    const list = await httpsGet(kt.url, '/v1/connections', {
      ca: pki.ca,
      headers: { authorization: `Bearer ${env.adminToken}` },
    });
    expect(list.status).toBe(200);

    // A client that does not trust the CA refuses the server.
    await expect(httpsGet(kt.url, '/healthz', { ca: pki.foreignClient.cert })).rejects.toThrow();
    // Plain HTTP gets no answer.
    await expect(httpGet(`${kt.url.replace(/^https:/, 'http:')}/healthz`)).rejects.toThrow();
  });

  it('refuses an unreadable certificate file at start, naming it', async () => {
    await expect(
      start({ KEYTURN_TLS_CERT_FILE: join(pki.dir, 'missing.crt'), KEYTURN_TLS_KEY_FILE: pki.serverKey }),
    ).rejects.toThrow(/KEYTURN_TLS_CERT_FILE ".*missing\.crt" could not be read \(ENOENT\)/);
    await expect(
      start({ KEYTURN_TLS_CERT_FILE: pki.serverCert, KEYTURN_TLS_KEY_FILE: join(pki.dir, 'client.key') }),
    ).rejects.toThrow(/not a PEM certificate and its private key/);
  });

  describe('with a required client certificate', () => {
    let url: string;
    beforeAll(async () => {
      const { kt } = await start({
        ...tlsEnv(),
        KEYTURN_TLS_CLIENT_CA_FILE: pki.caCert,
        KEYTURN_TLS_REQUIRE_CLIENT_CERT: 'true',
        KEYTURN_TOKENS_FILE: tokensFile,
      });
      url = kt.url;
    });

    it('refuses the handshake of a client without a certificate or with one from another CA', async () => {
      await expect(httpsGet(url, '/healthz', { ca: pki.ca })).rejects.toThrow();
      await expect(httpsGet(url, '/healthz', { ca: pki.ca, ...pki.foreignClient })).rejects.toThrow();
    });

    it('accepts a client with a certificate the client CA signed', async () => {
      const health = await httpsGet(url, '/healthz', { ca: pki.ca, ...pki.client });
      expect(health.status).toBe(200);
    });

    it('authenticates the certificate as the principal the tokens file maps its CN to', async () => {
      const res = await httpsGet(url, '/v1/credentials', { ca: pki.ca, ...pki.client });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
    });
  });

  describe('with an optional client certificate', () => {
    let url: string;
    let adminToken: string;
    beforeAll(async () => {
      const { kt, env } = await start({
        ...tlsEnv(),
        KEYTURN_TLS_CLIENT_CA_FILE: pki.caCert,
        KEYTURN_TLS_REQUIRE_CLIENT_CERT: 'false',
        KEYTURN_TOKENS_FILE: tokensFile,
      });
      url = kt.url;
      adminToken = env.adminToken;
    });

    it('lets a client without a certificate use a bearer token', async () => {
      expect((await httpsGet(url, '/healthz', { ca: pki.ca })).status).toBe(200);
      const anonymous = await httpsGet(url, '/v1/credentials', { ca: pki.ca });
      expect(anonymous.status).toBe(401);
      const withToken = await httpsGet(url, '/v1/credentials', {
        ca: pki.ca,
        headers: { authorization: `Bearer ${adminToken}` },
      });
      expect(withToken.status).toBe(200);
    });

    it('does not authenticate a certificate from another CA, even with a known CN', async () => {
      const res = await httpsGet(url, '/v1/credentials', { ca: pki.ca, ...pki.foreignClient });
      expect(res.status).toBe(401);
      expect(res.body.error.code).toBe('unauthorized');
    });

    it('authenticates a certificate the client CA signed', async () => {
      const res = await httpsGet(url, '/v1/credentials', { ca: pki.ca, ...pki.client });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
    });
  });
});
