// The secret read path (GET /v1/credentials/:id/secret): returns a version that works downstream right now (I1),
// audits the read with the reader's name before the answer leaves, and says how long the reader may cache it.
//
// Which version: normally the current one. During a single-user rotation the user's password changes under the
// store's feet, so the in-flight rotation's record decides: once its set step has landed the pending version is the
// one that works; while the downstream change is in the air (sent but not confirmed, or being rolled back) the only
// honest answer is to ask the downstream, which this does with one login.
//
// One round trip (docs/architecture.md, "The secret read in one round trip"): a script reads the credential, its
// in-flight pointer and that rotation's record and, on one node or Sentinel, the connection record and the local
// store's labels and sealed values too, all at one instant. In a Cluster the credential's keys share a slot and the
// connection's and the secret's do not: the script reads the credential's, the connection is read beside it, and the
// store afterwards (after the in-flight pointer, as before: a version read then is one that worked at that moment).
// Other stores (Vault, AWS) are read through their interface after the script.
import { createHash } from 'node:crypto';
import { type AuditEventInput, type AuditLog, auditEventTemplate } from '../audit/audit-log.ts';
import type { Clock } from '../clock.ts';
import { noteSecret } from '../crypto/secret-scope.ts';
import type { RedisClient } from '../redis/client.ts';
import { NotFoundError } from '../registry/errors.ts';
import type { RedisKeys } from '../registry/keys.ts';
import { decodeSpec } from '../registry/spec-codec.ts';
import type { Connection, Credential, CredentialState } from '../registry/types.ts';
import { credentialSecretRef, loginOf, type StoreSet } from '../stores/index.ts';
import type { LocalStore } from '../stores/local-store.ts';
import type { SecretRef, SecretVersion } from '../stores/types.ts';
import { secretCacheMaxAge } from './cache-hint.ts';
import { openDownstream } from './downstream.ts';
import type { Rotation } from './types.ts';

/** What a reader gets: the working login and where to use it. */
export interface SecretAnswer {
  username: string;
  password: string;
  version: string;
  rotatedAt: string;
  nextRotationAt: string | null;
  host: string;
  port: number;
  database: string | null;
  /** A key the downstream made (AWS IAM): its id, and its secret again under the AWS layout's name. */
  accessKeyId?: string;
  secretAccessKey?: string;
}

export type SecretRead =
  | {
      found: true;
      answer: SecretAnswer;
      /** How long the reader may cache it (Cache-Control max-age, seconds): see cache-hint.ts. */
      maxAgeSeconds: number;
    }
  /** No working version yet (first rotation running or failed): a 409 with this message. */
  | { found: false; message: string };

// KEYS[1] credential hash, KEYS[2] in-flight pointer; one node only: KEYS[3] the local store's hash of the secret,
// KEYS[4] the audit stream. ARGV[1] rotation record key without the id; one node only: ARGV[2] connection key
// without the id, ARGV[3] and ARGV[4] the success event around its version (AuditLog's auditEventTemplate).
// Returns spec, state, in-flight id, rotation record, connection, stages, current sealed, in-flight version sealed,
// and the id of the audit event when the script appended it.
const SNAPSHOT = `
local cred = redis.call('HMGET', KEYS[1], 'spec', 'state')
if not cred[1] or not cred[2] then return {} end
local inflight = redis.call('GET', KEYS[2])
local rot = false
if inflight then rot = redis.call('GET', ARGV[1] .. inflight) end
if #KEYS < 3 then return {cred[1], cred[2], inflight, rot} end
local spec = cjson.decode(cred[1])
local conn = redis.call('GET', ARGV[2] .. spec['connection'])
local stages, current, pending, vid = false, false, false, false
-- registry/spec-codec.ts: a spec without 'store' is on the local store.
if not spec['store'] or spec['store']['type'] == 'local' then
  stages = redis.call('HGET', KEYS[3], 'stages')
  if stages then
    vid = cjson.decode(stages)['current']
    if vid then current = redis.call('HGET', KEYS[3], 'v:' .. vid) end
  end
  if inflight then pending = redis.call('HGET', KEYS[3], 'v:' .. inflight) end
end
-- No rotation in flight and a current version: that is the version the read serves, so its audit event is appended
-- here, with the read (ARGV[3] .. version .. ARGV[4] is the event as AuditLog.append would store it).
local audited = false
if ARGV[3] ~= '' and not inflight and current then audited = redis.call('XADD', KEYS[4], '*', 'e', ARGV[3] .. vid .. ARGV[4]) end
return {cred[1], cred[2], inflight, rot, conn, stages, current, pending, audited}
`;

const SNAPSHOT_SHA = createHash('sha1').update(SNAPSHOT).digest('hex');

