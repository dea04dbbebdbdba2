// Acceptance (issue 6): the compliance report marks a credential overdue when its schedule is stopped past
// maxAgeDays (a controllable clock moves days ahead; nothing rotates the credential in that time), with the right
// totals, as JSON and as CSV that parses back to the same rows; and the overdue notification fires once: scans run
// many times, from two worker runtimes at once (same prefix, same clock), raise one `credential.overdue` audit event
// and one signed delivery, and after a rotation a new lapse raises exactly one more.

import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OverdueScanner } from '../../src/compliance/overdue-scan.ts';
import { CSV_COLUMNS } from '../../src/compliance/report.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { NOTIFY_GROUP } from '../../src/notifications/notifier.ts';
import type { RedisClient } from '../../src/redis/client.ts';
import type { Registry } from '../../src/registry/registry.ts';
import type { Credential } from '../../src/registry/types.ts';
import {
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  testKeys,
  testRedis,
  waitFor,
  waitForRotation,
} from '../support/harness.ts';
import { startNotificationReceiver } from '../support/notification-receiver.ts';

const DAY = 86_400_000;
const secret = randomBytes(32).toString('base64url');
let offset = 0;
/** Real time moved by `offset`: the test's controllable clock, shared by every runtime of this file. */
const clock = { now: () => Date.now() + offset };

let receiver: Awaited<ReturnType<typeof startNotificationReceiver>>;
let env: ReturnType<typeof testEnv>;
let api: Keyturn;
let workers: Keyturn[] = [];
let lapsed: Awaited<ReturnType<typeof importCredential>>;
let fine: Awaited<ReturnType<typeof importCredential>>;
let redis: RedisClient;
let connection = '';
const LABEL_WITH_COMMA = 'pay,ments "core"';

beforeAll(async () => {
  receiver = await startNotificationReceiver(secret);
  env = testEnv({
    KEYTURN_NOTIFY_WEBHOOK_URLS: `${receiver.url}/hooks/overdue`,
    KEYTURN_NOTIFY_WEBHOOK_SECRET: secret,
    // Overdue only: the rotation below must not be delivered.
    KEYTURN_NOTIFY_EVENTS: 'credential.overdue',
    KEYTURN_OVERDUE_SCAN_INTERVAL_MS: '500',
    KEYTURN_NOTIFY_BACKOFF_MS: '50',
  });
  api = await startKeyturn(env, { components: ['api'], clock });
  workers = await Promise.all([
    startKeyturn(env, { components: ['worker'], clock }),
    startKeyturn(env, { components: ['worker'], clock }),
  ]);
  redis = testRedis();
  connection = await registerPgConnection(api);
  // Imported with a 30-day schedule: within the days the clock moves, nothing rotates them.
  lapsed = await importCredential(api, connection, {
    idPrefix: 'lapse',
    extra: { maxAgeDays: 2, labels: { team: LABEL_WITH_COMMA, tier: 'gold' } },
  });
  fine = await importCredential(api, connection, { idPrefix: 'fine', extra: { labels: { team: 'other' } } });
});

afterAll(async () => {
  for (const kt of [api, ...workers]) await kt?.close();
  await receiver?.close();
  redis?.disconnect();
  if (env) await dropPrefix(env.prefix);
});

async function report(query = '') {
  const before = clock.now();
  const res = await api.api('GET', `/v1/compliance${query}`);
  const after = clock.now();
  expect(res.status, res.text).toBe(200);
  const asOf = Date.parse(res.body.asOf);
  expect(asOf).toBeGreaterThanOrEqual(before);
  expect(asOf).toBeLessThanOrEqual(after);
  return res.body;
}

/** RFC 4180, written independently of the report's escaper: quoted fields, doubled quotes, CRLF records. */
function parseCsv(text: string): string[][] {
  const records: string[][] = [];
  let record: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      record.push(field);
      field = '';
    } else if (c === '\r' && text[i + 1] === '\n') {
      record.push(field);
      records.push(record);
      record = [];
      field = '';
      i++;
    } else field += c;
  }
  expect(field, 'the last record ends with CRLF').toBe('');
  return records;
}

