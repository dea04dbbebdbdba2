// Dry runs and verify (issue 16 §4): POST /v1/credentials/:id/rotate?dryRun=true checks everything a rotation needs
// (admin login and privileges, the current secret, the user downstream and its password, a store write) and changes
// nothing, shown by comparing the downstream and the store before and after, on PostgreSQL and on an LDAP directory.
// Both verify and the dry run refuse an admin that lacks a privilege, naming it.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createAppRole,
  dropPrefix,
  importCredential,
  type Keyturn,
  pgAdmin,
  pgInfo,
  registerPgConnection,
  startKeyturn,
  testEnv,
  tokensFile,
} from '../support/harness.ts';
import { ldapConnectionBody, type Slapd, slapdSkipReason, startSlapd } from '../support/slapd.ts';
import { importTargetUser } from '../support/targets.ts';

interface DryRun {
  ok: boolean;
  checks: Array<{ name: string; ok: boolean; message: string }>;
}

describe('dry run and verify', () => {
  let tokens: Awaited<ReturnType<typeof tokensFile>>;
  const asAuditor = { authorization: '' };
  let env: ReturnType<typeof testEnv>;
  let kt: Keyturn;
  let connection: string;

  beforeAll(async () => {
    tokens = await tokensFile({ watcher: 'roles: [auditor]' });
    asAuditor.authorization = `Bearer ${tokens.tokens.watcher}`;
    env = testEnv({ KEYTURN_TOKENS_FILE: tokens.path, LOG_LEVEL: 'warn' });
    kt = await startKeyturn(env, { components: ['api', 'worker'] });
    connection = await registerPgConnection(kt);
  });
  afterAll(async () => {
    await kt?.close();
    if (env) await dropPrefix(env.prefix);
    await tokens?.remove();
  });

  /** What a rotation would change: the role's password hash downstream, the store's versions, the rotations. */
  const snapshot = async (id: string, role: string) => ({
    downstream: await pgAdmin(async (c) => {
      const r = await c.query('SELECT rolpassword, rolvaliduntil FROM pg_authid WHERE rolname = $1', [role]);
      return JSON.stringify(r.rows);
    }),
    // The role and anything named after it (a clone); the cluster's other roles belong to tests running alongside.
    roles: await pgAdmin(
      async (c) =>
        (await c.query('SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1', [role]))
          .rows,
    ),
    secret: (await kt.api('GET', `/v1/credentials/${id}/secret`)).body,
    credential: (await kt.api('GET', `/v1/credentials/${id}`)).body,
    rotations: (await kt.api('GET', `/v1/credentials/${id}/rotations`)).body,
  });

  it('PostgreSQL: every check passes, and the role, the store and the rotations are as they were', async () => {
    for (const strategy of ['single-user', 'alternating-users'] as const) {
      const cred = await importCredential(kt, connection, { strategy, idPrefix: `dry-${strategy}` });
      const before = await snapshot(cred.id, cred.role.name);
      const res = await kt.api('POST', `/v1/credentials/${cred.id}/rotate?dryRun=true`);
      expect(res.status, res.text).toBe(200);
      const body = res.body as DryRun;
      expect(body.ok, JSON.stringify(body.checks)).toBe(true);
      expect(body.checks.map((c) => c.name)).toEqual([
        'current secret',
        'admin login',
        'CREATEROLE',
        'user exists',
        'current password',
        'store writable',
      ]);
      const after = await snapshot(cred.id, cred.role.name);
      expect({ ...after, credential: { ...after.credential, updatedAt: 0 } }).toEqual({
        ...before,
        credential: { ...before.credential, updatedAt: 0 },
      });
      expect(after.credential).toEqual(before.credential);
      expect(JSON.stringify(body)).not.toContain(cred.password);
    }
    const audit = await kt.api('GET', '/v1/audit?action=rotation.dry_run&limit=10');
    expect(audit.body.events).toHaveLength(2);
    expect(audit.body.events[0]).toMatchObject({ outcome: 'success' });
  });

  it('an admin without CREATEROLE: verify refuses the connection naming it; a dry run on it says so, changing nothing', async () => {
    const weak = await createAppRole();
    const weakPassword = `weak-${Date.now()}-Aa1-0123456789`;
    await pgAdmin((c) =>
      c.query(`ALTER ROLE ${pg.escapeIdentifier(weak.name)} PASSWORD ${pg.escapeLiteral(weakPassword)}`),
    );
    const info = pgInfo();
    const body = {
      id: 'dry-weak',
      type: 'postgres',
      host: info.host,
      port: info.port,
      database: info.database,
      admin: { username: weak.name, password: weakPassword },
    };
    const refused = await kt.api('POST', '/v1/connections', body);
    expect(refused.status).toBe(422);
    expect(refused.body.error.message).toContain('lacks CREATEROLE');
    expect(refused.body.error.message).toContain('verify: false');
    expect(refused.text).not.toContain(weakPassword);
    expect((await kt.api('GET', '/v1/connections/dry-weak')).status).toBe(404);
    // Saved unchecked: the dry run finds what verify found.
    expect((await kt.api('POST', '/v1/connections', { ...body, verify: false })).status).toBe(201);
    const cred = await importCredential(kt, 'dry-weak', { idPrefix: 'dry-weak' });
    const before = await snapshot(cred.id, cred.role.name);
    const res = await kt.api('POST', `/v1/credentials/${cred.id}/rotate?dryRun=true`);
    expect(res.status).toBe(200);
    expect(res.body.ok).toBe(false);
    const failed = (res.body as DryRun).checks.filter((c) => !c.ok);
    expect(failed).toEqual([
      expect.objectContaining({ name: 'CREATEROLE', message: expect.stringContaining('ALTER ROLE') }),
    ]);
    expect(await snapshot(cred.id, cred.role.name)).toEqual(before);
    // A change that points the connection elsewhere is verified too; without one (labels) it is not.
    const relabel = await kt.api('PATCH', '/v1/connections/dry-weak', { labels: { team: 'x' } });
    expect(relabel.status, relabel.text).toBe(200);
    const repoint = await kt.api('PATCH', '/v1/connections/dry-weak', { port: info.port });
    expect(repoint.status).toBe(422);
    expect(repoint.body.error.message).toContain('lacks CREATEROLE');
  });

  it('a user gone downstream and a password changed behind Keyturn are both reported', async () => {
    const cred = await importCredential(kt, connection, { idPrefix: 'dry-drift' });
    await pgAdmin((c) =>
      c.query(`ALTER ROLE ${pg.escapeIdentifier(cred.role.name)} PASSWORD 'changed-behind-keyturn'`),
    );
    const drifted = (await kt.api('POST', `/v1/credentials/${cred.id}/rotate?dryRun=true`)).body as DryRun;
    expect(drifted.ok).toBe(false);
    expect(drifted.checks.find((c) => c.name === 'current password')).toMatchObject({ ok: false });
    await pgAdmin((c) => c.query(`DROP ROLE ${pg.escapeIdentifier(cred.role.name)}`));
    const gone = (await kt.api('POST', `/v1/credentials/${cred.id}/rotate?dryRun=true`)).body as DryRun;
    expect(gone.checks.find((c) => c.name === 'user exists')).toMatchObject({ ok: false });
  });

  it('answers 404 for an unknown credential, 400 for a dryRun that is not a boolean, 403 to an auditor', async () => {
    expect((await kt.api('POST', '/v1/credentials/no-such/rotate?dryRun=true')).status).toBe(404);
    const cred = await importCredential(kt, connection, { idPrefix: 'dry-bad' });
    const bad = await kt.api('POST', `/v1/credentials/${cred.id}/rotate?dryRun=maybe`);
    expect(bad.status).toBe(400);
    expect(bad.text).toContain('dryRun');
    expect(
      (await kt.api('POST', `/v1/credentials/${cred.id}/rotate?dryRun=true`, undefined, asAuditor)).status,
    ).toBe(403);
  });
});

