// Rotation records in Redis. Creation is the I3 gate: one script checks the credential's in-flight pointer
// and either returns the rotation already in flight or creates the new one, sets the pointer and marks the
// credential as rotating, all at once. Later writes go through the worker's lease (lease.ts). A rotation's keys are
// its credential's (one hash tag); the index of active rotations is written before creation and after the end, so
// the reconciler never misses a rotation that is not finished (an entry for one that is, it drops).
import { type Clock, systemClock } from '../clock.ts';
import type { RedisClient } from '../redis/client.ts';
import type { FencedOp } from '../redis/fenced-op.ts';
import type { RedisKeys } from '../registry/keys.ts';
import type { Rotation } from './types.ts';

// KEYS: in-flight pointer, record, the credential's rotation list, credential.
const CREATE = `
if redis.call('EXISTS', KEYS[4]) == 0 then return {'missing', ''} end
local current = redis.call('GET', KEYS[1])
if current then return {'inflight', current} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
local state = cjson.decode(redis.call('HGET', KEYS[4], 'state'))
state['status'] = 'rotating'
redis.call('HSET', KEYS[4], 'state', cjson.encode(state))
return {'created', ARGV[1]}
`;

// KEYS: record, in-flight pointer.
const ABANDON = `
local raw = redis.call('GET', KEYS[1])
if raw then
  local status = cjson.decode(raw)['status']
  if status == 'succeeded' or status == 'failed' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
`;

export type CreateOutcome =
  | { outcome: 'created'; rotation: Rotation }
  | { outcome: 'inflight'; rotation: Rotation }
  | { outcome: 'missing' };

export class RotationRepo {
  readonly #redis: RedisClient;
  readonly #clock: Clock;
  readonly keys: RedisKeys;

  constructor(redis: RedisClient, keys: RedisKeys, clock: Clock = systemClock) {
    this.#redis = redis;
    this.keys = keys;
    this.#clock = clock;
  }

  /** Creates `rotation` unless one is in flight for its credential, which is returned instead (I3). */
  async create(rotation: Rotation): Promise<CreateOutcome> {
    const k = this.keys;
    const created = Date.parse(rotation.createdAt);
    // Before the record: the reconciler must find every rotation that could exist (an entry without one, it drops).
    if (k.clustered) await this.#redis.set(k.rotationOwner(rotation.id), rotation.credentialId);
    await this.#redis.zadd(k.activeRotations(), created, rotation.id);
    const [outcome, id] = (await this.#redis.eval(
      CREATE,
      4,
      k.inflight(rotation.credentialId),
      k.rotation(rotation.credentialId, rotation.id),
      k.credentialRotations(rotation.credentialId),
      k.credential(rotation.credentialId),
      rotation.id,
      JSON.stringify(rotation),
      created,
    )) as [string, string];
    if (outcome !== 'created') {
      await this.#redis.zrem(k.activeRotations(), rotation.id);
      if (k.clustered) await this.#redis.del(k.rotationOwner(rotation.id));
    }
    if (outcome === 'missing') return { outcome: 'missing' };
    if (outcome === 'created') return { outcome: 'created', rotation };
    const inflight = await this.find(id);
    if (inflight) return { outcome: 'inflight', rotation: inflight };
    // The in-flight rotation finished between the script and this read: try again.
    return this.create(rotation);
  }

  /**
   * Lets a queued rotation that has not started run now: its `notBefore` goes. Compare-and-set on the record, so a
   * worker starting it meanwhile wins. Returns the updated rotation, or null when it was no longer waiting.
   */
  async startNow(id: string): Promise<Rotation | null> {
    const key = await this.#recordKey(id);
    for (let attempt = 0; key && attempt < 5; attempt++) {
      const raw = await this.#redis.get(key);
      if (!raw) return null;
      const rotation = JSON.parse(raw) as Rotation;
      if (rotation.status !== 'queued' || rotation.attempts > 0 || !rotation.notBefore) return null;
      delete rotation.notBefore;
      rotation.updatedAt = new Date(this.#clock.now()).toISOString();
      const swapped = await this.#redis.eval(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0",
        1,
        key,
        raw,
        JSON.stringify(rotation),
      );
      if (swapped === 1) return rotation;
    }
    return null;
  }

  /** Where a rotation's record is, knowing only its id (in a Cluster, its credential's slot); null if unknown. */
  async #recordKey(id: string): Promise<string | null> {
    if (!this.keys.clustered) return this.keys.rotation('', id);
    const credentialId = await this.#redis.get(this.keys.rotationOwner(id));
    return credentialId ? this.keys.rotation(credentialId, id) : null;
  }

  async find(id: string): Promise<Rotation | null> {
    const key = await this.#recordKey(id);
    const raw = key ? await this.#redis.get(key) : null;
    return raw ? (JSON.parse(raw) as Rotation) : null;
  }

  async inflightId(credentialId: string): Promise<string | null> {
    return this.#redis.get(this.keys.inflight(credentialId));
  }

  async inflight(credentialId: string): Promise<Rotation | null> {
    const id = await this.inflightId(credentialId);
    return id ? this.find(id) : null;
  }

  /**
   * A credential's rotations, newest first: created before `before` (ms, exclusive) when given, and from `since` (ms)
   * on when given (the console's rotations per day read only the window they count).
   */
  async listForCredential(
    credentialId: string,
    limit: number,
    before?: number,
    since?: number,
  ): Promise<Rotation[]> {
    const ids = await this.#redis.zrevrangebyscore(
      this.keys.credentialRotations(credentialId),
      before === undefined ? '+inf' : `(${before}`,
      since === undefined ? '-inf' : since,
      'LIMIT',
      0,
      limit,
    );
    if (ids.length === 0) return [];
    const raws = await this.#redis.mget(...ids.map((id) => this.keys.rotation(credentialId, id)));
    return raws.filter((r): r is string => r !== null).map((r) => JSON.parse(r) as Rotation);
  }

  /** When a rotation entered the active index (ms; 0 when it is not there). */
  async activeSince(id: string): Promise<number> {
    return Number((await this.#redis.zscore(this.keys.activeRotations(), id)) ?? 0);
  }

  /** Rotations not yet terminal, oldest first (for the reconciler). */
  async activeIds(): Promise<string[]> {
    return this.#redis.zrange(this.keys.activeRotations(), 0, -1);
  }

  // Write operations, as fenced ops for Lease.commit.

  saveOp(rotation: Rotation): FencedOp {
    return ['SET', this.keys.rotation(rotation.credentialId, rotation.id), JSON.stringify(rotation)];
  }

  /** Ops that end a rotation: it leaves the in-flight pointer (then the active index: forgetEnded). */
  endOps(rotation: Rotation): FencedOp[] {
    return [this.saveOp(rotation), ['DEL', this.keys.inflight(rotation.credentialId)]];
  }

  /** Takes an ended rotation (or one that never existed) out of the active index, after its end was written. */
  async forgetEnded(id: string): Promise<void> {
    await this.#redis.zrem(this.keys.activeRotations(), id);
  }

  /**
   * Ends a rotation whose credential was deleted (no lease exists to fence with), unless it has ended already: the
   * DELETE that cancelled it wrote why, and a worker's earlier read of the record must not replace that.
   */
  async abandon(rotation: Rotation): Promise<void> {
    await this.#redis.eval(
      ABANDON,
      2,
      this.keys.rotation(rotation.credentialId, rotation.id),
      this.keys.inflight(rotation.credentialId),
      rotation.id,
      JSON.stringify(rotation),
    );
    await this.forgetEnded(rotation.id);
  }
}
