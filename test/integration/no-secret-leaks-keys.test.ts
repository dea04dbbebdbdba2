// Key providers end to end (issue 17 §1), with every log line, audit event, Redis command and value, the rekey's
// status and the metrics captured: a store that starts on KEYTURN_MASTER_KEY is rekeyed to AWS KMS, runs on KMS
// alone (through a KMS outage), is rekeyed to Vault transit and runs on transit alone. No data key (in any of the
// three providers' hands), no master key, no AWS secret key and no Vault token appears in anything captured.
import { randomBytes } from 'node:crypto';
import { CreateKeyCommand, DecryptCommand, KMSClient } from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SealedValue } from '../../src/crypto/envelope.ts';
import { EnvKeyProvider } from '../../src/keys/index.ts';
import { startAwsKmsEmulator } from '../emulators/aws-kms.ts';
import { startVaultEmulator } from '../emulators/vault.ts';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  testRedis,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { assertNoSecrets, monitorRedis, redisValues } from '../support/leaks.ts';

const kms = await startAwsKmsEmulator();
const vault = await startVaultEmulator();
const kmsClient = new KMSClient({ endpoint: kms.endpoint, region: kms.region, credentials: kms.credentials });
const kmsKey = (await kmsClient.send(new CreateKeyCommand({ Description: 'keyturn kek' }))).KeyMetadata!.Arn!;
await fetch(`${vault.url}/v1/transit/keys/keyturn-kek`, {
  method: 'POST',
  headers: { 'x-vault-token': vault.rootToken, 'content-type': 'application/json' },
  body: JSON.stringify({ type: 'aes256-gcm96' }),
});
const masterKey = randomBytes(32);
const env = testEnv({ LOG_LEVEL: 'trace', KEYTURN_MASTER_KEY: masterKey.toString('base64') });
const KMS_VARS = {
  KEYTURN_KMS_KEY_ID: kmsKey,
  AWS_ENDPOINT_URL_KMS: kms.endpoint,
  AWS_REGION: kms.region,
  AWS_ACCESS_KEY_ID: kms.credentials.accessKeyId,
  AWS_SECRET_ACCESS_KEY: kms.credentials.secretAccessKey,
};
const TRANSIT_VARS = {
  VAULT_ADDR: vault.url,
  VAULT_TOKEN: vault.rootToken,
  KEYTURN_TRANSIT_KEY: 'keyturn-kek',
};

/** The namespace started with these key settings (KEYTURN_MASTER_KEY only where given). */
function withKeys(vars: Record<string, string>) {
  const { KEYTURN_MASTER_KEY: _, ...rest } = env.env;
  return { ...env, env: { ...rest, ...vars } };
}

let kt: Keyturn | undefined;
let monitor: Awaited<ReturnType<typeof monitorRedis>>;
const logs: string[] = [];
const answers: string[] = [];
const creds: Array<{ id: string; role: { name: string } }> = [];
/** Every data key seen in the store, base64: what must never appear anywhere captured. */
const dataKeys = new Set<string>();

async function start(vars: Record<string, string>): Promise<Keyturn> {
  if (kt) {
    logs.push(...kt.logs);
    await kt.close();
  }
  kt = await startKeyturn(withKeys(vars), { components: ['api', 'worker'] });
  return kt;
}

async function everySecretLogsIn(): Promise<void> {
  for (const c of creds) {
    const res = await kt!.api('GET', `/v1/credentials/${c.id}/secret`);
    expect(res.status, res.text).toBe(200);
    expect(await canLogin(c.role.name, res.body.password)).toBe(true);
  }
}

async function rekey(): Promise<any> {
  const started = await kt!.api('POST', '/v1/rekey');
  expect(started.status, started.text).toBe(202);
  answers.push(started.text);
  const done = await waitFor(
    'the rekey to end',
    async () => {
      const res = await kt!.api('GET', '/v1/rekey');
      answers.push(res.text);
      return res.body.rekey?.status !== 'running' ? res.body.rekey : undefined;
    },
    60_000,
  );
  expect(done.status, JSON.stringify(done)).toBe('succeeded');
  return done;
}

