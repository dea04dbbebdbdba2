// The secret-store backends the contract suite and the end-to-end tests run against: the local store on Redis,
// the Vault emulator (logged in with a token, and with Kubernetes auth), the AWS emulator, and, when their variables
// are set, a real Vault (VAULT_ADDR + VAULT_TOKEN; VAULT_ADDR + VAULT_K8S_ROLE inside a pod for Kubernetes auth) and
// a real AWS endpoint such as LocalStack (AWS_ENDPOINT_URL). Each says why it is skipped when it cannot run.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { ListSecretVersionIdsCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { Redis } from 'ioredis';
import { VAULT_K8S_DEFAULT_TOKEN_PATH, type VaultAuth } from '../../src/config/config.ts';
import { envEnvelope } from '../../src/keys/index.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { RedisKeys } from '../../src/registry/keys.ts';
import type { StoreSpec } from '../../src/registry/types.ts';
import { AwsStore } from '../../src/stores/aws-store.ts';
import { LocalStore } from '../../src/stores/local-store.ts';
import type { SecretRef, SecretStore } from '../../src/stores/types.ts';
import { VaultStore } from '../../src/stores/vault-store.ts';
import {
  type AwsSecretsManagerEmulator,
  startAwsSecretsManagerEmulator,
} from '../emulators/aws-secrets-manager.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault.ts';
import { REDIS_URL } from '../support/harness.ts';

export const quietLogger = () =>
  createLogger({
    level: 'silent',
    format: 'json',
    destination: new Writable({ write: (_c, _e, done) => done() }),
  });

export interface Backend {
  name: string;
  store: SecretStore;
  /** A fresh secret location in this backend. */
  ref(): SecretRef;
  /** Makes the backend unreachable for the next operation (at least); `restore` heals it. */
  breakNext(): Promise<void>;
  restore(): Promise<void>;
  /** How many versions the backend holds for a secret (deleted and unlabelled ones included). */
  versionsWritten?(ref: SecretRef): Promise<number>;
  /** Versions a promote adds: Vault writes the main path at promote, AWS labels the version put earlier. */
  versionsPerPromote: number;
  /** A Vault token that reads the secrets directly, as a service would (Keyturn's own may come from a login). */
  readToken?: string;
  /** Environment that points a Keyturn process at this backend. */
  env: Record<string, string>;
  /** A store spec for a credential or connection in this backend. */
  spec(): StoreSpec;
  close(): Promise<void>;
}

export interface BackendFactory {
  name: string;
  /** Why this backend cannot run here, or undefined when it can. */
  skipReason(): Promise<string | undefined>;
  start(): Promise<Backend>;
}

const unique = () => randomBytes(6).toString('hex');

const local: BackendFactory = {
  name: 'local (Redis)',
  skipReason: async () => undefined,
  async start() {
    // Its own connection, without an offline queue, so that a disconnect fails fast like an outage.
    const redis = new Redis(REDIS_URL, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      lazyConnect: true,
    });
    redis.on('error', () => {});
    await redis.connect();
    const prefix = `kt-contract-${unique()}`;
    const masterKey = randomBytes(32);
    const store = new LocalStore(redis, new RedisKeys(prefix), envEnvelope(masterKey));
    return {
      name: 'local (Redis)',
      store,
      ref: () => ({ spec: { type: 'local' }, name: `cred/${unique()}` }),
      versionsPerPromote: 0,
      spec: () => ({ type: 'local' }),
      async breakNext() {
        const ended = new Promise((resolve) => redis.once('end', resolve));
        redis.disconnect();
        await ended;
      },
      async restore() {
        if (redis.status === 'end') await redis.connect();
      },
      env: { KEYTURN_PREFIX: prefix, KEYTURN_MASTER_KEY: masterKey.toString('base64') },
      async close() {
        const keys = await redis.keys(`${prefix}:*`);
        if (keys.length) await redis.del(...keys);
        redis.disconnect();
      },
    };
  },
};

