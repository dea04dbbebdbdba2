// Findings 6, 7 and 8 of issue 11, each race run 20 times against the real Redis, BullMQ workers and the
// password-checking PostgreSQL:
//   6. a schedule PATCH during a rotation wrote back the state it had read earlier: the credential ended `rotating`
//      with no rotation in flight, or with an old version;
//   7. DELETE racing a rotate request: the rotation set a password no store holds, and a leftover state hash made
//      the id unusable (POST 409, GET and DELETE 404);
//   8. a scheduled rotation waiting out its jitter was handed to "rotate now" and blocked DELETE.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  REDIS_URL,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';

const RUNS = 20;
let env: TestEnv;
let kt: Keyturn;
let connection: string;
let redis: Redis;

beforeAll(async () => {
  env = testEnv();
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
  redis = new Redis(REDIS_URL);
});
afterAll(async () => {
  await kt?.close();
  redis?.disconnect();
  if (env) await dropPrefix(env.prefix);
});

const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

/** Every Redis key of one credential (its hash and what hangs off it). */
async function keysOf(id: string): Promise<string[]> {
  const [hash, rest] = await Promise.all([
    redis.exists(`${env.prefix}:cred:${id}`),
    redis.keys(`${env.prefix}:cred:${id}:*`),
  ]);
  return [...(hash ? [`${env.prefix}:cred:${id}`] : []), ...rest];
}

describe('finding 6: a schedule PATCH during a rotation', () => {
  it(`never writes back stale state (${RUNS} races)`, async () => {
    const cred = await importCredential(kt, connection);
    for (let run = 0; run < RUNS; run++) {
      const rotate = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
      expect(rotate.status, rotate.text).toBe(202);
      const rotationId = rotate.body.rotationId as string;
      // PATCHes spread over the rotation's life, so that some land while it finishes.
      const patches = await Promise.all(
        Array.from({ length: 8 }, async (_, i) => {
          await sleep(i * 12);
          return kt.api('PATCH', `/v1/credentials/${cred.id}`, { schedule: { every: `${30 + run}d` } });
        }),
      );
      for (const p of patches) expect(p.status, p.text).toBe(200);
      const rotation = await waitForRotation(kt, rotationId);
      expect(rotation.status).toBe('succeeded');
      const credential = await waitFor(`credential ${cred.id} to settle`, async () => {
        const c = (await kt.api('GET', `/v1/credentials/${cred.id}`)).body;
        return c.status !== 'rotating' || (await redis.exists(`${env.prefix}:cred:${cred.id}:inflight`))
          ? c
          : undefined;
      });
      expect(credential, `run ${run}`).toMatchObject({
        status: 'active',
        version: rotationId,
        lastRotationId: rotationId,
        schedule: { every: `${30 + run}d` },
      });
      expect(await redis.exists(`${env.prefix}:cred:${cred.id}:inflight`)).toBe(0);
      const secret = (await kt.api('GET', `/v1/credentials/${cred.id}/secret`)).body;
      expect(await canLogin(secret.username, secret.password), `run ${run}`).toBe(true);
    }
  });
});

