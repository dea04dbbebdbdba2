// Rotation records in Redis. Creation is the I3 gate: one script checks the credential's in-flight pointer
// and either returns the rotation already in flight or creates the new one, sets the pointer and marks the
// credential as rotating, all at once. Later writes go through the worker's lease (lease.ts).
import type { RedisClient } from '../redis/client.ts';
import type { RedisKeys } from '../registry/keys.ts';
import type { FencedOp } from './lease.ts';
import type { Rotation } from './types.ts';

const CREATE = `
if redis.call('EXISTS', KEYS[5]) == 0 then return {'missing', ''} end
local current = redis.call('GET', KEYS[1])
if current then return {'inflight', current} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
local state = cjson.decode(redis.call('HGET', KEYS[5], 'state'))
state['status'] = 'rotating'
redis.call('HSET', KEYS[5], 'state', cjson.encode(state))
return {'created', ARGV[1]}
`;

const ABANDON = `
local raw = redis.call('GET', KEYS[1])
if raw then
  local status = cjson.decode(raw)['status']
  if status == 'succeeded' or status == 'failed' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return 1
`;

export type CreateOutcome =
  | { outcome: 'created'; rotation: Rotation }
  | { outcome: 'inflight'; rotation: Rotation }
  | { outcome: 'missing' };

export class RotationRepo {
  readonly #redis: RedisClient;
  readonly keys: RedisKeys;

  constructor(redis: RedisClient, keys: RedisKeys) {
    this.#redis = redis;
    this.keys = keys;
  }

  /** Creates `rotation` unless one is in flight for its credential, which is returned instead (I3). */
  async create(rotation: Rotation): Promise<CreateOutcome> {
    const k = this.keys;
    const [outcome, id] = (await this.#redis.eval(
      CREATE,
      5,
      k.inflight(rotation.credentialId),
      k.rotation(rotation.id),
      k.credentialRotations(rotation.credentialId),
      k.activeRotations(),
      k.credential(rotation.credentialId),
      rotation.id,
      JSON.stringify(rotation),
      Date.parse(rotation.createdAt),
    )) as [string, string];
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
    for (let attempt = 0; attempt < 5; attempt++) {
      const raw = await this.#redis.get(this.keys.rotation(id));
      if (!raw) return null;
      const rotation = JSON.parse(raw) as Rotation;
      if (rotation.status !== 'queued' || rotation.attempts > 0 || !rotation.notBefore) return null;
      delete rotation.notBefore;
      rotation.updatedAt = new Date().toISOString();
      const swapped = await this.#redis.eval(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0",
        1,
        this.keys.rotation(id),
        raw,
        JSON.stringify(rotation),
      );
      if (swapped === 1) return rotation;
    }
    return null;
  }

  async find(id: string): Promise<Rotation | null> {
    const raw = await this.#redis.get(this.keys.rotation(id));
    return raw ? (JSON.parse(raw) as Rotation) : null;
  }

  async inflightId(credentialId: string): Promise<string | null> {
    return this.#redis.get(this.keys.inflight(credentialId));
  }

  async inflight(credentialId: string): Promise<Rotation | null> {
    const id = await this.inflightId(credentialId);
    return id ? this.find(id) : null;
  }

  /** A credential's rotations, newest first. */
  async listForCredential(credentialId: string, limit: number, before?: number): Promise<Rotation[]> {
    const ids = await this.#redis.zrevrangebyscore(
      this.keys.credentialRotations(credentialId),
      before === undefined ? '+inf' : `(${before}`,
      '-inf',
      'LIMIT',
      0,
      limit,
    );
    if (ids.length === 0) return [];
    const raws = await this.#redis.mget(...ids.map((id) => this.keys.rotation(id)));
    return raws.filter((r): r is string => r !== null).map((r) => JSON.parse(r) as Rotation);
  }

  /** Rotations not yet terminal, oldest first (for the reconciler). */
  async activeIds(): Promise<string[]> {
    return this.#redis.zrange(this.keys.activeRotations(), 0, -1);
  }

  // Write operations, as fenced ops for Lease.commit.

  saveOp(rotation: Rotation): FencedOp {
    return ['SET', this.keys.rotation(rotation.id), JSON.stringify(rotation)];
  }

  /** Ops that end a rotation: it leaves the in-flight pointer and the active set. */
  endOps(rotation: Rotation): FencedOp[] {
    return [
      this.saveOp(rotation),
      ['DEL', this.keys.inflight(rotation.credentialId)],
      ['ZREM', this.keys.activeRotations(), rotation.id],
    ];
  }

  /**
   * Ends a rotation whose credential was deleted (no lease exists to fence with), unless it has ended already: the
   * DELETE that cancelled it wrote why, and a worker's earlier read of the record must not replace that.
   */
  async abandon(rotation: Rotation): Promise<void> {
    await this.#redis.eval(
      ABANDON,
      3,
      this.keys.rotation(rotation.id),
      this.keys.activeRotations(),
      this.keys.inflight(rotation.credentialId),
      rotation.id,
      JSON.stringify(rotation),
    );
  }
}
