// Which Redis Keyturn uses (SPEC, "Redis topologies"): exactly one of a single node (REDIS_URL), a Sentinel-managed
// master (REDIS_SENTINEL_HOSTS + REDIS_SENTINEL_MASTER_NAME) or a Redis Cluster (REDIS_CLUSTER_HOSTS). The node
// credentials and TLS apply to the Redis nodes of any topology. Parsed here, connected in src/redis/client.ts.

export interface HostPort {
  host: string;
  port: number;
}

export type RedisTopology =
  | { kind: 'standalone'; url: string }
  | {
      kind: 'sentinel';
      sentinels: HostPort[];
      masterName: string;
      /** The sentinels' own password (`requirepass` of the sentinels), when they have one. */
      sentinelPassword?: string;
    }
  | { kind: 'cluster'; nodes: HostPort[] };

export interface RedisSettings {
  topology: RedisTopology;
  /** ACL user and password of the Redis nodes (REDIS_URL may carry its own instead). */
  username?: string;
  password?: string;
  /** TLS to the Redis nodes (and to the sentinels); `caFile` when their CA is not a public one. */
  tls?: { caFile?: string };
  /**
   * Replicas that must acknowledge a local-store pending secret before a password changes downstream (WAIT). Durable
   * write-ahead: a failover that loses the master's last writes never loses a password already set downstream.
   */
  minReplicasAck: number;
  /** How long that acknowledgement may take before the rotation attempt fails (and is retried). */
  waitTimeoutMs: number;
}

type Env = Record<string, string | undefined>;

const TOPOLOGY_VARIABLES = ['REDIS_URL', 'REDIS_SENTINEL_HOSTS', 'REDIS_CLUSTER_HOSTS'] as const;

/**
 * `host:port,host:port,…` (IPv6 as `[::1]:26379`). Names the variable and the bad entry (a host list carries no
 * secret), or returns the list.
 */
export function parseHostList(name: string, raw: string, problems: string[]): HostPort[] {
  const out: HostPort[] = [];
  const entries = raw.split(',').map((e) => e.trim());
  for (const entry of entries) {
    const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(entry);
    const port = m ? Number(m[3]) : 0;
    if (!m || port < 1 || port > 65535) {
      problems.push(
        `${name} must be host:port entries separated by commas (IPv6 as [addr]:port), got "${entry || '(empty entry)'}"`,
      );
      continue;
    }
    out.push({ host: (m[1] ?? m[2]) as string, port });
  }
  return out;
}

/** Reads the topology variables; every problem goes to `problems` (one line each, never a password). */
export function redisSettings(
  env: Env,
  int: (name: string, fallback: number, min: number, max: number) => number,
  problems: string[],
): RedisSettings & { urlDefaulted: boolean } {
  const set = TOPOLOGY_VARIABLES.filter((name) => env[name]?.trim());
  if (set.length > 1) {
    problems.push(
      `${set.join(' and ')} are ${set.length === 2 ? 'both' : 'all'} set: Keyturn uses exactly one Redis topology (REDIS_URL for one node, REDIS_SENTINEL_HOSTS with REDIS_SENTINEL_MASTER_NAME, or REDIS_CLUSTER_HOSTS); unset the others`,
    );
  }
  const sentinelHosts = env.REDIS_SENTINEL_HOSTS?.trim();
  const clusterHosts = env.REDIS_CLUSTER_HOSTS?.trim();
  const masterName = env.REDIS_SENTINEL_MASTER_NAME?.trim();
  const sentinelPassword = env.REDIS_SENTINEL_PASSWORD || undefined;
  let topology: RedisTopology;
  if (sentinelHosts) {
    if (!masterName) {
      problems.push(
        'REDIS_SENTINEL_HOSTS is set but REDIS_SENTINEL_MASTER_NAME is not: name the master the sentinels monitor (as in `sentinel monitor <name> …`)',
      );
    }
    topology = {
      kind: 'sentinel',
      sentinels: parseHostList('REDIS_SENTINEL_HOSTS', sentinelHosts, problems),
      masterName: masterName ?? '',
      ...(sentinelPassword ? { sentinelPassword } : {}),
    };
  } else if (clusterHosts) {
    topology = { kind: 'cluster', nodes: parseHostList('REDIS_CLUSTER_HOSTS', clusterHosts, problems) };
  } else {
    const url = env.REDIS_URL?.trim() || 'redis://127.0.0.1:6379';
    try {
      const u = new URL(url);
      if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
        problems.push(`REDIS_URL must start with redis:// or rediss://, got "${u.protocol}//…"`);
      }
    } catch {
      // The URL may carry a password: name the variable, never echo it.
      problems.push('REDIS_URL is not a valid URL (expected redis://[user:password@]host:port[/db])');
    }
    topology = { kind: 'standalone', url };
  }
  if (!sentinelHosts && (masterName || sentinelPassword)) {
    problems.push(
      'REDIS_SENTINEL_MASTER_NAME and REDIS_SENTINEL_PASSWORD only apply with REDIS_SENTINEL_HOSTS: set it, or unset them',
    );
  }

  const tlsRaw = env.REDIS_TLS?.trim().toLowerCase();
  if (tlsRaw && !['true', 'false', '1', '0'].includes(tlsRaw)) {
    problems.push(`REDIS_TLS must be true or false, got "${env.REDIS_TLS}"`);
  }
  const caFile = env.REDIS_TLS_CA_FILE?.trim() || undefined;
  const tlsOn = tlsRaw === 'true' || tlsRaw === '1';
  if (caFile && !tlsOn && !(topology.kind === 'standalone' && topology.url.startsWith('rediss:'))) {
    problems.push('REDIS_TLS_CA_FILE needs REDIS_TLS=true (or a rediss:// REDIS_URL)');
  }
  const username = env.REDIS_USERNAME?.trim() || undefined;
  const password = env.REDIS_PASSWORD || undefined;
  if (username && !password)
    problems.push('REDIS_USERNAME needs REDIS_PASSWORD (an ACL user logs in with both)');

  return {
    topology,
    ...(username ? { username } : {}),
    ...(password ? { password } : {}),
    ...(tlsOn || caFile ? { tls: caFile ? { caFile } : {} } : {}),
    minReplicasAck: int('KEYTURN_REDIS_MIN_REPLICAS_ACK', 0, 0, 100),
    waitTimeoutMs: int('KEYTURN_REDIS_WAIT_TIMEOUT_MS', 5000, 10, 600_000),
    urlDefaulted: set.length === 0,
  };
}

/** The topology in words, for /readyz, `keyturn status` and the start-up log (no password). */
export function describeTopology(topology: RedisTopology): string {
  switch (topology.kind) {
    case 'standalone': {
      try {
        const u = new URL(topology.url);
        return `standalone ${u.hostname}:${u.port || '6379'}`;
      } catch {
        return 'standalone';
      }
    }
    case 'sentinel':
      return `sentinel master "${topology.masterName}" via ${topology.sentinels.map((s) => `${s.host}:${s.port}`).join(',')}`;
    case 'cluster':
      return `cluster seeded by ${topology.nodes.map((n) => `${n.host}:${n.port}`).join(',')}`;
  }
}
