// The webhook target end to end, against the example service of docs/webhook-target.md (test/support/
// webhook-server.ts): rotation through the API with workers in process, the service's signature, replay and
// timestamp checks by hand, retries, a service that is down; and the wire format against a bare capture server.
import { execFileSync } from 'node:child_process';
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Connection } from '../../src/registry/types.ts';
import { TargetRefusedError, TargetUnavailableError, wasNothingSent } from '../../src/targets/types.ts';
import { webhookTarget } from '../../src/targets/webhook/webhook-target.ts';
import { dropPrefix, type Keyturn, startKeyturn, testEnv, waitForRotation } from '../support/harness.ts';
import { startWebhookServer } from '../support/webhook-server.ts';

const ROOT = new URL('../..', import.meta.url);
const KEY = randomBytes(32).toString('hex');
const KEY_ID = 'kid-1';

const env = testEnv();
let kt: Keyturn;
let ws: Awaited<ReturnType<typeof startWebhookServer>>;
const connection = `wh-${randomBytes(3).toString('hex')}`;
/** Every password the tests saw, for the leak check at the end. */
const seenPasswords = new Set<string>();

beforeAll(async () => {
  ws = await startWebhookServer({ signingKey: KEY, keyId: KEY_ID });
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  const res = await kt.api('POST', '/v1/connections', {
    id: connection,
    type: 'webhook',
    host: '127.0.0.1',
    port: ws.port,
    tls: { mode: 'disable' },
    admin: { username: KEY_ID, password: KEY },
  });
  if (res.status !== 201)
    throw new Error(`registering the webhook connection failed: ${res.status} ${res.text}`);
});
afterAll(async () => {
  if (process.env.KT_DEBUG) for (const l of kt?.logs ?? []) if (/"level":[4-6]0/.test(l)) console.log(l);
  await kt?.close();
  await ws?.close();
  await dropPrefix(env.prefix);
});

/** A request to the example service, built and signed by hand (independently of the target's code). */
function signed(
  action: string,
  fields: Record<string, unknown>,
  o: { key?: string; keyId?: string; timestamp?: number } = {},
) {
  const timestamp = o.timestamp ?? Math.floor(Date.now() / 1000);
  const body = JSON.stringify({ action, ...fields, requestId: randomUUID(), timestamp });
  const mac = createHmac('sha256', o.key ?? KEY)
    .update(`${timestamp}.${body}`)
    .digest('hex');
  return {
    url: `${ws.url}/keyturn/${action}`,
    body,
    headers: {
      'content-type': 'application/json',
      'x-keyturn-key-id': o.keyId ?? KEY_ID,
      'x-keyturn-timestamp': String(timestamp),
      'x-keyturn-signature': `v1=${mac}`,
    },
  };
}

async function send(request: ReturnType<typeof signed>): Promise<number> {
  const res = await fetch(request.url, { method: 'POST', headers: request.headers, body: request.body });
  await res.text();
  return res.status;
}

/** The service's own answer to a test call: 200 when the credentials work. */
const serviceTest = (username: string, password: string) => send(signed('test', { username, password }));

async function readSecret(id: string) {
  const res = await kt.api('GET', `/v1/credentials/${id}/secret`);
  expect(res.status).toBe(200);
  seenPasswords.add(res.body.password);
  return res.body as { username: string; password: string; version: string; host: string; port: number };
}

async function registerCredential(): Promise<{ id: string; username: string; rotation: any }> {
  const username = `svc_${randomBytes(4).toString('hex')}`;
  const id = `wh-${username}`;
  const created = await kt.api('POST', '/v1/credentials', {
    id,
    connection,
    username,
    strategy: 'single-user',
    schedule: { every: '30d' },
  });
  expect(created.status).toBe(201);
  return { id, username, rotation: await waitForRotation(kt, created.body.rotation.id) };
}

