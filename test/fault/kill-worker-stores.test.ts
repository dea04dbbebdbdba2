// I4 and I1 with the secret's home in Vault or AWS Secrets Manager: a worker SIGKILLed after each step (and
// between promotion in the store and the end of finish) leaves a rotation that a new worker completes, with a
// working secret readable at every instant and exactly one new version in the store.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { awsEmulatorBackend, type Backend, vaultEmulatorBackend } from '../stores/backends.ts';
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
  waitForRotation,
} from '../support/harness.ts';

const POINTS = ['after-create', 'after-set', 'after-test', 'after-finish', 'finish-after-promote'];

describe.each([vaultEmulatorBackend, awsEmulatorBackend])(
  'SIGKILL with the secret in the $name',
  (factory) => {
    let backend: Backend;
    let env: ReturnType<typeof testEnv>;
    let kt: Keyturn;
    let connection: string;
    const workers: WorkerProcess[] = [];

    beforeAll(async () => {
      backend = await factory.start();
      env = testEnv(backend.env);
      kt = await startKeyturn(env, { components: ['api'] });
      connection = await registerPgConnection(kt);
    });
    afterAll(async () => {
      await Promise.all(workers.map((w) => w.kill('SIGKILL')));
      await kt?.close();
      await backend?.close();
      if (env) await dropPrefix(env.prefix);
    });

    describe.each(['single-user', 'alternating-users'] as const)('%s', (strategy) => {
      it.each(strategy === 'single-user' ? POINTS : POINTS.slice(0, 4))('killed at %s', async (point) => {
        const store = backend.spec();
        const ref = { spec: store, name: 'unused' };
        const { id, role, password } = await importCredential(kt, connection, {
          strategy,
          idPrefix: 'kills',
          extra: { store },
        });
        const versionsBefore = await backend.versionsWritten?.(ref);
        const doomed = spawnWorker(env, { KEYTURN_FAILPOINTS: `${point}=kill` });
        workers.push(doomed);
        const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
        expect(await doomed.exited).toBe('SIGKILL');

        const atDeath = (await kt.api('GET', `/v1/credentials/${id}/secret`)).body;
        expect(await canLogin(atDeath.username, atDeath.password)).toBe(true);

        const rescuer = spawnWorker(env);
        workers.push(rescuer);
        const rotation = await waitForRotation(kt, rotate.body.rotationId, 45_000);
        expect(rotation.status).toBe('succeeded');
        const after = (await kt.api('GET', `/v1/credentials/${id}/secret`)).body;
        expect(after.version).toBe(rotate.body.rotationId);
        expect(await canLogin(after.username, after.password)).toBe(true);
        if (strategy === 'single-user') expect(await canLogin(role.name, password)).toBe(false);
        // Exactly one new version in the store, whatever the crash.
        if (versionsBefore !== undefined)
          expect(await backend.versionsWritten?.(ref)).toBe(versionsBefore + 1);
        const labels = await kt.runtime.ctx.stores.get(store).describe(ref);
        expect(labels?.[rotate.body.rotationId]).toEqual(['current']);
        expect(
          Object.values(labels ?? {})
            .flat()
            .filter((s) => s === 'pending'),
        ).toEqual([]);
        await rescuer.kill();
      });
    });
  },
);
