// Rekey (issue 17 §1) with the env key provider: a store sealed under master key A is moved to key B while secrets
// are read and credentials rotate; once it ends, Keyturn started with B alone opens everything. A value no configured
// key opens is listed and fails the rekey after every other value moved. Admin only; audited.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { masterKeyId } from '../../src/keys/index.ts';
import { runCli } from '../support/cli.ts';
import {
  adminPasswordOf,
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  testKeys,
  testRedis,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';

const keyA = randomBytes(32);
const keyB = randomBytes(32);
const kidA = `env:${masterKeyId(keyA)}`;
const kidB = `env:${masterKeyId(keyB)}`;
const base = testEnv({ KEYTURN_MASTER_KEY: keyA.toString('base64') });
/** The same namespace started with other key settings (a restart with a new configuration). */
const withKeys = (vars: Record<string, string | undefined>) => {
  const env = { ...base.env, ...vars };
  for (const [k, v] of Object.entries(vars)) if (v === undefined) delete env[k];
  return { ...base, env: env as Record<string, string> };
};

let kt: Keyturn;
let connection = '';
const creds: Array<{ id: string; role: { name: string } }> = [];

async function secretOf(id: string): Promise<{ username: string; password: string }> {
  const res = await kt.api('GET', `/v1/credentials/${id}/secret`);
  expect(res.status, res.text).toBe(200);
  return res.body;
}

/** The real `keyturn` binary against this test's Keyturn, as the admin. */
const keyturnCli = (args: string[]) => runCli({ url: kt.url, token: base.adminToken }, args);

async function rekeyToEnd(): Promise<any> {
  return waitFor(
    'the rekey to end',
    async () => {
      const res = await kt.api('GET', '/v1/rekey');
      return res.body.rekey?.status !== 'running' ? res.body.rekey : undefined;
    },
    60_000,
  );
}

beforeAll(async () => {
  kt = await startKeyturn(base, { components: ['api', 'worker'] });
  connection = await registerPgConnection(kt);
  for (let i = 0; i < 4; i++) creds.push(await importCredential(kt, connection, { idPrefix: 'rk' }));
  // One rotation, so that some secrets have a current and a previous version.
  const rotated = await kt.api('POST', `/v1/credentials/${creds[0]!.id}/rotate`);
  expect((await waitForRotation(kt, rotated.body.rotationId)).status).toBe('succeeded');
  await kt.close();
});

afterAll(async () => {
  await kt?.close();
  await dropPrefix(base.prefix);
});

describe('rekey from one master key to another', () => {
  it('B primary with A still readable: reads work, GET /v1/rekey names both keys and no rekey yet', async () => {
    kt = await startKeyturn(
      withKeys({
        KEYTURN_MASTER_KEY: keyB.toString('base64'),
        KEYTURN_MASTER_KEY_PREVIOUS: keyA.toString('base64'),
      }),
      { components: ['api', 'worker'] },
    );
    for (const c of creds) expect(await canLogin(c.role.name, (await secretOf(c.id)).password)).toBe(true);
    const res = await kt.api('GET', '/v1/rekey');
    expect(res.status, res.text).toBe(200);
    expect(res.body.keyProviders.primary).toMatchObject({ provider: 'env', kid: kidB });
    expect(res.body.keyProviders.readable).toEqual([expect.objectContaining({ provider: 'env', kid: kidA })]);
    expect(res.body.rekey).toBeNull();
    expect(res.text).not.toContain(keyA.toString('base64'));
    expect(res.text).not.toContain(keyB.toString('base64'));
  });

  it('moves every value to B while secrets are read and a credential rotates, and says so in the audit trail', async () => {
    let reads = 0;
    let failures = 0;
    let reading = true;
    const readers = creds.map(async (c) => {
      while (reading) {
        const res = await kt.api('GET', `/v1/credentials/${c.id}/secret`);
        reads++;
        if (res.status !== 200) failures++;
      }
    });
    const rotation = await kt.api('POST', `/v1/credentials/${creds[1]!.id}/rotate`);
    expect(rotation.status, rotation.text).toBe(202);
    const started = await kt.api('POST', '/v1/rekey');
    expect(started.status, started.text).toBe(202);
    expect(started.body).toMatchObject({ status: 'running', created: true });
    const again = await kt.api('POST', '/v1/rekey');
    expect(again.body.rekeyId).toBe(started.body.rekeyId);

    const done = await rekeyToEnd();
    expect((await waitForRotation(kt, rotation.body.rotationId)).status).toBe('succeeded');
    reading = false;
    await Promise.all(readers);
    expect(failures).toBe(0);
    expect(reads).toBeGreaterThan(0);

    expect(done).toMatchObject({
      id: started.body.rekeyId,
      status: 'succeeded',
      to: kidB,
      unopenableCount: 0,
    });
    expect(done.before[kidA]).toBeGreaterThanOrEqual(creds.length + 1);
    expect(Object.keys(done.after)).toEqual([kidB]);
    expect(done.rewrapped + done.changed).toBeGreaterThanOrEqual(done.pending);
    expect(done.walks).toBeGreaterThanOrEqual(2);

    const audit = await kt.api('GET', '/v1/audit?limit=1000');
    const actions = (audit.body.events as Array<{ action: string; actor: string }>).filter((e) =>
      e.action.startsWith('kek.rekey.'),
    );
    expect(actions.map((e) => e.action)).toEqual(
      expect.arrayContaining(['kek.rekey.requested', 'kek.rekey.started', 'kek.rekey.finished']),
    );
    expect(actions.find((e) => e.action === 'kek.rekey.requested')?.actor).toBe('admin');
  });

  it('started with B alone, every secret and the admin password open, and a rotation works', async () => {
    await kt.close();
    kt = await startKeyturn(
      withKeys({ KEYTURN_MASTER_KEY: keyB.toString('base64'), KEYTURN_MASTER_KEY_PREVIOUS: undefined }),
      { components: ['api', 'worker'] },
    );
    for (const c of creds) expect(await canLogin(c.role.name, (await secretOf(c.id)).password)).toBe(true);
    const rotated = await kt.api('POST', `/v1/credentials/${creds[2]!.id}/rotate`);
    expect((await waitForRotation(kt, rotated.body.rotationId)).status).toBe('succeeded');
    expect(await adminPasswordOf({ ...base, masterKey: keyB.toString('base64') }, connection)).toBeTruthy();
  });

  it('a value no configured key opens is listed and fails the rekey; every other value still moves', async () => {
    await kt.close();
    const keyC = randomBytes(32);
    // A value sealed under C, which this Keyturn does not hold (as if written by a process with another key).
    const { LocalStore } = await import('../../src/stores/local-store.ts');
    const { envEnvelope } = await import('../../src/keys/index.ts');
    const redis = testRedis();
    const foreign = new LocalStore(redis, testKeys(base.prefix), envEnvelope(keyC));
    await foreign.putCurrent({ spec: { type: 'local' }, name: 'cred/ghost' }, 'ghost-version', {
      engine: 'postgres',
      host: '127.0.0.1',
      port: 5432,
      username: 'ghost',
      password: 'never-shown',
    });
    redis.disconnect();
    const keyD = randomBytes(32);
    kt = await startKeyturn(
      withKeys({
        KEYTURN_MASTER_KEY: keyD.toString('base64'),
        KEYTURN_MASTER_KEY_PREVIOUS: keyB.toString('base64'),
      }),
      { components: ['api', 'worker'] },
    );
    // Through the real CLI: it starts the rekey, follows it, and exits 1 naming what it could not open.
    const cli = await keyturnCli(['rekey']);
    expect(cli.code, cli.stderr).toBe(1);
    expect(cli.stderr).toMatch(/rekey [0-9a-f-]{36} started: every value moves to env:/);
    expect(cli.stderr).toMatch(/could not be opened by any configured key provider/);
    expect(cli.stdout).toMatch(/cannot open cred\/ghost version ghost-version \(key env:[0-9a-f]{16}\)/);
    expect(cli.stdout + cli.stderr).not.toContain('never-shown');
    const status = await keyturnCli(['rekey', 'status', '--json']);
    expect(status.code, status.stderr).toBe(0);
    const done = JSON.parse(status.stdout).rekey;
    expect(done.status).toBe('failed');
    expect(done.unopenableCount).toBe(1);
    expect(done.unopenable).toEqual([
      expect.objectContaining({
        secret: 'cred/ghost',
        version: 'ghost-version',
        kid: `env:${masterKeyId(keyC)}`,
      }),
    ]);
    expect(done.error).toMatch(/could not be opened by any configured key provider/);
    expect(done.after).toEqual({
      [`env:${masterKeyId(keyD)}`]: done.total - 1,
      [`env:${masterKeyId(keyC)}`]: 1,
    });
    expect(JSON.stringify(done)).not.toContain('never-shown');
    const audit = await kt.api('GET', '/v1/audit?action=kek.rekey.failed&limit=10');
    expect(audit.body.events).toHaveLength(1);
  });

  it('POST /v1/rekey takes no body: the key it moves to is the configured primary', async () => {
    const body = await kt.api('POST', '/v1/rekey', { to: 'elsewhere' });
    expect(body.status).toBe(400);
  });
});