type Raw = string | null;

/** Everything a read decides on, read at one instant (the store part only on one node with the local store). */
interface Snapshot {
  credential: Credential;
  /** The script appended the read's success event (for the current version, the one a read without rotation serves). */
  audited: boolean;
  inflightId: string | null;
  rotation: Rotation | null;
  connection: Connection | null;
  /** Local store, one node: the raw hash fields; undefined when the store must be asked. */
  local?: { stages: Raw; current: Raw; pending: Raw };
}

interface Working {
  version: SecretVersion;
  rotating: boolean;
}

const successEvent = (credential: string, actor: string, version: string): AuditEventInput => ({
  actor,
  action: 'secret.read',
  outcome: 'success',
  credential,
  details: { version },
});

export class SecretReader {
  readonly #redis: RedisClient;
  readonly #keys: RedisKeys;
  readonly #stores: StoreSet;
  readonly #local: LocalStore | undefined;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #timeoutMs: number;
  readonly #maxAgeMs: number;

  constructor(deps: {
    redis: RedisClient;
    keys: RedisKeys;
    stores: StoreSet;
    /** The local store itself (not the StoreSet's wrapper): its values are read by the snapshot script. */
    local?: LocalStore;
    audit: AuditLog;
    clock: Clock;
    timeoutMs: number;
    /** KEYTURN_SECRET_MAX_AGE. */
    maxAgeMs: number;
  }) {
    this.#redis = deps.redis;
    this.#keys = deps.keys;
    this.#stores = deps.stores;
    this.#local = deps.local;
    this.#audit = deps.audit;
    this.#clock = deps.clock;
    this.#timeoutMs = deps.timeoutMs;
    this.#maxAgeMs = deps.maxAgeMs;
  }

