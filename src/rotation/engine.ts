// The rotation engine: the four-step protocol (create, set, test, finish) over a SecretStore and a Target,
// with its state persisted after every step so that any worker can resume it (I4), the new secret written
// to the store before it goes downstream (I2), one rotation per credential (I3, rotation-repo.ts), and every
// error scrubbed before it is stored, logged or returned (I5).
//
// Strategies differ only in which user a rotation changes and how that user is changed; the steps are the
// same. Targets differ only behind the Target interface; nothing here knows PostgreSQL from anything else.
import { randomUUID } from 'node:crypto';
import type { AuditEventInput, AuditLog } from '../audit/audit-log.ts';
import { auditAppendOp } from '../audit/audit-log.ts';
import type { AuditOutbox } from '../audit/outbox.ts';
import { type Clock, systemClock } from '../clock.ts';
import { generatePassword } from '../crypto/password.ts';
import { scrubError } from '../crypto/scrub.ts';
import type { Logger } from '../logging/logger.ts';
import type { FencedOp } from '../redis/fenced-op.ts';
import { UnprocessableError } from '../registry/errors.ts';
import type { RedisKeys } from '../registry/keys.ts';
import type { Registry } from '../registry/registry.ts';
import {
  adminConnectionOf,
  type Connection,
  type Credential,
  type CredentialSpec,
  type CredentialState,
} from '../registry/types.ts';
import { credentialSecretRef, loginOf, rotationDocument, type StoreSet } from '../stores/index.ts';
import {
  type SecretRef,
  type SecretStore,
  type SecretVersion,
  StoreNotConfiguredError,
  StoreRefusedError,
} from '../stores/types.ts';
import { targetDriver } from '../targets/index.ts';
import {
  type AuthOutcome,
  type Login,
  type MintedSecrets,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  wasNothingSent,
} from '../targets/types.ts';
import { type Downstream, openDownstream } from './downstream.ts';
import type { Failpoints } from './failpoints.ts';
import { type ConnectionLock, type Lease, LeaseLostError, type LeaseManager } from './lease.ts';
import type { RotationRepo } from './rotation-repo.ts';
import { alternateUsername, cloneLabel, cloneUsername, labelledFor } from './strategies.ts';
import {
  moveToAbandoned,
  moveToRetrying,
  moveToRollbackPending,
  moveToRolledBack,
  moveToRollingBack,
  moveToRunning,
  moveToSucceeded,
} from './transitions.ts';
import { type Rotation, type RotationStep, type RotationTrigger, TERMINAL } from './types.ts';

/** What the engine needs from the queueing layer; kept abstract so the engine does not depend on BullMQ. */
export interface RotationHooks {
  enqueueRotation(rotationId: string, delayMs?: number): Promise<void>;
  /** Runs a queued rotation's job now, if it is waiting out a delay (rotate-now taking over a jittered one). */
  promoteRotation(rotationId: string): Promise<void>;
  enqueueRollback(rotationId: string): Promise<void>;
  /** After a successful rotation: re-arm the schedule, plan the grace-period revocation. */
  afterSuccess(credential: Credential, rotation: Rotation): Promise<void>;
  /** Next scheduled rotation time, for the credential's state. */
  nextRotationAt(spec: CredentialSpec, from: Date): Date | undefined;
}

/** How a rotation ended, for observers such as the metrics: types and a duration only, never an id or a secret. */
export interface RotationEnd {
  /** The connection type of the credential (postgres, mysql, redis, webhook), or "unknown" once it is gone. */
  target: string;
  outcome: 'succeeded' | 'failed';
  /** From the rotation's first start to its end, retries and backoff included. */
  seconds: number;
}

/** Told about every rotation that ends; kept abstract so the engine does not depend on a metrics library. */
export interface RotationObserver {
  rotationEnded(end: RotationEnd): void;
}

/**
 * Told when a version becomes the one a secret read returns, after the write that made it so committed: the sync
 * layer (src/sync) pushes it to Kubernetes Secrets. Kept abstract so that the engine does not depend on it; a failure
 * here is logged and never touches the rotation (the downstream already works with the version).
 */
export interface SecretObserver {
  secretChanged(credential: Credential, versionId: string): Promise<void>;
}

export interface EngineSettings {
  maxAttempts: number;
  downstreamTimeoutMs: number;
  /** Identifies this worker in lease tokens and logs. */
  holder: string;
}

export interface RunResult {
  /** busy: another worker holds the credential's lease; try again shortly. */
  outcome: 'done' | 'busy' | 'retry';
  rotation?: Rotation;
}

/** A failure that retrying cannot fix: the rotation rolls back at once. */
class PermanentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PermanentError';
  }
}

interface Context {
  credential: Credential;
  connection: Connection;
  store: SecretStore;
  ref: SecretRef;
  target: TargetSession;
  driver: TargetDriver;
  /**
   * The credential is the connection's admin subject (adminSubjectId): its user is the admin itself, so whether a
   * password works is asked as an admin session (checkAdmin), not as a service's login.
   */
  admin: boolean;
  /** The driver's engine name, written into stored documents. */
  engine: string;
  /** The downstream service owns its users (webhook): whose a clone is cannot be checked. */
  serviceOwnsUsers: boolean;
  /** Every secret value this run has seen, for scrubbing. */
  secrets: Set<string>;
}

/** The connection lock a credential's work holds (see ConnectionLock): exclusive for the connection's admin subject. */
function lockOf(spec: CredentialSpec): ConnectionLock {
  return {
    connection: spec.connection,
    mode: adminConnectionOf(spec.id) === undefined ? 'shared' : 'exclusive',
  };
}

/** How often a connection is checked for refusing a wrong password (see #checkPasswordsChecked). */
const PASSWORD_CHECK_EVERY_MS = 10 * 60_000;

/** What to do about a `<user>_clone` that is not Keyturn's, in the message of the rotation that left it alone. */
const FOREIGN_CLONE_ADVICE =
  'If it is someone else\'s, rename it (or drop it) and rotate again; if it is meant to be this pair\'s second user, delete the credential and register it again with "adoptClone": true';

/** Whether the downstream labels the users Keyturn makes (then the label, not the registry, says whose a clone is). */
const labelsUsers = (ctx: Context): boolean =>
  !ctx.serviceOwnsUsers && Boolean(ctx.target.labelOf && ctx.target.setLabel);

export class RotationEngine {
  readonly #registry: Registry;
  readonly #rotations: RotationRepo;
  readonly #stores: StoreSet;
  readonly #audit: AuditLog;
  readonly #keys: RedisKeys;
  readonly #outbox: AuditOutbox;
  readonly #leases: LeaseManager;
  readonly #failpoints: Failpoints;
  readonly #log: Logger;
  readonly #settings: EngineSettings;
  readonly #observer: RotationObserver | undefined;
  readonly #hooks: RotationHooks;
  readonly #secretObserver: SecretObserver | undefined;
  readonly #drivers: (type: string) => TargetDriver | undefined;
  /** The time records are stamped with (rotatedAt is what policy judges a credential's age by). */
  readonly #clock: Clock;
  /** Per connection: when this process last saw whether it refuses a wrong password, and whether it did. */
  readonly #passwordsChecked = new Map<string, { at: number; checks: boolean }>();

