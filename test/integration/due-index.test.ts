// The due-time index (scheduling/due-index.ts) that replaced one BullMQ job scheduler per credential: claims are
// exactly-once however many drainers run, a schedule armed while an entry is claimed wins over the drainer's re-arm,
// two worker processes start every due credential once, old job schedulers are migrated, and the lag is a metric.
import { randomBytes, scryptSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DueIndex } from '../../src/scheduling/due-index.ts';
import {
  dropPrefix,
  type Keyturn,
  spawnWorker,
  startKeyturn,
  testEnv,
  testKeys,
  testRedis,
  type WorkerProcess,
  waitFor,
} from '../support/harness.ts';
import { startWebhookServer } from '../support/webhook-server.ts';

const redis = testRedis();
const prefixes: string[] = [];

afterAll(async () => {
  for (const p of prefixes) await dropPrefix(p);
  redis.disconnect();
});

function freshIndex(): DueIndex {
  const prefix = `kt-test-due-${randomBytes(4).toString('hex')}`;
  prefixes.push(prefix);
  return new DueIndex(redis, testKeys(prefix));
}

describe('the due-time index', () => {
  it('8 concurrent drainers claim each of 2,000 due entries exactly once; entries not yet due stay', async () => {
    const due = freshIndex();
    const now = Date.now();
    for (let i = 0; i < 2000; i++) await due.arm(`c${i}`, now - 1000 + (i % 7));
    for (let i = 0; i < 50; i++) await due.arm(`later${i}`, now + 3_600_000);
    const seen = new Map<string, number>();
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (;;) {
          const claimed = await due.claim(now, 37, 60_000);
          if (claimed.length === 0) return;
          for (const entry of claimed) seen.set(entry.credentialId, (seen.get(entry.credentialId) ?? 0) + 1);
        }
      }),
    );
    expect(seen.size).toBe(2000);
    expect([...seen.values()].every((n) => n === 1)).toBe(true);
    expect([...seen.keys()].some((id) => id.startsWith('later'))).toBe(false);
    // Claimed entries are held, not removed: nothing is lost if a drainer dies now.
    expect(await due.size()).toBe(2050);
  });

  it('a claim whose drainer died comes due again once its hold has passed', async () => {
    const due = freshIndex();
    const now = Date.now();
    await due.arm('orphan', now - 10);
    const [first] = await due.claim(now, 10, 5_000);
    expect(first?.credentialId).toBe('orphan');
    expect(await due.claim(now + 4_000, 10, 5_000)).toEqual([]);
    const [again] = await due.claim(now + 6_000, 10, 5_000);
    expect(again?.credentialId).toBe('orphan');
    expect(again?.dueAt).toBe(first?.heldUntil);
  });

  it('a schedule armed while its entry is claimed (a PATCH, a finished rotation) wins over the re-arm', async () => {
    const due = freshIndex();
    const now = Date.now();
    await due.arm('raced', now - 10);
    await due.arm('quiet', now - 10);
    const claimed = await due.claim(now, 10, 60_000);
    const raced = claimed.find((e) => e.credentialId === 'raced')!;
    const quiet = claimed.find((e) => e.credentialId === 'quiet')!;
    await due.arm('raced', now + 86_400_000); // the PATCH
    expect(await due.rearm(raced, now + 30_000)).toBe(false);
    expect(await due.dueAt('raced')).toBe(now + 86_400_000);
    expect(await due.rearm(quiet, now + 30_000)).toBe(true);
    expect(await due.dueAt('quiet')).toBe(now + 30_000);
    // Dropping goes through the same check: a credential deleted and registered again under its id keeps its entry.
    const [held] = await due.claim(now + 31_000, 10, 60_000);
    await due.arm('quiet', now + 99_000);
    expect(await due.rearm(held!, undefined)).toBe(false);
    expect(await due.dueAt('quiet')).toBe(now + 99_000);
  });
});

