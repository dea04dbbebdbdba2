// Findings 6, 7 and 8 of issue 11, against the real Redis, BullMQ workers and the password-checking PostgreSQL.
// Each race of findings 6 and 7 runs 20 times in one test, and every run checks the invariant, not just the answer:
//   6. a schedule PATCH during a rotation wrote back the state it had read earlier: the credential ended `rotating`
//      with no rotation in flight, or with an old version and active user, and the next alternating rotation changed
//      the password of the user in use. The other way round, a finishing rotation re-armed the scheduler from the
//      spec it had read before the PATCH;
//   7. DELETE racing a rotate request: the rotation set a password no store holds, and a leftover state hash made
//      the id unusable (POST 409, GET and DELETE 404);
//   8. a scheduled rotation waiting out its jitter was handed to "rotate now" and blocked DELETE.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RedisClient } from '../../src/redis/client.ts';
import { mergeFieldsOp } from '../../src/redis/fenced-op.ts';
import { LeaseManager } from '../../src/rotation/lease.ts';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  testKeys,
  testRedis,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';

const RUNS = 20;
const DAY = 86_400_000;
let env: TestEnv;
let kt: Keyturn;
let connection: string;
let redis: RedisClient;

beforeAll(async () => {
  env = testEnv();
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
  redis = testRedis();
});
afterAll(async () => {
  await kt?.close();
  redis?.disconnect();
  if (env) await dropPrefix(env.prefix);
});

const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

/** Every Redis key of one credential (its hash and what hangs off it). */
async function keysOf(prefix: string, id: string): Promise<string[]> {
  const [hash, rest] = await Promise.all([
    redis.exists(`${prefix}:cred:${id}`),
    redis.keys(`${prefix}:cred:${id}:*`),
  ]);
  return [...(hash ? [`${prefix}:cred:${id}`] : []), ...rest];
}

/** Waits until no worker holds the credential and no rotation is in flight: everything after a rotation is done. */
async function settled(prefix: string, id: string): Promise<void> {
  await waitFor(`credential ${id} to be idle`, async () => {
    const [lease, inflight] = await Promise.all([
      redis.exists(`${prefix}:cred:${id}:lease`),
      redis.exists(`${prefix}:cred:${id}:inflight`),
    ]);
    return lease + inflight === 0;
  });
}

/**
 * What must hold after a rotation that succeeded, whatever PATCHes ran meanwhile: the state is the rotation's, the
 * scheduler and the advertised next rotation follow the spec as it now is, and the stored secret logs in.
 */
async function expectConsistent(
  k: Keyturn,
  prefix: string,
  id: string,
  rotation: any,
  days: number,
  run: number,
) {
  const at = `run ${run}`;
  const credential = (await k.api('GET', `/v1/credentials/${id}`)).body;
  expect(credential, at).toMatchObject({
    status: 'active',
    version: rotation.id,
    lastRotationId: rotation.id,
    lastOutcome: 'succeeded',
    activeUsername: rotation.username,
    rotatedAt: rotation.finishedAt,
    schedule: { every: `${days}d` },
  });
  expect(await redis.exists(`${prefix}:cred:${id}:inflight`), at).toBe(0);
  expect(Date.parse(credential.nextRotationAt), `${at}: nextRotationAt follows the new schedule`).toBe(
    Date.parse(credential.rotatedAt) + days * DAY,
  );
  expect(await k.runtime.queues.due.dueAt(id), `${at}: the due-time index follows the new schedule`).toBe(
    Date.parse(credential.rotatedAt) + days * DAY,
  );
  const secret = (await k.api('GET', `/v1/credentials/${id}/secret`)).body;
  expect(secret.username, at).toBe(rotation.username);
  expect(await canLogin(secret.username, secret.password), `${at}: the stored secret logs in`).toBe(true);
  return secret as { username: string; password: string };
}

