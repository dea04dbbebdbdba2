// Limits and tokens with more than one replica (issue 17, section 4): the rate limit counted in Redis and shared by
// every API replica (and counted in the process, never a 5xx, while Redis is away); the tokens file reloaded on change
// without a restart (a bad file keeps the last good one, and the log and /readyz say why); expired and revoked tokens
// refused at once and audited by name; and a production start with administrators from the tokens file, without
// KEYTURN_ADMIN_TOKEN.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync } from 'node:fs';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../../src/crypto/tokens.ts';
import {
  createAppRole,
  dropPrefix,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  testRedis,
  tokensFile,
  waitFor,
} from '../support/harness.ts';
import { openSse } from '../support/sse.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const started: Array<{ kt: Keyturn; env: TestEnv }> = [];
const cleanups: Array<() => Promise<unknown>> = [];

async function start(env: TestEnv): Promise<Keyturn> {
  const kt = await startKeyturn(env, { components: ['api'] });
  started.push({ kt, env });
  return kt;
}

afterAll(async () => {
  for (const { kt } of started) await kt.close();
  for (const env of new Set(started.map((s) => s.env))) await dropPrefix(env.prefix);
  for (const cleanup of cleanups) await cleanup();
});

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

async function auditEvents(kt: Keyturn, action: string) {
  return (await kt.runtime.ctx.audit.read({ action, limit: 10_000 })).events;
}

describe('the rate limit is shared by every API replica', () => {
  const MAX = 6;
  let env: TestEnv;
  let a: Keyturn;
  let b: Keyturn;

  beforeAll(async () => {
    env = testEnv({ LOG_LEVEL: 'warn', KEYTURN_RATE_LIMIT_MAX: String(MAX) });
    a = await start(env);
    b = await start(env);
  });

  it('counts the requests made to two replicas together: the 7th is 429 on either', async () => {
    for (let i = 1; i <= MAX; i++) {
      const replica = i % 2 ? a : b;
      const res = await replica.api('GET', '/v1/connections');
      expect(res.status, res.text).toBe(200);
      expect(res.headers.get('x-ratelimit-limit')).toBe(String(MAX));
      expect(res.headers.get('x-ratelimit-remaining')).toBe(String(MAX - i));
    }
    for (const replica of [a, b]) {
      const limited = await replica.api('GET', '/v1/connections');
      expect(limited.status).toBe(429);
      const retryAfter = Number(limited.headers.get('retry-after'));
      expect(retryAfter).toBeGreaterThan(0);
      expect(retryAfter).toBeLessThanOrEqual(60);
      expect(limited.body).toEqual({
        error: {
          code: 'rate_limited',
          message: `Too many requests for admin: at most ${MAX} per 60s; retry after ${retryAfter} seconds`,
        },
      });
    }
  });

  it('counts unauthenticated callers per address across replicas too', async () => {
    for (let i = 1; i <= MAX; i++) {
      const res = await (i % 2 ? a : b).api('GET', '/v1/connections', undefined, bearer('wrong'));
      expect(res.status, res.text).toBe(401);
    }
    const limited = await b.api('GET', '/v1/connections', undefined, bearer('wrong'));
    expect(limited.status).toBe(429);
    expect(limited.body.error.message).toMatch(/^Too many requests for address 127\.0\.0\.1: /);
  });

  it('keeps its counters under the prefix, one key per subject, named by a hash (no name, no address)', async () => {
    const redis = testRedis();
    try {
      const nodes = redis instanceof Cluster ? redis.nodes('master') : [redis];
      const keys: string[] = [];
      for (const node of nodes) keys.push(...(await node.keys(`${env.prefix}:limits:rate:*`)));
      expect(keys.length).toBe(2);
      for (const key of keys) {
        expect(key).toMatch(new RegExp(`^${env.prefix}:limits:rate:[0-9a-f]{32}$`));
        expect(await redis.pttl(key)).toBeGreaterThan(0);
      }
    } finally {
      redis.disconnect();
    }
  });
});

describe('the rate limit while Redis is away', () => {
  it('counts in the process, says so once, and answers 429 rather than a 5xx', async () => {
    const MAX = 3;
    const env = testEnv({ LOG_LEVEL: 'info', KEYTURN_RATE_LIMIT_MAX: String(MAX) });
    const kt = await start(env);
    expect((await kt.api('GET', '/v1/no-such-route')).status).toBe(404);
    // Keyturn's command connection goes away (and does not come back).
    kt.runtime.ctx.redis.disconnect();
    for (let i = 1; i <= MAX; i++) {
      const res = await kt.api('GET', '/v1/no-such-route');
      expect(res.status, res.text).toBe(404);
      expect(res.headers.get('x-ratelimit-remaining')).toBe(String(MAX - i));
    }
    for (let i = 0; i < 3; i++) {
      const limited = await kt.api('GET', '/v1/no-such-route');
      expect(limited.status).toBe(429);
      expect(limited.body.error.code).toBe('rate_limited');
    }
    const said = kt.logs.filter((l) => l.includes('rate limit: Redis cannot count requests'));
    expect(said).toHaveLength(1);
    expect(JSON.parse(said[0] as string).level).toBe(40);
  });
});

