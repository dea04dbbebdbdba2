// `keyturn token create|hash` through the real command line (bin/keyturn.js on the pinned Node), offline.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTokensFile } from '../../src/auth/tokens-file.ts';

const BIN = resolve(import.meta.dirname, '../../bin/keyturn.js');
const sha256 = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex');

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'keyturn-cli-token-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function keyturn(args: string[], input?: string) {
  // No server anywhere: a request to one would fail, so these commands must not make any.
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: dir,
    input: input ?? '',
    encoding: 'utf8',
    env: { ...process.env, KEYTURN_URL: 'http://127.0.0.1:9', KEYTURN_TOKEN: '' },
    timeout: 30_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('keyturn token create --file', () => {
  it('prints the token once, writes its SHA-256 (never the token) to a new file the server accepts', async () => {
    const file = join(dir, 'new-tokens.yaml');
    const r = keyturn([
      'token',
      'create',
      '--name',
      'payments-api',
      '--role',
      'reader',
      '--credential',
      'payments-*',
      '--credential',
      'payments-db',
      '--label',
      'team=payments',
      '--expires',
      '90d',
      '--file',
      file,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const token = r.stdout.trim();
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/); // 32 random bytes, base64url
    expect(r.stdout).toBe(`${token}\n`);
    expect(r.stderr).toMatch(/shown only once/);
    expect(r.stderr).toContain(file);
    expect(r.stderr).not.toContain(token);

    const text = await readFile(file, 'utf8');
    expect(text).not.toContain(token);
    const parsed = parseTokensFile(text, file);
    expect(parsed.tokens).toHaveLength(1);
    const entry = parsed.tokens[0]!;
    expect(entry).toMatchObject({
      name: 'payments-api',
      sha256: sha256(token),
      roles: ['reader'],
      credentials: ['payments-*', 'payments-db'],
      labels: { team: 'payments' },
    });
    const days = (entry.expiresAt!.getTime() - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(89.9);
    expect(days).toBeLessThanOrEqual(90);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
  });

  it('appends to an existing file, keeping its comments and layout byte for byte, and refuses a duplicate name', async () => {
    const file = join(dir, 'tokens.yaml');
    const original = [
      '# Production tokens: reviewed by security (SEC-123)',
      'tokens:',
      `  - name: platform-ci            # the principal's name in audit events`,
      `    sha256: ${sha256('ci-token')}   # made 2026-01-02`,
      '    roles: [operator]',
      '',
      '  # payments',
      '  - name: payments-worker',
      `    sha256: ${sha256('worker-token')}`,
      '    roles: [reader]',
      '    credentials: ["payments-*"]  # ids or globs',
      '# issuers below',
      'jwt:',
      '  - issuer: https://kubernetes.default.svc.cluster.local',
      '    audience: keyturn          # string or list',
      '    rules:',
      '      - match: {sub: "system:serviceaccount:payments:*"}',
      '        roles: [reader]',
      '        credentials: ["payments-*"]',
      '',
    ].join('\n');
    await writeFile(file, original);

    const r = keyturn(['token', 'create', '--name', 'auditor-1', '--role', 'auditor', '--file', file]);
    expect(r.code, r.stderr).toBe(0);
    const token = r.stdout.trim();
    const text = await readFile(file, 'utf8');

    // The entry went in after the last token, and every other byte is where it was.
    const inserted = [`  - name: auditor-1`, `    sha256: ${sha256(token)}`, '    roles: [auditor]', ''].join(
      '\n',
    );
    const at = original.indexOf('# issuers below');
    expect(text).toBe(original.slice(0, at) + inserted + original.slice(at));
    const parsed = parseTokensFile(text, file);
    expect(parsed.tokens.map((t) => t.name)).toEqual(['platform-ci', 'payments-worker', 'auditor-1']);
    expect(parsed.tokens[2]!.sha256).toBe(sha256(token));
    expect(parsed.jwt).toHaveLength(1);

    // The same name again: refused with exit 2, no token printed, the file untouched.
    const again = keyturn(['token', 'create', '--name', 'auditor-1', '--role', 'auditor', '--file', file]);
    expect(again.code).toBe(2);
    expect(again.stdout).toBe('');
    expect(again.stderr).toMatch(/already has an entry named "auditor-1"/);
    expect(await readFile(file, 'utf8')).toBe(text);
    // A name taken by a certificate entry is refused the same way (names are unique across both).
    await writeFile(
      file,
      `${text}certificates:\n  - name: cert-1\n    subject: cert-1.example.com\n    roles: [auditor]\n`,
    );
    const cert = keyturn(['token', 'create', '--name', 'cert-1', '--role', 'auditor', '--file', file]);
    expect(cert.code).toBe(2);
    expect(cert.stderr).toMatch(/already has an entry named "cert-1" \(certificates\[0\]\)/);
  });

  it('refuses to add to a file that already has problems, listing them', async () => {
    const file = join(dir, 'broken.yaml');
    const broken = 'tokens:\n  - name: x\n    sha256: not-a-hash\n    roles: [operator]\n';
    await writeFile(file, broken);
    const r = keyturn(['token', 'create', '--name', 'y', '--role', 'operator', '--file', file]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('already has problems');
    expect(r.stderr).toContain('tokens[0].sha256 must be 64 hex characters');
    expect(await readFile(file, 'utf8')).toBe(broken);
  });
});

describe('keyturn token create', () => {
  it('without --file prints the token, then its entry, which parses as a tokens file', () => {
    const r = keyturn(['token', 'create', '--name', 'platform-ci', '--role', 'operator,auditor']);
    expect(r.code, r.stderr).toBe(0);
    const [token, ...rest] = r.stdout.split('\n');
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(r.stdout.split(token!)).toHaveLength(2); // once
    expect(r.stderr).toMatch(/shown only once/);
    const parsed = parseTokensFile(`tokens:\n${rest.join('\n')}`, 'stdout');
    expect(parsed.tokens).toEqual([
      { name: 'platform-ci', sha256: sha256(token!), roles: ['operator', 'auditor'] },
    ]);
  });

  it('--json prints the token and the entry as JSON', () => {
    const r = keyturn([
      'token',
      'create',
      '--name',
      'j',
      '--role',
      'admin',
      '--expires',
      '2030-01-01',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { token: string; entry: Record<string, unknown> };
    expect(out.entry).toEqual({
      name: 'j',
      sha256: sha256(out.token),
      roles: ['admin'],
      expiresAt: '2030-01-01T00:00:00Z',
    });
  });

  it('lists every problem of bad input with exit code 2 and prints no token', () => {
    const r = keyturn([
      'token',
      'create',
      '--name',
      'bad name',
      '--role',
      'root',
      '--credential',
      'x',
      '--expires',
      '2001-01-01',
      '--label',
      'nokey',
    ]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('--label must be key=value');
    expect(r.stderr).toContain('--expires is in the past');
    expect(r.stderr).toContain('--name must be 1-128 characters');
    expect(r.stderr).toContain('--role must be one of admin, operator, reader, auditor');
    expect(r.stderr).toContain('--credential binds credentials to a reader');

    const unbound = keyturn(['token', 'create', '--name', 'r', '--role', 'reader']);
    expect(unbound.code).toBe(2);
    expect(unbound.stderr).toMatch(/neither credentials nor labels.*give --credential or --label/);

    const missing = keyturn(['token', 'create', '--role', 'reader']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("required option '--name <name>'");
  });
});

describe('keyturn token hash', () => {
  it('prints the SHA-256 of the token on stdin, agreeing with the entry token create wrote', () => {
    const made = keyturn(['token', 'create', '--name', 'h', '--role', 'auditor', '--json']);
    const { token, entry } = JSON.parse(made.stdout) as { token: string; entry: { sha256: string } };
    const r = keyturn(['token', 'hash'], `${token}\n`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${entry.sha256}\n`);
    expect(keyturn(['token', 'hash', '--json'], token).stdout).toBe(
      `${JSON.stringify({ sha256: entry.sha256 })}\n`,
    );
  });

  it('refuses empty input and more than one line with exit code 2', () => {
    expect(keyturn(['token', 'hash'], '').code).toBe(2);
    expect(keyturn(['token', 'hash'], 'a\nb\n').code).toBe(2);
  });
});
