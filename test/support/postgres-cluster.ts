/**
 * Test fixture: a PostgreSQL server that really checks passwords.
 *
 * The machine's own cluster (127.0.0.1:5432) uses `trust`, so it accepts any password and
 * cannot tell a rotated credential from a stale one. `startPasswordPostgres()` finds or
 * builds a server where a wrong password fails with SQLSTATE 28P01, and proves it before
 * returning. Sources, tried in order:
 *
 *   1. env              KEYTURN_TEST_PG_URL=postgres://user:pass@host:port/db
 *   2. pg_createcluster a throwaway Debian cluster (needs root and postgresql-common)
 *   3. testcontainers   postgres:15 in Docker (needs a Docker engine that answers)
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, rmSync } from 'node:fs';
import {
  access,
  appendFile,
  chmod,
  chown,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, delimiter, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './ports.ts';

const execFileAsync = promisify(execFile);

export interface PgServer {
  host: string;
  port: number;
  database: string;
  adminUser: string;
  adminPassword: string;
  source: 'env' | 'pg_createcluster' | 'testcontainers';
  stop(): Promise<void>;
}

/** What `globalSetup` hands to tests through `provide('pg', ...)`: a PgServer without `stop`. */
export type PgConnectionInfo = Omit<PgServer, 'stop'>;

export const TEST_DATABASE = 'keyturn_test';
const CLUSTER_PREFIX = 'keyturn_test_';
const CLUSTER_NAME_RE = /^keyturn_test_\d+$/;
const TEMP_PREFIX = 'keyturn-pg-';
const OWNER_FILE = 'keyturn-owner.json';
const PG_LIB_DIR = '/usr/lib/postgresql';
const PG_ETC_DIR = '/etc/postgresql';
const EXEC_TIMEOUT_MS = 120_000;

export async function startPasswordPostgres(): Promise<PgServer> {
  const url = process.env.KEYTURN_TEST_PG_URL;
  if (url !== undefined && url !== '') {
    const server = fromUrl(url);
    await provePasswordAuth(server);
    announce(server, 'from KEYTURN_TEST_PG_URL');
    return server;
  }

  const createclusterPath = await findOnPath('pg_createcluster');
  const uid = process.getuid?.();
  if (createclusterPath !== undefined && uid === 0) {
    return startClusterServer();
  }

  const docker = await probeDocker();
  if (docker.ok) {
    return startContainerServer();
  }

  const missing = [
    '- KEYTURN_TEST_PG_URL is not set.',
    createclusterPath === undefined
      ? '- pg_createcluster is not on PATH (Debian/Ubuntu package postgresql-common).'
      : `- pg_createcluster exists (${createclusterPath}) but this process is not root (uid ${uid ?? 'unknown'}), so it cannot create a cluster.`,
    `- No Docker engine answers for testcontainers: ${docker.reason}`,
  ];
  throw new Error(
    [
      'Keyturn integration tests need a PostgreSQL server that checks passwords, and none is available:',
      ...missing,
      'Fix one of:',
      '  a) apt-get install -y postgresql postgresql-common   and run the tests as root;',
      '  b) export KEYTURN_TEST_PG_URL=postgres://USER:PASSWORD@HOST:PORT/DB  for a server whose pg_hba.conf',
      '     uses scram-sha-256 (or md5) for that host, not trust; the user must be able to CREATE ROLE;',
      '  c) start a Docker engine so testcontainers can run postgres:15.',
    ].join('\n'),
  );
}

// ---------------------------------------------------------------------------------------------
// a. KEYTURN_TEST_PG_URL

