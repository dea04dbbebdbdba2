// Finding 11 of issue 11: an operator relabelled a credential to team=payments, or created one named pay-*, and a
// reader bound by that label or glob received a secret it had no access to before; the audit said only
// "fields: labels". Giving a reader a credential, or taking one away, is now the admin's; label changes are audited
// with their old and new values.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createAppRole,
  dropPrefix,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  tokensFile,
} from '../support/harness.ts';

let tokens: Awaited<ReturnType<typeof tokensFile>>;
let asOperator: Record<string, string>;
let env: TestEnv;
let kt: Keyturn;
let connection: string;

beforeAll(async () => {
  tokens = await tokensFile({
    ops: 'roles: [operator]',
    'payments-app': 'roles: [reader], labels: {team: payments}',
    'pay-glob': 'roles: [reader], credentials: ["pay-*"]',
  });
  asOperator = { authorization: `Bearer ${tokens.tokens.ops}` };
  env = testEnv({ KEYTURN_TOKENS_FILE: tokens.path });
  // API only: the registrations below queue a first rotation that nothing runs.
  kt = await startKeyturn(env);
  connection = await registerPgConnection(kt);
});
afterAll(async () => {
  await kt?.close();
  if (env) await dropPrefix(env.prefix);
  await tokens?.remove();
});

async function body(id: string, labels: Record<string, string> = {}) {
  const role = await createAppRole();
  return { id, connection, username: role.name, strategy: 'single-user', schedule: { every: '30d' }, labels };
}

async function auditEvents(action: string, credential: string) {
  const res = await kt.api('GET', `/v1/audit?action=${action}&credential=${credential}&limit=50`);
  expect(res.status).toBe(200);
  return res.body.events as { outcome: string; actor: string; details: Record<string, unknown> }[];
}

describe("finding 11: an operator cannot widen or narrow a reader's reach", () => {
  it('refuses an operator a credential that a reader glob or label binding matches; an admin may', async () => {
    const byGlob = await body(`pay-${randomBytes(3).toString('hex')}`);
    const denied = await kt.api('POST', '/v1/credentials', byGlob, asOperator);
    expect(denied.status, denied.text).toBe(403);
    expect(denied.body.error.message).toContain('token "pay-glob"');
    expect(denied.body.error.message).toMatch(/admin role/);
    expect((await kt.api('GET', `/v1/credentials/${byGlob.id}`)).status).toBe(404);
    expect(await auditEvents('credential.created', byGlob.id)).toMatchObject([
      { outcome: 'denied', actor: 'ops' },
    ]);

    const byLabel = await body(`svc-${randomBytes(3).toString('hex')}`, { team: 'payments' });
    const deniedLabel = await kt.api('POST', '/v1/credentials', byLabel, asOperator);
    expect(deniedLabel.status, deniedLabel.text).toBe(403);
    expect(deniedLabel.body.error.message).toContain('token "payments-app"');

    expect((await kt.api('POST', '/v1/credentials', byGlob)).status).toBe(201);
    // A credential no reader reaches is still the operator's to create.
    const unbound = await body(`svc-${randomBytes(3).toString('hex')}`, { team: 'ops' });
    expect((await kt.api('POST', '/v1/credentials', unbound, asOperator)).status).toBe(201);
  });

  it('refuses an operator labels that give a reader a credential or take one away, and audits old and new labels', async () => {
    const cred = await body(`svc-${randomBytes(3).toString('hex')}`, { team: 'ops' });
    expect((await kt.api('POST', '/v1/credentials', cred, asOperator)).status).toBe(201);

    const widen = await kt.api(
      'PATCH',
      `/v1/credentials/${cred.id}`,
      { labels: { team: 'payments' } },
      asOperator,
    );
    expect(widen.status, widen.text).toBe(403);
    expect(widen.body.error.message).toContain('give token "payments-app" its secret');
    expect((await kt.api('GET', `/v1/credentials/${cred.id}`)).body.labels).toEqual({ team: 'ops' });
    // The reader still cannot read it.
    const read = await kt.api('GET', `/v1/credentials/${cred.id}/secret`, undefined, {
      authorization: `Bearer ${tokens.tokens['payments-app']}`,
    });
    expect(read.status).toBe(403);

    // Labels no binding cares about are the operator's, audited with both values.
    const harmless = await kt.api(
      'PATCH',
      `/v1/credentials/${cred.id}`,
      { labels: { team: 'ops', env: 'prod' } },
      asOperator,
    );
    expect(harmless.status, harmless.text).toBe(200);

    // An admin gives the reader the credential; the operator may not take it away again.
    expect(
      (await kt.api('PATCH', `/v1/credentials/${cred.id}`, { labels: { team: 'payments' } })).status,
    ).toBe(200);
    const narrow = await kt.api(
      'PATCH',
      `/v1/credentials/${cred.id}`,
      { labels: { team: 'ops' } },
      asOperator,
    );
    expect(narrow.status, narrow.text).toBe(403);
    expect(narrow.body.error.message).toContain('take it from token "payments-app"');

    const events = await auditEvents('credential.updated', cred.id);
    expect(events.map((e) => [e.outcome, e.actor, e.details['labels.from'], e.details['labels.to']])).toEqual(
      [
        ['denied', 'ops', '{"team":"ops"}', '{"team":"payments"}'],
        ['success', 'ops', '{"team":"ops"}', '{"env":"prod","team":"ops"}'],
        ['success', 'admin', '{"env":"prod","team":"ops"}', '{"team":"payments"}'],
        ['denied', 'ops', '{"team":"payments"}', '{"team":"ops"}'],
      ],
    );
  });
});
