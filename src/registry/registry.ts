// Connections and credentials in Redis. A credential is a hash of two JSON fields: `spec` (written by the API
// when a team registers or changes it) and `state` (written by the rotation engine). Keeping them apart means
// a PATCH of the schedule and a rotation finishing at the same moment never overwrite each other.
import { createHash, randomInt } from 'node:crypto';
import type { RedisClient } from '../redis/client.ts';
import { type FencedOp, mergeFieldsOp } from '../redis/fenced-op.ts';
import { ConflictError, NotFoundError } from './errors.ts';
import type { RedisKeys } from './keys.ts';
import { decodeSpec, encodeSpec } from './spec-codec.ts';
import {
  type Connection,
  type Credential,
  type CredentialSpec,
  type CredentialState,
  cloneUsername,
} from './types.ts';

// Every script below touches the keys of one owner (one Cluster hash tag: keys.ts): a connection, or a credential.
// The indexes over all of them (`creds`, `conns`) are written in steps of their own; see keys.ts for the order.

const CREATE_CONNECTION = `
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 1 end
return 0
`;

// Refuses while any credential uses the connection (claims left by a crash are released first: releaseStale).
const DELETE_CONNECTION = `
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return 1
`;

// The connection's half of a registration: the connection exists, and neither the credential id nor any of its
// downstream user names (ARGV[3..]) is claimed on it; then claims them, with the time (ARGV[2]). The credential's
// own record is written next (CREATE_CREDENTIAL); a crash between the two leaves claims that releaseStale frees.
// KEYS: connection, its credentials, user-name claims, claim times.
const CLAIM = `
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {0, '', ARGV[1]} end
for i = 3, #ARGV do
  local holder = redis.call('HGET', KEYS[3], ARGV[i])
  if holder then return {-2, ARGV[i], holder} end
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
for i = 3, #ARGV do redis.call('HSET', KEYS[3], ARGV[i], ARGV[1]) end
return {1}
`;

// Gives back what a credential (ARGV[1]) holds on its connection: its place, its user names and the clones made for
// it. With a claim time (ARGV[2]), only while the claim is still that one: a registration taking back its own claim
// never takes another's, and a stale claim is released only if nobody renewed it since it was judged stale. The user
// names (ARGV[3..]) when known; otherwise every claim and mark naming the credential is looked for.
// KEYS: the connection's credentials, user-name claims, made users, claim times.
const RELEASE = `
if ARGV[2] ~= '' and (redis.call('HGET', KEYS[4], ARGV[1]) or '') ~= ARGV[2] then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  if #ARGV > 2 then
    for i = 3, #ARGV do
      if redis.call('HGET', key, ARGV[i]) == ARGV[1] then redis.call('HDEL', key, ARGV[i]) end
    end
  else
    local fields = redis.call('HGETALL', key)
    for i = 1, #fields, 2 do
      if fields[i + 1] == ARGV[1] then redis.call('HDEL', key, fields[i]) end
    end
  end
end
return 1
`;

// The credential's half of a registration: its record, unless the id is taken.
// KEYS[1] hash; ARGV field, value: deletes the field only while it holds that value.
const HDEL_IF = `
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
`;