describe('single-user rotation through a webhook', () => {
  it('sets a password the service accepts, and the old one is refused afterwards', async () => {
    const rejectedBefore = ws.rejected.length;
    const { id, username, rotation: first } = await registerCredential();
    expect(first.status).toBe('succeeded');
    expect(first.steps.map((s: { step: string }) => s.step)).toEqual(['create', 'set', 'test', 'finish']);
    const s1 = await readSecret(id);
    expect(s1).toMatchObject({ username, host: '127.0.0.1', port: ws.port });
    expect(await serviceTest(username, s1.password)).toBe(200);

    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(rotate.status).toBe(202);
    expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
    const s2 = await readSecret(id);
    expect(s2.version).toBe(rotate.body.rotationId);
    expect(s2.password).not.toBe(s1.password);
    expect(await serviceTest(username, s2.password)).toBe(200);
    expect(await serviceTest(username, s1.password)).toBe(403);

    // Every request Keyturn sent passed the service's signature, timestamp and replay checks…
    expect(ws.rejected.length).toBe(rejectedBefore);
    const mine = ws.requests.filter((r) => r.username === username);
    // …registration: set, test, and a test with a wrong password (refused: the service checks passwords; looked at
    // once per connection, not per rotation); ours; the rotation: set, test; ours: 2. A first set sends at once: no
    // look whether the pending password works already, which it cannot before anything was sent.
    expect(mine.map((r) => `${r.action} ${r.status}`)).toEqual([
      'set 204',
      'test 200',
      'test 403',
      'test 200',
      'set 204',
      'test 200',
      'test 200',
      'test 403',
    ]);
    expect(new Set(mine.map((r) => r.requestId)).size).toBe(mine.length);
    // The service keeps a hash, not the password.
    expect(ws.users.get(username)?.hash.toString('utf8')).not.toContain(s2.password);
  });
});

describe('the example service refuses what it must', () => {
  it('a request signed with a wrong key, or under another key id, or altered after signing', async () => {
    const before = ws.rejected.length;
    expect(
      await send(signed('test', { username: 'x', password: 'y' }, { key: randomBytes(32).toString('hex') })),
    ).toBe(401);
    expect(await send(signed('test', { username: 'x', password: 'y' }, { keyId: 'kid-2' }))).toBe(401);
    const altered = signed('set', { username: 'x', password: 'attacker-chosen' });
    altered.body = altered.body.replace('attacker-chosen', 'attacker-changed');
    expect(await send(altered)).toBe(401);
    expect(ws.rejected.slice(before)).toEqual([
      { status: 401, reason: 'bad signature' },
      { status: 401, reason: 'bad signature' },
      { status: 401, reason: 'bad signature' },
    ]);
    expect(ws.users.has('x')).toBe(false);
  });

  it('a replayed request (same body and headers, sent twice) with 409', async () => {
    const request = signed('set', { username: 'replay_user', password: 'first-password-123' });
    expect(await send(request)).toBe(204);
    expect(await send(request)).toBe(409);
    expect(ws.rejected.at(-1)).toEqual({ status: 409, reason: 'replayed' });
  });

  it('a request whose timestamp is 10 minutes old, however well signed', async () => {
    const old = Math.floor(Date.now() / 1000) - 600;
    expect(
      await send(signed('set', { username: 'stale_user', password: 'pw-stale-123' }, { timestamp: old })),
    ).toBe(401);
    expect(ws.rejected.at(-1)).toEqual({ status: 401, reason: 'stale timestamp' });
    expect(ws.users.has('stale_user')).toBe(false);
  });
});

