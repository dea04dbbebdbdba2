// The connection lock (rotation/lease.ts) held by a credential's lease: when it expires without being renewed (the
// holder stalled past its TTL) another worker may take it, exclusive, for the admin's rotation. The stalled holder then
// must not go on: its next fenced write (each change downstream is preceded by one) stops the attempt.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedisClient, type RedisClient } from '../../src/redis/client.ts';
import { RedisKeys } from '../../src/registry/keys.ts';
import { LeaseLostError, LeaseManager } from '../../src/rotation/lease.ts';
import { dropPrefix, waitFor } from '../support/harness.ts';

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
      const lost = await waitFor(
        'a commit to be refused',
        async () =>
          lease!.commit([]).then(
            () => undefined,
            (err: unknown) => err as Error,
          ),
        5000,
        50,
      );
      expect(lost).toBeInstanceOf(LeaseLostError);
      expect(lost.message).toContain('the connection lock');
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
    // Time itself is what is tested: several renewals (every TTL/3), well past the TTL a missed renewal would end.
    await new Promise((r) => setTimeout(r, 1500));
    await lease!.commit([]);
    expect(lease!.lost).toBe(false);
    await lease!.release();
  });
});