describe('finding 6: a schedule PATCH during a rotation', () => {
  it(`never writes back stale state; the next alternating rotation changes the other user (${RUNS} races)`, async () => {
    const cred = await importCredential(kt, connection, { strategy: 'alternating-users' });
    let inUse = (await kt.api('GET', `/v1/credentials/${cred.id}/secret`)).body;
    for (let run = 0; run < RUNS; run++) {
      const days = 30 + run;
      const rotate = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
      expect(rotate.status, rotate.text).toBe(202);
      // PATCHes spread over the rotation's life (more widely as the runs go on), so that some read the state before
      // the rotation finishes and write after it, and some land while it re-arms the schedule.
      const patches = await Promise.all(
        Array.from({ length: 8 }, async (_, i) => {
          await sleep(i * (2 + (run % 5) * 5));
          return kt.api('PATCH', `/v1/credentials/${cred.id}`, { schedule: { every: `${days}d` } });
        }),
      );
      for (const p of patches) expect(p.status, p.text).toBe(200);
      const rotation = await waitForRotation(kt, rotate.body.rotationId);
      expect(rotation.status, `run ${run}: ${rotation.error?.message}`).toBe('succeeded');
      await settled(env.prefix, cred.id);
      const secret = await expectConsistent(kt, env.prefix, cred.id, rotation, days, run);
      // The rotation changed the user that was not in use: the one in use before still logs in (no grace period).
      expect(secret.username, `run ${run}`).not.toBe(inUse.username);
      expect(await canLogin(inUse.username, inUse.password), `run ${run}: the user in use was changed`).toBe(
        true,
      );
      inUse = secret;
    }
  });

  it(`a rotation re-arms the schedule from the spec as it is then, not as it read it (${RUNS} races)`, async () => {
    // The worker pauses between the rotation's final commit and re-arming the schedule, and the PATCH lands there.
    const slow = testEnv({ KEYTURN_FAILPOINTS: 'finish-after-commit=sleep:500' });
    const k = await startKeyturn(slow, { components: ['api', 'worker'] });
    try {
      const conn = await registerPgConnection(k);
      const cred = await importCredential(k, conn);
      let inWindow = 0;
      for (let run = 0; run < RUNS; run++) {
        const days = 40 + run;
        const rotate = await k.api('POST', `/v1/credentials/${cred.id}/rotate`);
        expect(rotate.status, rotate.text).toBe(202);
        await waitFor(
          'the rotation to commit',
          async () =>
            (await k.api('GET', `/v1/rotations/${rotate.body.rotationId}`)).body.status === 'succeeded',
          30_000,
          20,
        );
        const patch = await k.api('PATCH', `/v1/credentials/${cred.id}`, { schedule: { every: `${days}d` } });
        expect(patch.status, patch.text).toBe(200);
        if (await redis.exists(`${slow.prefix}:cred:${cred.id}:lease`)) inWindow += 1;
        await settled(slow.prefix, cred.id);
        const rotation = (await k.api('GET', `/v1/rotations/${rotate.body.rotationId}`)).body;
        await expectConsistent(k, slow.prefix, cred.id, rotation, days, run);
      }
      console.log(
        `finding 6: ${inWindow} of ${RUNS} PATCHes landed while the rotation was re-arming the schedule`,
      );
    } finally {
      await k.close();
      await dropPrefix(slow.prefix);
    }
  });
});

