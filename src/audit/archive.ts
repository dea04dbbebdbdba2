// Archive and retention of the audit trail (PCI DSS 10.5: a year of history, three months at hand).
//
// Each complete UTC day goes to one file, `keyturn-audit-YYYY-MM-DD.jsonl`, in the export format: a header with
// the chain position before the day, the day's events, and the checkpoint the sealer signs at the day's end, so
// a day file verifies on its own with the public key. A file is written to a temporary name, flushed, verified
// by reading it back, and only then renamed and recorded as archived. Events leave the stream only when both
// hold: their day is archived, and they are older than the stream period (KEYTURN_AUDIT_STREAM_DAYS); the
// trimmed chain's last position becomes the anchor that verification of the stream starts from. Day files older
// than the retention period (KEYTURN_AUDIT_RETENTION_DAYS) are deleted. Without an archive folder nothing is
// ever trimmed.

import type { KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Clock } from '../clock.ts';
import type { Logger } from '../logging/logger.ts';
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import { AuditLog } from './audit-log.ts';
import type { ChainStore } from './chain-store.ts';
import { exportRecords, jsonlLines, verifyExportLines } from './export.ts';

const DAY_MS = 86_400_000;
const RUN_EVERY_MS = 60_000;
const FILE_PATTERN = /^keyturn-audit-(\d{4}-\d{2}-\d{2})\.jsonl$/;

export interface ArchiveSettings {
  dir: string;
  retentionDays: number;
  streamDays: number;
}

export interface ArchiveRun {
  archived: string[];
  trimmedBefore: string | null;
  deleted: string[];
}

type Entry = [string, string[]];

const isoDay = (day: number): string => new Date(day * DAY_MS).toISOString().slice(0, 10);
export const archiveFileName = (day: number): string => `keyturn-audit-${isoDay(day)}.jsonl`;

export class AuditArchiver {
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;
  readonly #store: ChainStore;
  readonly #publicKeys: KeyObject[];
  readonly #settings: ArchiveSettings;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #audit: AuditLog;
  #lastRun = 0;

  constructor(options: {
    redis: RedisClient;
    keys: RedisKeys;
    store: ChainStore;
    publicKeys: KeyObject[];
    settings: ArchiveSettings;
    clock: Clock;
    logger: Logger;
  }) {
    this.#redis = options.redis;
    this.#keys = options.keys;
    this.#store = options.store;
    this.#publicKeys = options.publicKeys;
    this.#settings = options.settings;
    this.#clock = options.clock;
    this.#log = options.logger.child({ component: 'audit-archive' });
    this.#audit = new AuditLog(options.redis, options.keys);
  }

