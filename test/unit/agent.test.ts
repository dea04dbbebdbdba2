// The agent's parts that need no server: Mustache rendering (no HTML escaping, helpers, no code), template checks,
// the configuration's schema and cross-checks, the atomic write-if-changed, the reload actions and the backoff.
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentConfigError, checkAgentConfig, loadAgentConfig } from '../../src/agent/config.ts';
import { writeIfChanged } from '../../src/agent/files.ts';
import { reload } from '../../src/agent/reload.ts';
import { checkTemplate, render, type SecretFields } from '../../src/agent/render.ts';
import { backoffDelay } from '../../src/client/events.ts';

const secret: SecretFields = {
  username: 'app_user',
  password: `p&<>"'/:@?#% ${'x'.repeat(10)}{{password}}`,
  host: 'db.internal',
  port: 5432,
  database: 'payments',
  version: 'v-123',
  rotatedAt: '2026-12-01T00:00:00.000Z',
};

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kt-agent-unit-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('render', () => {
  it('inserts every field as it is: no HTML escaping, no second expansion of a value', () => {
    expect(
      render(
        '{{username}}|{{password}}|{{host}}|{{port}}|{{database}}|{{version}}|{{rotatedAt}}|{{{password}}}|{{&password}}',
        secret,
      ),
    ).toBe(
      `app_user|${secret.password}|db.internal|5432|payments|v-123|2026-12-01T00:00:00.000Z|${secret.password}|${secret.password}`,
    );
  });

  it('URL-encodes, JSON-quotes, base64s and shell-quotes on request', () => {
    const url = render(
      'postgres://{{urlencoded.username}}:{{urlencoded.password}}@{{host}}:{{port}}/{{database}}',
      secret,
    );
    const parsed = new URL(url);
    expect(decodeURIComponent(parsed.password)).toBe(secret.password);
    expect(parsed.pathname).toBe('/payments');
    expect(render('{{#urlencode}}{{password}}{{/urlencode}}', secret)).toBe(
      encodeURIComponent(secret.password),
    );
    expect(JSON.parse(render('{"p": {{#json}}{{password}}{{/json}}}', secret))).toEqual({
      p: secret.password,
    });
    expect(Buffer.from(render('{{#base64}}{{password}}{{/base64}}', secret), 'base64').toString()).toBe(
      secret.password,
    );
    const shell = render('{{#shell}}{{password}}{{/shell}}', { ...secret, password: "it's" });
    expect(shell).toBe(`'it'\\''s'`);
  });

  it('a null database renders empty, and sections on a field work as conditionals', () => {
    expect(render('db={{database}}{{^database}} none{{/database}}', { ...secret, database: null })).toBe(
      'db= none',
    );
  });

  it('refuses unknown names, partials and broken templates, naming the problem without the template text', () => {
    expect(
      checkTemplate('{{username}} {{urlencoded.password}} {{#json}}{{password}}{{/json}}'),
    ).toBeUndefined();
    expect(checkTemplate('{{pasword}}')).toMatch(/unknown name "pasword"/);
    expect(checkTemplate('{{constructor}}')).toMatch(/unknown name "constructor"/);
    expect(checkTemplate('{{#lambda}}x{{/lambda}}')).toMatch(/unknown name "lambda"/);
    expect(checkTemplate('{{> header}}')).toMatch(/partial/);
    expect(checkTemplate('{{#json}}{{password}}')).toMatch(
      /not a valid Mustache template: Unclosed section "json"/,
    );
    expect(checkTemplate('{{hunter2-secret!}}')).toMatch(/unknown name \(not shown\)/);
  });

  it('cannot reach anything but the fields: prototype names render nothing', () => {
    // checkTemplate refuses these at load; the view has no prototype in case one slips through.
    expect(render('[{{constructor}}][{{toString}}][{{__proto__}}]', secret)).toBe('[][][]');
  });
});

