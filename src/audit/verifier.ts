// Verifies a hash chain read in order, with constant memory: the API feeds it the stream, `keyturn audit verify
// --file` an export, the archiver its day files. It stops at the first bad record and names it with what went
// wrong: altered (content or hash changed), missing (deleted), reordered, inserted, or a checkpoint that does not
// verify or does not fit. To tell a deleted event from two swapped ones, or an inserted event from the genuine one
// at the same place, it looks two chain records ahead before judging one.
import type { KeyObject } from 'node:crypto';
import type { AuditEvent } from './audit-log.ts';
import {
  type ChainRecord,
  type CheckpointRecord,
  checkpointHash,
  checkpointSignatureValid,
  eventDigest,
  GENESIS_HASH,
  keyId,
  linkHash,
} from './chain.ts';

export type BadKind =
  | 'altered'
  | 'missing'
  | 'reordered'
  | 'inserted'
  | 'rewritten'
  | 'checkpoint'
  | 'format';

export interface BadRecord {
  kind: BadKind;
  /** The stream id of the bad record (for `missing`: the first event after the gap). */
  id: string | null;
  /** The chain position concerned (for `missing`: the first missing one). */
  seq: number | null;
  /** Line of the export file, when verifying a file. */
  line?: number;
  reason: string;
}

export interface VerifyResult {
  ok: boolean;
  /** Events verified (omitted ones of a filtered export included). */
  count: number;
  from: { seq: number; id: string } | null;
  to: { seq: number; id: string } | null;
  /** The last checkpoint that verified: everything up to it is signed. */
  signedThrough: { n: number; seq: number; id: string; time: string } | null;
  /** Events after the last verified checkpoint (their chain is intact, but no signature covers them yet). */
  unsigned: number;
  checkpoints: number;
  firstBad?: BadRecord;
}

interface Item {
  record: ChainRecord | CheckpointRecord;
  line: number | undefined;
}

/** Stream ids are "<ms>-<n>": compared as two numbers. */
export function compareStreamIds(a: string, b: string): number {
  const [am = 0, an = 0] = a.split('-').map(Number);
  const [bm = 0, bn = 0] = b.split('-').map(Number);
  return am !== bm ? am - bm : an - bn;
}

function isSeq(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}

/** Whether a chain record is consistent with itself: its content matches its digest, its hash its link. */
function selfConsistent(record: ChainRecord): boolean {
  try {
    if (record.type === 'event' && eventDigest(record) !== record.digest) return false;
    return record.hash === linkHash(record.seq, record.prev, record.digest);
  } catch {
    return false;
  }
}

export class ChainVerifier {
  readonly #keys: Map<string, KeyObject>;
  readonly #buffer: Item[] = [];
  #seq: number;
  #hash: string;
  #prevOfLast: string | undefined;
  #lastId: string | undefined;
  #firstAfterCheckpoint: { id: string; seq: number } | undefined;
  #lastCheckpoint: CheckpointRecord | undefined;
  #signed: VerifyResult['signedThrough'] = null;
  #count = 0;
  #checkpoints = 0;
  #unsigned = 0;
  #from: VerifyResult['from'] = null;
  #bad: BadRecord | undefined;

