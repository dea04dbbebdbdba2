// Connections and credentials in Redis. A credential is a hash of two JSON fields: `spec` (written by the API
// when a team registers or changes it) and `state` (written by the rotation engine). Keeping them apart means
// a PATCH of the schedule and a rotation finishing at the same moment never overwrite each other.
import type { Redis } from 'ioredis';
import { ConflictError, NotFoundError } from './errors.ts';
import type { RedisKeys } from './keys.ts';
import {
  type Connection,
  type Credential,
  type CredentialSpec,
  type CredentialState,
  cloneUsername,
} from './types.ts';

const CREATE_CONNECTION = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
`;

// Refuses while any credential uses the connection.
const DELETE_CONNECTION = `
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SCARD', KEYS[3]) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
`;

// A credential can only be created on an existing connection, and only on downstream user names (ARGV[5..]) no
// other credential of that connection claims; the checks and the writes are one step.
const CREATE_CREDENTIAL = `
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
if redis.call('EXISTS', KEYS[3]) == 0 then return {-1} end
for i = 5, #ARGV do
  local holder = redis.call('HGET', KEYS[5], ARGV[i])
  if holder then return {-2, ARGV[i], holder} end
end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'state', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[4])
for i = 5, #ARGV do redis.call('HSET', KEYS[5], ARGV[i], ARGV[4]) end
return {1}
`;

// Releases the user names a credential claimed (ARGV[2..]), only where it still holds them.
const RELEASE_USERNAMES = `
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 1
`;

// Claims a credential's user names if it still exists and nobody holds them (credentials registered before claims);
// an alternating pair's clone (ARGV[2], empty for single-user) counts as made by Keyturn: it was created for it.
const BACKFILL_USERNAMES = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 3, #ARGV do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSETNX', KEYS[3], ARGV[2], ARGV[1]) end
return 1
`;

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

export class Registry {
  readonly #redis: Redis;
  readonly keys: RedisKeys;

  constructor(redis: Redis, keys: RedisKeys) {
    this.#redis = redis;
    this.keys = keys;
  }

  // Connections

