// What a platform team does to the registry (register, change, remove), with the side effects each implies:
// admin secrets to the store, schedulers to BullMQ, a first rotation, an audit event. The API calls this; a
// later `keyturn apply` of a YAML file calls the same.
import { createHash, randomUUID } from 'node:crypto';
import type { AuditLog } from '../audit/audit-log.ts';
import { bindingMatches, type ReaderBinding } from '../auth/principal.ts';
import { parseDuration } from '../config/duration.ts';
import { DEFAULT_PASSWORD_POLICY, type PasswordPolicy } from '../crypto/password.ts';
import { scrubError, scrubText } from '../crypto/scrub.ts';
import { secretsInScope } from '../crypto/secret-scope.ts';
import { formatDuration, type LeaseService } from '../leases/lease-service.ts';
import { checkOutbound } from '../net/outbound.ts';
import { adminSubjectSpec } from '../registry/admin-subject.ts';
import {
  ConflictError,
  ForbiddenError,
  NotFoundError,
  TooManyRequestsError,
  UnprocessableError,
} from '../registry/errors.ts';
import { claimedUsernames, type Registry, UsernameTakenError } from '../registry/registry.ts';
import type {
  AdminRotation,
  ApprovalPolicy,
  Connection,
  Credential,
  CredentialSpec,
  CredentialState,
  Schedule,
  StoreSpec,
  SyncSpec,
  TlsSpec,
} from '../registry/types.ts';
import { adminSubjectId, cloneUsername } from '../registry/types.ts';
import { openDownstream } from '../rotation/downstream.ts';
import type { RotationEngine } from '../rotation/engine.ts';
import type { RotationRepo } from '../rotation/rotation-repo.ts';
import { cloneLabel, labelledFor } from '../rotation/strategies.ts';
import type { Rotation } from '../rotation/types.ts';
import type { Queues } from '../scheduling/queues.ts';
import { validateSchedule } from '../scheduling/schedule.ts';
import {
  connectionAdminRef,
  credentialSecretRef,
  loginOf,
  type StoreSet,
  secretDocument,
} from '../stores/index.ts';
import type { SecretDocument } from '../stores/types.ts';
import { type SyncTargets, syncProblems } from '../sync/index.ts';
import { TARGET_DRIVERS, targetDriver } from '../targets/index.ts';
import {
  type Check,
  type Login,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  TargetUnavailableError,
} from '../targets/types.ts';
import { checkPolicy, policyText } from './approvals.ts';
import { checkIfMatch } from './etag.ts';

/** The `engine` field of stored secrets: the target driver's name for itself. */
const engineOf = (connection: Connection): string => targetDriver(connection.type)?.engine ?? connection.type;

export interface ConnectionInput {
  id: string;
  type: string;
  /** Required, except for a driver with a well-known address (TargetDriver.endpoint), which takes region and endpoint. */
  host?: string;
  port?: number;
  region?: string;
  endpoint?: string;
  database?: string;
  tls?: TlsSpec;
  admin: { username: string; password: string; store?: StoreSpec };
  options?: Record<string, string | number | boolean>;
  labels?: Record<string, string>;
  /** false: register without logging in to the downstream (offline registration); default true. */
  verify?: boolean;
  adminRotation?: AdminRotation;
  /** Dual control of its gated operations (service/approvals.ts). */
  approval?: ApprovalPolicy;
}

export interface ConnectionPatch {
  host?: string;
  port?: number;
  region?: string;
  endpoint?: string;
  database?: string;
  tls?: TlsSpec;
  admin?: { username?: string; password?: string };
  options?: Record<string, string | number | boolean>;
  labels?: Record<string, string>;
  /** Stops (true) or resumes (false) the scheduled rotations of every credential on the connection. */
  paused?: boolean;
  /** false: change where or how Keyturn logs in without checking the new settings downstream; default true. */
  verify?: boolean;
  /** Schedules the admin password's rotation; null stops it. */
  adminRotation?: AdminRotation | null;
  /** Sets dual control; null removes it (the API has the removal or weakening approved first). */
  approval?: ApprovalPolicy | null;
}

/**
 * The approval policy the API judged a request against (its dual-control gate), when the request changes the policy:
 * the change is written only while the target's policy is still that one, so that a policy set at the same moment is
 * never removed or weakened by a request that was judged without it.
 */
export interface ApprovalGuard {
  judged: ApprovalPolicy | undefined;
}

/** A write made only over the version the client read (If-Match); none: over whatever is current. */
export interface WriteCondition {
  ifMatch?: string;
}

/** What a dry run reports (POST /v1/credentials/:id/rotate?dryRun=true). */
export interface DryRun {
  ok: boolean;
  checks: Check[];
}

/** Connection fields whose change is checked downstream (verify) before it is saved. */
const VERIFIED_FIELDS = [
  'host',
  'port',
  'region',
  'endpoint',
  'database',
  'tls',
  'options',
  'admin',
] as const;

/** Names that are this machine (an endpoint may use http:// only there: an emulator). */
const LOOPBACK_HOST = /^(localhost|127(\.\d{1,3}){3}|\[::1\])$/i;

/**
 * Where a connection points: `host` and `port` for most drivers; for a driver with a well-known address
 * (TargetDriver.endpoint, AWS IAM) its `region` and `endpoint`, with host and port derived from the endpoint (or the
 * well-known host) so that every reader of a connection's address still has one. A 422 names what does not fit.
 */
export function connectionAddress(
  driver: TargetDriver,
  input: { host?: string; port?: number; region?: string; endpoint?: string },
): Pick<Connection, 'host' | 'port' | 'region' | 'endpoint'> {
  if (!driver.endpoint) {
    if (input.region !== undefined || input.endpoint !== undefined) {
      throw new UnprocessableError(
        `region and endpoint apply to connections with a well-known address (aws-iam), not to ${driver.type}: give host and port`,
      );
    }
    if (!input.host) throw new UnprocessableError(`host is required for ${driver.type} connections`);
    return { host: input.host, port: input.port ?? driver.defaultPort };
  }
  if (input.host !== undefined || input.port !== undefined) {
    throw new UnprocessableError(
      `${driver.type} connections take region and endpoint (a URL such as "https://iam.amazonaws.com"), not host and port`,
    );
  }
  const region = input.region ? { region: input.region } : {};
  if (!input.endpoint) return { host: driver.endpoint.defaultHost, port: driver.defaultPort, ...region };
  let url: URL;
  try {
    url = new URL(input.endpoint);
  } catch {
    throw new UnprocessableError(
      `endpoint "${input.endpoint}" is not a URL such as "https://iam.eu-west-1.amazonaws.com"`,
    );
  }
  if (
    url.username ||
    url.password ||
    url.search ||
    url.hash ||
    (url.pathname !== '/' && url.pathname !== '')
  ) {
    throw new UnprocessableError(
      'endpoint must be a scheme, a host and a port only (no path, query or login)',
    );
  }
  if (url.protocol === 'http:' && !LOOPBACK_HOST.test(url.hostname)) {
    throw new UnprocessableError(
      `endpoint must use https://: http:// is accepted on a loopback address only (an emulator), not on "${url.hostname}"`,
    );
  }
  const port = url.port ? Number(url.port) : url.protocol === 'http:' ? 80 : 443;
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port, endpoint: url.origin, ...region };
}

