// Acceptance (issue 17 §5, SPEC "Dual control"): request, approve, deny, expire and break-glass, across principals of
// a tokens file, with the audit events. A gated request answers 202 with an approval; a second principal matching the
// approvers approves it (never the requester); the requester's repeat with X-Keyturn-Approval runs once, only for the
// same body; a deny or the expiry ends it; break-glass skips it with an audit event and a webhook notification. A
// service's read (a reader) is never gated. The approval never stores the request body (a PATCH with an admin password
// leaves nothing of it in Redis).
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Clock } from '../../src/clock.ts';
import {
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  tokensFile,
  waitFor,
} from '../support/harness.ts';
import { assertNoSecrets, redisValues } from '../support/leaks.ts';
import { startNotificationReceiver } from '../support/notification-receiver.ts';

const webhookSecret = randomBytes(32).toString('base64url');
const POLICY = { required: 1, approvers: ['role:admin', 'name:bob'] };

let tokens: Awaited<ReturnType<typeof tokensFile>>;
let receiver: Awaited<ReturnType<typeof startNotificationReceiver>>;
let env: ReturnType<typeof testEnv>;
let kt: Keyturn;
let pgConnection = '';
/** Added to the runtime's clock: moves approvals past their expiry without waiting. */
let offsetMs = 0;
const clock: Clock = { now: () => Date.now() + offsetMs };

type Who = 'ops' | 'bob' | 'alice' | 'audit' | 'svc' | 'mallory';

beforeAll(async () => {
  tokens = await tokensFile({
    ops: 'roles: [operator]',
    bob: 'roles: [operator]',
    alice: 'roles: [admin]',
    audit: 'roles: [auditor]',
    svc: 'roles: [reader], credentials: ["dc-*"]',
    mallory: 'roles: [operator]',
  });
  receiver = await startNotificationReceiver(webhookSecret, { '/alerts': {} });
  env = testEnv({
    KEYTURN_TOKENS_FILE: tokens.path,
    KEYTURN_NOTIFY_WEBHOOK_URLS: `${receiver.url}/alerts`,
    KEYTURN_NOTIFY_WEBHOOK_SECRET: webhookSecret,
    KEYTURN_NOTIFY_EVENTS: 'approval.break_glass',
    KEYTURN_NOTIFY_BACKOFF_MS: '50',
  });
  kt = await startKeyturn(env, { components: ['api', 'worker'], clock });
  pgConnection = await registerPgConnection(kt);
});

afterAll(async () => {
  await kt?.close();
  await receiver?.close();
  await tokens?.remove();
  if (env) await dropPrefix(env.prefix);
});

function as(who: Who, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  return kt.api(method, path, body, { authorization: `Bearer ${tokens.tokens[who]}`, ...headers });
}

async function auditOf(action: string, approval?: string): Promise<any[]> {
  const res = await kt.api('GET', `/v1/audit?action=${action}&limit=1000`);
  expect(res.status, res.text).toBe(200);
  return (res.body.events as any[]).filter((e) => !approval || e.details?.approval === approval);
}

/** A credential with dual control, on the test PostgreSQL, with a password the test knows. */
async function gatedCredential(policy: object = POLICY) {
  const cred = await importCredential(kt, pgConnection, { idPrefix: 'dc', extra: { approval: policy } });
  return cred;
}

/** A connection with dual control that nothing rotates (127.0.0.1:1, unverified). */
async function gatedConnection(policy: object = POLICY): Promise<string> {
  const id = `dc-conn-${randomBytes(3).toString('hex')}`;
  const res = await kt.api('POST', '/v1/connections', {
    id,
    type: 'postgres',
    host: '127.0.0.1',
    port: 1,
    database: 'nothing',
    admin: { username: 'keyturn_admin', password: randomBytes(18).toString('base64url') },
    verify: false,
    approval: policy,
  });
  expect(res.status, res.text).toBe(201);
  expect(res.body.approval).toEqual(policy);
  return id;
}

