// The audit stream: an event for every registration, change, rotation step outcome, secret read and
// authentication failure, naming the actor; filters and cursor paging on GET /v1/audit.
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  createAppRole,
  dropPrefix,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  waitForRotation,
} from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
});

it('records who did what, and pages through it', async () => {
  const since = new Date().toISOString();
  const connection = await registerPgConnection(kt);
  const role = await createAppRole();
  const id = `audit-${role.name}`;
  const created = await kt.api('POST', '/v1/credentials', {
    id,
    connection,
    username: role.name,
    strategy: 'single-user',
    schedule: { every: '30d' },
  });
  await waitForRotation(kt, created.body.rotation.id);
  await kt.api('PATCH', `/v1/credentials/${id}`, { maxAgeDays: 30 });
  await kt.api('GET', `/v1/credentials/${id}/secret`);
  const denied = await kt.api('GET', `/v1/credentials/${id}/secret`, undefined, {
    authorization: 'Bearer wrong',
  });
  expect(denied.status).toBe(401);

  const all = (await kt.api('GET', `/v1/audit?since=${since}&limit=1000`)).body.events as any[];
  const actions = all.map((e) => e.action);
  for (const action of [
    'connection.created',
    'credential.created',
    'rotation.requested',
    'rotation.step',
    'rotation.succeeded',
    'credential.updated',
    'secret.read',
    'auth.failed',
  ]) {
    expect(actions, action).toContain(action);
  }
  const steps = all
    .filter((e) => e.action === 'rotation.step' && e.credential === id)
    .map((e) => e.details.step);
  expect(steps).toEqual(['create', 'set', 'test']);
  expect(all.find((e) => e.action === 'secret.read')).toMatchObject({
    actor: 'admin',
    outcome: 'success',
    credential: id,
  });
  const failure = all.find((e) => e.action === 'auth.failed');
  expect(failure).toMatchObject({ actor: 'anonymous', outcome: 'denied' });
  expect(failure.details.route).toBe('GET /v1/credentials/:id/secret');
  expect(JSON.stringify(failure)).not.toContain('wrong');
  // Oldest first: stream ids (milliseconds-sequence) strictly increasing.
  const key = (eventId: string) => eventId.split('-').map(BigInt) as [bigint, bigint];
  for (let i = 1; i < all.length; i++) {
    const [t0, s0] = key(all[i - 1].id);
    const [t1, s1] = key(all[i].id);
    expect(t0 < t1 || (t0 === t1 && s0 < s1)).toBe(true);
  }

  // Filters and cursor paging give the same events as one read.
  const filtered = (await kt.api('GET', `/v1/audit?credential=${id}&limit=1000`)).body.events as any[];
  expect(filtered.every((e) => e.credential === id)).toBe(true);
  const paged: any[] = [];
  let cursor: string | null = null;
  do {
    const page: any = (
      await kt.api('GET', `/v1/audit?credential=${id}&limit=2${cursor ? `&cursor=${cursor}` : ''}`)
    ).body;
    paged.push(...page.events);
    cursor = page.next;
  } while (cursor);
  expect(paged.map((e) => e.id)).toEqual(filtered.map((e) => e.id));
  const none = await kt.api('GET', `/v1/audit?until=${since}&credential=${id}`);
  expect(none.body.events).toEqual([]);
});
