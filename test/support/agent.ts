// `keyturn agent` as a child process for the tests, a service that logs in with the file it renders
// (agent-service.ts), and the rotations scenario of issue 13 shared by the integration and the slow suite.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { makePki, type Pki } from './pki.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface Child {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  exited: Promise<number | NodeJS.Signals | null>;
  kill(signal?: NodeJS.Signals): Promise<number | NodeJS.Signals | null>;
}

function start(args: string[], env: Record<string, string> = {}): Child {
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  let outRest = '';
  let errRest = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (outRest + chunk).split('\n');
    outRest = lines.pop() ?? '';
    stdout.push(...lines.filter(Boolean));
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (errRest + chunk).split('\n');
    errRest = lines.pop() ?? '';
    stderr.push(...lines.filter(Boolean));
  });
  const exited = new Promise<number | NodeJS.Signals | null>((done) =>
    child.once('close', (code, signal) => {
      if (outRest) stdout.push(outRest);
      if (errRest) stderr.push(errRest);
      done(signal ?? code);
    }),
  );
  return {
    child,
    stdout,
    stderr,
    exited,
    async kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** `keyturn agent --config <file> [...args]`. */
export function spawnAgent(configFile: string, args: string[] = []): Child {
  return start(['bin/keyturn.js', 'agent', '--config', configFile, ...args]);
}

/** The service that logs in with the rendered file at start and at each SIGHUP. */
export function spawnService(file: string, pidFile: string): Child {
  return start(['test/support/agent-service.ts', file, pidFile]);
}

export interface Login {
  event: 'login';
  reason: string;
  ok: boolean;
  version: string;
  user?: string;
  code?: string;
}
export const loginsOf = (service: Child): Login[] =>
  service.stdout.map((l) => JSON.parse(l) as Login).filter((l) => l.event === 'login');

/** A scratch directory with a token file; `config` writes agent.yaml there. */
export async function agentDir(token: string): Promise<{
  dir: string;
  tokenFile: string;
  config(data: object, name?: string): Promise<string>;
  remove(): Promise<void>;
}> {
  const dir = await mkdtemp(join(tmpdir(), 'kt-agent-'));
  const tokenFile = join(dir, 'token');
  await writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
  return {
    dir,
    tokenFile,
    async config(data, name = `agent-${randomBytes(3).toString('hex')}.yaml`) {
      const path = join(dir, name);
      await writeFile(path, stringify(data));
      return path;
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/** The env file a service reads: one line per field, and the version for the test to follow. */
export const ENV_TEMPLATE = [
  'PGUSER={{username}}',
  'PGPASSWORD={{password}}',
  'PGHOST={{host}}',
  'PGPORT={{port}}',
  'PGDATABASE={{database}}',
  'KEYTURN_VERSION={{version}}',
  'DATABASE_URL=postgres://{{urlencoded.username}}:{{urlencoded.password}}@{{host}}:{{port}}/{{database}}',
  '',
].join('\n');

export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

export async function readEnvFile(path: string): Promise<Record<string, string> | undefined> {
  try {
    return parseEnvFile(await readFile(path, 'utf8'));
  } catch {
    return undefined;
  }
}

import { freePort } from './ports.ts';

export { freePort };

/**
 * A CA, a server certificate for 127.0.0.1 and a client certificate, made by the openssl CLI in `dir`
 * (test/support/pki.ts); the reason, when openssl is not there.
 */
export function makeTestPki(dir: string): Pki | string {
  const version = spawnSync('openssl', ['version'], { encoding: 'utf8' });
  if (version.status !== 0)
    return `the openssl CLI is not available (${version.error?.message ?? version.stderr})`;
  return makePki(dir);
}
