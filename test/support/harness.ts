// Test harness: a Keyturn runtime in the test process (API, optionally workers) on its own Redis prefix, worker
// child processes that can be SIGKILLed, and helpers for the password-checking PostgreSQL of global-setup.
import { type ChildProcess, spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Cluster, Redis } from 'ioredis';
import pg from 'pg';
import { inject } from 'vitest';
import type { Clock } from '../../src/clock.ts';
import { type Component, loadConfig } from '../../src/config/config.ts';
import { sha256Hex } from '../../src/crypto/tokens.ts';
import { createLogger } from '../../src/logging/logger.ts';
import type { RedisClient } from '../../src/redis/client.ts';
import { RedisKeys } from '../../src/registry/keys.ts';
import { createRuntime, type Runtime } from '../../src/runtime.ts';

export const REDIS_URL =
  process.env.KEYTURN_TEST_REDIS_URL ?? process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
/**
 * Set by the cluster run (`npm run test:cluster`, vitest.cluster.config.ts): the suites run against a real Redis
 * Cluster of three masters instead of the machine's single Redis.
 */
export const REDIS_CLUSTER_HOSTS =
  process.env.KEYTURN_TEST_REDIS_CLUSTER_HOSTS || process.env.REDIS_CLUSTER_HOSTS || '';

/** A connection for a test to look at Keyturn's keys directly: the single node, or the cluster in the cluster run. */
export function testRedis(): RedisClient {
  if (!REDIS_CLUSTER_HOSTS) return new Redis(REDIS_URL);
  const nodes = REDIS_CLUSTER_HOSTS.split(',').map((hp) => {
    const [host, port] = hp.split(':');
    return { host: host as string, port: Number(port) };
  });
  return new Cluster(nodes, { scaleReads: 'master' });
}

/** CLIENT LIST of every node Keyturn's connections may be on (each master of the cluster run), one line each. */
export async function clientList(): Promise<Array<{ line: string; kill(): Promise<unknown> }>> {
  const client = testRedis();
  try {
    if (client instanceof Cluster) await clusterReady(client);
    const nodes = client instanceof Cluster ? client.nodes('master') : [client];
    const out: Array<{ line: string; kill(): Promise<unknown> }> = [];
    for (const node of nodes) {
      const { host, port } = node.options;
      for (const line of String(await node.client('LIST'))
        .split('\n')
        .filter(Boolean)) {
        const id = /\bid=(\d+)/.exec(line)?.[1] ?? '';
        out.push({
          line,
          kill: async () => {
            const r = new Redis({ host, port });
            try {
              return await r.client('KILL', 'ID', id);
            } finally {
              r.disconnect();
            }
          },
        });
      }
    }
    return out;
  } finally {
    client.disconnect();
  }
}

/** The key layout Keyturn uses under a test prefix (hash tags in the cluster run). */
export function testKeys(prefix: string): RedisKeys {
  return new RedisKeys(prefix, { clustered: REDIS_CLUSTER_HOSTS !== '' });
}
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface TestEnv {
  prefix: string;
  adminToken: string;
  masterKey: string;
  /** Environment for worker child processes and for loadConfig. */
  env: Record<string, string>;
}

/** A fresh namespace (Redis prefix, tokens, keys) for one test file. */
export function testEnv(overrides: Record<string, string> = {}): TestEnv {
  const prefix = `kt-test-${randomBytes(4).toString('hex')}`;
  const adminToken = randomBytes(32).toString('base64url');
  const masterKey = randomBytes(32).toString('base64');
  // The audit chain's signing key, shared by the in-process runtime and worker child processes.
  const auditSigningKey = String(
    generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }),
  );
  return {
    prefix,
    adminToken,
    masterKey,
    env: {
      ...(REDIS_CLUSTER_HOSTS ? { REDIS_CLUSTER_HOSTS } : { REDIS_URL }),
      KEYTURN_PREFIX: prefix,
      KEYTURN_ADMIN_TOKEN: adminToken,
      KEYTURN_MASTER_KEY: masterKey,
      KEYTURN_AUDIT_SIGNING_KEY: auditSigningKey,
      KEYTURN_ROTATION_ATTEMPTS: '3',
      KEYTURN_ROTATION_BACKOFF_MS: '200',
      KEYTURN_ROTATION_LEASE_MS: '2000',
      KEYTURN_DOWNSTREAM_TIMEOUT_MS: '3000',
      LOG_LEVEL: 'info',
      LOG_FORMAT: 'json',
      PORT: '0',
      // Tests poll and fire thousands of requests as the admin; hardening.test.ts sets its own limit.
      KEYTURN_RATE_LIMIT_MAX: '1000000',
      ...overrides,
    },
  };
}

