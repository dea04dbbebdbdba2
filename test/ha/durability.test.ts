// Durable write-ahead (SPEC, "Durable write-ahead"), against a real master and replica: with
// KEYTURN_REDIS_MIN_REPLICAS_ACK=1 the local store's pending secret is on the replica before PostgreSQL hears the new
// password, and a replica that acknowledges nothing stops the rotation before anything downstream changes.
// Redis 7.0 here has no WAITAOF: the WAIT path is what runs (checks.ts picks WAITAOF on 7.2+).
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canLogin,
  importCredential,
  type Keyturn,
  pgInfo,
  registerPgConnection,
  startKeyturn,
  testEnv,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { type PgProxy, startPgProxy } from '../support/pg-proxy.ts';
import { type SentinelSet, startMonitor, startSentinelSet } from '../support/redis-sentinel.ts';

let set: SentinelSet;
let kt: Keyturn;
let proxy: PgProxy;
let connection: string;
let monitor: { close(): void } | undefined;
let replica: Redis;
let prefix: string;
/** Every command the master ran, in order, as MONITOR reported it. */
const commands: { args: string[]; source: string }[] = [];

beforeAll(async () => {
  set = await startSentinelSet({ sentinels: 0 });
  const [master, replicaPort] = set.dataPorts as [number, number];
  const env = testEnv({
    REDIS_URL: `redis://127.0.0.1:${master}`,
    KEYTURN_REDIS_MIN_REPLICAS_ACK: '1',
    KEYTURN_REDIS_WAIT_TIMEOUT_MS: '500',
    KEYTURN_ROTATION_ATTEMPTS: '3',
  });
  prefix = env.prefix;
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  proxy = await startPgProxy(pgInfo());
  connection = await registerPgConnection(kt, undefined, proxy.port);
  replica = set.connect(replicaPort);
  monitor = await startMonitor(master, (c) => commands.push(c));
});

afterAll(async () => {
  monitor?.close();
  replica?.disconnect();
  await kt?.close();
  await proxy?.close();
  await set?.stop();
});

/** The local store's hashes on the replica now: each one's stage labels and version fields. */
async function replicaSecrets(): Promise<{ stages: Record<string, string>; versions: string[] }[]> {
  const out: { stages: Record<string, string>; versions: string[] }[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await replica.scan(cursor, 'MATCH', `*${prefix}*`, 'COUNT', 1000);
    cursor = next;
    for (const key of keys) {
      if ((await replica.type(key)) !== 'hash') continue;
      const stages = await replica.hget(key, 'stages');
      if (stages === null) continue;
      const fields = await replica.hkeys(key);
      out.push({
        stages: JSON.parse(stages),
        versions: fields.filter((f) => f.startsWith('v:')).map((f) => f.slice(2)),
      });
    }
  } while (cursor !== '0');
  return out;
}

const isPasswordChange = (sql: string, role: string) =>
  /ALTER ROLE/i.test(sql) && sql.includes(role) && /PASSWORD/i.test(sql);

