// The rotation engine on its own (issue 15): every row of the transition table in docs/architecture.md driven through
// RotationEngine, with an in-memory target and an in-memory secret store, on the machine's Redis for the records, the
// lease and the audit stream (the engine's own persistence, which a fake would not prove anything about). No queue,
// no HTTP, no downstream server: the whole file runs in well under a second of engine time.
//
// The target keeps users in a Map and fails on demand (unavailable, refused, a test that does not log in); the store
// keeps the staging labels (current, pending, previous) of the SecretStore contract. Each test checks the statuses the
// rotation went through, what the downstream and the store hold after it, and the audit event that ended it.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditOutbox } from '../../src/audit/outbox.ts';
import { createLogger } from '../../src/logging/logger.ts';
import type { RedisClient } from '../../src/redis/client.ts';
import type { RedisKeys } from '../../src/registry/keys.ts';
import { Registry } from '../../src/registry/registry.ts';
import type { Connection, CredentialSpec } from '../../src/registry/types.ts';
import { RotationEngine, type RotationHooks } from '../../src/rotation/engine.ts';
import { Failpoints } from '../../src/rotation/failpoints.ts';
import { LeaseManager } from '../../src/rotation/lease.ts';
import { RotationRepo } from '../../src/rotation/rotation-repo.ts';
import type { Rotation, RotationStatus } from '../../src/rotation/types.ts';
import { connectionAdminRef, credentialSecretRef, StoreSet } from '../../src/stores/index.ts';
import type {
  SecretDocument,
  SecretRef,
  SecretStore,
  SecretVersion,
  Stage,
  VersionSelector,
} from '../../src/stores/types.ts';
import {
  type AuthOutcome,
  type Login,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  TargetUnavailableError,
} from '../../src/targets/types.ts';
import { dropPrefix, testKeys, testRedis } from '../support/harness.ts';

type StoredVersion = { stages: Stage[]; value: SecretDocument; createdAt: string };

/** The SecretStore contract's staging model in a Map: versions by id, each with its labels. */
class MemoryStore implements SecretStore {
  readonly type = 'local' as const;
  readonly secrets = new Map<string, Map<string, StoredVersion>>();

  #versions(ref: SecretRef) {
    const versions = this.secrets.get(ref.name) ?? new Map<string, StoredVersion>();
    this.secrets.set(ref.name, versions);
    return versions;
  }

  #labelled(ref: SecretRef, stage: Stage): string | undefined {
    for (const [id, v] of this.#versions(ref)) if (v.stages.includes(stage)) return id;
    return undefined;
  }

  #unlabel(ref: SecretRef, stage: Stage): void {
    for (const v of this.#versions(ref).values()) v.stages = v.stages.filter((s) => s !== stage);
  }

  async describe(ref: SecretRef) {
    const versions = this.secrets.get(ref.name);
    if (!versions) return null;
    return Object.fromEntries([...versions].map(([id, v]) => [id, [...v.stages]]));
  }

  async read(ref: SecretRef, selector: VersionSelector): Promise<SecretVersion | null> {
    const id = 'stage' in selector ? this.#labelled(ref, selector.stage) : selector.versionId;
    const v = id ? this.#versions(ref).get(id) : undefined;
    return id && v
      ? { versionId: id, stages: [...v.stages], createdAt: v.createdAt, value: { ...v.value } }
      : null;
  }

  async putPending(ref: SecretRef, token: string, value: SecretDocument) {
    const versions = this.#versions(ref);
    if (versions.has(token)) return { created: false };
    this.#unlabel(ref, 'pending');
    versions.set(token, { stages: ['pending'], value: { ...value }, createdAt: new Date().toISOString() });
    return { created: true };
  }

  async promote(ref: SecretRef, token: string) {
    const version = this.#versions(ref).get(token);
    if (!version) throw new Error(`NOVERSION: no version ${token}`);
    if (version.stages.includes('current')) return { promoted: false };
    const previous = this.#labelled(ref, 'current');
    this.#unlabel(ref, 'previous');
    this.#unlabel(ref, 'current');
    if (previous) this.#versions(ref).get(previous)!.stages.push('previous');
    version.stages = ['current'];
    return previous ? { promoted: true, previousVersionId: previous } : { promoted: true };
  }

  async discardPending(ref: SecretRef, token: string) {
    const version = this.#versions(ref).get(token);
    if (version?.stages.includes('pending')) this.#versions(ref).delete(token);
  }

  async putCurrent(ref: SecretRef, token: string, value: SecretDocument) {
    this.#unlabel(ref, 'current');
    this.#versions(ref).set(token, {
      stages: ['current'],
      value: { ...value },
      createdAt: new Date().toISOString(),
    });
  }

  async remove(ref: SecretRef) {
    this.secrets.delete(ref.name);
  }

  async ping() {}
  async close() {}
}

