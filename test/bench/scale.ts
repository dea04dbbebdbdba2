// Goals 3 and 4 of issue 14, on a private redis-server:
//   memory  Redis bytes per registered credential, everything its registration writes included (record, indexes,
//           claims, due-time entry, local-store secret, the audit event and its chain entry), over 100,000
//           credentials imported through the API of `npm start`, on Redis with hash-max-listpack-value 1024 (the
//           README's production setting). Goal: ≤ 2048 B (1,000,000 in 2 GiB). The same on Redis's default (64) is
//           recorded beside it, over 10,000.
//   burst   the same 100,000 all due in the same minute, drained by 2 worker processes beside an API process: how long
//           after that minute the last one's rotation was started (created), and that each got exactly one. Goal:
//           ≤ 300 s. Their due time is put in the index directly (as a cron slot they share puts it there), rather
//           than by 100,000 PATCHes. The rotations themselves then run at the rate `rotations` measures.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { COMPACT_HASH_VALUE } from '../../src/redis/checks.ts';
import { RedisKeys } from '../../src/registry/keys.ts';
import {
  apiOf,
  inParallel,
  type KeyturnProcess,
  startKeyturn,
  startPrivateRedis,
  startWebhook,
} from './processes.ts';
import type { BenchSection } from './report.ts';

const CREDENTIALS = Number(process.env.KEYTURN_BENCH_SCALE ?? 100_000);
const CLIENTS = 16;
const PREFIX = 'ktscale';

const usedMemory = async (redis: Redis): Promise<number> =>
  Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1]);

export async function scale(report: BenchSection): Promise<void> {
  // Redis as installed first (hash-max-listpack-value 64), on a smaller fleet since the figure is per credential;
  // then Redis as the README's production settings have it (1024; Keyturn warns at start otherwise), for the goal.
  await fleet(report, { hashListpackValue: undefined, credentials: Math.min(10_000, CREDENTIALS) });
  await fleet(report, { hashListpackValue: COMPACT_HASH_VALUE, credentials: CREDENTIALS });
}

