// Reads the chain back out of Redis, in order and in batches (constant memory): the audit stream's events joined
// with their chain entries (same ids) and the signed checkpoints between them. The API verifies and exports from
// this; the archiver writes day files from it. Redis keys: see RedisKeys (audit, auditChain, auditHead,
// auditCheckpoints, auditAnchor).
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import { type AuditEvent, decodeAuditEntry } from './audit-log.ts';
import {
  type ChainedEventRecord,
  type ChainRecord,
  type CheckpointRecord,
  EXPORT_FORMAT,
  GENESIS_HASH,
  type HeaderRecord,
  type OmittedEventRecord,
} from './chain.ts';
import { compareStreamIds } from './verifier.ts';

const BATCH = 1000;

export interface ChainHead {
  /** The last sealed event; undefined before the first seal. */
  id: string | undefined;
  seq: number;
  hash: string;
  checkpoint: { n: number; seq: number; hash: string; id: string; at: number } | undefined;
}

export interface ChainPosition {
  seq: number;
  hash: string;
  /** The id of the event at that position (undefined at the genesis). */
  id: string | undefined;
}

export interface EventFilter {
  credential?: string;
  actor?: string;
  action?: string;
}

type Entry = [string, string[]];

function field(fields: string[], name: string): string | undefined {
  const i = fields.indexOf(name);
  return i >= 0 && i % 2 === 0 ? fields[i + 1] : undefined;
}

export function matches(event: AuditEvent, filter: EventFilter): boolean {
  return (
    (!filter.credential || event.credential === filter.credential) &&
    (!filter.actor || event.actor === filter.actor) &&
    (!filter.action || event.action === filter.action)
  );
}

/** A raw entry that does not even decode (changed by hand in Redis) still takes its place, so the chain shows it. */
function decodeLoosely(id: string, fields: string[]): AuditEvent {
  try {
    const event = decodeAuditEntry(id, fields);
    if (event) return event;
  } catch {
    // fall through
  }
  return {
    id,
    time: '',
    actor: '',
    action: 'unreadable',
    outcome: 'failure',
    details: { raw: fields.join(' ') },
  };
}

export class ChainStore {
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;

  constructor(redis: RedisClient, keys: RedisKeys) {
    this.#redis = redis;
    this.#keys = keys;
  }

  async head(): Promise<ChainHead> {
    const h = await this.#redis.hgetall(this.#keys.auditHead());
    const cpN = Number(h.cpN ?? 0);
    return {
      id: h.id || undefined,
      seq: Number(h.seq ?? 0),
      hash: h.hash || GENESIS_HASH,
      checkpoint:
        cpN > 0
          ? {
              n: cpN,
              seq: Number(h.cpSeq),
              hash: h.cpHash ?? '',
              id: h.cpId ?? '',
              at: Number(h.cpAt ?? 0),
            }
          : undefined,
    };
  }

  /** Where the stream's chain starts: after the last trimmed event, or the genesis. */
  async anchor(): Promise<{ position: ChainPosition; checkpoint: CheckpointRecord | null }> {
    const a = await this.#redis.hgetall(this.#keys.auditAnchor());
    if (!a.seq) return { position: { seq: 0, hash: GENESIS_HASH, id: undefined }, checkpoint: null };
    return {
      position: { seq: Number(a.seq), hash: a.hash ?? GENESIS_HASH, id: a.id || undefined },
      checkpoint: a.checkpoint ? (JSON.parse(a.checkpoint) as CheckpointRecord) : null,
    };
  }

