// Wires the layers together for one process: the API, the workers, or both (KEYTURN_COMPONENTS). Every
// dependency is built here and handed down, so tests build the same graph with their own Redis prefix.
import { createPublicKey } from 'node:crypto';
import { hostname } from 'node:os';
import type { FastifyInstance } from 'fastify';
import { buildApp } from './api/app.ts';
import type { ApiContext } from './api/context.ts';
import { httpsOptions } from './api/hardening.ts';
import { SharedRateLimit } from './api/rate-limit-store.ts';
import { startTokensReload } from './api/tokens-reload.ts';
import { AuditArchiver } from './audit/archive.ts';
import { AuditLog } from './audit/audit-log.ts';
import { AuditOutbox } from './audit/outbox.ts';
import { AuditSealer } from './audit/sealer.ts';
import { SealerThread } from './audit/sealer-thread.ts';
import { loadAuditKeys } from './audit/signing.ts';
import { AuditTrail } from './audit/trail.ts';
import { Authenticator } from './auth/authenticator.ts';
import { JwtAuthenticator } from './auth/jwt.ts';
import type { ReaderBinding } from './auth/principal.ts';
import { readerBindings } from './auth/tokens-file.ts';
import { TokensWatcher } from './auth/tokens-watcher.ts';
import { type Clock, systemClock } from './clock.ts';
import { OverdueScanner } from './compliance/overdue-scan.ts';
import { ComplianceReport } from './compliance/report.ts';
import type { KeyturnConfig } from './config/config.ts';
import { DekCache } from './crypto/dek-cache.ts';
import { Envelope } from './crypto/envelope.ts';
import { EventHub } from './events/event-hub.ts';
import { checkKeyring, createKeyring } from './keys/index.ts';
import { LeaseRepo } from './leases/lease-repo.ts';
import { LeaseService } from './leases/lease-service.ts';
import type { Logger } from './logging/logger.ts';
import { Metrics } from './metrics/metrics.ts';
import { configureOutbound } from './net/outbound.ts';
import { Notifier } from './notifications/notifier.ts';
import { checkRedis } from './redis/checks.ts';
import { createRedisClient, duplicateClient, probeRedis } from './redis/client.ts';
import { ApprovalRepo } from './registry/approvals.ts';
import { RedisKeys } from './registry/keys.ts';
import { Registry } from './registry/registry.ts';
import { RekeyService } from './rekey/rekey.ts';
import { RotationEngine } from './rotation/engine.ts';
import { Failpoints } from './rotation/failpoints.ts';
import { LeaseManager } from './rotation/lease.ts';
import { RotationRepo } from './rotation/rotation-repo.ts';
import { SecretReader } from './rotation/secret-reader.ts';
import { DueIndex } from './scheduling/due-index.ts';
import { Queues, QueueWorkers } from './scheduling/queues.ts';
import { ApprovalService } from './service/approvals.ts';
import { RegistryService } from './service/registry-service.ts';
import { AwsStore } from './stores/aws-store.ts';
import { StoreSet } from './stores/index.ts';
import { LocalStore } from './stores/local-store.ts';
import { OpenCache } from './stores/open-cache.ts';
import { VaultStore, vaultRequester } from './stores/vault-store.ts';
import { syncTargets } from './sync/index.ts';
import { SyncService } from './sync/sync-jobs.ts';
import { TARGET_DRIVERS } from './targets/index.ts';

export interface RuntimeOptions {
  config: KeyturnConfig;
  logger: Logger;
  /**
   * Resolved admin token (configured or development one); absent in production when the tokens file provides
   * administrators (boot.ts).
   */
  adminToken?: string;
  /**
   * KEYTURN_MASTER_KEY, or the development key boot.ts made: the env key provider's key. Absent when the primary
   * provider is AWS KMS or Vault transit and no env key is kept for reading.
   */
  masterKey?: Buffer;
  /** The time credential age and overdue are judged by (tests move it); the system clock by default. */
  clock?: Clock;
}

export interface Runtime {
  app: FastifyInstance | undefined;
  workers: QueueWorkers | undefined;
  /** The audit chain's sealer (worker component), for tests that seal on demand. */
  sealer: AuditSealer | undefined;
  ctx: ApiContext;
  queues: Queues;
  /** Starts listening (API) and consuming (workers). Returns the bound address when the API runs. */
  start(): Promise<string | undefined>;
  close(): Promise<void>;
}

