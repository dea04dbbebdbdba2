// The CLI covers the API (issue 18): every command through the real binary (bin/keyturn.js, what `npx keyturn`
// runs) against a running service with workers and the test PostgreSQL: connections, credentials, leases,
// compliance, events (cli-usage.test.ts: errors, usage and shell completion).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliTarget, runCli, startCliWorld } from '../support/cli.ts';
import { canLogin, dropPrefix, type Keyturn, pgInfo, testEnv } from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;
let target: CliTarget;
let dir: string;
let admin: { name: string; password: string };
let user: string;
const suite = randomBytes(3).toString('hex');
const conn = `pg-${suite}`;
const cred = `app-${suite}`;
let cliEnv: Record<string, string>;
const cli = (...args: string[]) => runCli(target, args, { env: cliEnv });

beforeAll(async () => {
  ({ kt, target, admin, user, cliEnv } = await startCliWorld(env));
  dir = mkdtempSync(join(tmpdir(), 'kt-cli-'));
  const info = pgInfo();
  writeFileSync(
    join(dir, 'connection.yaml'),
    `kind: Connection\nid: ${conn}\ntype: postgres\nhost: ${info.host}\nport: ${info.port}\ndatabase: ${info.database}\nadmin: {username: ${admin.name}, password: {fromEnv: PG_ADMIN}}\n`,
  );
  writeFileSync(
    join(dir, 'credential.yaml'),
    `kind: Credential\nid: ${cred}\nconnection: ${conn}\nusername: ${user}\nstrategy: single-user\nschedule: {every: 30d}\nmaxAgeDays: 45\n`,
  );
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('keyturn connections', () => {
  it('create (the admin password from a reference), list, get, patch', async () => {
    const created = await cli('connections', 'create', '-f', join(dir, 'connection.yaml'));
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout.trim()).toBe(`created connection ${conn}`);

    const list = await cli('connections', 'list');
    expect(list.stdout.split('\n')[0]).toMatch(/^ID\s+TYPE\s+HOST\s+PORT\s+ADMIN\s+PAUSED\s+LABELS$/);
    expect(list.stdout).toMatch(new RegExp(`^${conn}\\s+postgres\\s+`, 'm'));
    const json = JSON.parse((await cli('--json', 'connections', 'list')).stdout);
    expect(json.map((c: { id: string }) => c.id)).toContain(conn);

    const get = await cli('connections', 'get', conn);
    expect(get.stdout).toContain(`id: ${conn}`);
    expect(get.stdout).toContain(`username: ${admin.name}`);
    expect(get.stdout).not.toContain(admin.password);

    const patched = await cli('connections', 'patch', conn, '--set', 'labels={team: core}');
    expect(patched.code, patched.stderr).toBe(0);
    expect((await kt.api('GET', `/v1/connections/${conn}`)).body.labels).toEqual({ team: 'core' });
  });
});

describe('keyturn credentials', () => {
  it('create follows the first rotation with progress on stderr, the result on stdout', async () => {
    const run = await cli('credentials', 'create', '-f', join(dir, 'credential.yaml'));
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain(`first rotation of ${cred}:`);
    expect(run.stdout).toMatch(/^succeeded: rotation [0-9a-f-]{36}\n$/);
    const secret = await kt.api('GET', `/v1/credentials/${cred}/secret`);
    expect(await canLogin(secret.body.username, secret.body.password)).toBe(true);
  });

  it('list and get', async () => {
    const list = await cli('credentials', 'list');
    expect(list.stdout).toMatch(new RegExp(`^${cred}\\s+single-user\\s+active\\s+`, 'm'));
    const get = await cli('credentials', 'get', cred);
    expect(get.stdout).toContain(`connection: ${conn}`);
    expect(get.stdout).toContain('status: active');
  });

  it('patch, pause, resume', async () => {
    expect(
      (await cli('credentials', 'patch', cred, '--set', 'schedule.every=7d', '--set', 'maxAgeDays=10')).code,
    ).toBe(0);
    expect((await kt.api('GET', `/v1/credentials/${cred}`)).body).toMatchObject({
      schedule: { every: '7d' },
      maxAgeDays: 10,
    });
    const paused = await cli('credentials', 'pause', cred);
    expect(paused.stdout.trim()).toBe(`paused credential ${cred}`);
    expect((await kt.api('GET', `/v1/credentials/${cred}`)).body.paused).toBe(true);
    await cli('credentials', 'resume', cred);
    expect((await kt.api('GET', `/v1/credentials/${cred}`)).body.paused).toBe(false);
  });

  it('rotate and rotation (the existing commands) still work', async () => {
    const run = await cli('rotate', cred);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(new RegExp(`^rotated ${cred}: new version`));
  });
});

describe('keyturn credentials delete, connections delete', () => {
  it('deletes the credential, then the connection', async () => {
    const refused = await cli('connections', 'delete', conn);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      new RegExp(
        `^keyturn: DELETE /v1/connections/${conn}: Connection "${conn}" is used by 1 credential\\(s\\) .*\\(HTTP 409, conflict\\)\\n$`,
      ),
    );
    expect((await cli('credentials', 'delete', cred)).stdout.trim()).toBe(`deleted credential ${cred}`);
    expect((await cli('connections', 'delete', conn)).code).toBe(0);
    expect((await kt.api('GET', `/v1/connections/${conn}`)).status).toBe(404);
  });
});