/** A downstream of users in a Map, with faults queued per verb: each call takes the next one, if any. */
class MemoryDownstream {
  readonly users = new Map<string, string>();
  readonly faults: { updatePassword: Error[]; authenticate: Error[]; authenticateRejects: number } = {
    updatePassword: [],
    authenticate: [],
    authenticateRejects: 0,
  };
  readonly calls: string[] = [];

  readonly driver: TargetDriver = {
    type: 'memory',
    engine: 'memory',
    defaultPort: 1,
    open: async (_connection: Connection, admin: Login): Promise<TargetSession> => {
      if (this.users.get(admin.username) !== admin.password)
        throw new TargetRefusedError('admin login refused (memory target)');
      return this.#session();
    },
  };

  #session(): TargetSession {
    const next = (verb: 'updatePassword' | 'authenticate') => {
      const fault = this.faults[verb].shift();
      if (fault) throw fault;
    };
    return {
      checkAdmin: async () => [{ name: 'in memory', ok: true, message: 'the map may be written' }],
      authenticate: async (login: Login): Promise<AuthOutcome> => {
        this.calls.push(`authenticate ${login.username}`);
        next('authenticate');
        const known = this.users.get(login.username);
        if (known === login.password && this.faults.authenticateRejects > 0) {
          this.faults.authenticateRejects--;
          return { ok: false, reason: 'rejected', message: 'password authentication failed (injected)' };
        }
        return known === login.password
          ? { ok: true }
          : { ok: false, reason: 'rejected', message: 'password authentication failed' };
      },
      userExists: async (username) => this.users.has(username),
      createUser: async (username, password) => {
        const had = this.users.has(username);
        this.users.set(username, password);
        return had ? 'updated' : 'created';
      },
      updatePassword: async (username, password) => {
        this.calls.push(`updatePassword ${username}`);
        next('updatePassword');
        if (!this.users.has(username)) throw new TargetRefusedError(`no user ${username}`);
        this.users.set(username, password);
      },
      deleteUser: async (username) => {
        this.users.delete(username);
      },
      close: async () => {},
    };
  }
}

const prefix = `kt-test-engine-${randomBytes(4).toString('hex')}`;
let redis: RedisClient;
let keys: RedisKeys;
let registry: Registry;
let rotations: RotationRepo;
let store: MemoryStore;
let downstream: MemoryDownstream;
let engine: RotationEngine;
/** The engine's clock: real time moved by `offset` (a test moves it; each starts at 0). */
let offset = 0;
const clock = { now: () => Date.now() + offset };
const queued: string[] = [];
const rollbacks: string[] = [];

const hooks: RotationHooks = {
  enqueueRotation: async (id) => {
    queued.push(id);
  },
  promoteRotation: async () => {},
  enqueueRollback: async (id) => {
    rollbacks.push(id);
  },
  afterSuccess: async () => {},
  nextRotationAt: () => undefined,
};

const CONNECTION: Connection = {
  id: 'mem',
  type: 'memory',
  host: '127.0.0.1',
  port: 1,
  admin: { username: 'admin' },
  adminStore: { type: 'local' },
  labels: {},
  createdAt: '2026-12-04T00:00:00.000Z',
  updatedAt: '2026-12-04T00:00:00.000Z',
};
const doc = (username: string, password: string): SecretDocument => ({
  engine: 'memory',
  host: '127.0.0.1',
  port: 1,
  username,
  password,
});