describe('request, approve, use once', () => {
  it('an operator deletes a gated credential: 202, bob approves, the repeat runs once', async () => {
    const cred = await gatedCredential();
    const view = await kt.api('GET', `/v1/credentials/${cred.id}`);
    expect(view.body.approval).toEqual(POLICY);

    const asked = await as('ops', 'DELETE', `/v1/credentials/${cred.id}`);
    expect(asked.status, asked.text).toBe(202);
    const { approvalId, expiresAt } = asked.body;
    expect(approvalId).toMatch(/^[0-9a-f-]{36}$/);
    expect(Date.parse(expiresAt) - Date.now()).toBeGreaterThan(59 * 60_000); // KEYTURN_APPROVAL_TTL's 1h
    expect(asked.headers.get('location')).toBe(`/v1/approvals/${approvalId}`);
    // Nothing ran.
    expect((await kt.api('GET', `/v1/credentials/${cred.id}`)).status).toBe(200);

    // Who sees it: the requester, who may approve (bob by name, admins by role), auditors; not another operator.
    for (const who of ['ops', 'bob', 'alice', 'audit'] as const) {
      const seen = await as(who, 'GET', `/v1/approvals/${approvalId}`);
      expect(seen.status, `${who}: ${seen.text}`).toBe(200);
      expect(seen.body).toMatchObject({
        status: 'pending',
        requester: 'ops',
        required: 1,
        approvals: 0,
        operation: { route: 'DELETE /v1/credentials/:id', target: { kind: 'credential', id: cred.id } },
      });
    }
    expect((await as('mallory', 'GET', `/v1/approvals/${approvalId}`)).status).toBe(404);
    const listed = await as('bob', 'GET', '/v1/approvals?status=pending');
    expect(listed.body.approvals.map((a: { id: string }) => a.id)).toContain(approvalId);
    expect(
      (await as('mallory', 'GET', '/v1/approvals')).body.approvals.map((a: { id: string }) => a.id),
    ).not.toContain(approvalId);

    // Still pending: the repeat is refused, naming why.
    const early = await as('ops', 'DELETE', `/v1/credentials/${cred.id}`, undefined, {
      'x-keyturn-approval': approvalId,
    });
    expect(early.status, early.text).toBe(409);
    expect(early.body.error.code).toBe('approval_pending');

    // Two-person rule: the requester cannot approve their own; mallory (no approver) cannot either.
    const own = await as('ops', 'POST', `/v1/approvals/${approvalId}/approve`, {
      reason: 'looks fine to me',
    });
    expect(own.status, own.text).toBe(403);
    expect(own.body.error.message).toMatch(/ops requested approval .* second person/);
    const outsider = await as('mallory', 'POST', `/v1/approvals/${approvalId}/approve`, { reason: 'sure' });
    expect(outsider.status).toBe(404);
    const auditor = await as('audit', 'POST', `/v1/approvals/${approvalId}/approve`, { reason: 'sure' });
    expect(auditor.status, auditor.text).toBe(403);
    expect(auditor.body.error.message).toMatch(/not an approver/);

    const approved = await as('bob', 'POST', `/v1/approvals/${approvalId}/approve`, {
      reason: 'decommissioned in CHG-1234',
    });
    expect(approved.status, approved.text).toBe(200);
    expect(approved.body).toMatchObject({ status: 'approved', approvals: 1 });
    expect(approved.body.decisions).toEqual([
      expect.objectContaining({ by: 'bob', decision: 'approve', reason: 'decommissioned in CHG-1234' }),
    ]);
    // Each principal once, and an approved one is decided.
    expect((await as('alice', 'POST', `/v1/approvals/${approvalId}/approve`, { reason: 'x' })).status).toBe(
      409,
    );

    // Only the requester may use it.
    const stolen = await as('alice', 'DELETE', `/v1/credentials/${cred.id}`, undefined, {
      'x-keyturn-approval': approvalId,
    });
    expect(stolen.status, stolen.text).toBe(403);
    expect(stolen.body.error.message).toMatch(/requested by ops, not alice/);

    const used = await as('ops', 'DELETE', `/v1/credentials/${cred.id}`, undefined, {
      'x-keyturn-approval': approvalId,
    });
    expect(used.status, used.text).toBe(204);
    expect((await kt.api('GET', `/v1/credentials/${cred.id}`)).status).toBe(404);
    const again = await as('ops', 'DELETE', `/v1/credentials/${cred.id}`, undefined, {
      'x-keyturn-approval': approvalId,
    });
    expect(again.status, again.text).toBe(409);
    expect(again.body.error.code).toBe('approval_used');
    expect((await as('ops', 'GET', `/v1/approvals/${approvalId}`)).body.status).toBe('used');

    // The audit trail names who asked, who decided and why.
    const [requested] = await auditOf('approval.requested', approvalId);
    expect(requested).toMatchObject({
      actor: 'ops',
      credential: cred.id,
      outcome: 'success',
      details: { requester: 'ops', operation: 'DELETE /v1/credentials/:id', required: 1 },
    });
    const decisions = await auditOf('approval.approved', approvalId);
    expect(decisions.find((e) => e.outcome === 'success')).toMatchObject({
      actor: 'bob',
      details: { requester: 'ops', decider: 'bob', reason: 'decommissioned in CHG-1234', status: 'approved' },
    });
    // The refused self-approval is evidence too.
    expect(decisions.find((e) => e.outcome === 'denied' && e.actor === 'ops')).toBeTruthy();
    const usedEvents = await auditOf('approval.used', approvalId);
    expect(usedEvents).toEqual([
      expect.objectContaining({
        actor: 'ops',
        outcome: 'success',
        details: expect.objectContaining({ approvedBy: 'bob' }),
      }),
    ]);
    const refused = await auditOf('approval.refused', approvalId);
    expect(refused.map((e) => e.actor).sort()).toEqual(['alice', 'ops', 'ops']);
  });

  it('a service reads a gated secret at once; a person needs approval, and a deny ends it', async () => {
    const cred = await gatedCredential();
    // A reader (a workload) is never gated.
    const service = await as('svc', 'GET', `/v1/credentials/${cred.id}/secret`);
    expect(service.status, service.text).toBe(200);
    expect(service.body.password).toBe(cred.password);

    // An admin's read is a person's: 202, and no password in it.
    const asked = await as('alice', 'GET', `/v1/credentials/${cred.id}/secret`);
    expect(asked.status, asked.text).toBe(202);
    expect(asked.text).not.toContain(cred.password);
    const { approvalId } = asked.body;
    // So is a lease, which hands over a working login.
    const lease = await as('alice', 'POST', `/v1/credentials/${cred.id}/leases`, { ttl: '5m' });
    expect(lease.status, lease.text).toBe(202);

    const denied = await as('bob', 'POST', `/v1/approvals/${approvalId}/deny`, {
      reason: 'no ticket for a manual read',
    });
    expect(denied.status, denied.text).toBe(200);
    expect(denied.body.status).toBe('denied');
    // Denied is final: nobody approves it afterwards, and the repeat is refused naming the decider and the reason.
    expect((await as('ops', 'POST', `/v1/approvals/${approvalId}/approve`, { reason: 'x' })).status).toBe(
      404,
    );
    const repeat = await as('alice', 'GET', `/v1/credentials/${cred.id}/secret`, undefined, {
      'x-keyturn-approval': approvalId,
    });
    expect(repeat.status, repeat.text).toBe(409);
    expect(repeat.body.error.code).toBe('approval_denied');
    expect(repeat.body.error.message).toContain('bob: no ticket for a manual read');
    expect(repeat.text).not.toContain(cred.password);

    const [event] = await auditOf('approval.denied', approvalId);
    expect(event).toMatchObject({
      actor: 'bob',
      outcome: 'success',
      credential: cred.id,
      details: {
        requester: 'alice',
        decider: 'bob',
        reason: 'no ticket for a manual read',
        status: 'denied',
      },
    });
    const listed = await as('alice', 'GET', '/v1/approvals?status=denied');
    expect(listed.body.approvals.map((a: { id: string }) => a.id)).toContain(approvalId);
  });

  it('break-glass skips approval, with its reason in the audit trail and a webhook notification', async () => {
    const cred = await gatedCredential();
    const res = await as('alice', 'GET', `/v1/credentials/${cred.id}/secret`, undefined, {
      'x-keyturn-break-glass': 'INC-77: payments down, DBA needs the login now',
    });
    expect(res.status, res.text).toBe(200);
    expect(res.body.password).toBe(cred.password);
    const events = (await auditOf('approval.break_glass')).filter((e) => e.credential === cred.id);
    expect(events).toEqual([
      expect.objectContaining({
        actor: 'alice',
        outcome: 'success',
        details: expect.objectContaining({
          reason: 'INC-77: payments down, DBA needs the login now',
          operation: 'GET /v1/credentials/:id/secret',
          requester: 'alice',
        }),
      }),
    ]);
    const delivery = await waitFor('the break-glass notification', async () =>
      receiver.deliveries.find(
        (d) => d.body?.type === 'approval.break_glass' && d.body?.credential === cred.id,
      ),
    );
    expect(delivery.verified).toBe(true);
    expect(delivery.body.details.reason).toBe('INC-77: payments down, DBA needs the login now');
    expect(delivery.raw).not.toContain(cred.password);
    // Break-glass is still only for those allowed the operation at all: an operator never reads a secret.
    const operator = await as('ops', 'GET', `/v1/credentials/${cred.id}/secret`, undefined, {
      'x-keyturn-break-glass': 'let me in',
    });
    expect(operator.status).toBe(403);
    // One or the other, never both.
    const both = await as('alice', 'GET', `/v1/credentials/${cred.id}/secret`, undefined, {
      'x-keyturn-break-glass': 'incident',
      'x-keyturn-approval': '7d444840-9dc0-11d1-b245-5ffdce74fad2',
    });
    expect(both.status, both.text).toBe(400);
  });

  it('an approval expires: it cannot be decided or used, and approval.expired is audited once', async () => {
    const id = await gatedConnection();
    const asked = await as('ops', 'DELETE', `/v1/connections/${id}`);
    expect(asked.status, asked.text).toBe(202);
    const { approvalId } = asked.body;
    offsetMs += 2 * 3_600_000; // past KEYTURN_APPROVAL_TTL (1h)
    try {
      const late = await as('bob', 'POST', `/v1/approvals/${approvalId}/approve`, { reason: 'sorry, late' });
      expect(late.status, late.text).toBe(409);
      expect(late.body.error.code).toBe('approval_expired');
      expect((await as('ops', 'GET', `/v1/approvals/${approvalId}`)).body.status).toBe('expired');
      const repeat = await as('ops', 'DELETE', `/v1/connections/${id}`, undefined, {
        'x-keyturn-approval': approvalId,
      });
      expect(repeat.status, repeat.text).toBe(409);
      expect(repeat.body.error.code).toBe('approval_expired');
      expect((await kt.api('GET', `/v1/connections/${id}`)).status).toBe(200);
      const expired = await auditOf('approval.expired', approvalId);
      expect(expired).toEqual([
        expect.objectContaining({
          actor: 'system',
          connection: id,
          details: expect.objectContaining({ requester: 'ops' }),
        }),
      ]);
    } finally {
      offsetMs = 0;
    }
  });
});

