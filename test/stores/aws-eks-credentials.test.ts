// AWS on EKS without keys: Keyturn's configuration accepts IRSA and EKS Pod Identity environments (no static
// keys), and the AWS store then takes its credentials from the SDK's default chain. Pod Identity is shown end to
// end on loopback: AWS_CONTAINER_CREDENTIALS_FULL_URI points at a local stand-in for the EKS Pod Identity agent,
// which checks the token from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE and hands out the emulator's keys. (IRSA's
// AssumeRoleWithWebIdentity goes to STS, which has no stand-in here: its environment is checked at the config.)
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.ts';
import { AwsStore } from '../../src/stores/aws-store.ts';
import { startAwsSecretsManagerEmulator } from '../emulators/aws-secrets-manager.ts';

const CHAIN_VARIABLES = [
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_PROFILE',
  'AWS_ROLE_ARN',
  'AWS_WEB_IDENTITY_TOKEN_FILE',
  'AWS_CONTAINER_CREDENTIALS_FULL_URI',
  'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
  'AWS_CONTAINER_AUTHORIZATION_TOKEN',
  'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE',
  'AWS_SHARED_CREDENTIALS_FILE',
  'AWS_CONFIG_FILE',
  'AWS_EC2_METADATA_DISABLED',
];

describe('AWS store on EKS: IRSA and Pod Identity need no keys', () => {
  const saved = new Map(CHAIN_VARIABLES.map((name) => [name, process.env[name]]));
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    await Promise.all(cleanups.splice(0).map((c) => c()));
  });

  it('the config enables the store from an IRSA or Pod Identity environment and sets no static keys', () => {
    const irsa = loadConfig({
      AWS_REGION: 'eu-west-1',
      AWS_ROLE_ARN: 'arn:aws:iam::123456789012:role/keyturn',
      AWS_WEB_IDENTITY_TOKEN_FILE: '/var/run/secrets/eks.amazonaws.com/serviceaccount/token',
    }).aws;
    expect(irsa).toEqual({ region: 'eu-west-1', maxAttempts: 5 });
    const podIdentity = loadConfig({
      AWS_REGION: 'eu-west-1',
      AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://169.254.170.23/v1/credentials',
      AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE:
        '/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token',
    }).aws;
    expect(podIdentity).toEqual({ region: 'eu-west-1', maxAttempts: 5 });
    expect(podIdentity && 'credentials' in podIdentity).toBe(false);
  });

  it('Pod Identity: the store signs with the keys the agent hands out for the projected token', async () => {
    const emulator = await startAwsSecretsManagerEmulator();
    cleanups.push(() => emulator.close());
    const dir = await mkdtemp(join(tmpdir(), 'keyturn-eks-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const podToken = `eks-pod-identity-${Math.random().toString(36).slice(2)}`;
    const tokenFile = join(dir, 'eks-pod-identity-token');
    await writeFile(tokenFile, podToken);

    // The agent hands out temporary keys (with their session token), as EKS Pod Identity does.
    const session = emulator.issueSessionCredentials();
    const seen: Array<string | undefined> = [];
    const agent = http.createServer((req, res) => {
      seen.push(req.headers.authorization);
      if (req.headers.authorization !== podToken) {
        res.statusCode = 403;
        res.end('{"message":"invalid token"}');
        return;
      }
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          AccessKeyId: session.accessKeyId,
          SecretAccessKey: session.secretAccessKey,
          Token: session.sessionToken,
          AccountId: '123456789012',
          Expiration: new Date(Date.now() + 3600_000).toISOString(),
        }),
      );
    });
    await new Promise<void>((resolve) => agent.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => agent.close(resolve)));

    for (const name of CHAIN_VARIABLES) delete process.env[name];
    // No profile files and no instance metadata: the container provider is the only way to credentials.
    process.env.AWS_SHARED_CREDENTIALS_FILE = join(dir, 'no-credentials');
    process.env.AWS_CONFIG_FILE = join(dir, 'no-config');
    process.env.AWS_EC2_METADATA_DISABLED = 'true';
    process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI = `http://127.0.0.1:${(agent.address() as AddressInfo).port}/v1/credentials`;
    process.env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE = tokenFile;

    const config = loadConfig({
      ...process.env,
      AWS_REGION: emulator.region,
      AWS_ENDPOINT_URL: emulator.endpoint,
    });
    expect(config.aws?.credentials).toBeUndefined();
    const store = new AwsStore({ ...config.aws!, timeoutMs: 5000 });
    cleanups.push(() => store.close());
    const ref = {
      spec: { type: 'aws' as const, secretId: `eks/${Math.random().toString(36).slice(2)}` },
      name: '',
    };
    const doc = { engine: 'postgres', host: 'h', port: 5432, username: 'u', password: 'from-pod-identity-1' };
    await store.putCurrent(ref, `import-${'0'.repeat(32)}`, doc);
    expect((await store.read(ref, { stage: 'current' }))?.value.password).toBe('from-pod-identity-1');
    expect(seen.length).toBeGreaterThanOrEqual(1);
    expect(seen.every((a) => a === podToken)).toBe(true);
    const signed = emulator.requests.filter((r) => r.authorization);
    expect(signed.length).toBeGreaterThan(0);
    expect(signed.every((r) => r.authorization!.includes(`Credential=${session.accessKeyId}/`))).toBe(true);
  });
});
