// The secret references of the declarative files, resolved by the CLI on its own machine (issue 18): fromFile,
// fromVault (the Vault emulator's KV v2) and fromAws (the Secrets Manager emulator), each the admin password of a
// PostgreSQL connection that the service verifies by logging in with it, so a wrong value cannot pass.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateSecretCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type AwsSecretsManagerEmulator,
  startAwsSecretsManagerEmulator,
} from '../emulators/aws-secrets-manager.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault.ts';
import { type CliTarget, runCli } from '../support/cli.ts';
import {
  createPgAdminRole,
  dropPrefix,
  type Keyturn,
  pgInfo,
  startKeyturn,
  testEnv,
} from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;
let target: CliTarget;
let vault: VaultEmulator;
let aws: AwsSecretsManagerEmulator;
let dir: string;
let cliEnv: Record<string, string>;
const admins: Record<'file' | 'vault' | 'aws', { name: string; password: string }> = {} as never;
const suite = randomBytes(3).toString('hex');

const connection = (id: string, username: string, password: string) => {
  const info = pgInfo();
  return `kind: Connection
id: ${id}
type: postgres
host: ${info.host}
port: ${info.port}
database: ${info.database}
admin:
  username: ${username}
  password: ${password}
`;
};

beforeAll(async () => {
  kt = await startKeyturn(env);
  target = { url: kt.url, token: env.adminToken };
  vault = await startVaultEmulator();
  aws = await startAwsSecretsManagerEmulator();
  for (const k of ['file', 'vault', 'aws'] as const) admins[k] = await createPgAdminRole();
  dir = mkdtempSync(join(tmpdir(), 'kt-refs-'));
  writeFileSync(join(dir, 'pg-admin.txt'), `${admins.file.password}\n`);
  const put = await fetch(`${vault.url}/v1/secret/data/platform/pg-${suite}`, {
    method: 'POST',
    headers: { 'x-vault-token': vault.rootToken, 'content-type': 'application/json' },
    body: JSON.stringify({ data: { password: admins.vault.password, username: admins.vault.name } }),
  });
  expect(put.status).toBe(200);
  const sm = new SecretsManagerClient({
    region: aws.region,
    endpoint: aws.endpoint,
    credentials: aws.credentials,
  });
  await sm.send(
    new CreateSecretCommand({
      Name: `platform/pg-${suite}`,
      SecretString: JSON.stringify({ username: admins.aws.name, password: admins.aws.password }),
    }),
  );
  sm.destroy();
  cliEnv = {
    VAULT_ADDR: vault.url,
    VAULT_TOKEN: vault.rootToken,
    AWS_REGION: aws.region,
    AWS_ENDPOINT_URL_SECRETS_MANAGER: aws.endpoint,
    AWS_ACCESS_KEY_ID: aws.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: aws.credentials.secretAccessKey,
    KEYTURN_APPLY_KEY: randomBytes(32).toString('base64url'),
  };
});
afterAll(async () => {
  await kt?.close();
  await vault?.close();
  await aws?.close();
  await dropPrefix(env.prefix);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('secret references', () => {
  it('resolves fromFile, fromVault and fromAws on the client: the service logs in with each', async () => {
    writeFileSync(
      join(dir, 'connections.yaml'),
      [
        connection(`file-${suite}`, admins.file.name, '{fromFile: pg-admin.txt}'),
        connection(
          `vault-${suite}`,
          admins.vault.name,
          `{fromVault: {path: secret/platform/pg-${suite}, key: password}}`,
        ),
        connection(
          `aws-${suite}`,
          admins.aws.name,
          `{fromAws: {secretId: platform/pg-${suite}, key: password}}`,
        ),
      ].join('---\n'),
    );
    const run = await runCli(target, ['apply', '-f', dir], { env: cliEnv });
    expect(run.code, run.stderr + run.stdout).toBe(0);
    expect(run.stdout).toContain('Apply complete: 3 created, 0 changed, 0 deleted.');
    for (const k of ['file', 'vault', 'aws']) {
      expect((await kt.api('GET', `/v1/connections/${k}-${suite}`)).status).toBe(200);
    }
    // The Vault read was the CLI's, with the token it was given; the service never talked to this Vault.
    expect(vault.requests.some((r) => r.path.includes(`secret/data/platform/pg-${suite}`))).toBe(true);
    expect(aws.requests.some((r) => r.operation === 'GetSecretValue')).toBe(true);
    // Resolved again, every digest matches: nothing to change.
    const again = await runCli(target, ['plan', '-f', dir, '--detailed-exitcode'], { env: cliEnv });
    expect(again.code, again.stdout + again.stderr).toBe(0);
    for (const out of [run.stdout, run.stderr, again.stdout, again.stderr]) {
      for (const a of Object.values(admins)) expect(out).not.toContain(a.password);
    }
  });

  it('names the reference that cannot be read, never a value', async () => {
    const bad = mkdtempSync(join(dir, 'bad-'));
    writeFileSync(
      join(bad, 'c.yaml'),
      [
        connection(
          `v2-${suite}`,
          admins.vault.name,
          `{fromVault: {path: secret/platform/pg-${suite}, key: nope}}`,
        ),
        connection(`a2-${suite}`, admins.aws.name, '{fromAws: {secretId: platform/missing, key: password}}'),
        connection(`f2-${suite}`, admins.file.name, '{fromFile: missing.txt}'),
      ].join('---\n'),
    );
    const run = await runCli(target, ['plan', '-f', bad, '--detailed-exitcode'], { env: cliEnv });
    expect(run.code).toBe(1);
    const file = join(bad, 'c.yaml');
    expect(run.stderr).toContain(
      `${file}:9: admin.password (Vault secret/platform/pg-${suite} key nope): Vault secret/platform/pg-${suite}: the secret has no text key "nope"`,
    );
    expect(run.stderr).toContain(
      `${file}:19: admin.password (AWS secret platform/missing key password): AWS secret platform/missing: ResourceNotFoundException`,
    );
    expect(run.stderr).toMatch(
      new RegExp(
        `${file}:29: admin\\.password \\(file missing\\.txt\\): cannot read .*missing\\.txt: ENOENT`,
      ),
    );
    for (const a of Object.values(admins)) expect(run.stdout + run.stderr).not.toContain(a.password);
  });

  it('refuses a malformed reference with its file, line and field', async () => {
    const bad = mkdtempSync(join(dir, 'shape-'));
    writeFileSync(join(bad, 'c.yaml'), connection(`s-${suite}`, 'x', '{fromVault: {path: nomount}}'));
    const run = await runCli(target, ['plan', '-f', bad], { env: cliEnv });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(
      `${join(bad, 'c.yaml')}:9: admin.password: fromVault must be {path: "<mount>/<secret path>", key: "<key of the secret>"}`,
    );
  });
});
