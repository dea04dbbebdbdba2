// Runs the real `keyturn` binary (bin/keyturn.js, what `npx keyturn` runs) against a test service, and collects what
// it printed: the CLI tests and the CLI leak test read every byte of it.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createAppRole, createPgAdminRole, type Keyturn, startKeyturn, type TestEnv } from './harness.ts';

export const KEYTURN_BIN = fileURLToPath(new URL('../../bin/keyturn.js', import.meta.url));

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CliTarget {
  url: string;
  token: string;
}

/** Every run's output, for the leak test: it scans all that the CLI ever printed. */
export const cliTranscript: string[] = [];

function environment(target: CliTarget, env: Record<string, string | undefined>): NodeJS.ProcessEnv {
  return {
    ...process.env,
    KEYTURN_URL: target.url,
    KEYTURN_TOKEN: target.token,
    KEYTURN_DEBUG: '',
    NO_COLOR: '1',
    ...env,
  };
}

/** One run to its end; `input` is written to its stdin (then closed). */
export function runCli(
  target: CliTarget,
  args: string[],
  options: { env?: Record<string, string | undefined>; input?: string; cwd?: string } = {},
): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [KEYTURN_BIN, ...args], {
      env: environment(target, options.env ?? {}),
      ...(options.cwd ? { cwd: options.cwd } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('close', (code) => {
      cliTranscript.push(stdout, stderr);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(options.input ?? '');
  });
}

/** A run that stays open (a prompt, `events follow`): its output so far, its stdin, and its end. */
export interface LiveCli {
  child: ChildProcessWithoutNullStreams;
  output(): { stdout: string; stderr: string };
  done: Promise<CliRun>;
}

export function startCli(
  target: CliTarget,
  args: string[],
  options: { env?: Record<string, string | undefined> } = {},
): LiveCli {
  const child = spawn(process.execPath, [KEYTURN_BIN, ...args], {
    env: environment(target, options.env ?? {}),
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => {
    stdout += d;
  });
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const done = new Promise<CliRun>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      cliTranscript.push(stdout, stderr);
      resolve({ code, stdout, stderr });
    });
  });
  return { child, output: () => ({ stdout, stderr }), done };
}

/**
 * What the command suites drive: a Keyturn with workers, a PostgreSQL admin role whose password the CLI reads from
 * PG_ADMIN (a reference in the files), and a user for a credential.
 */
export async function startCliWorld(env: TestEnv): Promise<{
  kt: Keyturn;
  target: CliTarget;
  admin: { name: string; password: string };
  user: string;
  cliEnv: Record<string, string>;
}> {
  const kt = await startKeyturn(env, { components: ['api', 'worker'] });
  const admin = await createPgAdminRole();
  const user = (await createAppRole()).name;
  return {
    kt,
    target: { url: kt.url, token: env.adminToken },
    admin,
    user,
    cliEnv: { PG_ADMIN: admin.password },
  };
}