function fromUrl(raw: string): PgServer {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new Error('KEYTURN_TEST_PG_URL is not a valid URL (expected postgres://user:pass@host:port/db)');
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new Error(`KEYTURN_TEST_PG_URL must use postgres:// or postgresql://, got ${u.protocol}//`);
  }
  const adminUser = decodeURIComponent(u.username);
  const adminPassword = decodeURIComponent(u.password);
  if (adminUser === '' || adminPassword === '') {
    throw new Error('KEYTURN_TEST_PG_URL must include both a user and a password');
  }
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  const database = decodeURIComponent(u.pathname.replace(/^\//, '')) || 'postgres';
  return {
    host: host || '127.0.0.1',
    port: u.port === '' ? 5432 : Number(u.port),
    database,
    adminUser,
    adminPassword,
    source: 'env',
    stop: async () => {},
  };
}

// ---------------------------------------------------------------------------------------------
// b. pg_createcluster

async function startClusterServer(): Promise<PgServer> {
  const version = await installedMajorVersion();
  await dropLeftoverClusters();

  let lastError: unknown;
  for (let attempt = 1; attempt <= 3; attempt++) {
    const port = await freePort();
    try {
      return await createCluster(version, port);
    } catch (err) {
      lastError = err;
      // A port race (someone bound it between our probe and the postmaster) is worth a retry;
      // anything else will fail the same way again.
      if (
        !/could not bind|Address already in use|already exists|port .* is already used/i.test(String(err))
      ) {
        throw err;
      }
      process.stderr.write(
        `[keyturn test pg] attempt ${attempt} on port ${port} failed, retrying: ${firstLine(err)}\n`,
      );
    }
  }
  throw lastError;
}

async function createCluster(version: string, port: number): Promise<PgServer> {
  const started = performance.now();
  const name = `${CLUSTER_PREFIX}${port}`;
  const adminUser = 'postgres';
  const adminPassword = randomBytes(24).toString('hex');
  const { uid: pgUid, gid: pgGid } = await osUser('postgres');

  // Everything the cluster writes (data, socket, log) lives in one temp dir owned by postgres.
  const root = await mkdtemp(join(tmpdir(), TEMP_PREFIX));
  const dataDir = join(root, 'data');
  const socketDir = join(root, 'socket');
  const logFile = join(root, 'postgresql.log');
  const pwFile = join(root, 'pwfile');
  await writeFile(
    join(root, OWNER_FILE),
    `${JSON.stringify({ pid: process.pid, cluster: `${version}/${name}` })}\n`,
  );
  await mkdir(socketDir);
  await writeFile(pwFile, adminPassword, { mode: 0o600 });
  for (const p of [root, socketDir, pwFile, join(root, OWNER_FILE)]) await chown(p, pgUid, pgGid);
  await chmod(root, 0o700);

  const confDir = join(PG_ETC_DIR, version, name);
  let created = false;
  // vitest answers Ctrl-C / SIGTERM with process.exit() and does NOT run globalSetup teardowns,
  // so drop the cluster synchronously on 'exit' too. (SIGKILL still leaks it; the next run's
  // dropLeftoverClusters() removes it once it sees the owner pid is gone.)
  const dropOnExit = () => {
    try {
      execFileSync('pg_dropcluster', ['--stop', version, name], { timeout: 30_000, stdio: 'ignore' });
      rmSync(confDir, { recursive: true, force: true });
      rmSync(root, { recursive: true, force: true });
    } catch {}
  };
  const drop = async () => {
    process.off('exit', dropOnExit);
    if (created)
      await execFileAsync('pg_dropcluster', ['--stop', version, name], { timeout: EXEC_TIMEOUT_MS });
    await rm(confDir, { recursive: true, force: true });
    await rm(root, { recursive: true, force: true });
  };

  try {
    // The superuser password is set by initdb from a file, so it never appears in argv or SQL logs.
    await run('pg_createcluster', [
      version,
      name,
      '--port',
      String(port),
      '--datadir',
      dataDir,
      '--socketdir',
      socketDir,
      '--logfile',
      logFile,
      '--start-conf',
      'manual',
      '--',
      `--pwfile=${pwFile}`,
      '--auth-local=peer',
      '--auth-host=scram-sha-256',
      '--no-sync',
    ]);
    created = true;
    process.once('exit', dropOnExit);
    await rm(pwFile, { force: true });
    const initdbMs = performance.now() - started;

    // Not via `pg_createcluster -o`: it leaves values like 127.0.0.1 unquoted, which the server
    // then refuses to parse. Appended last, so these win over anything earlier in the file.
    await appendFile(
      join(confDir, 'postgresql.conf'),
      [
        '',
        '# Keyturn test fixture (test/support/postgres-cluster.ts)',
        "listen_addresses = '127.0.0.1'",
        "password_encryption = 'scram-sha-256'",
        'ssl = off',
        // Throwaway cluster: durability buys nothing, speed does.
        'fsync = off',
        'synchronous_commit = off',
        'full_page_writes = off',
        '',
      ].join('\n'),
    );
    await writeFile(
      join(confDir, 'pg_hba.conf'),
      [
        '# Keyturn test fixture (test/support/postgres-cluster.ts).',
        '# TCP: SCRAM passwords only. Unix socket: only the postgres OS user (peer), for debugging:',
        `#   runuser -u postgres -- psql -h ${socketDir} -p ${port}`,
        '# TYPE  DATABASE  USER      ADDRESS       METHOD',
        'local   all       postgres                peer',
        'host    all       all       127.0.0.1/32  scram-sha-256',
        '',
      ].join('\n'),
    );

    const startAt = performance.now();
    try {
      await run('pg_ctlcluster', [version, name, 'start']);
    } catch (err) {
      const log = await readFile(logFile, 'utf8').catch(() => '');
      throw new Error(
        `${errorText(err)}\n--- ${logFile} (tail) ---\n${log.split('\n').slice(-20).join('\n')}`,
      );
    }
    const startMs = performance.now() - startAt;

    const server: PgServer = {
      host: '127.0.0.1',
      port,
      database: TEST_DATABASE,
      adminUser,
      adminPassword,
      source: 'pg_createcluster',
      stop: once(drop),
    };

    await withClient({ ...server, database: 'postgres' }, async (c) => {
      await c.query(`CREATE DATABASE ${TEST_DATABASE}`);
      // Belt and braces: the server's own reading of the files we wrote.
      const hba = await c.query<{ type: string; auth_method: string; error: string | null }>(
        'SELECT type, auth_method, error FROM pg_hba_file_rules',
      );
      const bad = hba.rows.filter((r) => r.error !== null || r.auth_method === 'trust');
      if (bad.length > 0)
        throw new Error(
          `pg_hba.conf of ${version}/${name} has trust or broken rules: ${JSON.stringify(bad)}`,
        );
      const hash = await c.query<{ scram: boolean }>(
        "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' AS scram FROM pg_authid WHERE rolname = current_user",
      );
      if (hash.rows[0]?.scram !== true)
        throw new Error(`superuser password of ${version}/${name} is not stored as SCRAM`);
    });
    await provePasswordAuth(server);

    const totalMs = performance.now() - started;
    announce(
      server,
      `cluster ${version}/${name}, ready in ${ms(totalMs)} (pg_createcluster ${ms(initdbMs)}, start ${ms(startMs)}); ` +
        `debug: runuser -u postgres -- psql -h ${socketDir} -p ${port}`,
    );
    return server;
  } catch (err) {
    await drop().catch((dropErr) => {
      process.stderr.write(`[keyturn test pg] cleanup of ${version}/${name} failed: ${firstLine(dropErr)}\n`);
    });
    throw err;
  }
}

/** Highest major version under /usr/lib/postgresql that has initdb and postgres. */
async function installedMajorVersion(): Promise<string> {
  const entries = await readdir(PG_LIB_DIR).catch(() => [] as string[]);
  const versions: number[] = [];
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    const ok = await Promise.all(
      ['initdb', 'postgres'].map((b) =>
        access(join(PG_LIB_DIR, e, 'bin', b), fsConstants.X_OK).then(
          () => true,
          () => false,
        ),
      ),
    );
    if (ok.every(Boolean)) versions.push(Number(e));
  }
  versions.sort((a, b) => b - a);
  if (versions[0] === undefined) {
    throw new Error(
      `pg_createcluster is installed but no PostgreSQL server is under ${PG_LIB_DIR} (apt-get install -y postgresql)`,
    );
  }
  return String(versions[0]);
}

