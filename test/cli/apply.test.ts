// `keyturn plan` and `keyturn apply` (issue 18) through the real binary against a running service with workers and
// the test PostgreSQL: from empty, again (no changes), a one-field change, a changed admin password, removal with and
// without --prune, two applies at once, and plan --detailed-exitcode's 0 and 2 (apply-errors.test.ts: bad files,
// literals, references, and its 1).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliTarget, runCli, startCli } from '../support/cli.ts';
import {
  canLogin,
  createAppRole,
  createPgAdminRole,
  dropPrefix,
  type Keyturn,
  pgAdmin,
  pgInfo,
  startKeyturn,
  testEnv,
  waitFor,
} from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;
let target: CliTarget;
let dir: string;
const suite = randomBytes(3).toString('hex');
const selector = `suite=${suite}`;
const conn = `pg-${suite}`;
let admin: Awaited<ReturnType<typeof createPgAdminRole>>;
let single: string;
let alternating: string;
// The key of the admin password digests (see src/cli/declarative/plan.ts): CI would keep it with the secrets.
const applyKey = randomBytes(32).toString('base64url');
let cliEnv: Record<string, string>;

function connectionYaml(extra = ''): string {
  const info = pgInfo();
  return `kind: Connection
id: ${conn}
type: postgres
host: ${info.host}
port: ${info.port}
database: ${info.database}
admin:
  username: ${admin.name}
  password: {fromEnv: PG_ADMIN_PASSWORD}
labels:
  team: payments
${extra}`;
}

function credentialYaml(id: string, username: string, strategy: string, every = '30d'): string {
  return `kind: Credential
id: ${id}
connection: ${conn}
username: ${username}
strategy: ${strategy}
schedule: {every: ${every}}
maxAgeDays: 45
labels:
  team: payments
`;
}

function writeFiles(files: Record<string, string>): string {
  const d = mkdtempSync(join(dir, 'set-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(d, name), text);
  return d;
}

const cli = (args: string[], extraEnv: Record<string, string> = {}, input?: string) =>
  runCli(target, args, { env: { ...cliEnv, ...extraEnv }, ...(input !== undefined ? { input } : {}) });

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  target = { url: kt.url, token: env.adminToken };
  dir = mkdtempSync(join(tmpdir(), 'kt-apply-'));
  admin = await createPgAdminRole();
  single = (await createAppRole()).name;
  alternating = (await createAppRole()).name;
  cliEnv = { PG_ADMIN_PASSWORD: admin.password, KEYTURN_APPLY_KEY: applyKey };
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
  rmSync(dir, { recursive: true, force: true });
});

const creds = () => ({ single: `${suite}-single`, alternating: `${suite}-alt` });
const fullSet = (every = '30d') =>
  writeFiles({
    '01-connection.yaml': connectionYaml(),
    '02-credentials.yaml': `${credentialYaml(creds().single, single, 'single-user', every)}---\n${credentialYaml(creds().alternating, alternating, 'alternating-users')}`,
  });