export interface CredentialInput {
  id: string;
  connection: string;
  username: string;
  strategy: CredentialSpec['strategy'];
  schedule: Schedule;
  store?: StoreSpec;
  password?: Partial<PasswordPolicy>;
  maxAgeDays?: number;
  gracePeriod?: string;
  notifyBefore?: string;
  labels?: Record<string, string>;
  import?: boolean;
  currentPassword?: string;
  /** alternating-users: adopt an existing `<username>_clone` Keyturn did not create, if its access matches. */
  adoptClone?: boolean;
  sync?: SyncSpec[];
  approval?: ApprovalPolicy;
}

export interface CredentialPatch {
  schedule?: Schedule;
  password?: Partial<PasswordPolicy>;
  maxAgeDays?: number | null;
  gracePeriod?: string | null;
  notifyBefore?: string | null;
  labels?: Record<string, string>;
  /** Replaces the sync destinations; null or [] removes them (the Secrets already written stay). */
  sync?: SyncSpec[] | null;
  /** Stops (true) or resumes (false) its scheduled rotations; a manual rotate still runs. */
  paused?: boolean;
  /** Sets dual control; null removes it (the API has the removal or weakening approved first). */
  approval?: ApprovalPolicy | null;
}

/** pausedAt after a PATCH's `paused`: kept while paused (the first pause is when it began), gone once resumed. */
function pausedAfter(
  pausedAt: string | undefined,
  paused: boolean | undefined,
  now: string,
): string | undefined {
  if (paused === undefined) return pausedAt;
  return paused ? (pausedAt ?? now) : undefined;
}

/** Who asks for a change, as far as the registry needs to know: the audit name, and whether they hold the admin role. */
export interface Requester {
  name: string;
  admin: boolean;
}

/** The connection fields that decide where Keyturn sends passwords: changing any of them is an admin action. */
export const REPOINTING_FIELDS = ['host', 'port', 'endpoint', 'database', 'tls', 'options'] as const;

/** A TLS setting as the audit trail shows it: the mode, and the CA as a SHA-256 fingerprint rather than its PEM. */
function tlsForAudit(tls: TlsSpec | undefined): string {
  if (!tls) return 'default';
  const ca = tls.ca ? ` ca=sha256:${createHash('sha256').update(tls.ca).digest('hex').slice(0, 16)}` : '';
  return `${tls.mode}${ca}`;
}

/**
 * The non-secret values a connection change moved, as audit details: `host.from`/`host.to` and so on, for the
 * fields that differ. Labels and options are shown as canonical JSON; the admin password is never part of it.
 */
export function connectionChanges(before: Connection, after: Connection): Record<string, string> {
  const show: Record<string, (c: Connection) => string> = {
    host: (c) => c.host,
    port: (c) => String(c.port),
    region: (c) => c.region ?? '',
    endpoint: (c) => c.endpoint ?? '',
    database: (c) => c.database ?? '',
    tls: (c) => tlsForAudit(c.tls),
    options: (c) => sortedJson(c.options ?? {}),
    labels: (c) => sortedJson(c.labels),
    'admin.username': (c) => c.admin.username,
    pausedAt: (c) => c.pausedAt ?? '',
    approval: (c) => policyText(c.approval),
  };
  const changes: Record<string, string> = {};
  for (const [field, value] of Object.entries(show)) {
    const from = value(before);
    const to = value(after);
    if (from !== to) {
      changes[`${field}.from`] = from;
      changes[`${field}.to`] = to;
    }
  }
  return changes;
}

/** JSON of a flat record with its keys sorted, so that equal records compare (and audit) equal. */
export function sortedJson(record: Record<string, unknown>): string {
  return JSON.stringify(Object.fromEntries(Object.entries(record).sort(([a], [b]) => a.localeCompare(b))));
}

/** What the registry needs of the sync layer: the destinations' checks, and a push of the version now working. */
export interface RegistrySync {
  targets: SyncTargets;
  service: { secretChanged(credential: Credential, versionId: string): Promise<void> };
}

export class RegistryService {
  readonly #registry: Registry;
  readonly #stores: StoreSet;
  readonly #queues: Queues;
  readonly #engine: RotationEngine;
  readonly #rotations: RotationRepo;
  readonly #audit: AuditLog;
  readonly #leases: LeaseService;
  readonly #timeoutMs: number;
  readonly #readerBindings: ReaderBinding[];
  readonly #importFailures: { max: number; windowMs: number };
  readonly #sync: RegistrySync | undefined;

  constructor(deps: {
    registry: Registry;
    stores: StoreSet;
    queues: Queues;
    engine: RotationEngine;
    rotations: RotationRepo;
    audit: AuditLog;
    leases: LeaseService;
    downstreamTimeoutMs: number;
    /** The reader bindings of the tokens file: an operator may not widen or narrow what they reach. */
    readerBindings?: ReaderBinding[];
    /** Failed imports a principal may make per window before imports answer 429. */
    importFailures?: { max: number; windowMs: number };
    /** Sync destinations (src/sync): checked at registration, pushed when they change. */
    sync?: RegistrySync;
  }) {
    this.#registry = deps.registry;
    this.#stores = deps.stores;
    this.#queues = deps.queues;
    this.#engine = deps.engine;
    this.#rotations = deps.rotations;
    this.#audit = deps.audit;
    this.#leases = deps.leases;
    this.#timeoutMs = deps.downstreamTimeoutMs;
    this.#readerBindings = deps.readerBindings ?? [];
    this.#importFailures = deps.importFailures ?? { max: 5, windowMs: 600_000 };
    this.#sync = deps.sync;
  }

  // Connections