interface ClusterInfo {
  version: string;
  name: string;
  running: boolean;
  dataDir: string;
}

async function listClusters(): Promise<ClusterInfo[]> {
  try {
    const { stdout } = await execFileAsync('pg_lsclusters', ['--json'], { timeout: EXEC_TIMEOUT_MS });
    const parsed = JSON.parse(stdout) as Array<{
      version: number | string;
      cluster: string;
      running: number;
      pgdata: string;
    }>;
    return parsed.map((c) => ({
      version: String(c.version),
      name: c.cluster,
      running: c.running === 1,
      dataDir: c.pgdata,
    }));
  } catch {
    // Older postgresql-common without --json: "15 main 5432 online postgres /var/lib/... /var/log/..."
    const { stdout } = await execFileAsync('pg_lsclusters', ['--no-header'], { timeout: EXEC_TIMEOUT_MS });
    return stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f.length >= 6)
      .map((f) => ({ version: f[0]!, name: f[1]!, running: f[3]!.startsWith('online'), dataDir: f[5]! }));
  }
}

/**
 * Drops keyturn_test_* clusters left behind by runs that died:
 *  - postmaster down, unless the run that is creating it right now is still alive;
 *  - postmaster up, but the process that created it (vitest, see keyturn-owner.json) is gone.
 * A running cluster whose owner is alive, or whose owner is unknown, is left alone: it may
 * belong to a concurrent test run.
 */
async function dropLeftoverClusters(): Promise<void> {
  const clusters = (await listClusters()).filter((c) => CLUSTER_NAME_RE.test(c.name));
  for (const c of clusters) {
    const root = dirname(c.dataDir);
    const owner = await readOwnerPid(root);
    const ownerAlive = owner !== undefined && isAlive(owner);
    const orphan = c.running ? owner !== undefined && !ownerAlive : !ownerAlive;
    if (!orphan) continue;
    try {
      await execFileAsync('pg_dropcluster', ['--stop', c.version, c.name], { timeout: EXEC_TIMEOUT_MS });
      process.stderr.write(
        `[keyturn test pg] dropped leftover cluster ${c.version}/${c.name} (${c.running ? 'owner process gone' : 'not running'})\n`,
      );
    } catch (err) {
      process.stderr.write(
        `[keyturn test pg] could not drop leftover cluster ${c.version}/${c.name}: ${firstLine(err)}\n`,
      );
      continue;
    }
    await rm(join(PG_ETC_DIR, c.version, c.name), { recursive: true, force: true });
    if (basename(root).startsWith(TEMP_PREFIX)) await rm(root, { recursive: true, force: true });
  }
}