describe('the tokens file is reloaded on change', () => {
  let env: TestEnv;
  let kt: Keyturn;
  let file: Awaited<ReturnType<typeof tokensFile>>;
  const fresh = randomBytes(32).toString('base64url');

  const line = (name: string, token: string, extra = 'roles: [operator]') =>
    `  - {name: ${name}, sha256: ${sha256Hex(token)}, ${extra}}`;
  /** Writes the file the way editors and Kubernetes do: a new file renamed over the old one. */
  async function replaceFile(text: string) {
    const next = `${file.path}.next`;
    await writeFile(next, text);
    await rename(next, file.path);
  }
  const readyz = async () => (await kt.api('GET', '/readyz', undefined, { authorization: '' })).body;

  beforeAll(async () => {
    file = await tokensFile({ 'ci-bot': 'roles: [operator]', 'old-bot': 'roles: [operator]' });
    cleanups.push(file.remove);
    env = testEnv({ LOG_LEVEL: 'info', KEYTURN_TOKENS_FILE: file.path });
    kt = await start(env);
  });

  it('puts a valid file in force without a restart: a new token works, a removed one stops', async () => {
    const old = file.tokens['old-bot'] as string;
    expect((await kt.api('GET', '/v1/connections', undefined, bearer(old))).status).toBe(200);
    expect((await kt.api('GET', '/v1/audit?limit=1', undefined, bearer(old))).status).toBe(403);
    expect((await kt.api('GET', '/v1/connections', undefined, bearer(fresh))).status).toBe(401);
    const before = await readyz();
    expect(before.checks.tokensFile).toEqual({ ok: true, file: file.path, loadedAt: expect.any(String) });

    await replaceFile(
      ['tokens:', line('ci-bot', file.tokens['ci-bot'] as string), line('new-bot', fresh), ''].join('\n'),
    );
    await waitFor(
      'the new token to work',
      async () => (await kt.api('GET', '/v1/connections', undefined, bearer(fresh))).status === 200,
      15_000,
    );
    // Put in force as a whole: the removed token stopped in the same reload.
    const refused = await kt.api('GET', '/v1/connections', undefined, bearer(old));
    expect(refused.status).toBe(401);
    expect(refused.body.error.message).toBe('The bearer token has been revoked: ask for a new one');
    expect(
      (await kt.api('GET', '/v1/connections', undefined, bearer(file.tokens['ci-bot'] as string))).status,
    ).toBe(200);

    const status = (await readyz()).checks.tokensFile;
    expect(status).toEqual({ ok: true, file: file.path, loadedAt: expect.any(String) });
    expect(Date.parse(status.loadedAt)).toBeGreaterThan(Date.parse(before.checks.tokensFile.loadedAt));

    const reloads = await auditEvents(kt, 'auth.tokens_reloaded');
    expect(reloads).toHaveLength(1);
    expect(reloads[0]).toMatchObject({
      actor: 'system',
      outcome: 'success',
      details: {
        file: file.path,
        tokens: 2,
        added: 'token "new-bot"',
        removed: 'token "old-bot"',
        revoked: 'old-bot',
      },
    });
    const revoked = await auditEvents(kt, 'auth.token_revoked');
    expect(revoked).toHaveLength(1);
    expect(revoked[0]).toMatchObject({
      actor: 'old-bot',
      outcome: 'denied',
      details: { token: 'old-bot', route: 'GET /v1/connections' },
    });
    const trail = JSON.stringify(await kt.runtime.ctx.audit.read({ limit: 10_000 }));
    for (const token of [old, fresh]) expect(trail).not.toContain(token);
    expect(kt.logs.join('\n')).not.toContain(old);
  });

  it('keeps the last good file when the new one is invalid, and says why in the log and /readyz', async () => {
    await replaceFile('tokens:\n  - {name: broken, roles: [operator]}\n');
    const status = await waitFor(
      '/readyz to report the refused file',
      async () => {
        const body = await readyz();
        return body.checks.tokensFile.refused ? body : undefined;
      },
      15_000,
    );
    expect(status.status).toBe('ready');
    expect(status.checks.tokensFile).toEqual({
      ok: true,
      file: file.path,
      loadedAt: expect.any(String),
      refused: { at: expect.any(String), reason: 'tokens[0].sha256 is required' },
    });
    // The last good file is still in force.
    expect((await kt.api('GET', '/v1/connections', undefined, bearer(fresh))).status).toBe(200);
    const warned = kt.logs.filter((l) => l.includes('refused on reload'));
    expect(warned).toHaveLength(1);
    expect(warned[0]).toContain('tokens[0].sha256 is required');
    const refusals = await auditEvents(kt, 'auth.tokens_reload_refused');
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatchObject({
      actor: 'system',
      outcome: 'failure',
      details: { file: file.path, reason: 'tokens[0].sha256 is required' },
    });

    // An emptied file (as a half-written one looks) is refused too, rather than revoking every token.
    await writeFile(file.path, '');
    await waitFor(
      'the empty file to be refused',
      async () => /the file is empty/.test((await readyz()).checks.tokensFile.refused?.reason ?? ''),
      15_000,
    );
    expect((await kt.api('GET', '/v1/connections', undefined, bearer(fresh))).status).toBe(200);

    // Fixed: put in force, and nothing is refused any more.
    await replaceFile(['tokens:', line('new-bot', fresh, 'roles: [auditor]'), ''].join('\n'));
    await waitFor(
      'the fixed file to be in force',
      async () => (await readyz()).checks.tokensFile.refused === undefined,
      15_000,
    );
    // Its roles changed: an auditor now, which an operator was not.
    expect((await kt.api('GET', '/v1/audit?limit=1', undefined, bearer(fresh))).status).toBe(200);
    expect((await kt.api('POST', '/v1/connections', {}, bearer(fresh))).status).toBe(403);
  });

  it('ends an open event stream whose token a reload revoked', async () => {
    const streamer = randomBytes(32).toString('base64url');
    await replaceFile(
      ['tokens:', line('new-bot', fresh, 'roles: [auditor]'), line('streamer', streamer), ''].join('\n'),
    );
    await waitFor(
      'the streamer token to work',
      async () => (await kt.api('GET', '/v1/connections', undefined, bearer(streamer))).status === 200,
      15_000,
    );
    const stream = await openSse(`${kt.url}/v1/events`, { headers: bearer(streamer) });
    expect(stream.status).toBe(200);
    await replaceFile(['tokens:', line('new-bot', fresh, 'roles: [auditor]'), ''].join('\n'));
    await Promise.race([
      stream.ended,
      new Promise((_, reject) =>
        // A deadline, not a wait: the race ends as soon as the stream does.
        setTimeout(() => reject(new Error('the stream did not end within 15 s')), 15_000).unref(),
      ),
    ]);
    expect(stream.endedBy).toBe('server');
    expect(stream.comments.map((c) => c.text)).toContain(
      'the token of this stream was revoked or changed in the tokens file',
    );
  });
});

