// I4 and I1 where the downstream makes the secrets (AWS IAM access keys, on the IAM/STS emulator with keys refused for
// a while after they are made): a worker SIGKILLed after each step, and between CreateAccessKey's answer and the store
// write (set-after-mint: AWS holds a key nobody will ever know), leaves a rotation that a new worker completes; the
// secret read logs in at every instant, and the user ends with the previous key and the new one, never an orphan.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type IamWorld, iamSkipReason, startIamWorld } from '../support/aws-iam.ts';
import {
  dropPrefix,
  type Keyturn,
  spawnWorker,
  startKeyturn,
  testEnv,
  type WorkerProcess,
  waitForRotation,
} from '../support/harness.ts';

const POINTS = [
  'after-create',
  'set-after-mint',
  'set-after-downstream',
  'after-set',
  'after-test',
  'after-finish',
];

const skip = iamSkipReason();
if (skip) console.warn(`skipping SIGKILL tests on AWS IAM: ${skip}`);

describe.skipIf(Boolean(skip))('SIGKILL with an AWS IAM downstream', () => {
  const env = testEnv();
  let kt: Keyturn;
  let world: IamWorld;
  const workers: WorkerProcess[] = [];
  const users = new Map<string, string>(); // point → IAM user

  const secretOf = async (id: string) =>
    (await kt.api('GET', `/v1/credentials/${id}/secret`)).body as {
      username: string;
      accessKeyId: string;
      secretAccessKey: string;
      version: string;
    };

  beforeAll(async () => {
    world = await startIamWorld({ propagationMs: 1000 });
    kt = await startKeyturn(env, { components: ['api'] });
    const res = await kt.api('POST', '/v1/connections', { id: 'iam', ...world.connection });
    expect(res.status, res.text).toBe(201);
    // Each point's credential, registered (its first key made) by a worker that is gone before the kills start; the
    // user's own key is then retired, as an operator does once services read from Keyturn.
    const setup = spawnWorker(env);
    try {
      for (const point of POINTS) {
        const user = await world.createUser();
        users.set(point, user.username);
        const created = await kt.api('POST', '/v1/credentials', {
          id: `kill-${point}`,
          connection: 'iam',
          username: user.username,
          strategy: 'single-user',
          schedule: { every: '30d' },
          gracePeriod: '1h',
        });
        expect(created.status, created.text).toBe(201);
        expect((await waitForRotation(kt, created.body.rotation.id, 45_000)).status).toBe('succeeded');
        await world.deleteKey(user.username, user.keyId);
      }
    } finally {
      await setup.kill();
    }
  });
  afterAll(async () => {
    await Promise.all(workers.map((w) => w.kill('SIGKILL')));
    await kt?.close();
    await world?.stop();
    await dropPrefix(env.prefix);
  });

  it.each(POINTS)('killed at %s', async (point) => {
    const id = `kill-${point}`;
    const username = users.get(point)!;
    const before = await secretOf(id);
    const doomed = spawnWorker(env, { KEYTURN_FAILPOINTS: `${point}=kill` });
    workers.push(doomed);
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(rotate.status, rotate.text).toBe(202);
    expect(await doomed.exited).toBe('SIGKILL');
    const atDeath = await secretOf(id);
    expect(
      await world.canLogin({ keyId: atDeath.accessKeyId, secret: atDeath.secretAccessKey }, username),
    ).toBe(true);

    const rescuer = spawnWorker(env);
    workers.push(rescuer);
    const rotation = await waitForRotation(kt, rotate.body.rotationId, 45_000);
    expect(rotation.status, JSON.stringify(rotation.error)).toBe('succeeded');
    const after = await secretOf(id);
    expect(after.version).toBe(rotate.body.rotationId);
    expect(await world.canLogin({ keyId: after.accessKeyId, secret: after.secretAccessKey }, username)).toBe(
      true,
    );
    // The grace period (an hour) keeps the previous key working; nothing else is left: no key made and lost.
    expect(
      await world.canLogin({ keyId: before.accessKeyId, secret: before.secretAccessKey }, username),
    ).toBe(true);
    expect((await world.keysOf(username)).map((k) => k.keyId).sort()).toEqual(
      [before.accessKeyId, after.accessKeyId].sort(),
    );
    await rescuer.kill();
  });
});
