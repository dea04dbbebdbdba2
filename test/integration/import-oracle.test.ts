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
  tokens = await tokensFile({ ops: 'roles: [operator]' });
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

describe('finding 13: failed imports are audited and rate-limited per principal', () => {
  it('audits each wrong currentPassword, then answers 429 with Retry-After; another principal is not limited', async () => {
    const app = await createAppRole();
    const real = randomBytes(18).toString('base64url');
    await pgAdmin((c) =>
      c.query(`ALTER ROLE ${pg.escapeIdentifier(app.name)} PASSWORD ${pg.escapeLiteral(real)}`),
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
});
