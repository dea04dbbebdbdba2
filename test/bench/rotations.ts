import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { startPasswordPostgres } from '../support/postgres-cluster.ts';
import { openSse, type SseStream } from '../support/sse.ts';
import {
  apiOf,
  inParallel,
  type KeyturnProcess,
  type PrivateRedis,
  startKeyturn,
  startPrivateRedis,
  startWebhook,
} from './processes.ts';
import type { BenchSection } from './report.ts';

/** Credentials rotated in each throughput round (KEYTURN_BENCH_ROTATIONS overrides). */
const CREDENTIALS = Number(process.env.KEYTURN_BENCH_ROTATIONS ?? 2000);
/** Requests to the API in flight while asking for the rotations. */
const CLIENTS = 32;
const PG_ROUNDS = 30;

/** Counts the `rotation` events on the API's stream (SPEC, Events), by outcome. */
class Outcomes {
  succeeded = 0;
  failed = 0;
  readonly #waiters: Array<() => void> = [];
  readonly stream: SseStream;
  constructor(stream: SseStream) {
    this.stream = stream;
  }
  static async open(url: string, token: string): Promise<Outcomes> {
    let outcomes: Outcomes | undefined;
    const pending: string[] = [];
    const stream = await openSse(`${url}/v1/events`, {
      headers: { authorization: `Bearer ${token}` },
      onMessage: (m) => {
        if (m.event !== 'rotation') return;
        const { outcome } = JSON.parse(m.data) as { outcome: string };
        if (outcomes) outcomes.#count(outcome);
        else pending.push(outcome);
      },
    });
    if (stream.status !== 200) throw new Error(`/v1/events answered ${stream.status}: ${stream.raw}`);
    outcomes = new Outcomes(stream);
    for (const outcome of pending) outcomes.#count(outcome);
    return outcomes;
  }
  #count(outcome: string) {
    if (outcome === 'succeeded') this.succeeded++;
    else if (outcome === 'failed') this.failed++;
    else return;
    for (const w of this.#waiters.splice(0)) w();
  }
  /** Waits until `total` outcomes have arrived since the stream opened. */
  async until(total: number, timeoutMs = 600_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.succeeded + this.failed < total) {
      if (Date.now() > deadline)
        throw new Error(`only ${this.succeeded + this.failed} of ${total} rotations ended in time`);
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        // Woken by the next outcome; the timer only lets the deadline above be checked while none arrives.
        setTimeout(resolve, 1000);
      });
    }
  }
}

export async function rotations(report: BenchSection): Promise<void> {
  const redis: PrivateRedis = await startPrivateRedis();
  const signingKey = randomBytes(32).toString('base64url');
  const webhook = await startWebhook(signingKey, 'bench-key');
  const token = randomBytes(32).toString('base64url');
  const env = {
    REDIS_URL: redis.url,
    KEYTURN_PREFIX: 'ktbench',
    KEYTURN_ADMIN_TOKEN: token,
    KEYTURN_MASTER_KEY: randomBytes(32).toString('base64'),
    KEYTURN_AUDIT_SIGNING_KEY: String(
      generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }),
    ),
    KEYTURN_RATE_LIMIT_MAX: '1000000',
    NODE_ENV: 'production',
    // Production refuses loopback downstreams unless the outbound allow list names them (issue 17 §2).
    KEYTURN_OUTBOUND_ALLOW: '127.0.0.0/8,::1',
  };
  const running: KeyturnProcess[] = [];
  const start = async (entry: 'main' | 'worker', extra: Record<string, string> = {}) => {
    const p = await startKeyturn(entry, { ...env, ...extra });
    running.push(p);
    return p;
  };
  const stopAll = async () => {
    for (const p of running.splice(0).reverse()) await p.stop();
  };
  const ids = Array.from({ length: CREDENTIALS }, (_, i) => `bench-${i}`);

  /** Asks for a rotation of every credential and waits until all have ended; rotations per second. */
  const rotateAll = async (url: string): Promise<number> => {
    const api = apiOf(url, token);
    const outcomes = await Outcomes.open(url, token);
    try {
      const t0 = performance.now();
      await inParallel(ids, CLIENTS, (id) => api('POST', `/v1/credentials/${id}/rotate`));
      await outcomes.until(ids.length);
      const elapsed = (performance.now() - t0) / 1000;
      if (outcomes.failed) throw new Error(`${outcomes.failed} rotations failed`);
      return ids.length / elapsed;
    } finally {
      outcomes.stream.close();
    }
  };

  try {
    // 1. `npm start`: registration (each registration rotates once), then a round of rotate-now for all.
    const main = await start('main');
    const api = apiOf(main.url, token);
    await api('POST', '/v1/connections', {
      id: 'cheap',
      type: 'webhook',
      host: '127.0.0.1',
      port: webhook.port,
      tls: { mode: 'disable' },
      admin: { username: 'bench-key', password: signingKey },
    });
    const registered = await Outcomes.open(main.url, token);
    const t0 = performance.now();
    await inParallel(ids, CLIENTS, (id) =>
      api('POST', '/v1/credentials', {
        id,
        connection: 'cheap',
        username: id,
        strategy: 'single-user',
        schedule: { every: '30d' },
      }),
    );
    await registered.until(ids.length);
    registered.stream.close();
    if (registered.failed) throw new Error(`${registered.failed} first rotations failed`);
    report.record(
      `${CREDENTIALS} registrations, each with its first rotation (npm start)`,
      `${(ids.length / ((performance.now() - t0) / 1000)).toFixed(0)} credentials/s`,
    );
    const single = await rotateAll(main.url);
    report.goal({
      name: `rotations/s, ${CREDENTIALS} rotate-now on a webhook that answers at once (npm start)`,
      figure: `${single.toFixed(0)} rotations/s`,
      reference: 'the goal of 250 rotations/s',
      ratio: single / 250,
      goal: '≥ 1 (250 rotations/s)',
      met: single >= 250,
    });
    await stopAll();

    // 2. The API alone, and worker processes beside it: 1, then 2.
    const apiOnly = await start('main', { KEYTURN_COMPONENTS: 'api' });
    await start('worker');
    const one = await rotateAll(apiOnly.url);
    report.record('rotations/s, API process + 1 worker process', `${one.toFixed(0)} rotations/s`);
    await start('worker');
    const two = await rotateAll(apiOnly.url);
    report.goal({
      name: 'rotations/s with 2 worker processes ÷ with 1 (API in its own process)',
      figure: `${two.toFixed(0)} rotations/s`,
      reference: `1 worker process ${one.toFixed(0)} rotations/s`,
      ratio: two / one,
      goal: '> 1 (throughput grows with worker processes)',
      met: two / one > 1.05,
    });
    await stopAll();

    // 3. PostgreSQL: the engine's time per rotation (the rotation record's startedAt → finishedAt) against the bare
    // sequence, one at a time, interleaved so that the machine's drift weighs on both alike.
    await pgEngineCost(report, await start('main'), token);
  } finally {
    await stopAll().catch(() => {});
    webhook.child.kill('SIGTERM');
    await redis.stop();
  }
}