export interface Keyturn {
  url: string;
  runtime: Runtime;
  /** Every log line the in-process runtime wrote. */
  logs: string[];
  api<T = any>(
    method: string,
    path: string,
    body?: unknown,
    headers?: Record<string, string>,
  ): Promise<ApiResponse<T>>;
  close(): Promise<void>;
}

export interface ApiResponse<T> {
  status: number;
  headers: Headers;
  body: T;
  text: string;
}

/** Starts Keyturn in this process: API only by default (workers run as child processes), or both. */
export async function startKeyturn(
  env: TestEnv,
  options: { components?: Component[]; clock?: Clock } = {},
): Promise<Keyturn> {
  const config = loadConfig({ ...env.env, KEYTURN_COMPONENTS: (options.components ?? ['api']).join(',') });
  const logs: string[] = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      logs.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  const logger = createLogger({ level: config.logLevel, format: 'json', destination });
  const runtime = await createRuntime({
    config,
    logger,
    adminToken: env.adminToken,
    // As boot.ts passes it: KEYTURN_MASTER_KEY when the test's environment has one (a test of key providers may not).
    ...(config.masterKey ? { masterKey: config.masterKey } : {}),
    ...(options.clock ? { clock: options.clock } : {}),
  });
  const url = (await runtime.start()) as string;
  return {
    url,
    runtime,
    logs,
    async api(method, path, body, headers = {}) {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${env.adminToken}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...headers,
        },
        ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
      });
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        // not JSON: leave the text
      }
      return { status: res.status, headers: res.headers, body: parsed as never, text };
    },
    close: () => runtime.close(),
  };
}

