import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { FailpointError, Failpoints } from '../../src/rotation/failpoints.ts';

const MODULE_URL = new URL('../../src/rotation/failpoints.ts', import.meta.url).href;

/** How many of `times` hits of `name` throw a FailpointError. */
async function throwsOf(fp: Failpoints, name: string, times: number): Promise<number> {
  let n = 0;
  for (let i = 0; i < times; i++) {
    try {
      await fp.hit(name);
    } catch (err) {
      expect(err).toBeInstanceOf(FailpointError);
      n++;
    }
  }
  return n;
}

describe('Failpoints', () => {
  it('is disabled and does nothing for an empty spec', async () => {
    for (const spec of ['', ' ', ',', ' , ']) {
      const fp = new Failpoints(spec);
      expect(fp.enabled).toBe(false);
      await expect(fp.hit('after-set')).resolves.toBeUndefined();
    }
  });

  it('throw:N throws the first N hits, then lets the step through', async () => {
    const fp = new Failpoints('before-test=throw:3');
    expect(fp.enabled).toBe(true);
    for (let i = 0; i < 3; i++) {
      await expect(fp.hit('before-test')).rejects.toThrow(FailpointError);
    }
    await expect(fp.hit('before-test')).resolves.toBeUndefined();
    await expect(fp.hit('before-test')).resolves.toBeUndefined();
  });

  it('the error names the failpoint', async () => {
    const fp = new Failpoints('after-set=throw:1');
    let error: unknown;
    try {
      await fp.hit('after-set');
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(FailpointError);
    expect((error as Error).name).toBe('FailpointError');
    expect((error as Error).message).toBe('failpoint after-set fired');
  });

  it('sleep:MS delays the step and then lets it through', async () => {
    const fp = new Failpoints('before-test=sleep:200');
    const started = performance.now();
    await expect(fp.hit('before-test')).resolves.toBeUndefined();
    expect(performance.now() - started).toBeGreaterThanOrEqual(190);
  });

  it('plain "throw" throws every time', async () => {
    expect(await throwsOf(new Failpoints('after-set=throw'), 'after-set', 50)).toBe(50);
  });

  it('counts each failpoint separately and ignores names it was not given', async () => {
    const fp = new Failpoints(' a=throw:1 , b=throw:2 ');
    await expect(fp.hit('c')).resolves.toBeUndefined();
    await expect(fp.hit('after-set')).resolves.toBeUndefined();
    expect(await throwsOf(fp, 'b', 5)).toBe(2);
    expect(await throwsOf(fp, 'a', 5)).toBe(1);
  });

  it('a separate instance has its own counter', async () => {
    const first = new Failpoints('a=throw:2');
    expect(await throwsOf(first, 'a', 5)).toBe(2);
    expect(await throwsOf(new Failpoints('a=throw:2'), 'a', 5)).toBe(2);
  });

  it.each(['a=explode', 'a=KILL', 'a=abort', 'a=kill:3', 'a=b=c'])(
    'rejects the unknown action in %j',
    (spec) => {
      expect(() => new Failpoints(spec)).toThrow(/KEYTURN_FAILPOINTS: unknown action/);
    },
  );

  it('the rejection names the action and the failpoint', async () => {
    expect(() => new Failpoints('ok=throw:1,after-set=explode')).toThrow(
      'KEYTURN_FAILPOINTS: unknown action "explode" for after-set (kill, throw, throw:N with N >= 1, sleep:MS)',
    );
  });

  // Regression test (found by review, fixed): anything starting with
  // "throw" is accepted and the count is Number(...) unchecked. "throw:abc" and "throw:2x" give NaN and
  // "throw:0"/"throw:-1" give ≤ 0, so the failpoint never fires and a fault test passes without injecting its
  // fault; "thrower" is taken as an unbounded throw. They should be refused like any unknown action.
  it.each(['a=throw:abc', 'a=throw:2x', 'a=throw:', 'a=throw:-1', 'a=throw:1.5', 'a=thrower'])(
    'rejects the malformed throw action in %j',
    (spec) => {
      expect(() => new Failpoints(spec)).toThrow(/KEYTURN_FAILPOINTS/);
    },
  );

  describe('kill', () => {
    function runChild(
      code: string,
    ): Promise<{ signal: NodeJS.Signals | null; code: number | null; stdout: string; stderr: string }> {
      return new Promise((resolve, reject) => {
        const child = spawn(process.execPath, ['--input-type=module', '-e', code], {
          stdio: ['ignore', 'pipe', 'pipe'],
          cwd: fileURLToPath(new URL('../..', import.meta.url)),
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (c: Buffer) => {
          stdout += String(c);
        });
        child.stderr.on('data', (c: Buffer) => {
          stderr += String(c);
        });
        child.once('error', reject);
        child.once('close', (exitCode, signal) => resolve({ signal, code: exitCode, stdout, stderr }));
      });
    }

    it('SIGKILLs the process at the named failpoint, and not before', async () => {
      const result = await runChild(`
        const { Failpoints } = await import(${JSON.stringify(MODULE_URL)});
        const fp = new Failpoints('after-set=kill');
        if (!fp.enabled) throw new Error('not enabled');
        await fp.hit('before-set');
        process.stdout.write('reached after-set\\n');
        await fp.hit('after-set');
        process.stdout.write('survived\\n');
      `);
      expect(result.stderr).toBe('');
      expect(result.stdout).toContain('reached after-set');
      expect(result.stdout).not.toContain('survived');
      expect(result.signal).toBe('SIGKILL');
      expect(result.code).toBeNull();
    });

    it('a name without an action means kill', async () => {
      const result = await runChild(`
        const { Failpoints } = await import(${JSON.stringify(MODULE_URL)});
        await new Failpoints('after-set').hit('after-set');
        process.stdout.write('survived\\n');
      `);
      expect(result.stdout).not.toContain('survived');
      expect(result.signal).toBe('SIGKILL');
    });

    it('control: the same child exits normally when the failpoint is not configured to kill', async () => {
      const result = await runChild(`
        const { Failpoints } = await import(${JSON.stringify(MODULE_URL)});
        await new Failpoints('other=kill').hit('after-set');
        process.stdout.write('survived\\n');
      `);
      expect(result.stderr).toBe('');
      expect(result.stdout).toContain('survived');
      expect(result.signal).toBeNull();
      expect(result.code).toBe(0);
    });
  });
});
