// Start-up: configuration errors are reported at once, one per variable, with nothing secret echoed; production
// refuses to run on development secrets; with no Redis at the default address a private redis-server is started.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/harness.ts';

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
