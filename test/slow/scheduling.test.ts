// Scheduling through the due-time index: rotations on their own, changed schedules at once, a missed slot
// outside its window skipped, and no scheduler left behind by a deleted credential.
import { randomBytes } from 'node:crypto';
import { CronExpressionParser } from 'cron-parser';
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  canLogin,
  createAppRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  pgAdmin,
  registerPgConnection,
  spawnWorker,
  startKeyturn,
  testEnv,
  waitFor,
} from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;
let connection: string;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
});

const imported = (schedule: object, extra: object = {}) =>
  importCredential(kt, connection, { schedule, extra, idPrefix: 'sched' });

const scheduled = async (id: string) =>
  (await kt.api('GET', `/v1/credentials/${id}/rotations`)).body.rotations.filter(
    (r: { trigger: string; status: string }) => r.trigger === 'schedule',
  );

it('an {"every": "3s"} schedule rotates on its own at least twice within 10 seconds', async () => {
  const start = Date.now();
  const { id, role, password } = await imported({ every: '3s' });
  const done = await waitFor(
    'two scheduled rotations',
    async () => {
      const rotations = (await scheduled(id)).filter((r: { status: string }) => r.status === 'succeeded');
      return rotations.length >= 2 ? rotations : undefined;
    },
    10_000,
    200,
  );
  const elapsed = Date.now() - start;
  console.log(`two scheduled rotations after ${elapsed} ms`);
  expect(done.every((r: { actor: string }) => r.actor === 'scheduler')).toBe(true);
  const secret = await kt.api('GET', `/v1/credentials/${id}/secret`);
  expect(await canLogin(role.name, secret.body.password)).toBe(true);
  expect(await canLogin(role.name, password)).toBe(false);
  await kt.api('DELETE', `/v1/credentials/${id}`).catch(() => {});
});

it('jitter delays each scheduled rotation by a random amount up to the jitter', async () => {
  const { id } = await imported({ every: '2s', jitter: '2s' });
  const rotations = await waitFor(
    'three scheduled rotations',
    async () => {
      const done = (await scheduled(id)).filter((r: { status: string }) => r.status === 'succeeded');
      return done.length >= 3 ? done : undefined;
    },
    20_000,
    200,
  );
  const delays = rotations.map((r: { createdAt: string; notBefore?: string; startedAt: string }) => {
    const delay = r.notBefore ? Date.parse(r.notBefore) - Date.parse(r.createdAt) : 0;
    // The first step does not start before the jittered time.
    if (r.notBefore) expect(Date.parse(r.startedAt)).toBeGreaterThanOrEqual(Date.parse(r.notBefore) - 50);
    return delay;
  });
  for (const d of delays) expect(d).toBeLessThanOrEqual(2000);
  // Three draws from 0…2000 ms are not all zero unless jitter is ignored (chance 1 in 8·10^9).
  expect(delays.some((d: number) => d > 0)).toBe(true);
  await waitFor(
    'deletion',
    async () => (await kt.api('DELETE', `/v1/credentials/${id}`)).status === 204,
    10_000,
    50,
  );
});

it('a changed schedule takes effect at once, and a deleted credential leaves no scheduler behind', async () => {
  const { id } = await imported({ every: '30d' });
  const before = await kt.api('GET', `/v1/credentials/${id}`);
  expect(Date.parse(before.body.nextRotationAt) - Date.now()).toBeGreaterThan(29 * 86_400_000);
  expect(await kt.runtime.queues.hasSchedule(id)).toBe(true);

  const patched = await kt.api('PATCH', `/v1/credentials/${id}`, { schedule: { every: '2s' } });
  expect(patched.status).toBe(200);
  expect(Date.parse(patched.body.nextRotationAt) - Date.now()).toBeLessThan(3000);
  await waitFor('a rotation on the new schedule', async () => (await scheduled(id)).length >= 1, 8000, 200);

  // Wait for the credential to be idle, then delete it.
  await waitFor(
    'the credential to be deletable',
    async () => (await kt.api('DELETE', `/v1/credentials/${id}`)).status === 204,
    10_000,
    50,
  );
  expect(await kt.runtime.queues.hasSchedule(id)).toBe(false);
  const delayed = await kt.runtime.queues.schedule.getJobs(['delayed', 'wait']);
  expect(delayed.filter((j) => j.data.credentialId === id)).toEqual([]);
});

it('a cron schedule with a time zone advertises its next slot', async () => {
  const { id } = await imported({ cron: '15 3 * * 1', timezone: 'America/New_York' });
  const res = await kt.api('GET', `/v1/credentials/${id}`);
  const expected = CronExpressionParser.parse('15 3 * * 1', { tz: 'America/New_York' }).next().toDate();
  expect(res.body.nextRotationAt).toBe(expected.toISOString());
  // The due-time index holds that slot.
  expect(await kt.runtime.queues.due.dueAt(id)).toBe(expected.getTime());
});

it('a slot missed during downtime is skipped when its window has closed', async () => {
  // A second namespace whose only worker is a child process we can stop.
  const offline = testEnv();
  const api = await startKeyturn(offline, { components: ['api'] });
  try {
    const conn = await registerPgConnection(api);
    const role = await createAppRole();
    const password = randomBytes(18).toString('base64url');
    await pgAdmin((c) => c.query(`ALTER ROLE "${role.name}" PASSWORD '${password}'`));
    const id = `window-${role.name}`;
    const res = await api.api('POST', '/v1/credentials', {
      id,
      connection: conn,
      username: role.name,
      strategy: 'single-user',
      schedule: { every: '2s', window: '1s' },
      import: true,
      currentPassword: password,
    });
    expect(res.status).toBe(201);
    // No worker until the first slot is past its 1 s window (by half a second more): the slot's own due time, read
    // from the credential, decides when, not a guess of how long registration takes.
    const due = Date.parse((await api.api('GET', `/v1/credentials/${id}`)).body.nextRotationAt);
    expect(Number.isFinite(due)).toBe(true);
    await waitFor(
      'the first slot to be past its window',
      async () => Date.now() > due + 1500 || undefined,
      10_000,
      50,
    );
    const worker = spawnWorker(offline);
    try {
      const skipped = await waitFor(
        'the skipped slot',
        async () => {
          const events = (await api.api('GET', `/v1/audit?credential=${id}&action=rotation.skipped`)).body
            .events;
          return events.length >= 1 ? events : undefined;
        },
        15_000,
        200,
      );
      expect(skipped[0].details.reason).toBe('missed its window');
      expect(skipped[0].details.lateMs).toBeGreaterThan(1000);
      // The next slot, on time, rotates.
      await waitFor(
        'a rotation on the next slot',
        async () =>
          (await api.api('GET', `/v1/credentials/${id}/rotations`)).body.rotations.some(
            (r: { status: string }) => r.status === 'succeeded',
          ),
        15_000,
        200,
      );
    } finally {
      await worker.kill();
    }
  } finally {
    await api.close();
    await dropPrefix(offline.prefix);
  }
});