async function fleet(
  report: BenchSection,
  options: { hashListpackValue: number | undefined; credentials: number },
): Promise<void> {
  const CREDENTIALS = options.credentials;
  const tuned = options.hashListpackValue !== undefined;
  const redis = await startPrivateRedis(
    tuned ? ['--hash-max-listpack-value', String(options.hashListpackValue)] : [],
  );
  const direct = new Redis(redis.url);
  const keys = new RedisKeys(PREFIX);
  const signingKey = randomBytes(32).toString('base64url');
  const webhook = await startWebhook(signingKey, 'bench-key');
  const token = randomBytes(32).toString('base64url');
  const env = {
    REDIS_URL: redis.url,
    KEYTURN_PREFIX: PREFIX,
    KEYTURN_ADMIN_TOKEN: token,
    KEYTURN_MASTER_KEY: randomBytes(32).toString('base64'),
    KEYTURN_AUDIT_SIGNING_KEY: String(
      generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }),
    ),
    KEYTURN_RATE_LIMIT_MAX: '1000000',
    // Each import reserves a slot of the failed-import limit while it checks the password (issue 11): 16 at once
    // would otherwise be refused beyond the default 5.
    KEYTURN_IMPORT_FAILURES_MAX: '10000',
    NODE_ENV: 'production',
    // Production refuses loopback downstreams unless the outbound allow list names them (issue 17 §2).
    KEYTURN_OUTBOUND_ALLOW: '127.0.0.0/8,::1',
  };
  /** Waits (polling each second, at most two minutes) until the sealer has chained every audit event. */
  const sealed = async () => {
    for (let i = 0; i < 120; i++) {
      const [len, head] = await Promise.all([
        direct.xlen(keys.audit()),
        direct.hget(keys.auditHead(), 'seq'),
      ]);
      if (Number(head) >= len) return;
      // The poll interval of this wait on a condition (the sealer caught up), not a guess of how long it takes.
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  const running: KeyturnProcess[] = [];
  const stopAll = async () => {
    for (const p of running.splice(0).reverse()) await p.stop();
  };
  const ids = Array.from({ length: CREDENTIALS }, (_, i) => `svc-${String(i).padStart(6, '0')}`);
  try {
    // Memory: npm start, one connection, then the credentials; the figure is the growth of used_memory.
    const main = await startKeyturn('main', env);
    running.push(main);
    const api = apiOf(main.url, token);
    await api('POST', '/v1/connections', {
      id: 'fleet',
      type: 'webhook',
      host: '127.0.0.1',
      port: webhook.port,
      tls: { mode: 'disable' },
      admin: { username: 'bench-key', password: signingKey },
    });
    // The baseline once the connection's audit events are chained, as the figure is taken after the fleet's are.
    await sealed();
    const before = await usedMemory(direct);
    const t0 = performance.now();
    let done = 0;
    const progress = setInterval(
      () => process.stdout.write(`  … ${done} of ${CREDENTIALS} registered\n`),
      30_000,
    );
    try {
      await inParallel(ids, CLIENTS, async (id) => {
        await api('POST', '/v1/credentials', {
          id,
          connection: 'fleet',
          username: id,
          strategy: 'single-user',
          // A daily slot like most fleets', far from now: the burst below sets the due time itself.
          schedule: { cron: '30 2 * * *' },
          import: true,
          currentPassword: `initial-${id}`,
        });
        done++;
      });
    } finally {
      clearInterval(progress);
    }
    const registerSeconds = (performance.now() - t0) / 1000;
    report.record(
      `${CREDENTIALS} imports through the API (npm start, ${CLIENTS} clients)`,
      `${(CREDENTIALS / registerSeconds).toFixed(0)} credentials/s`,
    );
    // The sealer chains the registration events behind: wait until it has caught up, then measure.
    await sealed();
    const perCredential = ((await usedMemory(direct)) - before) / CREDENTIALS;
    const name = `Redis memory per registered credential (${CREDENTIALS} imported, local store, hash-max-listpack-value ${options.hashListpackValue ?? '64, the default'})`;
    if (!tuned) {
      report.record(name, `${perCredential.toFixed(0)} B`);
      return;
    }
    report.goal({
      name,
      figure: `${perCredential.toFixed(0)} B`,
      reference: '2048 B (1,000,000 credentials in 2 GiB)',
      ratio: perCredential / 2048,
      goal: '≤ 1',
      met: perCredential <= 2048,
    });
    await stopAll();

    // Burst: all due in the same minute, 2 worker processes.
    const apiOnly = await startKeyturn('main', { ...env, KEYTURN_COMPONENTS: 'api' });
    running.push(apiOnly);
    const minute = Math.ceil((Date.now() + 15_000) / 60_000) * 60_000;
    for (let i = 0; i < ids.length; i += 5000) {
      const pipeline = direct.pipeline();
      for (const id of ids.slice(i, i + 5000)) pipeline.zadd(keys.dueIndex(), minute, id);
      await pipeline.exec();
    }
    const workers = [await startKeyturn('worker', env), await startKeyturn('worker', env)];
    running.push(...workers);
    const started = async (): Promise<number[]> => {
      const counts: number[] = [];
      for (let i = 0; i < ids.length; i += 5000) {
        const pipeline = direct.pipeline();
        for (const id of ids.slice(i, i + 5000)) pipeline.zcard(keys.credentialRotations(id));
        for (const [, n] of (await pipeline.exec()) ?? []) counts.push(Number(n));
      }
      return counts;
    };
    let counts: number[] = [];
    const deadline = minute + 900_000;
    for (;;) {
      // The poll interval: each look counts 100,000 records, so it is not taken more often than this.
      await new Promise((r) => setTimeout(r, 5000));
      counts = await started();
      const waiting = counts.filter((n) => n === 0).length;
      process.stdout.write(`  … ${CREDENTIALS - waiting} of ${CREDENTIALS} started\n`);
      if (waiting === 0 || Date.now() > deadline) break;
    }
    // When each was started: its rotation record's createdAt.
    let last = 0;
    for (let i = 0; i < ids.length; i += 5000) {
      const pipeline = direct.pipeline();
      for (const id of ids.slice(i, i + 5000)) pipeline.zrange(keys.credentialRotations(id), 0, -1);
      const lists = ((await pipeline.exec()) ?? []).map(([, v]) => v as string[]);
      const records = direct.pipeline();
      for (const rotationIds of lists) for (const rid of rotationIds) records.get(keys.rotation('', rid));
      for (const [, raw] of (await records.exec()) ?? []) {
        if (typeof raw === 'string') last = Math.max(last, Date.parse(JSON.parse(raw).createdAt));
      }
    }
    const missed = counts.filter((n) => n === 0).length;
    const twice = counts.filter((n) => n > 1).length;
    const lastSeconds = (last - minute) / 1000;
    let lagCount = 0;
    let lagSum = 0;
    for (const w of workers) {
      const text = await (await fetch(`${w.url}/metrics`)).text();
      lagCount += Number(/^keyturn_schedule_lag_seconds_count (\S+)/m.exec(text)?.[1] ?? 0);
      lagSum += Number(/^keyturn_schedule_lag_seconds_sum (\S+)/m.exec(text)?.[1] ?? 0);
    }
    report.record(
      'burst: keyturn_schedule_lag_seconds over both workers',
      `${lagCount} observations, mean ${(lagSum / Math.max(1, lagCount)).toFixed(1)} s`,
    );
    report.goal({
      name: `burst: ${CREDENTIALS} due in one minute, last rotation started after (2 worker processes)`,
      figure: `${lastSeconds.toFixed(0)} s; ${missed} missed, ${twice} started twice`,
      reference: '300 s',
      ratio: lastSeconds / 300,
      goal: '≤ 1, none missed or doubled',
      met: lastSeconds <= 300 && missed === 0 && twice === 0,
    });
  } finally {
    await stopAll().catch(() => {});
    webhook.child.kill('SIGTERM');
    direct.disconnect();
    await redis.stop();
  }
}
