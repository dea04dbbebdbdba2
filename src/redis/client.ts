// The Redis connections of one process, for every topology (SPEC, "Redis topologies"): ioredis follows a Sentinel
// master through failovers and a Cluster through slot moves; nothing here does failover itself. Each role gets the
// retry policy its callers need:
// - commands fail fast while no master can take them, so that an API call answers 503 instead of hanging;
// - BullMQ's connection retries forever (its blocking reads must never throw), so workers pause and resume.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Cluster, type ClusterOptions, Redis, type RedisOptions } from 'ioredis';
import { describeTopology, type RedisSettings } from '../config/redis-topology.ts';

/** A connection to Keyturn's Redis, whatever its topology: every command Keyturn uses exists on both. */
export type RedisClient = Redis | Cluster;

export type ConnectionRole = 'commands' | 'queue';

/** Redis cannot take commands right now (no master, failover in progress, cluster down): retry shortly. */
export class RedisUnavailableError extends Error {
  constructor(cause: string) {
    super(`Redis cannot take writes right now (${cause}); retry in a few seconds`);
    this.name = 'RedisUnavailableError';
  }
}

// What ioredis and Redis say while a master is away or moving: connection errors, the retry limit of a command,
// a replica refusing writes, and the states of a Cluster or Sentinel set during failover.
const UNAVAILABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENOTFOUND',
]);
const UNAVAILABLE_REPLIES =
  /^(READONLY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|LOADING|NOREPLICAS|UNBLOCKED)\b|Connection is closed|Stream isn't writeable|All sentinels are unreachable|Failed to refresh slots cache|Cluster isn't ready|None of startup nodes is available|Reached the max retries per request|Command timed out|max retries per request/;

/** True when `err` means Redis is unreachable or failing over (a 503 and a retry), not a bug (a 500). */
export function isRedisUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err instanceof RedisUnavailableError) return true;
  if (err.name === 'MaxRetriesPerRequestError' || err.name === 'ClusterAllFailedError') return true;
  const code = (err as { code?: string }).code;
  if (code && UNAVAILABLE_CODES.has(code)) return true;
  return UNAVAILABLE_REPLIES.test(err.message);
}

function tlsOptions(settings: RedisSettings): RedisOptions['tls'] | undefined {
  if (!settings.tls) return undefined;
  return settings.tls.caFile ? { ca: readFileSync(settings.tls.caFile) } : {};
}

/** Options shared by every node connection: credentials, TLS, and the role's retry policy. */
function nodeOptions(settings: RedisSettings, role: ConnectionRole, name: string): RedisOptions {
  const tls = tlsOptions(settings);
  return {
    lazyConnect: true,
    connectionName: name,
    ...(settings.username ? { username: settings.username } : {}),
    ...(settings.password ? { password: settings.password } : {}),
    ...(tls ? { tls } : {}),
    // Commands: the commands issued in one tick by all concurrent requests go out as one pipeline (one write, one
    // read), so that a hundred concurrent secret reads cost a few socket writes, not hundreds (docs/architecture.md,
    // "Auto-pipelining"). The queue connection is BullMQ's and keeps its defaults.
    ...(role === 'commands'
      ? { maxRetriesPerRequest: 2, enableOfflineQueue: true, enableAutoPipelining: true }
      : { maxRetriesPerRequest: null }),
  };
}

// EVAL by SHA. Keyturn's Lua scripts (fenced commits, the local store, the registry) run through `eval` with their
// text; these clients send EVALSHA instead, and the text only when Redis answers NOSCRIPT (once per script after a
// restart or failover, since a replica promoted to master may not hold the script cache). A rotation runs about
// a dozen scripts of up to a few kilobytes each: sending and hashing the text on every call was a tenth of a
// worker's CPU (issue 14, docs/architecture.md "Scripts by SHA"). Pipelines and MULTI keep plain EVAL.
const SHAS = new Map<string, string>();
const shaOf = (script: string): string => {
  let sha = SHAS.get(script);
  if (!sha) {
    sha = createHash('sha1').update(script).digest('hex');
    SHAS.set(script, sha);
  }
  return sha;
};
type EvalArg = string | Buffer | number;
async function evalBySha(
  client: Redis | Cluster,
  plainEval: (...args: EvalArg[]) => Promise<unknown>,
  args: EvalArg[],
): Promise<unknown> {
  const [script, ...rest] = args;
  if (typeof script !== 'string' || typeof rest[rest.length - 1] === 'function') return plainEval(...args);
  try {
    return await client.evalsha(shaOf(script), ...(rest as [number, ...EvalArg[]]));
  } catch (err) {
    if (!/^NOSCRIPT/.test((err as Error).message)) throw err;
    return plainEval(...args);
  }
}

