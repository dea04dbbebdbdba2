// Findings 9 and 13 (messages) of issue 11:
//   9. the secret read's cache hint ran to the next scheduled rotation (2,591,997 s with a one-minute grace period);
//  13. a rollback after a failed admin login said "the current password was put back downstream" though nothing
//      had changed, and after a failed first rotation the secret read said "its first rotation has not finished".
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canLogin,
  createPgAdminRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  waitForRotation,
} from '../support/harness.ts';

let env: TestEnv;
let kt: Keyturn;
let connection: string;

beforeAll(async () => {
  env = testEnv({ KEYTURN_ROTATION_ATTEMPTS: '1' });
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
});
afterAll(async () => {
  await kt?.close();
  if (env) await dropPrefix(env.prefix);
});

const maxAgeOf = (headers: Headers) => Number(/max-age=(\d+)/.exec(headers.get('cache-control') ?? '')?.[1]);

describe('finding 9: the cache hint', () => {
  it('is at most half the grace period after a manual rotation, so a cached password outlives no rotation', async () => {
    const cred = await importCredential(kt, connection, {
      strategy: 'alternating-users',
      schedule: { every: '30d' },
      extra: { gracePeriod: '1m' },
    });
    const rotate = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
    const read = await kt.api('GET', `/v1/credentials/${cred.id}/secret`);
    expect(read.status).toBe(200);
    expect(maxAgeOf(read.headers)).toBeGreaterThan(25);
    expect(maxAgeOf(read.headers)).toBeLessThanOrEqual(30);
    // Another early rotation: the copy cached a moment ago still logs in (it has up to 30 s left of a 60 s grace).
    const again = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    expect((await waitForRotation(kt, again.body.rotationId)).status).toBe('succeeded');
    expect(await canLogin(read.body.username, read.body.password)).toBe(true);
  });

  it('is at most KEYTURN_SECRET_MAX_AGE (5 minutes by default) without a grace period', async () => {
    const cred = await importCredential(kt, connection, { schedule: { every: '30d' } });
    const read = await kt.api('GET', `/v1/credentials/${cred.id}/secret`);
    expect(maxAgeOf(read.headers)).toBeGreaterThan(290);
    expect(maxAgeOf(read.headers)).toBeLessThanOrEqual(300);
  });
});

describe('finding 13: messages that say what happened', () => {
  it('a rollback after a failed admin login says that nothing was changed downstream', async () => {
    const admin = await createPgAdminRole();
    const conn = await registerPgConnection(kt, `adm-${admin.name}`.replaceAll('_', '-'), undefined, admin);
    const cred = await importCredential(kt, conn);
    // The admin's password changes behind Keyturn's back: the set step cannot log in.
    await admin.breakLogin();
    const rotate = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('failed');
    // The admin login failed before anything was sent: the rollback knows it without logging in downstream.
    expect(rotation.rollback.note).toContain(
      'nothing had been changed downstream; the pending version was dropped',
    );
    expect(rotation.rollback.note).not.toContain('put back');
    expect(await canLogin(cred.role.name, cred.password)).toBe(true);
  });

  it('after a failed first rotation, the secret read names the rotation and what to do', async () => {
    // A role that does not exist: the first rotation's ALTER ROLE fails.
    const missing = `kt_missing_${randomBytes(4).toString('hex')}`;
    const res = await kt.api('POST', '/v1/credentials', {
      id: `first-${missing}`,
      connection,
      username: missing,
      strategy: 'single-user',
      schedule: { every: '30d' },
    });
    expect(res.status, res.text).toBe(201);
    const rotation = await waitForRotation(kt, res.body.rotation.id);
    expect(rotation.status).toBe('failed');
    const read = await kt.api('GET', `/v1/credentials/first-${missing}/secret`);
    expect(read.status).toBe(409);
    expect(read.body.error.message).toContain(`its first rotation ${rotation.id} failed`);
    expect(read.body.error.message).toContain(`GET /v1/rotations/${rotation.id}`);
    expect(read.body.error.message).toContain(`POST /v1/credentials/first-${missing}/rotate`);
    expect(read.body.error.message).not.toContain('has not finished');
  });
});