/** How a Vault backend's store logs in, and the environment that makes a Keyturn process log in the same way. */
interface VaultLogin {
  auth: VaultAuth;
  env: Record<string, string>;
  /** Removes what the login needed (a token file). */
  cleanup?(): Promise<void>;
}

function vaultBackend(
  name: string,
  connect: () => Promise<{
    url: string;
    /** A token that reads metadata, for versionsWritten (the store's own token when it has a fixed one). */
    token: string;
    emulator?: VaultEmulator;
    /** Default: the fixed token above. */
    login?: VaultLogin;
  }>,
): BackendFactory {
  return {
    name,
    skipReason: async () => undefined,
    async start() {
      const { url, token, emulator, login } = await connect();
      const pendingPrefix = `keyturn-pending-${unique()}`;
      const auth: VaultAuth = login?.auth ?? { method: 'token', token };
      const store = new VaultStore({ address: url, auth, pendingPrefix, timeoutMs: 5000 }, quietLogger());
      const base = `keyturn-test/${unique()}`;
      const spec = (): StoreSpec => ({ type: 'vault', mount: 'secret', path: `${base}/${unique()}` });
      return {
        name,
        store,
        ref: () => ({ spec: spec(), name: 'unused' }),
        spec,
        versionsPerPromote: 1,
        readToken: token,
        async breakNext() {
          if (emulator) emulator.seal();
          else throw new Error('cannot seal a real Vault from a test');
        },
        async restore() {
          emulator?.unseal();
        },
        async versionsWritten(ref) {
          if (ref.spec.type !== 'vault') return 0;
          const res = await fetch(`${url}/v1/${ref.spec.mount}/metadata/${ref.spec.path}`, {
            headers: { 'x-vault-token': token },
          });
          if (res.status === 404) return 0;
          return ((await res.json()) as { data: { current_version: number } }).data.current_version;
        },
        env: {
          VAULT_ADDR: url,
          ...(login?.env ?? { VAULT_TOKEN: token }),
          KEYTURN_VAULT_PENDING_PREFIX: pendingPrefix,
        },
        async close() {
          await store.close();
          await emulator?.close();
          await login?.cleanup?.();
        },
      };
    },
  };
}

function awsBackend(
  name: string,
  connect: () => Promise<{
    endpoint: string;
    region: string;
    credentials?: { accessKeyId: string; secretAccessKey: string };
    emulator?: AwsSecretsManagerEmulator;
  }>,
): BackendFactory {
  return {
    name,
    skipReason: async () => undefined,
    async start() {
      const { endpoint, region, credentials, emulator } = await connect();
      const maxAttempts = 3;
      const store = new AwsStore({
        endpoint,
        region,
        ...(credentials ? { credentials } : {}),
        maxAttempts,
        timeoutMs: 5000,
      });
      const base = `keyturn-test/${unique()}`;
      const spec = (): StoreSpec => ({ type: 'aws', secretId: `${base}/${unique()}`, region });
      return {
        name,
        store,
        ref: () => ({ spec: spec(), name: 'unused' }),
        spec,
        versionsPerPromote: 0,
        async breakNext() {
          if (!emulator) throw new Error('cannot break a real AWS endpoint from a test');
          // Enough failures to outlast the SDK's own retries.
          emulator.failNext(maxAttempts, 'ServiceUnavailable');
        },
        async restore() {},
        async versionsWritten(ref) {
          if (ref.spec.type !== 'aws') return 0;
          const client = new SecretsManagerClient({
            endpoint,
            region,
            ...(credentials ? { credentials } : {}),
          });
          try {
            const res = await client.send(
              new ListSecretVersionIdsCommand({
                SecretId: ref.spec.secretId,
                IncludeDeprecated: true,
                MaxResults: 100,
              }),
            );
            return res.Versions?.length ?? 0;
          } catch (err) {
            if ((err as Error).name === 'ResourceNotFoundException') return 0;
            throw err;
          } finally {
            client.destroy();
          }
        },
        env: {
          AWS_ENDPOINT_URL: endpoint,
          AWS_REGION: region,
          ...(credentials
            ? {
                AWS_ACCESS_KEY_ID: credentials.accessKeyId,
                AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
              }
            : {}),
        },
        async close() {
          await store.close();
          await emulator?.close();
        },
      };
    },
  };
}