export interface WorkerProcess {
  child: ChildProcess;
  output: string[];
  /** Resolves with the signal or exit code when the process ends. */
  exited: Promise<NodeJS.Signals | number | null>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** Starts `workers/rotation-worker.ts` as a child process on the same Node. */
export function spawnWorker(env: TestEnv, extra: Record<string, string> = {}): WorkerProcess {
  const child = spawn(process.execPath, ['workers/rotation-worker.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env.env, ...extra },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  const collect = (chunk: Buffer) => output.push(...String(chunk).split('\n').filter(Boolean));
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<NodeJS.Signals | number | null>((done) =>
    child.once('exit', (code, signal) => done(signal ?? code)),
  );
  return {
    child,
    output,
    exited,
    async kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | null | false>,
  timeoutMs = 30_000,
  intervalMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`,
      );
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Waits until a rotation reaches a terminal status and returns it. */
export async function waitForRotation(kt: Keyturn, rotationId: string, timeoutMs = 60_000): Promise<any> {
  let last: any;
  try {
    return await waitFor(
      `rotation ${rotationId} to end`,
      async () => {
        const r = await kt.api('GET', `/v1/rotations/${rotationId}`);
        last = r.body;
        return r.status === 200 && ['succeeded', 'failed'].includes(r.body.status) ? r.body : undefined;
      },
      timeoutMs,
    );
  } catch (err) {
    // Say where it stood, so that a hang can be diagnosed from the test output alone.
    const at = last
      ? `${last.status} at step ${last.step}, attempt ${last.attempts}, error ${last.error?.message}`
      : 'never read';
    throw new Error(`${(err as Error).message} (last seen: ${at})`);
  }
}

// PostgreSQL

export function pgInfo() {
  return inject('pg');
}

/** Tries to log in and run SELECT 1; true on success, false when the password is refused. */
export async function canLogin(username: string, password: string, port = pgInfo().port): Promise<boolean> {
  const { host, database } = pgInfo();
  const client = new pg.Client({
    host,
    port,
    database,
    user: username,
    password,
    connectionTimeoutMillis: 5000,
  });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch (err) {
    if ((err as { code?: string }).code === '28P01') return false;
    throw err;
  } finally {
    await client.end().catch(() => {});
  }
}

export async function pgAdmin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const { host, port, database, adminUser, adminPassword } = pgInfo();
  const client = new pg.Client({ host, port, database, user: adminUser, password: adminPassword });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Creates a login role (member of a fresh group role, so memberships can be checked) with an unknown password. */
export async function createAppRole(
  name = `app_${randomBytes(4).toString('hex')}`,
): Promise<{ name: string; group: string }> {
  const group = `${name}_grp`;
  await pgAdmin(async (c) => {
    await c.query(`CREATE ROLE ${pg.escapeIdentifier(group)} NOLOGIN`);
    await c.query(
      `CREATE ROLE ${pg.escapeIdentifier(name)} LOGIN PASSWORD ${pg.escapeLiteral(randomUUID())} IN ROLE ${pg.escapeIdentifier(group)}`,
    );
  });
  return { name, group };
}

/**
 * A CREATEROLE login role of the test's own with a known password, to be a connection's admin: for tests that break
 * or inspect the admin, which must never be the cluster's superuser that every other test logs in with.
 */
export async function createPgAdminRole(
  name = `kt_adm_${randomBytes(4).toString('hex')}`,
): Promise<{ name: string; password: string; breakLogin(): Promise<unknown> }> {
  const password = randomBytes(18).toString('base64url');
  await pgAdmin((c) =>
    c.query(
      `CREATE ROLE ${pg.escapeIdentifier(name)} LOGIN CREATEROLE PASSWORD ${pg.escapeLiteral(password)}`,
    ),
  );
  return {
    name,
    password,
    /** Changes the admin's password behind Keyturn's back: its next admin login fails. */
    breakLogin: () =>
      pgAdmin((c) =>
        c.query(`ALTER ROLE ${pg.escapeIdentifier(name)} PASSWORD ${pg.escapeLiteral(`${password}x`)}`),
      ),
  };
}

/**
 * Registers the test PostgreSQL as a connection, with the cluster's admin or the given one. `verify: false` registers
 * it unchecked (a port where nothing listens, for tests of an unreachable downstream).
 */
export async function registerPgConnection(
  kt: Keyturn,
  id = `pg-${randomBytes(3).toString('hex')}`,
  port?: number,
  admin?: { name: string; password: string },
  options: { verify?: boolean } = {},
) {
  const info = pgInfo();
  const res = await kt.api('POST', '/v1/connections', {
    id,
    type: 'postgres',
    host: info.host,
    port: port ?? info.port,
    database: info.database,
    admin: admin
      ? { username: admin.name, password: admin.password }
      : { username: info.adminUser, password: info.adminPassword },
    ...(options.verify === false ? { verify: false } : {}),
  });
  if (res.status !== 201) throw new Error(`registering connection failed: ${res.status} ${res.text}`);
  return id;
}

/** Deletes every key under a test prefix. */
export async function dropPrefix(prefix: string): Promise<void> {
  const client = testRedis();
  if (client instanceof Cluster) await clusterReady(client);
  const nodes = client instanceof Cluster ? client.nodes('master') : [client];
  try {
    for (const redis of nodes) {
      let cursor = '0';
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
        cursor = next;
        // One DEL per key: the keys of one scan may sit in different slots of a cluster node.
        await Promise.all(keys.map((key) => redis.del(key)));
      } while (cursor !== '0');
    }
  } finally {
    client.disconnect();
  }
}

async function clusterReady(cluster: Cluster): Promise<void> {
  if (cluster.status !== 'ready') await cluster.ping();
}

/**
 * Registers a credential for a fresh role with `import: true` and a password the test knows, so that "the old
 * password" can be checked after a rotation. No rotation runs at registration.
 */
export async function importCredential(
  kt: Keyturn,
  connection: string,
  options: {
    strategy?: 'single-user' | 'alternating-users';
    schedule?: object;
    idPrefix?: string;
    extra?: object;
  } = {},
): Promise<{ id: string; role: { name: string; group: string }; password: string }> {
  const role = await createAppRole();
  const password = randomBytes(18).toString('base64url');
  await pgAdmin((c) =>
    c.query(`ALTER ROLE ${pg.escapeIdentifier(role.name)} PASSWORD ${pg.escapeLiteral(password)}`),
  );
  const id = `${options.idPrefix ?? 'imp'}-${role.name}`;
  const res = await kt.api('POST', '/v1/credentials', {
    id,
    connection,
    username: role.name,
    strategy: options.strategy ?? 'single-user',
    schedule: options.schedule ?? { every: '30d' },
    import: true,
    currentPassword: password,
    ...options.extra,
  });
  if (res.status !== 201) throw new Error(`importing ${id} failed: ${res.status} ${res.text}`);
  return { id, role, password };
}

/**
 * A tokens file in a temporary directory: the given principals as `tokens:` entries (`extra` YAML lines each, such
 * as `roles: [reader], labels: {team: payments}`), each with a fresh random token. `remove` deletes it.
 */
export async function tokensFile(
  principals: Record<string, string>,
): Promise<{ path: string; tokens: Record<string, string>; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'kt-tokens-'));
  const path = join(dir, 'tokens.yaml');
  const tokens = Object.fromEntries(
    Object.keys(principals).map((name) => [name, randomBytes(32).toString('base64url')]),
  );
  const lines = Object.entries(principals).map(
    ([name, extra]) => `  - {name: ${name}, sha256: ${sha256Hex(tokens[name] as string)}, ${extra}}`,
  );
  await writeFile(path, ['tokens:', ...lines, ''].join('\n'));
  return { path, tokens, remove: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * A connection's admin password as the local store of a test's namespace holds it (its current version, or the given
 * one: a rotation's pending version has the rotation's id), read the
 * way Keyturn reads it: for tests that must know it after an admin rotation (the leak capture, a login check). Keyturn
 * itself has no route that returns it.
 */
export async function adminPasswordOf(
  env: TestEnv,
  connectionId: string,
  versionId?: string,
): Promise<string> {
  const { envEnvelope } = await import('../../src/keys/index.ts');
  const { LocalStore } = await import('../../src/stores/local-store.ts');
  const { connectionAdminRef } = await import('../../src/stores/index.ts');
  const redis = testRedis();
  try {
    const store = new LocalStore(
      redis,
      testKeys(env.prefix),
      envEnvelope(Buffer.from(env.masterKey, 'base64')),
    );
    const ref = connectionAdminRef({ id: connectionId, adminStore: { type: 'local' } });
    const current = await store.read(ref, versionId ? { versionId } : { stage: 'current' });
    if (!current)
      throw new Error(`connection "${connectionId}" has no admin secret ${versionId ?? 'current'}`);
    return current.value.password;
  } finally {
    redis.disconnect();
  }
}

/**
 * The body of POST /v1/connections for a webhook connection registered unchecked (verify: false) at `host:port`, for
 * tests of what the API does with a connection, not of a service: 127.0.0.1:9 (nothing listens) unless said otherwise.
 */
export function unverifiedWebhookBody(id: string, host = '127.0.0.1', port = 9) {
  return {
    id,
    type: 'webhook',
    host,
    port,
    tls: { mode: 'disable' },
    admin: { username: 'kid', password: 'k'.repeat(32) },
    verify: false,
  };
}