describe('failures', () => {
  it('a service that answers 503 twice: the target retries (new requestId each time) and the rotation succeeds', async () => {
    ws.faults.push(503, 503);
    const { id, username, rotation } = await registerCredential();
    expect(rotation.status).toBe('succeeded');
    expect(rotation.attempts).toBe(1); // the target's retries, not the engine's
    const mine = ws.requests.filter((r) => r.username === username);
    expect(mine.map((r) => `${r.action} ${r.status}`)).toEqual(['set 503', 'set 503', 'set 204', 'test 200']);
    // Had a retry reused its requestId, the service would have answered 409 and the set step would have failed.
    expect(new Set(mine.map((r) => r.requestId)).size).toBe(mine.length);
    expect(await serviceTest(username, (await readSecret(id)).password)).toBe(200);
  });

  it('a service that is down: the rotation fails cleanly after the engine retries; the old password still works', async () => {
    const { id, username, rotation: first } = await registerCredential();
    expect(first.status).toBe('succeeded');
    const s1 = await readSecret(id);
    await ws.close();
    try {
      const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
      expect(rotate.status).toBe(202);
      const failed = await waitForRotation(kt, rotate.body.rotationId);
      expect(failed.status).toBe('failed');
      expect(failed.attempts).toBe(3);
      expect(failed.error.step).toBe('set');
      expect(failed.error.message).toContain('ECONNREFUSED');
      expect(failed.error.message).toContain('after 3 attempts'); // the target's own retries, within each
      expect(failed.rollback.outcome).toBe('done');
      expect(failed.rollback.note).toContain('nothing had been changed downstream');
      expect(JSON.stringify(failed)).not.toContain(KEY);
      expect(JSON.stringify(failed)).not.toContain(s1.password);
    } finally {
      await new Promise<void>((listening) => ws.server.listen(ws.port, '127.0.0.1', listening));
    }
    const after = await readSecret(id);
    expect(after.version).toBe(s1.version);
    expect(after.password).toBe(s1.password);
    expect(await serviceTest(username, s1.password)).toBe(200);
    expect((await kt.api('GET', `/v1/credentials/${id}`)).body.status).toBe('failed');
  });

  it('registering a connection with bad options is a 422 naming each option', async () => {
    const res = await kt.api('POST', '/v1/connections', {
      id: `${connection}-bad`,
      type: 'webhook',
      host: '127.0.0.1',
      port: ws.port,
      admin: { username: KEY_ID, password: KEY },
      options: { basePath: 'keyturn', timeoutMs: 50, retries: 9, colour: 'blue' },
    });
    expect(res.status).toBe(422);
    for (const name of ['basePath', 'timeoutMs', 'retries', '"colour"'])
      expect(res.body.error.message).toContain(`options: ${name}`);
    expect(res.text).not.toContain(KEY);
    expect(webhookTarget.validateOptions?.({ basePath: '/hooks/kt', timeoutMs: 100, retries: 0 })).toEqual(
      [],
    );
    expect(webhookTarget.validateOptions?.({ basePath: '/a/../b' })).toHaveLength(1);
    expect(webhookTarget.validateOptions?.({ retries: '2' })).toHaveLength(1);
  });

  it('no log line holds the signing key or a password', () => {
    const logs = kt.logs.join('\n');
    expect(logs).not.toContain(KEY);
    for (const password of seenPasswords) expect(logs).not.toContain(password);
  });
});

describe('docs/webhook-target.md', () => {
  it('embeds test/support/webhook-server.ts verbatim', () => {
    const doc = readFileSync(new URL('docs/webhook-target.md', ROOT), 'utf8');
    const file = readFileSync(new URL('test/support/webhook-server.ts', ROOT), 'utf8');
    const blocks = [...doc.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
    const example = blocks.find((b) => b?.includes('export async function startWebhookServer'));
    expect(example, 'the doc has no code block with the example server').toBeDefined();
    expect(example).toBe(file);
  });
});

// The wire format, against a bare server that records what arrives and answers what it is told.

interface Captured {
  path: string;
  headers: http.IncomingHttpHeaders;
  raw: string;
}

async function startCapture(
  answer: (c: Captured) => { status: number; body?: string } | 'hang',
  tls?: { key: string; cert: string },
) {
  const captured: Captured[] = [];
  const handler: http.RequestListener = async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk);
    const c = { path: req.url ?? '', headers: req.headers, raw: Buffer.concat(chunks).toString('utf8') };
    captured.push(c);
    const a = answer(c);
    if (a !== 'hang') res.writeHead(a.status).end(a.body ?? '');
  };
  const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
  await new Promise<void>((listening) => server.listen(0, '127.0.0.1', listening));
  return {
    port: (server.address() as AddressInfo).port,
    captured,
    close: () => new Promise<void>((closed) => server.close(() => closed()).closeAllConnections()),
  };
}