/** A JSON row as the CSV writes it: null empty, labels as JSON, everything else as text. */
function asCsvCells(row: Record<string, unknown>, asOf: string): string[] {
  return CSV_COLUMNS.map((column) => {
    const value = column === 'asOf' ? asOf : column === 'labels' ? JSON.stringify(row.labels) : row[column];
    return value === null || value === undefined ? '' : String(value);
  });
}

/** Runs `times` scans at once in each worker runtime; returns how many of them raised `credentialId`. */
async function scanEverywhere(times: number, credentialId: string): Promise<number> {
  const results = await Promise.all(
    workers.flatMap((w) => Array.from({ length: times }, () => w.runtime.workers!.scanOverdue())),
  );
  return results.filter((r) => r.raised.includes(credentialId)).length;
}

const overdueDeliveries = (credentialId: string) =>
  receiver.deliveries.filter(
    (d) => d.body?.type === 'credential.overdue' && d.body.credential === credentialId,
  );

/** Every delivery that could still come has come: nothing pending in the group, the queue drained. */
async function settled(): Promise<void> {
  await waitFor('notifications to settle', async () => {
    const pending = (await redis.xpending(testKeys(env.prefix).audit(), NOTIFY_GROUP)) as [
      number,
      ...unknown[],
    ];
    const counts = await api.runtime.queues.notifications.getJobCounts('waiting', 'active', 'delayed');
    return pending[0] === 0 && Object.values(counts).every((n) => n === 0);
  });
}

