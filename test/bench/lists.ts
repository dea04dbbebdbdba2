// Goal 5 of issue 14: with 100,000 credentials, GET /v1/credentials pages (p99 of a page ≤ 50 ms), GET /v1/compliance
// streams, and the overdue scan runs, in bounded memory. The credentials are written through the registry (the lists
// read nothing else; the scale section imports through the API), then the API process serves the lists from a child
// process whose RSS is read from /proc.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import { OverdueScanner } from '../../src/compliance/overdue-scan.ts';
import { DEFAULT_PASSWORD_POLICY } from '../../src/crypto/password.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { RedisKeys } from '../../src/registry/keys.ts';
import { Registry } from '../../src/registry/registry.ts';
import type { CredentialSpec } from '../../src/registry/types.ts';
import { apiOf, inParallel, startKeyturn, startPrivateRedis } from './processes.ts';
import type { BenchSection } from './report.ts';

const CREDENTIALS = Number(process.env.KEYTURN_BENCH_LISTS ?? 100_000);
const PAGE = 100;
const PREFIX = 'ktlists';
const DAY = 86_400_000;

/** Resident set size of a process now, and its peak since it started (kB → bytes). */
function rss(pid: number): { now: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) =>
    Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { now: kb('VmRSS'), peak: kb('VmHWM') };
}
const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
const pct = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