  /** At most once a minute, from the sealer's loop. */
  async runIfDue(): Promise<void> {
    if (Date.now() - this.#lastRun < RUN_EVERY_MS) return;
    this.#lastRun = Date.now();
    await this.run();
  }

  async run(): Promise<ArchiveRun> {
    await mkdir(this.#settings.dir, { recursive: true, mode: 0o750 });
    const archived = await this.#archiveCompleteDays();
    const trimmedBefore = await this.#trim();
    const deleted = await this.#deleteExpired();
    return { archived, trimmedBefore, deleted };
  }

  async #lastArchivedDay(): Promise<number | undefined> {
    const day = await this.#redis.hget(this.#keys.auditArchive(), 'day');
    return day === null ? undefined : Number(day);
  }

  async #archiveCompleteDays(): Promise<string[]> {
    const written: string[] = [];
    // A day is complete once Redis's own clock (which stamps event ids) has left it.
    const [seconds] = (await this.#redis.time()) as unknown as [string, string];
    const redisToday = Math.floor((Number(seconds) * 1000) / DAY_MS);
    let day = await this.#lastArchivedDay();
    if (day === undefined) {
      const [first] = (await this.#redis.xrange(this.#keys.auditChain(), '-', '+', 'COUNT', 1)) as Entry[];
      if (!first) return written;
      day = Math.floor(Number(first[0].split('-')[0]) / DAY_MS) - 1;
    }
    for (let d = day + 1; d < redisToday; d++) {
      const start = `${d * DAY_MS}-0`;
      const end = `${(d + 1) * DAY_MS - 1}-${Number.MAX_SAFE_INTEGER}`;
      const [last] = (await this.#redis.xrevrange(this.#keys.audit(), end, start, 'COUNT', 1)) as Entry[];
      if (last) {
        // The day must be sealed and signed to its last event first (the sealer signs every day's end).
        if (!(await this.#store.checkpointAt(last[0]))) return written;
      }
      const name = archiveFileName(d);
      const path = join(this.#settings.dir, name);
      const count = await this.#writeVerified(path, start, end);
      await this.#redis.hset(this.#keys.auditArchive(), 'day', String(d), 'file', name);
      await this.#audit.append({
        actor: 'system',
        action: 'audit.archived',
        outcome: 'success',
        details: { day: isoDay(d), file: name, events: count },
      });
      this.#log.info({ day: isoDay(d), file: path, events: count }, 'archived a day of audit events');
      written.push(name);
    }
    return written;
  }

  /** Writes a day file under a temporary name, verifies it read back, then renames it. Returns its event count. */
  async #writeVerified(path: string, start: string, end: string): Promise<number> {
    const temporary = `${path}.partial`;
    const file = await open(temporary, 'w', 0o640);
    try {
      for await (const line of jsonlLines(
        exportRecords(this.#store, { start, end, filter: {} }, new Date()),
      )) {
        await file.write(line);
      }
      await file.sync();
    } finally {
      await file.close();
    }
    const lines = createInterface({
      input: createReadStream(temporary),
      crlfDelay: Number.POSITIVE_INFINITY,
    });
    const result = await verifyExportLines(lines, this.#publicKeys);
    if (!result.ok || result.unsigned > 0) {
      await rm(temporary, { force: true });
      const why = result.firstBad
        ? `${result.firstBad.kind} at ${result.firstBad.id ?? `line ${result.firstBad.line}`}: ${result.firstBad.reason}`
        : `${result.unsigned} events after its last checkpoint`;
      throw new Error(`the archive of ${path} did not verify (${why}); nothing was trimmed`);
    }
    await rename(temporary, path);
    return result.count;
  }

  /** Trims the stream up to the older of: the end of the last archived day, the start of the stream period. */
  async #trim(): Promise<string | null> {
    const archivedDay = await this.#lastArchivedDay();
    if (archivedDay === undefined) return null;
    const streamStartDay = Math.floor(this.#clock.now() / DAY_MS) - this.#settings.streamDays;
    const cutoffDay = Math.min(archivedDay + 1, streamStartDay);
    const cutoff = `${cutoffDay * DAY_MS}-0`;
    // The last sealed position before the cutoff becomes the anchor (the anchor itself when nothing is left to trim).
    const { position, checkpoint } = await this.#store.positionBefore(cutoff);
    if (!position.id) return null;
    // The anchor and the trim go together: verification never sees a stream without its starting point.
    await this.#redis
      .multi()
      .hset(
        this.#keys.auditAnchor(),
        'id',
        position.id,
        'seq',
        String(position.seq),
        'hash',
        position.hash,
        'checkpoint',
        JSON.stringify(checkpoint),
      )
      .xtrim(this.#keys.audit(), 'MINID', cutoff)
      .xtrim(this.#keys.auditChain(), 'MINID', cutoff)
      .xtrim(this.#keys.auditCheckpoints(), 'MINID', cutoff)
      .exec();
    this.#log.info({ before: new Date(cutoffDay * DAY_MS).toISOString() }, 'trimmed archived audit events');
    return new Date(cutoffDay * DAY_MS).toISOString();
  }

  async #deleteExpired(): Promise<string[]> {
    const oldestKept = Math.floor(this.#clock.now() / DAY_MS) - this.#settings.retentionDays;
    const deleted: string[] = [];
    for (const name of await readdir(this.#settings.dir)) {
      const day = FILE_PATTERN.exec(name)?.[1];
      if (!day || Date.parse(`${day}T00:00:00Z`) / DAY_MS >= oldestKept) continue;
      await rm(join(this.#settings.dir, name), { force: true });
      await this.#audit.append({
        actor: 'system',
        action: 'audit.archive_deleted',
        outcome: 'success',
        details: { file: name, retentionDays: this.#settings.retentionDays },
      });
      deleted.push(name);
    }
    return deleted;
  }
}
