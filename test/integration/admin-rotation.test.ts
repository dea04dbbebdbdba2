// Admin rotation (issue 16 §3): POST /v1/connections/:id/rotate rotates the connection's admin password with the
// engine's four steps, against every target that has an admin password Keyturn may change (all but the webhook, whose
// admin is a shared signing key, and AWS IAM, whose admin is an access key whose id is the connection's admin name). After it the old admin password no longer logs in, Keyturn works with the new one
// (a credential rotation and a dry run succeed), and the admin password is never readable through the API.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  adminPasswordOf,
  dropPrefix,
  type Keyturn,
  startKeyturn,
  testEnv,
  unverifiedWebhookBody,
  waitForRotation,
} from '../support/harness.ts';
import { CONTRACT_FIXTURES, importTargetUser, type StartedTarget } from '../support/targets.ts';

const plan = await Promise.all(
  CONTRACT_FIXTURES.filter((f) => f.name !== 'webhook' && f.name !== 'AWS IAM').map(async (fixture) => ({
    fixture,
    skip: await fixture.skipReason(),
  })),
);
for (const { fixture, skip } of plan)
  if (skip) console.warn(`admin rotation: skipping ${fixture.name}: ${skip}`);

for (const { fixture, skip } of plan) {
  describe.skipIf(Boolean(skip))(`admin rotation: ${fixture.name}`, () => {
    const env = testEnv({ LOG_LEVEL: 'warn' });
    let kt: Keyturn;
    let target: StartedTarget;
    const id = 'adm';

    beforeAll(async () => {
      target = await fixture.start();
      kt = await startKeyturn(env, { components: ['api', 'worker'] });
      const res = await kt.api('POST', '/v1/connections', { id, ...target.connection });
      expect(res.status, res.text).toBe(201);
    });
    afterAll(async () => {
      await kt?.close();
      await target?.stop();
      await dropPrefix(env.prefix);
    });

    it('rotates the admin: the old password stops working, Keyturn goes on with the new one', async () => {
      const before = (target.connection.admin as { password: string }).password;
      const user = await target.createUser();
      const credential = await importTargetUser(kt, id, user, 'single-user', 'adm');

      const asked = await kt.api('POST', `/v1/connections/${id}/rotate`);
      expect(asked.status, asked.text).toBe(202);
      expect(asked.headers.get('location')).toBe(`/v1/rotations/${asked.body.rotationId}`);
      const done = await waitForRotation(kt, asked.body.rotationId);
      expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
      expect(done.credentialId).toBe(`admin:${id}`);
      expect(done.steps.map((s: { step: string }) => s.step)).toEqual(['create', 'set', 'test', 'finish']);

      const after = await adminPasswordOf(env, id);
      expect(after).not.toBe(before);
      expect(await target.adminCanLogin(after)).toBe(true);
      expect(await target.adminCanLogin(before)).toBe(false);

      // Everything on the connection goes on with the new admin password.
      const rotated = await kt.api('POST', `/v1/credentials/${credential}/rotate`);
      expect((await waitForRotation(kt, rotated.body.rotationId)).status).toBe('succeeded');
      const dry = await kt.api('POST', `/v1/credentials/${credential}/rotate?dryRun=true`);
      expect(dry.body.ok, JSON.stringify(dry.body.checks)).toBe(true);

      // Audited as a rotation of the connection's admin subject; the password is nowhere in the API.
      const audit = await kt.api('GET', `/v1/audit?action=rotation.succeeded&limit=100`);
      expect(audit.body.events.some((e: { credential: string }) => e.credential === `admin:${id}`)).toBe(
        true,
      );
      for (const path of [
        `/v1/connections/${id}`,
        `/v1/rotations/${asked.body.rotationId}`,
        '/v1/audit?limit=1000',
      ]) {
        expect((await kt.api('GET', path)).text).not.toContain(after);
      }
      expect((await kt.api('GET', `/v1/credentials/admin:${id}/secret`)).status).toBe(400);
      const list = await kt.api('GET', '/v1/credentials?limit=1000');
      expect(list.body.credentials.map((c: { id: string }) => c.id)).not.toContain(`admin:${id}`);
    });

    it('twice in a row, and once more while the first is in flight (the same rotation is returned)', async () => {
      const first = await kt.api('POST', `/v1/connections/${id}/rotate`);
      const second = await kt.api('POST', `/v1/connections/${id}/rotate`);
      expect(second.body.rotationId).toBe(first.body.rotationId);
      expect(second.body.created).toBe(false);
      expect((await waitForRotation(kt, first.body.rotationId)).status).toBe('succeeded');
      const third = await kt.api('POST', `/v1/connections/${id}/rotate`);
      expect((await waitForRotation(kt, third.body.rotationId)).status).toBe('succeeded');
      expect(await target.adminCanLogin(await adminPasswordOf(env, id))).toBe(true);
    });
  });
}

describe('admin rotation: refusals', () => {
  const env = testEnv({ LOG_LEVEL: 'warn' });
  let kt: Keyturn;

  beforeAll(async () => {
    kt = await startKeyturn(env, { components: ['api'] });
  });
  afterAll(async () => {
    await kt?.close();
    await dropPrefix(env.prefix);
  });

  it('refuses a webhook connection (its admin is a key the service holds too), an aws-iam one, an unknown one, and a body', async () => {
    const hook = await kt.api('POST', '/v1/connections', unverifiedWebhookBody('hook'));
    expect(hook.status, hook.text).toBe(201);
    const refused = await kt.api('POST', '/v1/connections/hook/rotate');
    expect(refused.status).toBe(422);
    expect(refused.body.error.message).toContain('signing key');
    const scheduled = await kt.api('PATCH', '/v1/connections/hook', {
      adminRotation: { schedule: { every: '30d' } },
    });
    expect(scheduled.status).toBe(422);
    const iam = await kt.api('POST', '/v1/connections', {
      id: 'iam',
      type: 'aws-iam',
      endpoint: 'http://127.0.0.1:9',
      admin: { username: 'AKIAEXAMPLEEXAMPLE12', password: 'k'.repeat(40) },
      verify: false,
    });
    expect(iam.status, iam.text).toBe(201);
    const iamRefused = await kt.api('POST', '/v1/connections/iam/rotate');
    expect(iamRefused.status).toBe(422);
    expect(iamRefused.body.error.message).toContain('Rotate it by hand');
    expect((await kt.api('POST', '/v1/connections/nope/rotate')).status).toBe(404);
    expect((await kt.api('POST', '/v1/connections/hook/rotate', { now: true })).status).toBe(400);
  });
});