async function pgEngineCost(report: BenchSection, keyturn: KeyturnProcess, token: string): Promise<void> {
  const server = await startPasswordPostgres();
  const api = apiOf(keyturn.url, token);
  const admin = { host: server.host, port: server.port, database: server.database };
  const login = async (user: string, password: string) => {
    const client = new pg.Client({ ...admin, user, password });
    await client.connect();
    return client;
  };
  try {
    const setup = await login(server.adminUser, server.adminPassword);
    await setup.query("CREATE ROLE bench_engine LOGIN PASSWORD 'x'");
    await setup.query("CREATE ROLE bench_bare LOGIN PASSWORD 'x'");
    await setup.end();
    await api('POST', '/v1/connections', {
      id: 'pg',
      type: 'postgres',
      host: server.host,
      port: server.port,
      database: server.database,
      admin: { username: server.adminUser, password: server.adminPassword },
    });
    const created = await api('POST', '/v1/credentials', {
      id: 'bench-engine',
      connection: 'pg',
      username: 'bench_engine',
      strategy: 'single-user',
      schedule: { every: '30d' },
    });
    const settled = async (rotationId: string) => {
      for (;;) {
        const r = await api('GET', `/v1/rotations/${rotationId}`);
        if (r.status === 'succeeded') return r;
        if (r.status === 'failed') throw new Error(`rotation failed: ${r.error?.message}`);
        await new Promise((res) => setTimeout(res, 20));
      }
    };
    await settled(created.rotation.id);
    const bare: number[] = [];
    const engine: number[] = [];
    for (let round = 0; round < PG_ROUNDS; round++) {
      const t = performance.now();
      const password = randomBytes(24).toString('base64url');
      const a = await login(server.adminUser, server.adminPassword);
      await a.query(`ALTER ROLE bench_bare WITH PASSWORD '${password}'`);
      await a.end();
      const check = await login('bench_bare', password);
      await check.query('SELECT 1');
      await check.end();
      bare.push(performance.now() - t);

      const { rotationId } = await api('POST', '/v1/credentials/bench-engine/rotate');
      const r = await settled(rotationId);
      engine.push(Date.parse(r.finishedAt) - Date.parse(r.startedAt));
    }
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
    const ratio = median(engine) / median(bare);
    report.goal({
      name: `PostgreSQL rotation, engine ÷ bare downstream sequence (median of ${PG_ROUNDS}, one at a time)`,
      figure: `${median(engine).toFixed(1)} ms (startedAt → finishedAt)`,
      reference: `bare admin login + ALTER ROLE + login ${median(bare).toFixed(1)} ms`,
      ratio,
      goal: '≤ 1.25',
      met: ratio <= 1.25,
    });
  } finally {
    await server.stop();
  }
}