describe('what is gated, and what the approval binds', () => {
  it("a connection's admin PATCH is gated; the repeat must carry the same body; the body is never stored", async () => {
    const id = await gatedConnection();
    const password = `Adm1n-${randomBytes(24).toString('base64url')}`;
    const body = { admin: { password }, verify: false };
    // Labels are not gated: they run at once.
    const labels = await as('ops', 'PATCH', `/v1/connections/${id}`, { labels: { team: 'payments' } });
    expect(labels.status, labels.text).toBe(200);

    const asked = await as('ops', 'PATCH', `/v1/connections/${id}`, body);
    expect(asked.status, asked.text).toBe(202);
    const { approvalId } = asked.body;
    const shown = await as('alice', 'GET', `/v1/approvals/${approvalId}`);
    expect(shown.body.operation.fields).toEqual(['admin.password', 'verify']);
    expect(shown.text).not.toContain(password);
    // Nothing of the password anywhere in Redis (the approval keeps a keyed digest of the body, no value).
    assertNoSecrets([password], [['redis', await redisValues(env.prefix)]]);

    expect(
      (
        await as('alice', 'POST', `/v1/approvals/${approvalId}/approve`, {
          reason: 'rotation of the DBA password',
        })
      ).status,
    ).toBe(200);
    const other = await as(
      'ops',
      'PATCH',
      `/v1/connections/${id}`,
      { admin: { password: `${password}x` }, verify: false },
      { 'x-keyturn-approval': approvalId },
    );
    expect(other.status, other.text).toBe(409);
    expect(other.body.error.code).toBe('approval_mismatch');
    expect(other.body.error.message).toMatch(/another request body/);
    expect(other.text).not.toContain(password);
    // Another route or target is refused too.
    const elsewhere = await as('ops', 'DELETE', `/v1/connections/${id}`, undefined, {
      'x-keyturn-approval': approvalId,
    });
    expect(elsewhere.status).toBe(409);
    expect(elsewhere.body.error.code).toBe('approval_mismatch');
    // Same fields in another order: the same canonical body.
    const same = await as(
      'ops',
      'PATCH',
      `/v1/connections/${id}`,
      { verify: false, admin: { password } },
      { 'x-keyturn-approval': approvalId },
    );
    expect(same.status, same.text).toBe(200);
    // Neither in Redis (the local store seals it) nor in the logs.
    assertNoSecrets(
      [password],
      [
        ['redis', await redisValues(env.prefix)],
        ['logs', kt.logs],
      ],
    );
    const audit = await kt.api('GET', `/v1/audit?limit=1000&action=approval.refused`);
    expect(audit.text).not.toContain(password);
  });

  it('the list pages newest first, and filters by status', async () => {
    const all = (await as('alice', 'GET', '/v1/approvals?limit=1000')).body.approvals as Array<{
      id: string;
      createdAt: string;
    }>;
    expect(all.length).toBeGreaterThan(3);
    const times = all.map((a) => Date.parse(a.createdAt));
    expect([...times].sort((a, b) => b - a)).toEqual(times);
    const paged: string[] = [];
    let cursor: string | null = null;
    do {
      const page: any = await as('alice', 'GET', `/v1/approvals?limit=2${cursor ? `&cursor=${cursor}` : ''}`);
      expect(page.status, page.text).toBe(200);
      paged.push(...page.body.approvals.map((a: { id: string }) => a.id));
      cursor = page.body.next;
    } while (cursor);
    expect(paged).toEqual(all.map((a) => a.id));
    const used = (await as('audit', 'GET', '/v1/approvals?status=used')).body.approvals;
    expect(used.length).toBeGreaterThan(0);
    expect(used.every((a: { status: string }) => a.status === 'used')).toBe(true);
  });

  it('concurrent repeats of one approval: exactly one runs', async () => {
    const id = await gatedConnection();
    const body = { admin: { username: 'keyturn_admin2' }, verify: false };
    const asked = await as('ops', 'PATCH', `/v1/connections/${id}`, body);
    expect(asked.status, asked.text).toBe(202);
    await as('alice', 'POST', `/v1/approvals/${asked.body.approvalId}/approve`, { reason: 'new admin user' });
    const repeats = await Promise.all(
      Array.from({ length: 6 }, () =>
        as('ops', 'PATCH', `/v1/connections/${id}`, body, { 'x-keyturn-approval': asked.body.approvalId }),
      ),
    );
    const statuses = repeats.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 409, 409, 409, 409, 409]);
    for (const r of repeats.filter((x) => x.status === 409)) expect(r.body.error.code).toBe('approval_used');
    expect((await kt.api('GET', `/v1/connections/${id}`)).body.admin.username).toBe('keyturn_admin2');
    expect(await auditOf('approval.used', asked.body.approvalId)).toHaveLength(1);
  });

  it('removing or weakening dual control is gated by it; strengthening is not', async () => {
    const cred = await gatedCredential();
    // Stronger (fewer approvers): at once.
    const stronger = await as('ops', 'PATCH', `/v1/credentials/${cred.id}`, {
      approval: { required: 1, approvers: ['role:admin'] },
    });
    expect(stronger.status, stronger.text).toBe(200);
    expect(stronger.body.approval).toEqual({ required: 1, approvers: ['role:admin'] });
    // Where the secret is pushed: gated (a Kubernetes Secret its author can read would be a read).
    const sync = await as('ops', 'PATCH', `/v1/credentials/${cred.id}`, { sync: null });
    expect(sync.status, sync.text).toBe(202);
    // Weaker (bob may approve again): gated.
    const weaker = await as('ops', 'PATCH', `/v1/credentials/${cred.id}`, { approval: POLICY });
    expect(weaker.status, weaker.text).toBe(202);
    // Removed: gated.
    const removed = await as('ops', 'PATCH', `/v1/credentials/${cred.id}`, { approval: null });
    expect(removed.status, removed.text).toBe(202);
    expect((await kt.api('GET', `/v1/credentials/${cred.id}`)).body.approval).toEqual({
      required: 1,
      approvers: ['role:admin'],
    });
    await as('alice', 'POST', `/v1/approvals/${removed.body.approvalId}/approve`, { reason: 'retired' });
    const done = await as(
      'ops',
      'PATCH',
      `/v1/credentials/${cred.id}`,
      { approval: null },
      {
        'x-keyturn-approval': removed.body.approvalId,
      },
    );
    expect(done.status, done.text).toBe(200);
    expect(done.body.approval).toBeNull();
    // The weakening asked for under the old policy cannot be used now that the policy changed.
    await as('alice', 'POST', `/v1/approvals/${weaker.body.approvalId}/approve`, { reason: 'ok' });
    const stale = await as(
      'ops',
      'PATCH',
      `/v1/credentials/${cred.id}`,
      { approval: POLICY },
      {
        'x-keyturn-approval': weaker.body.approvalId,
      },
    );
    // An approval is bound to the policy it was asked under: this one was asked before the policy went.
    expect(stale.status, stale.text).toBe(409);
    expect(stale.body.error.code).toBe('approval_policy_changed');
  });

  it('an operation refused after its approval was claimed gives the approval back', async () => {
    const id = await gatedConnection();
    // A credential on the connection makes its delete a 409.
    const cred = await kt.api('POST', '/v1/credentials', {
      id: `dc-on-${id}`,
      connection: id,
      username: `user_${randomBytes(3).toString('hex')}`,
      strategy: 'single-user',
      schedule: { every: '30d' },
      import: false,
    });
    expect(cred.status, cred.text).toBe(201);
    const asked = await as('ops', 'DELETE', `/v1/connections/${id}`);
    expect(asked.status).toBe(202);
    await as('bob', 'POST', `/v1/approvals/${asked.body.approvalId}/approve`, { reason: 'cleanup' });
    const refused = await as('ops', 'DELETE', `/v1/connections/${id}`, undefined, {
      'x-keyturn-approval': asked.body.approvalId,
    });
    expect(refused.status, refused.text).toBe(409);
    const after = await as('ops', 'GET', `/v1/approvals/${asked.body.approvalId}`);
    expect(after.body.status).toBe('approved');
    const [used] = await auditOf('approval.used', asked.body.approvalId);
    expect(used).toMatchObject({ outcome: 'failure', details: { released: true } });
  });

  it('a policy that can never be met is refused; bad approval input is a 400 naming the field', async () => {
    const impossible = await kt.api('POST', '/v1/connections', {
      id: 'dc-impossible',
      type: 'postgres',
      host: '127.0.0.1',
      port: 1,
      admin: { username: 'a', password: 'not-a-real-password' },
      verify: false,
      approval: { required: 2, approvers: ['name:bob'] },
    });
    expect(impossible.status, impossible.text).toBe(422);
    expect(impossible.body.error.message).toContain('approval.required');
    const bad = await as('alice', 'POST', '/v1/approvals/7d444840-9dc0-11d1-b245-5ffdce74fad2/approve', {});
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain('body.reason is required');
    const unknown = await as('alice', 'POST', '/v1/approvals/7d444840-9dc0-11d1-b245-5ffdce74fad2/approve', {
      reason: 'x',
    });
    expect(unknown.status).toBe(404);
  });
});
