// The connection lock (rotation/lease.ts) held by a credential's lease: when it expires without being renewed (the
// holder stalled past its TTL) another worker may take it, exclusive, for the admin's rotation. The stalled holder then
// must not go on: its next fenced write (each change downstream is preceded by one) stops the attempt.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedisClient, type RedisClient } from '../../src/redis/client.ts';
import { RedisKeys } from '../../src/registry/keys.ts';
import { LeaseLostError, LeaseManager } from '../../src/rotation/lease.ts';
import { dropPrefix } from '../support/harness.ts';

const prefix = `kt-test-lock-${randomBytes(4).toString('hex')}`;
let redis: RedisClient;
const keys = new RedisKeys(prefix);

beforeAll(async () => {
  redis = createRedisClient(
    {
      topology: { kind: 'standalone', url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' },
      minReplicasAck: 0,
      waitTimeoutMs: 1000,
    },
    'commands',
    prefix,
  );
  await redis.connect();
});
afterAll(async () => {
  redis?.disconnect();
  await dropPrefix(prefix);
});

const until = async (check: () => Promise<boolean>) => {
  const deadline = Date.now() + 5000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
};

describe('a lease whose connection lock was lost', () => {
  it.each(['shared', 'exclusive'] as const)(
    '%s: the next commit throws LeaseLostError naming the lock, once a renewal found it gone',
    async (mode) => {
      const leases = new LeaseManager(redis, keys, 600);
      const connection = `conn-${mode}`;
      const lease = await leases.tryAcquire(`cred-${mode}`, 'worker-a', { connection, mode });
      expect(lease).not.toBeNull();
      await lease!.commit([]); // held: commits go through
      // The lock expires under a stalled holder (here: removed), and the admin's rotation takes it exclusive.
      const [shared, excl] = keys.connectionLock(connection);
      await redis.del(shared, excl);
      const admin = await leases.tryAcquire(`admin:${connection}`, 'worker-b', {
        connection,
        mode: 'exclusive',
      });
      expect(admin).not.toBeNull();
      // The next renewal (every TTL/3) finds the lock gone.
      await until(async () => {
        try {
          await lease!.commit([]);
          return false;
        } catch (err) {
          expect(err).toBeInstanceOf(LeaseLostError);
          expect((err as Error).message).toContain('the connection lock');
          return true;
        }
      });
      expect(lease!.lost).toBe(true);
      await lease!.release();
      await admin!.release();
    },
  );

  it('a lock renewed in time is never reported lost', async () => {
    const leases = new LeaseManager(redis, keys, 600);
    const lease = await leases.tryAcquire('cred-kept', 'worker-a', {
      connection: 'conn-kept',
      mode: 'shared',
    });
    await new Promise((r) => setTimeout(r, 1500)); // several renewals, past the TTL
    await lease!.commit([]);
    expect(lease!.lost).toBe(false);
    await lease!.release();
  });
});