describe('reader bindings after a reload', () => {
  it("checks an operator's registration against the reader bindings of the file in force", async () => {
    const file = await tokensFile({ 'ops-2': 'roles: [operator]' });
    cleanups.push(file.remove);
    const kt = await start(testEnv({ LOG_LEVEL: 'warn', KEYTURN_TOKENS_FILE: file.path }));
    const ops = bearer(file.tokens['ops-2'] as string);
    const connection = await registerPgConnection(kt);
    const register = async () => {
      const role = await createAppRole();
      return kt.api(
        'POST',
        '/v1/credentials',
        {
          id: `reach-${randomBytes(3).toString('hex')}`,
          connection,
          username: role.name,
          strategy: 'single-user',
          schedule: { every: '30d' },
        },
        ops,
      );
    };
    expect((await register()).status).toBe(201);

    const reader = randomBytes(32).toString('base64url');
    await writeFile(
      file.path,
      [
        'tokens:',
        `  - {name: ops-2, sha256: ${sha256Hex(file.tokens['ops-2'] as string)}, roles: [operator]}`,
        `  - {name: reach-reader, sha256: ${sha256Hex(reader)}, roles: [reader], credentials: ["reach-*"]}`,
        '',
      ].join('\n'),
    );
    await waitFor(
      'the reader token to work',
      async () => (await kt.api('GET', '/v1/credentials/reach-x', undefined, bearer(reader))).status === 404,
      15_000,
    );
    const denied = await register();
    expect(denied.status, denied.text).toBe(403);
    expect(denied.body.error.message).toContain('token "reach-reader"');
  });
});