beforeAll(async () => {
  redis = testRedis();
  keys = testKeys(prefix);
  registry = new Registry(redis, keys);
  rotations = new RotationRepo(redis, keys);
  await registry.createConnection(CONNECTION);
});

afterAll(async () => {
  redis?.disconnect();
  await dropPrefix(prefix);
});

let credentialId: string;
const OLD = 'old-password-0123456789';

beforeEach(async () => {
  offset = 0;
  store = new MemoryStore();
  downstream = new MemoryDownstream();
  downstream.users.set('admin', 'admin-password-0123456789');
  await store.putCurrent(connectionAdminRef(CONNECTION), 'a0', doc('admin', 'admin-password-0123456789'));
  engine = new RotationEngine({
    registry,
    rotations,
    stores: new StoreSet().add(store),
    audit: new AuditLog(redis, keys),
    outbox: new AuditOutbox(redis, keys),
    leases: new LeaseManager(redis, keys, 30_000),
    failpoints: new Failpoints(''),
    logger: createLogger({ level: 'silent', format: 'json' }),
    hooks,
    drivers: (type) => (type === 'memory' ? downstream.driver : undefined),
    clock,
    settings: { maxAttempts: 3, downstreamTimeoutMs: 5000, holder: 'engine-test' },
  });
  credentialId = `cred-${randomBytes(4).toString('hex')}`;
  const username = `app_${credentialId.slice(5)}`;
  downstream.users.set(username, OLD);
  const spec: CredentialSpec = {
    id: credentialId,
    connection: CONNECTION.id,
    username,
    strategy: 'single-user',
    schedule: { every: '30d' },
    store: { type: 'local' },
    password: { length: 24, charset: 'alphanumeric' },
    labels: {},
    createdAt: '2026-12-04T00:00:00.000Z',
    updatedAt: '2026-12-04T00:00:00.000Z',
  };
  await store.putCurrent(credentialSecretRef(spec), 'v0', doc(username, OLD));
  await registry.createCredential(spec, {
    status: 'active',
    version: 'v0',
    activeUsername: username,
    failures: 0,
  });
});

const usernameOf = () => `app_${credentialId.slice(5)}`;

async function requested(): Promise<Rotation> {
  const asked = await engine.request(credentialId, 'manual', 'tester');
  expect(asked?.created).toBe(true);
  expect(asked!.rotation.status).toBe('queued');
  return asked!.rotation;
}

async function statusOf(id: string): Promise<RotationStatus | undefined> {
  return (await rotations.find(id))?.status;
}

/** What a worker killed after saving `running` leaves: the record says running, one attempt made, no lease held. */
async function leftRunning(rotation: Rotation): Promise<void> {
  const crashed: Rotation = { ...rotation, status: 'running', attempts: 1, startedAt: rotation.createdAt };
  await redis.set(keys.rotation(rotation.credentialId, rotation.id), JSON.stringify(crashed));
}

async function lastAudit(): Promise<Record<string, unknown>> {
  const [[, fields]] = (await redis.xrevrange(keys.audit(), '+', '-', 'COUNT', 1)) as [[string, string[]]];
  return JSON.parse(fields[fields.indexOf('e') + 1] ?? fields[1]!);
}

async function credentialGone(): Promise<void> {
  await redis.del(keys.credential(credentialId));
}

