// Kubernetes Secret push (issue 13, part 3) end to end: rotations against the password-checking PostgreSQL, the
// sync job writing to the Kubernetes emulator (test/emulators/kubernetes.ts) through @kubernetes/client-node.
//   - after each rotation the Secret holds the new version (its password logs in) and the Deployment was restarted;
//   - single-user: the Secret switches at `set`, before the rotation finishes (a failpoint holds the test step);
//   - a 409 conflict and a 403 are handled and reported (audit event, metric), and the rotation still succeeds;
//   - no secret in the jobs, audit events or logs of the sync path.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type KubernetesEmulator, startKubernetesEmulator } from '../emulators/kubernetes.ts';
import {
  canLogin,
  createAppRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  type TestEnv,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { assertNoSecrets, monitorRedis, redisValues } from '../support/leaks.ts';

const NS = 'payments';
let k8s: KubernetesEmulator;
let env: TestEnv;
let kt: Keyturn;
let connection: string;
let monitor: Awaited<ReturnType<typeof monitorRedis>>;
/** Every password the Secrets held, for the leak check at the end. */
const seen = new Set<string>();

beforeAll(async () => {
  k8s = await startKubernetesEmulator();
  k8s.addNamespace(NS);
  k8s.grant(NS, 'secrets', ['get', 'create', 'update', 'patch']);
  k8s.grant(NS, 'deployments', ['get', 'patch']);
  k8s.addDeployment(NS, 'api');
  k8s.addDeployment(NS, 'worker');
  env = testEnv({ KUBECONFIG: k8s.kubeconfig, LOG_LEVEL: 'trace' });
  monitor = await monitorRedis(env.prefix);
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
});
afterAll(async () => {
  if (process.env.KT_DEBUG) for (const l of kt?.logs ?? []) if (/"level":[4-6]0/.test(l)) console.log(l);
  await kt?.close();
  monitor?.stop();
  await k8s?.close();
  if (env) await dropPrefix(env.prefix);
});

const restartedAt = (name: string): string | undefined =>
  k8s.deployment(NS, name)?.spec?.template?.metadata?.annotations?.['kubectl.kubernetes.io/restartedAt'];

async function secretAt(name: string, version: string) {
  return waitFor(`Secret ${NS}/${name} at version ${version}`, async () => {
    const s = k8s.secret(NS, name);
    return s?.metadata.annotations?.['keyturn.io/version'] === version ? s : undefined;
  });
}

async function auditOf(credential: string, action: string): Promise<any[]> {
  const res = await kt.api('GET', `/v1/audit?credential=${credential}&action=${action}&limit=1000`);
  expect(res.status).toBe(200);
  return res.body.events;
}

async function metric(line: RegExp): Promise<number> {
  const text = (await kt.api('GET', '/metrics')).text;
  const found = text.split('\n').find((l) => line.test(l));
  return found ? Number(found.split(' ').at(-1)) : 0;
}

describe('registration', () => {
  it('refuses bad sync entries with a 4xx naming the problem', async () => {
    const role = await createAppRole();
    const base = {
      id: `bad-${role.name}`,
      connection,
      username: role.name,
      strategy: 'single-user',
      schedule: { every: '30d' },
    };
    const cases: Array<[object, number, string]> = [
      [{ type: 'kubernetes', namespace: 'Payments', name: 's' }, 400, 'namespace'],
      [{ type: 'kubernetes', namespace: NS, name: 'bad_name' }, 400, 'name'],
      [{ type: 'kubernetes', namespace: NS, name: 's', keys: { pasword: 'X' } }, 400, 'pasword'],
      [{ type: 'kubernetes', namespace: NS, name: 's', keys: { password: 'has space' } }, 400, 'password'],
      [
        { type: 'kubernetes', namespace: NS, name: 's', rolloutRestart: ['statefulset/db'] },
        400,
        'rolloutRestart',
      ],
      [
        { type: 'kubernetes', namespace: NS, name: 's', keys: { username: 'K', password: 'K' } },
        422,
        'username and password are both written to key',
      ],
      [
        { type: 'kubernetes', namespace: NS, name: 's', keys: { username: 'U' } },
        422,
        'must name a key for password',
      ],
    ];
    for (const [entry, status, words] of cases) {
      const res = await kt.api('POST', '/v1/credentials', { ...base, sync: [entry] });
      expect(res.status, `${JSON.stringify(entry)}: ${res.text}`).toBe(status);
      expect(res.text, JSON.stringify(entry)).toContain(words);
    }
    const twice = await kt.api('POST', '/v1/credentials', {
      ...base,
      sync: [
        { type: 'kubernetes', namespace: NS, name: 's' },
        { type: 'kubernetes', namespace: NS, name: 's' },
      ],
    });
    expect(twice.status).toBe(422);
    expect(twice.text).toContain('named twice');
  });

  it('a process without Kubernetes configuration refuses a sync at registration (422)', async () => {
    const other = testEnv();
    const bare = await startKeyturn(other, { components: ['api'] });
    try {
      const conn = await registerPgConnection(bare);
      const role = await createAppRole();
      const res = await bare.api('POST', '/v1/credentials', {
        id: `nok8s-${role.name}`,
        connection: conn,
        username: role.name,
        strategy: 'single-user',
        schedule: { every: '30d' },
        sync: [{ type: 'kubernetes', namespace: NS, name: 's' }],
      });
      expect(res.status).toBe(422);
      expect(res.body.error.message).toContain('no Kubernetes configuration');
    } finally {
      await bare.close();
      await dropPrefix(other.prefix);
    }
  });
});

describe('alternating-users', () => {
  it('after each rotation the Secret holds the new version, which logs in, and the Deployments restarted', async () => {
    const role = await createAppRole();
    const id = `alt-${role.name}`;
    const created = await kt.api('POST', '/v1/credentials', {
      id,
      connection,
      username: role.name,
      strategy: 'alternating-users',
      schedule: { every: '30d' },
      sync: [
        {
          type: 'kubernetes',
          namespace: NS,
          name: 'orders-db',
          keys: { username: 'PGUSER', password: 'PGPASSWORD', host: 'PGHOST', port: 'PGPORT' },
          rolloutRestart: ['deployment/api', 'deployment/worker'],
        },
      ],
    });
    expect(created.status).toBe(201);
    expect(created.body.sync).toHaveLength(1);
    let rotationId: string = created.body.rotation.id;
    expect((await waitForRotation(kt, rotationId)).status).toBe('succeeded');
    let previousRestart: string | undefined;
    const users = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const secret = await secretAt('orders-db', rotationId);
      const { PGUSER, PGPASSWORD, PGHOST, PGPORT } = secret.decoded;
      seen.add(PGPASSWORD as string);
      users.add(PGUSER as string);
      expect(Object.keys(secret.decoded).sort()).toEqual(['PGHOST', 'PGPASSWORD', 'PGPORT', 'PGUSER']);
      expect(PGHOST).toBeTruthy();
      expect(Number(PGPORT)).toBeGreaterThan(0);
      expect(await canLogin(PGUSER as string, PGPASSWORD as string)).toBe(true);
      expect(secret.metadata.labels['app.kubernetes.io/managed-by']).toBe('keyturn');
      expect(secret.metadata.annotations['keyturn.io/credential']).toBe(id);
      expect(Date.parse(secret.metadata.annotations['keyturn.io/rotated-at'])).toBeGreaterThan(0);
      // The restart follows the write, so wait for it rather than read it at once.
      const restart = await waitFor('the restart of deployment/api', async () => {
        const at = restartedAt('api');
        return at &&
          at !== previousRestart &&
          Date.parse(at) >= Date.parse(secret.metadata.annotations['keyturn.io/synced-at'])
          ? at
          : undefined;
      });
      expect(restartedAt('worker')).toBeTruthy();
      previousRestart = restart;
      const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
      rotationId = rotate.body.rotationId;
      expect((await waitForRotation(kt, rotationId)).status).toBe('succeeded');
    }
    // Both users of the pair went through the Secret.
    expect(users.size).toBe(2);
    const synced = await auditOf(id, 'credential.synced');
    expect(synced.length).toBeGreaterThanOrEqual(4);
    expect(synced[0].details).toMatchObject({ type: 'kubernetes', namespace: NS, name: 'orders-db' });
    expect(
      await metric(/^keyturn_sync_total\{type="kubernetes",result="(created|replaced)"\}/),
    ).toBeGreaterThan(0);
  });
});