class ScriptCachingRedis extends Redis {
  // biome-ignore lint/suspicious/noExplicitAny: the override stands for all of ioredis's overloads of eval
  override eval(...args: any[]): any {
    return evalBySha(this, (...a) => super.eval(...(a as [string, number])), args);
  }
}

class ScriptCachingCluster extends Cluster {
  // biome-ignore lint/suspicious/noExplicitAny: the override stands for all of ioredis's overloads of eval
  override eval(...args: any[]): any {
    return evalBySha(this, (...a) => super.eval(...(a as [string, number])), args);
  }
}

/** A new connection of `role` to the configured topology (not yet connected: call `connect()`). */
export function createRedisClient(settings: RedisSettings, role: ConnectionRole, name: string): RedisClient {
  const options = nodeOptions(settings, role, name);
  const { topology } = settings;
  switch (topology.kind) {
    case 'standalone':
      return new ScriptCachingRedis(topology.url, options);
    case 'sentinel':
      return new ScriptCachingRedis({
        ...options,
        sentinels: topology.sentinels,
        name: topology.masterName,
        role: 'master',
        ...(topology.sentinelPassword ? { sentinelPassword: topology.sentinelPassword } : {}),
        ...(options.tls ? { enableTLSForSentinelMode: true, sentinelTLS: options.tls } : {}),
        // Subscribes to the sentinels' +switch-master: the client moves to a new master as soon as it is elected,
        // instead of when the old one's connection drops.
        failoverDetector: true,
        sentinelRetryStrategy: (times: number) => Math.min(100 * times, 2000),
      });
    case 'cluster': {
      // Per-node options (credentials, TLS, the role's retries) go to every node; the offline queue is the cluster's.
      const { lazyConnect: _lazy, enableOfflineQueue, ...redisOptions } = options;
      const clusterOptions: ClusterOptions = {
        lazyConnect: true,
        redisOptions,
        // Writes and reads go to masters: a replica may lag a write the caller just made.
        scaleReads: 'master',
        // Commands of one tick are sent as one pipeline per node: listing many credentials stays one round trip.
        enableAutoPipelining: true,
        ...(enableOfflineQueue !== undefined ? { enableOfflineQueue } : {}),
        clusterRetryStrategy: (times: number) => Math.min(100 * times, 2000),
        ...(options.tls ? { dnsLookup: (address, callback) => callback(null, address) } : {}),
      };
      return new ScriptCachingCluster(topology.nodes, clusterOptions);
    }
  }
}

/** The topology and the node(s) that take writes now, for /readyz and `keyturn status`. */
export async function writeNodes(client: RedisClient): Promise<string[]> {
  if (client instanceof Cluster) {
    return client
      .nodes('master')
      .map((n) => `${n.options.host}:${n.options.port}`)
      .sort();
  }
  const stream = (client as unknown as { stream?: { remoteAddress?: string; remotePort?: number } }).stream;
  if (stream?.remoteAddress) return [`${stream.remoteAddress}:${stream.remotePort}`];
  return [`${client.options.host}:${client.options.port}`];
}

export { describeTopology };

/**
 * A new connection like `client` (same topology, credentials and TLS), for a blocking read that must hold a
 * connection of its own; `blocking` makes it retry forever instead of failing its command while Redis is away.
 */
export function duplicateClient(
  client: RedisClient,
  options: { blocking?: boolean; name?: string } = {},
): RedisClient {
  const overrides: Partial<RedisOptions> = {
    // A blocking read holds its connection: nothing may be pipelined behind it.
    ...(options.blocking ? { maxRetriesPerRequest: null, enableAutoPipelining: false } : {}),
    ...(options.name ? { connectionName: options.name } : {}),
  };
  if (client instanceof Cluster) {
    return client.duplicate(undefined, {
      ...(options.blocking ? { maxRetriesPerRequest: null, enableAutoPipelining: false } : {}),
      redisOptions: {
        ...client.options.redisOptions,
        ...(options.name ? { connectionName: options.name } : {}),
      },
    });
  }
  return client.duplicate({ ...overrides, lazyConnect: false });
}