describe('compliance report', () => {
  it('is within policy at t0 and overdue at t0 + 3 days, with the right totals', async () => {
    offset = 0;
    const t0 = await report();
    const rowOf = (body: any, id: string) => body.credentials.find((r: any) => r.id === id);
    expect(t0.credentials.map((r: any) => r.id)).toEqual([lapsed.id, fine.id]);
    const registered = await api.api('GET', `/v1/credentials/${lapsed.id}`);
    const setAt = registered.body.rotatedAt as string;
    expect(rowOf(t0, lapsed.id)).toEqual({
      id: lapsed.id,
      connection: expect.any(String),
      targetType: 'postgres',
      strategy: 'single-user',
      status: 'active',
      labels: { team: LABEL_WITH_COMMA, tier: 'gold' },
      maxAgeDays: 2,
      ageDays: 0,
      lastRotatedAt: null,
      nextRotationAt: registered.body.nextRotationAt,
      lastOutcome: null,
      consecutiveFailures: 0,
      overdue: false,
      overdueSince: null,
      neverRotated: true,
      paused: false,
      pausedSince: null,
    });
    expect(rowOf(t0, fine.id)).toMatchObject({ maxAgeDays: null, overdue: false, neverRotated: true });
    expect(t0.totals).toEqual({
      credentials: 2,
      withinPolicy: 2,
      withinPolicyPercent: 100,
      overdue: 0,
      failed: 0,
      neverRotated: 2,
      paused: 0,
    });

    offset = 3 * DAY;
    const t3 = await report();
    const row = rowOf(t3, lapsed.id);
    expect(row.overdue).toBe(true);
    expect(row.overdueSince).toBe(new Date(Date.parse(setAt) + 2 * DAY).toISOString());
    expect(row.ageDays).toBeGreaterThanOrEqual(3);
    expect(row.ageDays).toBeLessThan(3.1);
    expect(rowOf(t3, fine.id)).toMatchObject({ overdue: false, overdueSince: null });
    expect(t3.totals).toEqual({
      credentials: 2,
      withinPolicy: 1,
      withinPolicyPercent: 50,
      overdue: 1,
      failed: 0,
      neverRotated: 2,
      paused: 0,
    });
    // The credential's own view judges by the same clock.
    expect((await api.api('GET', `/v1/credentials/${lapsed.id}`)).body.overdue).toBe(true);
    expect(
      (await api.api('GET', '/v1/credentials?overdue=true')).body.credentials.map((c: any) => c.id),
    ).toEqual([lapsed.id]);

    // Filters apply to the rows and to the totals.
    const overdueOnly = await report('?overdue=true');
    expect(overdueOnly.credentials.map((r: any) => r.id)).toEqual([lapsed.id]);
    expect(overdueOnly.totals).toMatchObject({ credentials: 1, overdue: 1, withinPolicyPercent: 0 });
    expect((await report('?overdue=false')).credentials.map((r: any) => r.id)).toEqual([fine.id]);
    const byLabel = await report(`?label=${encodeURIComponent(`team:${LABEL_WITH_COMMA}`)}`);
    expect(byLabel.credentials.map((r: any) => r.id)).toEqual([lapsed.id]);
    expect((await report('?label=team=nobody')).totals).toMatchObject({
      credentials: 0,
      withinPolicyPercent: null,
    });
  });

  it('as CSV: a header and one RFC 4180 row per credential that parse back to the JSON rows', async () => {
    offset = 3 * DAY;
    const json = await report();
    const res = await api.api('GET', '/v1/compliance?format=csv');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/csv/);
    expect(res.headers.get('content-disposition')).toMatch(
      /^attachment; filename="keyturn-compliance-.*\.csv"$/,
    );
    const [header, ...rows] = parseCsv(res.text);
    expect(header).toEqual([...CSV_COLUMNS]);
    const asOf = rows[0]![0]!;
    expect(rows).toEqual(json.credentials.map((r: any) => asCsvCells(r, asOf)));
    // The label with a comma and quotes survives the round trip.
    expect(JSON.parse(rows[0]![CSV_COLUMNS.indexOf('labels')]!)).toEqual({
      team: LABEL_WITH_COMMA,
      tier: 'gold',
    });
    expect(rows[0]![CSV_COLUMNS.indexOf('overdue')]).toBe('true');

    // Accept: text/csv alone asks for CSV; ?format wins over Accept.
    const accepted = await api.api('GET', '/v1/compliance', undefined, { accept: 'text/csv' });
    expect(accepted.headers.get('content-type')).toMatch(/^text\/csv/);
    const preferJson = await api.api('GET', '/v1/compliance', undefined, {
      accept: 'text/csv;q=0.5, application/json',
    });
    expect(preferJson.headers.get('content-type')).toMatch(/^application\/json/);
    const forced = await api.api('GET', '/v1/compliance?format=json', undefined, { accept: 'text/csv' });
    expect(forced.body.totals.credentials).toBe(2);
  });
});

