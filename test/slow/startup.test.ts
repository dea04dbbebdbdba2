// Start-up: configuration errors are reported at once, one per variable, with nothing secret echoed; production
// refuses to run on development secrets; with no Redis at the default address a private redis-server is started.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { describe, expect, it } from 'vitest';
import { startAwsKmsEmulator } from '../emulators/aws-kms.ts';
import { dropPrefix, waitFor } from '../support/harness.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function run(env: Record<string, string>, timeoutMs = 15_000) {
  const r = spawnSync(process.execPath, ['src/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...env },
    encoding: 'utf8',
    timeout: timeoutMs,
  });
  return { code: r.status, stderr: r.stderr, stdout: r.stdout };
}

describe('start-up', () => {
  it('lists every bad variable at once, exits 2, and never echoes a secret', () => {
    const secretish = 'c2hvcnQ=';
    const r = run({
      PORT: 'eighty',
      KEYTURN_MASTER_KEY: secretish,
      LOG_LEVEL: 'loud',
      REDIS_URL: 'http://u:hunter22@x',
    });
    expect(r.code).toBe(2);
    for (const name of ['PORT', 'KEYTURN_MASTER_KEY', 'LOG_LEVEL', 'REDIS_URL'])
      expect(r.stderr).toContain(name);
    expect(r.stderr).not.toContain(secretish);
    expect(r.stderr).not.toContain('hunter22');
  });

  it('refuses to start in production without an admin token and a master key', () => {
    const state = mkdtempSync(join(tmpdir(), 'keyturn-state-'));
    const r = run({ NODE_ENV: 'production', KEYTURN_STATE_DIR: state, PORT: '0' });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/KEYTURN_ADMIN_TOKEN is required when NODE_ENV=production/);
  });

  it('refuses to start workers in production without the audit signing key, and leaves no key behind', () => {
    const state = mkdtempSync(join(tmpdir(), 'keyturn-state-'));
    const r = run({
      NODE_ENV: 'production',
      KEYTURN_STATE_DIR: state,
      PORT: '0',
      KEYTURN_ADMIN_TOKEN: randomBytes(32).toString('base64'),
      KEYTURN_MASTER_KEY: randomBytes(32).toString('base64'),
      KEYTURN_PREFIX: `kt-test-${randomBytes(4).toString('hex')}`,
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /KEYTURN_AUDIT_SIGNING_KEY or KEYTURN_AUDIT_SIGNING_KEY_FILE is required for workers/,
    );
    expect(readdirSync(state)).toEqual([]);
  });
});

/** Runs src/main.ts until it prints `until` (then SIGTERM) or exits; resolves with its code and output. */
function runUntil(env: Record<string, string>, until: RegExp, timeoutMs = 20_000) {
  const child = spawn(process.execPath, ['src/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  let matched = false;
  const onData = (c: Buffer) => {
    output += String(c);
    if (!matched && until.test(output)) {
      matched = true;
      child.kill('SIGTERM');
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise<{ code: number | null; output: string; matched: boolean }>((resolve) =>
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output, matched });
    }),
  );
}

