// Faults of the remote stores during real rotations: each ends in a retry that succeeds or in a clear failure
// that leaves the credential on its working version, and never in a lost or doubled version.
import { RotateSecretCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StoreSpec } from '../../src/registry/types.ts';
import { VaultStore } from '../../src/stores/vault-store.ts';
import type { AwsSecretsManagerEmulator } from '../emulators/aws-secrets-manager.ts';
import { startAwsSecretsManagerEmulator } from '../emulators/aws-secrets-manager.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault.ts';
import { quietLogger } from '../stores/backends.ts';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';

const unique = () => Math.random().toString(36).slice(2, 10);

describe('Vault faults', () => {
  let emu: VaultEmulator;
  let kt: Keyturn;
  let env: ReturnType<typeof testEnv>;
  let connection: string;

  beforeAll(async () => {
    emu = await startVaultEmulator();
    // Slow finish, so that a test can write to the secret from outside while a rotation is under way.
    env = testEnv({
      VAULT_ADDR: emu.url,
      VAULT_TOKEN: emu.rootToken,
      KEYTURN_FAILPOINTS: 'before-finish=sleep:600',
    });
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    connection = await registerPgConnection(kt);
  });
  afterAll(async () => {
    await kt?.close();
    await emu?.close();
    if (env) await dropPrefix(env.prefix);
  });

  const vaultSpec = (): StoreSpec => ({ type: 'vault', mount: 'secret', path: `faults/${unique()}` });
  const mainVersions = async (spec: StoreSpec) => {
    if (spec.type !== 'vault') throw new Error('vault only');
    const res = await fetch(`${emu.url}/v1/secret/metadata/${spec.path}`, {
      headers: { 'x-vault-token': emu.rootToken },
    });
    return ((await res.json()) as { data: { current_version: number } }).data.current_version;
  };

  it('503 (sealed) on the write of finish: retried, then one new version', async () => {
    const store = vaultSpec();
    const { id } = await importCredential(kt, connection, { idPrefix: 'v503', extra: { store } });
    const before = await mainVersions(store);
    emu.failNext(
      2,
      503,
      (method, path) => method !== 'GET' && path === `secret/data/${(store as { path: string }).path}`,
    );
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('succeeded');
    expect(rotation.attempts).toBeGreaterThan(1);
    expect(
      rotation.steps.some(
        (s: { outcome: string; note?: string }) => s.outcome === 'failed' && /sealed/.test(s.note ?? ''),
      ),
    ).toBe(true);
    expect(await mainVersions(store)).toBe(before + 1);
  });

  it('403 (policy) fails at once with a message naming Vault, and the old secret still works', async () => {
    const store = vaultSpec();
    const { id, role, password } = await importCredential(kt, connection, {
      idPrefix: 'v403',
      extra: { store },
    });
    const before = await mainVersions(store);
    emu.failNext(
      1,
      403,
      (method, path) => method !== 'GET' && path === `secret/data/${(store as { path: string }).path}`,
    );
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('failed');
    expect(rotation.attempts).toBe(1);
    expect(rotation.error.message).toMatch(/Vault denied .*403 permission denied.*policy/);
    expect(rotation.rollback.outcome).toBe('done');
    expect(await mainVersions(store)).toBe(before);
    expect(await canLogin(role.name, password)).toBe(true);
    const secret = await kt.api('GET', `/v1/credentials/${id}/secret`);
    expect(secret.body.password).toBe(password);
  });

  it('a write from outside Keyturn during a rotation is a clear failure, not an overwrite', async () => {
    const store = vaultSpec();
    const { id, role, password } = await importCredential(kt, connection, {
      idPrefix: 'vcas',
      extra: { store },
    });
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    // While finish sleeps, someone writes the secret by hand (with the right cas, as a careful person would).
    const path = (store as { path: string }).path;
    const current = await mainVersions(store);
    const manual = await fetch(`${emu.url}/v1/secret/data/${path}`, {
      method: 'POST',
      headers: { 'x-vault-token': emu.rootToken, 'content-type': 'application/json' },
      body: JSON.stringify({
        options: { cas: current },
        data: { username: 'someone', password: 'by-hand-password' },
      }),
    });
    expect(manual.status).toBe(200);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('failed');
    expect(rotation.error.message).toMatch(/changed outside Keyturn/);
    // Keyturn wrote nothing over it, and put the downstream back on the password it knows.
    expect(await mainVersions(store)).toBe(current + 1);
    expect(await canLogin(role.name, password)).toBe(true);
  });

  it('AppRole: logs in, and logs in again when Vault forgets the token', async () => {
    const { roleId, secretId } = emu.addAppRole('keyturn', { tokenTtlSeconds: 3600 });
    const store = new VaultStore(
      {
        address: emu.url,
        auth: { method: 'approle', roleId, secretId, mount: 'approle' },
        pendingPrefix: 'keyturn-pending',
        timeoutMs: 5000,
      },
      quietLogger(),
    );
    try {
      const ref = { spec: vaultSpec(), name: 'unused' };
      const doc = {
        engine: 'postgres',
        host: 'h',
        port: 5432,
        username: 'u',
        password: 'approle-password-1',
      };
      await store.putCurrent(ref, 'import-approle-00000000000000000000000', doc);
      const logins = () => emu.requests.filter((r) => r.path === 'auth/approle/login').length;
      expect(logins()).toBe(1);
      emu.failNext(1, 403);
      expect((await store.read(ref, { stage: 'current' }))?.value.password).toBe('approle-password-1');
      expect(logins()).toBe(2);
    } finally {
      await store.close();
    }
  });
});

