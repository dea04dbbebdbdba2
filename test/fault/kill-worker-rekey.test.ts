// A rekey survives the death of its worker (issue 17 §1): SIGKILLed in the middle of its walk (from outside, while
// it is slowed by a failpoint), and killing itself right after a rewrapped value was written and before its status
// was saved. Each time another worker takes the stalled job up and finishes it; every value then opens with the
// new key alone and is unchanged, and the secret reads of real credentials never fail meanwhile.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { envEnvelope, masterKeyId } from '../../src/keys/index.ts';
import { LocalStore } from '../../src/stores/local-store.ts';
import type { SecretDocument } from '../../src/stores/types.ts';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  spawnWorker,
  startKeyturn,
  testEnv,
  testKeys,
  testRedis,
  type WorkerProcess,
  waitFor,
} from '../support/harness.ts';

const keys = [randomBytes(32), randomBytes(32), randomBytes(32)] as const;
const b64 = (k: Buffer) => k.toString('base64');
const kid = (k: Buffer) => `env:${masterKeyId(k)}`;
const env = testEnv({ KEYTURN_MASTER_KEY: b64(keys[0]) });
/** The environment of a process whose primary key is keys[i], the one before it still readable. */
const keyVars = (i: 1 | 2) => ({
  KEYTURN_MASTER_KEY: b64(keys[i]),
  KEYTURN_MASTER_KEY_PREVIOUS: b64(keys[i - 1]!),
});
const BULK = 120;
const bulk = new Map<string, SecretDocument>();

let kt: Keyturn;
const workers: WorkerProcess[] = [];
const creds: Array<{ id: string; role: { name: string } }> = [];

async function status(): Promise<any> {
  return (await kt.api('GET', '/v1/rekey')).body.rekey;
}

/** Reads every credential's secret in a loop until stopped; answers how many reads failed. */
function readLoop(): { stop(): Promise<{ reads: number; failures: string[] }> } {
  let reading = true;
  let reads = 0;
  const failures: string[] = [];
  const loops = creds.map(async (c) => {
    while (reading) {
      const res = await kt.api('GET', `/v1/credentials/${c.id}/secret`);
      reads++;
      if (res.status !== 200) failures.push(`${res.status} ${res.text.slice(0, 200)}`);
      else if (reads % 25 === 0 && !(await canLogin(c.role.name, res.body.password)))
        failures.push(`${c.id}: the secret read no longer logs in`);
    }
  });
  return {
    async stop() {
      reading = false;
      await Promise.all(loops);
      return { reads, failures };
    },
  };
}

/** Every bulk value opens with `key` alone and is what was written. */
async function bulkOpensWith(key: Buffer): Promise<void> {
  const redis = testRedis();
  try {
    const store = new LocalStore(redis, testKeys(env.prefix), envEnvelope(key));
    for (const [name, value] of bulk) {
      const read = await store.read({ spec: { type: 'local' }, name }, { stage: 'current' });
      expect(read?.value).toEqual(value);
    }
  } finally {
    redis.disconnect();
  }
}

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api'] });
  const setup = spawnWorker(env);
  try {
    const connection = await registerPgConnection(kt);
    for (let i = 0; i < 2; i++) creds.push(await importCredential(kt, connection, { idPrefix: 'rkk' }));
  } finally {
    await setup.kill();
  }
  // Enough values that a walk takes a while: local secrets sealed under the first key, as a store of many
  // credentials holds them.
  const redis = testRedis();
  const store = new LocalStore(redis, testKeys(env.prefix), envEnvelope(keys[0]));
  for (let i = 0; i < BULK; i++) {
    const value: SecretDocument = {
      engine: 'postgres',
      host: '127.0.0.1',
      port: 5432,
      username: `bulk${i}`,
      password: randomBytes(12).toString('base64url'),
    };
    bulk.set(`cred/bulk-${i}`, value);
    await store.putCurrent({ spec: { type: 'local' }, name: `cred/bulk-${i}` }, `v-${i}`, value);
  }
  redis.disconnect();
  await kt.close();
}, 120_000);

afterAll(async () => {
  for (const w of workers) await w.kill();
  await kt?.close();
  await dropPrefix(env.prefix);
});

describe('SIGKILL during a rekey', () => {
  it('killed from outside mid-walk: another worker resumes it and it ends with every value on the new key', async () => {
    kt = await startKeyturn({ ...env, env: { ...env.env, ...keyVars(1) } }, { components: ['api'] });
    const slow = spawnWorker(env, { ...keyVars(1), KEYTURN_FAILPOINTS: 'rekey-before-rewrap=sleep:40' });
    workers.push(slow);
    const reads = readLoop();
    const started = await kt.api('POST', '/v1/rekey');
    expect(started.status, started.text).toBe(202);
    const midway = await waitFor(
      'the rekey to be part way',
      async () => {
        const s = await status();
        return s?.rewrapped >= 10 ? s : undefined;
      },
      60_000,
    );
    await slow.kill('SIGKILL');
    expect(midway.rewrapped).toBeLessThan(midway.pending);
    workers.push(spawnWorker(env, keyVars(1)));
    const done = await waitFor(
      'the rekey to end',
      async () => ((await status())?.status !== 'running' ? status() : undefined),
      90_000,
    );
    const { reads: n, failures } = await reads.stop();
    expect(failures).toEqual([]);
    expect(n).toBeGreaterThan(0);
    expect(done).toMatchObject({ status: 'succeeded', to: kid(keys[1]), unopenableCount: 0 });
    expect(done.resumed).toBeGreaterThanOrEqual(1);
    expect(Object.keys(done.after)).toEqual([kid(keys[1])]);
    expect(done.after[kid(keys[1])]).toBe(done.total);
    await bulkOpensWith(keys[1]);
    const audit = await kt.api('GET', '/v1/audit?action=kek.rekey.resumed&limit=10');
    expect(audit.body.events.length).toBeGreaterThanOrEqual(1);
  }, 180_000);

  it('killed right after a rewrapped value was written, before its status was saved: resumed and finished', async () => {
    for (const w of workers.splice(0)) await w.kill();
    await kt.close();
    kt = await startKeyturn({ ...env, env: { ...env.env, ...keyVars(2) } }, { components: ['api'] });
    const dying = spawnWorker(env, { ...keyVars(2), KEYTURN_FAILPOINTS: 'rekey-after-rewrap=kill' });
    const reads = readLoop();
    expect((await kt.api('POST', '/v1/rekey')).status).toBe(202);
    expect(await dying.exited).toBe('SIGKILL');
    workers.push(spawnWorker(env, keyVars(2)));
    const done = await waitFor(
      'the rekey to end',
      async () => ((await status())?.status !== 'running' ? status() : undefined),
      90_000,
    );
    const { failures } = await reads.stop();
    expect(failures).toEqual([]);
    expect(done).toMatchObject({ status: 'succeeded', to: kid(keys[2]), unopenableCount: 0 });
    expect(done.resumed).toBeGreaterThanOrEqual(1);
    expect(Object.keys(done.after)).toEqual([kid(keys[2])]);
    await bulkOpensWith(keys[2]);
  }, 180_000);
});