/** Unwraps every sealed value in Redis with the provider that holds it, and keeps its data key. */
async function collectDataKeys(): Promise<number> {
  const redis = testRedis();
  const env0 = new EnvKeyProvider(masterKey);
  let n = 0;
  try {
    const names = (await redis.keys(`${env.prefix}:secret:*`)).concat([`${env.prefix}:keyring`]);
    for (const key of names) {
      const fields = await redis.hgetall(key);
      for (const [field, raw] of Object.entries(fields)) {
        if (field === 'stages') continue;
        const { sealed } = JSON.parse(raw) as { sealed: SealedValue };
        const context = key.endsWith(':keyring')
          ? { secret: `keyring/${field}`, version: '1' }
          : { secret: key.slice(`${env.prefix}:secret:`.length), version: field.slice(2) };
        let dek: Buffer;
        if (sealed.v === 1 || sealed.kid.startsWith('env:')) {
          dek = await env0.unwrap(
            sealed.v === 1 ? `env:${sealed.kid}` : sealed.kid,
            sealed.v === 1 ? `v1.${sealed.dek.join('.')}` : sealed.dek,
            context,
          );
        } else if (sealed.kid.startsWith('aws-kms:')) {
          const out = await kmsClient.send(
            new DecryptCommand({
              CiphertextBlob: Buffer.from(sealed.dek, 'base64'),
              EncryptionContext: { 'keyturn:secret': context.secret, 'keyturn:version': context.version },
            }),
          );
          dek = Buffer.from(out.Plaintext!);
        } else {
          const res = await fetch(`${vault.url}/v1/transit/decrypt/keyturn-kek`, {
            method: 'POST',
            headers: { 'x-vault-token': vault.rootToken, 'content-type': 'application/json' },
            body: JSON.stringify({
              ciphertext: sealed.dek,
              associated_data: Buffer.from(
                `keyturn:dek:${sealed.kid}:${context.secret}:${context.version}`,
              ).toString('base64'),
            }),
          });
          dek = Buffer.from(((await res.json()) as { data: { plaintext: string } }).data.plaintext, 'base64');
        }
        expect(dek).toHaveLength(32);
        dataKeys.add(dek.toString('base64'));
        dataKeys.add(dek.toString('hex'));
        n++;
      }
    }
  } finally {
    redis.disconnect();
  }
  return n;
}

beforeAll(async () => {
  monitor = await monitorRedis(env.prefix);
  await start({ KEYTURN_MASTER_KEY: masterKey.toString('base64') });
  const connection = await registerPgConnection(kt!);
  for (let i = 0; i < 2; i++) creds.push(await importCredential(kt!, connection, { idPrefix: 'kp' }));
  const rotated = await kt!.api('POST', `/v1/credentials/${creds[0]!.id}/rotate`);
  expect((await waitForRotation(kt!, rotated.body.rotationId)).status).toBe('succeeded');
  expect(await collectDataKeys()).toBeGreaterThanOrEqual(4);
}, 120_000);

afterAll(async () => {
  if (kt) logs.push(...kt.logs);
  await kt?.close();
  monitor?.stop();
  kmsClient.destroy();
  await Promise.all([kms.close(), vault.close()]);
  await dropPrefix(env.prefix);
});