describe('configuration', () => {
  const valid = {
    url: 'https://keyturn.example:8080',
    tokenFile: '/var/run/keyturn/token',
    templates: [
      { credential: 'payments-api', destination: '/run/secrets/payments.env', template: '{{password}}' },
    ],
  };

  it('accepts the shape SPEC pins, with jwtFile instead of tokenFile, and optional TLS, health and reloads', () => {
    expect(checkAgentConfig(valid)).toEqual([]);
    expect(
      checkAgentConfig({
        url: 'https://keyturn.example',
        jwtFile: '/var/run/secrets/tokens/keyturn',
        caFile: '/etc/keyturn/ca.pem',
        certFile: '/etc/keyturn/tls.crt',
        keyFile: '/etc/keyturn/tls.key',
        healthFile: '/tmp/healthy',
        healthPort: 8099,
        templates: [
          { ...valid.templates[0], mode: '0640', command: ['sh', '-c', 'kill -HUP $(cat /run/app.pid)'] },
          {
            credential: 'b',
            destination: '/b',
            templateFile: 'b.tmpl',
            signal: 'SIGHUP',
            pidFile: '/run/b.pid',
          },
        ],
      }),
    ).toEqual([]);
  });

  it('names each problem by its place, never echoing a value', () => {
    const token = 'tok_6f1c0e3b9a2d4f5e8c7b1a0d9e8f7a6b';
    const problems = checkAgentConfig({
      url: `https://user:${token}@keyturn.example`,
      token,
      certFile: '/c',
      templates: [
        {
          credential: 'x',
          destination: '/a',
          template: 't',
          templateFile: 'f',
          mode: '9999',
          signal: 'SIGKILL',
        },
        { credential: 'x', destination: '/a' },
      ],
    });
    expect(problems).toEqual(
      expect.arrayContaining([
        'the file has an unknown field "token": the file names a token file (tokenFile), never the token itself',
        'templates[0].mode must be an octal file mode in quotes, such as "0600" or "0640"',
        expect.stringMatching(/^templates\[0\]\.signal must be a signal name/),
        'url must not carry a user name or password: put the token in tokenFile',
        'tokenFile or jwtFile is required: the file holding the bearer token Keyturn gave this agent',
        'certFile and keyFile go together: give both for a client certificate, or neither',
        'templates[0] has both template and templateFile: give one',
        'templates[1].template or templates[1].templateFile is required',
        'templates[1].destination is also the destination of templates[0]: one file, one template',
      ]),
    );
    expect(problems.join('\n')).not.toContain(token);
  });

  it('loads relative paths from the file’s directory, reads templateFile, and checks the template in it', async () => {
    await writeFile(join(dir, 'db.tmpl'), 'PGPASSWORD={{password}}\n');
    await writeFile(
      join(dir, 'agent.yaml'),
      'url: http://127.0.0.1:8080/\ntokenFile: token\ntemplates:\n  - {credential: a, destination: out/db.env, templateFile: db.tmpl, mode: "640"}\n',
    );
    const config = await loadAgentConfig(join(dir, 'agent.yaml'));
    expect(config.url).toBe('http://127.0.0.1:8080');
    expect(config.auth).toEqual({ kind: 'token', file: join(dir, 'token') });
    expect(config.templates[0]).toMatchObject({
      destination: join(dir, 'out/db.env'),
      template: 'PGPASSWORD={{password}}\n',
      mode: 0o640,
      commandTimeoutMs: 60_000,
    });

    await writeFile(join(dir, 'bad.tmpl'), 'PGPASSWORD={{secret}}\n');
    await writeFile(
      join(dir, 'bad.yaml'),
      'url: http://127.0.0.1:8080\njwtFile: token\ntemplates:\n  - {credential: a, destination: x, templateFile: bad.tmpl}\n  - {credential: a, destination: y, templateFile: missing.tmpl}\n',
    );
    const err = await loadAgentConfig(join(dir, 'bad.yaml')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentConfigError);
    expect((err as AgentConfigError).problems).toEqual([
      expect.stringMatching(/^templates\[0\]\.templateFile uses an unknown name "secret"/),
      'templates[1].templateFile cannot be read: ENOENT',
    ]);
    expect((err as Error).message).not.toContain('\n');
  });
});