const CREATE_CREDENTIAL = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'state', ARGV[2])
return 1
`;

// Claims a credential's user names if nobody holds them (credentials registered before claims); an alternating
// pair's clone (ARGV[2], empty for single-user) counts as made by Keyturn: it was created for it. KEYS: the
// connection's user-name claims, made users, credentials, claim times; ARGV[3]: when.
const BACKFILL_USERNAMES = `
for i = 4, #ARGV do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[1]) end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HSETNX', KEYS[4], ARGV[1], ARGV[3])
return 1
`;

// Deletes a credential's record in one step with the checks that make it safe (finding 7 of issue 11): refused while
// a worker holds its execution lease (a rotation or revocation is acting downstream), and while a started rotation is
// in flight; a rotation that has not started (ARGV[2], its record KEYS[5] as read: ARGV[3]) is cancelled: its record
// replaced by ARGV[4] and the in-flight pointer removed. The caller read the pointer and the record; if either changed
// since, 'retry'. Its claims on the connection are released next (RELEASE), then the index entries.
// KEYS: credential, in-flight pointer, execution lease, rotation list, the in-flight rotation's record (or the
// credential again when none), overdue mark (Cluster; '' otherwise).
const DELETE_CREDENTIAL = `
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', ''} end
local rid = redis.call('GET', KEYS[2])
if redis.call('EXISTS', KEYS[3]) == 1 then return {'busy', rid or ''} end
if (rid or '') ~= ARGV[2] then return {'retry', ''} end
if rid then
  local raw = redis.call('GET', KEYS[5])
  if (raw or '') ~= ARGV[3] then return {'retry', ''} end
  if ARGV[4] == '' then return {'inflight', rid} end
  if raw then redis.call('SET', KEYS[5], ARGV[4]) end
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[1], KEYS[4])
if ARGV[5] == '1' then redis.call('DEL', KEYS[6]) end
return {'deleted', rid or ''}
`;

// Removes an index entry only if it still has the score it was read with (a re-registration gives it another).
const ZREM_IF_SCORE = `
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
`;

/** A claim older than this whose credential does not exist was left by a registration or delete that crashed. */
const STALE_CLAIM_MS = 60_000;

const SPEC_SWAP_ATTEMPTS = 30;
const sleep = (ms: number) => new Promise<void>((done) => setTimeout(done, ms));

// Replaces a credential's spec only if it is still the one the caller read (ARGV[1]): two PATCHes never lose one.
const SWAP_SPEC = `
local current = redis.call('HGET', KEYS[1], 'spec')
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'spec', ARGV[2])
return 1
`;

// Sets one field of a credential's state, leaving the rest as the engine last wrote it, and only while the spec
// (ARGV[1]) and the last rotation (ARGV[2]) it was computed from are still the credential's (finding 6 of issue 11).
const SET_NEXT_ROTATION = `
local spec = redis.call('HGET', KEYS[1], 'spec')
local raw = redis.call('HGET', KEYS[1], 'state')
if not spec or not raw then return -1 end
if spec ~= ARGV[1] then return 0 end
local state = cjson.decode(raw)
if (state['rotatedAt'] or '') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then state['nextRotationAt'] = nil else state['nextRotationAt'] = ARGV[3] end
redis.call('HSET', KEYS[1], 'state', cjson.encode(state))
return 1
`;

// Replaces a connection's JSON only if it is still the text the caller read (ARGV[1]).
const SWAP_CONNECTION = `
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
`;

const SET_FIRST_STATE = `
local raw = redis.call('HGET', KEYS[1], 'state')
if not raw or cjson.decode(raw)['status'] ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
return 1
`;

/** What the registry sees of a rotation record: enough to tell whether it started (the engine owns its shape). */
export interface QueuedRotation {
  status: string;
  attempts: number;
  [field: string]: unknown;
}

/** What a credential's schedule follows from: its spec (with its stored text, to tell a change) and last rotation. */
export interface ScheduleBasis {
  spec: CredentialSpec;
  specJson: string;
  rotatedAt?: string;
}

/** The outcome of a delete: done (with the rotation it cancelled, if any), or why not. */
export type DeleteOutcome =
  | { outcome: 'deleted'; cancelled?: string }
  | { outcome: 'missing' }
  | { outcome: 'busy' | 'inflight'; rotation?: string };

/** The downstream user names a credential rotates: its user, and for alternating-users the clone as well. */
export function claimedUsernames(spec: Pick<CredentialSpec, 'username' | 'strategy'>): string[] {
  return spec.strategy === 'alternating-users'
    ? [spec.username, cloneUsername(spec.username)]
    : [spec.username];
}

/** Another credential of the connection already rotates this downstream user name. */
export class UsernameTakenError extends ConflictError {
  readonly username: string;
  readonly holder: string;
  constructor(connection: string, username: string, holder: string) {
    super(
      `Downstream user "${username}" on connection "${connection}" is already rotated by credential "${holder}": two credentials on one user would each set a password the other does not know. Use that credential (or its leases), or another user`,
    );
    this.name = 'UsernameTakenError';
    this.username = username;
    this.holder = holder;
  }
}

/** A place in the credentials index: creation time (ms) and id. What list cursors encode. */
export interface CredentialCursor {
  at: number;
  id: string;
}

export class Registry {
  readonly #redis: RedisClient;
  readonly keys: RedisKeys;

  constructor(redis: RedisClient, keys: RedisKeys) {
    this.#redis = redis;
    this.keys = keys;
  }

  // Connections

  async createConnection(connection: Connection): Promise<void> {
    const k = this.keys;
    const created = await this.#redis.eval(
      CREATE_CONNECTION,
      1,
      k.connection(connection.id),
      JSON.stringify(connection),
    );
    if (created !== 1) throw new ConflictError(`Connection "${connection.id}" already exists`);
    // Listed once it exists; a crash before this line leaves it unlisted until the reconciler lists it (repairIndexes).
    await this.#redis.zadd(k.connections(), Date.parse(connection.createdAt), connection.id);
  }

  async findConnection(id: string): Promise<Connection | null> {
    const raw = await this.#redis.get(this.keys.connection(id));
    return raw ? (JSON.parse(raw) as Connection) : null;
  }

  async getConnection(id: string): Promise<Connection> {
    const c = await this.findConnection(id);
    if (!c) throw new NotFoundError(`Connection "${id}" does not exist`);
    return c;
  }

  async saveConnection(connection: Connection): Promise<void> {
    await this.#redis.set(this.keys.connection(connection.id), JSON.stringify(connection), 'XX');
  }

  /**
   * Replaces a connection's record only if it is still `before` (as this process wrote and read it): for a change that
   * must not be made over another one landing at the same moment (its approval policy). 409 when it changed.
   */
  async swapConnection(before: Connection, after: Connection): Promise<void> {
    const r = await this.#redis.eval(
      SWAP_CONNECTION,
      1,
      this.keys.connection(after.id),
      JSON.stringify(before),
      JSON.stringify(after),
    );
    if (r === -1) throw new NotFoundError(`Connection "${after.id}" does not exist`);
    if (r === 0) {
      throw new ConflictError(
        `Connection "${after.id}" was changed by another request at the same moment: retry`,
      );
    }
  }

  async listConnections(): Promise<Connection[]> {
    const ids = await this.#redis.zrange(this.keys.connections(), 0, -1);
    return this.#many(
      ids.map((id) => this.keys.connection(id)),
      (raw) => JSON.parse(raw) as Connection,
    );
  }

  async connectionUsers(id: string): Promise<string[]> {
    return (await this.#redis.smembers(this.keys.connectionUsers(id))).sort();
  }

  /** Deletes a connection unless credentials use it. */
  async deleteConnection(id: string): Promise<void> {
    const k = this.keys;
    await this.releaseStaleClaims(id);
    const r = await this.#redis.eval(
      DELETE_CONNECTION,
      5,
      k.connection(id),
      k.connectionUsers(id),
      k.connectionUsernames(id),
      k.connectionMadeUsers(id),
      k.connectionClaimTimes(id),
    );
    if (r === 1 || r === -1) await this.#redis.zrem(k.connections(), id);
    if (r === -1) throw new NotFoundError(`Connection "${id}" does not exist`);
    if (r === 0) {
      const users = await this.connectionUsers(id);
      throw new ConflictError(
        `Connection "${id}" is used by ${users.length} credential(s) (${users.slice(0, 10).join(', ')}): delete or move them first`,
      );
    }
  }

  // Credentials

  /**
   * Registers a credential: first its claims on the connection (its place and its downstream user names, refused
   * when another credential holds one), then its record (refused when the id is taken, and then the claims are given
   * back), then its index entry. Two steps because a connection and a credential are two owners (two hash tags).
   */
  async createCredential(spec: CredentialSpec, state: CredentialState): Promise<void> {
    const k = this.keys;
    const c = spec.connection;
    const claimedAt = String(Date.now());
    for (let attempt = 0; ; attempt++) {
      const [r, username, holder] = (await this.#redis.eval(
        CLAIM,
        4,
        k.connection(c),
        k.connectionUsers(c),
        k.connectionUsernames(c),
        k.connectionClaimTimes(c),
        spec.id,
        claimedAt,
        ...claimedUsernames(spec),
      )) as [number, string?, string?];
      if (r === 1) break;
      if (r === -1) throw new NotFoundError(`Connection "${c}" does not exist`);
      // A holder whose registration or delete crashed half-way holds nothing: free it and claim again.
      if (attempt < 3 && holder && (await this.releaseStaleClaim(c, holder))) continue;
      if (r === 0) throw new ConflictError(`Credential "${spec.id}" already exists`);
      throw new UsernameTakenError(c, username ?? '', holder ?? '');
    }
    const created = await this.#redis.eval(
      CREATE_CREDENTIAL,
      1,
      k.credential(spec.id),
      encodeSpec(spec),
      JSON.stringify(state),
    );
    if (created !== 1) {
      // The id is another connection's credential: give back what this registration claimed, and only that.
      await this.#release(c, spec.id, claimedAt);
      throw new ConflictError(`Credential "${spec.id}" already exists`);
    }
    await this.#redis.zadd(k.credentials(), Date.parse(spec.createdAt), spec.id);
    // The claim time only tells a claim left by a crash from one whose record is still being written; with the record
    // written it says nothing more (a claim whose credential exists is never stale), and it cost ~70 bytes a
    // credential (issue 14). Only this registration's own time goes.
    await this.#redis.eval(HDEL_IF, 1, k.connectionClaimTimes(c), spec.id, claimedAt);
  }

  /** Gives back a credential's claims on a connection (see RELEASE); `claimedAt` '' releases whatever it holds. */
  async #release(connectionId: string, credentialId: string, claimedAt: string, usernames: string[] = []) {
    const k = this.keys;
    return (await this.#redis.eval(
      RELEASE,
      4,
      k.connectionUsers(connectionId),
      k.connectionUsernames(connectionId),
      k.connectionMadeUsers(connectionId),
      k.connectionClaimTimes(connectionId),
      credentialId,
      claimedAt,
      ...usernames,
    )) as number;
  }

  /**
   * Frees the claims of `holder` on a connection when they were left by a crash: its record does not exist and the
   * claim is older than any registration takes between its two steps. True when something was freed.
   */
  async releaseStaleClaim(connectionId: string, holder: string): Promise<boolean> {
    const since = (await this.#redis.hget(this.keys.connectionClaimTimes(connectionId), holder)) ?? '';
    if (since !== '' && Date.now() - Number(since) < STALE_CLAIM_MS) return false;
    if ((await this.#redis.exists(this.keys.credential(holder))) === 1) return false;
    if (since === '') {
      // Claimed before claim times were kept (or by the backfill): its credential is gone, so it is free.
      return (await this.#release(connectionId, holder, '')) === 1;
    }
    return (await this.#release(connectionId, holder, since)) === 1;
  }

  /** Frees every claim on a connection left by a registration or delete that crashed half-way. */
  async releaseStaleClaims(connectionId: string): Promise<number> {
    let freed = 0;
    for (const holder of await this.#redis.smembers(this.keys.connectionUsers(connectionId))) {
      if (await this.releaseStaleClaim(connectionId, holder)) freed++;
    }
    return freed;
  }

  /**
   * What the reconciler does for the indexes: lists every credential its connection knows (a crash between a
   * registration's record and its index entry), and drops entries whose record is gone (a crash during a delete),
   * each only if unchanged since read. Returns how many entries it changed.
   */
  async repairIndexes(): Promise<number> {
    const k = this.keys;
    let changed = 0;
    const now = Date.now();
    for (const [id, score] of pairs(await this.#redis.zrange(k.credentials(), 0, -1, 'WITHSCORES'))) {
      if (now - Number(score) < STALE_CLAIM_MS) continue;
      if ((await this.#redis.exists(k.credential(id))) === 0)
        changed += (await this.#redis.eval(ZREM_IF_SCORE, 1, k.credentials(), id, score)) as number;
    }
    for (const connection of await this.listConnections()) {
      await this.releaseStaleClaims(connection.id);
      for (const id of await this.#redis.smembers(k.connectionUsers(connection.id))) {
        const credential = await this.findCredential(id);
        if (credential && credential.spec.connection === connection.id)
          changed += await this.#redis.zadd(k.credentials(), 'NX', Date.parse(credential.spec.createdAt), id);
      }
    }
    return changed;
  }

  /** The downstream user names the connection's credentials claim, each with the credential that claims it. */
  /**
   * Which credentials hold these downstream user names on a connection (name → credential; names nobody holds are
   * left out). Asks for the given names only: a connection of 100,000 credentials has a claim hash of megabytes.
   */
  async connectionUsernames(connectionId: string, names: string[]): Promise<Record<string, string>> {
    if (names.length === 0) return {};
    const holders = await this.#redis.hmget(this.keys.connectionUsernames(connectionId), ...names);
    const out: Record<string, string> = {};
    names.forEach((name, i) => {
      const holder = holders[i];
      if (holder) out[name] = holder;
    });
    return out;
  }

  /**
   * Reserves one of a principal's import attempts in the current window, atomically: at most `max` attempts that
   * failed or are still running, so that concurrent requests cannot all pass a check made before any of them failed.
   * The window starts with the first attempt. A refused reservation counts nothing.
   */
  async reserveImportAttempt(
    principal: string,
    max: number,
    windowMs: number,
  ): Promise<{ allowed: boolean; count: number; resetInMs: number }> {
    const key = this.keys.importFailures(digest(principal));
    const [allowed, count, ttl] = (await this.#redis.eval(
      `local n = tonumber(redis.call('GET', KEYS[1]) or '0')
       if n >= tonumber(ARGV[1]) then return {0, n, redis.call('PTTL', KEYS[1])} end
       n = redis.call('INCR', KEYS[1])
       if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
       return {1, n, redis.call('PTTL', KEYS[1])}`,
      1,
      key,
      max,
      windowMs,
    )) as [number, number, number];
    return { allowed: allowed === 1, count, resetInMs: Math.max(0, ttl) };
  }

  /** Gives back a reserved import attempt that did not fail (the password logged in, or could not be checked). */
  async releaseImportAttempt(principal: string): Promise<void> {
    const key = this.keys.importFailures(digest(principal));
    // Only while the window lasts: a DECR after it expired would start a counter without an expiry.
    await this.#redis.eval(
      "if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end return 1",
      1,
      key,
    );
  }

  /** The credential a downstream user was made (or adopted) for by Keyturn, or null: not Keyturn's. */
  async madeFor(connectionId: string, username: string): Promise<string | null> {
    return this.#redis.hget(this.keys.connectionMadeUsers(connectionId), username);
  }

  /** Records that Keyturn makes (or adopts) a downstream user for a credential; written before the user is made. */
  async markMade(connectionId: string, username: string, credentialId: string): Promise<void> {
    await this.#redis.hset(this.keys.connectionMadeUsers(connectionId), username, credentialId);
  }

  /**
   * Writes the user-name claims of credentials registered before claims existed, once per installation (a marker
   * key remembers it). Idempotent and safe beside registrations: a claim is only added where none exists.
   */
  async migrateUsernameClaims(): Promise<number> {
    const k = this.keys;
    if ((await this.#redis.exists(k.usernameClaimsMigrated())) === 1) return 0;
    let claimed = 0;
    for await (const batch of this.credentialBatches()) {
      for (const { spec } of batch) {
        claimed += (await this.#redis.eval(
          BACKFILL_USERNAMES,
          4,
          k.connectionUsernames(spec.connection),
          k.connectionMadeUsers(spec.connection),
          k.connectionUsers(spec.connection),
          k.connectionClaimTimes(spec.connection),
          spec.id,
          spec.strategy === 'alternating-users' ? cloneUsername(spec.username) : '',
          Date.parse(spec.createdAt),
          ...claimedUsernames(spec),
        )) as number;
      }
    }
    await this.#redis.set(k.usernameClaimsMigrated(), new Date().toISOString());
    return claimed;
  }

  /**
   * The write that sets these fields of a credential's state and no other (undefined removes one), for a writer that
   * holds the credential's execution lease to apply with its other fenced writes (the engine's commits).
   */
  stateChangeOp(id: string, changes: Partial<CredentialState>): FencedOp {
    return mergeFieldsOp(this.keys.credential(id), 'state', changes);
  }

  async findCredential(id: string): Promise<Credential | null> {
    const [spec, state] = await this.#redis.hmget(this.keys.credential(id), 'spec', 'state');
    if (!spec || !state) return null;
    return { spec: decodeSpec(id, spec), state: JSON.parse(state) as CredentialState };
  }

  async getCredential(id: string): Promise<Credential> {
    const c = await this.findCredential(id);
    if (!c) throw new NotFoundError(`Credential "${id}" does not exist`);
    return c;
  }

  async listCredentials(): Promise<Credential[]> {
    const out: Credential[] = [];
    for await (const batch of this.credentialBatches()) out.push(...batch);
    return out;
  }

  /**
   * Every credential in creation order, `batchSize` at a time: the index is read a page at a time (by creation time and
   * id, so credentials added or removed meanwhile never make one seen twice or one present throughout missed) and the
   * records of a page in one pipelined batch. Memory stays one batch however large the fleet. A credential deleted
   * meanwhile (or an index entry left by a crash) is left out.
   */
  async *credentialBatches(batchSize = 500): AsyncGenerator<Credential[]> {
    let after: CredentialCursor | undefined;
    for (;;) {
      const page = await this.credentialIds(batchSize, after);
      if (page.length === 0) return;
      after = page[page.length - 1]!;
      const batch = await this.credentialsOf(page.map((p) => p.id));
      if (batch.length) yield batch;
      if (page.length < batchSize) return;
    }
  }

  /**
   * Up to `limit` entries of the credentials index after `after` (exclusive), in creation order: by creation time
   * (ms), then by id among those created in the same millisecond, which is how Redis orders equal scores.
   */
  async credentialIds(limit: number, after?: CredentialCursor): Promise<CredentialCursor[]> {
    const out: CredentialCursor[] = [];
    let offset = 0;
    const min = after ? String(after.at) : '-inf';
    while (out.length < limit) {
      const want = limit - out.length;
      const flat = await this.#redis.zrangebyscore(
        this.keys.credentials(),
        min,
        '+inf',
        'WITHSCORES',
        'LIMIT',
        offset,
        want + (after ? 16 : 0),
      );
      if (flat.length === 0) break;
      offset += flat.length / 2;
      for (const [id, score] of pairs(flat)) {
        const at = Number(score);
        // Entries of the cursor's own millisecond up to and including its id were on earlier pages.
        if (after && at === after.at && id <= after.id) continue;
        if (out.length < limit) out.push({ at, id });
      }
      if (flat.length / 2 < want + (after ? 16 : 0)) break;
    }
    return out;
  }

  /** The records of these credentials, in one pipelined batch, in their order; missing ones left out. */
  async credentialsOf(ids: string[]): Promise<Credential[]> {
    // One command per credential, sent together (ioredis pipelines them per node; each credential is in its own slot
    // of a Cluster).
    const values = await Promise.all(
      ids.map((id) => this.#redis.hmget(this.keys.credential(id), 'spec', 'state')),
    );
    const out: Credential[] = [];
    values.forEach(([spec, state], i) => {
      if (spec && state) out.push({ spec: decodeSpec(ids[i]!, spec), state: JSON.parse(state) });
    });
    return out;
  }

  /**
   * Replaces a credential's spec with `change(current)`, compare-and-set on what was read: a concurrent PATCH makes it
   * read again and re-apply, so no change is lost and no stale spec written back. Each lost round means another
   * request's write landed, so a burst of N PATCHes needs at most N rounds; a short random pause between rounds
   * keeps them from meeting again, and only a burst far beyond that is told to retry.
   */
  async updateCredentialSpec(
    id: string,
    change: (current: CredentialSpec) => CredentialSpec,
  ): Promise<CredentialSpec> {
    const key = this.keys.credential(id);
    for (let attempt = 0; attempt < SPEC_SWAP_ATTEMPTS; attempt++) {
      if (attempt > 0) await sleep(randomInt(1 + Math.min(2 ** attempt, 50)));
      const raw = await this.#redis.hget(key, 'spec');
      if (!raw) break;
      const next = change(decodeSpec(id, raw));
      const r = await this.#redis.eval(SWAP_SPEC, 1, key, raw, encodeSpec(next));
      if (r === 1) return next;
      if (r === -1) break;
    }
    const exists = await this.#redis.hexists(key, 'spec');
    if (!exists) throw new NotFoundError(`Credential "${id}" does not exist`);
    throw new ConflictError(
      `Credential "${id}" is being changed by other requests at the same moment: retry`,
    );
  }

  /**
   * Writes a connection's admin subject (see adminSubjectId): its record is created with `state` if missing, its spec
   * replaced otherwise (the admin's username, store, schedule and policy follow the connection). No claims and no index
   * entry: the connection already claims its admin's name, and no list shows the subject.
   */
  async putAdminSubject(spec: CredentialSpec, state: CredentialState): Promise<void> {
    const key = this.keys.credential(spec.id);
    const created = await this.#redis.eval(
      CREATE_CREDENTIAL,
      1,
      key,
      encodeSpec(spec),
      JSON.stringify(state),
    );
    if (created === 1) return;
    await this.updateCredentialSpec(spec.id, (current) => ({ ...spec, createdAt: current.createdAt }));
  }

  /** The spec and last rotation a credential's schedule follows from, or null once it is deleted. */
  async scheduleBasis(id: string): Promise<ScheduleBasis | null> {
    const [spec, state] = await this.#redis.hmget(this.keys.credential(id), 'spec', 'state');
    if (!spec || !state) return null;
    const { rotatedAt } = JSON.parse(state) as CredentialState;
    return { spec: decodeSpec(id, spec), specJson: spec, ...(rotatedAt ? { rotatedAt } : {}) };
  }

  /**
   * Sets the advertised next rotation in a credential's state, and nothing else of it, if the spec and the last
   * rotation are still those of `basis` ('changed' otherwise: compute it again); 'missing' once it is deleted.
   */
  async setNextRotationAt(
    id: string,
    at: Date | undefined,
    basis: ScheduleBasis,
  ): Promise<'set' | 'changed' | 'missing'> {
    const r = await this.#redis.eval(
      SET_NEXT_ROTATION,
      1,
      this.keys.credential(id),
      basis.specJson,
      basis.rotatedAt ?? '',
      at?.toISOString() ?? '',
    );
    return r === 1 ? 'set' : r === 0 ? 'changed' : 'missing';
  }

  /**
   * The first state of a registration that had to wait for its store write (an import). Written only while the
   * credential is still `pending`: once a rotation was requested the engine owns the state, and an earlier copy is
   * never written over it; a deleted credential is not brought back either.
   */
  async saveCredentialState(id: string, state: CredentialState): Promise<boolean> {
    const r = await this.#redis.eval(SET_FIRST_STATE, 1, this.keys.credential(id), JSON.stringify(state));
    return r === 1;
  }

  /**
   * Deletes a credential, its rotation list and the claims it holds, in one step with the checks (DELETE_CREDENTIAL);
   * `cancel` turns the record of a rotation that has not started into its cancelled form, or null when it has started
   * (then the delete is refused). Also takes back a registration whose later steps failed.
   */
  async deleteCredential(
    spec: CredentialSpec,
    cancel: (rotation: QueuedRotation) => QueuedRotation | null = () => null,
  ): Promise<DeleteOutcome> {
    const k = this.keys;
    for (let attempt = 0; attempt < 10; attempt++) {
      const rid = (await this.#redis.get(k.inflight(spec.id))) ?? '';
      const recordKey = rid ? k.rotation(spec.id, rid) : k.credential(spec.id);
      const raw = rid ? ((await this.#redis.get(recordKey)) ?? '') : '';
      const cancelled = raw ? cancel(JSON.parse(raw) as QueuedRotation) : null;
      const [outcome, rotation] = (await this.#redis.eval(
        DELETE_CREDENTIAL,
        6,
        k.credential(spec.id),
        k.inflight(spec.id),
        k.lease(spec.id),
        k.credentialRotations(spec.id),
        recordKey,
        k.clustered ? k.overdueNotified(spec.id) : k.credential(spec.id),
        spec.id,
        rid,
        raw,
        rid && !raw ? 'gone' : cancelled ? JSON.stringify(cancelled) : '',
        k.clustered ? '1' : '0',
      )) as [string, string];
      if (outcome === 'retry') continue;
      if (outcome === 'deleted') {
        // The record is gone: what it held on its connection, then its index entries (each step repeatable; a crash
        // in between leaves claims and entries the reconciler frees: releaseStaleClaims, repairIndexes).
        await this.#release(spec.connection, spec.id, '', claimedUsernames(spec));
        await this.#redis.eval(
          ZREM_IF_SCORE,
          1,
          k.credentials(),
          spec.id,
          String(Date.parse(spec.createdAt)),
        );
        if (rotation) await this.#redis.zrem(k.activeRotations(), rotation);
        return rotation ? { outcome, cancelled: rotation } : { outcome };
      }
      if (outcome === 'missing') return { outcome };
      return { outcome: outcome as 'busy' | 'inflight', ...(rotation ? { rotation } : {}) };
    }
    return { outcome: 'busy' };
  }

  async #many<T>(keys: string[], parse: (raw: string) => T): Promise<T[]> {
    // One GET per key, sent together: an MGET cannot span the slots of a Cluster.
    const values = await Promise.all(keys.map((key) => this.#redis.get(key)));
    return values.filter((v): v is string => v !== null).map(parse);
  }
}

/** [member, score, member, score…] as pairs. */
function pairs(flat: string[]): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i + 1 < flat.length; i += 2) out.push([flat[i] as string, flat[i + 1] as string]);
  return out;
}

const digest = (value: string): string => createHash('sha256').update(value).digest('hex').slice(0, 32);