describe('the rotation engine, every transition, in memory', () => {
  it('queued → running → succeeded: the downstream and the store hold the new password, the old one is previous', async () => {
    const rotation = await requested();
    expect(queued).toContain(rotation.id);
    const result = await engine.run(rotation.id);
    expect(result.outcome).toBe('done');
    expect(result.rotation?.status).toBe('succeeded');
    const current = await store.read(credentialSecretRef({ id: credentialId, store: { type: 'local' } }), {
      stage: 'current',
    });
    expect(current?.versionId).toBe(rotation.id);
    expect(downstream.users.get(usernameOf())).toBe(current?.value.password);
    expect(current?.value.password).not.toBe(OLD);
    expect(await store.describe(credentialSecretRef({ id: credentialId, store: { type: 'local' } }))).toEqual(
      {
        v0: ['previous'],
        [rotation.id]: ['current'],
      },
    );
    expect((await registry.findCredential(credentialId))?.state).toMatchObject({
      status: 'active',
      version: rotation.id,
      lastOutcome: 'succeeded',
    });
    expect(await lastAudit()).toMatchObject({ action: 'rotation.succeeded', rotation: rotation.id });
  });

  it('queued → failed (abandoned): the credential was deleted before a worker took the rotation', async () => {
    const rotation = await requested();
    await credentialGone();
    const result = await engine.run(rotation.id);
    expect(result.rotation).toMatchObject({
      status: 'failed',
      error: { message: 'the credential was deleted while its rotation was queued' },
    });
    expect(await statusOf(rotation.id)).toBe('failed');
    expect(downstream.calls).toEqual([]);
  });

  it('running → retrying → running → succeeded: an unavailable downstream on set, then back', async () => {
    const rotation = await requested();
    downstream.faults.updatePassword.push(new TargetUnavailableError('connection reset (injected)'));
    const first = await engine.run(rotation.id);
    expect(first.outcome).toBe('retry');
    expect(await rotations.find(rotation.id)).toMatchObject({ status: 'retrying', step: 'set', attempts: 1 });
    expect(downstream.users.get(usernameOf())).toBe(OLD);
    const second = await engine.run(rotation.id);
    expect(second.rotation).toMatchObject({ status: 'succeeded', attempts: 2 });
    expect(downstream.users.get(usernameOf())).not.toBe(OLD);
  });

  it('a failed test retries from set (running → retrying with step set)', async () => {
    const rotation = await requested();
    downstream.faults.authenticateRejects = 1;
    const first = await engine.run(rotation.id);
    expect(first.outcome).toBe('retry');
    expect(await rotations.find(rotation.id)).toMatchObject({ status: 'retrying', step: 'set' });
    expect((await engine.run(rotation.id)).rotation?.status).toBe('succeeded');
  });

  it('running → rolling_back → failed: a refusal rolls back at once, the old password works again', async () => {
    const rotation = await requested();
    // The change lands, then the test's login is refused for good: set was sent, so the old password is put back.
    downstream.faults.authenticate.push(new TargetRefusedError('account locked (injected)'));
    const result = await engine.run(rotation.id);
    expect(result.rotation).toMatchObject({
      status: 'failed',
      attempts: 1,
      rollback: { outcome: 'done' },
    });
    expect(downstream.users.get(usernameOf())).toBe(OLD);
    const ref = credentialSecretRef({ id: credentialId, store: { type: 'local' } });
    expect(await store.describe(ref)).toEqual({ v0: ['current'] });
    expect(await lastAudit()).toMatchObject({ action: 'rotation.failed', rotation: rotation.id });
    expect((await registry.findCredential(credentialId))?.state).toMatchObject({
      lastOutcome: 'failed',
      failures: 1,
    });
  });

  it('the last attempt rolls back too (attempts exhausted, not a refusal)', async () => {
    const rotation = await requested();
    for (let i = 0; i < 3; i++)
      downstream.faults.updatePassword.push(new TargetUnavailableError('timeout (injected)'));
    expect((await engine.run(rotation.id)).outcome).toBe('retry');
    expect((await engine.run(rotation.id)).outcome).toBe('retry');
    const last = await engine.run(rotation.id);
    expect(last.rotation).toMatchObject({ status: 'failed', attempts: 3, rollback: { outcome: 'done' } });
    expect(downstream.users.get(usernameOf())).toBe(OLD);
  });

  it('rolling_back → rolling_back → failed: a downstream away during the rollback keeps it in flight until it answers', async () => {
    const rotation = await requested();
    // The test's login is refused, and the restore that follows finds the downstream away.
    downstream.faults.authenticate.push(new TargetRefusedError('account locked (injected)'));
    let restores = 0;
    const real = downstream.driver.open;
    (downstream.driver as { open: TargetDriver['open'] }).open = async (connection, admin, options) => {
      const session = await real(connection, admin, options);
      const update = session.updatePassword.bind(session);
      session.updatePassword = async (username, password) => {
        if (password === OLD && restores++ === 0)
          throw new TargetUnavailableError('connection refused (injected)');
        return update(username, password);
      };
      return session;
    };
    const result = await engine.run(rotation.id);
    expect(result.rotation).toMatchObject({ status: 'rolling_back', rollback: { outcome: 'pending' } });
    expect(rollbacks).toContain(rotation.id);
    expect(await statusOf(rotation.id)).toBe('rolling_back');
    expect(downstream.users.get(usernameOf())).not.toBe(OLD);
    // A new request finds it still in flight (I3): no second rotation starts meanwhile.
    expect((await engine.request(credentialId, 'manual', 'tester'))?.created).toBe(false);
    const retried = await engine.rollback(rotation.id);
    expect(retried.rotation).toMatchObject({ status: 'failed', rollback: { outcome: 'done' } });
    expect(downstream.users.get(usernameOf())).toBe(OLD);
  });

  it('running → running: a worker resumes a rotation whose worker died after saving running', async () => {
    const rotation = await requested();
    await leftRunning(rotation);
    const result = await engine.run(rotation.id);
    expect(result.rotation).toMatchObject({ status: 'succeeded', attempts: 2 });
  });

  it('running → failed (abandoned): the credential was deleted while its worker was dead', async () => {
    const rotation = await requested();
    await leftRunning(rotation);
    await credentialGone();
    expect((await engine.run(rotation.id)).rotation).toMatchObject({ status: 'failed' });
    expect(await statusOf(rotation.id)).toBe('failed');
  });

  it('retrying → failed (abandoned): the credential was deleted during the backoff', async () => {
    const rotation = await requested();
    downstream.faults.updatePassword.push(new TargetUnavailableError('connection reset (injected)'));
    expect((await engine.run(rotation.id)).outcome).toBe('retry');
    await credentialGone();
    expect((await engine.run(rotation.id)).rotation).toMatchObject({ status: 'failed' });
    expect(await statusOf(rotation.id)).toBe('failed');
  });

  it('rolling_back → failed (abandoned): the credential was deleted while its rollback waited', async () => {
    const rotation = await requested();
    const rolling: Rotation = { ...rotation, status: 'rolling_back', attempts: 1, setStarted: true };
    await redis.set(keys.rotation(rotation.credentialId, rotation.id), JSON.stringify(rolling));
    await credentialGone();
    expect((await engine.rollback(rotation.id)).rotation).toMatchObject({
      status: 'failed',
      error: { message: 'the credential was deleted during rollback' },
    });
  });

  it('an ended rotation moves nowhere: running it again changes nothing', async () => {
    const rotation = await requested();
    expect((await engine.run(rotation.id)).rotation?.status).toBe('succeeded');
    const calls = downstream.calls.length;
    expect((await engine.run(rotation.id)).rotation?.status).toBe('succeeded');
    expect((await engine.rollback(rotation.id)).rotation?.status).toBe('succeeded');
    expect(downstream.calls.length).toBe(calls);
  });

  it("stamps the records with the runtime's clock: rotatedAt, the rotation's start and end", async () => {
    offset = 40 * 86_400_000;
    const rotation = await requested();
    const before = clock.now();
    const done = (await engine.run(rotation.id)).rotation!;
    const after = clock.now();
    for (const at of [done.startedAt!, done.finishedAt!, done.updatedAt]) {
      expect(Date.parse(at)).toBeGreaterThanOrEqual(before);
      expect(Date.parse(at)).toBeLessThanOrEqual(after);
    }
    const rotatedAt = Date.parse((await registry.findCredential(credentialId))!.state.rotatedAt!);
    expect(rotatedAt).toBeGreaterThanOrEqual(before);
    expect(rotatedAt).toBeLessThanOrEqual(after);
  });
});
