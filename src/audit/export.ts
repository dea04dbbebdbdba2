// Exports and verification over whole ranges of the chain, streamed with constant memory.
//
// An export is JSON Lines: a header (where the chain starts), then every event of the range in order (those a
// filter excludes as `omitted` records: id, seq and hashes only), each checkpoint right after the event it vouches
// for. Every line is the record's canonical JSON (RFC 8785), so the offline verifier can insist on it: one changed
// byte anywhere, even in white space, fails. CSV carries the same records for spreadsheets; only JSONL is meant
// for verification.
import type { KeyObject } from 'node:crypto';
import { type CsvValue, csvRecord, spreadsheetSafe } from '../csv.ts';
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import {
  type ChainRecord,
  type CheckpointRecord,
  EXPORT_FORMAT,
  type ExportRecord,
  type HeaderRecord,
  recordLine,
} from './chain.ts';
import type { ChainStore, EventFilter } from './chain-store.ts';
import { ChainVerifier, compareStreamIds, type VerifyResult } from './verifier.ts';

export interface RangeQuery {
  /** Inclusive stream ids ('-' and '+' for open ends). */
  start: string;
  end: string;
  filter: EventFilter;
}

/** Stream id bounds for a time range: ids begin with their millisecond time. */
export function idRange(since: Date | undefined, until: Date | undefined): { start: string; end: string } {
  return {
    start: since ? `${since.getTime()}-0` : '-',
    end: until ? `${until.getTime()}-${Number.MAX_SAFE_INTEGER}` : '+',
  };
}

function filterLabels(filter: EventFilter, start: string, end: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (start !== '-') out.since = new Date(Number(start.split('-')[0])).toISOString();
  if (end !== '+') out.until = new Date(Number(end.split('-')[0])).toISOString();
  for (const [k, v] of Object.entries(filter)) if (v) out[k] = v;
  return out;
}

/** The records of an export, header first. */
export async function* exportRecords(
  store: ChainStore,
  query: RangeQuery,
  now: Date,
): AsyncGenerator<ExportRecord> {
  yield await store.header(query.start, filterLabels(query.filter, query.start, query.end), now);
  yield* store.records(query.start, query.end, query.filter);
}

export async function* jsonlLines(records: AsyncIterable<ExportRecord>): AsyncGenerator<string> {
  for await (const record of records) yield `${recordLine(record)}\n`;
}

const CSV_COLUMNS = [
  'type',
  'id',
  'seq',
  'time',
  'actor',
  'action',
  'outcome',
  'credential',
  'connection',
  'rotation',
  'details',
  'digest',
  'prev',
  'hash',
  'checkpoint',
  'key_id',
  'signature',
] as const;

type CsvColumn = (typeof CSV_COLUMNS)[number];

function csvRow(row: Partial<Record<CsvColumn, CsvValue>>): string {
  return csvRecord(CSV_COLUMNS.map((column) => spreadsheetSafe(row[column])));
}

export async function* csvLines(records: AsyncIterable<ExportRecord>): AsyncGenerator<string> {
  yield csvRecord(CSV_COLUMNS);
  for await (const r of records) {
    if (r.type === 'header') {
      yield csvRow({
        type: 'header',
        seq: r.from.seq,
        time: r.exportedAt,
        details: JSON.stringify(r.filters),
        hash: r.from.hash,
      });
    } else if (r.type === 'checkpoint') {
      yield csvRow({
        type: 'checkpoint',
        id: r.id,
        seq: r.seq,
        time: r.time,
        prev: r.prevCheckpoint,
        hash: r.hash,
        checkpoint: r.n,
        key_id: r.keyId,
        signature: r.sig,
      });
    } else if (r.type === 'omitted') {
      yield csvRow({ type: 'omitted', id: r.id, seq: r.seq, digest: r.digest, prev: r.prev, hash: r.hash });
    } else {
      yield csvRow({
        type: 'event',
        id: r.id,
        seq: r.seq,
        time: r.time,
        actor: r.actor,
        action: r.action,
        outcome: r.outcome,
        credential: r.credential,
        connection: r.connection,
        rotation: r.rotation,
        details: r.details ? JSON.stringify(r.details) : null,
        digest: r.digest,
        prev: r.prev,
        hash: r.hash,
      });
    }
  }
}

