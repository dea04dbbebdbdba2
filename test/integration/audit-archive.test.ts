// Retention (issue 6): complete UTC days go to one JSONL file each, ending with the day's signed checkpoint, and
// each file verifies on its own with the public key; events leave the stream only once archived and older than
// the stream period, and the stream still verifies from its anchor afterwards; day files past the retention
// period are deleted. A day whose end is not signed yet is neither archived nor trimmed.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { AuditArchiver, archiveFileName } from '../../src/audit/archive.ts';
import { verifyExportLines } from '../../src/audit/export.ts';
import { AuditTrail } from '../../src/audit/trail.ts';
import type { Clock } from '../../src/clock.ts';
import type { RedisClient } from '../../src/redis/client.ts';
import { eventJson, newSealer, quietLogger } from '../support/audit-chain.ts';
import { dropPrefix, testKeys, testRedis } from '../support/harness.ts';

const DAY = 86_400_000;
let redis: RedisClient;
let dir: string;
const prefixes: string[] = [];

beforeAll(async () => {
  redis = testRedis();
  dir = await mkdtemp(join(tmpdir(), 'keyturn-archive-'));
});
afterAll(async () => {
  for (const p of prefixes) await dropPrefix(p);
  redis.disconnect();
  await rm(dir, { recursive: true, force: true });
});

function setup() {
  const prefix = `kt-test-${randomBytes(4).toString('hex')}`;
  prefixes.push(prefix);
  const keys = testKeys(prefix);
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const trail = new AuditTrail(redis, keys, [publicKey]);
  return { keys, trail, sealer: newSealer(redis, keys, trail, privateKey), publicKey };
}

async function verifyFile(path: string, publicKey: ReturnType<typeof setup>['publicKey']) {
  return verifyExportLines(createInterface({ input: createReadStream(path) }), [publicKey]);
}

it('archives each complete day to a file that verifies alone, trims only what is archived, deletes past retention', async () => {
  const { keys, trail, sealer, publicKey } = setup();
  const today = Math.floor(Date.now() / DAY);
  // Events on days T-5 (3), T-3 (4), T-1 (2) and today (2); none on T-4 and T-2.
  const plan: Array<[number, number]> = [
    [today - 5, 3],
    [today - 3, 4],
    [today - 1, 2],
  ];
  let i = 0;
  const idsByDay = new Map<number, string[]>();
  for (const [day, count] of plan) {
    for (let k = 0; k < count; k++) {
      const ms = day * DAY + 12 * 3_600_000 + k * 1000;
      const id = await redis.xadd(keys.audit(), `${ms}-0`, 'e', eventJson(++i, ms));
      idsByDay.set(day, [...(idsByDay.get(day) ?? []), id as string]);
    }
  }
  for (let k = 0; k < 2; k++) await redis.xadd(keys.audit(), '*', 'e', eventJson(++i, Date.now()));
  await sealer.drain();

  const clock: Clock & { offset: number } = { offset: 0, now: () => Date.now() + clock.offset };
  const archiveDir = join(dir, 'a');
  const archiver = new AuditArchiver({
    redis,
    keys,
    store: trail.store,
    publicKeys: [publicKey],
    settings: { dir: archiveDir, retentionDays: 5, streamDays: 2 },
    clock,
    logger: quietLogger,
  });
  const first = await archiver.run();
  const days = [5, 4, 3, 2, 1].map((d) => archiveFileName(today - d));
  expect(first.archived).toEqual(days);
  expect((await readdir(archiveDir)).sort()).toEqual([...days].sort());
  for (const [day, ids] of idsByDay) {
    const path = join(archiveDir, archiveFileName(day));
    const result = await verifyFile(path, publicKey);
    expect(result, path).toMatchObject({ ok: true, count: ids.length, unsigned: 0 });
    // The day's own checkpoint is its last line, vouching for its last event.
    const lines = (await readFile(path, 'utf8')).trim().split('\n');
    expect(JSON.parse(lines.at(-1)!)).toMatchObject({ type: 'checkpoint', id: ids.at(-1) });
  }
  const empty = await verifyFile(join(archiveDir, archiveFileName(today - 4)), publicKey);
  expect(empty).toMatchObject({ ok: true, count: 0 });

  // Trimmed: everything before T-2 (archived, and older than the 2-day stream period); T-1 and today remain.
  expect(first.trimmedBefore).toBe(new Date((today - 2) * DAY).toISOString());
  const kept = (await redis.xrange(keys.audit(), '-', '+')) as Array<[string, string[]]>;
  expect(kept[0]![0]).toBe(idsByDay.get(today - 1)![0]);
  await sealer.drain();
  const afterTrim = await trail.verify();
  // Seq 8 is T-1's first event; the archiver's own audit.archived events follow today's.
  expect(afterTrim).toMatchObject({ ok: true, from: { seq: 8 }, unsigned: 0, pending: 0 });
  expect(afterTrim.count).toBe(2 + 2 + 5);

  // Ten days on: every file is past the 5-day retention and deleted, and T-1 leaves the stream too.
  clock.offset = 10 * DAY;
  const later = await archiver.run();
  expect(later.deleted.sort()).toEqual([...days].sort());
  expect(await readdir(archiveDir)).toEqual([]);
  await sealer.drain();
  const final = await trail.verify();
  expect(final).toMatchObject({ ok: true, from: { seq: 10 } });
  const entries = (await redis.xrange(keys.audit(), '-', '+')) as Array<[string, string[]]>;
  const actions = entries.map(([, f]) => JSON.parse(f[1]!).action as string);
  expect(actions.filter((a) => a === 'audit.archive_deleted')).toHaveLength(5);
}, 60_000);

it('neither archives nor trims a day whose end is not sealed and signed', async () => {
  const { keys, trail, publicKey } = setup();
  const today = Math.floor(Date.now() / DAY);
  for (let k = 0; k < 3; k++) {
    const ms = (today - 3) * DAY + k * 1000;
    await redis.xadd(keys.audit(), `${ms}-0`, 'e', eventJson(k + 1, ms));
  }
  const archiver = new AuditArchiver({
    redis,
    keys,
    store: trail.store,
    publicKeys: [publicKey],
    settings: { dir: join(dir, 'b'), retentionDays: 400, streamDays: 1 },
    clock: { now: () => Date.now() + 30 * DAY },
    logger: quietLogger,
  });
  const run = await archiver.run();
  expect(run).toEqual({ archived: [], trimmedBefore: null, deleted: [] });
  expect(await redis.xlen(keys.audit())).toBe(3);
});