  /**
   * The working secret of credential `id` for `actor`, audited (`secret.read`, success with the version or failure
   * with the reason) before it is returned. Throws NotFoundError for an unknown credential (not audited: nothing
   * was read).
   */
  async read(id: string, actor: string): Promise<SecretRead> {
    const snap = await this.#snapshot(id, actor);
    const { credential } = snap;
    const working = await this.#working(snap).catch(async (err: unknown) => {
      // Audited as read in the script, but the value could not be opened (a wrong master key, an altered value): the
      // reader got nothing, and the trail says so right after.
      if (snap.audited)
        await this.#audit.append({
          actor,
          action: 'secret.read',
          outcome: 'failure',
          credential: id,
          details: { reason: 'the version could not be opened' },
        });
      throw err;
    });
    if (!working) {
      const failed =
        !snap.inflightId && credential.state.lastOutcome === 'failed'
          ? credential.state.lastRotationId
          : undefined;
      await this.#audit.append({
        actor,
        action: 'secret.read',
        outcome: 'failure',
        credential: id,
        details: { reason: failed ? 'first rotation failed' : 'no version yet' },
      });
      const inflight = snap.inflightId;
      return {
        found: false,
        message: failed
          ? `Credential "${id}" has no working version: its first rotation ${failed} failed. GET /v1/rotations/${failed} says why; fix that, then POST /v1/credentials/${id}/rotate to try again`
          : inflight
            ? `Credential "${id}" has no working version yet: its first rotation ${inflight} has not finished (GET /v1/rotations/${inflight})`
            : `Credential "${id}" has no working version yet: POST /v1/credentials/${id}/rotate to make one`,
      };
    }
    const connection = snap.connection ?? (await this.#connection(credential.spec.connection));
    // The script appended the event when it could tell the version (no rotation in flight); else it is appended now.
    if (!snap.audited) await this.#audit.append(successEvent(id, actor, working.version.versionId));
    const { value } = working.version;
    return {
      found: true,
      answer: {
        username: value.username,
        password: value.password,
        version: working.version.versionId,
        rotatedAt: credential.state.rotatedAt ?? working.version.createdAt,
        nextRotationAt: credential.state.nextRotationAt ?? null,
        host: connection.host,
        port: connection.port,
        database: connection.database ?? null,
        ...(value.accessKeyId ? { accessKeyId: value.accessKeyId, secretAccessKey: value.password } : {}),
      },
      maxAgeSeconds: secretCacheMaxAge({
        rotating: working.rotating,
        nextRotationAt: credential.state.nextRotationAt,
        gracePeriod: credential.spec.gracePeriod,
        maxAgeMs: this.#maxAgeMs,
        now: this.#clock.now(),
      }),
    };
  }

  async #snapshot(id: string, actor: string): Promise<Snapshot> {
    const k = this.#keys;
    const oneNode = !k.clustered;
    const keys = [k.credential(id), k.inflight(id)];
    const args = [k.rotation(id, '')];
    if (oneNode) {
      keys.push(
        k.localSecret(credentialSecretRef({ id, store: { type: 'local' } }).name),
        this.#audit.streamKey,
      );
      // Without the local store's opener here the version is read again later: then the event is appended later too.
      const event = this.#local
        ? auditEventTemplate(successEvent(id, actor, ''), 'version')
        : { prefix: '', suffix: '' };
      args.push(k.connection(''), event.prefix, event.suffix);
    }
    const started = performance.now();
    // By its SHA: the script's text is not sent (nor hashed by Redis) on every read; once after a restart of Redis.
    const reply = (await this.#redis
      .evalsha(SNAPSHOT_SHA, keys.length, ...keys, ...args)
      .catch((err: Error) => {
        if (!/NOSCRIPT/.test(err.message)) throw err;
        return this.#redis.eval(SNAPSHOT, keys.length, ...keys, ...args);
      })) as Raw[];
    const [spec, state, inflightId = null, rotation = null] = reply;
    const audited = oneNode && typeof reply[8] === 'string';
    if (audited) this.#audit.appendedBy((performance.now() - started) / 1000);
    if (!spec || !state) throw new NotFoundError(`Credential "${id}" does not exist`);
    const credential = {
      spec: decodeSpec(id, spec),
      state: JSON.parse(state) as CredentialState,
    };
    const snap: Snapshot = {
      credential,
      audited,
      inflightId,
      rotation: rotation ? (JSON.parse(rotation) as Rotation) : null,
      connection: null,
    };
    if (oneNode) {
      const [, , , , connection = null, stages = null, current = null, pending = null] = reply;
      snap.connection = connection ? (JSON.parse(connection) as Connection) : null;
      if (credential.spec.store.type === 'local' && this.#local) snap.local = { stages, current, pending };
    }
    return snap;
  }

  /** The version to serve (I1), or null when the credential has none yet. */
  async #working(snap: Snapshot): Promise<Working | null> {
    const { credential, rotation } = snap;
    const rotating = snap.inflightId !== null;
    const ref = credentialSecretRef(credential.spec);
    const reading = this.#versions(snap, ref);
    let result: Working | null = null;
    if (rotation && credential.spec.strategy === 'single-user' && rotation.setStarted) {
      const pending = await reading.pending(rotation.id);
      if (pending) {
        if (this.#settled(rotation)) result = { version: pending, rotating: true };
        else {
          const current = await reading.current();
          if (!current) result = { version: pending, rotating: true };
          else {
            const works = await this.#probe(snap, pending).catch(() => false);
            result = { version: works ? pending : current, rotating: true };
          }
        }
      }
    }
    if (!result) {
      const current = await reading.current();
      result = current ? { version: current, rotating } : null;
    }
    if (snap.local) this.#local?.retainOpened(ref, [result?.version.versionId, snap.inflightId]);
    if (result) noteSecret(result.version.value.password);
    return result;
  }

  /** Reads of the current and an in-flight version: from the snapshot (local store, one node) or from the store. */
  #versions(snap: Snapshot, ref: SecretRef) {
    const local = snap.local;
    const store = this.#stores.get(snap.credential.spec.store);
    if (local && this.#local) {
      const opener = this.#local;
      const stagesOf = JSON.parse(local.stages ?? '{}') as { current?: string };
      return {
        current: async () =>
          stagesOf.current && local.current
            ? opener.openRaw(ref, stagesOf.current, local.stages, local.current)
            : null,
        pending: async (versionId: string) =>
          versionId === snap.inflightId && local.pending
            ? opener.openRaw(ref, versionId, local.stages, local.pending)
            : null,
      };
    }
    return {
      current: () => store.read(ref, { stage: 'current' }),
      pending: (versionId: string) => store.read(ref, { versionId }),
    };
  }

  /** The set step has landed and no rollback is under way: the pending password is the live one. */
  #settled(rotation: Rotation): boolean {
    return rotation.setDone && rotation.status !== 'rolling_back';
  }

  async #connection(id: string): Promise<Connection> {
    const raw = await this.#redis.get(this.#keys.connection(id));
    if (!raw) throw new NotFoundError(`Connection "${id}" does not exist`);
    return JSON.parse(raw) as Connection;
  }

  async #probe(snap: Snapshot, candidate: SecretVersion): Promise<boolean> {
    noteSecret(candidate.value.password);
    const connection = snap.connection ?? (await this.#connection(snap.credential.spec.connection));
    const { session } = await openDownstream(connection, this.#stores, this.#timeoutMs);
    try {
      const r = await session.authenticate(loginOf(candidate.value));
      return r.ok;
    } finally {
      await session.close();
    }
  }
}