describe('finding 6: the engine writes only the state fields a step decides', () => {
  it('merges them under the lease, removes the ones set to undefined, and never brings a deleted credential back', async () => {
    const keys = testKeys(`${env.prefix}-merge`);
    const lease = await new LeaseManager(redis, keys, 5000).tryAcquire('c1', 'test');
    expect(lease).not.toBeNull();
    const key = keys.credential('c1');
    try {
      const before = {
        status: 'rotating',
        version: 'v1',
        nextRotationAt: '2030-01-01T00:00:00.000Z',
        failures: 2,
      };
      await redis.hset(key, 'spec', '{}', 'state', JSON.stringify(before));
      // A PATCH moved the next rotation after the engine read the state: the engine's write keeps it.
      await redis.hset(
        key,
        'state',
        JSON.stringify({ ...before, nextRotationAt: '2031-01-01T00:00:00.000Z' }),
      );
      await lease?.commit([
        mergeFieldsOp(key, 'state', { status: 'active', version: 'v2', failures: undefined }),
      ]);
      expect(JSON.parse((await redis.hget(key, 'state')) as string)).toEqual({
        status: 'active',
        version: 'v2',
        nextRotationAt: '2031-01-01T00:00:00.000Z',
      });
      await redis.del(key);
      await lease?.commit([mergeFieldsOp(key, 'state', { status: 'failed' })]);
      expect(await redis.exists(key)).toBe(0);
    } finally {
      await lease?.release();
      await redis.del(key);
    }
  });
});

type AuditEvent = { action: string; credential?: string; rotation?: string };

/** A Keyturn runtime (API and worker) with its own prefix and connection. */
interface Site {
  k: Keyturn;
  prefix: string;
  connection: string;
}

/** The audit events about one credential, in stream order. */
async function auditOf(site: Site, id: string): Promise<AuditEvent[]> {
  const entries = (await redis.xrange(testKeys(site.prefix).audit(), '-', '+')) as Array<[string, string[]]>;
  return entries
    .map(([, fields]) => JSON.parse(fields[fields.indexOf('e') + 1] as string) as AuditEvent)
    .filter((e) => e.credential === id);
}

/** Nothing of a deleted credential is left: no key, no membership, no user-name claim, no scheduler, no job. */
async function expectGone(site: Site, id: string, role: string, rotationId: string | undefined, at: string) {
  const { k, prefix: p, connection: conn } = site;
  for (const path of [
    `/v1/credentials/${id}`,
    `/v1/credentials/${id}/secret`,
    `/v1/credentials/${id}/rotations`,
  ]) {
    expect((await k.api('GET', path)).status, `${at}: GET ${path}`).toBe(404);
  }
  expect((await k.api('POST', `/v1/credentials/${id}/rotate`)).status, `${at}: rotate`).toBe(404);
  expect((await k.api('DELETE', `/v1/credentials/${id}`)).status, `${at}: DELETE`).toBe(404);
  await waitFor(`${at}: no key of the deleted credential`, async () => (await keysOf(p, id)).length === 0);
  expect(await redis.zscore(`${p}:creds`, id), at).toBeNull();
  expect(await redis.sismember(`${p}:conn:${conn}:creds`, id), at).toBe(0);
  const claims = await redis.hgetall(`${p}:conn:${conn}:users`);
  const made = await redis.hgetall(`${p}:conn:${conn}:made`);
  expect(
    Object.entries({ ...claims, ...made }).filter(([name, holder]) => holder === id || name === role),
    at,
  ).toEqual([]);
  expect(await redis.exists(`${p}:secret:cred/${id}`), `${at}: the local store's copy`).toBe(0);
  expect(await k.runtime.queues.hasSchedule(id), `${at}: scheduler`).toBe(false);
  if (rotationId) expect(await redis.zscore(`${p}:rots:active`, rotationId), at).toBeNull();
}

/**
 * One race of a DELETE and a rotate request, the rotate request sent `offset` ms after the DELETE (before it when
 * negative), and the invariant after it: either the delete won (everything 404, nothing left in Redis, nothing changed
 * downstream unless a rotation had ended before the delete began) or the rotation won (DELETE 409, the credential
 * intact); and the id can be registered again. Returns rotate/delete/rotation outcome.
 */
