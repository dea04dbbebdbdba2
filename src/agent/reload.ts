// What the agent does after a file changed: run the template's command (an argv, no shell unless the user writes
// one), or send its signal to the process whose pid is in its pidFile. The outcome is returned for the log: exit
// code or signal and duration. The command's own output goes to the agent's stderr untouched and is never put into a
// log line (a command may print what it read).
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import type { AgentTemplate } from './config.ts';

export interface ReloadOutcome {
  action: 'command' | 'signal' | 'none';
  ok: boolean;
  /** A sentence for the log; never the command's output. */
  detail: string;
  durationMs: number;
}

export async function reload(template: AgentTemplate): Promise<ReloadOutcome> {
  const started = performance.now();
  const took = () => Math.round(performance.now() - started);
  if (template.command) {
    const result = await runCommand(template.command, template.commandTimeoutMs);
    return { action: 'command', ...result, durationMs: took() };
  }
  if (template.signal && template.pidFile) {
    const result = await sendSignal(template.signal, template.pidFile);
    return { action: 'signal', ...result, durationMs: took() };
  }
  return { action: 'none', ok: true, detail: 'no reload configured', durationMs: 0 };
}

function runCommand(argv: string[], timeoutMs: number): Promise<{ ok: boolean; detail: string }> {
  const [program, ...args] = argv as [string, ...string[]];
  return new Promise((resolve) => {
    // Its output goes to the agent's stderr (stdout carries the agent's JSON log lines), never parsed or logged.
    const child = spawn(program, args, { stdio: ['ignore', 2, 2] });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({ ok: false, detail: `${program} could not be started (${err.code ?? 'error'})` });
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ ok: true, detail: `${program} exited 0` });
      else if (signal === 'SIGKILL')
        resolve({ ok: false, detail: `${program} was killed after ${timeoutMs / 1000}s (commandTimeout)` });
      else resolve({ ok: false, detail: `${program} ${signal ? `ended by ${signal}` : `exited ${code}`}` });
    });
  });
}

async function sendSignal(signal: NodeJS.Signals, pidFile: string): Promise<{ ok: boolean; detail: string }> {
  let text: string;
  try {
    text = await readFile(pidFile, 'utf8');
  } catch (err) {
    return {
      ok: false,
      detail: `pidFile ${pidFile} cannot be read (${(err as NodeJS.ErrnoException).code})`,
    };
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 1)
    return { ok: false, detail: `pidFile ${pidFile} does not hold a process id` };
  try {
    process.kill(pid, signal);
    return { ok: true, detail: `${signal} sent to ${pid}` };
  } catch (err) {
    return { ok: false, detail: `${signal} to ${pid} failed (${(err as NodeJS.ErrnoException).code})` };
  }
}
