// I5: during a full run (register, rotate both strategies, import, a wrong import, a failing downstream, a grace
// revocation, secret reads) every log line, audit event, job payload, Redis command and Redis value is captured,
// and no secret value appears in any of them.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startAwsSecretsManagerEmulator } from '../emulators/aws-secrets-manager.ts';
import { startVaultEmulator } from '../emulators/vault.ts';
import {
  createAppRole,
  dropPrefix,
  type Keyturn,
  pgAdmin,
  pgInfo,
  registerPgConnection,
  spawnWorker,
  startKeyturn,
  testEnv,
  type WorkerProcess,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { assertNoSecrets, monitorRedis, redisValues } from '../support/leaks.ts';

// The secrets also live in Vault and AWS (emulators) for some credentials: their access tokens are secrets too.
const vault = await startVaultEmulator();
const aws = await startAwsSecretsManagerEmulator();
const env = testEnv({
  LOG_LEVEL: 'trace',
  VAULT_ADDR: vault.url,
  VAULT_TOKEN: vault.rootToken,
  AWS_ENDPOINT_URL: aws.endpoint,
  AWS_REGION: aws.region,
  AWS_ACCESS_KEY_ID: aws.credentials.accessKeyId,
  AWS_SECRET_ACCESS_KEY: aws.credentials.secretAccessKey,
});
let kt: Keyturn;
let monitor: Awaited<ReturnType<typeof monitorRedis>>;
let worker: WorkerProcess;

beforeAll(async () => {
  monitor = await monitorRedis(env.prefix);
  kt = await startKeyturn(env, { components: ['api'] });
  worker = spawnWorker(env);
});
afterAll(async () => {
  await worker?.kill();
  await kt?.close();
  await Promise.all([vault.close(), aws.close()]);
  monitor?.stop();
  await dropPrefix(env.prefix);
});

it('no secret value reaches logs, audit events, job payloads or Redis', async () => {
  const secrets = new Set<string>([
    pgInfo().adminPassword,
    env.adminToken,
    env.masterKey,
    // The audit signing key's material (the PEM's base64 line; the worker signs checkpoints during this run).
    env.env.KEYTURN_AUDIT_SIGNING_KEY!.split('\n')[1]!,
    vault.rootToken,
    aws.credentials.secretAccessKey,
  ]);
  const connection = await registerPgConnection(kt);

  // Rotations of both strategies, with secret reads after each; and one credential kept in each remote store.
  const single = await createAppRole();
  const alt = await createAppRole();
  const inVault = await createAppRole();
  const inAws = await createAppRole();
  for (const [id, role, strategy, store] of [
    [`leak-single-${single.name}`, single, 'single-user', undefined],
    [`leak-alt-${alt.name}`, alt, 'alternating-users', undefined],
    [
      `leak-vault-${inVault.name}`,
      inVault,
      'single-user',
      { type: 'vault', mount: 'secret', path: `leak/${inVault.name}` },
    ],
    [`leak-aws-${inAws.name}`, inAws, 'alternating-users', { type: 'aws', secretId: `leak/${inAws.name}` }],
  ] as const) {
    const created = await kt.api('POST', '/v1/credentials', {
      id,
      connection,
      username: role.name,
      ...(store ? { store } : {}),
      strategy,
      schedule: { cron: '0 3 * * 1', timezone: 'Europe/London' },
      ...(strategy === 'alternating-users' && !store ? { gracePeriod: '1s' } : {}),
    });
    expect(created.status).toBe(201);
    expect((await waitForRotation(kt, created.body.rotation.id)).status).toBe('succeeded');
    secrets.add((await kt.api('GET', `/v1/credentials/${id}/secret`)).body.password);
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
    secrets.add((await kt.api('GET', `/v1/credentials/${id}/secret`)).body.password);
  }
  await waitFor('the grace revocation', async () => {
    const r = await kt.api('GET', '/v1/audit?action=credential.previous_revoked');
    return r.body.events.length === 1;
  });

  // An import, and an import with a wrong password (PostgreSQL refuses it; the error must not echo it).
  const imported = await createAppRole();
  const importPassword = randomBytes(18).toString('base64url');
  const wrongPassword = randomBytes(18).toString('base64url');
  secrets.add(importPassword).add(wrongPassword);
  await pgAdmin((c) => c.query(`ALTER ROLE "${imported.name}" PASSWORD '${importPassword}'`));
  const body = {
    connection,
    username: imported.name,
    strategy: 'single-user',
    schedule: { every: '30d' },
    import: true,
  };
  const wrong = await kt.api('POST', '/v1/credentials', {
    ...body,
    id: `leak-wrong-${imported.name}`,
    currentPassword: wrongPassword,
  });
  expect(wrong.status).toBe(422);
  const ok = await kt.api('POST', '/v1/credentials', {
    ...body,
    id: `leak-imp-${imported.name}`,
    currentPassword: importPassword,
  });
  expect(ok.status).toBe(201);

  // A downstream that refuses the admin login: the driver's error is stored in the rotation record.
  const badAdminPassword = randomBytes(18).toString('base64url');
  secrets.add(badAdminPassword);
  const info = pgInfo();
  const badConn = await kt.api('POST', '/v1/connections', {
    id: `leak-badadmin-${imported.name}`,
    type: 'postgres',
    host: info.host,
    port: info.port,
    database: info.database,
    admin: { username: info.adminUser, password: badAdminPassword },
    verify: false, // the rotation must reach the downstream to fail there
  });
  expect(badConn.status).toBe(201);
  const failing = await kt.api('POST', '/v1/credentials', {
    id: `leak-fail-${imported.name}`,
    connection: badConn.body.id,
    username: imported.name,
    strategy: 'single-user',
    schedule: { every: '30d' },
  });
  const failed = await waitForRotation(kt, failing.body.rotation.id);
  expect(failed.status).toBe('failed');
  expect(failed.error.message).toMatch(/password authentication failed/);

  // Collect everything written.
  const audit = await kt.api('GET', '/v1/audit?limit=1000');
  expect(audit.body.events.length).toBeGreaterThan(20);
  const values = await redisValues(env.prefix);
  const readable = [
    ['API log', kt.logs],
    ['worker log', worker.output],
    ['audit events', [JSON.stringify(audit.body.events)]],
    ['Redis commands (job payloads included)', monitor.commands],
    ['Redis values', values],
    ['rotation records', [JSON.stringify(failed)]],
  ] as const;
  // The capture must have seen real traffic, or the check below proves nothing.
  expect(kt.logs.length).toBeGreaterThan(20);
  expect(worker.output.length).toBeGreaterThan(5);
  expect(monitor.commands.some((c) => c.includes('rotate-'))).toBe(true);
  expect(values.length).toBeGreaterThan(10);

  assertNoSecrets(secrets, readable);
});