async function readOwnerPid(root: string): Promise<number | undefined> {
  try {
    const parsed = JSON.parse(await readFile(join(root, OWNER_FILE), 'utf8')) as { pid?: unknown };
    return typeof parsed.pid === 'number' ? parsed.pid : undefined;
  } catch {
    return undefined;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function osUser(name: string): Promise<{ uid: number; gid: number }> {
  const [{ stdout: u }, { stdout: g }] = await Promise.all([
    execFileAsync('id', ['-u', name]),
    execFileAsync('id', ['-g', name]),
  ]);
  return { uid: Number(u.trim()), gid: Number(g.trim()) };
}

// ---------------------------------------------------------------------------------------------
// c. testcontainers

async function probeDocker(): Promise<{ ok: true } | { ok: false; reason: string }> {
  try {
    const { getContainerRuntimeClient } = await import('testcontainers');
    await getContainerRuntimeClient();
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: firstLine(err) };
  }
}

async function startContainerServer(): Promise<PgServer> {
  const started = performance.now();
  const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
  const container = await new PostgreSqlContainer('postgres:15')
    .withDatabase(TEST_DATABASE)
    .withUsername('keyturn_admin')
    .withPassword(randomBytes(24).toString('hex'))
    .start();
  const server: PgServer = {
    host: container.getHost(),
    port: container.getPort(),
    database: container.getDatabase(),
    adminUser: container.getUsername(),
    adminPassword: container.getPassword(),
    source: 'testcontainers',
    stop: once(async () => {
      await container.stop();
    }),
  };
  try {
    await provePasswordAuth(server);
  } catch (err) {
    await server.stop().catch(() => {});
    throw err;
  }
  announce(server, `container postgres:15, ready in ${ms(performance.now() - started)}`);
  return server;
}

// ---------------------------------------------------------------------------------------------
// shared

/** The right password runs SELECT 1 over TCP; a wrong one must fail with 28P01. Throws otherwise. */
async function provePasswordAuth(server: PgConnectionInfo): Promise<void> {
  const where = `${server.source} server ${server.host}:${server.port}`;
  try {
    await withClient(server, (c) => c.query('SELECT 1'));
  } catch (err) {
    throw new Error(`${where}: the admin password does not log in as ${server.adminUser}: ${errorText(err)}`);
  }
  const wrong = `${server.adminPassword}-wrong-${randomBytes(4).toString('hex')}`;
  let code: string | undefined;
  try {
    await withClient({ ...server, adminPassword: wrong }, (c) => c.query('SELECT 1'));
  } catch (err) {
    code = (err as { code?: string }).code;
    if (code !== '28P01') {
      throw new Error(
        `${where}: a wrong password failed, but not with 28P01 (got ${code ?? 'no code'}): ${errorText(err)}`,
      );
    }
    return;
  }
  throw new Error(
    `${where} accepted a WRONG password for ${server.adminUser}: it does not check passwords (trust?)`,
  );
}

async function withClient<T>(server: PgConnectionInfo, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({
    host: server.host,
    port: server.port,
    database: server.database,
    user: server.adminUser,
    password: server.adminPassword,
    connectionTimeoutMillis: 10_000,
  });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

async function run(cmd: string, args: string[]): Promise<void> {
  try {
    await execFileAsync(cmd, args, { timeout: EXEC_TIMEOUT_MS });
  } catch (err) {
    throw new Error(`${cmd} ${args.join(' ')} failed: ${errorText(err)}`);
  }
}

async function findOnPath(cmd: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, cmd);
    try {
      await access(candidate, fsConstants.X_OK);
      return candidate;
    } catch {}
  }
  return undefined;
}

function once(fn: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | undefined;
  return () => {
    p ??= fn();
    return p;
  };
}

function announce(server: PgConnectionInfo, detail: string): void {
  process.stderr.write(
    `[keyturn test pg] source=${server.source} host=${server.host} port=${server.port} db=${server.database} user=${server.adminUser} (${detail})\n`,
  );
}

function errorText(err: unknown): string {
  if (err instanceof Error) {
    const e = err as Error & { stderr?: string; stdout?: string };
    const extra = [e.stderr, e.stdout].filter((s) => typeof s === 'string' && s.trim() !== '').join('\n');
    return extra === '' ? e.message : `${e.message}\n${extra}`;
  }
  return String(err);
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? '';
}

function ms(n: number): string {
  return `${Math.round(n)}ms`;
}
