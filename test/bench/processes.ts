// Processes the bench starts and stops: a private redis-server (so that nothing else on the machine's Redis weighs
// on a figure, and a figure's keys never touch it), and Keyturn itself as `npm start` or its worker entry point, as
// a user runs them.
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Redis } from 'ioredis';
import { freePort } from '../support/redis-sentinel.ts';

const ROOT = join(import.meta.dirname, '../..');

export interface PrivateRedis {
  url: string;
  port: number;
  stop(): Promise<void>;
}

/** A redis-server on a free loopback port, without persistence, for one figure; stopped and its files removed. */
export async function startPrivateRedis(extraArgs: string[] = []): Promise<PrivateRedis> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'keyturn-bench-redis-'));
  const child = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      ...extraArgs,
    ],
    { stdio: 'ignore' },
  );
  const url = `redis://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => {});
    try {
      await probe.connect();
      await probe.ping();
      probe.disconnect();
      break;
    } catch {
      probe.disconnect();
      if (i > 100 || child.exitCode !== null) throw new Error(`redis-server on port ${port} did not start`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    url,
    port,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        await once(child, 'exit');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface KeyturnProcess {
  child: ChildProcess;
  /** The API's base URL, or the worker's health port. */
  url: string;
  stop(): Promise<void>;
}

/**
 * Keyturn as a user starts it: `node src/main.ts` (API and workers in one process, `npm start`) or
 * `node workers/rotation-worker.ts`. Its output is discarded (log level as given, `info` by default). Resolves when
 * /readyz answers 200.
 */
export async function startKeyturn(
  entry: 'main' | 'worker',
  env: Record<string, string>,
): Promise<KeyturnProcess> {
  const port = await freePort();
  const stateDir = mkdtempSync(join(tmpdir(), 'keyturn-bench-state-'));
  const script = entry === 'main' ? 'src/main.ts' : 'workers/rotation-worker.ts';
  // KEYTURN_BENCH_CPU_PROF=<dir>: each Keyturn process writes a V8 CPU profile there when it stops.
  const prof = process.env.KEYTURN_BENCH_CPU_PROF;
  const child = spawn(process.execPath, [...(prof ? ['--cpu-prof', '--cpu-prof-dir', prof] : []), script], {
    cwd: ROOT,
    env: { ...process.env, ...env, PORT: String(port), HOST: '127.0.0.1', KEYTURN_STATE_DIR: stateDir },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-4000);
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`${script} exited with ${child.exitCode}: ${stderr}`);
    const ok = await fetch(`${url}/readyz`).then(
      (r) => r.status === 200,
      () => false,
    );
    if (ok) break;
    if (i > 600) throw new Error(`${script} was not ready within a minute: ${stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    child,
    url,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        // A bound on the clean shutdown, not a wait: the exit event ends it.
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await once(child, 'exit');
        clearTimeout(timer);
      }
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

export type Api = (method: string, path: string, body?: unknown) => Promise<any>;

export function apiOf(url: string, token: string): Api {
  return async (method, path, body) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body ? { 'content-type': 'application/json' } : {}),
      },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const json = res.status === 204 ? undefined : await res.json();
    if (res.status >= 300)
      throw new Error(`${method} ${path} answered ${res.status}: ${JSON.stringify(json)}`);
    return json;
  };
}

/** Runs fn over items with `width` in flight. */
export async function inParallel<T>(
  items: T[],
  width: number,
  fn: (item: T) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** The bench's downstream (cheap-webhook.ts) in a child process; its port once it listens. */
export async function startWebhook(
  signingKey: string,
  keyId: string,
): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [join(import.meta.dirname, 'cheap-webhook.ts')], {
    env: { ...process.env, BENCH_SIGNING_KEY: signingKey, BENCH_KEY_ID: keyId },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string];
  return { child, port: Number(line) };
}