export async function createRuntime(options: RuntimeOptions): Promise<Runtime> {
  const { config, logger } = options;
  // Before any driver connects anywhere (net/outbound.ts).
  configureOutbound(config.outbound);
  // Read at start, before anything connects: a bad file stops the start with every problem listed. A changed file is
  // read again and put in force while the process runs (api/tokens-reload.ts); a bad one then keeps the last good.
  const tokensWatcher =
    config.tokensFile && config.components.includes('api')
      ? await TokensWatcher.open(config.tokensFile, { logger })
      : undefined;
  const tokens = tokensWatcher?.current;
  // Updated in place by a reload: the registry service holds this array.
  const bindings: ReaderBinding[] = tokens ? readerBindings(tokens) : [];
  // TLS files are read before anything connects too: an unreadable or mismatched file stops the start.
  const https = httpsOptions(config.tls);
  // Commands fail fast when Redis is away, so that an API call answers 503 instead of hanging; BullMQ's
  // connection retries forever (its blocking reads would otherwise throw), so workers pause and resume.
  // One connection without retries first: a topology that cannot work stops the start with one line.
  const facts = await probeRedis(config.redis);
  const durability = checkRedis(facts, config.redis, logger);
  logger.info(
    { topology: facts.topology, writeNodes: facts.writeNodes, version: facts.version },
    'redis reached',
  );
  const redis = createRedisClient(config.redis, 'commands', config.prefix);
  const queueRedis = createRedisClient(config.redis, 'queue', `${config.prefix}:queues`);
  for (const r of [redis, queueRedis])
    r.on('error', (err: Error) => logger.warn({ err: { message: err.message } }, 'redis connection error'));
  await Promise.all([redis.connect(), queueRedis.connect()]);

  const keys = new RedisKeys(config.prefix, { clustered: config.redis.topology.kind === 'cluster' });
  const outbox = new AuditOutbox(redis, keys);
  const registry = new Registry(redis, keys);
  const claimed = await registry.migrateUsernameClaims();
  if (claimed > 0)
    logger.info({ credentials: claimed }, 'claimed the downstream user names of existing credentials');
  const audit = new AuditLog(redis, keys);
  // The secret read path's memo of opened values (stores/open-cache.ts): it saves the AES opens of a value read again
  // and again, never a Redis read; plaintext stays at most 30 s, and at most 1000 values are kept.
  const timeoutMs = config.rotation.downstreamTimeoutMs;
  const vaultStore = config.vault ? new VaultStore({ ...config.vault, timeoutMs }, logger) : undefined;
  // The key-encryption key's providers (src/keys/): checked before anything is sealed; the primary must work.
  const keyring = createKeyring(
    { ...config.kek, ...(options.masterKey ? { masterKey: options.masterKey } : {}), timeoutMs },
    vaultStore ? { vault: vaultRequester(vaultStore) } : {},
  );
  await checkKeyring(keyring, (message) => logger.warn(message));
  // Unwrapped data keys in memory only, for KEYTURN_KEK_CACHE_TTL: a read then costs no KMS or Vault call.
  const dekCache = new DekCache({
    ttlMs: config.kek.cacheTtlMs,
    maxEntries: config.kek.cacheMaxEntries,
    clock: options.clock ?? systemClock,
  });
  const localStore = new LocalStore(redis, keys, new Envelope(keyring, dekCache), {
    durability,
    connectionName: `${config.prefix}:durable-writes`,
    openCache: new OpenCache({ ttlMs: 30_000, maxEntries: 1000, clock: options.clock ?? systemClock }),
  });
  const stores = new StoreSet().add(localStore);
  if (vaultStore) stores.add(vaultStore);
  if (config.aws) stores.add(new AwsStore({ ...config.aws, timeoutMs }));
  const rotations = new RotationRepo(redis, keys, options.clock ?? systemClock);
  const failpoints = new Failpoints(config.failpoints);
  if (failpoints.enabled) logger.warn({ failpoints: config.failpoints }, 'test failpoints are enabled');
  // One registry per runtime. Its computed series are read at scrape time only, when the queues below exist.
  const metrics = new Metrics({
    sources: {
      credentials: () => registry.credentialBatches(),
      queues: () => queues.all(),
      pausedConnections: async () =>
        new Set((await registry.listConnections()).filter((c) => c.pausedAt).map((c) => c.id)),
    },
    logger,
    targetTypes: Object.keys(TARGET_DRIVERS),
    clock: options.clock ?? systemClock,
  });
  audit.onAppendLatency = (seconds) => metrics.auditAppended(seconds);
  const queueSettings = {
    prefix: keys.queuePrefix(),
    backoffMs: config.rotation.backoffMs,
    lockMs: config.rotation.leaseMs,
    concurrency: config.rotation.concurrency,
    reconcileEveryMs: config.rotation.reconcileIntervalMs,
    leaseSweepEveryMs: config.leases.sweepIntervalMs,
    leaseConcurrency: config.leases.concurrency,
    overdueScanEveryMs: config.overdueScanIntervalMs,
  };
  const queues = new Queues(queueRedis, queueSettings, registry, new DueIndex(redis, keys));
  // Kubernetes Secret sync (src/sync): queued by the engine when a version starts to work, pushed by the workers.
  const syncTargetMap = syncTargets(config);
  const sync = new SyncService({
    connection: queueRedis,
    settings: {
      prefix: keys.queuePrefix(),
      backoffMs: config.rotation.backoffMs,
      attempts: 12,
      lockMs: config.rotation.leaseMs,
    },
    registry,
    rotations,
    stores,
    audit,
    targets: syncTargetMap,
    logger,
    observer: metrics,
  });
  const engine = new RotationEngine({
    registry,
    rotations,
    stores,
    audit,
    outbox,
    leases: new LeaseManager(redis, keys, config.rotation.leaseMs),
    failpoints,
    logger,
    hooks: queues,
    clock: options.clock ?? systemClock,
    observer: metrics,
    secretObserver: sync,
    settings: {
      maxAttempts: config.rotation.attempts,
      downstreamTimeoutMs: config.rotation.downstreamTimeoutMs,
      holder: `${hostname()}:${process.pid}`,
    },
  });
  const leases = new LeaseService({
    registry,
    repo: new LeaseRepo(redis, keys),
    stores,
    audit,
    logger,
    settings: {
      defaultTtlMs: config.leases.defaultTtlMs,
      maxTtlMs: config.leases.maxTtlMs,
      concurrency: config.leases.concurrency,
      retentionMs: config.leases.retentionMs,
      downstreamTimeoutMs: config.rotation.downstreamTimeoutMs,
    },
    planner: queues,
  });
  const secrets = new SecretReader({
    redis,
    keys,
    stores,
    local: localStore,
    audit,
    clock: options.clock ?? systemClock,
    timeoutMs: config.rotation.downstreamTimeoutMs,
    maxAgeMs: config.secretMaxAgeMs,
  });
  const service = new RegistryService({
    registry,
    stores,
    queues,
    engine,
    rotations,
    audit,
    leases,
    downstreamTimeoutMs: config.rotation.downstreamTimeoutMs,
    readerBindings: bindings,
    importFailures: config.importFailures,
    sync: { targets: syncTargetMap, service: sync },
  });
  const clock = options.clock ?? systemClock;
  // Workers sign checkpoints (the sealer); the API needs only the public keys.
  const auditKeys = await loadAuditKeys(config.audit, {
    needsSigner: config.components.includes('worker'),
    production: process.env.NODE_ENV === 'production',
    stateDir: config.stateDir,
    logger,
  });
  const auditTrail = new AuditTrail(redis, keys, auditKeys.publicKeys);
  const compliance = new ComplianceReport({ registry, clock });
  // Dual control: records kept a week past their expiry, for GET /v1/approvals (the audit trail keeps them for good).
  const approvals = new ApprovalService({
    repo: new ApprovalRepo(redis, keys, { retentionMs: 7 * 86_400_000 }),
    audit,
    clock,
    ttlMs: config.approvalTtlMs,
    digestKey: await localStore.systemKey('approval-digest'),
  });
  // Rekey (src/rekey/): requested through the API, walked by a worker.
  const rekey = new RekeyService({
    redis,
    connection: queueRedis,
    keys,
    store: localStore,
    keyring,
    audit,
    clock,
    logger,
    settings: {
      prefix: keys.queuePrefix(),
      lockMs: config.rotation.leaseMs,
      backoffMs: config.rotation.backoffMs,
    },
    failpoints,
  });
  const ctx: ApiContext = {
    redis,
    redisSettings: config.redis,
    registry,
    service,
    approvals,
    rekey,
    engine,
    rotations,
    secrets,
    stores,
    audit,
    leases,
    clock,
    compliance,
    auditTrail,
    ...(tokensWatcher ? { tokensFile: () => tokensWatcher.status() } : {}),
    // Nothing connects until the first subscriber: a worker-only process never starts it.
    events: new EventHub({
      redis,
      connectFollower: () => duplicateClient(redis, { blocking: true, name: `${config.prefix}:events` }),
      keys,
      registry,
      logger,
      settings: config.events,
    }),
  };

  const runsApi = config.components.includes('api');
  const sealer = auditKeys.signer
    ? new AuditSealer({
        redis,
        keys,
        store: auditTrail.store,
        signer: auditKeys.signer,
        publicKey: createPublicKey(auditKeys.signer),
        settings: {
          checkpointEvents: config.audit.checkpointEvents,
          checkpointIntervalMs: config.audit.checkpointIntervalMs,
          batch: 1000,
        },
        clock,
        logger,
      })
    : undefined;
  if (sealer && config.audit.archiveDir) {
    const archiver = new AuditArchiver({
      redis,
      keys,
      store: auditTrail.store,
      publicKeys: auditKeys.publicKeys,
      settings: {
        dir: config.audit.archiveDir,
        retentionDays: config.audit.retentionDays,
        streamDays: config.audit.streamDays,
      },
      clock,
      logger,
    });
    sealer.afterRound(() => archiver.runIfDue());
  }
  // API and workers in one process (`npm start`): the sealing loop runs in a thread of its own, off the API's event
  // loop (audit/sealer-thread.ts). Not with an injected clock (tests that move time keep the sealer in-process).
  const sealerThread =
    sealer && auditKeys.signer && runsApi && !options.clock
      ? new SealerThread(
          {
            redis: config.redis,
            prefix: config.prefix,
            clustered: keys.clustered,
            signerPem: String(auditKeys.signer.export({ type: 'pkcs8', format: 'pem' })),
            publicKeysPem: auditKeys.publicKeys.map((k) => String(k.export({ type: 'spki', format: 'pem' }))),
            settings: {
              checkpointEvents: config.audit.checkpointEvents,
              checkpointIntervalMs: config.audit.checkpointIntervalMs,
              batch: 1000,
            },
            ...(config.audit.archiveDir
              ? {
                  archive: {
                    dir: config.audit.archiveDir,
                    retentionDays: config.audit.retentionDays,
                    streamDays: config.audit.streamDays,
                  },
                }
              : {}),
            log: { level: config.logLevel, format: config.logFormat },
          },
          logger,
        )
      : undefined;
  const workers = config.components.includes('worker')
    ? new QueueWorkers({
        connection: queueRedis,
        settings: queueSettings,
        queues,
        engine,
        registry,
        rotations,
        audit,
        outbox,
        leases,
        logger,
        overdue: new OverdueScanner({ redis, keys, registry, clock, logger }),
        observer: metrics,
        ...(config.notifications.webhookUrls.length > 0 && config.notifications.webhookSecret
          ? {
              notifier: new Notifier({
                redis,
                keys,
                queue: queues.notifications,
                audit,
                logger,
                settings: {
                  ...config.notifications,
                  webhookSecret: config.notifications.webhookSecret,
                  // As long as a dead worker's BullMQ job waits before another takes it.
                  reclaimIdleMs: 2 * config.rotation.leaseMs,
                },
              }),
            }
          : {}),
      })
    : undefined;
  // A worker-only process still answers the probes and /metrics on PORT, for its orchestrator and Prometheus.
  const jwt = tokens?.jwt.length ? new JwtAuthenticator(tokens.jwt) : undefined;
  const authenticator = new Authenticator({
    ...(options.adminToken !== undefined ? { adminToken: options.adminToken } : {}),
    ...(tokens ? { tokens } : {}),
    ...(jwt ? { jwt } : {}),
  });
  const app = await buildApp({
    ctx,
    logger,
    authenticator,
    maxBodyBytes: config.maxBodyBytes,
    ...(https ? { https } : {}),
    // Counted in Redis, shared by every API replica; in this process while Redis is away.
    rateLimit: { ...config.rateLimit, shared: new SharedRateLimit({ redis, keys, logger }) },
    corsOrigins: config.corsOrigins,
    routes: runsApi ? 'all' : 'health',
    metrics,
  });

  let tokensReload: { close(): void } | undefined;
  let closed = false;
  return {
    app,
    workers,
    ctx,
    queues,
    sealer,
    async start() {
      if (workers) await workers.start();
      if (workers) await sync.start();
      if (workers) await rekey.startWorker();
      if (sealerThread) await sealerThread.start();
      else sealer?.start();
      if (tokensWatcher) {
        tokensReload = startTokensReload({
          watcher: tokensWatcher,
          authenticator,
          jwt,
          readerBindings: bindings,
          audit,
          events: ctx.events,
          logger,
          staticAdmin: options.adminToken !== undefined,
        });
      }
      return app.listen({ port: config.port, host: config.host });
    },
    async close() {
      if (closed) return;
      closed = true;
      tokensReload?.close();
      await app.close().catch((err) => logger.error({ err }, 'closing the API failed'));
      await workers?.close().catch((err) => logger.error({ err }, 'closing the workers failed'));
      await sealerThread?.close().catch((err) => logger.error({ err }, 'closing the audit sealer failed'));
      await sealer?.close().catch((err) => logger.error({ err }, 'closing the audit sealer failed'));
      await sync.close().catch((err) => logger.error({ err }, 'closing the sync worker failed'));
      await rekey.close().catch((err) => logger.error({ err }, 'closing the rekey worker failed'));
      await queues.close().catch(() => {});
      await stores.close().catch(() => {});
      dekCache.close();
      for (const provider of keyring.all) await provider.close().catch(() => {});
      metrics.close();
      await Promise.all([redis.quit().catch(() => {}), queueRedis.quit().catch(() => {})]);
    },
  };
}