export const vaultEmulatorBackend = vaultBackend('Vault emulator', async () => {
  const emulator = await startVaultEmulator();
  return { url: emulator.url, token: emulator.rootToken, emulator };
});

/**
 * The Vault emulator with the store logged in by Kubernetes auth: a role bound to the service account
 * keyturn/keyturn on its own mount, and a token file holding a JWT the emulated Kubernetes API server minted.
 */
export const vaultKubernetesEmulatorBackend = vaultBackend('Vault emulator, Kubernetes auth', async () => {
  const emulator = await startVaultEmulator();
  const mount = 'k8s-test';
  emulator.addKubernetesRole('keyturn', {
    serviceAccountNames: ['keyturn'],
    serviceAccountNamespaces: ['keyturn'],
    mount,
    tokenTtlSeconds: 3600,
  });
  const dir = await mkdtemp(join(tmpdir(), 'keyturn-k8s-'));
  const tokenPath = join(dir, 'token');
  await writeFile(
    tokenPath,
    emulator.mintServiceAccountToken({ namespace: 'keyturn', serviceAccount: 'keyturn' }),
    { mode: 0o600 },
  );
  return {
    url: emulator.url,
    token: emulator.rootToken,
    emulator,
    login: {
      auth: { method: 'kubernetes', role: 'keyturn', tokenPath, mount },
      env: {
        VAULT_AUTH_METHOD: 'kubernetes',
        VAULT_K8S_ROLE: 'keyturn',
        VAULT_K8S_TOKEN_PATH: tokenPath,
        VAULT_K8S_MOUNT: mount,
      },
      cleanup: () => rm(dir, { recursive: true, force: true }),
    },
  };
});

/** Why a real Vault's Kubernetes auth cannot be tried here, or undefined when it can. */
export async function realVaultKubernetesSkipReason(): Promise<string | undefined> {
  if (!process.env.VAULT_ADDR) return 'VAULT_ADDR is not set';
  if (!process.env.VAULT_K8S_ROLE) {
    return 'VAULT_K8S_ROLE is not set (a real Vault checks the JWT with a Kubernetes API server, so this runs only in a pod with a bound role)';
  }
  const path = process.env.VAULT_K8S_TOKEN_PATH || VAULT_K8S_DEFAULT_TOKEN_PATH;
  try {
    await access(path, constants.R_OK);
    return undefined;
  } catch {
    return `no readable service-account token at ${path} (VAULT_K8S_TOKEN_PATH)`;
  }
}

/** A real Vault's Kubernetes auth, from VAULT_ADDR, VAULT_K8S_ROLE and the token file, as Keyturn reads them. */
export function realVaultKubernetesLogin(): {
  auth: Extract<VaultAuth, { method: 'kubernetes' }>;
  env: Record<string, string>;
} {
  const auth = {
    method: 'kubernetes' as const,
    role: process.env.VAULT_K8S_ROLE!,
    tokenPath: process.env.VAULT_K8S_TOKEN_PATH || VAULT_K8S_DEFAULT_TOKEN_PATH,
    mount: process.env.VAULT_K8S_MOUNT || 'kubernetes',
  };
  return {
    auth,
    env: {
      VAULT_AUTH_METHOD: 'kubernetes',
      VAULT_K8S_ROLE: auth.role,
      VAULT_K8S_TOKEN_PATH: auth.tokenPath,
      VAULT_K8S_MOUNT: auth.mount,
    },
  };
}