/** Verifies the stream's chain (or a time range of it) as it is in Redis now. */
export async function verifyStore(
  store: ChainStore,
  publicKeys: KeyObject[],
  range: { start: string; end: string } = { start: '-', end: '+' },
): Promise<VerifyResult & { pending: number }> {
  const header = await store.header(range.start, {}, new Date());
  const verifier = new ChainVerifier({
    publicKeys,
    from: header.from,
    previousCheckpoint: header.previousCheckpoint,
  });
  for await (const record of store.records(range.start, range.end)) {
    if (!verifier.push(record)) break;
  }
  const head = await store.head();
  return { ...verifier.finish(), pending: range.end === '+' ? await store.pending(head) : 0 };
}

/**
 * Verifies an export read line by line (the CLI's `--file`, an archived day) with nothing but public keys. A line
 * that is not JSON, or not exactly its record's canonical form, fails at that line.
 */
export async function verifyExportLines(
  lines: AsyncIterable<string>,
  publicKeys: KeyObject[],
  onProgress?: (events: number) => void,
): Promise<VerifyResult> {
  let verifier: ChainVerifier | undefined;
  let line = 0;
  const fail = (reason: string): VerifyResult => {
    const v = verifier ?? new ChainVerifier({ publicKeys });
    v.reject('format', reason, { line });
    return v.finish();
  };
  for await (const text of lines) {
    line++;
    if (text === '') continue;
    let record: ExportRecord;
    try {
      record = JSON.parse(text) as ExportRecord;
    } catch {
      return fail(`line ${line} is not JSON`);
    }
    if (typeof record !== 'object' || record === null || recordLine(record) !== text) {
      return fail(`line ${line} is not in its canonical form: it was edited`);
    }
    if (record.type === 'header') {
      if (verifier) return fail(`line ${line}: a second header`);
      if (record.format !== EXPORT_FORMAT)
        return fail(`line ${line}: unknown format ${String(record.format)}`);
      verifier = new ChainVerifier({
        publicKeys,
        from: (record as HeaderRecord).from,
        previousCheckpoint: (record as HeaderRecord).previousCheckpoint,
      });
      continue;
    }
    if (!verifier) return fail(`line ${line}: the export does not start with its header`);
    if (record.type !== 'event' && record.type !== 'omitted' && record.type !== 'checkpoint') {
      return fail(`line ${line}: unknown record type`);
    }
    if (!verifier.push(record as ChainRecord | CheckpointRecord, line)) break;
    if (onProgress && line % 10_000 === 0) onProgress(line);
  }
  if (!verifier) return fail('the file is empty: no header');
  return verifier.finish();
}

/**
 * Asks the sealer for a checkpoint covering every event appended so far and waits for it (up to `waitMs`), so
 * that an export is signed to its end. Returns false when no sealer answered in time (no worker running): the
 * export then ends with events no signature covers yet, which its verification reports as `unsigned`.
 */
export async function requestCheckpoint(
  redis: RedisClient,
  keys: RedisKeys,
  store: ChainStore,
  waitMs: number,
): Promise<boolean> {
  const last = await store.lastEventId();
  if (!last) return true;
  const covered = async () => {
    const head = await store.head();
    return head.checkpoint !== undefined && compareStreamIds(head.checkpoint.id, last) >= 0;
  };
  if (await covered()) return true;
  // No sealer holds its lock (no worker runs): nobody would answer, so don't make the caller wait.
  if ((await redis.exists(keys.auditSealerLock())) === 0) return false;
  // Only ever raise the wanted id: two exports at once both get what they need.
  await redis.eval(
    `local cur = redis.call('GET', KEYS[1])
     if cur == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000) return 1 end
     local a1, a2 = string.match(cur, '(%d+)-(%d+)')
     local b1, b2 = string.match(ARGV[1], '(%d+)-(%d+)')
     if tonumber(b1) > tonumber(a1) or (tonumber(b1) == tonumber(a1) and tonumber(b2) > tonumber(a2)) then
       redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000)
     end
     return 1`,
    1,
    keys.auditCheckpointWanted(),
    last,
  );
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    if (await covered()) return true;
  }
  return false;
}