describe('single-user: the Secret switches at set', () => {
  const slowEnv = () =>
    testEnv({ KUBECONFIG: k8s.kubeconfig, KEYTURN_FAILPOINTS: 'before-test=sleep:8000', LOG_LEVEL: 'trace' });
  let slow: Keyturn;
  let slowPrefix: string;
  beforeAll(async () => {
    const e = slowEnv();
    slowPrefix = e.prefix;
    slow = await startKeyturn(e, { components: ['api', 'worker'] });
  });
  afterAll(async () => {
    await slow?.close();
    if (slowPrefix) await dropPrefix(slowPrefix);
  });

  it('holds the pending version while the rotation is still testing, and its password logs in', async () => {
    const conn = await registerPgConnection(slow);
    const imported = await importCredential(slow, conn, {
      strategy: 'single-user',
      extra: { sync: [{ type: 'kubernetes', namespace: NS, name: 'single-db' }] },
    });
    seen.add(imported.password);
    // The import itself is pushed.
    const before = await waitFor('the imported version in the Secret', async () =>
      k8s.secret(NS, 'single-db'),
    );
    expect(before.decoded.password).toBe(imported.password);
    const rotate = await slow.api('POST', `/v1/credentials/${imported.id}/rotate`);
    const rotationId: string = rotate.body.rotationId;
    // The failpoint holds the rotation before its test step; the Secret must already hold the new password.
    const switched = await secretAt('single-db', rotationId);
    const during = await slow.api('GET', `/v1/rotations/${rotationId}`);
    expect(during.body.status).toBe('running');
    expect(during.body.step).toBe('test');
    seen.add(switched.decoded.password as string);
    expect(switched.decoded.password).not.toBe(imported.password);
    expect(await canLogin(imported.role.name, switched.decoded.password as string)).toBe(true);
    expect(await canLogin(imported.role.name, imported.password)).toBe(false);
    expect((await waitForRotation(slow, rotationId)).status).toBe('succeeded');
    // The finish pushes the same version again: nothing changes.
    const after = k8s.secret(NS, 'single-db');
    expect(after?.metadata.annotations['keyturn.io/version']).toBe(rotationId);
    expect(after?.decoded.password).toBe(switched.decoded.password);
  });
});