  constructor(deps: {
    registry: Registry;
    rotations: RotationRepo;
    stores: StoreSet;
    audit: AuditLog;
    /** Where the audit events of fenced writes go first in a Redis Cluster (audit/outbox.ts). */
    outbox: AuditOutbox;
    leases: LeaseManager;
    failpoints: Failpoints;
    logger: Logger;
    settings: EngineSettings;
    /** Queueing and scheduling (scheduling/queues.ts): the engine does not import BullMQ. */
    hooks: RotationHooks;
    observer?: RotationObserver;
    /** Told when a version starts to work (sync/ pushes it to Kubernetes Secrets). */
    secretObserver?: SecretObserver;
    /** The target drivers by connection type: targets/index.ts's map, unless a test brings an in-memory one. */
    drivers?: (type: string) => TargetDriver | undefined;
    /** The runtime's clock (tests move it); the system clock by default. */
    clock?: Clock;
  }) {
    this.#registry = deps.registry;
    this.#rotations = deps.rotations;
    this.#keys = deps.registry.keys;
    this.#stores = deps.stores;
    this.#audit = deps.audit;
    this.#outbox = deps.outbox;
    this.#leases = deps.leases;
    this.#failpoints = deps.failpoints;
    this.#log = deps.logger.child({ component: 'rotation' });
    this.#settings = deps.settings;
    this.#observer = deps.observer;
    this.#hooks = deps.hooks;
    this.#secretObserver = deps.secretObserver;
    this.#drivers = deps.drivers ?? targetDriver;
    this.#clock = deps.clock ?? systemClock;
  }

  #nowIso(): string {
    return new Date(this.#clock.now()).toISOString();
  }

  // Requesting