  async createConnection(connection: Connection): Promise<void> {
    const k = this.keys;
    const created = await this.#redis.eval(
      CREATE_CONNECTION,
      2,
      k.connection(connection.id),
      k.connections(),
      JSON.stringify(connection),
      Date.parse(connection.createdAt),
      connection.id,
    );
    if (created !== 1) throw new ConflictError(`Connection "${connection.id}" already exists`);
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
    const r = await this.#redis.eval(
      DELETE_CONNECTION,
      5,
      k.connection(id),
      k.connections(),
      k.connectionUsers(id),
      k.connectionUsernames(id),
      k.connectionMadeUsers(id),
      id,
    );
    if (r === -1) throw new NotFoundError(`Connection "${id}" does not exist`);
    if (r === 0) {
      const users = await this.connectionUsers(id);
      throw new ConflictError(
        `Connection "${id}" is used by ${users.length} credential(s) (${users.slice(0, 10).join(', ')}): delete or move them first`,
      );
    }
  }

  // Credentials

  async createCredential(spec: CredentialSpec, state: CredentialState): Promise<void> {
    const k = this.keys;
    const [r, username, holder] = (await this.#redis.eval(
      CREATE_CREDENTIAL,
      5,
      k.credential(spec.id),
      k.credentials(),
      k.connection(spec.connection),
      k.connectionUsers(spec.connection),
      k.connectionUsernames(spec.connection),
      JSON.stringify(spec),
      JSON.stringify(state),
      Date.parse(spec.createdAt),
      spec.id,
      ...claimedUsernames(spec),
    )) as [number, string?, string?];
    if (r === 0) throw new ConflictError(`Credential "${spec.id}" already exists`);
    if (r === -1) throw new NotFoundError(`Connection "${spec.connection}" does not exist`);
    if (r === -2) throw new UsernameTakenError(spec.connection, username ?? '', holder ?? '');
  }

  /** The downstream user names the connection's credentials claim, each with the credential that claims it. */
  async connectionUsernames(connectionId: string): Promise<Record<string, string>> {
    return this.#redis.hgetall(this.keys.connectionUsernames(connectionId));
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
          3,
          k.credential(spec.id),
          k.connectionUsernames(spec.connection),
          k.connectionMadeUsers(spec.connection),
          spec.id,
          spec.strategy === 'alternating-users' ? cloneUsername(spec.username) : '',
          ...claimedUsernames(spec),
        )) as number;
      }
    }
    await this.#redis.set(k.usernameClaimsMigrated(), new Date().toISOString());
    return claimed;
  }

  async findCredential(id: string): Promise<Credential | null> {
    const [spec, state] = await this.#redis.hmget(this.keys.credential(id), 'spec', 'state');
    if (!spec || !state) return null;
    return { spec: JSON.parse(spec) as CredentialSpec, state: JSON.parse(state) as CredentialState };
  }

  async getCredential(id: string): Promise<Credential> {
    const c = await this.findCredential(id);
    if (!c) throw new NotFoundError(`Credential "${id}" does not exist`);
    return c;
  }

  async listCredentials(): Promise<Credential[]> {
    const ids = await this.#redis.zrange(this.keys.credentials(), 0, -1);
    const pipeline = this.#redis.pipeline();
    for (const id of ids) pipeline.hmget(this.keys.credential(id), 'spec', 'state');
    const results = (await pipeline.exec()) ?? [];
    const out: Credential[] = [];
    for (const [err, value] of results) {
      const [spec, state] = (value ?? []) as [string | null, string | null];
      if (err || !spec || !state) continue; // deleted between the two reads
      out.push({ spec: JSON.parse(spec), state: JSON.parse(state) });
    }
    return out;
  }

  /**
   * Every credential in creation order, `batchSize` at a time: the ids are read at once (a consistent list, cheap
   * even for a large fleet), the records one pipelined batch after another, so a fleet of thousands never makes
   * one huge reply. A credential deleted meanwhile is left out.
   */
  async *credentialBatches(batchSize = 500): AsyncGenerator<Credential[]> {
    const ids = await this.#redis.zrange(this.keys.credentials(), 0, -1);
    for (let start = 0; start < ids.length; start += batchSize) {
      const pipeline = this.#redis.pipeline();
      for (const id of ids.slice(start, start + batchSize)) {
        pipeline.hmget(this.keys.credential(id), 'spec', 'state');
      }
      const batch: Credential[] = [];
      for (const [err, value] of (await pipeline.exec()) ?? []) {
        if (err) throw err;
        const [spec, state] = (value ?? []) as [string | null, string | null];
        if (spec && state) batch.push({ spec: JSON.parse(spec), state: JSON.parse(state) });
      }
      yield batch;
    }
  }

  /** Replaces the spec of an existing credential (PATCH). */
  async saveCredentialSpec(spec: CredentialSpec): Promise<void> {
    const key = this.keys.credential(spec.id);
    // HSET on a missing key would resurrect a deleted credential: only write while it exists.
    const r = await this.#redis.eval(
      "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end redis.call('HSET', KEYS[1], 'spec', ARGV[1]) return 1",
      1,
      key,
      JSON.stringify(spec),
    );
    if (r !== 1) throw new NotFoundError(`Credential "${spec.id}" does not exist`);
  }

  async saveCredentialState(id: string, state: CredentialState): Promise<void> {
    await this.#redis.eval(
      "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end redis.call('HSET', KEYS[1], 'state', ARGV[1]) return 1",
      1,
      this.keys.credential(id),
      JSON.stringify(state),
    );
  }

  /** Removes a credential's registry entries (its rotations' records expire on their own). */
  async deleteCredential(spec: CredentialSpec): Promise<void> {
    const k = this.keys;
    await this.#redis
      .multi()
      .del(k.credential(spec.id), k.credentialRotations(spec.id))
      .zrem(k.credentials(), spec.id)
      .srem(k.connectionUsers(spec.connection), spec.id)
      .eval(RELEASE_USERNAMES, 1, k.connectionUsernames(spec.connection), spec.id, ...claimedUsernames(spec))
      .eval(RELEASE_USERNAMES, 1, k.connectionMadeUsers(spec.connection), spec.id, ...claimedUsernames(spec))
      .exec();
  }

  async #many<T>(keys: string[], parse: (raw: string) => T): Promise<T[]> {
    if (keys.length === 0) return [];
    const values = await this.#redis.mget(...keys);
    return values.filter((v): v is string => v !== null).map(parse);
  }
}