describe('failures are handled, reported, and never undo the rotation', () => {
  it('a 409 conflict (the Secret changed between read and write) is resolved by reading again', async () => {
    const imported = await importCredential(kt, connection, {
      extra: { sync: [{ type: 'kubernetes', namespace: NS, name: 'raced-db' }] },
    });
    seen.add(imported.password);
    await waitFor('the imported version in the Secret', async () => k8s.secret(NS, 'raced-db'));
    const conflictsBefore = await metric(/^keyturn_sync_conflicts_total\{type="kubernetes"\}/);
    k8s.interfereAfterRead(NS, 'raced-db', (s) => {
      s.metadata.annotations = { ...s.metadata.annotations, 'someone-else': 'touched it' };
    });
    const rotate = await kt.api('POST', `/v1/credentials/${imported.id}/rotate`);
    expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
    const secret = await secretAt('raced-db', rotate.body.rotationId);
    seen.add(secret.decoded.password as string);
    expect(await canLogin(imported.role.name, secret.decoded.password as string)).toBe(true);
    // The other writer's change was read again, not overwritten blindly.
    expect(secret.metadata.annotations['someone-else']).toBe('touched it');
    const conflicted = k8s.requests.filter(
      (r) => r.method === 'PUT' && r.path.endsWith('/raced-db') && r.status === 409,
    );
    expect(conflicted.length).toBeGreaterThanOrEqual(1);
    const synced = await auditOf(imported.id, 'credential.synced');
    expect(synced.some((e) => e.details.conflicts >= 1 && e.details.version === rotate.body.rotationId)).toBe(
      true,
    );
    expect(await metric(/^keyturn_sync_conflicts_total\{type="kubernetes"\}/)).toBeGreaterThan(
      conflictsBefore,
    );
  });

  it('a 403 (RBAC removed) is reported once with what to grant, retried, and lands once RBAC is back', async () => {
    const imported = await importCredential(kt, connection, {
      extra: { sync: [{ type: 'kubernetes', namespace: NS, name: 'denied-db' }] },
    });
    seen.add(imported.password);
    await waitFor('the imported version in the Secret', async () => k8s.secret(NS, 'denied-db'));
    k8s.revoke(NS, 'secrets', ['get', 'update']);
    try {
      const rotate = await kt.api('POST', `/v1/credentials/${imported.id}/rotate`);
      const rotation = await waitForRotation(kt, rotate.body.rotationId);
      expect(rotation.status).toBe('succeeded');
      const failed = await waitFor('credential.sync_failed', async () => {
        const events = await auditOf(imported.id, 'credential.sync_failed');
        return events.length > 0 ? events : undefined;
      });
      expect(failed[0].details).toMatchObject({
        reason: 'forbidden',
        namespace: NS,
        name: 'denied-db',
        retrying: true,
      });
      expect(failed[0].details.error).toContain('needs "get" on "secrets" in namespace "payments"');
      expect(await metric(/^keyturn_sync_total\{type="kubernetes",result="forbidden"\}/)).toBeGreaterThan(0);
      // The rotation stands: the new password works downstream, the Secret still holds the old one.
      const secret = (await kt.api('GET', `/v1/credentials/${imported.id}/secret`)).body;
      seen.add(secret.password);
      expect(await canLogin(imported.role.name, secret.password)).toBe(true);
      expect(k8s.secret(NS, 'denied-db')?.metadata.annotations['keyturn.io/version']).not.toBe(
        rotate.body.rotationId,
      );
      // Wait for a retry to be refused too, then give the rights back: a later retry lands.
      await waitFor(
        'a retried push',
        async () => k8s.requests.filter((r) => r.path.endsWith('/denied-db') && r.status === 403).length >= 2,
      );
      k8s.grant(NS, 'secrets', ['get', 'update']);
      const landed = await secretAt('denied-db', rotate.body.rotationId);
      expect(landed.decoded.password).toBe(secret.password);
      // Reported once per failing sync, however many attempts failed.
      expect(await auditOf(imported.id, 'credential.sync_failed')).toHaveLength(1);
      expect(
        (await auditOf(imported.id, 'credential.synced')).some(
          (e) => e.details.version === rotate.body.rotationId,
        ),
      ).toBe(true);
    } finally {
      k8s.grant(NS, 'secrets', ['get', 'update']);
    }
  });

  it('a missing Deployment is reported as such, and the Secret is still written', async () => {
    const imported = await importCredential(kt, connection, {
      extra: {
        sync: [
          { type: 'kubernetes', namespace: NS, name: 'nodeploy-db', rolloutRestart: ['deployment/gone'] },
        ],
      },
    });
    seen.add(imported.password);
    const failed = await waitFor('credential.sync_failed', async () => {
      const events = await auditOf(imported.id, 'credential.sync_failed');
      return events.length > 0 ? events : undefined;
    });
    expect(failed[0].details).toMatchObject({ reason: 'not-found' });
    expect(failed[0].details.error).toContain(`Deployment ${NS}/gone does not exist`);
    expect(k8s.secret(NS, 'nodeploy-db')?.decoded.password).toBe(imported.password);
  });
});

describe('no secret leaks on the sync path', () => {
  it('no password in sync jobs, audit events, Redis or logs', async () => {
    expect(seen.size).toBeGreaterThan(5);
    const audit = await kt.api('GET', '/v1/audit?limit=1000');
    const syncEvents = audit.body.events.filter((e: { action: string }) =>
      e.action.startsWith('credential.sync'),
    );
    expect(syncEvents.length).toBeGreaterThan(3);
    const syncCommands = monitor.commands.filter((c) => c.includes(':sync:'));
    expect(syncCommands.length).toBeGreaterThan(3);
    const logs = kt.logs.filter((l) => l.includes('"component":"sync"'));
    expect(logs.length).toBeGreaterThan(3);
    assertNoSecrets(seen, [
      ['log', kt.logs],
      ['audit events', [JSON.stringify(audit.body.events)]],
      ['Redis commands (sync job payloads included)', monitor.commands],
      ['Redis values', await redisValues(env.prefix)],
    ]);
  });
});
