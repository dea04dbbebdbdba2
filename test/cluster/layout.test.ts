// Acceptance (issue 12, Cluster): against a real three-master Redis Cluster (npm run test:cluster), credentials spread
// over the masters, every key of one credential (its record, in-flight pointer, rotations, leases, audit outbox)
// shares one slot, BullMQ's queues share one slot, the audit chain verifies after rotations and leases, and the
// audit events written in a credential's slot reach the audit stream exactly once, also after a crash between the
// two. The suites listed in vitest.cluster.config.ts run here too, unchanged.
import type { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { auditAppendOp } from '../../src/audit/audit-log.ts';
import { AuditOutbox } from '../../src/audit/outbox.ts';
import {
  dropPrefix,
  importCredential,
  type Keyturn,
  REDIS_CLUSTER_HOSTS,
  registerPgConnection,
  startKeyturn,
  testEnv,
  testKeys,
  testRedis,
  waitForRotation,
} from '../support/harness.ts';

const clustered = REDIS_CLUSTER_HOSTS !== '';
if (!clustered)
  console.log('[skip] test/cluster: run with `npm run test:cluster`, which starts a Redis Cluster');

describe.skipIf(!clustered)('Keyturn on a Redis Cluster of three masters', () => {
  const env = testEnv();
  const keys = testKeys(env.prefix);
  let kt: Keyturn;
  let cluster: Cluster;
  let connection: string;
  const ids: string[] = [];

  /** slot → the port of the master serving it. */
  const owners = new Map<number, number>();
  const masterOf = async (key: string): Promise<number> => {
    const slot = (await cluster.cluster('KEYSLOT', key)) as number;
    return owners.get(slot) as number;
  };
  const slotOf = async (key: string) => (await cluster.cluster('KEYSLOT', key)) as number;

  beforeAll(async () => {
    cluster = testRedis() as Cluster;
    const slots = (await cluster.cluster('SLOTS')) as unknown as Array<[number, number, [string, number]]>;
    for (const [from, to, [, port]] of slots) for (let s = from; s <= to; s++) owners.set(s, port);
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    connection = await registerPgConnection(kt);
    for (let i = 0; i < 12; i++) ids.push((await importCredential(kt, connection, { idPrefix: `c${i}` })).id);
  });

  afterAll(async () => {
    await kt?.close();
    await dropPrefix(env.prefix);
    cluster?.disconnect();
  });

  it('runs on the cluster, and says so in /readyz', async () => {
    const ready = await kt.api('GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body.checks.redis.topology).toMatch(/^cluster seeded by /);
    expect(ready.body.checks.redis.writeNodes).toHaveLength(3);
    expect(await cluster.exists(keys.credential(ids[0]!))).toBe(1);
    expect(keys.credential(ids[0]!)).toBe(`${env.prefix}:cred:{${ids[0]}}`);
  });

  it('spreads credentials over more than one master', async () => {
    const masters = new Set(await Promise.all(ids.map((id) => masterOf(keys.credential(id)))));
    const slots = new Set(await Promise.all(ids.map((id) => slotOf(keys.credential(id)))));
    console.log(`12 credentials on ${slots.size} slots of ${masters.size} masters`);
    expect(masters.size).toBeGreaterThan(1);
    expect(slots.size).toBeGreaterThan(6);
  });

  it("keeps every key of a credential in its slot through a rotation and a lease, and the queues' keys in one slot", async () => {
    const id = ids[0]!;
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect(rotate.status).toBe(202);
    expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
    const lease = await kt.api('POST', `/v1/credentials/${id}/leases`, { ttl: '10m' });
    expect(lease.status, lease.text).toBe(201);
    expect((await kt.api('DELETE', `/v1/leases/${lease.body.id}`)).status).toBeLessThan(300);

    const slot = await slotOf(keys.credential(id));
    const mine = [
      keys.credentialRotations(id),
      keys.rotation(id, rotate.body.rotationId),
      keys.credentialLeases(id),
      keys.leaseRecord(id, lease.body.id),
      keys.auditOutbox(id),
      keys.inflight(id),
      keys.lease(id),
    ];
    for (const key of mine) expect(await slotOf(key), key).toBe(slot);
    expect(await cluster.exists(keys.rotation(id, rotate.body.rotationId))).toBe(1);
    expect(await cluster.exists(keys.leaseRecord(id, lease.body.id))).toBe(1);

    const queueKeys: string[] = [];
    for (const node of cluster.nodes('master')) {
      let cursor = '0';
      do {
        const [next, found] = await node.scan(cursor, 'MATCH', `${keys.queuePrefix()}:*`, 'COUNT', 1000);
        cursor = next;
        queueKeys.push(...found);
      } while (cursor !== '0');
    }
    expect(queueKeys.length).toBeGreaterThan(3);
    expect(new Set(await Promise.all(queueKeys.map(slotOf))).size).toBe(1);
  });

  it('keeps an audit chain that verifies, with every rotation and lease event in it once', async () => {
    const verify = await kt.api('GET', '/v1/audit/verify');
    expect(verify.status, verify.text).toBe(200);
    expect(verify.body.ok).toBe(true);
    const events = await kt.api('GET', `/v1/audit?credential=${ids[0]}&limit=500`);
    const actions = (events.body.events as Array<{ action: string; rotation?: string }>).map((e) => e.action);
    expect(actions.filter((a) => a === 'rotation.succeeded')).toHaveLength(1);
    expect(actions.filter((a) => a === 'lease.created')).toHaveLength(1);
    expect(actions.filter((a) => a === 'lease.revoked')).toHaveLength(1);
    // Relayed outboxes are left empty.
    expect(await cluster.xlen(keys.auditOutbox(ids[0]!))).toBe(0);
  });

  it('relays an event a crash left in an outbox exactly once, also when the crash came after the copy', async () => {
    const id = ids[1]!;
    const outbox = new AuditOutbox(cluster, keys);
    const event = { actor: 'test', action: 'test.outbox', outcome: 'success' as const, credential: id };
    // A writer that died right after its script: announced, appended, never relayed.
    await outbox.announce(id);
    const [, key, ...args] = auditAppendOp(keys.auditOutbox(id), event);
    await cluster.call('XADD', key as string, ...args);
    const count = async () => {
      const page = await kt.api('GET', `/v1/audit?credential=${id}&action=test.outbox&limit=50`);
      return page.body.events.length as number;
    };
    expect(await count()).toBe(0);
    // The reconciler's sweep takes outboxes untouched for a while: "a while" is passed as a later clock.
    expect(await outbox.sweep(Date.now() + 60_000)).toBe(1);
    expect(await count()).toBe(1);
    expect(await outbox.sweep(Date.now() + 60_000)).toBe(0);
    // A relay that copied and died before removing the copied entry: the copy (the audit stream's entry and the
    // relayed mark, one script) happened, the entry is still in the outbox. Relaying again copies nothing.
    const second = (await cluster.call('XADD', key as string, ...args)) as string;
    await cluster.xadd(keys.audit(), '*', ...(args.slice(1) as [string, string]));
    await cluster.hset(keys.auditRelayed(), id, second);
    expect(await count()).toBe(2);
    expect(await outbox.relay(id)).toBe(0);
    expect(await count()).toBe(2);
    expect(await cluster.xlen(keys.auditOutbox(id))).toBe(0);
  });
});
