// I3: at most one rotation per credential, across processes. Twenty rotate requests arrive at once through two
// independent Keyturn runtimes (separate Redis connections, as two API processes would have).
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  waitForRotation,
} from '../support/harness.ts';

const env = testEnv();
let a: Keyturn;
let b: Keyturn;

beforeAll(async () => {
  a = await startKeyturn(env, { components: ['api', 'worker'] });
  b = await startKeyturn(env, { components: ['api', 'worker'] });
});
afterAll(async () => {
  await Promise.all([a?.close(), b?.close()]);
  await dropPrefix(env.prefix);
});

it('20 concurrent rotate requests start exactly one rotation', async () => {
  const connection = await registerPgConnection(a);
  const { id, role, password } = await importCredential(a, connection, { idPrefix: 'conc' });

  const responses = await Promise.all(
    Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).api('POST', `/v1/credentials/${id}/rotate`)),
  );
  expect(responses.map((r) => r.status)).toEqual(Array(20).fill(202));
  const ids = new Set(responses.map((r) => r.body.rotationId));
  expect(ids.size).toBe(1);
  expect(responses.filter((r) => r.body.created)).toHaveLength(1);

  const [rotationId] = [...ids] as [string];
  expect((await waitForRotation(a, rotationId)).status).toBe('succeeded');
  const history = await a.api('GET', `/v1/credentials/${id}/rotations`);
  expect(history.body.rotations.map((r: { id: string }) => r.id)).toEqual([rotationId]);
  const requested = await a.api('GET', `/v1/audit?credential=${id}&action=rotation.requested`);
  expect(requested.body.events).toHaveLength(1);
  const succeeded = await a.api('GET', `/v1/audit?credential=${id}&action=rotation.succeeded`);
  expect(succeeded.body.events).toHaveLength(1);

  const secret = await b.api('GET', `/v1/credentials/${id}/secret`);
  expect(secret.body.version).toBe(rotationId);
  expect(await canLogin(role.name, secret.body.password)).toBe(true);
  expect(await canLogin(role.name, password)).toBe(false);

  // Once it has ended, the next request starts a new rotation.
  const next = await b.api('POST', `/v1/credentials/${id}/rotate`);
  expect(next.body.created).toBe(true);
  expect(next.body.rotationId).not.toBe(rotationId);
  expect((await waitForRotation(a, next.body.rotationId)).status).toBe('succeeded');
});