  async createConnection(input: ConnectionInput, actor: string): Promise<Connection> {
    const driver = targetDriver(input.type);
    if (!driver) {
      throw new UnprocessableError(
        `Connection type "${input.type}" is not supported (supported: ${Object.keys(TARGET_DRIVERS).join(', ')})`,
      );
    }
    checkOptions(input.type, input.options);
    const adminStore = input.admin.store ?? { type: 'local' as const };
    const store = this.#stores.get(adminStore);
    const now = new Date().toISOString();
    const connection: Connection = {
      id: input.id,
      type: input.type,
      ...connectionAddress(driver, input),
      ...(input.database ? { database: input.database } : {}),
      ...(input.tls ? { tls: input.tls } : {}),
      ...(input.options ? { options: input.options } : {}),
      ...(input.adminRotation ? { adminRotation: input.adminRotation } : {}),
      ...(input.approval ? { approval: input.approval } : {}),
      admin: { username: input.admin.username },
      adminStore,
      adminSetAt: now,
      labels: input.labels ?? {},
      createdAt: now,
      updatedAt: now,
    };
    if (input.adminRotation) this.#checkAdminRotation(connection, input.adminRotation);
    checkPolicy(input.approval);
    await this.#checkOutbound(connection);
    const verified = input.verify !== false;
    if (verified) await this.#verifyAdmin(connection, input.admin);
    await this.#registry.createConnection(connection);
    try {
      await store.putCurrent(
        connectionAdminRef(connection),
        randomUUID(),
        this.#adminDocument(connection, input.admin.password),
      );
    } catch (err) {
      // Without its admin secret the connection is useless: take the record back.
      await this.#registry.deleteConnection(connection.id).catch(() => {});
      throw err;
    }
    await this.#audit.append({
      actor,
      action: 'connection.created',
      outcome: 'success',
      connection: connection.id,
      details: { verified },
    });
    if (connection.adminRotation) await this.#syncAdminSubject(connection);
    return connection;
  }

  /**
   * The outbound fence's early look (net/outbound.ts), verify or not: a destination the policy refuses is a 422 now
   * rather than a failed rotation later. The same rules are applied again at every connect, after DNS resolution.
   */
  async #checkOutbound(connection: Connection): Promise<void> {
    const refused = await checkOutbound(connection.host);
    if (refused) {
      throw new UnprocessableError(
        `connection "${connection.id}" points where Keyturn does not connect: ${refused}`,
      );
    }
  }

  /** The admin's rotation is possible on this connection and its schedule is valid; 422 naming the problem. */
  #checkAdminRotation(connection: Connection, adminRotation?: AdminRotation): void {
    const refused = targetDriver(connection.type)?.adminRotationRefused;
    if (refused) throw new UnprocessableError(refused);
    if (adminRotation) {
      const problems = validateSchedule(adminRotation.schedule).map((p) => `adminRotation.${p}`);
      if (problems.length > 0) throw new UnprocessableError(problems.join('; '));
    }
  }

  /** Writes the connection's admin subject as the connection now is, and arms (or disarms) its schedule. */
  async #syncAdminSubject(connection: Connection): Promise<void> {
    const spec = adminSubjectSpec(connection);
    const current = await this.#stores
      .get(connection.adminStore)
      .describe(connectionAdminRef(connection))
      .catch(() => null);
    const version = Object.keys(current ?? {}).find((v) => current?.[v]?.includes('current'));
    await this.#registry.putAdminSubject(spec, {
      status: 'active',
      ...(version ? { version } : {}),
      activeUsername: spec.username,
      failures: 0,
    });
    await this.#queues.syncSchedule(spec.id);
  }

  /**
   * POST /v1/connections/:id/rotate: rotates the connection's admin password now, with the engine's four steps
   * (its admin subject). While it runs no credential rotation on the connection does (the exclusive connection lock).
   */
  async rotateAdmin(id: string, actor: string): Promise<{ rotation: Rotation; created: boolean }> {
    const connection = await this.#registry.getConnection(id);
    this.#checkAdminRotation(connection);
    await this.#syncAdminSubject(connection);
    const requested = await this.#engine.request(adminSubjectId(id), 'manual', actor);
    if (!requested) throw new NotFoundError(`Connection "${id}" does not exist`);
    return requested;
  }

  /**
   * verify (a connection's registration or change, unless `verify: false`): logs in with the admin being saved and
   * checks the privileges rotations need (the session's checkAdmin), before anything is saved. Why: an admin that
   * cannot rotate would otherwise show only at the first rotation, weeks later. 422 naming what failed.
   */
  async #verifyAdmin(connection: Connection, admin: Login): Promise<void> {
    const driver = targetDriver(connection.type);
    if (!driver) return;
    const where = `connection "${connection.id}" (${connection.type} at ${connection.host}:${connection.port})`;
    const skip = 'or send verify: false to save it unchecked (offline registration)';
    let session: TargetSession | undefined;
    try {
      session = await driver.open(connection, admin, { timeoutMs: this.#timeoutMs });
      const failed = (await session.checkAdmin()).filter((c) => !c.ok);
      if (failed.length > 0) {
        throw new UnprocessableError(
          `verify: the admin "${admin.username}" of ${where} lacks what rotations need: ${failed.map((c) => `${c.name}: ${c.message}`).join('; ')}; grant it, ${skip}`,
        );
      }
    } catch (err) {
      if (err instanceof TargetRefusedError) {
        throw new UnprocessableError(`verify: ${where} refused the check: ${err.message}; ${skip}`);
      }
      if (err instanceof TargetUnavailableError) {
        throw new UnprocessableError(`verify: ${where} could not be checked: ${err.message}; ${skip}`);
      }
      throw err;
    } finally {
      await session?.close().catch(() => {});
    }
  }

  /**
   * Everything a rotation of credential `id` needs, checked without changing anything a service uses: the admin's
   * login and privileges, the current secret in the store, the user downstream and its current password, and that
   * the store takes a write (a probe version written and removed). Audited as rotation.dry_run.
   */
  async dryRun(id: string, actor: string): Promise<DryRun> {
    const credential = await this.#registry.getCredential(id);
    const spec = credential.spec;
    const connection = await this.#registry.getConnection(spec.connection);
    const checks: Check[] = [];
    // Scrubbed like every error: a downstream may echo a password it was sent (noted in the request's secret scope).
    const add = (name: string, ok: boolean, message: string) =>
      checks.push({ name, ok, message: scrubText(message, secretsInScope()) });
    const failure = (err: unknown) => scrubError(err).message;
    const store = this.#stores.get(spec.store);
    const current = await store.read(credentialSecretRef(spec), { stage: 'current' }).then(
      (version) => {
        if (version) add('current secret', true, `the store holds the current version ${version.versionId}`);
        else add('current secret', false, `the store has no current version of "${id}": import it again`);
        return version;
      },
      (err: unknown) => {
        add('current secret', false, `reading it from the store failed: ${failure(err)}`);
        return null;
      },
    );
    let session: TargetSession | undefined;
    try {
      ({ session } = await openDownstream(connection, this.#stores, this.#timeoutMs));
      const privileges = await session.checkAdmin();
      add(
        'admin login',
        true,
        `"${connection.admin.username}" logged in to ${connection.type} at ${connection.host}:${connection.port}`,
      );
      checks.push(...privileges);
      if (current) {
        const username = current.value.username;
        const exists = await session.userExists(username);
        add(
          'user exists',
          exists,
          exists
            ? `"${username}" exists downstream`
            : `"${username}" does not exist downstream: create it, or register the credential again`,
        );
        if (exists) {
          const login = await session.authenticate(loginOf(current.value));
          add(
            'current password',
            login.ok,
            login.ok
              ? `"${username}" logs in with the current secret`
              : `the downstream refuses the current secret of "${username}" (${login.message}): services using it fail now; a rotation sets a new one`,
          );
        }
      }
      if (session.mintedSecrets) {
        // The set step deletes the previous version's key and nothing else Keyturn did not make (engine, #setMinted).
        const previous = await store.read(credentialSecretRef(spec), { stage: 'previous' });
        const keys = await session.mintedSecrets.list(spec.username);
        const staying = keys.filter(
          (k) => k.keyId !== previous?.value.accessKeyId || k.keyId === current?.value.accessKeyId,
        );
        const foreign = staying
          .filter((k) => k.keyId !== current?.value.accessKeyId)
          .map((k) => `"${k.keyId}"`);
        const room = staying.length < session.mintedSecrets.limit;
        add(
          'room for a new key',
          room,
          room
            ? `"${spec.username}" holds ${keys.length} of ${session.mintedSecrets.limit} keys, and the rotation may delete ${keys.length - staying.length} (the previous version's)`
            : `"${spec.username}" holds ${keys.length} of ${session.mintedSecrets.limit} keys and ${foreign.join(', ')} ${foreign.length === 1 ? 'is' : 'are'} not Keyturn's: delete one once no service uses it, or the rotation fails`,
        );
      }
    } catch (err) {
      add('admin login', false, `${failure(err)}`);
    } finally {
      await session?.close().catch(() => {});
    }
    const probe = { spec: spec.store, name: `probe/${id}/${randomUUID()}` };
    try {
      await store.putCurrent(probe, randomUUID(), {
        engine: 'probe',
        host: connection.host,
        port: connection.port,
        username: 'keyturn-probe',
        password: randomUUID(),
      });
      await store.remove(probe);
      add('store writable', true, `the ${spec.store.type} store took a probe version, which was removed`);
    } catch (err) {
      await store.remove(probe).catch(() => {});
      add(
        'store writable',
        false,
        `writing a probe version to the ${spec.store.type} store failed: ${failure(err)}`,
      );
    }
    const ok = checks.every((c) => c.ok);
    await this.#audit.append({
      actor,
      action: 'rotation.dry_run',
      outcome: ok ? 'success' : 'failure',
      credential: id,
      connection: connection.id,
      details: {
        checks: checks.length,
        failed: checks
          .filter((c) => !c.ok)
          .map((c) => c.name)
          .join(','),
      },
    });
    return { ok, checks };
  }

  #adminDocument(connection: Connection, password: string): SecretDocument {
    return secretDocument(connection, engineOf(connection), {
      username: connection.admin.username,
      password,
    });
  }

  async updateConnection(
    id: string,
    patch: ConnectionPatch,
    who: Requester,
    guard?: ApprovalGuard,
    expect: WriteCondition = {},
  ): Promise<Connection> {
    const connection = await this.#registry.getConnection(id);
    checkIfMatch(expect.ifMatch, connection, `Connection "${id}"`);
    if (
      patch.approval !== undefined &&
      guard &&
      policyText(connection.approval) !== policyText(guard.judged)
    ) {
      throw new ConflictError(
        `The approval policy of connection "${id}" changed while this request was checked: retry`,
      );
    }
    checkPolicy(patch.approval);
    const driver = targetDriver(connection.type);
    const readdressed = ['host', 'port', 'region', 'endpoint'].some(
      (f) => patch[f as keyof ConnectionPatch] !== undefined,
    );
    const address =
      driver?.endpoint && readdressed
        ? connectionAddress(driver, {
            region: patch.region ?? connection.region,
            endpoint: patch.endpoint ?? connection.endpoint,
            ...(patch.host !== undefined ? { host: patch.host } : {}),
            ...(patch.port !== undefined ? { port: patch.port } : {}),
          })
        : driver && (patch.region !== undefined || patch.endpoint !== undefined)
          ? connectionAddress(driver, patch)
          : undefined;
    const updated: Connection = {
      ...connection,
      ...(patch.host ? { host: patch.host } : {}),
      ...(patch.port ? { port: patch.port } : {}),
      ...address,
      ...(patch.database ? { database: patch.database } : {}),
      ...(patch.tls ? { tls: patch.tls } : {}),
      ...(patch.labels ? { labels: patch.labels } : {}),
      ...(patch.options ? { options: patch.options } : {}),
      admin: { username: patch.admin?.username ?? connection.admin.username },
      updatedAt: new Date().toISOString(),
    };
    const pausedAt = pausedAfter(connection.pausedAt, patch.paused, updated.updatedAt);
    if (pausedAt) updated.pausedAt = pausedAt;
    else delete updated.pausedAt;
    if (patch.admin?.password !== undefined) updated.adminSetAt = updated.updatedAt;
    if (patch.approval === null) delete updated.approval;
    else if (patch.approval) updated.approval = patch.approval;
    if (patch.adminRotation === null) delete updated.adminRotation;
    else if (patch.adminRotation) {
      this.#checkAdminRotation(updated, patch.adminRotation);
      updated.adminRotation = patch.adminRotation;
    }
    if (patch.admin && (await this.#rotations.inflightId(adminSubjectId(id)))) {
      // Its finish would put its own new password over this one (and it changes the admin downstream meanwhile).
      throw new ConflictError(
        `The admin password of connection "${id}" is being rotated: wait for that rotation to end, then change the admin`,
      );
    }
    const changes = connectionChanges(connection, updated);
    const repointed = REPOINTING_FIELDS.filter((f) => `${f}.from` in changes || `${f}.to` in changes);
    if (repointed.length > 0 && !who.admin) {
      // Every rotation, rollback and login check sends the admin password and the credentials' current and pending
      // passwords to wherever the connection points: moving it is handing those over, whoever sends admin.password.
      await this.#audit.append({
        actor: who.name,
        action: 'connection.updated',
        outcome: 'denied',
        connection: id,
        details: { reason: 'repointing needs the admin role', ...changes },
      });
      throw new ForbiddenError(
        `Changing ${repointed.join(', ')} of connection "${id}" moves where Keyturn sends its admin and credential passwords, so it needs the admin role (${who.name} has not): ask an admin, or register a new connection`,
      );
    }
    if (updated.host !== connection.host) await this.#checkOutbound(updated);
    if (patch.admin?.username !== undefined && patch.admin.username !== connection.admin.username) {
      const users = await this.#registry.connectionUsernames(id, [patch.admin.username]);
      const holder = users[patch.admin.username];
      if (holder !== undefined) {
        throw new UnprocessableError(
          `admin.username "${patch.admin.username}" is the downstream user of credential "${holder}" on connection "${id}": rotating it would change the admin's password behind Keyturn. Use another admin user`,
        );
      }
    }
    checkOptions(connection.type, patch.options);
    const store = this.#stores.get(connection.adminStore);
    const ref = connectionAdminRef(connection);
    const verified = patch.verify !== false && VERIFIED_FIELDS.some((f) => patch[f] !== undefined);
    let password = patch.admin?.password;
    if ((patch.admin || verified) && password === undefined) {
      const current = await store.read(ref, { stage: 'current' });
      if (!current)
        throw new UnprocessableError(`The admin secret of "${id}" is missing; send admin.password`);
      password = current.value.password;
    }
    if (verified && password !== undefined) {
      await this.#verifyAdmin(updated, { username: updated.admin.username, password });
    }
    if (patch.admin && password !== undefined) {
      await store.putCurrent(ref, randomUUID(), this.#adminDocument(updated, password));
    }
    // A change of its approval policy, or one made over a version the client named (If-Match), is written only over
    // the record this request read (check-and-set).
    if (patch.approval !== undefined || expect.ifMatch !== undefined)
      await this.#registry.swapConnection(connection, updated);
    else await this.#registry.saveConnection(updated);
    await this.#audit.append({
      actor: who.name,
      action: 'connection.updated',
      outcome: 'success',
      connection: id,
      details: {
        fields: Object.keys(patch).join(','),
        verified,
        adminSecretChanged: patch.admin?.password !== undefined,
        ...changes,
      },
    });
    // The admin subject follows the connection (its username, schedule, policy), if it has one or now needs one.
    if (updated.adminRotation || (await this.#registry.findCredential(adminSubjectId(id)))) {
      await this.#syncAdminSubject(updated);
    }
    return updated;
  }

  async deleteConnection(id: string, actor: string, expect: WriteCondition = {}): Promise<void> {
    const connection = await this.#registry.getConnection(id);
    checkIfMatch(expect.ifMatch, connection, `Connection "${id}"`);
    const subject = await this.#registry.findCredential(adminSubjectId(id));
    if (subject) {
      const outcome = await this.#registry.deleteCredential(subject.spec);
      if (outcome.outcome === 'busy' || outcome.outcome === 'inflight') {
        throw new ConflictError(
          `The admin password of connection "${id}" is being rotated: wait for that rotation to end, then delete`,
        );
      }
      await this.#queues.removeSchedule(subject.spec.id);
    }
    await this.#registry.deleteConnection(id);
    await this.#stores.get(connection.adminStore).remove(connectionAdminRef(connection));
    await this.#audit.append({ actor, action: 'connection.deleted', outcome: 'success', connection: id });
  }

  // Credentials

  /**
   * The spec's own problems, then, with `askDownstream`, whether a single-user `gracePeriod` can be honoured: on a
   * single-user credential, a session with the downstream must have dualPasswords (asked of the session: MySQL's
   * depends on its server's version).
   */
  async #checkCredential(
    spec: CredentialSpec,
    connection: Connection,
    options: { askDownstream: boolean },
  ): Promise<void> {
    const problems = validateSchedule(spec.schedule);
    const allowed = targetDriver(connection.type)?.registration;
    if (allowed && !allowed.strategies.includes(spec.strategy)) {
      problems.push(
        `strategy "${spec.strategy}" does not apply to ${connection.type} connections (${allowed.strategies.join(', ')} only): ${allowed.why}`,
      );
    }
    if (spec.gracePeriod !== undefined) {
      try {
        const grace = parseDuration(spec.gracePeriod);
        if (problems.length === 0 && 'every' in spec.schedule && grace > parseDuration(spec.schedule.every)) {
          problems.push('gracePeriod must not be longer than the rotation interval (schedule.every)');
        }
      } catch (err) {
        problems.push(`gracePeriod: ${(err as Error).message}`);
      }
    }
    if (spec.notifyBefore !== undefined && problems.length === 0 && 'every' in spec.schedule) {
      // A notice as far ahead as the interval would go out before the rotation it announces had a slot.
      if (parseDuration(spec.notifyBefore) >= parseDuration(spec.schedule.every)) {
        problems.push('notifyBefore must be shorter than the rotation interval (schedule.every)');
      }
    }
    if (spec.sync?.length) {
      problems.push(
        ...(this.#sync
          ? syncProblems(this.#sync.targets, spec.sync)
          : ['sync: this process cannot push secrets']),
      );
    }
    if (problems.length > 0) throw new UnprocessableError(problems.join('; '));
    // Whether the downstream holds two passwords per user is its sessions' to say (dualPasswords): asked when the
    // gracePeriod is given (a registration, or a PATCH that sets it), not at every later PATCH.
    if (options.askDownstream && spec.strategy === 'single-user' && spec.gracePeriod !== undefined) {
      await this.#requireTwoPasswords(connection);
    }
  }

  /**
   * Sync destinations receive the secret: choosing one is handing the secret over (a Kubernetes Secret in a namespace
   * one can read is a secret one can read), and dropping one leaves a service on a password the next rotation ends.
   * So setting, changing or removing them needs the admin role, as giving a reader a secret does (403, audited).
   */
  async #checkSyncChange(
    who: Requester,
    id: string,
    before: SyncSpec[] | undefined,
    after: SyncSpec[] | undefined,
    action: 'credential.created' | 'credential.updated',
  ): Promise<void> {
    const text = (sync: SyncSpec[] | undefined) => JSON.stringify(sync ?? []);
    if (who.admin || text(before) === text(after)) return;
    await this.#audit.append({
      actor: who.name,
      action,
      outcome: 'denied',
      credential: id,
      details: {
        reason: 'sync destinations receive the secret',
        'sync.from': text(before),
        'sync.to': text(after),
      },
    });
    throw new ForbiddenError(
      `Sync destinations receive the secret of credential "${id}" (a Secret in a namespace is readable by whoever reads that namespace), so setting, changing or removing them needs the admin role (${who.name} has not): ask an admin`,
    );
  }

  /** Refuses (422) unless a session with the connection's downstream can hold two passwords per user. */
  async #requireTwoPasswords(connection: Connection): Promise<void> {
    let session: TargetSession;
    try {
      ({ session } = await openDownstream(connection, this.#stores, this.#timeoutMs));
    } catch (err) {
      if (err instanceof UnprocessableError) throw err;
      const why =
        err instanceof TargetRefusedError
          ? "the downstream refused the admin login; check the connection's admin secret, then retry"
          : `the downstream did not answer (${(err as Error).name}); retry`;
      throw new UnprocessableError(
        `gracePeriod on "single-user" needs a server that holds two passwords per user, and connection "${connection.id}" could not be checked: ${why}`,
      );
    }
    try {
      // A downstream that makes its keys keeps the old key next to the new one until the grace period ends.
      if (!session.dualPasswords && !session.mintedSecrets) {
        // The server's version where the session tells it (MySQL), never anything from the admin secret.
        const version = session.serverVersion;
        const server = typeof version === 'string' ? version.replace(/[^\w.+~-]/g, '').slice(0, 80) : '';
        throw new UnprocessableError(
          server
            ? `gracePeriod on "single-user" needs a server that holds two passwords per user (MySQL 8.0.14+ or Redis); connection "${connection.id}" is ${server}`
            : `gracePeriod applies to strategy "alternating-users", or to "single-user" on a downstream that holds two passwords per user (MySQL 8.0.14+ or Redis; not ${connection.type})`,
        );
      }
    } finally {
      await session.close().catch(() => {});
    }
  }

  async createCredential(
    input: CredentialInput,
    who: Requester,
  ): Promise<{ credential: Credential; rotation?: Rotation }> {
    const actor = who.name;
    if (input.import && !input.currentPassword) {
      throw new UnprocessableError('import: true needs currentPassword, the password the user has today');
    }
    if (!input.import && input.currentPassword) {
      throw new UnprocessableError('currentPassword is only accepted with import: true');
    }
    const connection = await this.#registry.findConnection(input.connection);
    if (!connection)
      throw new UnprocessableError(`Connection "${input.connection}" does not exist: register it first`);
    const allowed = targetDriver(connection.type)?.registration;
    if (input.import && allowed && !allowed.import) {
      throw new UnprocessableError(`import does not apply to ${connection.type} connections: ${allowed.why}`);
    }
    const now = new Date();
    const spec: CredentialSpec = {
      id: input.id,
      connection: input.connection,
      username: input.username,
      strategy: input.strategy,
      schedule: input.schedule,
      store: input.store ?? { type: 'local' },
      password: { ...DEFAULT_PASSWORD_POLICY, ...input.password },
      ...(input.maxAgeDays ? { maxAgeDays: input.maxAgeDays } : {}),
      ...(input.gracePeriod ? { gracePeriod: input.gracePeriod } : {}),
      ...(input.notifyBefore ? { notifyBefore: input.notifyBefore } : {}),
      labels: input.labels ?? {},
      ...(input.sync?.length ? { sync: input.sync } : {}),
      ...(input.approval ? { approval: input.approval } : {}),
      createdAt: now.toISOString(),
      updatedAt: now.toISOString(),
    };
    await this.#checkDownstreamUser(spec, connection);
    const readers = this.#readersOf(spec);
    if (readers.length > 0 && !who.admin) {
      await this.#audit.append({
        actor,
        action: 'credential.created',
        outcome: 'denied',
        credential: spec.id,
        connection: spec.connection,
        details: {
          reason: 'reader bindings match it',
          readers: readers.join('; '),
          labels: sortedJson(spec.labels),
        },
      });
      throw new ForbiddenError(
        `Credential "${spec.id}" would be readable through ${readers.join(', ')} (the id or labels match), and giving a reader a secret needs the admin role (${actor} has not): ask an admin, or choose an id and labels no reader binding matches`,
      );
    }
    await this.#checkSyncChange(who, spec.id, undefined, spec.sync, 'credential.created');
    checkPolicy(input.approval);
    if (input.adoptClone && spec.strategy !== 'alternating-users') {
      throw new UnprocessableError('adoptClone applies to strategy "alternating-users" only');
    }
    await this.#checkCredential(spec, connection, { askDownstream: true });
    const store = this.#stores.get(spec.store);
    // Last of the checks, as it asks the downstream: everything the request alone can tell comes first.
    const clone =
      spec.strategy === 'alternating-users' && !targetDriver(connection.type)?.serviceOwnsUsers
        ? await this.#checkClone(spec, connection, input)
        : 'absent';

    if (input.import && input.currentPassword) {
      await this.#checkImport(spec, connection, input.currentPassword, actor);
    }
    // The registry entry first: its creation is the check that the id is free, and nothing may be written to
    // the store under an id that belongs to another credential.
    try {
      await this.#registry.createCredential(spec, { status: 'pending', failures: 0 });
    } catch (err) {
      // NotFound here means the connection vanished between the two reads.
      if (err instanceof NotFoundError) throw new UnprocessableError(err.message);
      throw err;
    }
    if (clone !== 'absent')
      await this.#registry.markMade(connection.id, cloneUsername(spec.username), spec.id);
    let state: CredentialState = { status: 'pending', failures: 0 };
    if (input.import && input.currentPassword) {
      // A version id like a rotation's: a valid AWS ClientRequestToken (32-64 characters).
      const importVersion = `import-${randomUUID()}`;
      try {
        await store.putCurrent(
          credentialSecretRef(spec),
          importVersion,
          secretDocument(connection, engineOf(connection), {
            username: input.username,
            password: input.currentPassword,
          }),
        );
      } catch (err) {
        await this.#registry.deleteCredential(spec).catch(() => {});
        throw err;
      }
      state = {
        status: 'active',
        version: importVersion,
        activeUsername: input.username,
        rotatedAt: now.toISOString(),
        nextRotationAt: this.#queues.nextRotationAt(spec, now)?.toISOString(),
        failures: 0,
      };
      await this.#registry.saveCredentialState(spec.id, state);
    }
    await this.#audit.append({
      actor,
      action: 'credential.created',
      outcome: 'success',
      credential: spec.id,
      connection: spec.connection,
      details: {
        strategy: spec.strategy,
        imported: Boolean(input.import),
        ...(clone === 'adopted' ? { adoptedClone: cloneUsername(spec.username) } : {}),
        ...(clone === 'labelled' ? { labelledClone: cloneUsername(spec.username) } : {}),
      },
    });
    try {
      await this.#queues.upsertSchedule(spec, now);
    } catch (err) {
      // A credential without its scheduler would silently never rotate: take the registration back.
      await this.#registry.deleteCredential(spec).catch(() => {});
      if (input.import) await store.remove(credentialSecretRef(spec)).catch(() => {});
      throw err;
    }
    if (input.import) {
      if (state.version) await this.#pushSync({ spec, state }, state.version);
      return { credential: { spec, state } };
    }
    // The service owns the credential from now on: the first rotation replaces whatever password it had.
    const requested = await this.#engine.request(spec.id, 'register', actor);
    const credential = await this.#registry.getCredential(spec.id);
    return requested ? { credential, rotation: requested.rotation } : { credential };
  }

  /**
   * Refuses a credential on a downstream user that Keyturn must not rotate this way: the connection's own admin
   * (422: its password is the admin secret, changed through the connection), or a user name another credential of
   * the connection already claims (409). The registry's claim is the atomic check; this one answers before any
   * downstream is asked.
   */
  async #checkDownstreamUser(spec: CredentialSpec, connection: Connection): Promise<void> {
    const names = claimedUsernames(spec);
    const admin = connection.admin.username;
    if (names.includes(admin)) {
      const which =
        spec.username === admin
          ? `"${admin}" is the admin user of connection "${connection.id}"`
          : `alternating-users would make "${admin}", the admin user of connection "${connection.id}", its second user`;
      throw new UnprocessableError(
        `${which}: rotating it as a credential would change the password Keyturn itself logs in with, and lock every credential of the connection out. Change the admin password with PATCH /v1/connections/${connection.id} {"admin": {"password": …}} instead, and register the application's own user`,
      );
    }
    const claims = await this.#registry.connectionUsernames(connection.id, names);
    for (const name of names) {
      const holder = claims[name];
      if (holder === undefined || holder === spec.id) continue;
      // A holder left by a registration or delete that crashed half-way holds nothing once it is stale.
      if (await this.#registry.releaseStaleClaim(connection.id, holder)) continue;
      throw new UsernameTakenError(connection.id, name, holder);
    }
  }

  /**
   * alternating-users makes `<username>_clone` on its first rotation and changes its password on every other one.
   * A clone that already exists and that Keyturn did not make belongs to someone: rotating it would lock its owner
   * out and hand the service its privileges. So it is refused (409 clone_exists) unless the request adopts it, and
   * adopted only when its access is the user's (409 clone_access_differs naming the difference). A clone that carries
   * Keyturn's label for this very credential (PostgreSQL, MySQL 8.0.21+: the credential was deleted and is registered
   * again) is Keyturn's own and taken back as it is. The label of an adopted clone is written at its first rotation.
   * Returns what the credential does with the clone: make it (absent), or take the existing one.
   */
  async #checkClone(
    spec: CredentialSpec,
    connection: Connection,
    input: CredentialInput,
  ): Promise<'absent' | 'labelled' | 'adopted'> {
    const clone = cloneUsername(spec.username);
    const { session } = await openDownstream(connection, this.#stores, this.#timeoutMs);
    try {
      const found = session.labelOf
        ? await session.labelOf(clone)
        : (await session.userExists(clone))
          ? { label: null }
          : null;
      if (!found) return 'absent';
      if (found.label === cloneLabel(spec.id)) return 'labelled';
      const madeFor = labelledFor(found.label);
      if (!input.adoptClone) {
        throw new ConflictError(
          `User "${clone}" already exists on connection "${connection.id}" and ${madeFor === null ? 'Keyturn did not create it' : `Keyturn made it for another credential, "${madeFor}" (its label says so)`}: alternating-users would change its password, locking out whoever uses it, and give the service its access. Rename or drop it, use single-user, or, if it is meant to be this pair's second user, send "adoptClone": true (its access must match "${spec.username}"'s)`,
          'clone_exists',
        );
      }
      if (!session.accessOf) {
        throw new UnprocessableError(
          `Connection type "${connection.type}" cannot compare the access of two users, so "${clone}" cannot be adopted: rename or drop it`,
        );
      }
      const [mine, theirs] = [await session.accessOf(spec.username), await session.accessOf(clone)];
      const missing = (mine ?? []).filter((a) => !(theirs ?? []).includes(a));
      const extra = (theirs ?? []).filter((a) => !(mine ?? []).includes(a));
      if (mine === null || missing.length > 0 || extra.length > 0) {
        const show = (list: string[]) => list.slice(0, 5).join('; ') + (list.length > 5 ? '; …' : '');
        throw new ConflictError(
          `User "${clone}" cannot be adopted: its access differs from "${spec.username}"'s${missing.length > 0 ? ` (it lacks: ${show(missing)})` : ''}${extra.length > 0 ? ` (it has more: ${show(extra)})` : ''}${mine === null ? ` ("${spec.username}" does not exist)` : ''}. Give both the same memberships or grants, then register again`,
          'clone_access_differs',
        );
      }
      return 'adopted';
    } catch (err) {
      if (err instanceof ConflictError || err instanceof UnprocessableError) throw err;
      throw new UnprocessableError(
        `Could not check whether "${clone}" exists on connection "${connection.id}": ${err instanceof TargetRefusedError ? 'the downstream refused the admin login or the look-up; check the connection' : `the downstream did not answer (${(err as Error).name}); retry`}`,
      );
    } finally {
      await session.close().catch(() => {});
    }
  }

  /** The reader bindings that reach a credential with this id and these labels. */
  #readersOf(credential: { id: string; labels: Record<string, string> }): string[] {
    return this.#readerBindings.filter((b) => bindingMatches(b, credential)).map((b) => b.source);
  }

  /**
   * Checks an import's currentPassword downstream, as a guarded password check: each failure is an audit event
   * (`credential.import_failed`), and a principal with too many failures in the window gets 429 before the downstream
   * is asked again. Keyturn is never a silent password oracle (finding 13 of issue 11). The attempt is reserved
   * before the downstream is asked (concurrent guesses count too) and given back unless the password was refused.
   */
  async #checkImport(
    spec: CredentialSpec,
    connection: Connection,
    password: string,
    actor: string,
  ): Promise<void> {
    const limit = this.#importFailures;
    const slot = await this.#registry.reserveImportAttempt(actor, limit.max, limit.windowMs);
    if (!slot.allowed) {
      const retryAfter = Math.max(1, Math.ceil(slot.resetInMs / 1000));
      await this.#audit.append({
        actor,
        action: 'credential.import_failed',
        outcome: 'denied',
        credential: spec.id,
        connection: connection.id,
        details: { username: spec.username, reason: 'too many failed imports', failures: slot.count },
      });
      throw new TooManyRequestsError(
        `${actor} has reached ${limit.max} failed imports (a currentPassword the downstream refused) within ${formatDuration(limit.windowMs)}, the limit KEYTURN_IMPORT_FAILURES_MAX sets: retry in ${retryAfter}s, with the password the user really has`,
        retryAfter,
      );
    }
    let refused = false;
    try {
      await this.#verifyLogin(connection, spec.username, password);
    } catch (err) {
      refused = err instanceof UnprocessableError && /does not log in/.test(err.message);
      await this.#audit.append({
        actor,
        action: 'credential.import_failed',
        outcome: 'failure',
        credential: spec.id,
        connection: connection.id,
        details: {
          username: spec.username,
          reason: refused ? 'the downstream refused currentPassword' : 'the password could not be checked',
          failures: refused ? slot.count : slot.count - 1,
        },
      });
      throw err;
    } finally {
      if (!refused) await this.#registry.releaseImportAttempt(actor);
    }
  }

  async #verifyLogin(connection: Connection, username: string, password: string): Promise<void> {
    const { session } = await openDownstream(connection, this.#stores, this.#timeoutMs);
    try {
      const result = await session.authenticate({ username, password });
      if (!result.ok) {
        throw new UnprocessableError(
          `currentPassword does not log in as "${username}" on connection "${connection.id}": ${result.message}`,
        );
      }
    } catch (err) {
      if (err instanceof UnprocessableError) throw err;
      throw new UnprocessableError(
        `Could not check currentPassword on connection "${connection.id}": the downstream did not answer (${(err as Error).name})`,
      );
    } finally {
      await session.close();
    }
  }

  async updateCredential(
    id: string,
    patch: CredentialPatch,
    who: Requester,
    guard?: ApprovalGuard,
    expect: WriteCondition = {},
  ): Promise<Credential> {
    const actor = who.name;
    const { spec } = await this.#registry.getCredential(id);
    checkIfMatch(expect.ifMatch, spec, `Credential "${id}"`);
    checkPolicy(patch.approval);
    const approvalChange: Record<string, string> =
      patch.approval !== undefined && policyText(patch.approval) !== policyText(spec.approval)
        ? { 'approval.from': policyText(spec.approval), 'approval.to': policyText(patch.approval) }
        : {};
    const labelChange: Record<string, string> =
      patch.labels && sortedJson(patch.labels) !== sortedJson(spec.labels)
        ? { 'labels.from': sortedJson(spec.labels), 'labels.to': sortedJson(patch.labels) }
        : {};
    if (patch.labels && !who.admin) {
      const before = this.#readersOf(spec);
      const after = this.#readersOf({ id, labels: patch.labels });
      const gained = after.filter((r) => !before.includes(r));
      const lost = before.filter((r) => !after.includes(r));
      if (gained.length > 0 || lost.length > 0) {
        await this.#audit.append({
          actor,
          action: 'credential.updated',
          outcome: 'denied',
          credential: id,
          details: { reason: 'the labels change which readers reach it', ...labelChange },
        });
        const what = [
          gained.length > 0 ? `give ${gained.join(', ')} its secret` : '',
          lost.length > 0 ? `take it from ${lost.join(', ')}` : '',
        ]
          .filter(Boolean)
          .join(' and ');
        throw new ForbiddenError(
          `These labels would ${what}; changing which readers reach a credential needs the admin role (${actor} has not): ask an admin, or leave out the labels reader bindings use`,
        );
      }
    }
    if (patch.sync !== undefined) {
      await this.#checkSyncChange(who, id, spec.sync, patch.sync ?? undefined, 'credential.updated');
    }
    // The spec only, re-applied to whatever spec is current when written (compare-and-set): a rotation finishing or
    // another PATCH meanwhile loses nothing, and the engine's state is never written from an earlier read.
    const apply = (current: CredentialSpec): CredentialSpec => {
      // Inside the compare-and-set: the version the client read is the one written over, or nothing is written.
      checkIfMatch(expect.ifMatch, current, `Credential "${id}"`);
      if (patch.labels && !who.admin && sortedJson(current.labels) !== sortedJson(spec.labels)) {
        throw new ConflictError(
          `The labels of credential "${id}" changed while this request was checked: retry`,
        );
      }
      if (
        patch.approval !== undefined &&
        guard &&
        policyText(current.approval) !== policyText(guard.judged)
      ) {
        throw new ConflictError(
          `The approval policy of credential "${id}" changed while this request was checked: retry`,
        );
      }
      const next: CredentialSpec = {
        ...current,
        ...(patch.schedule ? { schedule: patch.schedule } : {}),
        ...(patch.password ? { password: { ...current.password, ...patch.password } } : {}),
        ...(patch.labels ? { labels: patch.labels } : {}),
        updatedAt: new Date().toISOString(),
      };
      if (patch.maxAgeDays === null) delete next.maxAgeDays;
      else if (patch.maxAgeDays !== undefined) next.maxAgeDays = patch.maxAgeDays;
      if (patch.gracePeriod === null) delete next.gracePeriod;
      else if (patch.gracePeriod !== undefined) next.gracePeriod = patch.gracePeriod;
      if (patch.notifyBefore === null) delete next.notifyBefore;
      else if (patch.notifyBefore !== undefined) next.notifyBefore = patch.notifyBefore;
      if (patch.sync === null || patch.sync?.length === 0) delete next.sync;
      else if (patch.sync !== undefined) next.sync = patch.sync;
      if (patch.approval === null) delete next.approval;
      else if (patch.approval !== undefined) next.approval = patch.approval;
      const pausedAt = pausedAfter(current.pausedAt, patch.paused, next.updatedAt);
      if (pausedAt) next.pausedAt = pausedAt;
      else delete next.pausedAt;
      return next;
    };
    // The downstream is asked only when the patch sets a grace period: a schedule or label change must not
    // depend on the server answering at that moment.
    const connection = await this.#registry.getConnection(spec.connection);
    await this.#checkCredential(apply(spec), connection, {
      askDownstream: typeof patch.gracePeriod === 'string',
    });
    await this.#registry.updateCredentialSpec(id, apply);
    // Takes effect at once: the scheduler is replaced, and the advertised next rotation follows it. From the spec and
    // last rotation as they are when armed, never from what this request read (a rotation may finish meanwhile).
    // A new notice time follows the same way (its notice is armed with the slot).
    if (patch.schedule || patch.notifyBefore !== undefined) await this.#queues.syncSchedule(id);
    const credential = await this.#registry.getCredential(id);
    // New destinations get the version that works now, not only the next rotation's.
    if (patch.sync?.length && credential.state.version) {
      await this.#pushSync(credential, credential.state.version);
    }
    await this.#audit.append({
      actor,
      action: 'credential.updated',
      outcome: 'success',
      credential: id,
      details: {
        fields: Object.keys(patch).join(','),
        ...labelChange,
        ...approvalChange,
        ...(patch.paused !== undefined
          ? { paused: patch.paused, pausedAt: credential.spec.pausedAt ?? null }
          : {}),
      },
    });
    return credential;
  }

  /** Queues a push of the version that works now; a failure to queue is not the registration's (the job reports). */
  async #pushSync(credential: Credential, versionId: string): Promise<void> {
    await this.#sync?.service.secretChanged(credential, versionId).catch(() => {});
  }

  async deleteCredential(id: string, actor: string, expect: WriteCondition = {}): Promise<void> {
    const { spec } = await this.#registry.getCredential(id);
    checkIfMatch(expect.ifMatch, spec, `Credential "${id}"`);
    const refuse = (rotation: string | undefined, busy: boolean) =>
      new ConflictError(
        rotation
          ? `Credential "${id}" has rotation ${rotation} ${busy ? 'running' : 'in flight'}; delete it once GET /v1/rotations/${rotation} shows it ended`
          : `Credential "${id}" is being worked on downstream (a grace-period revocation); retry in a few seconds`,
      );
    // Checked first, before leases are revoked; the delete below checks again in the same step as it deletes.
    const inflight = await this.#rotations.inflight(id);
    if (inflight && (inflight.status !== 'queued' || inflight.attempts > 0)) throw refuse(inflight.id, false);
    // A lease user outliving its credential would be access nobody tracks: they go first, or the delete waits.
    await this.#leases.revokeAllOf(id, actor);
    const now = new Date().toISOString();
    const result = await this.#registry.deleteCredential(spec, (rotation) =>
      rotation.status === 'queued' && rotation.attempts === 0
        ? {
            ...rotation,
            status: 'failed',
            finishedAt: now,
            updatedAt: now,
            error: {
              step: 'create',
              code: 'cancelled',
              message:
                'cancelled: the credential was deleted before this rotation started; nothing was changed',
              at: now,
            },
          }
        : null,
    );
    if (result.outcome === 'missing') throw new NotFoundError(`Credential "${id}" does not exist`);
    if (result.outcome !== 'deleted') throw refuse(result.rotation, result.outcome === 'busy');
    // After the delete, never before: a refused delete must leave the credential rotating on schedule. A tick that
    // fires in between finds no credential and requests nothing.
    await this.#queues.removeSchedule(id);
    if (result.cancelled) {
      await this.#queues.cancelRotation(result.cancelled);
      await this.#audit.append({
        actor,
        action: 'rotation.cancelled',
        outcome: 'success',
        credential: id,
        rotation: result.cancelled,
        details: { reason: 'credential deleted before the rotation started' },
      });
    }
    // The local store is Keyturn's own: its copy goes with the credential. A secret in Vault or AWS belongs to
    // the team's account and its consumers, so it is left where it is.
    if (spec.store.type === 'local') await this.#stores.get(spec.store).remove(credentialSecretRef(spec));
    await this.#audit.append({ actor, action: 'credential.deleted', outcome: 'success', credential: id });
  }
}

/**
 * A connection's target-specific options, the same on create and on change: the driver's own check, or, for a
 * driver that takes none, any option named is refused (an empty object names none). 422 naming each problem.
 */
function checkOptions(type: string, options: Record<string, string | number | boolean> | undefined): void {
  if (!options) return;
  const driver = targetDriver(type);
  const problems = driver?.validateOptions
    ? driver.validateOptions(options)
    : Object.keys(options).length > 0
      ? [`connections of type "${type}" take no options`]
      : [];
  if (problems.length > 0) throw new UnprocessableError(problems.map((p) => `options: ${p}`).join('; '));
}