describe('from the env key to AWS KMS to Vault transit', () => {
  it('KMS primary with the env key still configured: reads work, and a rekey moves every value to KMS', async () => {
    await start({
      KEYTURN_KEK_PROVIDER: 'aws-kms',
      ...KMS_VARS,
      KEYTURN_MASTER_KEY: masterKey.toString('base64'),
    });
    await everySecretLogsIn();
    const done = await rekey();
    expect(Object.keys(done.after)).toEqual([`aws-kms:${kmsKey}`]);
    expect(done.before[new EnvKeyProvider(masterKey).kid]).toBeGreaterThan(0);
    expect(kms.callCount('Encrypt')).toBeGreaterThanOrEqual(done.rewrapped);
    await collectDataKeys();
  });

  it('on KMS alone: reads and a rotation work; reading again costs KMS no call (data keys cached)', async () => {
    await start({ KEYTURN_KEK_PROVIDER: 'aws-kms', ...KMS_VARS });
    await everySecretLogsIn();
    kms.resetCalls();
    for (let i = 0; i < 10; i++) await everySecretLogsIn();
    expect(kms.callCount('Decrypt')).toBe(0);
    const rotated = await kt!.api('POST', `/v1/credentials/${creds[1]!.id}/rotate`);
    expect((await waitForRotation(kt!, rotated.body.rotationId)).status).toBe('succeeded');
    expect(kms.callCount('GenerateDataKey')).toBeGreaterThan(0);
    await everySecretLogsIn();
    await collectDataKeys();
  });

  it('KMS away: a read that needs an unwrap answers 503 saying why, and works once KMS answers again', async () => {
    // A new process: nothing is cached yet.
    await start({ KEYTURN_KEK_PROVIDER: 'aws-kms', ...KMS_VARS });
    // Three failures: every attempt the KMS client makes for one read (KEYTURN's maxAttempts is 3).
    kms.failNext(3, 'KMSInternalException', (op) => op === 'Decrypt');
    const res = await kt!.api('GET', `/v1/credentials/${creds[0]!.id}/secret`);
    expect(res.status, res.text).toBe(503);
    expect(res.body.error.code).toBe('store_unavailable');
    answers.push(res.text);
    const again = await kt!.api('GET', `/v1/credentials/${creds[0]!.id}/secret`);
    expect(again.status, again.text).toBe(200);
    expect(kt!.logs.join('\n')).toMatch(/AWS KMS answered 500 KMSInternalException during Decrypt/);
  });

  it('transit primary with KMS still configured: a rekey moves every value to transit; then transit alone', async () => {
    await start({ KEYTURN_KEK_PROVIDER: 'vault-transit', ...TRANSIT_VARS, ...KMS_VARS });
    await everySecretLogsIn();
    const done = await rekey();
    expect(Object.keys(done.after)).toEqual(['vault-transit:transit/keyturn-kek']);
    await collectDataKeys();
    await start({ KEYTURN_KEK_PROVIDER: 'vault-transit', ...TRANSIT_VARS });
    await everySecretLogsIn();
    const providers = await kt!.api('GET', '/v1/rekey');
    expect(providers.body.keyProviders.primary).toMatchObject({
      provider: 'vault-transit',
      key: 'keyturn-kek',
    });
    expect(providers.body.keyProviders.readable).toEqual([]);
    answers.push(providers.text, (await kt!.api('GET', '/metrics')).text);
  });

  it('no data key, master key, AWS secret key or Vault token in logs, audit events, Redis, answers or metrics', async () => {
    logs.push(...kt!.logs);
    const audit = await kt!.api('GET', '/v1/audit?limit=1000');
    const values = await redisValues(env.prefix);
    const places = [
      ['logs', logs],
      ['audit events', [JSON.stringify(audit.body.events)]],
      ['Redis commands (job payloads included)', monitor.commands],
      ['Redis values', values],
      ['API answers (rekey status, errors, metrics)', answers],
    ] as const;
    // The capture saw the traffic it checks.
    // A rekey moves a data key, it does not change it: one per value written (base64 and hex of each).
    expect(dataKeys.size).toBeGreaterThanOrEqual(10);
    expect(logs.length).toBeGreaterThan(50);
    expect(monitor.commands.some((c) => c.includes('rekey'))).toBe(true);
    expect(JSON.stringify(audit.body.events)).toContain('kek.rekey.finished');
    assertNoSecrets(
      [
        ...dataKeys,
        masterKey.toString('base64'),
        masterKey.toString('hex'),
        kms.credentials.secretAccessKey,
        vault.rootToken,
      ],
      places,
    );
  });
});