describe('writeIfChanged', () => {
  it('creates the file with the exact mode whatever the umask, replaces it atomically, and skips equal content', async () => {
    const path = join(dir, 'w.env');
    const old = process.umask(0o077);
    try {
      expect(await writeIfChanged(path, 'one\n', 0o644)).toBe('written');
    } finally {
      process.umask(old);
    }
    expect((await stat(path)).mode & 0o7777).toBe(0o644);
    const first = await stat(path);
    expect(await writeIfChanged(path, 'one\n', 0o644)).toBe('unchanged');
    expect((await stat(path)).mtimeMs).toBe(first.mtimeMs);
    expect(await writeIfChanged(path, 'two\n', 0o600)).toBe('written');
    const second = await stat(path);
    // A rename, not an overwrite in place: a reader holding the old file keeps the old content.
    expect(second.ino).not.toBe(first.ino);
    expect(second.mode & 0o7777).toBe(0o600);
    expect(await readFile(path, 'utf8')).toBe('two\n');
    // Same content, other mode: the mode is fixed and nothing is rewritten.
    expect(await writeIfChanged(path, 'two\n', 0o640)).toBe('unchanged');
    expect((await stat(path)).mode & 0o7777).toBe(0o640);
    expect((await stat(path)).ino).toBe(second.ino);
    expect((await readdir(dir)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('fails when the directory does not exist, leaving nothing behind', async () => {
    await expect(writeIfChanged(join(dir, 'nope', 'x.env'), 'x', 0o600)).rejects.toThrow(/ENOENT/);
  });
});

describe('reload', () => {
  const base = { credential: 'a', destination: '/x', template: '', source: 'inline', mode: 0o600 };

  it('runs the command as an argv (no shell) and reports its exit status, not its output', async () => {
    const marker = join(dir, 'marker');
    const ok = await reload({ ...base, command: ['touch', marker], commandTimeoutMs: 5000 });
    expect(ok).toMatchObject({ action: 'command', ok: true, detail: 'touch exited 0' });
    expect((await stat(marker)).isFile()).toBe(true);
    // No shell: "$(…)" is an argument, not a substitution.
    const literal = join(dir, '$(echo hi)');
    await reload({ ...base, command: ['touch', literal], commandTimeoutMs: 5000 });
    expect((await stat(literal)).isFile()).toBe(true);
    expect(
      await reload({ ...base, command: ['sh', '-c', 'echo secret-output; exit 3'], commandTimeoutMs: 5000 }),
    ).toMatchObject({ ok: false, detail: 'sh exited 3' });
    expect(await reload({ ...base, command: ['/no/such/program'], commandTimeoutMs: 5000 })).toMatchObject({
      ok: false,
      detail: '/no/such/program could not be started (ENOENT)',
    });
    expect(await reload({ ...base, command: ['sleep', '10'], commandTimeoutMs: 200 })).toMatchObject({
      ok: false,
      detail: 'sleep was killed after 0.2s (commandTimeout)',
    });
  });

  it('sends the signal to the pid in pidFile, and says why it could not', async () => {
    const child = spawn(
      'sh',
      ['-c', 'trap "echo got-hup; exit 0" HUP; echo ready; while :; do sleep 0.05; done'],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    let out = '';
    // The signal goes only once the shell has set its trap: before that, SIGHUP's default ends it silently (a race
    // this test lost on a loaded machine).
    const ready = new Promise<void>((resolve) => {
      child.stdout.on('data', (c) => {
        out += String(c);
        if (out.includes('ready')) resolve();
      });
    });
    await ready;
    const pidFile = join(dir, 'app.pid');
    await writeFile(pidFile, `${child.pid}\n`);
    const exited = new Promise((r) => child.once('exit', r));
    expect(await reload({ ...base, signal: 'SIGHUP', pidFile, commandTimeoutMs: 1000 })).toMatchObject({
      action: 'signal',
      ok: true,
      detail: `SIGHUP sent to ${child.pid}`,
    });
    await exited;
    expect(out).toContain('got-hup');
    expect(
      await reload({ ...base, signal: 'SIGHUP', pidFile: join(dir, 'none.pid'), commandTimeoutMs: 1 }),
    ).toMatchObject({
      ok: false,
      detail: expect.stringMatching(/cannot be read \(ENOENT\)/),
    });
    await writeFile(pidFile, 'not a pid');
    expect(await reload({ ...base, signal: 'SIGHUP', pidFile, commandTimeoutMs: 1 })).toMatchObject({
      ok: false,
      detail: expect.stringMatching(/does not hold a process id/),
    });
  });
});

describe('backoffDelay', () => {
  it('grows exponentially to the cap, with full jitter, never below the minimum', () => {
    const b = { minMs: 500, maxMs: 30_000 };
    expect(backoffDelay(0, b, () => 1)).toBe(500);
    expect(backoffDelay(3, b, () => 1)).toBe(4000);
    expect(backoffDelay(30, b, () => 1)).toBe(30_000);
    expect(backoffDelay(30, b, () => 0)).toBe(500);
    expect(backoffDelay(30, b, () => 0.5)).toBe(15_000);
  });
});
