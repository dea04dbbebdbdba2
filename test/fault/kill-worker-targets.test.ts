// I4 and I1 for every downstream target beyond PostgreSQL (which kill-worker.test.ts covers): a worker SIGKILLed
// after each step leaves a rotation that a new worker completes, and the secret read logs in at every instant.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  dropPrefix,
  type Keyturn,
  spawnWorker,
  startKeyturn,
  testEnv,
  type WorkerProcess,
  waitForRotation,
} from '../support/harness.ts';
import { importTargetUser, TARGET_FIXTURES, type TargetFixture } from '../support/targets.ts';

const POINTS = ['after-create', 'after-set', 'after-test', 'after-finish'];

const plan = await Promise.all(
  TARGET_FIXTURES.map(async (f) => ({ fixture: f, skip: await f.skipReason() })),
);
for (const { fixture, skip } of plan)
  if (skip) console.warn(`skipping SIGKILL tests on ${fixture.name}: ${skip}`);

for (const { fixture, skip } of plan) {
  describe.skipIf(Boolean(skip))(`SIGKILL with a ${fixture.name} downstream`, () => {
    const env = testEnv();
    let kt: Keyturn;
    let target: Awaited<ReturnType<TargetFixture['start']>>;
    const workers: WorkerProcess[] = [];

    beforeAll(async () => {
      target = await fixture.start();
      kt = await startKeyturn(env, { components: ['api'] });
      const res = await kt.api('POST', '/v1/connections', { id: 'downstream', ...target.connection });
      expect(res.status).toBe(201);
    });
    afterAll(async () => {
      await Promise.all(workers.map((w) => w.kill('SIGKILL')));
      await kt?.close();
      await target?.stop();
      await dropPrefix(env.prefix);
    });

    describe.each(['single-user', 'alternating-users'] as const)('%s', (strategy) => {
      it.each(POINTS)('killed at %s', async (point) => {
        const user = await target.createUser();
        const id = await importTargetUser(kt, 'downstream', user, strategy, 'kill');
        const doomed = spawnWorker(env, { KEYTURN_FAILPOINTS: `${point}=kill` });
        workers.push(doomed);
        const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
        expect(await doomed.exited).toBe('SIGKILL');
        const atDeath = (await kt.api('GET', `/v1/credentials/${id}/secret`)).body;
        expect(await target.canLogin(atDeath.username, atDeath.password)).toBe(true);

        const rescuer = spawnWorker(env);
        workers.push(rescuer);
        const rotation = await waitForRotation(kt, rotate.body.rotationId, 45_000);
        expect(rotation.status).toBe('succeeded');
        const after = (await kt.api('GET', `/v1/credentials/${id}/secret`)).body;
        expect(after.version).toBe(rotate.body.rotationId);
        expect(await target.canLogin(after.username, after.password)).toBe(true);
        if (strategy === 'single-user' && !target.dualPassword) {
          expect(await target.canLogin(user.username, user.password)).toBe(false);
        } else {
          // alternating-users, or the overlap of a dual-password target: the old login still works.
          expect(await target.canLogin(user.username, user.password)).toBe(true);
        }
        await rescuer.kill();
      });
    });
  });
}