describe('Vault store: tokens, namespaces, max_versions', () => {
  let emu: VaultEmulator;
  beforeAll(async () => {
    emu = await startVaultEmulator();
  });
  afterAll(async () => emu?.close());

  const doc = (password: string) => ({ engine: 'postgres', host: 'h', port: 5432, username: 'u', password });
  const vaultStore = ({ token, ...options }: { token: string; namespace?: string }) =>
    new VaultStore(
      {
        address: emu.url,
        auth: { method: 'token', token },
        pendingPrefix: 'keyturn-pending',
        timeoutMs: 5000,
        ...options,
      },
      quietLogger(),
    );
  const ref = (): { spec: StoreSpec; name: string } => ({
    spec: { type: 'vault', mount: 'secret', path: `misc/${unique()}` },
    name: 'unused',
  });

  it('renews a short-lived token before it expires', async () => {
    const token = emu.createToken({ ttlSeconds: 2, renewable: true });
    const store = vaultStore({ token });
    try {
      const r = ref();
      await store.putCurrent(r, 'import-renewal-000000000000000000000000', doc('renewal-password-1'));
      // Past the original TTL (2 s, by half a second), with a renewal seen: without it the token would be gone.
      const issued = Date.now();
      await waitFor(
        'a renewal, and the first TTL passed',
        async () =>
          (emu.requests.some((q) => q.path === 'auth/token/renew-self') && Date.now() > issued + 2500) ||
          undefined,
        15_000,
        50,
      );
      expect((await store.read(r, { stage: 'current' }))?.value.password).toBe('renewal-password-1');
      expect(emu.requests.some((q) => q.path === 'auth/token/renew-self')).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('sends the namespace, and data in one namespace is invisible from another', async () => {
    const inNs = vaultStore({ token: emu.rootToken, namespace: 'team-a' });
    const root = vaultStore({ token: emu.rootToken });
    try {
      const r = ref();
      await inNs.putCurrent(r, 'import-namespace-0000000000000000000000', doc('namespace-password'));
      expect((await inNs.read(r, { stage: 'current' }))?.value.password).toBe('namespace-password');
      expect(await root.read(r, { stage: 'current' })).toBeNull();
      expect(emu.requests.some((q) => q.namespace === 'team-a')).toBe(true);
    } finally {
      await inNs.close();
      await root.close();
    }
  });

  it('respects max_versions: with one version kept, previous is gone but current always reads', async () => {
    const store = vaultStore({ token: emu.rootToken });
    try {
      const r = ref();
      const path = (r.spec as { path: string }).path;
      const set = await fetch(`${emu.url}/v1/secret/metadata/${path}`, {
        method: 'POST',
        headers: { 'x-vault-token': emu.rootToken, 'content-type': 'application/json' },
        body: JSON.stringify({ max_versions: 1 }),
      });
      expect(set.status).toBe(204);
      await store.putCurrent(r, 'import-maxversions-00000000000000000000', doc('max-versions-pw-0'));
      const t1 = '00000000-0000-4000-8000-000000000001';
      await store.putPending(r, t1, doc('max-versions-pw-1'));
      await store.promote(r, t1);
      expect((await store.read(r, { stage: 'current' }))?.value.password).toBe('max-versions-pw-1');
      expect(await store.read(r, { stage: 'previous' })).toBeNull();
    } finally {
      await store.close();
    }
  });
});

describe('AWS Secrets Manager faults', () => {
  let emu: AwsSecretsManagerEmulator;
  let kt: Keyturn;
  let env: ReturnType<typeof testEnv>;
  let connection: string;

  beforeAll(async () => {
    emu = await startAwsSecretsManagerEmulator();
    env = testEnv({
      AWS_ENDPOINT_URL: emu.endpoint,
      AWS_REGION: emu.region,
      AWS_ACCESS_KEY_ID: emu.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: emu.credentials.secretAccessKey,
    });
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    connection = await registerPgConnection(kt);
  });
  afterAll(async () => {
    await kt?.close();
    await emu?.close();
    if (env) await dropPrefix(env.prefix);
  });

  const awsSpec = (): StoreSpec => ({ type: 'aws', secretId: `faults/${unique()}` });
  const labelsOf = (id: string) =>
    kt.runtime.ctx.stores
      .get({ type: 'aws', secretId: id })
      .describe({ spec: { type: 'aws', secretId: id }, name: 'unused' });

  it('throttling is retried by the SDK: the rotation succeeds in one attempt with one new version', async () => {
    const store = awsSpec();
    const { id } = await importCredential(kt, connection, { idPrefix: 'athr', extra: { store } });
    const seen = emu.requests.length;
    emu.failNext(2, 'ThrottlingException', (op) => op === 'PutSecretValue');
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('succeeded');
    expect(rotation.attempts).toBe(1);
    const puts = emu.requests.slice(seen).filter((r) => r.operation === 'PutSecretValue');
    expect(puts.length).toBe(3);
    // The retries reused the rotation id as ClientRequestToken: one version, not three.
    expect(new Set(puts.map((r) => r.body.ClientRequestToken))).toEqual(new Set([rotate.body.rotationId]));
    const labels = await labelsOf((store as { secretId: string }).secretId);
    expect(Object.keys(labels ?? {})).toHaveLength(2);
    expect(labels?.[rotate.body.rotationId]).toEqual(['current']);
  });

  it('ResourceNotFoundException once on DescribeSecret: the create step recovers, one new version', async () => {
    const store = awsSpec();
    const { id } = await importCredential(kt, connection, { idPrefix: 'arnf', extra: { store } });
    emu.failNext(1, 'ResourceNotFoundException', (op) => op === 'DescribeSecret');
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('succeeded');
    const labels = await labelsOf((store as { secretId: string }).secretId);
    expect(
      Object.values(labels ?? {})
        .flat()
        .sort(),
    ).toEqual(['current', 'previous']);
  });

  it('a secret with AWS rotation enabled is refused: two rotators would fight over its labels', async () => {
    const store = awsSpec();
    const { id, role, password } = await importCredential(kt, connection, {
      idPrefix: 'arot',
      extra: { store },
    });
    const client = new SecretsManagerClient({
      endpoint: emu.endpoint,
      region: emu.region,
      credentials: emu.credentials,
    });
    try {
      await client.send(
        new RotateSecretCommand({
          SecretId: (store as { secretId: string }).secretId,
          RotationLambdaARN: 'arn:aws:lambda:eu-west-1:123456789012:function:rotate-payments',
          RotateImmediately: false,
        }),
      );
    } finally {
      client.destroy();
    }
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('failed');
    expect(rotation.attempts).toBe(1);
    expect(rotation.error.message).toMatch(/AWS rotation enabled .*rotate-payments/);
    expect(await canLogin(role.name, password)).toBe(true);
  });

  it('a secret that keeps answering ResourceNotFoundException is a clear failure; the old password still works', async () => {
    const store = awsSpec();
    const { id, role, password } = await importCredential(kt, connection, {
      idPrefix: 'arnf2',
      extra: { store },
    });
    // For the rest of this emulator's life (this is its last test), every read of a version fails.
    emu.failNext(1000, 'ResourceNotFoundException', (op) => op === 'GetSecretValue');
    const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
    const rotation = await waitForRotation(kt, rotate.body.rotationId);
    expect(rotation.status).toBe('failed');
    expect(rotation.error.message).toMatch(/disappeared|does not exist|no version/);
    expect(await canLogin(role.name, password)).toBe(true);
  });
});
