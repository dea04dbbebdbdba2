// I5 for every downstream target beyond PostgreSQL: rotations of both strategies, secret reads, an import, a
// refused import and a failing connection (wrong admin secret), with every log line, audit event, Redis command
// and Redis value captured; no password, admin secret or signing key appears in any of it. AWS IAM, whose secrets AWS
// makes, has its own flow at the end.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type IamWorld, iamSkipReason, startIamWorld } from '../support/aws-iam.ts';
import {
  adminPasswordOf,
  dropPrefix,
  type Keyturn,
  spawnWorker,
  startKeyturn,
  testEnv,
  type WorkerProcess,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { assertNoSecrets, monitorRedis, redisValues } from '../support/leaks.ts';
import { importTargetUser, TARGET_FIXTURES, type TargetFixture } from '../support/targets.ts';

const plan = await Promise.all(
  TARGET_FIXTURES.map(async (f) => ({ fixture: f, skip: await f.skipReason() })),
);
for (const { fixture, skip } of plan)
  if (skip) console.warn(`skipping the leak test on ${fixture.name}: ${skip}`);

for (const { fixture, skip } of plan) {
  describe.skipIf(Boolean(skip))(`no secret leaks with a ${fixture.name} downstream`, () => {
    const env = testEnv({ LOG_LEVEL: 'trace' });
    let kt: Keyturn;
    let worker: WorkerProcess;
    let target: Awaited<ReturnType<TargetFixture['start']>>;
    let monitor: Awaited<ReturnType<typeof monitorRedis>>;

    beforeAll(async () => {
      monitor = await monitorRedis(env.prefix);
      target = await fixture.start();
      kt = await startKeyturn(env, { components: ['api'] });
      worker = spawnWorker(env);
    });
    afterAll(async () => {
      await worker?.kill();
      await kt?.close();
      await target?.stop();
      monitor?.stop();
      await dropPrefix(env.prefix);
    });

    it('writes no secret anywhere', async () => {
      const secrets = new Set<string>([...target.secrets, env.adminToken, env.masterKey]);
      const good = await kt.api('POST', '/v1/connections', { id: 'good', ...target.connection });
      expect(good.status).toBe(201);
      // The same downstream with a wrong admin secret: its rotations fail, and the driver's errors are stored.
      const wrongAdmin = randomBytes(24).toString('base64url');
      secrets.add(wrongAdmin);
      const admin = target.connection.admin as { username: string };
      const wrongConnection = {
        id: 'bad',
        ...target.connection,
        admin: { username: admin.username, password: wrongAdmin },
      };
      // verify (the default) logs in with it and refuses it: its answer is one more path a secret could take.
      const refusedByVerify = await kt.api('POST', '/v1/connections', wrongConnection);
      expect(refusedByVerify.status, refusedByVerify.text).toBe(422);
      const bad = await kt.api('POST', '/v1/connections', { ...wrongConnection, verify: false });
      expect(bad.status).toBe(201);

      const rotated: string[] = [];
      for (const strategy of ['single-user', 'alternating-users'] as const) {
        const user = await target.createUser();
        secrets.add(user.password);
        const id = await importTargetUser(kt, 'good', user, strategy, `leak-${strategy}`);
        rotated.push(id);
        for (let i = 0; i < 2; i++) {
          const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
          expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
          secrets.add((await kt.api('GET', `/v1/credentials/${id}/secret`)).body.password);
        }
      }
      // The admin's own rotation (all but the webhook, whose admin is a shared key): its new password is one more
      // secret, and the credential rotation after it logs in with it.
      if (target.connection.type !== 'webhook') {
        const adminRotation = await kt.api('POST', '/v1/connections/good/rotate');
        expect(adminRotation.status, adminRotation.text).toBe(202);
        expect((await waitForRotation(kt, adminRotation.body.rotationId)).status).toBe('succeeded');
        secrets.add(await adminPasswordOf(env, 'good'));
        const after = await kt.api('POST', `/v1/credentials/${rotated[0]}/rotate`);
        expect((await waitForRotation(kt, after.body.rotationId)).status).toBe('succeeded');
        secrets.add((await kt.api('GET', `/v1/credentials/${rotated[0]}/secret`)).body.password);
      }
      const refused = await target.createUser();
      const wrongPassword = randomBytes(18).toString('base64url');
      secrets.add(refused.password).add(wrongPassword);
      const wrongImport = await kt.api('POST', '/v1/credentials', {
        id: 'leak-wrong-import',
        connection: 'good',
        username: refused.username,
        strategy: 'single-user',
        schedule: { every: '30d' },
        import: true,
        currentPassword: wrongPassword,
      });
      expect(wrongImport.status).toBe(422);
      const failing = await kt.api('POST', '/v1/credentials', {
        id: 'leak-failing',
        connection: 'bad',
        username: refused.username,
        strategy: 'single-user',
        schedule: { every: '30d' },
      });
      const failed = await waitForRotation(kt, failing.body.rotation.id);
      expect(failed.status).toBe('failed');
      // Dry runs read the current secret and log in with it and the admin's: their checks carry neither.
      const dryRuns = await Promise.all(
        [rotated[0], 'leak-failing'].map(async (id) => {
          const res = await kt.api('POST', `/v1/credentials/${id}/rotate?dryRun=true`);
          expect(res.status, res.text).toBe(200);
          return res.text;
        }),
      );
      expect(JSON.parse(dryRuns[0] as string).ok).toBe(true);
      expect(JSON.parse(dryRuns[1] as string).ok).toBe(false);

      const audit = await kt.api('GET', '/v1/audit?limit=1000');
      const values = await redisValues(env.prefix);
      expect(kt.logs.length).toBeGreaterThan(10);
      expect(monitor.commands.length).toBeGreaterThan(10);
      assertNoSecrets(secrets, [
        ['API log', kt.logs],
        ['worker log', worker.output],
        ['audit events', [JSON.stringify(audit.body.events)]],
        ['Redis commands (job payloads included)', monitor.commands],
        ['Redis values', values],
        ['API answers', [wrongImport.text, JSON.stringify(failed), refusedByVerify.text, ...dryRuns]],
      ]);
    });
  });
}

// AWS IAM access keys: AWS makes each secret, so the paths differ (no import, the key made in the set step and stored
// at once, a key made but never stored deleted by the retry, keys deactivated after the grace period), and each is
// one more way a secret could reach a log, an event, Redis or an answer. The emulator says every secret it issued,
// the orphan's too, which no answer ever carries.
const iamSkip = iamSkipReason();
if (iamSkip) console.warn(`skipping the leak test on AWS IAM: ${iamSkip}`);

describe.skipIf(Boolean(iamSkip))('no secret leaks with an AWS IAM downstream', () => {
  const env = testEnv({ LOG_LEVEL: 'trace' });
  let kt: Keyturn;
  let worker: WorkerProcess;
  let world: IamWorld;
  let monitor: Awaited<ReturnType<typeof monitorRedis>>;

  beforeAll(async () => {
    monitor = await monitorRedis(env.prefix);
    world = await startIamWorld({ propagationMs: 500 });
    kt = await startKeyturn(env, { components: ['api'] });
    // The worker's first set attempt fails right after a key was made and before it was stored: the retry deletes it.
    worker = spawnWorker(env, { KEYTURN_FAILPOINTS: 'set-after-mint=throw:1' });
  });
  afterAll(async () => {
    await worker?.kill();
    await kt?.close();
    await world?.stop();
    monitor?.stop();
    await dropPrefix(env.prefix);
  });

  it('writes no secret anywhere', async () => {
    const good = await kt.api('POST', '/v1/connections', { id: 'good', ...world.connection });
    expect(good.status, good.text).toBe(201);
    const wrongAdmin = randomBytes(30).toString('base64');
    const wrongConnection = {
      id: 'bad',
      ...world.connection,
      admin: { username: world.connection.admin.username, password: wrongAdmin },
    };
    const refusedByVerify = await kt.api('POST', '/v1/connections', wrongConnection);
    expect(refusedByVerify.status, refusedByVerify.text).toBe(422);
    expect((await kt.api('POST', '/v1/connections', { ...wrongConnection, verify: false })).status).toBe(201);

    const user = await world.createUser();
    const refusedImport = await kt.api('POST', '/v1/credentials', {
      id: 'leak-iam-import',
      connection: 'good',
      username: user.username,
      strategy: 'single-user',
      schedule: { every: '30d' },
      import: true,
      currentPassword: user.secret,
    });
    expect(refusedImport.status).toBe(422);
    const created = await kt.api('POST', '/v1/credentials', {
      id: 'leak-iam',
      connection: 'good',
      username: user.username,
      strategy: 'single-user',
      schedule: { every: '30d' },
      gracePeriod: '1s',
    });
    expect(created.status, created.text).toBe(201);
    expect((await waitForRotation(kt, created.body.rotation.id)).status).toBe('succeeded');
    // A second rotation with the user's own key still there: refused, naming that key (its id, never its secret).
    const full = await kt.api('POST', '/v1/credentials/leak-iam/rotate');
    const refused = await waitForRotation(kt, full.body.rotationId);
    expect(refused.status).toBe('failed');
    const dryFull = await kt.api('POST', '/v1/credentials/leak-iam/rotate?dryRun=true');
    expect(dryFull.body.ok).toBe(false);
    await world.deleteKey(user.username, user.keyId);
    const reads: string[] = [];
    for (let i = 0; i < 2; i++) {
      const rotate = await kt.api('POST', '/v1/credentials/leak-iam/rotate');
      expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
      reads.push((await kt.api('GET', '/v1/credentials/leak-iam/secret')).text);
    }
    // The grace period's revocation (a deactivation) runs in the worker.
    await waitFor('the previous key to be deactivated after the grace period', async () =>
      (await world.keysOf(user.username)).some((k) => !k.active),
    );
    const failing = await kt.api('POST', '/v1/credentials', {
      id: 'leak-iam-failing',
      connection: 'bad',
      username: user.username,
      strategy: 'single-user',
      schedule: { every: '30d' },
    });
    expect((await waitForRotation(kt, failing.body.rotation.id)).status).toBe('failed');
    const dryRuns = await Promise.all(
      ['leak-iam', 'leak-iam-failing'].map(
        async (id) => (await kt.api('POST', `/v1/credentials/${id}/rotate?dryRun=true`)).text,
      ),
    );
    expect(JSON.parse(dryRuns[0] as string).ok).toBe(true);

    const secrets = new Set<string>([
      ...world.secrets,
      ...(world.emulator?.issuedSecrets() ?? []),
      wrongAdmin,
      env.adminToken,
      env.masterKey,
    ]);
    for (const read of reads) secrets.add(JSON.parse(read).secretAccessKey);
    expect(world.emulator ? world.emulator.issuedSecrets().length : 5).toBeGreaterThanOrEqual(5);
    const audit = await kt.api('GET', '/v1/audit?limit=1000');
    const rotations = await Promise.all(
      [created.body.rotation.id, full.body.rotationId, failing.body.rotation.id].map(
        async (id) => (await kt.api('GET', `/v1/rotations/${id}`)).text,
      ),
    );
    assertNoSecrets(secrets, [
      ['API log', kt.logs],
      ['worker log', worker.output],
      ['audit events', [JSON.stringify(audit.body.events)]],
      ['Redis commands (job payloads included)', monitor.commands],
      ['Redis values', await redisValues(env.prefix)],
      ['API answers', [refusedByVerify.text, refusedImport.text, dryFull.text, ...dryRuns, ...rotations]],
    ]);
  });
});