  constructor(options: {
    publicKeys: KeyObject[];
    /** Where the chain starts: the anchor of a trimmed stream or an export's header; the genesis otherwise. */
    from?: { seq: number; hash: string };
    /** The checkpoint before the start, whose successor the first checkpoint must be. */
    previousCheckpoint?: CheckpointRecord | null;
  }) {
    this.#keys = new Map(options.publicKeys.map((k) => [keyId(k), k]));
    this.#seq = options.from?.seq ?? 0;
    this.#hash = options.from?.hash ?? GENESIS_HASH;
    const previous = options.previousCheckpoint;
    if (previous) {
      const problem = this.#signatureProblem(previous);
      if (problem) this.#fail('checkpoint', previous.id, previous.seq, undefined, `previous ${problem}`);
      else if (previous.seq === this.#seq && previous.hash !== this.#hash) {
        this.#fail(
          'checkpoint',
          previous.id,
          previous.seq,
          undefined,
          `the start of the chain (seq ${this.#seq}) does not match the signed checkpoint ${previous.n} at that position`,
        );
      } else this.#lastCheckpoint = previous;
    }
  }

  get failed(): boolean {
    return this.#bad !== undefined;
  }

  /** Feeds the next record; false once a bad one has been found (feeding more is then pointless). */
  push(record: ChainRecord | CheckpointRecord, line?: number): boolean {
    if (this.#bad) return false;
    this.#buffer.push({ record, line });
    this.#drain(false);
    return !this.#bad;
  }

  /** Records that cannot even be read (a file line that is not JSON, or not in canonical form). */
  reject(
    kind: BadKind,
    reason: string,
    where: { id?: string | null; seq?: number | null; line?: number },
  ): void {
    if (this.#bad) return;
    this.#drain(true);
    if (!this.#bad) this.#fail(kind, where.id ?? null, where.seq ?? null, where.line, reason);
  }

  finish(): VerifyResult {
    this.#drain(true);
    return {
      ok: this.#bad === undefined,
      count: this.#count,
      from: this.#from,
      to: this.#lastId ? { seq: this.#seq, id: this.#lastId } : null,
      signedThrough: this.#signed,
      unsigned: this.#unsigned,
      checkpoints: this.#checkpoints,
      ...(this.#bad ? { firstBad: this.#bad } : {}),
    };
  }

  #fail(
    kind: BadKind,
    id: string | null,
    seq: number | null,
    line: number | undefined,
    reason: string,
  ): BadRecord {
    this.#bad = { kind, id, seq, ...(line !== undefined ? { line } : {}), reason };
    return this.#bad;
  }

  #drain(final: boolean): void {
    while (this.#buffer.length > 0 && !this.#bad) {
      const front = this.#buffer[0]!;
      if (front.record.type === 'checkpoint') {
        this.#buffer.shift();
        this.#checkpoint(front.record, front.line);
        continue;
      }
      const ahead: ChainRecord[] = [];
      for (let i = 1; i < this.#buffer.length && ahead.length < 2; i++) {
        const r = this.#buffer[i]!.record;
        if (r.type !== 'checkpoint') ahead.push(r);
      }
      if (!final && ahead.length < 2) return;
      this.#buffer.shift();
      this.#event(front.record, front.line, ahead[0], ahead[1]);
    }
  }

  #event(
    e: ChainRecord,
    line: number | undefined,
    a: ChainRecord | undefined,
    b: ChainRecord | undefined,
  ): BadRecord | undefined {
    const expected = this.#seq + 1;
    const fail = (kind: BadKind, reason: string, seq: number | null = isSeq(e.seq) ? e.seq : null) =>
      this.#fail(kind, e.id ?? null, seq, line, reason);
    if (typeof e.id !== 'string' || typeof e.digest !== 'string' || typeof e.prev !== 'string') {
      if (!isSeq(e.seq)) return fail('inserted', 'this event has no place in the chain: it was never sealed');
      return fail('format', 'the record lacks its id, digest or prev');
    }
    if (!isSeq(e.seq)) return fail('inserted', 'this event has no place in the chain: it was never sealed');
    if (this.#count > 0 && e.seq === this.#seq && e.prev === this.#prevOfLast) {
      return fail('inserted', `a second event claims position ${e.seq}; the chain goes on from the first`);
    }
    if (e.seq < expected) {
      return fail('reordered', `seq ${e.seq} comes after seq ${this.#seq}`);
    }
    if (e.seq > expected) {
      if (a?.seq === expected || b?.seq === expected) {
        return fail('reordered', `seq ${e.seq} comes before seq ${expected}`);
      }
      const last = e.seq - 1;
      return fail(
        'missing',
        last === expected
          ? `event ${expected} is missing (deleted) before this one`
          : `events ${expected} to ${last} are missing (deleted) before this one`,
        expected,
      );
    }
    if (e.type === 'event') {
      let digest: string | undefined;
      try {
        digest = eventDigest(e);
      } catch {
        digest = undefined;
      }
      if (digest !== e.digest) {
        if (a?.type === 'event' && safeDigest({ ...e, id: a.id }) === a.digest) {
          return fail('reordered', `the contents of events ${e.seq} and ${a.seq} were swapped`);
        }
        if (a && a.seq === e.seq && a.prev === this.#hash && selfConsistent(a)) {
          return fail('inserted', `this event was inserted before the genuine event ${e.seq}`);
        }
        return fail('altered', 'the content no longer matches its digest: a field was changed');
      }
    }
    if (e.prev !== this.#hash) {
      return fail('altered', `its prev is not the hash of event ${this.#seq}: the link was changed`);
    }
    if (e.hash !== linkHash(e.seq, e.prev, e.digest)) {
      return fail('altered', 'its hash field was changed');
    }
    if (a && a.seq === e.seq && a.prev === e.prev && selfConsistent(a) && b?.prev === a.hash) {
      return fail(
        'inserted',
        `a second event claims position ${e.seq}, and the chain goes on from the other`,
      );
    }
    if (a && a.seq === e.seq + 1 && a.prev !== e.hash && selfConsistent(a)) {
      return fail('altered', 'the next event links to a different hash: this event was rewritten');
    }
    if (this.#lastId && compareStreamIds(e.id, this.#lastId) <= 0) {
      return fail('reordered', `its id is not after the previous event's id ${this.#lastId}`);
    }
    this.#from ??= { seq: e.seq, id: e.id };
    this.#firstAfterCheckpoint ??= { id: e.id, seq: e.seq };
    this.#prevOfLast = e.prev;
    this.#seq = e.seq;
    this.#hash = e.hash;
    this.#lastId = e.id;
    this.#count++;
    this.#unsigned++;
    return undefined;
  }

  #signatureProblem(c: CheckpointRecord): string | undefined {
    const key = this.#keys.get(c.keyId);
    if (!key)
      return `checkpoint ${c.n} was signed by key ${c.keyId}, which is not among the given public keys`;
    if (!checkpointSignatureValid(c, key)) {
      return `checkpoint ${c.n}'s signature does not verify: the checkpoint was altered or replaced`;
    }
    return undefined;
  }

  #checkpoint(c: CheckpointRecord, line: number | undefined): BadRecord | undefined {
    const fail = (
      kind: BadKind,
      reason: string,
      id: string | null = c.id ?? null,
      seq: number | null = c.seq,
    ) => this.#fail(kind, id, seq, line, reason);
    const problem = this.#signatureProblem(c);
    if (problem) return fail('checkpoint', problem);
    const last = this.#lastCheckpoint;
    if (last && (c.n !== last.n + 1 || c.prevCheckpoint !== checkpointHash(last))) {
      return fail(
        'checkpoint',
        `checkpoint ${c.n} does not follow checkpoint ${last.n}: a checkpoint is missing, moved or replaced`,
      );
    }
    if (c.seq !== this.#seq || c.id !== this.#lastId) {
      return fail(
        'checkpoint',
        `checkpoint ${c.n} vouches for seq ${c.seq} but stands after seq ${this.#seq}: it was moved or replaced`,
      );
    }
    if (c.hash !== this.#hash) {
      const first = this.#firstAfterCheckpoint;
      return fail(
        'rewritten',
        `the chain up to seq ${c.seq} does not match signed checkpoint ${c.n}: events from seq ${first?.seq ?? c.seq} on were rewritten (hashes recomputed)`,
        first?.id ?? c.id,
        first?.seq ?? c.seq,
      );
    }
    this.#lastCheckpoint = c;
    this.#checkpoints++;
    this.#signed = { n: c.n, seq: c.seq, id: c.id, time: c.time };
    this.#unsigned = 0;
    this.#firstAfterCheckpoint = undefined;
    return undefined;
  }
}

function safeDigest(event: AuditEvent): string | undefined {
  try {
    return eventDigest(event);
  } catch {
    return undefined;
  }
}