describe('overdue notification', () => {
  it('fires once across scans and two worker runtimes, and again after a rotation and a new lapse', async () => {
    offset = 0;
    const watched = await importCredential(api, connection, { idPrefix: 'watch', extra: { maxAgeDays: 2 } });
    expect(await scanEverywhere(3, watched.id)).toBe(0);

    // 2 runtimes × 10 concurrent scans, racing the scheduled scans (every 500 ms) of both: one of all of them
    // raises the lapse (a scheduled one may get there first, then none of these does).
    offset = 3 * DAY;
    expect(await scanEverywhere(10, watched.id)).toBeLessThanOrEqual(1);
    const first = await waitFor('the overdue delivery', async () => overdueDeliveries(watched.id)[0]);
    expect(await scanEverywhere(5, watched.id)).toBe(0);
    expect(first.verified).toBe(true);
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({
      type: 'credential.overdue',
      credential: watched.id,
      outcome: 'failure',
      details: { maxAgeDays: 2, rotatedAt: expect.any(String) },
    });
    expect(first.body.details.ageDays).toBeGreaterThanOrEqual(3);
    const audited = async () =>
      (await api.api('GET', `/v1/audit?action=credential.overdue&credential=${watched.id}&limit=100`)).body
        .events as any[];
    const events = await audited();
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ actor: 'system', action: 'credential.overdue', outcome: 'failure' });
    expect(first.body.id).toBe(events[0].id);
    expect(first.headers['keyturn-event-id']).toBe(events[0].id);

    // Back within policy: a rotation (at the real time), then the clock moves past the new password's policy.
    offset = 0;
    const rotate = await api.api('POST', `/v1/credentials/${watched.id}/rotate`);
    expect(rotate.status, rotate.text).toBe(202);
    const rotation = await waitForRotation(api, rotate.body.rotationId);
    expect(rotation.status).toBe('succeeded');
    expect(await scanEverywhere(3, watched.id)).toBe(0);
    const within = (await report()).credentials.find((r: any) => r.id === watched.id);
    expect(within).toMatchObject({ overdue: false, neverRotated: false, lastOutcome: 'succeeded' });
    expect(within.lastRotatedAt).not.toBeNull();

    offset = 3 * DAY;
    expect(await scanEverywhere(10, watched.id)).toBeLessThanOrEqual(1);
    await waitFor('the second overdue delivery', async () => overdueDeliveries(watched.id).length >= 2);
    expect(await scanEverywhere(5, watched.id)).toBe(0);
    await settled();

    const deliveries = overdueDeliveries(watched.id);
    expect(deliveries).toHaveLength(2);
    expect(deliveries[1]!.body.details.version).toBe(rotation.id);
    expect(deliveries.every((d) => d.verified && d.attempt === 1)).toBe(true);
    expect(await audited()).toHaveLength(2);
    // Only the configured events are sent: the rotation was not.
    expect(new Set(receiver.deliveries.map((d) => d.body?.type))).toEqual(new Set(['credential.overdue']));
    for (const kt of [api, ...workers]) expect(kt.logs.join('\n')).not.toContain(secret);
  });
});

describe('overdue scan against a changing registry', () => {
  it('raises nothing for a credential read before it changed, or deleted since', async () => {
    // No scheduled scan may run meanwhile: the workers go (this is the file's last test).
    for (const w of workers) await w.close();
    offset = 3 * DAY;
    const marks = testKeys(env.prefix).overdueNotified(lapsed.id);
    // `lapsed` is overdue; without its mark, only the check against what Redis holds now can stop a raise.
    await redis.hdel(marks, lapsed.id);
    const current = await api.runtime.ctx.registry.getCredential(lapsed.id);
    const other = await api.runtime.ctx.registry.getCredential(fine.id);
    // What a scan that read a moment too early holds: an older password (a rotation has landed since), a policy
    // that has been relaxed since (fine has no maxAgeDays now), and a credential deleted since.
    const stale: Credential[] = [
      {
        spec: current.spec,
        state: { ...current.state, rotatedAt: new Date(clock.now() - 10 * DAY).toISOString() },
      },
      { spec: { ...other.spec, maxAgeDays: 1 }, state: other.state },
      { spec: { ...current.spec, id: 'deleted-meanwhile' }, state: current.state },
    ];
    const scannerOf = (registry: Registry) =>
      new OverdueScanner({
        redis: api.runtime.ctx.redis,
        keys: testKeys(env.prefix),
        registry,
        clock,
        logger: createLogger({ level: 'silent', format: 'json' }),
      });
    const staleRegistry = {
      async *credentialBatches() {
        yield stale;
      },
    } as unknown as Registry;
    const before = await redis.hgetall(marks);
    expect(await scannerOf(staleRegistry).scan()).toEqual({ overdue: 3, raised: [] });
    expect(await redis.hgetall(marks)).toEqual(before);
    // The control: read as it is now, the same credential is raised.
    expect((await scannerOf(api.runtime.ctx.registry).scan()).raised).toContain(lapsed.id);
  });
});