describe('durable write-ahead with WAIT (KEYTURN_REDIS_MIN_REPLICAS_ACK=1)', () => {
  it('has the pending secret on the replica before PostgreSQL receives the new password', async () => {
    const cred = await importCredential(kt, connection);
    const seenOnReplica: Awaited<ReturnType<typeof replicaSecrets>>[] = [];
    proxy.onStatement = async (sql) => {
      // The statement is held here: PostgreSQL has not received it yet.
      if (isPasswordChange(sql, cred.role.name)) seenOnReplica.push(await replicaSecrets());
    };
    const from = commands.length;
    const rotate = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    expect(rotate.status).toBe(202);
    const rotationId = rotate.body.rotationId as string;
    const done = await waitForRotation(kt, rotationId);
    proxy.onStatement = undefined;
    expect(done.status).toBe('succeeded');

    // At the moment of the ALTER ROLE, the replica held the version, labelled pending.
    expect(seenOnReplica).toHaveLength(1);
    const held = seenOnReplica[0]?.find((s) => s.versions.includes(rotationId));
    expect(held?.stages.pending).toBe(rotationId);

    // The master's order: the PUT_PENDING script, WAIT 1 on the same connection, and only later the promotion.
    const isPromote = (c: { args: string[] }) =>
      /^eval$/i.test(c.args[0] ?? '') &&
      c.args[1]?.includes("if stages['current'] == token then return {0, ''}") &&
      c.args[4] === rotationId;
    await waitFor('MONITOR to report the promotion', async () => commands.slice(from).some(isPromote));
    const seen = commands.slice(from);
    const put = seen.findIndex(
      (c) =>
        /^eval$/i.test(c.args[0] ?? '') &&
        c.args[1]?.includes("stages['pending'] = token") &&
        c.args[4] === rotationId,
    );
    expect(put).toBeGreaterThanOrEqual(0);
    const wait = seen.findIndex((c, i) => i > put && /^wait$/i.test(c.args[0] ?? ''));
    expect(wait).toBeGreaterThan(put);
    expect(seen[wait]?.source).toBe(seen[put]?.source);
    expect(seen[wait]?.args.slice(1)).toEqual(['1', '500']);
    const promote = seen.findIndex(isPromote);
    expect(promote).toBeGreaterThan(wait);

    const secret = (await kt.api('GET', `/v1/credentials/${cred.id}/secret`)).body;
    expect(await canLogin(secret.username, secret.password)).toBe(true);
  });

  it('fails the rotation before PostgreSQL changes while the replica acknowledges nothing, and succeeds once it does', async () => {
    const cred = await importCredential(kt, connection);
    const replicaPort = set.dataPorts[1] as number;
    const statementsBefore = proxy.statements.length;
    set.pause(replicaPort);
    let failed: any;
    try {
      const rotate = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
      expect(rotate.status).toBe(202);
      failed = await waitForRotation(kt, rotate.body.rotationId);
    } finally {
      set.resume(replicaPort);
    }
    // Every attempt failed at create, waiting for the replica: the retries found the version written by the first and
    // waited again instead of going on to set. The rollback ended the rotation once.
    expect(failed.status).toBe('failed');
    expect(failed.attempts).toBe(3);
    const failures = failed.steps.filter((s: any) => s.outcome === 'failed');
    expect(failures.map((s: any) => s.step)).toEqual(['create', 'create', 'create']);
    expect(failed.error.message).toMatch(
      /only 0 of the 1 replica\(s\) required \(KEYTURN_REDIS_MIN_REPLICAS_ACK\)/,
    );
    expect(failed.error.message).toMatch(/nothing was changed downstream/);
    // PostgreSQL never heard of a new password, and the old one still logs in.
    const changes = proxy.statements
      .slice(statementsBefore)
      .filter((s) => isPasswordChange(s, cred.role.name));
    expect(changes).toEqual([]);
    expect(await canLogin(cred.role.name, cred.password)).toBe(true);
    const audit = (await kt.api('GET', `/v1/audit?credential=${cred.id}&limit=1000`)).body.events as any[];
    const mine = audit.filter((e) => e.rotation === failed.id);
    expect(mine.filter((e) => e.action === 'rotation.step_failed')).toHaveLength(2);
    expect(mine.filter((e) => e.action === 'rotation.failed')).toHaveLength(1);
    expect(mine.filter((e) => e.action === 'rotation.succeeded')).toHaveLength(0);

    // The replica acknowledges again: the next rotation goes through.
    const again = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    const ok = await waitForRotation(kt, again.body.rotationId);
    expect(ok.status).toBe('succeeded');
    const secret = (await kt.api('GET', `/v1/credentials/${cred.id}/secret`)).body;
    expect(await canLogin(secret.username, secret.password)).toBe(true);
    expect(await canLogin(cred.role.name, cred.password)).toBe(false);
  });
});
