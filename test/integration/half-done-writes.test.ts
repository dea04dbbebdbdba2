// Issue 12: a registration, a delete and a rotation each write more than one owner's keys (a credential, its
// connection, the indexes), so that every script stays in one Redis Cluster slot. A crash between two of those
// steps must leave nothing that locks anyone out for good: the states a crash can leave are written here by hand,
// and what the next registration, delete or the reconciler makes of them is checked. Runs on one Redis (npm test)
// and on the cluster (npm run test:cluster).
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RedisClient } from '../../src/redis/client.ts';
import {
  createAppRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  testKeys,
  testRedis,
  waitForRotation,
} from '../support/harness.ts';

const env = testEnv();
const keys = testKeys(env.prefix);
let kt: Keyturn;
let redis: RedisClient;
let connection: string;

beforeAll(async () => {
  redis = testRedis();
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
});

afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
  redis?.disconnect();
});

const register = (id: string, username: string) =>
  kt.api('POST', '/v1/credentials', {
    id,
    connection,
    username,
    strategy: 'single-user',
    schedule: { every: '30d' },
    import: true,
    currentPassword: 'not-checked-before-the-claim',
  });

/** The claims a registration that died after its first step leaves: its place and its user name, at `at` (ms). */
async function leaveClaims(id: string, username: string, at: number) {
  await redis.sadd(keys.connectionUsers(connection), id);
  await redis.hset(keys.connectionClaimTimes(connection), id, String(at));
  await redis.hset(keys.connectionUsernames(connection), username, id);
}

const reconcile = () => kt.runtime.workers!.reconcile();

describe('a registration that died between its claims and its record', () => {
  it('holds its user name while it may still be running (409), and not once it is stale', async () => {
    const role = await createAppRole();
    const ghost = `ghost-${randomUUID().slice(0, 8)}`;
    await leaveClaims(ghost, role.name, Date.now());
    const young = await register(`new-${role.name}`, role.name);
    expect(young.status).toBe(409);
    expect(young.body.error.message).toContain(ghost);

    await leaveClaims(ghost, role.name, Date.now() - 5 * 60_000);
    const later = await importCredential(kt, connection, { idPrefix: 'after' }).catch((e) => e);
    expect(later).not.toBeInstanceOf(Error);
    // The stale holder's user name is free: the role of the ghost can be registered now.
    const taken = await register(`again-${role.name}`, role.name);
    expect(taken.status, taken.text).not.toBe(409);
    expect(await redis.sismember(keys.connectionUsers(connection), ghost)).toBe(0);
    expect(await redis.hget(keys.connectionClaimTimes(connection), ghost)).toBeNull();
  });
});

describe('a delete that died after the record went', () => {
  it('leaves claims the next registration frees, an index entry the reconciler drops, and never blocks the connection', async () => {
    const own = await registerPgConnection(kt, `conn-${randomUUID().slice(0, 8)}`);
    const imported = await (async () => {
      const role = await createAppRole();
      const res = await kt.api('POST', '/v1/credentials', {
        id: `doomed-${role.name}`,
        connection: own,
        username: role.name,
        strategy: 'single-user',
        schedule: { every: '30d' },
      });
      expect(res.status, res.text).toBe(201);
      return { id: res.body.id as string, role };
    })();
    // The delete's first step (the record and its keys) happened; its claims and index entry stayed. The claim and
    // the entry are dated back, as they would be for a credential registered a while ago.
    await redis.del(keys.credential(imported.id), keys.inflight(imported.id));
    await redis.hset(keys.connectionClaimTimes(own), imported.id, String(Date.now() - 5 * 60_000));
    await redis.zadd(keys.credentials(), Date.now() - 5 * 60_000, imported.id);

    const listed = await kt.api('GET', '/v1/credentials');
    expect(listed.body.credentials.map((c: { id: string }) => c.id)).not.toContain(imported.id);
    await reconcile();
    expect(await redis.zscore(keys.credentials(), imported.id)).toBeNull();
    // Its user name is free again, and the connection can be deleted once nothing real uses it.
    expect(await redis.hget(keys.connectionUsernames(own), imported.role.name)).toBeNull();
    const gone = await kt.api('DELETE', `/v1/connections/${own}`);
    expect(gone.status, gone.text).toBe(204);
  });
});

describe('a registration that died between its record and its index entry', () => {
  it('is listed again by the reconciler', async () => {
    const { id } = await importCredential(kt, connection, { idPrefix: 'unlisted' });
    // A finished registration keeps no claim time: with its record written, its claims cannot be stale (issue 14).
    expect(await redis.hget(keys.connectionClaimTimes(connection), id)).toBeNull();
    await redis.zrem(keys.credentials(), id);
    const ids = async () =>
      (await kt.api('GET', '/v1/credentials')).body.credentials.map((c: { id: string }) => c.id);
    expect(await ids()).not.toContain(id);
    await reconcile();
    expect(await ids()).toContain(id);
  });
});

describe('the index of active rotations', () => {
  it('loses entries for rotations that ended or never were, and is not refilled by them', async () => {
    const { id } = await importCredential(kt, connection, { idPrefix: 'ended' });
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(rotate.status).toBe(202);
    const rid = rotate.body.rotationId as string;
    expect((await waitForRotation(kt, rid)).status).toBe('succeeded');
    expect(await redis.zscore(keys.activeRotations(), rid)).toBeNull();
    // An ended rotation whose entry a crash left, and the entry of a creation that never happened (old enough).
    await redis.zadd(keys.activeRotations(), Date.now(), rid);
    const never = randomUUID();
    await redis.zadd(keys.activeRotations(), Date.now() - 5 * 60_000, never);
    await reconcile();
    expect(await redis.zscore(keys.activeRotations(), rid)).toBeNull();
    expect(await redis.zscore(keys.activeRotations(), never)).toBeNull();
    expect(await kt.runtime.queues.rotations.getJob(`rotate-${never}`)).toBeUndefined();
  });
});