const ldapSkip = slapdSkipReason();
if (ldapSkip) console.warn(`skipping the LDAP dry run: ${ldapSkip}`);

describe.skipIf(Boolean(ldapSkip))('dry run on an LDAP directory', () => {
  const env = testEnv({ LOG_LEVEL: 'warn' });
  let kt: Keyturn;
  let slapd: Slapd;

  beforeAll(async () => {
    slapd = await startSlapd();
    kt = await startKeyturn(env, { components: ['api'] });
  });
  afterAll(async () => {
    await kt?.close();
    await slapd?.stop();
    await dropPrefix(env.prefix);
  });

  it('checks the admin’s write with a probe entry it removes: the directory and the store are as they were', async () => {
    const created = await kt.api('POST', '/v1/connections', { id: 'dir', ...ldapConnectionBody(slapd) });
    expect(created.status, created.text).toBe(201);
    const user = { username: 'svc_dry', password: `dry-${Date.now()}-Aa1` };
    await slapd.addAccount(user.username, user.password, ['payments-readers']);
    const id = await importTargetUser(kt, 'dir', user, 'alternating-users', 'dry');
    const before = {
      directory: await slapd.dump(),
      secret: (await kt.api('GET', `/v1/credentials/${id}/secret`)).body,
    };
    const res = await kt.api('POST', `/v1/credentials/${id}/rotate?dryRun=true`);
    expect(res.status).toBe(200);
    expect(res.body.ok, JSON.stringify(res.body.checks)).toBe(true);
    expect((res.body as DryRun).checks.map((c) => c.name)).toContain(
      'write under ou=services,dc=example,dc=org',
    );
    expect({
      directory: await slapd.dump(),
      secret: (await kt.api('GET', `/v1/credentials/${id}/secret`)).body,
    }).toEqual(before);

    // The reader may not write: verify refuses it, naming the container.
    const reader = await kt.api('POST', '/v1/connections', {
      id: 'dir-reader',
      ...ldapConnectionBody(slapd, { admin: { username: slapd.reader.dn, password: slapd.reader.password } }),
    });
    expect(reader.status).toBe(422);
    expect(reader.body.error.message).toContain('may not add entries under ou=services,dc=example,dc=org');
    expect(await slapd.dump()).toBe(before.directory);
  });
});
