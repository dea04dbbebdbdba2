// The CLI's errors, usage errors and shell completion (issue 18), through the real binary against a running API: an
// API error names the route, the HTTP status and the API's message; a usage error exits 2; the bash and zsh scripts
// complete commands and options in those shells.
import { execFileSync, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliTarget, runCli } from '../support/cli.ts';
import { dropPrefix, type Keyturn, startKeyturn, testEnv } from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;
let target: CliTarget;
const cli = (...args: string[]) => runCli(target, args);

beforeAll(async () => {
  kt = await startKeyturn(env);
  target = { url: kt.url, token: env.adminToken };
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
});

describe('errors and usage', () => {
  it('an API error names the route, the HTTP status and the API message', async () => {
    const run = await cli('credentials', 'get', 'nope');
    expect(run.code).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toBe(
      'keyturn: GET /v1/credentials/nope: Credential "nope" does not exist (HTTP 404, not_found)\n',
    );
    const bad = await cli('credentials', 'patch', 'nope', '--set', 'schedule.every=soon');
    expect(bad.stderr).toMatch(
      /^keyturn: PATCH \/v1\/credentials\/nope: body\.schedule.* \(HTTP 400, invalid_request\)/,
    );
  });

  it('a usage error exits 2', async () => {
    for (const args of [
      ['credentials', 'get'],
      ['connections', 'list', '--bogus'],
      ['credentials', 'patch', 'x'],
      ['no-such-command'],
    ]) {
      const run = await cli(...args);
      expect(run.code, args.join(' ')).toBe(2);
    }
  });
});

describe('keyturn completion', () => {
  it('bash: completes commands, subcommands and options', async () => {
    const script = (await cli('completion', 'bash')).stdout;
    const complete = (words: string[]) =>
      execFileSync('bash', [
        '-c',
        `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _keyturn; printf '%s\\n' "\${COMPREPLY[@]}"`,
      ])
        .toString()
        .trim()
        .split('\n');
    expect(complete(['keyturn', 'cre'])).toEqual(['credentials']);
    expect(complete(['keyturn', 'credentials', 'p']).sort()).toEqual(['patch', 'pause']);
    expect(complete(['keyturn', 'plan', '--det'])).toEqual(['--detailed-exitcode']);
    expect(complete(['keyturn', '--json', 'leases', ''])).toEqual(
      expect.arrayContaining(['issue', 'renew', 'revoke', 'list']),
    );
    const bad = await cli('completion', 'fish');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('"fish" is not a shell this makes a script for: bash or zsh');
  });

  const noZsh = spawnSync('zsh', ['--version']).status !== 0;
  if (noZsh) console.log('keyturn completion zsh: not run, no zsh on this machine (apt-get install zsh)');
  it.skipIf(noZsh)('zsh: completes the same from its words', async () => {
    const script = (await cli('completion', 'zsh')).stdout;
    const out = execFileSync('zsh', [
      '-f',
      '-c',
      `compadd() { [[ $1 == -- ]] && shift; print -l -- "$@" }\n${script}\nwords=(keyturn credentials pa); CURRENT=3; _keyturn`,
    ]).toString();
    // zsh matches the prefix itself: the function offers every word that may follow `keyturn credentials`.
    expect(out.split('\n')).toEqual(expect.arrayContaining(['patch', 'pause', 'resume', 'list', '--help']));
    expect(out).not.toContain('rotate-admin');
  });
});