const realVaultKubernetes: BackendFactory = {
  ...vaultBackend('real Vault, Kubernetes auth (VAULT_ADDR, VAULT_K8S_ROLE)', async () => {
    const login = realVaultKubernetesLogin();
    // A token of the same role for versionsWritten: the store keeps its own token to itself.
    const res = await fetch(`${process.env.VAULT_ADDR}/v1/auth/${login.auth.mount}/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        role: login.auth.role,
        jwt: (await readFile(login.auth.tokenPath, 'utf8')).trim(),
      }),
    });
    if (!res.ok) throw new Error(`Kubernetes login to the real Vault answered ${res.status}`);
    const token = ((await res.json()) as { auth: { client_token: string } }).auth.client_token;
    return { url: process.env.VAULT_ADDR!, token, login };
  }),
  skipReason: realVaultKubernetesSkipReason,
};

export const awsEmulatorBackend = awsBackend('AWS Secrets Manager emulator', async () => {
  const emulator = await startAwsSecretsManagerEmulator();
  return {
    endpoint: emulator.endpoint,
    region: emulator.region,
    credentials: emulator.credentials,
    emulator,
  };
});

const realVault: BackendFactory = {
  ...vaultBackend('real Vault (VAULT_ADDR)', async () => ({
    url: process.env.VAULT_ADDR!,
    token: process.env.VAULT_TOKEN!,
  })),
  skipReason: async () =>
    process.env.VAULT_ADDR && process.env.VAULT_TOKEN ? undefined : 'VAULT_ADDR and VAULT_TOKEN are not set',
};

const realAws: BackendFactory = {
  ...awsBackend('real AWS endpoint (AWS_ENDPOINT_URL, e.g. LocalStack)', async () => ({
    endpoint: process.env.AWS_ENDPOINT_URL!,
    region: process.env.AWS_REGION ?? 'us-east-1',
  })),
  skipReason: async () => (process.env.AWS_ENDPOINT_URL ? undefined : 'AWS_ENDPOINT_URL is not set'),
};

let dockerAnswer: Promise<string | undefined> | undefined;
/** Undefined when a container engine answers, else why not. */
function dockerSkipReason(): Promise<string | undefined> {
  dockerAnswer ??= import('testcontainers')
    .then(({ getContainerRuntimeClient }) => getContainerRuntimeClient())
    .then(
      () => undefined,
      (err: Error) => `no Docker engine answers (${err.message.split('\n')[0]})`,
    );
  return dockerAnswer;
}

const vaultContainer: BackendFactory = {
  ...vaultBackend('Vault in a container (testcontainers)', async () => {
    const { VaultContainer } = await import('@testcontainers/vault');
    const token = randomBytes(16).toString('hex');
    const container = await new VaultContainer('hashicorp/vault:1.17').withVaultToken(token).start();
    containers.push(() => container.stop());
    return { url: container.getAddress(), token };
  }),
  skipReason: async () =>
    process.env.VAULT_ADDR ? 'VAULT_ADDR is set: the real Vault runs instead' : dockerSkipReason(),
};

const localstackContainer: BackendFactory = {
  ...awsBackend('LocalStack in a container (testcontainers)', async () => {
    const { LocalstackContainer } = await import('@testcontainers/localstack');
    const container = await new LocalstackContainer('localstack/localstack:3').start();
    containers.push(() => container.stop());
    return {
      endpoint: container.getConnectionUri(),
      region: 'us-east-1',
      credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
    };
  }),
  skipReason: async () =>
    process.env.AWS_ENDPOINT_URL ? 'AWS_ENDPOINT_URL is set: that endpoint runs instead' : dockerSkipReason(),
};

const containers: Array<() => Promise<unknown>> = [];
export async function stopContainers(): Promise<void> {
  await Promise.all(containers.splice(0).map((stop) => stop().catch(() => {})));
}

export const BACKENDS: BackendFactory[] = [
  local,
  vaultEmulatorBackend,
  vaultKubernetesEmulatorBackend,
  awsEmulatorBackend,
  realVault,
  realVaultKubernetes,
  realAws,
  vaultContainer,
  localstackContainer,
];