function webhookConnection(port: number, extra: Partial<Connection> = {}): Connection {
  return {
    id: 'wire',
    type: 'webhook',
    host: '127.0.0.1',
    port,
    tls: { mode: 'disable' },
    admin: { username: 'kid-9' },
    adminStore: { type: 'local' },
    labels: {},
    createdAt: '',
    updatedAt: '',
    ...extra,
  };
}

describe('webhook target on the wire', () => {
  const key = randomBytes(32).toString('base64url');
  const admin = { username: 'kid-9', password: key };

  it('signs HMAC-SHA256 over "<timestamp>.<raw body>" and sends the contract body and headers', async () => {
    const capture = await startCapture(() => ({ status: 200 }));
    try {
      const session = await webhookTarget.open(webhookConnection(capture.port), admin, { timeoutMs: 2000 });
      expect(await session.authenticate({ username: 'app', password: 'pw-on-the-wire-1' })).toEqual({
        ok: true,
      });
      await session.deleteUser('app');
      await session.close();
      const [test, revoke] = capture.captured;
      for (const c of [test!, revoke!]) {
        const ts = c.headers['x-keyturn-timestamp'] as string;
        expect(c.headers['x-keyturn-signature']).toBe(
          `v1=${createHmac('sha256', key).update(`${ts}.${c.raw}`).digest('hex')}`,
        );
        expect(c.headers['content-type']).toBe('application/json');
        expect(c.headers['x-keyturn-key-id']).toBe('kid-9');
        expect(Math.abs(Number(ts) - Date.now() / 1000)).toBeLessThan(5);
        expect(JSON.parse(c.raw).timestamp).toBe(Number(ts));
        expect(JSON.parse(c.raw).requestId).toMatch(
          /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
        );
      }
      expect(test!.path).toBe('/keyturn/test');
      expect(Object.keys(JSON.parse(test!.raw))).toEqual([
        'action',
        'username',
        'password',
        'requestId',
        'timestamp',
      ]);
      expect(JSON.parse(test!.raw)).toMatchObject({
        action: 'test',
        username: 'app',
        password: 'pw-on-the-wire-1',
      });
      expect(revoke!.path).toBe('/keyturn/revoke');
      expect(Object.keys(JSON.parse(revoke!.raw))).toEqual(['action', 'username', 'requestId', 'timestamp']);
    } finally {
      await capture.close();
    }
  });

  it('maps answers: test 403 is a refusal, set 400 a TargetRefusedError that quotes nothing of the answer, revoke 404 is fine', async () => {
    const password = 'pw-echoed-back-9';
    const capture = await startCapture((c) => {
      const { action } = JSON.parse(c.raw);
      if (action === 'test') return { status: 403 };
      if (action === 'revoke') return { status: 404 };
      return { status: 400, body: JSON.stringify({ error: `bad request ${c.raw}` }) };
    });
    try {
      const session = await webhookTarget.open(
        webhookConnection(capture.port, { options: { basePath: '/hooks/kt/' } }),
        admin,
        { timeoutMs: 2000 },
      );
      const outcome = await session.authenticate({ username: 'app', password });
      expect(outcome).toMatchObject({ ok: false, reason: 'rejected' });
      await session.deleteUser('app');
      const err = await session.updatePassword('app', password).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TargetRefusedError);
      // The status and its phrase only: the body (here an echo of the request) is never read back (issue 17 §2).
      expect((err as Error).message).toMatch(/webhook set for "app" .* answered 400 \(Bad Request\)/);
      expect((err as Error).message).not.toContain('bad request');
      expect((err as Error).message).not.toContain(password);
      expect((err as Error).message).not.toContain(key);
      expect(capture.captured.map((c) => c.path)).toEqual([
        '/hooks/kt/test',
        '/hooks/kt/revoke',
        '/hooks/kt/set',
      ]);
    } finally {
      await capture.close();
    }
  });

  it('retries 503 as often as `retries` says, then TargetUnavailableError; a 404 to test is not a refusal', async () => {
    const capture = await startCapture((c) => ({ status: c.path.endsWith('/set') ? 503 : 404 }));
    try {
      const session = await webhookTarget.open(
        webhookConnection(capture.port, { options: { retries: 1 } }),
        admin,
        {
          timeoutMs: 2000,
        },
      );
      const err = await session.updatePassword('app', 'pw-retried-123').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TargetUnavailableError);
      expect((err as Error).message).toContain('answered 503');
      expect((err as Error).message).toContain('after 2 attempts');
      // An answer, even a 503, means the request arrived: the engine may not take it as "nothing sent".
      expect(wasNothingSent(err)).toBe(false);
      expect(capture.captured).toHaveLength(2);
      await expect(
        session.authenticate({ username: 'app', password: 'pw-retried-123' }),
      ).rejects.toBeInstanceOf(TargetUnavailableError);
      expect(capture.captured).toHaveLength(3);
    } finally {
      await capture.close();
    }
  });

  it('a service that never answers costs one timeout, retries included; close() stops a call in flight', async () => {
    const capture = await startCapture(() => 'hang');
    try {
      const session = await webhookTarget.open(
        webhookConnection(capture.port, { options: { timeoutMs: 300 } }),
        admin,
        {
          timeoutMs: 10_000,
        },
      );
      const started = Date.now();
      const err = await session
        .authenticate({ username: 'app', password: 'pw-hang-1234' })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TargetUnavailableError);
      expect((err as Error).message).toContain('no answer within 300 ms');
      // A request that got no answer may have been applied.
      expect(wasNothingSent(err)).toBe(false);
      expect(Date.now() - started).toBeLessThan(1500);

      const slow = await webhookTarget.open(webhookConnection(capture.port), admin, { timeoutMs: 10_000 });
      const pending = slow.updatePassword('app', 'pw-hang-1234').catch((e: unknown) => e);
      // Lets the request reach the server that never answers, so close() cuts one in flight; a shorter wait only tests less.
      await new Promise((r) => setTimeout(r, 100));
      const closedAt = Date.now();
      await slow.close();
      const closedErr = await pending;
      expect(closedErr).toBeInstanceOf(TargetUnavailableError);
      expect((closedErr as Error).message).toContain('closed');
      expect(Date.now() - closedAt).toBeLessThan(500);
    } finally {
      await capture.close();
    }
  });
});

