// I4 and I1 under SIGKILL: a worker process dies at each point of the protocol (after each step, and between
// the two writes inside a step); a new worker completes the rotation, and at every moment the secret read
// returns a password that logs in.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  spawnWorker,
  startKeyturn,
  testEnv,
  type WorkerProcess,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;
let connection: string;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api'] });
  connection = await registerPgConnection(kt);
});
afterAll(async () => {
  await Promise.all(workers.map((w) => w.kill('SIGKILL')));
  await kt?.close();
  await dropPrefix(env.prefix);
});

const importedCredential = (strategy: 'single-user' | 'alternating-users') =>
  importCredential(kt, connection, { strategy, idPrefix: 'kill' });

async function secretWorks(id: string): Promise<{ username: string; password: string }> {
  const res = await kt.api('GET', `/v1/credentials/${id}/secret`);
  expect(res.status).toBe(200);
  expect(await canLogin(res.body.username, res.body.password)).toBe(true);
  return res.body;
}

const POINTS = [
  'after-create',
  'after-set',
  'after-test',
  'after-finish',
  // Between two writes of one step: the pending version stored but not recorded; the password changed
  // downstream but not recorded; the store promoted but the credential state not yet written.
  'create-after-store-write',
  'set-after-downstream',
  'finish-after-promote',
];

describe.each(['single-user', 'alternating-users'] as const)('%s: SIGKILL during a rotation', (strategy) => {
  const points = strategy === 'single-user' ? POINTS : POINTS.slice(0, 4);
  it.each(points)('killed at %s, a new worker completes the rotation and I1 holds', async (point) => {
    const { id, role, password: oldPassword } = await importedCredential(strategy);
    const doomed = spawnWorker(env, { KEYTURN_FAILPOINTS: `${point}=kill` });
    workers.push(doomed);
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(rotate.status).toBe(202);
    expect(await doomed.exited).toBe('SIGKILL');

    // I1 at the instant of death: the secret read gives a password that logs in.
    const atDeath = await secretWorks(id);
    const before = await kt.api('GET', `/v1/rotations/${rotate.body.rotationId}`);
    expect(before.body.status).not.toBe('failed');

    const rescuer = spawnWorker(env);
    workers.push(rescuer);
    const rotation = await waitForRotation(kt, rotate.body.rotationId, 45_000);
    expect(rotation.status).toBe('succeeded');
    expect(rotation.error).toBeUndefined();
    // The kill was an attempt of its own, unless it came after the rotation had already finished.
    expect(rotation.attempts).toBe(point === 'after-finish' ? 1 : 2);

    const after = await secretWorks(id);
    expect(after.password).not.toBe(oldPassword);
    // Never generated twice: if the secret read handed out the pending password at death, it is the final one.
    if (atDeath.password !== oldPassword) expect(after.password).toBe(atDeath.password);
    if (strategy === 'single-user') expect(await canLogin(role.name, oldPassword)).toBe(false);
    else {
      expect(after.username).toBe(`${role.name}_clone`);
      expect(await canLogin(role.name, oldPassword)).toBe(true);
    }
    const cred = await kt.api('GET', `/v1/credentials/${id}`);
    expect(cred.body).toMatchObject({ status: 'active', version: rotate.body.rotationId, rotation: null });
    await rescuer.kill();
  });
});