/** What start-up learns from the Redis it reaches, for its checks and warnings. */
export interface RedisFacts {
  topology: string;
  /** Node(s) that take writes: the master (Sentinel, standalone) or every master (Cluster). */
  writeNodes: string[];
  version: string;
  /** `appendonly yes` on the write node(s), or null when CONFIG is not allowed (managed Redis). */
  appendonly: boolean | null;
  maxmemoryPolicy: string | null;
  /**
   * `hash-max-listpack-value`: the longest hash value Redis keeps in the compact listpack encoding; null when CONFIG
   * is not allowed. A credential's record and its sealed secret hold values of a few hundred bytes.
   */
  hashListpackValue: number | null;
  /** Replicas connected to the master now (the smallest over a Cluster's masters). */
  connectedReplicas: number;
  /** `min-replicas-to-write` of the master (the smallest over a Cluster's masters), or null when CONFIG is refused. */
  minReplicasToWrite: number | null;
}

/** Why start-up could not use Redis, in one line that names the variable to check (never a password). */
export class RedisStartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RedisStartError';
  }
}

function explainStartFailure(settings: RedisSettings, messages: string[]): string {
  const where = describeTopology(settings.topology);
  const all = messages.join(' | ');
  const sentinel = settings.topology.kind === 'sentinel';
  if (/No such master with that name/.test(all) && settings.topology.kind === 'sentinel') {
    return `Redis: the sentinels (${where}) monitor no master named "${settings.topology.masterName}": check REDIS_SENTINEL_MASTER_NAME against \`sentinel monitor <name>\` in their configuration`;
  }
  if (
    sentinel &&
    /All sentinels are unreachable/.test(all) &&
    /WRONGPASS|NOAUTH|invalid password/i.test(all)
  ) {
    return `Redis: the sentinels (${where}) refused the sentinel password: check REDIS_SENTINEL_PASSWORD`;
  }
  if (/WRONGPASS|invalid username-password|invalid password/i.test(all)) {
    return `Redis (${where}) refused Keyturn's user name or password: check REDIS_USERNAME and REDIS_PASSWORD (or the password in REDIS_URL)`;
  }
  if (/NOAUTH/.test(all)) {
    return `Redis (${where}) requires a password and none was given: set REDIS_PASSWORD (and REDIS_USERNAME for an ACL user)`;
  }
  if (sentinel && /All sentinels are unreachable/.test(all)) {
    return `Redis: no sentinel answers (${where}): check REDIS_SENTINEL_HOSTS and that the sentinels run`;
  }
  if (/None of startup nodes is available|Failed to refresh slots cache|ClusterAllFailed/.test(all)) {
    return `Redis: no node of the cluster answers (${where}): check REDIS_CLUSTER_HOSTS and that the cluster runs (\`redis-cli --cluster check\`)`;
  }
  if (/cluster support disabled/i.test(all)) {
    return `Redis (${where}) is not a cluster node: use REDIS_URL or REDIS_SENTINEL_HOSTS for it, or enable cluster mode`;
  }
  const first = messages[0] ?? 'no answer';
  return `Redis (${where}) cannot be used: ${first}. Check the topology variables (REDIS_URL, REDIS_SENTINEL_HOSTS, REDIS_CLUSTER_HOSTS) and that Redis runs`;
}

/** Cuts every configured password out of a message (an error may quote what it was given). */
function withoutPasswords(settings: RedisSettings, message: string): string {
  let out = message;
  const secrets = [
    settings.password,
    settings.topology.kind === 'sentinel' ? settings.topology.sentinelPassword : undefined,
  ];
  if (settings.topology.kind === 'standalone') {
    try {
      secrets.push(decodeURIComponent(new URL(settings.topology.url).password) || undefined);
    } catch {}
  }
  for (const s of secrets) if (s) out = out.split(s).join('***');
  return out;
}

