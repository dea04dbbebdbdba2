// The bench's first section: throughput and latency of the hot paths, on this machine, against real Redis and a
// password-checking PostgreSQL cluster made for the run. Plain figures; nothing here asserts timing.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import pg from 'pg';
import { compareStreamIds } from '../../src/audit/verifier.ts';
import { loadConfig } from '../../src/config/config.ts';
import { generatePassword } from '../../src/crypto/password.ts';
import { envEnvelope } from '../../src/keys/index.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { createRuntime } from '../../src/runtime.ts';
import { startPasswordPostgres } from '../support/postgres-cluster.ts';

import type { BenchSection } from './report.ts';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const pct = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
const ms = (n: number) => `${n.toFixed(1)} ms`;

function timeLoop(n: number, fn: () => void): number {
  const t = performance.now();
  for (let i = 0; i < n; i++) fn();
  return (n / (performance.now() - t)) * 1000;
}

/** timeLoop for an async operation, one call at a time (the envelope is async since key providers). */
async function timeLoopAsync(n: number, fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  for (let i = 0; i < n; i++) await fn();
  return (n / (performance.now() - t)) * 1000;
}

export async function hotPaths(report: BenchSection): Promise<void> {
  const record = (name: string, value: string) => report.record(name, value);
  const envelope = envEnvelope(randomBytes(32));
  const context = { secret: 'cred/bench', version: 'bench' };
  const sealed = await envelope.encrypt('x'.repeat(200), context);
  record(
    'envelope seal (AES-256-GCM, DEK per value)',
    `${(await timeLoopAsync(20_000, () => envelope.encrypt('x'.repeat(200), context))).toFixed(0)} ops/s`,
  );
  record(
    'envelope open',
    `${(await timeLoopAsync(20_000, () => envelope.decrypt(sealed, context))).toFixed(0)} ops/s`,
  );
  record(
    'password generation (32 alphanumeric)',
    `${timeLoop(20_000, () => generatePassword()).toFixed(0)} ops/s`,
  );

  const server = await startPasswordPostgres();
  const prefix = `kt-bench-${randomBytes(4).toString('hex')}`;
  const adminToken = randomBytes(32).toString('base64url');
  const config = loadConfig({
    REDIS_URL,
    KEYTURN_PREFIX: prefix,
    KEYTURN_ADMIN_TOKEN: adminToken,
    KEYTURN_MASTER_KEY: randomBytes(32).toString('base64'),
    KEYTURN_AUDIT_SIGNING_KEY: String(
      generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }),
    ),
    PORT: '0',
    LOG_LEVEL: 'warn',
    KEYTURN_ROTATION_CONCURRENCY: '4',
    // The bench measures throughput, not the rate limit.
    KEYTURN_RATE_LIMIT_MAX: '1000000',
  });
  const runtime = await createRuntime({
    config,
    logger: createLogger({
      level: 'warn',
      format: 'json',
      destination: new Writable({ write: (_c, _e, d) => d() }),
    }),
    adminToken,
    masterKey: config.masterKey!,
  });
  const url = (await runtime.start()) as string;
  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${adminToken}`,
        ...(body ? { 'content-type': 'application/json' } : {}),
      },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    return (await res.json()) as any;
  };
  const admin = new pg.Client({
    host: server.host,
    port: server.port,
    database: server.database,
    user: server.adminUser,
    password: server.adminPassword,
  });
  await admin.connect();

  try {
    await api('POST', '/v1/connections', {
      id: 'bench',
      type: 'postgres',
      host: server.host,
      port: server.port,
      database: server.database,
      admin: { username: server.adminUser, password: server.adminPassword },
    });
    const waitRotation = async (id: string) => {
      for (;;) {
        const r = await api('GET', `/v1/rotations/${id}`);
        if (r.status === 'succeeded' || r.status === 'failed') return r;
        await new Promise((res) => setTimeout(res, 5));
      }
    };

    for (const strategy of ['single-user', 'alternating-users'] as const) {
      const role = `bench_${strategy.replace('-', '_')}`;
      await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD 'x'`);
      const created = await api('POST', '/v1/credentials', {
        id: role.replaceAll('_', '-'),
        connection: 'bench',
        username: role,
        strategy,
        schedule: { every: '30d' },
      });
      await waitRotation(created.rotation.id);
      const durations: number[] = [];
      for (let i = 0; i < 30; i++) {
        const t = performance.now();
        const r = await api('POST', `/v1/credentials/${role.replaceAll('_', '-')}/rotate`);
        const done = await waitRotation(r.rotationId);
        if (done.status !== 'succeeded') throw new Error(`rotation failed: ${done.error?.message}`);
        durations.push(performance.now() - t);
      }
      durations.sort((a, b) => a - b);
      record(
        `rotation ${strategy}, request to succeeded (n=30)`,
        `p50 ${ms(pct(durations, 50))}, p95 ${ms(pct(durations, 95))}`,
      );
    }

    // Many credentials rotating at once: the worker's concurrency and the per-credential lease at work.
    const many = 40;
    await admin.query('CREATE ROLE bench_app NOLOGIN');
    for (let i = 0; i < many; i++) {
      await admin.query(`CREATE ROLE bench_many_${i} LOGIN PASSWORD 'x'`);
      // A lease gets the credential's group roles, never the role itself (issue 11, finding 4).
      await admin.query(`GRANT bench_app TO bench_many_${i}`);
      await api('POST', '/v1/credentials', {
        id: `many-${i}`,
        connection: 'bench',
        username: `bench_many_${i}`,
        strategy: 'single-user',
        schedule: { every: '30d' },
      });
    }
    const settle = async () => {
      for (;;) {
        const { credentials } = await api('GET', '/v1/credentials');
        if (credentials.every((c: { status: string }) => c.status === 'active')) return;
        await new Promise((res) => setTimeout(res, 20));
      }
    };
    await settle();
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: many }, (_, i) => api('POST', `/v1/credentials/many-${i}/rotate`)),
    );
    await settle();
    const elapsed = performance.now() - t0;
    record(
      `${many} credentials rotated at once (concurrency 4)`,
      `${(elapsed / 1000).toFixed(2)} s, ${((many / elapsed) * 1000).toFixed(1)} rotations/s`,
    );

    // Secret reads: the path services hit.
    const reads = 2000;
    const concurrency = 16;
    const latencies: number[] = [];
    let next = 0;
    const t1 = performance.now();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < reads) {
          next++;
          const t = performance.now();
          await api('GET', '/v1/credentials/many-1/secret');
          latencies.push(performance.now() - t);
        }
      }),
    );
    const readElapsed = performance.now() - t1;
    latencies.sort((a, b) => a - b);
    record(
      `secret reads (n=${reads}, ${concurrency} in parallel)`,
      `${((reads / readElapsed) * 1000).toFixed(0)} req/s, p50 ${ms(pct(latencies, 50))}, p99 ${ms(pct(latencies, 99))}`,
    );

    // Leases: one at a time (latency of issue, which makes a role and logs in with it), then a burst of 200.
    const leaseLatencies: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t = performance.now();
      const lease = await api('POST', '/v1/credentials/many-2/leases', { ttl: '10m' });
      if (!lease.password) throw new Error(`lease failed: ${JSON.stringify(lease)}`);
      leaseLatencies.push(performance.now() - t);
    }
    leaseLatencies.sort((a, b) => a - b);
    record(
      'lease issue, one at a time (n=50)',
      `p50 ${ms(pct(leaseLatencies, 50))}, p95 ${ms(pct(leaseLatencies, 95))}`,
    );
    const burst = 200;
    const t2 = performance.now();
    const issued = await Promise.all(
      Array.from({ length: burst }, () => api('POST', '/v1/credentials/many-3/leases', { ttl: '10m' })),
    );
    const burstElapsed = performance.now() - t2;
    if (issued.some((l) => !l.password)) throw new Error('a lease of the burst failed');
    record(
      `${burst} leases asked for at once (concurrency ${config.leases.concurrency})`,
      `${(burstElapsed / 1000).toFixed(2)} s, ${((burst / burstElapsed) * 1000).toFixed(0)} leases/s`,
    );
    const t3 = performance.now();
    await Promise.all(issued.map((l) => api('DELETE', `/v1/leases/${l.id}`)));
    const revokeElapsed = performance.now() - t3;
    record(
      `${burst} leases revoked at once (DELETE)`,
      `${(revokeElapsed / 1000).toFixed(2)} s, ${((burst / revokeElapsed) * 1000).toFixed(0)} revocations/s`,
    );

    // The audit chain: appends from many callers at once, how fast the sealer follows, verification and export.
    const appendLatencies: number[] = [];
    const events = 20_000;
    const t4 = performance.now();
    let last = '';
    await Promise.all(
      Array.from({ length: 50 }, async (_, worker) => {
        for (let i = worker; i < events; i += 50) {
          const started = performance.now();
          const id = await runtime.ctx.audit.append({
            actor: `bench-${worker}`,
            action: 'bench.appended',
            outcome: 'success',
            credential: `many-${i % 40}`,
            details: { i },
          });
          appendLatencies.push(performance.now() - started);
          if (id > last) last = id;
        }
      }),
    );
    const appendElapsed = performance.now() - t4;
    appendLatencies.sort((a, b) => a - b);
    record(
      `audit append, 50 callers at once (${events} events)`,
      `${((events / appendElapsed) * 1000).toFixed(0)} events/s, p50 ${ms(pct(appendLatencies, 50))}, p99 ${ms(pct(appendLatencies, 99))}`,
    );
    const store = runtime.ctx.auditTrail.store;
    for (;;) {
      const head = await store.head();
      if (head.id && compareStreamIds(head.id, last) >= 0) break;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const sealLag = performance.now() - t4 - appendElapsed;
    record('audit sealer: last event sealed after the last append', ms(sealLag));
    const verified = (await api('GET', '/v1/audit/verify')) as {
      ok: boolean;
      count: number;
      durationMs: number;
    };
    if (!verified.ok) throw new Error('the audit chain did not verify');
    record(
      `audit verify (GET /v1/audit/verify, ${verified.count} events)`,
      `${verified.durationMs} ms, ${Math.round(verified.count / (verified.durationMs / 1000))} events/s`,
    );
    const rssBefore = process.memoryUsage().rss;
    let peakRss = rssBefore;
    const sampler = setInterval(() => {
      peakRss = Math.max(peakRss, process.memoryUsage().rss);
    }, 10);
    const t5 = performance.now();
    const exportRes = await fetch(`${url}/v1/audit/export`, {
      headers: { authorization: `Bearer ${adminToken}` },
    });
    let bytes = 0;
    for await (const chunk of exportRes.body as unknown as AsyncIterable<Uint8Array>) bytes += chunk.length;
    const exportElapsed = performance.now() - t5;
    clearInterval(sampler);
    record(
      `audit export JSONL (${verified.count} events, ${(bytes / 1e6).toFixed(1)} MB)`,
      `${(exportElapsed / 1000).toFixed(2)} s, peak RSS growth ${((peakRss - rssBefore) / 1e6).toFixed(1)} MB (server and client in one process)`,
    );
  } finally {
    await admin.end();
    await runtime.close();
    await server.stop();
    const { Redis } = await import('ioredis');
    const redis = new Redis(REDIS_URL);
    let cursor = '0';
    do {
      const [n, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = n;
      if (keys.length) await redis.del(...keys);
    } while (cursor !== '0');
    redis.disconnect();
  }
}