const opensslAvailable = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!opensslAvailable)('webhook target over TLS', () => {
  let dir: string;
  let cert: string;
  let key: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'kt-webhook-tls-'));
    execFileSync(
      'openssl',
      [
        ...['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'],
        ...['-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1'],
        ...['-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'],
      ],
      { stdio: 'ignore' },
    );
    cert = readFileSync(join(dir, 'cert.pem'), 'utf8');
    key = readFileSync(join(dir, 'key.pem'), 'utf8');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('require encrypts without verifying; verify-full checks the certificate against tls.ca', async () => {
    const capture = await startCapture(() => ({ status: 200 }), { key, cert });
    const admin = { username: 'kid-9', password: randomBytes(32).toString('hex') };
    const login = { username: 'app', password: 'pw-over-tls-123' };
    const open = (tls: Connection['tls']) =>
      webhookTarget.open(webhookConnection(capture.port, { tls, options: { retries: 0 } }), admin, {
        timeoutMs: 2000,
      });
    try {
      expect(await (await open({ mode: 'require' })).authenticate(login)).toEqual({ ok: true });
      expect(await (await open({ mode: 'verify-full', ca: cert })).authenticate(login)).toEqual({ ok: true });
      // Without the CA the self-signed certificate is refused; no tls block at all means verify-full.
      const unverified = await (await open({ mode: 'verify-full' }))
        .authenticate(login)
        .catch((e: unknown) => e);
      expect(unverified).toBeInstanceOf(TargetUnavailableError);
      expect((unverified as Error).message).toMatch(/self[- ]signed/);
      expect(await (await open(undefined)).authenticate(login).catch((e: unknown) => e)).toBeInstanceOf(
        TargetUnavailableError,
      );
      expect(capture.captured).toHaveLength(2);
    } finally {
      await capture.close();
    }
  });
});