describe('keyturn apply', () => {
  it('applies from empty: the connection first, then its credentials, which rotate once and log in', async () => {
    const files = fullSet();
    const before = await cli(['plan', '-f', files, '--selector', selector, '--detailed-exitcode']);
    expect(before.stderr).toBe('');
    expect(before.code, before.stdout).toBe(2);
    expect(before.stdout).toContain(`+ connection ${conn} (create)`);
    expect(before.stdout).toContain('admin.password: (set)');
    expect(before.stdout).toMatch(/Plan: 3 to create, 0 to change, 0 to delete, 0 unchanged\./);
    // Planning wrote nothing.
    expect((await kt.api('GET', `/v1/connections/${conn}`)).status).toBe(404);

    const run = await cli(['apply', '-f', files, '--selector', selector]);
    expect(run.code, run.stderr + run.stdout).toBe(0);
    expect(run.stdout).toContain('Apply complete: 3 created, 0 changed, 0 deleted.');
    // The plan's order: the connection before the credentials.
    expect(run.stdout.indexOf(`connection ${conn}`)).toBeLessThan(
      run.stdout.indexOf(`credential ${creds().single}`),
    );
    const c = await kt.api('GET', `/v1/connections/${conn}`);
    expect(c.body.labels).toMatchObject({ team: 'payments', 'managed-by': 'keyturn-apply', suite });
    for (const id of Object.values(creds())) {
      const cred = await kt.api('GET', `/v1/credentials/${id}`);
      expect(cred.body.status).toBe('active');
      expect(cred.body.labels).toMatchObject({ 'managed-by': 'keyturn-apply', suite });
      const secret = await kt.api('GET', `/v1/credentials/${id}/secret`);
      expect(await canLogin(secret.body.username, secret.body.password)).toBe(true);
    }
  });

  it('applies the same files again and changes nothing, and says so', async () => {
    const files = fullSet();
    const before = await kt.api('GET', `/v1/credentials/${creds().single}`);
    const run = await cli(['apply', '-f', files, '--selector', selector]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain('No changes: 3 object(s) match the files.');
    const after = await kt.api('GET', `/v1/credentials/${creds().single}`);
    expect(after.headers.get('etag')).toBe(before.headers.get('etag'));
    expect(after.body.updatedAt).toBe(before.body.updatedAt);
    const plan = await cli(['plan', '-f', files, '--selector', selector, '--detailed-exitcode']);
    expect(plan.code).toBe(0);
  });

  it('shows a changed schedule as a one-field diff, and applies exactly that', async () => {
    const files = fullSet('7d');
    const plan = await cli(['plan', '-f', files, '--selector', selector, '--detailed-exitcode']);
    expect(plan.code).toBe(2);
    const changed = plan.stdout.split('\n').filter((l) => /→/.test(l));
    expect(changed).toEqual(['    schedule.every: "30d" → "7d"']);
    expect(plan.stdout).toContain(`~ credential ${creds().single}`);
    expect(plan.stdout).toMatch(/Plan: 0 to create, 1 to change, 0 to delete, 2 unchanged\./);
    const json = await cli(['--json', 'plan', '-f', files, '--selector', selector]);
    const parsed = JSON.parse(json.stdout);
    expect(parsed.changes).toBe(1);
    expect(parsed.steps.find((s: { op: string }) => s.op === 'update').changes).toEqual([
      { field: 'schedule.every', from: '30d', to: '7d' },
    ]);

    // apply --dry-run is the plan, and writes nothing.
    const dry = await cli(['apply', '-f', files, '--selector', selector, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('    schedule.every: "30d" → "7d"');
    expect(dry.stdout).not.toContain('Apply complete');
    expect((await kt.api('GET', `/v1/credentials/${creds().single}`)).body.schedule).toEqual({
      every: '30d',
    });

    const run = await cli(['apply', '-f', files, '--selector', selector]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain('Apply complete: 0 created, 1 changed, 0 deleted.');
    expect((await kt.api('GET', `/v1/credentials/${creds().single}`)).body.schedule).toEqual({ every: '7d' });
    expect((await cli(['plan', '-f', files, '--selector', selector, '--detailed-exitcode'])).code).toBe(0);
  });

  it('shows a changed admin password as (changed), never its value, and applies it', async () => {
    const files = fullSet('7d');
    const next = randomBytes(18).toString('base64url');
    await pgAdmin((c) =>
      c.query(`ALTER ROLE ${pg.escapeIdentifier(admin.name)} PASSWORD ${pg.escapeLiteral(next)}`),
    );
    const plan = await cli(['plan', '-f', files, '--selector', selector, '--detailed-exitcode'], {
      PG_ADMIN_PASSWORD: next,
    });
    expect(plan.code).toBe(2);
    expect(plan.stdout).toContain(`~ connection ${conn}`);
    expect(plan.stdout).toContain('    admin.password: (changed)');
    for (const out of [plan.stdout, plan.stderr]) {
      expect(out).not.toContain(next);
      expect(out).not.toContain(admin.password);
    }
    const run = await cli(['apply', '-f', files, '--selector', selector], { PG_ADMIN_PASSWORD: next });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout + run.stderr).not.toContain(next);
    expect(
      (
        await cli(['plan', '-f', files, '--selector', selector, '--detailed-exitcode'], {
          PG_ADMIN_PASSWORD: next,
        })
      ).code,
    ).toBe(0);
    // The service took the new password: a rotation (which logs in as the admin) works.
    const rotated = await cli(['rotate', creds().single]);
    expect(rotated.code, rotated.stderr).toBe(0);
    admin.password = next;
    cliEnv.PG_ADMIN_PASSWORD = next;
  });

  it('without --prune keeps a credential the files no longer declare; with --prune deletes it', async () => {
    const files = writeFiles({
      '01-connection.yaml': connectionYaml(),
      '02-credentials.yaml': credentialYaml(creds().single, single, 'single-user', '7d'),
    });
    const kept = await cli(['apply', '-f', files, '--selector', selector]);
    expect(kept.code, kept.stderr).toBe(0);
    expect(kept.stdout).toContain(
      `credential ${creds().alternating} is no longer in the files: kept (--prune deletes it)`,
    );
    expect((await kt.api('GET', `/v1/credentials/${creds().alternating}`)).status).toBe(200);

    // Another selector's objects are not this set's to prune, whatever they are named.
    const other = await cli(['plan', '-f', files, '--selector', 'suite=someone-else', '--prune']);
    expect(other.stdout).not.toContain(`- credential ${creds().alternating}`);

    const plan = await cli(['plan', '-f', files, '--selector', selector, '--prune', '--detailed-exitcode']);
    expect(plan.code).toBe(2);
    expect(plan.stdout).toContain(`- credential ${creds().alternating} (pruned: no longer in the files)`);
    const pruned = await cli(['apply', '-f', files, '--selector', selector, '--prune']);
    expect(pruned.code, pruned.stderr).toBe(0);
    expect(pruned.stdout).toContain('Apply complete: 0 created, 0 changed, 1 deleted.');
    expect((await kt.api('GET', `/v1/credentials/${creds().alternating}`)).status).toBe(404);
    expect((await kt.api('GET', `/v1/credentials/${creds().single}`)).status).toBe(200);
  });

  it('lets only one of two concurrent applies write: the other is refused (412) and writes nothing', async () => {
    const a = writeFiles({
      '01-connection.yaml': connectionYaml(),
      '02-credentials.yaml': credentialYaml(creds().single, single, 'single-user', '14d'),
    });
    const b = writeFiles({
      '01-connection.yaml': connectionYaml(),
      '02-credentials.yaml': credentialYaml(creds().single, single, 'single-user', '21d'),
    });
    // Both plan from the same state, then wait for confirmation: their writes would interleave without If-Match.
    const first = startCli(target, ['apply', '-f', a, '--selector', selector, '--confirm'], { env: cliEnv });
    const second = startCli(target, ['apply', '-f', b, '--selector', selector, '--confirm'], { env: cliEnv });
    await waitFor('both applies to plan and ask', async () =>
      [first, second].every((run) => /Only "yes" is accepted/.test(run.output().stderr)),
    );
    first.child.stdin.end('yes\n');
    const one = await first.done;
    expect(one.code, one.stderr).toBe(0);
    second.child.stdin.end('yes\n');
    const two = await second.done;
    expect(two.code).toBe(1);
    expect(two.stdout).toContain(
      `Error: PATCH /v1/credentials/${creds().single}: Credential "${creds().single}" changed since you read it`,
    );
    expect(two.stdout).toContain('(HTTP 412, precondition_failed)');
    expect(two.stdout).toContain(`Not done: update credential ${creds().single}`);
    expect((await kt.api('GET', `/v1/credentials/${creds().single}`)).body.schedule).toEqual({
      every: '14d',
    });
    // Planned again, the second set applies over what is there now.
    const again = await cli(['apply', '-f', b, '--selector', selector]);
    expect(again.code, again.stderr).toBe(0);
    expect((await kt.api('GET', `/v1/credentials/${creds().single}`)).body.schedule).toEqual({
      every: '21d',
    });
  });
});