describe('finding 7: DELETE racing a rotate request', () => {
  it(`either deletes before anything changes downstream or refuses; nothing is left behind (${RUNS} races)`, async () => {
    const outcomes: string[] = [];
    for (let run = 0; run < RUNS; run++) {
      const cred = await importCredential(kt, connection, { idPrefix: 'race' });
      // A lease makes the delete take a while (it drops the lease user first), as in production; the rotate
      // request comes 0-27 ms after the delete, so that it lands before, during and after the delete's steps.
      const lease = await kt.api('POST', `/v1/credentials/${cred.id}/leases`, { ttl: '10m' });
      expect(lease.status, lease.text).toBe(201);
      const [del, rotate] = await Promise.all([
        kt.api('DELETE', `/v1/credentials/${cred.id}`),
        sleep((run % 10) * 3).then(() => kt.api('POST', `/v1/credentials/${cred.id}/rotate`)),
      ]);
      expect([202, 404]).toContain(rotate.status);
      expect([204, 409]).toContain(del.status);
      const rotation = rotate.status === 202 ? await waitForRotation(kt, rotate.body.rotationId) : undefined;
      outcomes.push(`${rotate.status}/${del.status}/${rotation?.status ?? '-'}`);
      if (del.status === 204) {
        // The delete won: the downstream still has the imported password, unless the rotation had ended already.
        if (rotation?.status === 'succeeded') {
          expect(Date.parse(rotation.finishedAt)).toBeLessThanOrEqual(Date.now());
        } else {
          expect(await canLogin(cred.role.name, cred.password), `run ${run}: ${outcomes.at(-1)}`).toBe(true);
        }
        expect((await kt.api('GET', `/v1/credentials/${cred.id}`)).status).toBe(404);
        await waitFor('no key of the deleted credential', async () => (await keysOf(cred.id)).length === 0);
      } else {
        // The rotation won: the credential is intact and its secret logs in; then it can be deleted.
        expect(rotation?.status).toBe('succeeded');
        const secret = (await kt.api('GET', `/v1/credentials/${cred.id}/secret`)).body;
        expect(await canLogin(secret.username, secret.password)).toBe(true);
        expect((await kt.api('DELETE', `/v1/credentials/${cred.id}`)).status).toBe(204);
        expect(await keysOf(cred.id)).toEqual([]);
      }
      // The id is usable again: registering it gives 201, not the 409 of a leftover hash.
      const known = await canLogin(cred.role.name, cred.password);
      const again = await kt.api('POST', '/v1/credentials', {
        id: cred.id,
        connection,
        username: cred.role.name,
        strategy: 'single-user',
        schedule: { every: '30d' },
        ...(known ? { import: true, currentPassword: cred.password } : {}),
      });
      expect(again.status, `run ${run}: ${outcomes.at(-1)}: ${again.text}`).toBe(201);
      if (again.body.rotation) await waitForRotation(kt, again.body.rotation.id);
      expect((await kt.api('DELETE', `/v1/credentials/${cred.id}`)).status).toBe(204);
    }
    console.log(`finding 7 outcomes (rotate/delete/rotation): ${outcomes.join(' ')}`);
  });
});

describe('finding 8: rotate-now and DELETE with a scheduled rotation waiting out its jitter', () => {
  const JITTER_MS = 27 * 60_000;

  it('rotate-now starts the waiting rotation at once', async () => {
    const cred = await importCredential(kt, connection, { idPrefix: 'jit' });
    const scheduled = await kt.runtime.ctx.engine.request(cred.id, 'schedule', 'scheduler', {
      delayMs: JITTER_MS,
    });
    expect(scheduled?.rotation.notBefore).toBeDefined();
    const now = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    expect(now.status, now.text).toBe(202);
    expect(now.body.rotationId).toBe(scheduled?.rotation.id);
    const rotation = await waitForRotation(kt, now.body.rotationId, 30_000);
    expect(rotation.status).toBe('succeeded');
    expect(await canLogin(cred.role.name, cred.password)).toBe(false);
  });

  it('DELETE cancels it (it had not started) and removes its job', async () => {
    const cred = await importCredential(kt, connection, { idPrefix: 'jit' });
    const scheduled = await kt.runtime.ctx.engine.request(cred.id, 'schedule', 'scheduler', {
      delayMs: JITTER_MS,
    });
    const id = scheduled?.rotation.id as string;
    const del = await kt.api('DELETE', `/v1/credentials/${cred.id}`);
    expect(del.status, del.text).toBe(204);
    const rotation = (await kt.api('GET', `/v1/rotations/${id}`)).body;
    expect(rotation).toMatchObject({ status: 'failed', error: { code: 'cancelled' } });
    expect(await kt.runtime.queues.rotations.getJob(`rotate-${id}`)).toBeUndefined();
    expect(await keysOf(cred.id)).toEqual([]);
    expect(await canLogin(cred.role.name, cred.password)).toBe(true);
  });

  it('refuses a jitter longer than the interval with a 422 naming it', async () => {
    const res = await kt.api('POST', '/v1/credentials', {
      id: 'jitter-too-long',
      connection,
      username: 'nobody',
      strategy: 'single-user',
      schedule: { every: '1h', jitter: '2h' },
    });
    expect(res.status, res.text).toBe(422);
    expect(res.body.error.message).toMatch(
      /schedule\.jitter \(2h\) must not be longer than the time between two rotations/,
    );
  });
});