export async function lists(report: BenchSection): Promise<void> {
  const redisServer = await startPrivateRedis(['--hash-max-listpack-value', '1024']);
  const redis = new Redis(redisServer.url);
  const keys = new RedisKeys(PREFIX);
  const registry = new Registry(redis as never, keys);
  const token = randomBytes(32).toString('base64url');
  try {
    const keyturn = await startKeyturn('main', {
      REDIS_URL: redisServer.url,
      KEYTURN_PREFIX: PREFIX,
      KEYTURN_ADMIN_TOKEN: token,
      KEYTURN_MASTER_KEY: randomBytes(32).toString('base64'),
      KEYTURN_RATE_LIMIT_MAX: '1000000',
      NODE_ENV: 'production',
      // Production refuses loopback downstreams unless the outbound allow list names them (issue 17 §2).
      KEYTURN_OUTBOUND_ALLOW: '127.0.0.0/8,::1',
      // The API alone: a worker would start an overdue scan of the whole fleet while the pages are timed (the scan is
      // measured on its own below).
      KEYTURN_COMPONENTS: 'api',
      // A heap of 160 MiB: a server that held the fleet (the old list and report) runs out of it long before 100,000.
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --max-old-space-size=160`.trim(),
    });
    try {
      const api = apiOf(keyturn.url, token);
      await api('POST', '/v1/connections', {
        id: 'fleet',
        type: 'webhook',
        host: '127.0.0.1',
        port: 9,
        tls: { mode: 'disable' },
        admin: { username: 'bench', password: 'b'.repeat(32) },
      });
      // A fleet like a bank's: most rotated recently, a few overdue, labelled by team.
      const now = Date.now();
      const ids = Array.from({ length: CREDENTIALS }, (_, i) => `svc-${String(i).padStart(6, '0')}`);
      const t0 = performance.now();
      await inParallel(ids, 64, async (id) => {
        const i = Number(id.slice(4));
        const created = new Date(now - 400 * DAY + i).toISOString();
        const spec: CredentialSpec = {
          id,
          connection: 'fleet',
          username: id,
          strategy: 'single-user',
          schedule: { every: '30d' },
          store: { type: 'local' },
          password: { ...DEFAULT_PASSWORD_POLICY },
          labels: { team: `team-${i % 50}` },
          ...(i % 3 === 0 ? { maxAgeDays: 90 } : {}),
          createdAt: created,
          updatedAt: created,
        };
        const rotatedAt = new Date(now - ((i * 7919) % 120) * DAY).toISOString();
        await registry.createCredential(spec, {
          status: 'active',
          version: `v-${i}`,
          rotatedAt,
          nextRotationAt: new Date(Date.parse(rotatedAt) + 30 * DAY).toISOString(),
          failures: 0,
        });
      });
      report.record(
        `${CREDENTIALS} credentials written through the registry`,
        `${((performance.now() - t0) / 1000).toFixed(0)} s`,
      );

      // Pages: the whole list, PAGE at a time, one request after another.
      const before = rss(keyturn.child.pid!);
      const latencies: number[] = [];
      let listed = 0;
      for (let cursor: string | null = ''; cursor !== null; ) {
        const t = performance.now();
        const page: { credentials: unknown[]; next: string | null } = await api(
          'GET',
          `/v1/credentials?limit=${PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
        );
        latencies.push(performance.now() - t);
        listed += page.credentials.length;
        cursor = page.next;
      }
      if (listed !== CREDENTIALS) throw new Error(`the pages listed ${listed} of ${CREDENTIALS} credentials`);
      latencies.sort((a, b) => a - b);
      const p99 = pct(latencies, 99);
      report.goal({
        name: `GET /v1/credentials, p99 of a page of ${PAGE} over ${CREDENTIALS} (${latencies.length} pages)`,
        figure: `${p99.toFixed(1)} ms (p50 ${pct(latencies, 50).toFixed(1)} ms)`,
        reference: '50 ms',
        ratio: p99 / 50,
        goal: '≤ 1',
        met: p99 <= 50,
      });
      // A filter that matches one credential in 50, paged the same way.
      const filtered: number[] = [];
      for (let cursor: string | null = '', n = 0; cursor !== null && n < 200; n++) {
        const t = performance.now();
        const page: { next: string | null } = await api(
          'GET',
          `/v1/credentials?limit=${PAGE}&label=team:team-7${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
        );
        filtered.push(performance.now() - t);
        cursor = page.next;
      }
      filtered.sort((a, b) => a - b);
      report.record(
        'GET /v1/credentials?label=… (1 in 50 match), p99 of a page',
        `${pct(filtered, 99).toFixed(1)} ms over ${filtered.length} pages`,
      );

      // Compliance, streamed: the whole report as JSON, then as CSV, with the server's RSS.
      for (const format of ['json', 'csv'] as const) {
        const start = rss(keyturn.child.pid!);
        const t = performance.now();
        const res = await fetch(`${keyturn.url}/v1/compliance?format=${format}`, {
          headers: { authorization: `Bearer ${token}` },
        });
        let bytes = 0;
        let peak = start.now;
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          bytes += chunk.length;
          peak = Math.max(peak, rss(keyturn.child.pid!).now);
        }
        report.record(
          `GET /v1/compliance?format=${format} (${CREDENTIALS} rows, ${mb(bytes)})`,
          `${((performance.now() - t) / 1000).toFixed(2)} s; server RSS ${mb(start.now)} → peak ${mb(peak)} while streaming`,
        );
      }
      report.record(
        'server RSS across the paging and the two reports',
        `${mb(before.now)} before, ${mb(rss(keyturn.child.pid!).peak)} peak since start`,
      );
    } finally {
      await keyturn.stop();
    }

    // The overdue scan, in this process: its time and heap growth.
    const scanner = new OverdueScanner({
      redis: redis as never,
      keys,
      registry,
      clock: { now: () => Date.now() },
      logger: createLogger({
        level: 'warn',
        format: 'json',
        destination: new Writable({ write: (_c, _e, d) => d() }),
      }),
    });
    global.gc?.();
    const heapBefore = process.memoryUsage().heapUsed;
    let heapPeak = heapBefore;
    const sampler = setInterval(() => {
      heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
    }, 20);
    const t = performance.now();
    const result = await scanner.scan();
    clearInterval(sampler);
    report.record(
      `overdue scan over ${CREDENTIALS} credentials`,
      `${((performance.now() - t) / 1000).toFixed(2)} s, ${result.overdue} overdue, ${result.raised.length} raised; heap growth at most ${mb(heapPeak - heapBefore)}`,
    );
  } finally {
    redis.disconnect();
    await redisServer.stop();
  }
}
