// Refused Redis configurations (SPEC, "Redis topologies"): the real entry point (`npm start`'s src/main.ts) started
// against a real Sentinel set with passwords, each bad setting stopping the start with a non-zero exit and one clear
// line that names the variable to fix, never a password.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, type SentinelSet, startSentinelSet } from '../support/redis-sentinel.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const PASSWORD = `node-${randomBytes(9).toString('hex')}`;
const SENTINEL_PASSWORD = `sentinel-${randomBytes(9).toString('hex')}`;
const WRONG = `wrong-${randomBytes(9).toString('hex')}`;

let set: SentinelSet;
let evicting: SentinelSet;

beforeAll(async () => {
  [set, evicting] = await Promise.all([
    startSentinelSet({ password: PASSWORD, sentinelPassword: SENTINEL_PASSWORD }),
    startSentinelSet({ sentinels: 0, dataArgs: ['--maxmemory-policy', 'allkeys-lru'] }),
  ]);
});
afterAll(async () => {
  await Promise.all([set?.stop(), evicting?.stop()]);
});

/** Starts src/main.ts with `env` and waits for it to exit; kills it when it serves instead. */
function start(env: Record<string, string>): Promise<{ code: number | null; lines: string[] }> {
  const child = spawn(process.execPath, ['src/main.ts'], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      KEYTURN_STATE_DIR: mkdtempSync(join(tmpdir(), 'keyturn-state-')),
      KEYTURN_PREFIX: `kt-test-${randomBytes(4).toString('hex')}`,
      PORT: '0',
      LOG_FORMAT: 'json',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const collect = (c: Buffer) => lines.push(...String(c).split('\n').filter(Boolean));
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  // A guard, not a wait: a start that hangs instead of exiting fails the test rather than the run.
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  return new Promise((done) =>
    child.once('exit', (code) => {
      clearTimeout(timer);
      done({ code, lines });
    }),
  );
}

/**
 * The one line that stops the start: `keyturn: <why>` on stderr, or for configuration errors the one `  - <problem>`
 * line under `keyturn: Invalid configuration:`.
 */
function refusal(r: { code: number | null; lines: string[] }): string {
  const all = r.lines.join('\n');
  expect(r.code, all).not.toBe(0);
  expect(r.code, all).not.toBeNull();
  for (const secret of [PASSWORD, SENTINEL_PASSWORD, WRONG]) expect(all).not.toContain(secret);
  const stops = r.lines.filter((l) => l.startsWith('keyturn:'));
  expect(stops, all).toHaveLength(1);
  if (stops[0] !== 'keyturn: Invalid configuration:') return stops[0] as string;
  const problems = r.lines.filter((l) => l.startsWith('  - '));
  expect(problems, all).toHaveLength(1);
  return problems[0] as string;
}

const sentinelEnv = () => ({
  REDIS_SENTINEL_HOSTS: set.sentinelHosts,
  REDIS_SENTINEL_MASTER_NAME: set.masterName,
  REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD,
  REDIS_PASSWORD: PASSWORD,
});

describe('refused Redis configurations', () => {
  it('starts with the right settings (the set below is usable)', async () => {
    const child = spawn(process.execPath, ['src/main.ts'], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        KEYTURN_STATE_DIR: mkdtempSync(join(tmpdir(), 'keyturn-state-')),
        KEYTURN_PREFIX: `kt-test-${randomBytes(4).toString('hex')}`,
        PORT: '0',
        LOG_FORMAT: 'json',
        ...sentinelEnv(),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: string[] = [];
    child.stdout.on('data', (c: Buffer) => lines.push(...String(c).split('\n')));
    child.stderr.on('data', (c: Buffer) => lines.push(...String(c).split('\n')));
    const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
    try {
      const deadline = Date.now() + 20_000;
      while (!lines.some((l) => l.includes('keyturn serving on')) && Date.now() < deadline) {
        if (child.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 100)); // the poll interval of this wait for a line or an exit
      }
      expect(
        lines.some((l) => l.includes('keyturn serving on')),
        lines.join('\n'),
      ).toBe(true);
      for (const line of lines) for (const s of [PASSWORD, SENTINEL_PASSWORD]) expect(line).not.toContain(s);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });

  it('refuses two topologies at once, naming both variables', async () => {
    const line = refusal(
      await start({ ...sentinelEnv(), REDIS_URL: `redis://:${PASSWORD}@127.0.0.1:${set.dataPorts[0]}` }),
    );
    expect(line).toMatch(/REDIS_URL and REDIS_SENTINEL_HOSTS are both set: .*unset the others/);
  });

  it('refuses a malformed host list, naming the variable and the entry', async () => {
    const line = refusal(
      await start({ ...sentinelEnv(), REDIS_SENTINEL_HOSTS: '127.0.0.1:26379,sentinel-b' }),
    );
    expect(line).toMatch(/REDIS_SENTINEL_HOSTS must be host:port entries.*"sentinel-b"/);
  });

  it('stops when no sentinel answers', async () => {
    const line = refusal(
      await start({ ...sentinelEnv(), REDIS_SENTINEL_HOSTS: `127.0.0.1:${await freePort()}` }),
    );
    expect(line).toMatch(/no sentinel answers .*check REDIS_SENTINEL_HOSTS/);
  });

  it('stops on a master name the sentinels do not monitor', async () => {
    const line = refusal(await start({ ...sentinelEnv(), REDIS_SENTINEL_MASTER_NAME: 'not-the-master' }));
    expect(line).toMatch(/monitor no master named "not-the-master".*REDIS_SENTINEL_MASTER_NAME/);
  });

  it('stops on a wrong node password', async () => {
    const line = refusal(await start({ ...sentinelEnv(), REDIS_PASSWORD: WRONG }));
    expect(line).toMatch(/refused Keyturn's user name or password: check REDIS_USERNAME and REDIS_PASSWORD/);
  });

  it('stops on a missing node password', async () => {
    const { REDIS_PASSWORD: _, ...env } = sentinelEnv();
    const line = refusal(await start(env));
    expect(line).toMatch(/requires a password and none was given: set REDIS_PASSWORD/);
  });

  it('stops on a wrong sentinel password', async () => {
    const line = refusal(await start({ ...sentinelEnv(), REDIS_SENTINEL_PASSWORD: WRONG }));
    expect(line).toMatch(/refused the sentinel password: check REDIS_SENTINEL_PASSWORD/);
  });

  it('refuses a Redis that evicts keys', async () => {
    const line = refusal(await start({ REDIS_URL: `redis://127.0.0.1:${evicting.dataPorts[0]}` }));
    expect(line).toMatch(/maxmemory-policy allkeys-lru.*set maxmemory-policy noeviction/);
  });
});
