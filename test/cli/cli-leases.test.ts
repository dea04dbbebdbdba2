// The CLI covers the API (issue 18), second part (cli-commands.test.ts is the first): leases, the compliance report,
// the live event stream and the admin rotation, through the real binary against a running service with workers and
// the test PostgreSQL. The connection and the credential they need are registered through the API.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliTarget, runCli, startCli, startCliWorld } from '../support/cli.ts';
import {
  canLogin,
  dropPrefix,
  type Keyturn,
  pgInfo,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;
let target: CliTarget;
let admin: { name: string; password: string };
let user: string;
const suite = randomBytes(3).toString('hex');
const conn = `pg-${suite}`;
const cred = `app-${suite}`;
let cliEnv: Record<string, string>;
const cli = (...args: string[]) => runCli(target, args, { env: cliEnv });

beforeAll(async () => {
  ({ kt, target, admin, user, cliEnv } = await startCliWorld(env));
  const info = pgInfo();
  const registered = await kt.api('POST', '/v1/connections', {
    id: conn,
    type: 'postgres',
    host: info.host,
    port: info.port,
    database: info.database,
    admin: { username: admin.name, password: admin.password },
  });
  expect(registered.status, registered.text).toBe(201);
  const created = await kt.api('POST', '/v1/credentials', {
    id: cred,
    connection: conn,
    username: user,
    strategy: 'single-user',
    schedule: { every: '30d' },
    maxAgeDays: 45,
  });
  expect(created.status, created.text).toBe(201);
  await waitForRotation(kt, created.body.rotation.id);
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
});

describe('keyturn leases', () => {
  it('issue (a user that logs in), list, get, renew, revoke', async () => {
    const issued = await cli('--json', 'leases', 'issue', cred, '--ttl', '15m');
    expect(issued.code, issued.stderr).toBe(0);
    const lease = JSON.parse(issued.stdout);
    expect(await canLogin(lease.username, lease.password)).toBe(true);
    const human = await cli('leases', 'list', cred);
    expect(human.stdout).toMatch(new RegExp(`^${lease.id}\\s+${cred}\\s+${lease.username}\\s+active`, 'm'));
    const get = await cli('leases', 'get', lease.id);
    expect(get.stdout).toContain(`username: ${lease.username}`);
    expect(get.stdout).not.toContain(lease.password);
    const renewed = await cli('leases', 'renew', lease.id, '--ttl', '30m');
    expect(renewed.code, renewed.stderr).toBe(0);
    expect(renewed.stdout).toMatch(new RegExp(`^renewed lease ${lease.id}: expires `));
    expect((await cli('leases', 'revoke', lease.id)).code).toBe(0);
    await waitFor('the lease user to be gone', async () => !(await canLogin(lease.username, lease.password)));
  });
});

describe('keyturn compliance', () => {
  it('as a table, CSV and JSON', async () => {
    const table = await cli('compliance');
    expect(table.stdout.split('\n')[0]).toMatch(/^ID\s+CONNECTION\s+STRATEGY\s+STATUS\s+AGE \(DAYS\)/);
    expect(table.stdout).toMatch(new RegExp(`^${cred}\\s+${conn}\\s+single-user\\s+active`, 'm'));
    expect(table.stdout).toMatch(/as of .*: 1 credential\(s\), 1 within policy \(100%\)/);
    const csv = await cli('compliance', '--format', 'csv');
    const [header, row] = csv.stdout.trim().split('\n');
    expect(header).toMatch(/^asOf,id,connection,/);
    expect(row).toContain(`,${cred},${conn},`);
    const json = JSON.parse((await cli('--json', 'compliance')).stdout);
    expect(json.totals.credentials).toBe(1);
  });

  it('a bad --format is a usage error (exit 2)', async () => {
    const run = await cli('compliance', '--format', 'xml');
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('--format xml: use table, csv or json');
  });
});

describe('keyturn events follow', () => {
  it('prints rotation events live, until stopped', async () => {
    const follow = startCli(target, ['events', 'follow', '--credential', cred], { env: cliEnv });
    await waitFor('the stream to open', async () => /following events/.test(follow.output().stderr));
    expect((await cli('rotate', cred)).code).toBe(0);
    await waitFor('the rotation event', async () =>
      new RegExp(`rotation\\s+${cred}\\s+succeeded`).test(follow.output().stdout),
    );
    follow.child.kill('SIGTERM');
    expect((await follow.done).code).toBe(0);
  });
});

describe('keyturn connections rotate-admin', () => {
  it("rotates the admin's password with progress", async () => {
    const run = await cli('connections', 'rotate-admin', conn);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain(`admin rotation of ${conn}:`);
    expect(run.stdout).toMatch(/^succeeded: rotation /);
  });
});