async function deleteRace(site: Site, run: number, offset: number, withLease: boolean): Promise<string> {
  const { k, prefix, connection: conn } = site;
  const cred = await importCredential(k, conn, { idPrefix: 'race' });
  if (withLease) {
    // A lease makes the delete slower (it drops the lease user first), as in production.
    const lease = await k.api('POST', `/v1/credentials/${cred.id}/leases`, { ttl: '10m' });
    expect(lease.status, lease.text).toBe(201);
  }
  const [del, rotate] = await Promise.all([
    sleep(Math.max(0, -offset)).then(() => k.api('DELETE', `/v1/credentials/${cred.id}`)),
    sleep(Math.max(0, offset)).then(() => k.api('POST', `/v1/credentials/${cred.id}/rotate`)),
  ]);
  const at = `run ${run} (offset ${offset} ms, rotate ${rotate.status}, delete ${del.status})`;
  expect([202, 404], `${at}: ${rotate.text}`).toContain(rotate.status);
  expect([204, 409], `${at}: ${del.text}`).toContain(del.status);
  const rotation = rotate.status === 202 ? await waitForRotation(k, rotate.body.rotationId) : undefined;
  if (rotation) {
    // A cancelled rotation's record is final at once, but a worker may still hold its job: what it does with it
    // counts too, so the checks below wait until no worker has it.
    await waitFor(`${rotation.id}: its job to be done`, async () => {
      const job = await k.runtime.queues.rotations.getJob(`rotate-${rotation.id}`);
      return !job || !['active', 'waiting', 'delayed', 'prioritized'].includes(await job.getState());
    });
  }
  const events = await auditOf(site, cred.id);
  const deletedAt = events.findIndex((e) => e.action === 'credential.deleted');
  if (del.status === 204) {
    // The delete won. Either the rotation never changed anything downstream (refused, cancelled or abandoned: the
    // imported password still logs in), or it had ended before the delete began.
    if (rotation?.status === 'succeeded') {
      const succeededAt = events.findIndex(
        (e) => e.action === 'rotation.succeeded' && e.rotation === rotation.id,
      );
      expect(succeededAt, `${at}: the rotation ended before the delete`).toBeGreaterThanOrEqual(0);
      expect(succeededAt, at).toBeLessThan(deletedAt);
    } else {
      if (rotation) expect(rotation, at).toMatchObject({ status: 'failed', error: { message: /deleted/ } });
      if (rotation?.error?.code === 'cancelled') {
        expect(
          events.map((e) => `${e.action} ${e.rotation ?? ''}`.trim()),
          at,
        ).toContain(`rotation.cancelled ${rotation.id}`);
      }
      expect(await canLogin(cred.role.name, cred.password), `${at}: the downstream password changed`).toBe(
        true,
      );
    }
    await expectGone(site, cred.id, cred.role.name, rotation?.id, at);
  } else {
    // The rotation won: DELETE was refused and the credential is intact, with the rotation's version working.
    expect(rotation?.status, at).toBe('succeeded');
    expect(deletedAt, at).toBe(-1);
    await settled(prefix, cred.id);
    const credential = (await k.api('GET', `/v1/credentials/${cred.id}`)).body;
    expect(credential, at).toMatchObject({ status: 'active', version: rotation.id });
    const secret = (await k.api('GET', `/v1/credentials/${cred.id}/secret`)).body;
    expect(await canLogin(secret.username, secret.password), at).toBe(true);
    expect(await canLogin(cred.role.name, cred.password), at).toBe(false);
    expect((await k.api('DELETE', `/v1/credentials/${cred.id}`)).status, at).toBe(204);
    await expectGone(site, cred.id, cred.role.name, rotation.id, at);
  }
  // The id can be registered again: 201, not the 409 of a leftover hash or claim.
  const known = await canLogin(cred.role.name, cred.password);
  const again = await k.api('POST', '/v1/credentials', {
    id: cred.id,
    connection: conn,
    username: cred.role.name,
    strategy: 'single-user',
    schedule: { every: '30d' },
    ...(known ? { import: true, currentPassword: cred.password } : {}),
  });
  expect(again.status, `${at}: ${again.text}`).toBe(201);
  if (again.body.rotation) await waitForRotation(k, again.body.rotation.id);
  await settled(prefix, cred.id);
  expect((await k.api('DELETE', `/v1/credentials/${cred.id}`)).status, at).toBe(204);
  return `${rotate.status}/${del.status}/${rotation?.error?.code ?? rotation?.status ?? '-'}`;
}

