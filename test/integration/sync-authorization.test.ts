// Sync destinations receive the secret (a Kubernetes Secret in a namespace is readable by whoever reads the
// namespace), so choosing them is handing the secret over, and dropping one leaves a service on a password the next
// rotation ends: setting, changing or removing a credential's `sync` needs the admin role. An operator gets 403, and
// the refusal is audited; an unchanged `sync` in a PATCH is no change.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  dropPrefix,
  type Keyturn,
  startKeyturn,
  type TestEnv,
  testEnv,
  tokensFile,
  unverifiedWebhookBody,
} from '../support/harness.ts';

describe("a credential's sync destinations are an admin's to choose", () => {
  let env: TestEnv;
  let kt: Keyturn;
  let tokens: Awaited<ReturnType<typeof tokensFile>>;
  const asOperator: Record<string, string> = {};
  const SYNC = [{ type: 'kubernetes', namespace: 'payments', name: 'orders-db' }];

  beforeAll(async () => {
    tokens = await tokensFile({ ops: 'roles: [operator]' });
    asOperator.authorization = `Bearer ${tokens.tokens.ops}`;
    env = testEnv({ KEYTURN_TOKENS_FILE: tokens.path, LOG_LEVEL: 'warn' });
    kt = await startKeyturn(env, { components: ['api'] });
    const conn = await kt.api('POST', '/v1/connections', unverifiedWebhookBody('hook'));
    expect(conn.status, conn.text).toBe(201);
  });
  afterAll(async () => {
    await kt?.close();
    await tokens?.remove();
    await dropPrefix(env.prefix);
  });

  const credential = (id: string, extra: Record<string, unknown> = {}) => ({
    id,
    connection: 'hook',
    username: `app-${id}`,
    strategy: 'single-user',
    schedule: { every: '30d' },
    ...extra,
  });

  it('an operator cannot register a credential with sync (403, audited); an admin gets past the check', async () => {
    const refused = await kt.api(
      'POST',
      '/v1/credentials',
      credential('op-sync', { sync: SYNC }),
      asOperator,
    );
    expect(refused.status, refused.text).toBe(403);
    expect(refused.body.error.message).toMatch(/Sync destinations receive the secret/);
    expect((await kt.api('GET', '/v1/credentials/op-sync')).status).toBe(404);
    const audit = await kt.api('GET', '/v1/audit?credential=op-sync&limit=10');
    expect(audit.body.events).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ action: 'credential.created', outcome: 'denied', actor: 'ops' }),
      ]),
    );
    // The admin is not refused for it (this process has no Kubernetes access, so the sync itself is a 422).
    const admin = await kt.api('POST', '/v1/credentials', credential('admin-sync', { sync: SYNC }));
    expect(admin.status, admin.text).toBe(422);
    expect(admin.body.error.message).toMatch(/^sync: this Keyturn process has no Kubernetes configuration/);
  });

  it('an operator cannot add, change or remove sync by PATCH; the rest of a PATCH, and an unchanged sync, go through', async () => {
    const made = await kt.api('POST', '/v1/credentials', credential('plain'), asOperator);
    expect(made.status, made.text).toBe(201);
    const add = await kt.api('PATCH', '/v1/credentials/plain', { sync: SYNC }, asOperator);
    expect(add.status, add.text).toBe(403);
    const none = await kt.api(
      'PATCH',
      '/v1/credentials/plain',
      { sync: [], labels: { team: 'a' } },
      asOperator,
    );
    expect(none.status, none.text).toBe(200);
    expect(none.body.labels).toEqual({ team: 'a' });
  });
});