describe('start-up with the key-encryption key in AWS KMS (issue 17 §1)', () => {
  const production = (extra: Record<string, string>) => ({
    NODE_ENV: 'production',
    KEYTURN_STATE_DIR: mkdtempSync(join(tmpdir(), 'keyturn-state-')),
    PORT: '0',
    KEYTURN_COMPONENTS: 'api',
    KEYTURN_ADMIN_TOKEN: randomBytes(32).toString('base64'),
    KEYTURN_PREFIX: `kt-test-${randomBytes(4).toString('hex')}`,
    ...extra,
  });

  it('production starts with KEYTURN_KEK_PROVIDER=aws-kms and no KEYTURN_MASTER_KEY, and seals its own keys in KMS', async () => {
    const kms = await startAwsKmsEmulator();
    try {
      const client = new KMSClient({
        endpoint: kms.endpoint,
        region: kms.region,
        credentials: kms.credentials,
      });
      const arn = (await client.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
      client.destroy();
      const env = production({
        KEYTURN_KEK_PROVIDER: 'aws-kms',
        KEYTURN_KMS_KEY_ID: arn,
        AWS_ENDPOINT_URL_KMS: kms.endpoint,
        AWS_REGION: kms.region,
        AWS_ACCESS_KEY_ID: kms.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: kms.credentials.secretAccessKey,
      });
      const r = await runUntil(env, /keyturn serving on/).finally(() => dropPrefix(env.KEYTURN_PREFIX));
      expect(r.matched, r.output).toBe(true);
      expect(r.output).not.toMatch(/KEYTURN_MASTER_KEY is required/);
      expect(r.output).not.toContain(kms.credentials.secretAccessKey);
      // The approval digest key was made and sealed under the KMS key at start.
      expect(kms.callCount('GenerateDataKey')).toBe(1);
    } finally {
      await kms.close();
    }
  });

  it('production refuses to start when the KMS key cannot be used, naming the key and the fix', async () => {
    const kms = await startAwsKmsEmulator();
    try {
      const r = await runUntil(
        production({
          KEYTURN_KEK_PROVIDER: 'aws-kms',
          KEYTURN_KMS_KEY_ID: 'alias/does-not-exist',
          AWS_ENDPOINT_URL_KMS: kms.endpoint,
          AWS_REGION: kms.region,
          AWS_ACCESS_KEY_ID: kms.credentials.accessKeyId,
          AWS_SECRET_ACCESS_KEY: kms.credentials.secretAccessKey,
        }),
        /keyturn serving on/,
      );
      expect(r.matched).toBe(false);
      expect(r.code).not.toBe(0);
      expect(r.output).toMatch(
        /could not start: AWS KMS refused DescribeKey with key alias\/does-not-exist \(NotFoundException\): check KEYTURN_KMS_KEY_ID/,
      );
    } finally {
      await kms.close();
    }
  });

  it('production with the env provider and no KEYTURN_MASTER_KEY refuses, naming the providers that keep the key elsewhere', () => {
    const r = run(production({}));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /KEYTURN_MASTER_KEY is required .*KEYTURN_KEK_PROVIDER=aws-kms or vault-transit/,
    );
  });
});

// A network namespace of its own has nothing listening on 127.0.0.1:6379.
const canUnshare =
  process.getuid?.() === 0 &&
  spawnSync('unshare', ['-n', 'true']).status === 0 &&
  spawnSync('redis-server', ['--version']).status === 0;
if (!canUnshare) {
  console.warn(
    'skipping the private redis-server test: it needs root, unshare -n and redis-server on the PATH',
  );
}

describe.skipIf(!canUnshare)('no Redis at the default address', () => {
  it('starts a private redis-server, says so, serves, and stops it on SIGTERM', async () => {
    const state = mkdtempSync(join(tmpdir(), 'keyturn-state-'));
    const child = spawn(
      'unshare',
      ['-n', 'sh', '-c', `ip link set lo up && exec "${process.execPath}" src/main.ts`],
      {
        cwd: ROOT,
        env: { PATH: process.env.PATH ?? '', KEYTURN_STATE_DIR: state, PORT: '0', LOG_FORMAT: 'json' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const lines: string[] = [];
    child.stdout.on('data', (c: Buffer) => lines.push(...String(c).split('\n')));
    child.stderr.on('data', (c: Buffer) => lines.push(...String(c).split('\n')));
    const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
    try {
      await waitFor(
        'the service to serve',
        async () => lines.some((l) => l.includes('keyturn serving on')),
        20_000,
      );
      expect(lines.some((l) => l.includes('started a private redis-server'))).toBe(true);
      expect(lines.some((l) => l.includes(join(state, 'redis')))).toBe(true);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });
});
