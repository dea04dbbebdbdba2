// End to end with the secret's home in Vault (logged in with a token, or with Kubernetes auth) or AWS Secrets
// Manager (emulators): a real password-checking
// PostgreSQL credential rotated with both strategies, read through Keyturn's API and directly from the store in
// the AWS-template layout; the connection's admin secret lives in the same store.
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StoreSpec } from '../../src/registry/types.ts';
import {
  awsEmulatorBackend,
  type Backend,
  vaultEmulatorBackend,
  vaultKubernetesEmulatorBackend,
} from '../stores/backends.ts';
import {
  canLogin,
  createAppRole,
  dropPrefix,
  type Keyturn,
  pgInfo,
  startKeyturn,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';

/** What a service that reads the store directly (not through Keyturn) sees. */
async function readDirectly(backend: Backend, spec: StoreSpec): Promise<Record<string, unknown>> {
  if (spec.type === 'vault') {
    const res = await fetch(`${backend.env.VAULT_ADDR}/v1/${spec.mount}/data/${spec.path}`, {
      headers: { 'x-vault-token': backend.readToken! },
    });
    expect(res.status).toBe(200);
    return ((await res.json()) as { data: { data: Record<string, unknown> } }).data.data;
  }
  if (spec.type === 'aws') {
    const client = new SecretsManagerClient({
      endpoint: backend.env.AWS_ENDPOINT_URL!,
      region: backend.env.AWS_REGION!,
      credentials: {
        accessKeyId: backend.env.AWS_ACCESS_KEY_ID!,
        secretAccessKey: backend.env.AWS_SECRET_ACCESS_KEY!,
      },
    });
    try {
      const res = await client.send(new GetSecretValueCommand({ SecretId: spec.secretId }));
      return JSON.parse(res.SecretString!);
    } finally {
      client.destroy();
    }
  }
  throw new Error('not a remote store');
}

describe.each([vaultEmulatorBackend, vaultKubernetesEmulatorBackend, awsEmulatorBackend])(
  'secret home: $name',
  (factory) => {
    let backend: Backend;
    let kt: Keyturn;
    let env: ReturnType<typeof testEnv>;
    let connection: string;
    let adminStore: StoreSpec;

    beforeAll(async () => {
      backend = await factory.start();
      env = testEnv(backend.env);
      kt = await startKeyturn(env, { components: ['api', 'worker'] });
      const info = pgInfo();
      adminStore = backend.spec();
      connection = `pg-${factory.name.split(' ')[0]!.toLowerCase()}`;
      const res = await kt.api('POST', '/v1/connections', {
        id: connection,
        type: 'postgres',
        host: info.host,
        port: info.port,
        database: info.database,
        admin: { username: info.adminUser, password: info.adminPassword, store: adminStore },
      });
      expect(res.status).toBe(201);
      // The admin secret is in the remote store, in the template layout, and not in the API's answer.
      expect(res.text).not.toContain(info.adminPassword);
      expect(await readDirectly(backend, adminStore)).toMatchObject({
        username: info.adminUser,
        password: info.adminPassword,
      });
    });
    afterAll(async () => {
      await kt?.close();
      await backend?.close();
      if (env) await dropPrefix(env.prefix);
    });

    it.each(['single-user', 'alternating-users'] as const)(
      '%s: rotates, and the store holds the working secret',
      async (strategy) => {
        const role = await createAppRole();
        const store = backend.spec();
        const id = `store-${role.name}`;
        const created = await kt.api('POST', '/v1/credentials', {
          id,
          connection,
          username: role.name,
          strategy,
          schedule: { every: '30d' },
          store,
          ...(strategy === 'alternating-users' ? { gracePeriod: '1h' } : {}),
        });
        expect(created.status).toBe(201);
        expect((await waitForRotation(kt, created.body.rotation.id)).status).toBe('succeeded');
        const first = (await kt.api('GET', `/v1/credentials/${id}/secret`)).body;

        const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
        expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
        const api = (await kt.api('GET', `/v1/credentials/${id}/secret`)).body;
        const direct = await readDirectly(backend, store);
        const info = pgInfo();
        expect(direct).toEqual({
          engine: 'postgres',
          host: info.host,
          port: info.port,
          dbname: info.database,
          username: api.username,
          password: api.password,
          // The AWS multi-user templates' field: the admin secret, kept in AWS here.
          ...(strategy === 'alternating-users' && adminStore.type === 'aws'
            ? { masterarn: adminStore.secretId }
            : {}),
        });
        expect(api.version).toBe(rotate.body.rotationId);
        expect(await canLogin(api.username, api.password)).toBe(true);
        if (strategy === 'single-user') {
          expect(await canLogin(first.username, first.password)).toBe(false);
        } else {
          expect(api.username).toBe(role.name);
          expect(first.username).toBe(`${role.name}_clone`);
          expect(await canLogin(first.username, first.password)).toBe(true);
        }
      },
    );

    it('a failed rotation leaves the store on its working version, with no new version', async () => {
      const role = await createAppRole();
      const store = backend.spec();
      const id = `store-fail-${role.name}`;
      const created = await kt.api('POST', '/v1/credentials', {
        id,
        connection,
        username: role.name,
        strategy: 'single-user',
        schedule: { every: '30d' },
        store,
      });
      expect((await waitForRotation(kt, created.body.rotation.id)).status).toBe('succeeded');
      const before = await readDirectly(backend, store);
      const ref = { spec: store, name: 'unused' };
      const versionsBefore = await backend.versionsWritten?.(ref);
      // The downstream goes away: every attempt fails, and the rotation rolls back.
      await kt.runtime.ctx.registry.saveConnection({
        ...(await kt.runtime.ctx.registry.getConnection(connection)),
        port: 1,
      });
      try {
        const rotate = await kt.api('POST', `/v1/credentials/${id}/rotate`);
        const failed = await waitForRotation(kt, rotate.body.rotationId);
        expect(failed.status).toBe('failed');
      } finally {
        await kt.runtime.ctx.registry.saveConnection({
          ...(await kt.runtime.ctx.registry.getConnection(connection)),
          port: pgInfo().port,
        });
      }
      expect(await readDirectly(backend, store)).toEqual(before);
      // Vault keeps the pending secret outside the main path, so the main path has no new version at all. AWS
      // keeps the failed pending version, unlabelled (deprecated), as its own rotations do.
      if (versionsBefore !== undefined && store.type === 'vault') {
        expect(await backend.versionsWritten?.(ref)).toBe(versionsBefore);
      }
      expect(await canLogin(String(before.username), String(before.password))).toBe(true);
      await waitFor('nothing pending in the store', async () => {
        const described = await kt.runtime.ctx.stores.get(store).describe(ref);
        return described && !Object.values(described).some((s) => s.includes('pending'));
      });
    });
  },
);
