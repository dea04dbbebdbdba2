// `keyturn plan` and `keyturn apply` on input that must be refused (issue 18): a bad file names its file, line and
// field; a literal secret is refused unless allowed, and never printed; a reference that cannot be read is named;
// --prune without a selector is a usage error; plan --detailed-exitcode exits 1 on every error. Nothing here needs
// a worker or a downstream: the files are refused before anything is written.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliTarget, runCli } from '../support/cli.ts';
import { dropPrefix, type Keyturn, startKeyturn, testEnv } from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;
let target: CliTarget;
let dir: string;
const suite = randomBytes(3).toString('hex');
const selector = `suite=${suite}`;
const conn = `pg-${suite}`;
const admin = { name: 'kt_admin', password: randomBytes(18).toString('base64url') };
const cliEnv: Record<string, string> = { PG_ADMIN_PASSWORD: admin.password };

function connectionYaml(): string {
  return `kind: Connection
id: ${conn}
type: postgres
host: 127.0.0.1
port: 5432
database: keyturn_test
admin:
  username: ${admin.name}
  password: {fromEnv: PG_ADMIN_PASSWORD}
labels:
  team: payments
`;
}

function writeFiles(files: Record<string, string>): string {
  const d = mkdtempSync(join(dir, 'set-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(d, name), text);
  return d;
}

const fullSet = () =>
  writeFiles({
    '01-connection.yaml': connectionYaml(),
    '02-credentials.yaml': `kind: Credential\nid: ${suite}-a\nconnection: ${conn}\nusername: app\nstrategy: single-user\nschedule: {every: 30d}\n`,
  });

const cli = (args: string[], extraEnv: Record<string, string> = {}) =>
  runCli(target, args, { env: { ...cliEnv, ...extraEnv } });

beforeAll(async () => {
  kt = await startKeyturn(env);
  target = { url: kt.url, token: env.adminToken };
  dir = mkdtempSync(join(tmpdir(), 'kt-apply-errors-'));
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('keyturn plan and apply refuse bad input', () => {
  it('refuses --prune without a selector (a usage error, exit 2)', async () => {
    const run = await cli(['apply', '-f', fullSet(), '--prune']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('--prune needs --selector');
  });

  it('names the file, the line and the field of a bad file, and exits 1', async () => {
    const files = writeFiles({
      'bad.yaml': `kind: Credential
id: ${suite}-bad
connection: ${conn}
username: someone
strategy: single-user
schedule:
  every: 30 days
labels: {team: payments}
colour: blue
`,
    });
    const run = await cli(['plan', '-f', files, '--selector', selector]);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe('');
    const file = join(files, 'bad.yaml');
    expect(run.stderr).toContain(
      `${file}:7: schedule.every: must be: A whole number and a unit: s, m, h or d`,
    );
    expect(run.stderr).toContain(`${file}:9: colour: is not a field of Credential`);
    const detailed = await cli(['plan', '-f', files, '--selector', selector, '--detailed-exitcode']);
    expect(detailed.code).toBe(1);
  });

  it('refuses a literal secret unless --allow-literal-secrets', async () => {
    const literal = randomBytes(12).toString('base64url');
    const files = writeFiles({
      'conn.yaml': connectionYaml().replace('{fromEnv: PG_ADMIN_PASSWORD}', literal),
    });
    const run = await cli(['plan', '-f', files, '--selector', selector]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`${join(files, 'conn.yaml')}:9: admin.password: holds a literal secret`);
    expect(run.stdout + run.stderr).not.toContain(literal);
    const allowed = await cli(['plan', '-f', files, '--selector', selector, '--allow-literal-secrets']);
    expect(allowed.code, allowed.stderr).toBe(0);
    // Accepted: the connection would be created with it, shown without its value.
    expect(allowed.stdout).toContain(`+ connection ${conn} (create)`);
    expect(allowed.stdout).toContain('admin.password: (set)');
    expect(allowed.stdout + allowed.stderr).not.toContain(literal);
  });

  it('names a reference that cannot be read, and exits 1', async () => {
    const run = await cli(['plan', '-f', fullSet(), '--selector', selector, '--detailed-exitcode'], {
      PG_ADMIN_PASSWORD: undefined as unknown as string,
    });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(
      /01-connection\.yaml:9: admin\.password \(environment variable PG_ADMIN_PASSWORD\): environment variable PG_ADMIN_PASSWORD is not set/,
    );
  });

  it('plan --detailed-exitcode: 1 when the service cannot be reached', async () => {
    const run = await runCli(
      { url: 'http://127.0.0.1:9', token: 'x' },
      ['plan', '-f', fullSet(), '--detailed-exitcode'],
      {
        env: cliEnv,
      },
    );
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('Cannot reach Keyturn at http://127.0.0.1:9');
  });
});