describe('token expiry', () => {
  it('refuses an expired token with 401 at each request, audited by its name', async () => {
    const expired = randomBytes(32).toString('base64url');
    const soon = randomBytes(32).toString('base64url');
    const dir = await mkdtemp(join(tmpdir(), 'kt-tokens-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, 'tokens.yaml');
    // Expires a few seconds from now: it works, then stops without any reload.
    const soonAt = new Date(Date.now() + 8000).toISOString();
    await writeFile(
      path,
      [
        'tokens:',
        `  - {name: old-ci, sha256: ${sha256Hex(expired)}, roles: [operator], expiresAt: 2020-01-01T00:00:00Z}`,
        `  - {name: short-ci, sha256: ${sha256Hex(soon)}, roles: [operator], expiresAt: "${soonAt}"}`,
        '',
      ].join('\n'),
    );
    const kt = await start(testEnv({ LOG_LEVEL: 'warn', KEYTURN_TOKENS_FILE: path }));

    const res = await kt.api('GET', '/v1/connections', undefined, bearer(expired));
    expect(res.status).toBe(401);
    expect(res.body.error.message).toBe('The bearer token has expired: ask for a new one');
    expect((await kt.api('GET', '/v1/connections', undefined, bearer(soon))).status).toBe(200);
    await waitFor(
      'the short-lived token to expire',
      async () => (await kt.api('GET', '/v1/connections', undefined, bearer(soon))).status === 401,
      30_000,
    );

    const events = await auditEvents(kt, 'auth.token_expired');
    expect(events.find((e) => e.actor === 'old-ci')).toMatchObject({
      outcome: 'denied',
      details: { token: 'old-ci', expiredAt: '2020-01-01T00:00:00.000Z', route: 'GET /v1/connections' },
    });
    expect(events.find((e) => e.actor === 'short-ci')).toMatchObject({
      outcome: 'denied',
      details: { token: 'short-ci', expiredAt: soonAt },
    });
    const trail = JSON.stringify(await kt.runtime.ctx.audit.read({ limit: 10_000 }));
    for (const token of [expired, soon]) expect(trail).not.toContain(token);
  });
});

describe('production without a static admin token', () => {
  /** `node src/main.ts` in production, API only, without KEYTURN_ADMIN_TOKEN. */
  function launch(extra: Record<string, string>) {
    const env = testEnv();
    const { KEYTURN_ADMIN_TOKEN: _none, ...rest } = env.env;
    const state = mkdtempSync(join(tmpdir(), 'keyturn-state-'));
    cleanups.push(() => rm(state, { recursive: true, force: true }));
    cleanups.push(() => dropPrefix(env.prefix));
    const child: ChildProcess = spawn(process.execPath, ['src/main.ts'], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        ...rest,
        NODE_ENV: 'production',
        KEYTURN_COMPONENTS: 'api',
        KEYTURN_STATE_DIR: state,
        ...extra,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const output: string[] = [];
    const collect = (chunk: Buffer) => output.push(...String(chunk).split('\n').filter(Boolean));
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
    const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
    cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    });
    return { child, output, exited, state };
  }

  it('starts when the tokens file grants the admin role, and its admin token administers', async () => {
    const file = await tokensFile({ 'ops-admin': 'roles: [admin]', 'ci-bot': 'roles: [operator]' });
    cleanups.push(file.remove);
    const run = launch({ KEYTURN_TOKENS_FILE: file.path });
    const serving = await waitFor(
      'keyturn to serve',
      async () => {
        if (run.child.exitCode !== null)
          throw new Error(`exited ${run.child.exitCode}: ${run.output.join('\n')}`);
        return run.output.find((l) => l.includes('keyturn serving on'));
      },
      30_000,
    );
    const url = JSON.parse(serving).address as string;
    const admin = bearer(file.tokens['ops-admin'] as string);
    expect((await fetch(`${url}/v1/connections`, { headers: admin })).status).toBe(200);
    expect((await fetch(`${url}/v1/audit?limit=1`, { headers: admin })).status).toBe(200);
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    const messages = run.output.flatMap((l) => (l.startsWith('{') ? [JSON.parse(l).msg as string] : []));
    expect(messages).toContain(
      'KEYTURN_ADMIN_TOKEN is not set: administrators come from the tokens file (token "ops-admin")',
    );
    // No development admin token was made.
    expect(readdirSync(run.state)).toEqual([]);
  });

  it('refuses to start when nothing provides an administrator, saying what to set', async () => {
    const file = await tokensFile({ 'ci-bot': 'roles: [operator]' });
    cleanups.push(file.remove);
    const withFile = launch({ KEYTURN_TOKENS_FILE: file.path });
    expect(await withFile.exited).toBe(2);
    const said = withFile.output.join('\n');
    expect(said).toContain(
      'KEYTURN_ADMIN_TOKEN is required when NODE_ENV=production unless KEYTURN_TOKENS_FILE',
    );
    expect(said).toContain(
      'grants the admin role to no unexpired token, no client certificate and no JWT rule',
    );
    expect(said).toMatch(/set KEYTURN_ADMIN_TOKEN .*or give the admin role in KEYTURN_TOKENS_FILE/);

    const without = launch({});
    expect(await without.exited).toBe(2);
    expect(without.output.join('\n')).toContain('and neither is set');
  });
});