/**
 * Connects once, without retrying, and reads what the start-up checks need. A topology that cannot be used (an
 * unreachable sentinel, a wrong master name, a wrong password, a node that is not a cluster) throws
 * RedisStartError with one line; the caller stops the start with it.
 */
export async function probeRedis(settings: RedisSettings, timeoutMs = 5000): Promise<RedisFacts> {
  const noRetry: Partial<RedisOptions> & Partial<ClusterOptions> = {
    retryStrategy: () => null,
    sentinelRetryStrategy: () => null,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
  };
  const base = createRedisClient(settings, 'commands', 'keyturn-probe');
  base.disconnect();
  const client =
    base instanceof Cluster
      ? new Cluster(settings.topology.kind === 'cluster' ? settings.topology.nodes : [], {
          ...base.options,
          clusterRetryStrategy: () => null,
          redisOptions: { ...base.options.redisOptions, ...noRetry },
          slotsRefreshTimeout: timeoutMs,
        })
      : new Redis({ ...base.options, ...noRetry });
  const seen: string[] = [];
  client.on('error', (err: Error) => seen.push(err.message));
  const timer = setTimeout(() => {
    seen.push(`no answer within ${timeoutMs / 1000}s`);
    client.disconnect();
  }, timeoutMs + 1000);
  try {
    await client.connect();
    if (client instanceof Cluster) {
      const masters = client.nodes('master');
      const facts = await Promise.all(masters.map((node) => nodeFacts(node)));
      return {
        topology: describeTopology(settings.topology),
        writeNodes: await writeNodes(client),
        version: facts[0]?.version ?? '',
        appendonly: facts.some((f) => f.appendonly === null) ? null : facts.every((f) => f.appendonly),
        maxmemoryPolicy:
          facts.find((f) => f.maxmemoryPolicy !== 'noeviction')?.maxmemoryPolicy ??
          facts[0]?.maxmemoryPolicy ??
          null,
        connectedReplicas: Math.min(...facts.map((f) => f.connectedReplicas)),
        hashListpackValue: facts.some((f) => f.hashListpackValue === null)
          ? null
          : Math.min(...facts.map((f) => f.hashListpackValue as number)),
        minReplicasToWrite: facts.some((f) => f.minReplicasToWrite === null)
          ? null
          : Math.min(...facts.map((f) => f.minReplicasToWrite as number)),
      };
    }
    const f = await nodeFacts(client);
    if (f.clusterEnabled) {
      throw new Error('this node has cluster support enabled: use REDIS_CLUSTER_HOSTS for a Redis Cluster');
    }
    return { topology: describeTopology(settings.topology), writeNodes: await writeNodes(client), ...f };
  } catch (err) {
    const messages = [(err as Error).message, ...seen].filter((m) => m !== 'Connection is closed.');
    if (messages.length === 0) messages.push('the connection was closed');
    throw new RedisStartError(withoutPasswords(settings, explainStartFailure(settings, messages)));
  } finally {
    clearTimeout(timer);
    client.disconnect();
  }
}

async function nodeFacts(
  node: Redis,
): Promise<Omit<RedisFacts, 'topology' | 'writeNodes'> & { clusterEnabled: boolean }> {
  const info = await node.info();
  const field = (name: string) => new RegExp(`^${name}:(.*)$`, 'm').exec(info)?.[1]?.trim();
  const config = async (name: string): Promise<string | null> => {
    try {
      const reply = (await node.config('GET', name)) as string[];
      return reply[1] ?? null;
    } catch {
      return null; // CONFIG is renamed or refused on many managed services
    }
  };
  const aof = field('aof_enabled');
  return {
    version: field('redis_version') ?? '',
    appendonly: aof === undefined ? null : aof === '1',
    maxmemoryPolicy: (await config('maxmemory-policy')) ?? field('maxmemory_policy') ?? null,
    connectedReplicas: Number(field('connected_slaves') ?? 0),
    hashListpackValue: ((v) => (v === null ? null : Number(v)))(
      (await config('hash-max-listpack-value')) ?? (await config('hash-max-ziplist-value')),
    ),
    minReplicasToWrite: ((v) => (v === null ? null : Number(v)))(await config('min-replicas-to-write')),
    clusterEnabled: field('cluster_enabled') === '1',
  };
}
