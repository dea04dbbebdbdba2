// Finding 13 of issue 11: a failed import (a wrong currentPassword) wrote no audit event, so Keyturn could be used as
// a silent password oracle. Each failure is now audited, and a principal with too many failures in the window gets
// 429 with Retry-After before the downstream is asked again; other principals are not affected.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createAppRole,
  dropPrefix,
  type Keyturn,
  pgAdmin,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  tokensFile,
} from '../support/harness.ts';

let tokens: Awaited<ReturnType<typeof tokensFile>>;
let env: TestEnv;
let kt: Keyturn;
let connection: string;

beforeAll(async () => {
  tokens = await tokensFile({
    ops: 'roles: [operator]',
    burst: 'roles: [operator]',
    honest: 'roles: [operator]',
  });
  env = testEnv({
    KEYTURN_TOKENS_FILE: tokens.path,
    KEYTURN_IMPORT_FAILURES_MAX: '3',
    KEYTURN_IMPORT_FAILURES_WINDOW: '1m',
  });
  kt = await startKeyturn(env);
  connection = await registerPgConnection(kt);
});
afterAll(async () => {
  await kt?.close();
  if (env) await dropPrefix(env.prefix);
  await tokens?.remove();
});

/** An app role whose password is known, and the body of a request importing it. */
async function importable() {
  const app = await createAppRole();
  const password = randomBytes(18).toString('base64url');
  await pgAdmin((c) =>
    c.query(`ALTER ROLE ${pg.escapeIdentifier(app.name)} PASSWORD ${pg.escapeLiteral(password)}`),
  );
  const body = (id: string, currentPassword: string) => ({
    id,
    connection,
    username: app.name,
    strategy: 'single-user',
    schedule: { every: '30d' },
    import: true,
    currentPassword,
  });
  return { app, password, body };
}

const auditOf = async (actor: string) => {
  const audit = await kt.api('GET', `/v1/audit?action=credential.import_failed&actor=${actor}&limit=50`);
  expect(audit.status, audit.text).toBe(200);
  return audit.body.events as { actor: string; outcome: string; details: Record<string, unknown> }[];
};

describe('finding 13: failed imports are audited and rate-limited per principal', () => {
  it('audits each wrong currentPassword, then answers 429 with Retry-After; another principal is not limited', async () => {
    const { app, password: real, body } = await importable();
    const guesses = Array.from({ length: 3 }, () => `guess-${randomBytes(12).toString('hex')}`);
    for (const guess of guesses) {
      const res = await kt.api('POST', '/v1/credentials', body('oracle', guess));
      expect(res.status, res.text).toBe(422);
    }
    // Limited now, even with the right password: the downstream is not asked.
    const limited = await kt.api('POST', '/v1/credentials', body('oracle', real));
    expect(limited.status, limited.text).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(Number(limited.headers.get('retry-after'))).toBeLessThanOrEqual(60);
    expect(limited.body.error.message).toMatch(/3 failed imports .*KEYTURN_IMPORT_FAILURES_MAX/);

    const audit = await kt.api('GET', '/v1/audit?action=credential.import_failed&limit=50');
    const events = audit.body.events as {
      actor: string;
      outcome: string;
      details: Record<string, unknown>;
    }[];
    expect(events.map((e) => [e.actor, e.outcome, e.details.failures])).toEqual([
      ['admin', 'failure', 1],
      ['admin', 'failure', 2],
      ['admin', 'failure', 3],
      ['admin', 'denied', 3],
    ]);
    expect(events[0]?.details).toMatchObject({
      username: app.name,
      reason: 'the downstream refused currentPassword',
    });
    for (const secret of [...guesses, real]) expect(audit.text).not.toContain(secret);

    // Another principal has its own budget.
    const other = await kt.api('POST', '/v1/credentials', body('oracle', real), {
      authorization: `Bearer ${tokens.tokens.ops}`,
    });
    expect(other.status, other.text).toBe(201);
  });

  it('concurrent wrong guesses cannot all pass the limit: the downstream is asked at most KEYTURN_IMPORT_FAILURES_MAX times', async () => {
    const { body } = await importable();
    const guesses = Array.from({ length: 8 }, () => `guess-${randomBytes(12).toString('hex')}`);
    const answers = await Promise.all(
      guesses.map((guess, i) =>
        kt.api('POST', '/v1/credentials', body(`burst-${i}`, guess), {
          authorization: `Bearer ${tokens.tokens.burst}`,
        }),
      ),
    );
    const statuses = answers.map((a) => a.status).sort();
    expect(statuses, answers.map((a) => a.text).join('\n')).toEqual([422, 422, 422, 429, 429, 429, 429, 429]);
    const events = await auditOf('burst');
    expect(events.filter((e) => e.outcome === 'failure')).toHaveLength(3);
    expect(events.filter((e) => e.outcome === 'denied')).toHaveLength(5);
  });

  it('an import whose password logs in uses up nothing of the budget', async () => {
    for (let i = 0; i < 3; i++) {
      const { password, body } = await importable();
      const res = await kt.api('POST', '/v1/credentials', body(`honest-${i}`, password), {
        authorization: `Bearer ${tokens.tokens.honest}`,
      });
      expect(res.status, res.text).toBe(201);
    }
    const { body } = await importable();
    const wrong = await kt.api('POST', '/v1/credentials', body('honest-wrong', 'not-the-password-at-all'), {
      authorization: `Bearer ${tokens.tokens.honest}`,
    });
    expect(wrong.status, wrong.text).toBe(422);
    expect((await auditOf('honest')).map((e) => [e.outcome, e.details.failures])).toEqual([['failure', 1]]);
  });
});
