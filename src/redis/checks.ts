// What start-up checks of the Redis it reaches (docs/operations: "Redis for production"): a policy that evicts keys
// is refused (an evicted sealed secret, lease or lock is a lockout), a Redis without an append-only file and a
// local store whose pending secrets cannot be confirmed durable are warned about.

import type { RedisSettings } from '../config/redis-topology.ts';
import type { Logger } from '../logging/logger.ts';
import { type RedisFacts, RedisStartError } from './client.ts';

/**
 * How the local store confirms a pending secret is durable before a password changes downstream:
 * - `waitaof`: WAITAOF (Redis 7.2+): fsynced to the master's append-only file and, if asked, to replicas' ones;
 * - `wait`: WAIT for KEYTURN_REDIS_MIN_REPLICAS_ACK replicas to have it in memory;
 * - `none`: not confirmed (warned at start).
 */
export type Durability =
  | { mode: 'waitaof'; local: 0 | 1; replicas: number; timeoutMs: number }
  | { mode: 'wait'; replicas: number; timeoutMs: number }
  | { mode: 'none' };

function atLeast(version: string, major: number, minor: number): boolean {
  const [a = 0, b = 0] = version.split('.').map(Number);
  return a > major || (a === major && b >= minor);
}

export function durabilityFor(facts: RedisFacts, settings: RedisSettings): Durability {
  const replicas = settings.minReplicasAck;
  const timeoutMs = settings.waitTimeoutMs;
  if (atLeast(facts.version, 7, 2) && (facts.appendonly === true || replicas > 0)) {
    return { mode: 'waitaof', local: facts.appendonly === true ? 1 : 0, replicas, timeoutMs };
  }
  if (replicas > 0) return { mode: 'wait', replicas, timeoutMs };
  return { mode: 'none' };
}

/** The hash-max-listpack-value that keeps a credential's record and sealed secret compact (see checkRedis). */
export const COMPACT_HASH_VALUE = 1024;

/** Refuses what would lose data silently; warns about what weakens durability. Returns the durability to use. */
export function checkRedis(facts: RedisFacts, settings: RedisSettings, logger: Logger): Durability {
  if (facts.maxmemoryPolicy !== null && facts.maxmemoryPolicy !== 'noeviction') {
    throw new RedisStartError(
      `Redis (${facts.topology}) evicts keys under memory pressure (maxmemory-policy ${facts.maxmemoryPolicy}): Keyturn's sealed secrets, leases and locks must never be evicted; set maxmemory-policy noeviction`,
    );
  }
  if (facts.maxmemoryPolicy === null) {
    logger.warn(
      { topology: facts.topology },
      'could not read maxmemory-policy (CONFIG refused): make sure it is noeviction, or Redis may evict sealed secrets and locks',
    );
  }
  if (facts.appendonly === false) {
    logger.warn(
      { topology: facts.topology },
      'Redis keeps no append-only file (appendonly no): a restart of a node without replicas loses its latest writes; set appendonly yes for production',
    );
  }
  if (facts.hashListpackValue !== null && facts.hashListpackValue < COMPACT_HASH_VALUE) {
    // Issue 14: measured by `npm run bench scale`, about 2.3 KB a credential with the default 64, 1.9 KB with 1024.
    logger.warn(
      { topology: facts.topology, hashListpackValue: facts.hashListpackValue },
      `Redis keeps hashes with values over ${facts.hashListpackValue} bytes as hash tables, so each credential's record and sealed secret take about 400 bytes more than they need: set hash-max-listpack-value ${COMPACT_HASH_VALUE} (1,000,000 credentials then fit in 2 GiB)`,
    );
  }
  if (settings.minReplicasAck > facts.connectedReplicas) {
    logger.warn(
      { replicas: facts.connectedReplicas, required: settings.minReplicasAck },
      `KEYTURN_REDIS_MIN_REPLICAS_ACK is ${settings.minReplicasAck} but the master has ${facts.connectedReplicas} replica(s) now: local-store rotations fail (and retry) until enough replicas acknowledge`,
    );
  }
  if (settings.topology.kind === 'sentinel' && facts.minReplicasToWrite === 0) {
    // Sentinel promotes a replica without stopping the old master first: what the old master takes meanwhile is lost
    // when it turns replica (test/ha/sentinel-failover.test.ts saw an accepted rotation request vanish).
    logger.warn(
      { topology: facts.topology },
      'the Sentinel master has min-replicas-to-write 0: writes it accepts during a failover, after its replica was promoted, are lost; set min-replicas-to-write 1 (and min-replicas-max-lag) on the data nodes',
    );
  }
  const durability = durabilityFor(facts, settings);
  if (durability.mode === 'none') {
    logger.warn(
      { topology: facts.topology, version: facts.version },
      facts.connectedReplicas > 0
        ? 'local-store pending secrets are not confirmed durable before a password changes downstream: set KEYTURN_REDIS_MIN_REPLICAS_ACK (WAIT) so that a failover cannot lose one'
        : 'local-store pending secrets are not confirmed durable before a password changes downstream: Redis has no replica and no WAITAOF (7.2+ with appendonly yes); a crash of Redis can lose a password set downstream',
    );
  } else {
    logger.info(
      { durability },
      'local-store pending secrets are confirmed durable before a password changes downstream',
    );
  }
  return durability;
}