  /**
   * Starts a rotation of a credential, or returns the one in flight (I3). The returned rotation is queued;
   * its job carries only the rotation id.
   */
  async request(
    credentialId: string,
    trigger: RotationTrigger,
    actor: string,
    options: { delayMs?: number } = {},
  ): Promise<{ rotation: Rotation; created: boolean } | null> {
    const now = this.#nowIso();
    const rotation: Rotation = {
      id: randomUUID(),
      credentialId,
      trigger,
      actor,
      status: 'queued',
      step: 'create',
      setStarted: false,
      setDone: false,
      attempts: 0,
      maxAttempts: this.#settings.maxAttempts,
      steps: [],
      createdAt: now,
      updatedAt: now,
      ...(options.delayMs ? { notBefore: new Date(Date.parse(now) + options.delayMs).toISOString() } : {}),
    };
    const result = await this.#rotations.create(rotation);
    if (result.outcome === 'missing') return null;
    if (result.outcome === 'inflight') {
      const waiting = result.rotation;
      if (trigger !== 'manual' || !waiting.notBefore || Date.parse(waiting.notBefore) <= this.#clock.now()) {
        return { rotation: waiting, created: false };
      }
      // Rotate-now on a scheduled rotation still waiting out its jitter: that one starts now, rather than the request
      // waiting (finding 8 of issue 11). Only one that has not started; a running one is returned as it is.
      const started = await this.#rotations.startNow(waiting.id);
      if (!started) return { rotation: (await this.#rotations.find(waiting.id)) ?? waiting, created: false };
      await this.#hooks.promoteRotation(waiting.id);
      await this.#audit.append({
        actor,
        action: 'rotation.requested',
        outcome: 'success',
        credential: credentialId,
        rotation: waiting.id,
        details: { trigger, tookOver: 'scheduled rotation waiting out its jitter' },
      });
      return { rotation: started, created: false };
    }
    await this.#audit.append({
      actor,
      action: 'rotation.requested',
      outcome: 'success',
      credential: credentialId,
      rotation: rotation.id,
      details: { trigger },
    });
    await this.#hooks.enqueueRotation(rotation.id, options.delayMs);
    return { rotation, created: true };
  }

  // Running

  /**
   * Runs a rotation from wherever its record says it is. Returns 'retry' after recording a failure that
   * another attempt may fix (the caller re-queues it with backoff); on the last attempt, or on a failure
   * retrying cannot fix, it rolls back and ends the rotation as failed.
   */
  async run(rotationId: string): Promise<RunResult> {
    const rotation = await this.#rotations.find(rotationId);
    if (!rotation || TERMINAL.has(rotation.status))
      return { outcome: 'done', ...(rotation ? { rotation } : {}) };
    if (rotation.status === 'rolling_back') return this.rollback(rotationId);

    const hint = await this.#registry.findCredential(rotation.credentialId);
    if (!hint) {
      await this.#abandon(rotation, 'the credential was deleted while its rotation was queued');
      return { outcome: 'done', rotation };
    }
    // A worker that took the job but has not started: a DELETE here cancels the rotation (tests widen this window).
    await this.#failpoints.hit('before-lease');
    const lease = await this.#leases.tryAcquire(
      rotation.credentialId,
      this.#settings.holder,
      lockOf(hint.spec),
    );
    if (!lease) return { outcome: 'busy', rotation };

    let ctx: Context | undefined;
    // What is read before the lease is only a hint: the record and the credential are read again under it.
    let credential: Credential | null = null;
    try {
      // Read again under the lease: a DELETE before it was taken may have cancelled this rotation or removed the
      // credential, a grace-period revocation may have changed its state. From here on a DELETE sees the lease and
      // is refused, so nothing is changed for a deleted credential, and no other worker writes its state.
      const current = await this.#rotations.find(rotationId);
      if (!current || TERMINAL.has(current.status))
        return { outcome: 'done', ...(current ? { rotation: current } : {}) };
      credential = await this.#registry.findCredential(rotation.credentialId);
      if (!credential) {
        await this.#abandon(current, 'the credential was deleted while its rotation was queued');
        return { outcome: 'done', rotation: current };
      }
      Object.assign(rotation, current);
      // Another worker moved it to rolling_back after the read above: its rollback, never its steps, goes on (should
      // that fail, #onFailure refuses to move a rolling_back rotation anywhere else, and the job is retried).
      if (current.status === 'rolling_back')
        return await this.#rollbackWith(lease, rotation, credential, undefined);
      moveToRunning(rotation, this.#nowIso());
      await this.#save(lease, rotation);
      ctx = await this.#context(credential, rotation);
      await this.#steps(lease, rotation, ctx);
      return { outcome: 'done', rotation };
    } catch (err) {
      if (err instanceof LeaseLostError) {
        this.#log.warn({ rotation: rotation.id, credential: rotation.credentialId }, err.message);
        return { outcome: 'busy', rotation };
      }
      // Reading under the lease failed (Redis): nothing was done yet, and the job is retried.
      if (!credential) throw err;
      return await this.#onFailure(lease, rotation, credential, ctx, err);
    } finally {
      await ctx?.target.close().catch(() => {});
      await lease.release();
    }
  }

  async #context(credential: Credential, rotation?: Rotation): Promise<Context> {
    const connection = await this.#registry.findConnection(credential.spec.connection);
    if (!connection) throw new PermanentError(`connection "${credential.spec.connection}" no longer exists`);
    const store = this.#stores.get(credential.spec.store);
    const ref = credentialSecretRef(credential.spec);
    const admin = adminConnectionOf(credential.spec.id) !== undefined;
    // An admin rotation resumed after its set step: the admin's old password may be refused already (below).
    const resumedAdmin = admin && rotation?.setStarted === true;
    let downstream: Downstream | undefined;
    let refused: unknown;
    try {
      downstream = await openDownstream(
        connection,
        this.#stores,
        this.#settings.downstreamTimeoutMs,
        this.#drivers,
      );
    } catch (err) {
      if (err instanceof UnprocessableError || err instanceof StoreNotConfiguredError)
        throw new PermanentError(err.message);
      // Some drivers log in as they open (MySQL asks the server its version).
      if (!(resumedAdmin && err instanceof TargetRefusedError && wasNothingSent(err))) throw err;
      refused = err;
    }
    const secrets = new Set<string>(downstream ? [downstream.admin.password] : []);
    if (resumedAdmin && rotation) {
      downstream = await this.#workingAdmin(downstream, connection, rotation, store, ref, secrets);
    }
    // Neither the current nor a pending admin password: the refusal stands.
    if (!downstream) throw refused;
    return {
      credential,
      connection,
      store,
      ref,
      target: downstream.session,
      driver: downstream.driver,
      admin,
      engine: downstream.driver.engine,
      serviceOwnsUsers: downstream.driver.serviceOwnsUsers === true,
      secrets,
    };
  }

  /**
   * An admin rotation resumed after its set step may have changed the admin's password downstream already: the store's
   * current version (the old password) then no longer logs in, and the session is opened again with the pending one.
   * Only a refused admin login (nothing sent) switches; anything else is the attempt's failure as usual.
   */
  async #workingAdmin(
    downstream: Downstream | undefined,
    connection: Connection,
    rotation: Rotation,
    store: SecretStore,
    ref: SecretRef,
    secrets: Set<string>,
  ): Promise<Downstream | undefined> {
    const pending = await store.read(ref, { versionId: rotation.id });
    if (!pending) return downstream;
    secrets.add(pending.value.password);
    if (downstream) {
      try {
        await downstream.session.checkAdmin();
        return downstream;
      } catch (err) {
        if (!(err instanceof TargetRefusedError && wasNothingSent(err))) throw err;
      }
      await downstream.session.close().catch(() => {});
    }
    const driver = this.#drivers(connection.type);
    if (!driver) throw new PermanentError(`no target driver for connection type "${connection.type}"`);
    const admin = { username: pending.value.username, password: pending.value.password };
    const session = await driver.open(connection, admin, { timeoutMs: this.#settings.downstreamTimeoutMs });
    return { driver, admin, session };
  }

  /**
   * Whether `login` logs in: a service's login for a credential; for the admin subject, an admin session that passes
   * checkAdmin (an admin may have no right to log in as a service does: a RabbitMQ administrator without a vhost).
   */
  async #works(ctx: Context, login: Login): Promise<AuthOutcome> {
    if (!ctx.admin) return ctx.target.authenticate(login);
    let session: TargetSession | undefined;
    try {
      // Inside the try: some drivers log in as they open (MySQL).
      session = await ctx.driver.open(ctx.connection, login, {
        timeoutMs: this.#settings.downstreamTimeoutMs,
      });
      const failed = (await session.checkAdmin()).filter((c) => !c.ok);
      if (failed.length === 0) return { ok: true };
      return {
        ok: false,
        reason: 'rejected',
        message: `the admin logs in but lacks ${failed.map((c) => c.name).join(', ')}`,
      };
    } catch (err) {
      if (err instanceof TargetRefusedError && wasNothingSent(err)) {
        return { ok: false, reason: 'rejected', message: `the admin login "${login.username}" was refused` };
      }
      throw err;
    } finally {
      await session?.close().catch(() => {});
    }
  }

  async #steps(lease: Lease, rotation: Rotation, ctx: Context): Promise<void> {
    const order: RotationStep[] = ['create', 'set', 'test', 'finish'];
    for (let i = order.indexOf(rotation.step); i < order.length; i++) {
      const step = order[i]!;
      rotation.step = step;
      await this.#failpoints.hit(`before-${step}`);
      // A minted secret's set step also waits for the downstream to accept the new key (#settle).
      const settleMs = step === 'set' ? (ctx.target.mintedSecrets?.settleMs ?? 0) : 0;
      const outcome = await this.#bounded(step, this.#runStep(step, lease, rotation, ctx), settleMs);
      await this.#failpoints.hit(`after-${step}`);
      if (step === 'finish') return; // #finish committed the terminal record itself
      rotation.steps.push({ step, outcome, attempt: rotation.attempts, at: this.#nowIso() });
      rotation.step = order[i + 1]!;
      rotation.updatedAt = this.#nowIso();
      // The step's record and its audit event land together.
      await this.#commit(lease, [
        this.#rotations.saveOp(rotation),
        this.#auditOp({
          actor: rotation.actor,
          action: 'rotation.step',
          outcome: 'success',
          credential: rotation.credentialId,
          rotation: rotation.id,
          details: { step, result: outcome, attempt: rotation.attempts },
        }),
      ]);
      // Single-user: from the moment set landed, reads return the pending version (I1); so does the Secret.
      if (step === 'set' && ctx.credential.spec.strategy === 'single-user') {
        await this.#secretChanged(ctx.credential, rotation.id);
      }
    }
  }

  #runStep(
    step: RotationStep,
    lease: Lease,
    rotation: Rotation,
    ctx: Context,
  ): Promise<'succeeded' | 'skipped'> {
    switch (step) {
      case 'create':
        return this.#create(rotation, ctx);
      case 'set':
        return this.#set(lease, rotation, ctx);
      case 'test':
        return this.#test(rotation, ctx);
      case 'finish':
        return this.#finish(lease, rotation, ctx);
    }
  }

  /** Step 1: the new secret, written to the store as pending under the rotation id before anything else. */
  async #create(rotation: Rotation, ctx: Context): Promise<'succeeded' | 'skipped'> {
    const existing = await ctx.store.read(ctx.ref, { versionId: rotation.id });
    if (existing) {
      // A previous attempt wrote it: reuse it, never generate twice.
      ctx.secrets.add(existing.value.password);
      // putPending again changes nothing (idempotent) but returns only once the version is durable: the attempt that
      // wrote it may have failed waiting for the local store's replicas (durable write-ahead), and set comes next.
      await ctx.store.putPending(ctx.ref, rotation.id, existing.value);
      rotation.username = existing.value.username;
      return 'skipped';
    }
    const { spec, state } = ctx.credential;
    if (ctx.target.mintedSecrets) {
      // Registration refuses both (TargetDriver.registration, adminRotationRefused); a record from before is refused here.
      if (spec.strategy !== 'single-user' || ctx.admin) {
        throw new PermanentError(
          `connection "${ctx.connection.id}" (${ctx.connection.type}) makes its secrets itself: only a credential with strategy "single-user" rotates there, and not the connection's admin`,
        );
      }
      // Nothing to generate: the downstream makes the secret in the set step, which stores it as soon as it exists.
      rotation.username = spec.username;
      return 'skipped';
    }
    const username =
      spec.strategy === 'single-user'
        ? spec.username
        : alternateUsername(spec.username, state.activeUsername ?? spec.username);
    const password = generatePassword(spec.password);
    ctx.secrets.add(password);
    const document = rotationDocument(ctx.connection, ctx.engine, { username, password }, spec.strategy);
    await ctx.store.putPending(ctx.ref, rotation.id, document);
    rotation.username = username;
    await this.#failpoints.hit('create-after-store-write');
    return 'succeeded';
  }

  async #pending(rotation: Rotation, ctx: Context): Promise<SecretVersion> {
    const pending = await ctx.store.read(ctx.ref, { versionId: rotation.id });
    if (!pending) {
      // Only an operator deleting store versions by hand gets here; the rotation cannot know what it set.
      throw new PermanentError(
        `the pending version ${rotation.id} disappeared from the ${ctx.store.type} store`,
      );
    }
    ctx.secrets.add(pending.value.password);
    // The AWS templates' guard, for every store: a version that is neither pending nor current was taken over by
    // someone else (another rotator moved the label); acting on it could set a password no reader will get.
    if (!pending.stages.includes('pending') && !pending.stages.includes('current')) {
      throw new PermanentError(
        `version ${rotation.id} is no longer pending in the ${ctx.store.type} store: another process moved its label`,
      );
    }
    return pending;
  }

  /**
   * Before alternating-users changes the clone: it must be Keyturn's, made (or adopted) for this credential. Where the
   * downstream labels users (PostgreSQL, MySQL 8.0.21+) the label on the clone says so; elsewhere (MariaDB, Redis) the
   * registry's record of the clones Keyturn made. A clone that is not Keyturn's (made by someone else since the
   * registration, or after Keyturn's was dropped) is left alone: the rotation fails before anything downstream
   * changes, and says what to do. A clone that does not exist yet is created `exclusive`: one that appears meanwhile
   * is refused by the target, not taken over. The registry records a clone only once it exists (see #recordClone),
   * never ahead: a record left by a creation that failed would vouch for a user someone else makes later.
   */
  async #claimClone(clone: string, ctx: Context): Promise<{ exclusive: boolean; label?: string }> {
    const { spec, state } = ctx.credential;
    if (ctx.serviceOwnsUsers) return { exclusive: false };
    const madeFor = await this.#registry.madeFor(ctx.connection.id, clone);
    const refuse = (why: string) =>
      new PermanentError(
        `user "${clone}" exists on connection "${ctx.connection.id}" and ${why}, so its password was not changed and nothing downstream was. ${FOREIGN_CLONE_ADVICE}`,
      );
    if (!labelsUsers(ctx)) {
      if (madeFor === spec.id) return { exclusive: false };
      if (await ctx.target.userExists(clone)) {
        throw refuse(
          `Keyturn did not make it for this credential${madeFor ? ` (it made it for credential "${madeFor}")` : ''}`,
        );
      }
      return { exclusive: true };
    }
    const label = cloneLabel(spec.id);
    const found = await ctx.target.labelOf!(clone);
    if (!found) return { exclusive: true, label };
    if (found.label === label) return { exclusive: false, label };
    const other = labelledFor(found.label);
    if (other !== null) throw refuse(`Keyturn made it for credential "${other}", not this one (its label)`);
    if (madeFor === spec.id && !state.cloneLabelled) {
      // Made or adopted for this credential before Keyturn labelled its clones (the registry's record says so, and
      // no rotation of this pair has labelled it yet): it gets its label now.
      await ctx.target.setLabel!(clone, label);
      return { exclusive: false, label };
    }
    throw refuse(
      `it does not carry Keyturn's label "${label}"${madeFor === spec.id ? ' (Keyturn made the clone of this pair, but that one was labelled: this is another user, made since under that name)' : ''}`,
    );
  }

  /** The registry's record that the clone exists as Keyturn's for this credential (idempotent). */
  async #recordClone(clone: string, ctx: Context): Promise<void> {
    if (ctx.serviceOwnsUsers) return;
    const { spec } = ctx.credential;
    if ((await this.#registry.madeFor(ctx.connection.id, clone)) !== spec.id) {
      await this.#registry.markMade(ctx.connection.id, clone, spec.id);
    }
  }

  /** Step 2: apply the pending secret downstream, unless it already works there. */
  async #set(lease: Lease, rotation: Rotation, ctx: Context): Promise<'succeeded' | 'skipped'> {
    if (ctx.target.mintedSecrets) return this.#setMinted(lease, rotation, ctx, ctx.target.mintedSecrets);
    const { spec } = ctx.credential;
    const pending = await this.#pending(rotation, ctx);
    const login = { username: pending.value.username, password: pending.value.password };
    // The pending password can only work already if an earlier attempt may have sent it: setStarted is saved before
    // the change goes out. A first attempt skips the look, a login bound to fail (a third of a PostgreSQL
    // rotation's downstream work, and one webhook request in three).
    if (rotation.setStarted && (await this.#works(ctx, login)).ok) {
      // "Already works" proves something only if the downstream checks passwords: a server with trust
      // authentication lets any password in, and skipping would leave the old password in place.
      const canary = await this.#works(ctx, {
        username: login.username,
        password: generatePassword(spec.password),
      });
      this.#passwordsChecked.set(ctx.connection.id, { at: this.#clock.now(), checks: !canary.ok });
      if (!canary.ok) {
        // The user holds this rotation's own new password: Keyturn set it (a resumed rotation), so a clone is its.
        if (spec.strategy === 'alternating-users' && login.username !== spec.username) {
          await this.#recordClone(login.username, ctx);
        }
        rotation.setStarted = true;
        rotation.setDone = true;
        return 'skipped';
      }
      this.#warnNoPasswordCheck(rotation, ctx);
    }
    // Every attempt, a retry's too: the clone may have changed hands since the last one looked.
    const clone =
      spec.strategy === 'alternating-users' && login.username !== spec.username
        ? await this.#claimClone(login.username, ctx)
        : undefined;
    // Write-ahead: from here the downstream may hold the pending password (I2's other half: a failure now
    // must put the old password back before the pending version may be dropped).
    const firstSend = !rotation.setStarted;
    if (firstSend) {
      rotation.setStarted = true;
      await this.#save(lease, rotation);
    }
    try {
      await this.#sendPending(ctx, login, clone);
    } catch (err) {
      // The first attempt to send failed before anything reached the downstream (its admin login, say): nothing can
      // hold the pending password, as the look this attempt skipped would have shown. The failure path saves this.
      if (firstSend && wasNothingSent(err)) rotation.setStarted = false;
      throw err;
    }
    await this.#failpoints.hit('set-after-downstream');
    rotation.setDone = true;
    return 'succeeded';
  }

  /**
   * Step 2 where the downstream makes the secret (TargetSession.mintedSecrets, AWS IAM access keys). The new key exists
   * only once the downstream answered, so it cannot be stored before the change goes out; the write-ahead here is the
   * list of the user's keys before the first mint (Rotation.keysBefore), saved with setStarted. A key in neither that
   * list nor the store was made by this rotation and never stored (a crash between the mint and the store write, a
   * mint whose answer was lost), and is deleted, as is the previous version's key: the user is left with the current
   * key and the new one, as a dual-password set leaves two passwords. Keys Keyturn did not make are never touched; when
   * they leave no room for a new one, the rotation fails before changing anything and says which to delete. The step
   * ends once the downstream accepts the new key (#settle), so that from setDone on a read may serve it (I1).
   */
  async #setMinted(
    lease: Lease,
    rotation: Rotation,
    ctx: Context,
    minted: MintedSecrets,
  ): Promise<'succeeded' | 'skipped'> {
    const { spec } = ctx.credential;
    const username = spec.username;
    const stored = await ctx.store.read(ctx.ref, { versionId: rotation.id });
    if (stored) {
      // An earlier attempt made and stored it: this rotation's key, unless someone deleted it since.
      ctx.secrets.add(stored.value.password);
      const keyId = stored.value.accessKeyId;
      if (!(await minted.list(username)).some((k) => k.keyId === keyId)) {
        throw new PermanentError(
          `the key "${keyId}" this rotation made for "${username}" on connection "${ctx.connection.id}" is gone (deleted outside Keyturn): the rotation rolls back, and the next one makes another`,
        );
      }
      rotation.setStarted = true;
      await this.#settle(ctx, minted, loginOf(stored.value));
      rotation.setDone = true;
      return 'skipped';
    }
    const current = await ctx.store.read(ctx.ref, { stage: 'current' });
    const previous = await ctx.store.read(ctx.ref, { stage: 'previous' });
    const currentId = current?.value.accessKeyId;
    const previousId = previous?.value.accessKeyId;
    const keys = await minted.list(username);
    const before = rotation.keysBefore;
    const going = keys.filter(
      (k) =>
        k.keyId !== currentId &&
        ((before !== undefined && !before.includes(k.keyId)) || k.keyId === previousId),
    );
    const staying = keys.filter((k) => !going.includes(k));
    if (staying.length >= minted.limit) {
      const foreign = staying.filter((k) => k.keyId !== currentId);
      throw new PermanentError(
        `"${username}" on connection "${ctx.connection.id}" holds ${staying.length} keys, the most ${ctx.connection.type} allows, and ${foreign
          .map((k) => `"${k.keyId}" (${k.active ? 'active' : 'inactive'}, made ${k.createdAt.toISOString()})`)
          .join(
            ', ',
          )} ${foreign.length === 1 ? 'is' : 'are'} not Keyturn's, so nothing was changed: delete ${foreign.length === 1 ? 'it' : 'one'} once no service uses ${foreign.length === 1 ? 'it' : 'them'} (Keyturn never deletes a key it did not make), then rotate again`,
      );
    }
    const firstSend = !rotation.setStarted;
    if (firstSend) {
      // Write-ahead: from here the downstream may hold a key the store does not know, made by this rotation.
      rotation.setStarted = true;
      rotation.keysBefore = keys.map((k) => k.keyId);
      await this.#save(lease, rotation);
    }
    let changed = false;
    let key: { keyId: string; secret: string };
    try {
      for (const k of going) {
        await minted.delete(username, k.keyId);
        changed = true;
      }
      key = await minted.mint(username);
    } catch (err) {
      // The first attempt changed nothing downstream (the admin was refused before any delete or mint): as in #set.
      if (firstSend && !changed && wasNothingSent(err)) {
        rotation.setStarted = false;
        delete rotation.keysBefore;
      }
      throw err;
    }
    ctx.secrets.add(key.secret);
    await this.#failpoints.hit('set-after-mint');
    const login = { username, password: key.secret, keyId: key.keyId };
    await ctx.store.putPending(
      ctx.ref,
      rotation.id,
      rotationDocument(ctx.connection, ctx.engine, login, spec.strategy),
    );
    await this.#failpoints.hit('set-after-downstream');
    await this.#settle(ctx, minted, login);
    rotation.setDone = true;
    return 'succeeded';
  }

  /**
   * Waits until the downstream accepts a key it just made (IAM: InvalidClientTokenId for a few seconds after
   * CreateAccessKey), up to its settleMs. Past that the attempt fails and the rotation retries; the key stays stored.
   */
  async #settle(ctx: Context, minted: MintedSecrets, login: Login): Promise<void> {
    const deadline = this.#clock.now() + minted.settleMs;
    let waitMs = 250;
    for (;;) {
      const outcome = await ctx.target.authenticate(login);
      if (outcome.ok) return;
      if (this.#clock.now() + waitMs > deadline) {
        throw new Error(
          `the downstream did not accept the new key "${login.keyId}" within ${Math.round(minted.settleMs / 1000)} s (${outcome.message}); the rotation retries with the same key. New keys take a while to propagate: raise the connection's option settleSeconds if this recurs`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, waitMs));
      waitMs = Math.min(waitMs * 2, 2000);
    }
  }

  /** The set step's change downstream: the clone made, both passwords kept, or the password replaced. */
  async #sendPending(
    ctx: Context,
    login: Login,
    clone: { exclusive: boolean; label?: string } | undefined,
  ): Promise<void> {
    const { spec } = ctx.credential;
    // Only a dual-password downstream needs the current version here (to keep it next to the new one).
    // Not for the admin: its rotation is there to end the old password, which a second password would keep working.
    const current =
      spec.strategy === 'single-user' && ctx.target.dualPasswords && !ctx.admin
        ? await ctx.store.read(ctx.ref, { stage: 'current' })
        : null;
    if (clone) {
      try {
        await ctx.target.createUser(login.username, login.password, { like: spec.username, ...clone });
      } catch (err) {
        // The clone changed hands between #claimClone's look and the change: the target refused it, unchanged.
        if (
          err instanceof TargetRefusedError &&
          (err.code === 'user-exists' || err.code === 'not-keyturns')
        ) {
          throw new PermanentError(`${err.message}. ${FOREIGN_CLONE_ADVICE}`);
        }
        throw err;
      }
      await this.#recordClone(login.username, ctx);
    } else if (ctx.target.dualPasswords && current?.value.username === login.username) {
      // A dual-password downstream: the old password keeps working next to the new one (no window); any older
      // one goes. The grace period, or else the next rotation, removes the old one.
      ctx.secrets.add(current.value.password);
      await ctx.target.dualPasswords.set(login.username, {
        keep: current.value.password,
        password: login.password,
      });
    } else {
      await ctx.target.updatePassword(login.username, login.password);
    }
  }

  /** Step 3: log in with the pending secret and run a harmless query. */
  async #test(rotation: Rotation, ctx: Context): Promise<'succeeded'> {
    const pending = await this.#pending(rotation, ctx);
    const result = await this.#works(ctx, loginOf(pending.value));
    if (!result.ok) {
      // The set step landed but the login is refused: something downstream undid it. Setting again may help.
      rotation.setDone = false;
      throw new Error(`test failed: ${result.message}`);
    }
    await this.#checkPasswordsChecked(rotation, ctx, loginOf(pending.value));
    return 'succeeded';
  }

  /**
   * A login that works proves something only if the downstream refuses a wrong password: a server with trust
   * authentication lets anyone in. Checked with a deliberately wrong password after a test step that passed, once per
   * connection every PASSWORD_CHECK_EVERY_MS in this process rather than on every rotation (a failed login costs as
   * much as a good one); the result only decides a warning, never the rotation.
   */
  async #checkPasswordsChecked(rotation: Rotation, ctx: Context, login: Login): Promise<void> {
    const last = this.#passwordsChecked.get(ctx.connection.id);
    if (last && this.#clock.now() - last.at < PASSWORD_CHECK_EVERY_MS) {
      if (!last.checks) this.#warnNoPasswordCheck(rotation, ctx);
      return;
    }
    const canary = await ctx.target
      .authenticate({ ...login, password: generatePassword(ctx.credential.spec.password) })
      .catch(() => undefined);
    if (!canary) return; // unavailable just now: the next rotation looks again
    this.#passwordsChecked.set(ctx.connection.id, { at: this.#clock.now(), checks: !canary.ok });
    if (canary.ok) this.#warnNoPasswordCheck(rotation, ctx);
  }

  #warnNoPasswordCheck(rotation: Rotation, ctx: Context): void {
    this.#log.warn(
      { rotation: rotation.id, credential: ctx.credential.spec.id, connection: ctx.connection.id },
      'the downstream accepted a deliberately wrong password: it does not check passwords (trust authentication?), so the test step proves nothing',
    );
  }

  /** Step 4: pending becomes current, the state and audit event land together, the schedule is re-armed. */
  async #finish(lease: Lease, rotation: Rotation, ctx: Context): Promise<'succeeded'> {
    await ctx.store.promote(ctx.ref, rotation.id);
    await this.#failpoints.hit('finish-after-promote');
    // From the labels, not from promote's answer: a resumed finish finds the promotion already done.
    const labels = (await ctx.store.describe(ctx.ref)) ?? {};
    const previousVersionId = Object.keys(labels).find((v) => labels[v]?.includes('previous'));
    const now = new Date(this.#clock.now());
    rotation.steps.push({
      step: 'finish',
      outcome: 'succeeded',
      attempt: rotation.attempts,
      at: now.toISOString(),
    });
    moveToSucceeded(rotation, now.toISOString());
    const fresh = (await this.#registry.findCredential(ctx.credential.spec.id)) ?? ctx.credential;
    const next = this.#hooks.nextRotationAt(fresh.spec, now);
    // The fields this rotation decides; the commit writes these and nothing else of the state.
    const changes: Partial<CredentialState> = {
      status: 'active',
      version: rotation.id,
      // Set by create on every path (and saved with its step), so no store read is needed for it here.
      activeUsername: rotation.username ?? fresh.spec.username,
      rotatedAt: now.toISOString(),
      lastRotationId: rotation.id,
      lastOutcome: 'succeeded',
      failures: 0,
      // Undefined fields vanish in JSON: no next slot, no previous version, no revocation yet.
      nextRotationAt: next?.toISOString(),
      previousVersion: previousVersionId,
      previousRevokedAt: undefined,
      // The clone was just set, after its label was checked or written: from now on it must carry it.
      ...(fresh.spec.strategy === 'alternating-users' &&
      rotation.username === cloneUsername(fresh.spec.username) &&
      labelsUsers(ctx)
        ? { cloneLabelled: true }
        : {}),
    };
    const state: CredentialState = { ...fresh.state, ...changes };
    await this.#commit(
      lease,
      [
        ...this.#rotations.endOps(rotation),
        this.#stateOp(fresh.spec.id, changes),
        this.#auditOp({
          actor: rotation.actor,
          action: 'rotation.succeeded',
          outcome: 'success',
          credential: fresh.spec.id,
          rotation: rotation.id,
          details: {
            version: rotation.id,
            username: state.activeUsername ?? null,
            attempts: rotation.attempts,
          },
        }),
      ],
      rotation,
    );
    this.#log.info(
      { rotation: rotation.id, credential: fresh.spec.id, attempts: rotation.attempts },
      'rotation succeeded',
    );
    this.#reportEnd(rotation, 'succeeded', ctx.connection.type);
    await this.#secretChanged({ spec: fresh.spec, state }, rotation.id);
    await this.#failpoints.hit('finish-after-commit');
    // After the commit: a crash here leaves a finished rotation whose schedule the reconciler re-arms.
    await this.#hooks
      .afterSuccess({ spec: fresh.spec, state }, rotation)
      .catch((err) =>
        this.#log.error(
          { credential: fresh.spec.id, err: scrubError(err, ctx.secrets) },
          'rotation succeeded but re-arming its schedule or planning its grace revocation failed; the reconciler repairs both',
        ),
      );
    return 'succeeded';
  }

  // Failure and rollback

  async #onFailure(
    lease: Lease,
    rotation: Rotation,
    credential: Credential,
    ctx: Context | undefined,
    err: unknown,
  ): Promise<RunResult> {
    const scrubbed = scrubError(err, ctx?.secrets ?? []);
    const permanent =
      err instanceof PermanentError || err instanceof TargetRefusedError || err instanceof StoreRefusedError;
    rotation.error = { step: rotation.step, ...scrubbed, at: this.#nowIso() };
    rotation.steps.push({
      step: rotation.step,
      outcome: 'failed',
      attempt: rotation.attempts,
      at: this.#nowIso(),
      note: scrubbed.message,
    });
    const last = permanent || rotation.attempts >= rotation.maxAttempts;
    this.#log.warn(
      {
        rotation: rotation.id,
        credential: rotation.credentialId,
        step: rotation.step,
        attempt: rotation.attempts,
        err: scrubbed,
      },
      last ? 'rotation step failed; rolling back' : 'rotation step failed; will retry',
    );
    if (!last) {
      moveToRetrying(rotation, this.#nowIso());
      await this.#save(lease, rotation).catch(() => {});
      await this.#audit
        .append({
          actor: 'keyturn',
          action: 'rotation.step_failed',
          outcome: 'failure',
          credential: rotation.credentialId,
          rotation: rotation.id,
          details: { step: rotation.step, attempt: rotation.attempts, error: scrubbed.message },
        })
        .catch(() => {});
      return { outcome: 'retry', rotation };
    }
    moveToRollingBack(rotation, this.#nowIso());
    await this.#save(lease, rotation);
    return this.#rollbackWith(lease, rotation, credential, ctx);
  }

  /** Rolls back a rotation in state rolling_back (the rollback job, or a resumed worker). */
  async rollback(rotationId: string): Promise<RunResult> {
    const rotation = await this.#rotations.find(rotationId);
    if (!rotation || TERMINAL.has(rotation.status))
      return { outcome: 'done', ...(rotation ? { rotation } : {}) };
    const credential = await this.#registry.findCredential(rotation.credentialId);
    if (!credential) {
      await this.#abandon(rotation, 'the credential was deleted during rollback');
      return { outcome: 'done', rotation };
    }
    const lease = await this.#leases.tryAcquire(
      rotation.credentialId,
      this.#settings.holder,
      lockOf(credential.spec),
    );
    if (!lease) return { outcome: 'busy', rotation };
    try {
      // Read again under the lease, as run() does: what was read before it may have changed.
      const current = await this.#rotations.find(rotationId);
      if (!current || TERMINAL.has(current.status))
        return { outcome: 'done', ...(current ? { rotation: current } : {}) };
      const fresh = await this.#registry.findCredential(rotation.credentialId);
      if (!fresh) {
        await this.#abandon(current, 'the credential was deleted during rollback');
        return { outcome: 'done', rotation: current };
      }
      return await this.#rollbackWith(lease, current, fresh, undefined);
    } finally {
      await lease.release();
    }
  }

  /**
   * Puts the downstream back on the current version, then drops the pending one. If the downstream cannot be
   * reached, the rotation stays in rolling_back (still in flight, so no other rotation starts and reads keep
   * checking which password works) and a rollback job retries until the downstream answers.
   */
  async #rollbackWith(
    lease: Lease,
    rotation: Rotation,
    credential: Credential,
    given: Context | undefined,
  ): Promise<RunResult> {
    let ctx = given;
    let note: string;
    try {
      await this.#failpoints.hit('rollback-before-restore');
      if (!rotation.setStarted) {
        const store = this.#stores.get(credential.spec.store);
        try {
          await store.discardPending(credentialSecretRef(credential.spec), rotation.id);
          note = 'nothing had been changed downstream; the pending version was dropped';
        } catch (err) {
          // The downstream never saw the pending secret, so I2 holds whatever the store keeps; a store that
          // refuses the clean-up must not hold the rotation open forever.
          if (!(err instanceof StoreRefusedError)) throw err;
          note = `nothing had been changed downstream; the store refused to drop the pending version (${err.message})`;
        }
      } else {
        ctx ??= await this.#context(credential, rotation);
        note = await this.#restoreDownstream(rotation, ctx);
      }
    } catch (err) {
      const scrubbed = scrubError(err, ctx?.secrets ?? []);
      moveToRollbackPending(
        rotation,
        `restoring the previous password failed (${scrubbed.message}); will retry`,
        this.#nowIso(),
      );
      await this.#commit(lease, [
        this.#rotations.saveOp(rotation),
        this.#stateOp(credential.spec.id, { status: 'failed' }),
      ]);
      this.#log.warn(
        { rotation: rotation.id, err: scrubbed },
        'rollback could not restore the downstream yet',
      );
      await this.#hooks.enqueueRollback(rotation.id);
      return { outcome: 'done', rotation };
    } finally {
      if (!given) await ctx?.target.close().catch(() => {});
    }

    const now = this.#nowIso();
    moveToRolledBack(rotation, note, now);
    rotation.steps.push({
      step: 'rollback',
      outcome: 'succeeded',
      attempt: rotation.attempts,
      at: now,
      note,
    });
    // Under the lease only the engine writes `failures`, so this read is the value the commit replaces.
    const fresh = (await this.#registry.findCredential(credential.spec.id)) ?? credential;
    await this.#commit(
      lease,
      [
        ...this.#rotations.endOps(rotation),
        this.#stateOp(credential.spec.id, {
          status: 'failed',
          lastRotationId: rotation.id,
          lastOutcome: 'failed',
          failures: (fresh.state.failures ?? 0) + 1,
        }),
        this.#auditOp({
          actor: rotation.actor,
          action: 'rotation.failed',
          outcome: 'failure',
          credential: credential.spec.id,
          rotation: rotation.id,
          details: {
            step: rotation.error?.step ?? rotation.step,
            error: rotation.error?.message ?? null,
            attempts: rotation.attempts,
            rollback: note,
          },
        }),
      ],
      rotation,
    );
    this.#log.error(
      { rotation: rotation.id, credential: credential.spec.id, error: rotation.error },
      'rotation failed and was rolled back; the credential keeps its current version',
    );
    // A single-user rotation whose set landed may have pushed its pending version: push the current one back.
    if (rotation.setStarted && credential.spec.strategy === 'single-user' && fresh.state.version) {
      await this.#secretChanged(fresh, fresh.state.version);
    }
    if (this.#observer) {
      // A rotation that failed before it opened the downstream has no context: its connection says the type.
      const type =
        ctx?.connection.type ??
        (await this.#registry.findConnection(credential.spec.connection).catch(() => undefined))?.type;
      this.#reportEnd(rotation, 'failed', type ?? 'unknown');
    }
    return { outcome: 'done', rotation };
  }

  async #restoreDownstream(rotation: Rotation, ctx: Context): Promise<string> {
    if (ctx.target.mintedSecrets) return this.#restoreMinted(rotation, ctx, ctx.target.mintedSecrets);
    const { spec, state } = ctx.credential;
    const pending = await ctx.store.read(ctx.ref, { versionId: rotation.id });
    if (pending) ctx.secrets.add(pending.value.password);
    const username = pending?.value.username ?? rotation.username ?? spec.username;
    if (spec.strategy === 'single-user') {
      const current = await ctx.store.read(ctx.ref, { stage: 'current' });
      if (!current) {
        // A first rotation: no earlier password is known to put back. Keep the pending version (the store
        // must know whatever the downstream may hold, I2); the next rotation replaces it.
        return 'no earlier version exists; the pending version is kept until the next rotation';
      }
      ctx.secrets.add(current.value.password);
      const login = { username: current.value.username, password: current.value.password };
      // On a dual-password downstream the old password may still work next to the pending one: take the
      // pending one away explicitly, so that nothing the store is about to forget still logs in. Only when the
      // downstream holds it: a set step that never got through (its admin login failed, say) left nothing to take
      // away, and the admin may still be unable to log in.
      const removePending = Boolean(
        ctx.target.dualPasswords &&
          pending &&
          pending.value.username === login.username &&
          (await this.#works(ctx, { username: login.username, password: pending.value.password })).ok,
      );
      if (ctx.target.dualPasswords && pending && removePending) {
        await ctx.target.dualPasswords.remove(login.username, {
          remove: pending.value.password,
          keep: current.value.password,
        });
      }
      // Say what was done: after a failed admin login, say, nothing changed downstream and nothing was put back.
      const stillWorks = (await this.#works(ctx, login)).ok;
      if (!stillWorks) await ctx.target.updatePassword(login.username, login.password);
      const check = await this.#works(ctx, login);
      if (!check.ok) throw new Error(`the restored password does not log in: ${check.message}`);
      const what = !stillWorks
        ? 'the current password was put back downstream'
        : removePending
          ? 'the pending password was taken away downstream; the current one still logs in'
          : 'the current password still logs in, so nothing was changed downstream';
      return `${what}${await this.#dropPending(ctx, rotation)}`;
    }
    // alternating-users: the rotation changed the inactive user. Put back its previous password while that
    // user is still in its grace period, otherwise give it an unknown random one. Unless the pending password does
    // not log in: then the set step never got through (a failed admin login, say), nothing a service could use was
    // changed, and the admin may still be unable to log in.
    if (pending && !(await ctx.target.authenticate({ username, password: pending.value.password })).ok) {
      return `user "${username}" does not log in with the pending password, so nothing was changed downstream${await this.#dropPending(ctx, rotation)}`;
    }
    // It holds the pending password: this rotation set it, so a clone it made (before a crash kept the record from
    // being written) is Keyturn's.
    if (pending && username !== spec.username) await this.#recordClone(username, ctx);
    const previous = await ctx.store.read(ctx.ref, { stage: 'previous' });
    const graceOpen = previous?.value.username === username && !state.previousRevokedAt;
    if (graceOpen && previous) {
      ctx.secrets.add(previous.value.password);
      await ctx.target.updatePassword(username, previous.value.password);
    } else if (await ctx.target.userExists(username)) {
      await ctx.target.updatePassword(username, generatePassword(spec.password));
    }
    const dropped = await this.#dropPending(ctx, rotation);
    return graceOpen
      ? `user "${username}" got its previous password back${dropped}`
      : `user "${username}" got an unknown random password${dropped}`;
  }

  /**
   * Rollback where the downstream makes the secrets: the current key was never changed, so putting back is deleting
   * what this rotation made, the stored pending key and any key it made but could not store (not in keysBefore).
   */
  async #restoreMinted(rotation: Rotation, ctx: Context, minted: MintedSecrets): Promise<string> {
    const username = ctx.credential.spec.username;
    const pending = await ctx.store.read(ctx.ref, { versionId: rotation.id });
    const current = await ctx.store.read(ctx.ref, { stage: 'current' });
    if (pending) ctx.secrets.add(pending.value.password);
    if (current) ctx.secrets.add(current.value.password);
    const before = rotation.keysBefore;
    const made = (await minted.list(username)).filter(
      (k) =>
        k.keyId !== current?.value.accessKeyId &&
        (k.keyId === pending?.value.accessKeyId || (before !== undefined && !before.includes(k.keyId))),
    );
    for (const k of made) await minted.delete(username, k.keyId);
    let what =
      made.length > 0
        ? `the key${made.length > 1 ? 's' : ''} this rotation made (${made.map((k) => `"${k.keyId}"`).join(', ')}) ${made.length > 1 ? 'were' : 'was'} deleted`
        : 'this rotation had made no key that is still there';
    if (current) {
      // Never changed by a rotation; said when it does not log in, as that is someone else's doing.
      const works = await this.#works(ctx, loginOf(current.value));
      what += works.ok
        ? '; the current key still logs in'
        : `; the current key does not log in (${works.message}), which Keyturn did not change`;
    }
    return `${what}${await this.#dropPending(ctx, rotation)}`;
  }

  /** Drops the pending version once the downstream no longer holds it; a store that refuses is reported, not fatal. */
  async #dropPending(ctx: Context, rotation: Rotation): Promise<string> {
    try {
      await ctx.store.discardPending(ctx.ref, rotation.id);
      return ' and the pending version dropped';
    } catch (err) {
      if (!(err instanceof StoreRefusedError)) throw err;
      return `; the store refused to drop the pending version (${err.message})`;
    }
  }

  // Grace period

  /**
   * Ends a grace period, so that a leaked or cached old secret stops working: for alternating-users the previous
   * user's password is replaced by an unknown random one; for single-user on a dual-password downstream the old
   * password is removed. Skipped when the version is no longer the previous one, or when a rotation is in flight
   * (it changes that very user, and its rollback revokes).
   */
  async revokePrevious(credentialId: string, versionId: string): Promise<RunResult> {
    const hint = await this.#registry.findCredential(credentialId);
    if (!hint?.spec.gracePeriod) return { outcome: 'done' };
    if (await this.#rotations.inflightId(credentialId)) return { outcome: 'done' };
    const lease = await this.#leases.tryAcquire(credentialId, this.#settings.holder, lockOf(hint.spec));
    if (!lease) return { outcome: 'busy' };
    let ctx: Context | undefined;
    try {
      // Checked again under the lease: a rotation requested meanwhile changes this very user (and its rollback reads
      // whether the grace period was revoked), a DELETE may have removed the credential.
      const credential = await this.#registry.findCredential(credentialId);
      if (!credential?.spec.gracePeriod || (await this.#rotations.inflightId(credentialId))) {
        return { outcome: 'done' };
      }
      ctx = await this.#context(credential);
      const previous = await ctx.store.read(ctx.ref, { stage: 'previous' });
      if (!previous || previous.versionId !== versionId || credential.state.previousRevokedAt) {
        return { outcome: 'done' };
      }
      const current = await ctx.store.read(ctx.ref, { stage: 'current' });
      if (!current) return { outcome: 'done' };
      ctx.secrets.add(previous.value.password);
      if (current.value.username !== previous.value.username) {
        // alternating-users: the previous user gets an unknown password.
        await ctx.target.updatePassword(previous.value.username, generatePassword(credential.spec.password));
      } else if (ctx.target.mintedSecrets && previous.value.accessKeyId) {
        // single-user where the downstream makes the keys: the old key stops working, and the next rotation deletes it.
        if (previous.value.accessKeyId !== current.value.accessKeyId) {
          await ctx.target.mintedSecrets.deactivate(previous.value.username, previous.value.accessKeyId);
        }
      } else if (ctx.target.dualPasswords) {
        // single-user on a dual-password downstream: the old password of the same user goes.
        await ctx.target.dualPasswords.remove(previous.value.username, {
          remove: previous.value.password,
          keep: current.value.password,
        });
      } else {
        return { outcome: 'done' };
      }
      await this.#commit(lease, [
        this.#stateOp(credentialId, { previousRevokedAt: this.#nowIso() }),
        this.#auditOp({
          actor: 'keyturn',
          action: 'credential.previous_revoked',
          outcome: 'success',
          credential: credentialId,
          details: { username: previous.value.username, version: versionId },
        }),
      ]);
      this.#log.info(
        { credential: credentialId, version: versionId },
        'grace period over: previous user revoked',
      );
      return { outcome: 'done' };
    } catch (err) {
      if (err instanceof LeaseLostError) return { outcome: 'busy' };
      throw new Error(
        `revoking the previous user of "${credentialId}" failed: ${scrubError(err, ctx?.secrets ?? []).message}`,
      );
    } finally {
      await ctx?.target.close().catch(() => {});
      await lease.release();
    }
  }

  // Helpers

  /**
   * A step that hangs (a downstream that accepts the connection and never answers) must not hold the rotation
   * forever: past a generous bound it counts as a failed attempt. Each downstream call has its own timeout
   * already; this is the net under them.
   */
  async #bounded<T>(step: RotationStep, work: Promise<T>, extraMs = 0): Promise<T> {
    const limitMs = this.#settings.downstreamTimeoutMs * 6 + extraMs;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(`step ${step} did not finish within ${limitMs} ms; the downstream may be hanging`),
          ),
        limitMs,
      );
    });
    try {
      return await Promise.race([work, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async #save(lease: Lease, rotation: Rotation): Promise<void> {
    rotation.updatedAt = this.#nowIso();
    await this.#commit(lease, [this.#rotations.saveOp(rotation)]);
  }

  /** Tells the secret observer (sync) about a version that now works; its failure never touches the rotation. */
  async #secretChanged(credential: Credential, versionId: string): Promise<void> {
    await this.#secretObserver
      ?.secretChanged(credential, versionId)
      .catch((err) =>
        this.#log.error(
          { credential: credential.spec.id, version: versionId, err: scrubError(err) },
          'queueing the sync of a new version failed; the next rotation pushes again',
        ),
      );
  }

  /** After the terminal commit only, so that a rotation counts once, in the process whose commit won. */
  #reportEnd(rotation: Rotation, outcome: RotationEnd['outcome'], target: string): void {
    if (!this.#observer) return;
    const ended = Date.parse(rotation.finishedAt ?? this.#nowIso());
    const started = Date.parse(rotation.startedAt ?? rotation.createdAt);
    try {
      this.#observer.rotationEnded({ target, outcome, seconds: Math.max(0, ended - started) / 1000 });
    } catch (err) {
      this.#log.warn({ rotation: rotation.id, err: scrubError(err) }, 'the rotation observer failed');
    }
  }

  /** Sets these fields of a credential's state and no other (undefined removes one), fenced by the lease. */
  #stateOp(credentialId: string, changes: Partial<CredentialState>): FencedOp {
    return this.#registry.stateChangeOp(credentialId, changes);
  }

  /** The append of an audit event about a credential, applied with the fenced writes it records (see #commit). */
  #auditOp(event: AuditEventInput & { credential: string }): FencedOp {
    return auditAppendOp(this.#keys.auditOutbox(event.credential), event);
  }

  /**
   * Applies fenced writes of the lease's credential. Their audit events land in the credential's outbox, relayed to
   * the audit stream right after (in a Cluster; on one node the outbox is the stream). `ended`: the rotation these
   * writes end, taken out of the active index once they landed.
   */
  async #commit(lease: Lease, ops: FencedOp[], ended?: Rotation): Promise<void> {
    await this.#outbox.announce(lease.credentialId);
    await lease.commit(ops);
    if (ended) {
      await this.#rotations.forgetEnded(ended.id).catch(() => {}); // the reconciler drops an ended rotation's entry
    }
    await this.#outbox
      .relay(lease.credentialId)
      .catch((err) =>
        this.#log.warn(
          { credential: lease.credentialId, err: scrubError(err) },
          'audit events wait in the credential outbox; the reconciler relays them',
        ),
      );
  }

  async #abandon(rotation: Rotation, reason: string): Promise<void> {
    moveToAbandoned(rotation, reason, this.#nowIso());
    await this.#rotations.abandon(rotation);
  }
}