  /** The checkpoint that vouches for the event `id`, if there is one (and it was not trimmed). */
  async checkpointAt(id: string): Promise<CheckpointRecord | null> {
    const [entry] = (await this.#redis.xrange(this.#keys.auditCheckpoints(), id, id)) as Entry[];
    const json = entry ? field(entry[1], 'c') : undefined;
    return json ? (JSON.parse(json) as CheckpointRecord) : null;
  }

  /** The chain position just before `id` (exclusive), and the last checkpoint before it. */
  async positionBefore(
    id: string,
  ): Promise<{ position: ChainPosition; checkpoint: CheckpointRecord | null }> {
    const anchor = await this.anchor();
    const [before] = (await this.#redis.xrevrange(
      this.#keys.auditChain(),
      `(${id}`,
      '-',
      'COUNT',
      1,
    )) as Entry[];
    const [cp] = (await this.#redis.xrevrange(
      this.#keys.auditCheckpoints(),
      `(${id}`,
      '-',
      'COUNT',
      1,
    )) as Entry[];
    const checkpoint = cp ? (JSON.parse(field(cp[1], 'c') ?? 'null') as CheckpointRecord) : anchor.checkpoint;
    if (!before || Number(field(before[1], 's')) <= anchor.position.seq) return { ...anchor, checkpoint };
    return {
      position: { seq: Number(field(before[1], 's')), hash: field(before[1], 'h') ?? '', id: before[0] },
      checkpoint,
    };
  }

  /** How many events were appended after the sealed head (not yet in the chain). */
  async pending(head: ChainHead, cap = 100_000): Promise<number> {
    const entries = (await this.#redis.xrange(
      this.#keys.audit(),
      head.id ? `(${head.id}` : '-',
      '+',
      'COUNT',
      cap,
    )) as Entry[];
    return entries.length;
  }

  /** The last event id in the stream (sealed or not). */
  async lastEventId(): Promise<string | undefined> {
    const [last] = (await this.#redis.xrevrange(this.#keys.audit(), '+', '-', 'COUNT', 1)) as Entry[];
    return last?.[0];
  }

  /** The header of an export (or of a verification) that starts at `startId` (inclusive; '-' for the start). */
  async header(startId: string, filters: Record<string, string>, now: Date): Promise<HeaderRecord> {
    const { position, checkpoint } =
      startId === '-' ? await this.anchor() : await this.positionBefore(startId);
    return {
      type: 'header',
      format: EXPORT_FORMAT,
      exportedAt: now.toISOString(),
      from: { seq: position.seq, hash: position.hash },
      previousCheckpoint: checkpoint,
      filters,
    };
  }

  /**
   * The sealed events from `start` to `end` (inclusive stream ids or '-'/'+'), in order, with the checkpoints
   * after the events they vouch for. Events the filter excludes come as omitted records. An event in the
   * stream without a chain entry (added behind the sealer's back) comes without seq; a chain entry whose event
   * is gone from the stream is left out, so the verifier sees the gap.
   */
  async *records(
    start: string,
    end: string,
    filter: EventFilter = {},
  ): AsyncGenerator<ChainRecord | CheckpointRecord> {
    const head = await this.head();
    if (!head.id) return;
    const anchor = await this.anchor();
    const last = end === '+' || compareStreamIds(end, head.id) > 0 ? head.id : end;
    let lower = start === '-' ? '-' : start;
    let inclusive = true;
    for (;;) {
      const from = lower === '-' ? '-' : inclusive ? lower : `(${lower}`;
      const chain = (await this.#redis.xrange(
        this.#keys.auditChain(),
        from,
        last,
        'COUNT',
        BATCH,
      )) as Entry[];
      const upper = chain.length === BATCH ? chain[chain.length - 1]![0] : last;
      if (lower !== '-' && compareStreamIds(upper, lower) < 0) return;
      const [raw, checkpoints] = await Promise.all([
        this.#redis.xrange(this.#keys.audit(), from, upper) as Promise<Entry[]>,
        this.#redis.xrange(this.#keys.auditCheckpoints(), from, upper) as Promise<Entry[]>,
      ]);
      const links = new Map(chain.map(([id, f]) => [id, f]));
      const cps = new Map(
        checkpoints.map(([id, f]) => [id, JSON.parse(field(f, 'c') ?? 'null') as CheckpointRecord]),
      );
      const ids = [...new Set([...raw.map(([id]) => id), ...checkpoints.map(([id]) => id)])].sort(
        compareStreamIds,
      );
      const events = new Map(raw.map(([id, f]) => [id, f]));
      for (const id of ids) {
        const fields = events.get(id);
        const link = links.get(id);
        if (fields) {
          const seq = link ? Number(field(link, 's')) : Number.NaN;
          // Trimmed by the archiver but still within this range's first batch: before the anchor, not ours.
          if (link && seq <= anchor.position.seq) continue;
          const event = decodeLoosely(id, fields);
          const chained = {
            seq,
            digest: link ? (field(link, 'd') ?? '') : '',
            prev: link ? (field(link, 'p') ?? '') : '',
            hash: link ? (field(link, 'h') ?? '') : '',
          };
          if (matches(event, filter)) {
            yield { type: 'event', ...event, ...chained } satisfies ChainedEventRecord;
          } else {
            yield { type: 'omitted', id, ...chained } satisfies OmittedEventRecord;
          }
        }
        const cp = cps.get(id);
        if (cp && cp.seq > anchor.position.seq) yield cp;
      }
      if (chain.length < BATCH) return;
      lower = upper;
      inclusive = false;
    }
  }

  /** The chain fields of the given events (for GET /v1/audit), by id; absent for events not sealed yet. */
  async links(
    ids: string[],
  ): Promise<Map<string, { seq: number; digest: string; prev: string; hash: string }>> {
    const out = new Map<string, { seq: number; digest: string; prev: string; hash: string }>();
    if (ids.length === 0) return out;
    const pipeline = this.#redis.pipeline();
    for (const id of ids) pipeline.xrange(this.#keys.auditChain(), id, id);
    const results = (await pipeline.exec()) ?? [];
    results.forEach(([, value], i) => {
      const [entry] = (value as Entry[] | null) ?? [];
      if (entry) {
        out.set(ids[i]!, {
          seq: Number(field(entry[1], 's')),
          digest: field(entry[1], 'd') ?? '',
          prev: field(entry[1], 'p') ?? '',
          hash: field(entry[1], 'h') ?? '',
        });
      }
    });
    return out;
  }
}