describe('finding 7: DELETE racing a rotate request', () => {
  it(`either the delete wins and nothing is left or changed, or the rotation wins and DELETE is a 409 (${RUNS} races)`, async () => {
    const outcomes: string[] = [];
    for (let run = 0; run < RUNS; run++) {
      // From 4 ms before to 40 ms after the DELETE: before the delete, between its steps and after it.
      const offset = [-4, -2, 0, 0, 1, 3, 6, 10, 20, 40][run % 10] as number;
      outcomes.push(
        await deleteRace({ k: kt, prefix: env.prefix, connection }, run, offset, run >= RUNS / 2),
      );
    }
    console.log(`finding 7 outcomes (rotate/delete/rotation): ${outcomes.join(' ')}`);
  });

  it(`a worker about to start the rotation finds it cancelled and changes nothing (${RUNS} races)`, async () => {
    // The worker waits 300 ms between taking the job and taking the credential's lease, so that DELETEs land there
    // (cancelling a rotation a worker already holds), before it, and once the rotation runs.
    const slow = testEnv({ KEYTURN_FAILPOINTS: 'before-lease=sleep:300' });
    const k = await startKeyturn(slow, { components: ['api', 'worker'] });
    try {
      const site = { k, prefix: slow.prefix, connection: await registerPgConnection(k) };
      const outcomes: string[] = [];
      for (let run = 0; run < RUNS; run++) {
        const offset = -[0, 5, 30, 100, 200, 260, 290, 310, 330, 400][run % 10]!;
        outcomes.push(await deleteRace(site, run, offset, false));
      }
      console.log(`finding 7 outcomes with a slow worker (rotate/delete/rotation): ${outcomes.join(' ')}`);
    } finally {
      await k.close();
      await dropPrefix(slow.prefix);
    }
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
    const job = await kt.runtime.queues.rotations.getJob(`rotate-${scheduled?.rotation.id}`);
    expect(await job?.getState()).toBe('delayed');
    const now = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    expect(now.status, now.text).toBe(202);
    expect(now.body.rotationId).toBe(scheduled?.rotation.id);
    // Well inside the 27 minutes it would otherwise have waited.
    const rotation = await waitForRotation(kt, now.body.rotationId, 30_000);
    expect(rotation.status).toBe('succeeded');
    expect(rotation.notBefore).toBeUndefined();
    expect(await canLogin(cred.role.name, cred.password)).toBe(false);
    const secret = (await kt.api('GET', `/v1/credentials/${cred.id}/secret`)).body;
    expect(await canLogin(secret.username, secret.password)).toBe(true);
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
    expect(await keysOf(env.prefix, cred.id)).toEqual([]);
    expect(await canLogin(cred.role.name, cred.password)).toBe(true);
  });

  it('refuses a jitter longer than the interval with a 422 naming it, on registration and on PATCH', async () => {
    const res = await kt.api('POST', '/v1/credentials', {
      id: 'jitter-too-long',
      connection,
      username: 'nobody',
      strategy: 'single-user',
      schedule: { every: '1h', jitter: '2h' },
    });
    expect(res.status, res.text).toBe(422);
    expect(res.body.error.message).toMatch(
      /schedule\.jitter \(2h\) must not be longer than the time between two rotations \(3600s\)/,
    );
    const cred = await importCredential(kt, connection, { idPrefix: 'jit' });
    const patch = await kt.api('PATCH', `/v1/credentials/${cred.id}`, {
      schedule: { cron: '0 3 * * *', jitter: '2d' },
    });
    expect(patch.status, patch.text).toBe(422);
    expect(patch.body.error.message).toMatch(
      /schedule\.jitter \(2d\) must not be longer than the time between two rotations \(86400s\)/,
    );
    expect((await kt.api('GET', `/v1/credentials/${cred.id}`)).body.schedule).toEqual({ every: '30d' });
  });
});