describe('scheduled rotations through the index', () => {
  const env = testEnv({ KEYTURN_ROTATION_CONCURRENCY: '8' });
  let kt: Keyturn;
  let webhook: Awaited<ReturnType<typeof startWebhookServer>>;
  const workers: WorkerProcess[] = [];

  beforeAll(async () => {
    prefixes.push(env.prefix);
    kt = await startKeyturn(env, { components: ['api'] });
    const signingKey = randomBytes(32).toString('base64url');
    webhook = await startWebhookServer({ signingKey, keyId: 'kid-due' });
    const res = await kt.api('POST', '/v1/connections', {
      id: 'due-hook',
      type: 'webhook',
      host: '127.0.0.1',
      port: webhook.port,
      tls: { mode: 'disable' },
      admin: { username: 'kid-due', password: signingKey },
    });
    expect(res.status, res.text).toBe(201);
  });
  afterAll(async () => {
    for (const w of workers) await w.kill();
    await kt?.close();
    await webhook?.close();
  });

  const register = async (n: number, idPrefix: string): Promise<string[]> => {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const username = `${idPrefix}${i}`;
      const password = randomBytes(18).toString('base64url');
      const salt = randomBytes(16);
      webhook.users.set(username, { salt, hash: scryptSync(password, salt, 32) });
      const res = await kt.api('POST', '/v1/credentials', {
        id: `${idPrefix}-${i}`,
        connection: 'due-hook',
        username,
        strategy: 'single-user',
        schedule: { every: '30d' },
        import: true,
        currentPassword: password,
      });
      expect(res.status, res.text).toBe(201);
      ids.push(`${idPrefix}-${i}`);
    }
    return ids;
  };
  const scheduledRotations = async (id: string) =>
    (await kt.api('GET', `/v1/credentials/${id}/rotations`)).body.rotations.filter(
      (r: { trigger: string }) => r.trigger === 'schedule',
    );

  it('two worker processes start each of 24 credentials due at once exactly once, and report the lag', async () => {
    const ids = await register(24, 'burst');
    for (const id of ids) expect(await kt.runtime.queues.hasSchedule(id)).toBe(true);
    // All due now, as a cron slot shared by all of them would make them.
    const at = Date.now();
    for (const id of ids) await kt.runtime.queues.due.arm(id, at);
    workers.push(spawnWorker(env), spawnWorker(env));
    await waitFor(
      'every credential rotated on schedule',
      async () => {
        for (const id of ids) {
          const done = (await scheduledRotations(id)).filter(
            (r: { status: string }) => r.status === 'succeeded',
          );
          if (done.length === 0) return undefined;
        }
        return true;
      },
      60_000,
      250,
    );
    for (const id of ids) {
      expect((await scheduledRotations(id)).length, id).toBe(1);
      // Armed again from the rotation's end: 30 days on.
      expect((await kt.runtime.queues.due.dueAt(id))! - Date.now()).toBeGreaterThan(29 * 86_400_000);
    }
    // Both processes drained (the claim spreads them), and each reports the lag on its metrics.
    let lagged = 0;
    for (const w of workers) {
      const address = await waitFor('the worker health address', async () => {
        const line = w.output.find((l) => l.includes('keyturn serving on'));
        return line ? (JSON.parse(line) as { address: string }).address : undefined;
      });
      const text = await (await fetch(`${address}/metrics`)).text();
      const count = Number(/^keyturn_schedule_lag_seconds_count (\d+)/m.exec(text)?.[1] ?? 0);
      lagged += count;
    }
    expect(lagged).toBe(24);
  });

  it('the reconciler arms an entry a crash left missing, or armed from a schedule the spec no longer has', async () => {
    const [missing, stale, fine] = await register(3, 'recon');
    const rotatedAt = async (id: string) =>
      Date.parse((await kt.api('GET', `/v1/credentials/${id}`)).body.rotatedAt);
    await kt.runtime.queues.removeSchedule(missing!);
    // Armed from an earlier `every: 90d` whose PATCH to 30d died before re-arming.
    await kt.runtime.queues.due.arm(stale!, (await rotatedAt(stale!)) + 90 * 86_400_000);
    const fineAt = await kt.runtime.queues.due.dueAt(fine!);
    const worker = await startKeyturn(env, { components: ['worker'] });
    try {
      await worker.runtime.workers!.reconcile();
    } finally {
      await worker.close();
    }
    for (const id of [missing!, stale!])
      expect(await kt.runtime.queues.due.dueAt(id), id).toBe((await rotatedAt(id)) + 30 * 86_400_000);
    expect(await kt.runtime.queues.due.dueAt(fine!)).toBe(fineAt);
  });

  it('job schedulers of before the index are moved into it at start, once', async () => {
    const [id] = await register(1, 'legacy');
    await kt.runtime.queues.removeSchedule(id!);
    await kt.runtime.queues.schedule.upsertJobScheduler(
      `cred-${id}`,
      { every: 30 * 86_400_000 },
      { name: 'tick', data: { credentialId: id }, opts: { removeOnComplete: true } },
    );
    const runtime = await startKeyturn(env, { components: ['worker'] });
    try {
      expect(await kt.runtime.queues.schedule.getJobScheduler(`cred-${id}`)).toBeUndefined();
      expect(await kt.runtime.queues.hasSchedule(id!)).toBe(true);
      expect(await runtime.runtime.workers!.migrateJobSchedulers()).toBe(0);
    } finally {
      await runtime.close();
    }
  });
});