describe('failures', () => {
  it('a rotation whose downstream is unreachable fails cleanly after its retries, the old secret still current', async () => {
    const { id, role, password } = await importedCredential('single-user');
    // A second connection to a port where nothing listens.
    const dead = await registerPgConnection(kt, `dead-${randomBytes(3).toString('hex')}`, 1, undefined, {
      verify: false,
    });
    const res = await kt.api('POST', '/v1/credentials', {
      id: `${id}-dead`,
      connection: dead,
      username: role.name,
      strategy: 'single-user',
      schedule: { every: '30d' },
    });
    expect(res.status).toBe(201);
    const worker = spawnWorker(env);
    workers.push(worker);
    const rotation = await waitForRotation(kt, res.body.rotation.id);
    expect(rotation.status).toBe('failed');
    expect(rotation.attempts).toBe(3);
    expect(rotation.error.step).toBe('set');
    expect(rotation.error.message).toMatch(/ECONNREFUSED|connect/);
    expect(rotation.rollback.outcome).toBe('done');
    const cred = await kt.api('GET', `/v1/credentials/${id}-dead`);
    expect(cred.body).toMatchObject({
      status: 'failed',
      lastOutcome: 'failed',
      consecutiveFailures: 1,
      rotation: null,
    });
    const events = await kt.api('GET', `/v1/audit?credential=${id}-dead&action=rotation.failed`);
    expect(events.body.events).toHaveLength(1);

    // The same downstream user, reached through the healthy connection, still logs in with its old password,
    // and the credential on it is untouched.
    expect(await canLogin(role.name, password)).toBe(true);
    const healthy = await secretWorks(id);
    expect(healthy.password).toBe(password);
    await worker.kill();
  });

  it('a failure after the password changed downstream rolls it back: the old password works again', async () => {
    const { id, role, password } = await importedCredential('single-user');
    // Every test step fails: set lands, test never passes, the retry budget runs out.
    const worker = spawnWorker(env, { KEYTURN_FAILPOINTS: 'before-test=throw' });
    workers.push(worker);
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('failed');
    expect(rotation.setStarted).toBe(true);
    expect(rotation.rollback).toMatchObject({ outcome: 'done' });
    expect(rotation.rollback.note).toMatch(/current password was put back/);
    expect(await canLogin(role.name, password)).toBe(true);
    const secret = await secretWorks(id);
    expect(secret.password).toBe(password);
    await worker.kill();
    // The pending version is gone: a new rotation starts clean and succeeds.
    const healthy = spawnWorker(env);
    workers.push(healthy);
    const again = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect((await waitForRotation(kt, again.body.rotationId)).status).toBe('succeeded');
    expect(await canLogin(role.name, password)).toBe(false);
    await healthy.kill();
  });

  it('a rollback that cannot restore the downstream yet stays in flight and finishes later', async () => {
    const { id, role, password } = await importedCredential('single-user');
    // Test always fails (so the budget runs out after set landed) and the first rollback attempt fails too.
    const worker = spawnWorker(env, {
      KEYTURN_FAILPOINTS: 'before-test=throw,rollback-before-restore=throw:1',
      KEYTURN_ROTATION_BACKOFF_MS: '1500',
    });
    workers.push(worker);
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    const waiting = await waitFor(
      'the rollback to wait',
      async () => {
        const r = await kt.api('GET', `/v1/rotations/${rotate.body.rotationId}`);
        return r.body.status === 'rolling_back' && r.body.rollback?.outcome === 'pending'
          ? r.body
          : undefined;
      },
      30_000,
      50,
    );
    expect(waiting.rollback.note).toMatch(/failpoint rollback-before-restore/);
    const cred = await kt.api('GET', `/v1/credentials/${id}`);
    expect(cred.body.status).toBe('failed');
    expect(cred.body.rotation.status).toBe('rolling_back');
    // I3: while the rollback waits, a rotate request returns it instead of starting another.
    const during = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(during.body).toMatchObject({ rotationId: rotate.body.rotationId, created: false });
    // I1 while the downstream holds the pending password: the read asks the downstream which one works.
    const secret = await secretWorks(id);
    expect(secret.password).not.toBe(password);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('failed');
    expect(rotation.rollback.outcome).toBe('done');
    expect(await canLogin(role.name, password)).toBe(true);
    expect(await canLogin(role.name, secret.password)).toBe(false);
    expect((await secretWorks(id)).password).toBe(password);
    await worker.kill();
  });
});

describe('graceful shutdown', () => {
  it('SIGTERM during a step lets the step finish: the rotation completes and the worker exits cleanly', async () => {
    const { id, role, password } = await importedCredential('single-user');
    const worker = spawnWorker(env, { KEYTURN_FAILPOINTS: 'before-test=sleep:2500' });
    workers.push(worker);
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    await waitFor(
      'the rotation to reach its (slow) test step',
      async () => (await kt.api('GET', `/v1/rotations/${rotate.body.rotationId}`)).body.step === 'test',
      30_000,
      50,
    );
    worker.child.kill('SIGTERM');
    expect(await worker.exited).toBe(0);
    const rotation = (await kt.api('GET', `/v1/rotations/${rotate.body.rotationId}`)).body;
    expect(rotation.status).toBe('succeeded');
    expect(rotation.attempts).toBe(1);
    expect(worker.output.some((l) => l.includes('shutting down'))).toBe(true);
    const secret = await secretWorks(id);
    expect(secret.password).not.toBe(password);
    expect(await canLogin(role.name, password)).toBe(false);
  });
});

describe('grace period across crashes', () => {
  it.each([
    ['finish-after-promote', 'the resumed finish plans it'],
    ['finish-after-commit', 'the reconciler plans it'],
  ])('killed at %s, the previous user is still revoked after its grace period (%s)', async (point) => {
    const { id, role, password } = await importCredential(kt, connection, {
      strategy: 'alternating-users',
      idPrefix: 'grace',
      extra: { gracePeriod: '2s' },
    });
    const doomed = spawnWorker(env, { KEYTURN_FAILPOINTS: `${point}=kill` });
    workers.push(doomed);
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(await doomed.exited).toBe('SIGKILL');
    const rescuer = spawnWorker(env, { KEYTURN_RECONCILE_INTERVAL_MS: '1000' });
    workers.push(rescuer);
    expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
    const current = await secretWorks(id);
    expect(current.username).toBe(`${role.name}_clone`);
    // The imported user is the previous one: it works until the grace period ends, then not.
    await waitFor(
      'the previous user to be revoked',
      async () => !(await canLogin(role.name, password)),
      30_000,
      250,
    );
    const cred = await kt.api('GET', `/v1/credentials/${id}`);
    expect(cred.body.status).toBe('active');
    await rescuer.kill();
  });
});
