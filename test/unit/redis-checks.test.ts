// Issue 12: what start-up makes of the Redis it reaches (src/redis/checks.ts): an evicting policy is refused, a
// Redis without an append-only file, a Sentinel master that accepts writes without a replica and a local store whose
// pending secrets cannot be confirmed durable are each warned about, and the durability mode follows the server.
import { describe, expect, it } from 'vitest';
import type { RedisSettings } from '../../src/config/redis-topology.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { checkRedis, durabilityFor } from '../../src/redis/checks.ts';
import { type RedisFacts, RedisStartError } from '../../src/redis/client.ts';

const facts = (over: Partial<RedisFacts> = {}): RedisFacts => ({
  topology: 'standalone 127.0.0.1:6379',
  writeNodes: ['127.0.0.1:6379'],
  version: '7.0.15',
  appendonly: true,
  maxmemoryPolicy: 'noeviction',
  connectedReplicas: 1,
  minReplicasToWrite: 1,
  hashListpackValue: 1024,
  ...over,
});
const standalone: RedisSettings = {
  topology: { kind: 'standalone', url: 'redis://127.0.0.1:6379' },
  minReplicasAck: 1,
  waitTimeoutMs: 5000,
};
const sentinel: RedisSettings = {
  topology: { kind: 'sentinel', sentinels: [{ host: '127.0.0.1', port: 26379 }], masterName: 'm' },
  minReplicasAck: 1,
  waitTimeoutMs: 5000,
};

function run(f: RedisFacts, settings: RedisSettings) {
  const lines: string[] = [];
  const logger = createLogger({
    level: 'info',
    format: 'json',
    destination: { write: (l: string) => lines.push(l) },
  });
  const durability = checkRedis(f, settings, logger);
  return {
    durability,
    warnings: lines
      .map((l) => JSON.parse(l))
      .filter((l) => l.level === 40)
      .map((l) => l.msg),
  };
}

describe('start-up checks of Redis', () => {
  it('refuses a policy that evicts keys, naming it and the fix', () => {
    expect(() => run(facts({ maxmemoryPolicy: 'allkeys-lru' }), standalone)).toThrow(RedisStartError);
    expect(() => run(facts({ maxmemoryPolicy: 'volatile-lru' }), standalone)).toThrow(
      /set maxmemory-policy noeviction/,
    );
  });

  it('is quiet about a Redis set up for production', () => {
    expect(run(facts(), sentinel).warnings).toEqual([]);
  });

  it('warns about no append-only file, an unreadable policy, and too few replicas', () => {
    const { warnings } = run(
      facts({ appendonly: false, maxmemoryPolicy: null, connectedReplicas: 0 }),
      standalone,
    );
    expect(warnings.join('\n')).toContain('appendonly no');
    expect(warnings.join('\n')).toContain('could not read maxmemory-policy');
    expect(warnings.join('\n')).toContain(
      'KEYTURN_REDIS_MIN_REPLICAS_ACK is 1 but the master has 0 replica(s)',
    );
  });

  it('warns when hashes of a few hundred bytes are not kept compact (issue 14: ~400 bytes a credential)', () => {
    expect(run(facts({ hashListpackValue: 64 }), sentinel).warnings.join('\n')).toContain(
      'set hash-max-listpack-value 1024',
    );
    expect(run(facts({ hashListpackValue: null }), sentinel).warnings).toEqual([]);
  });

  it('warns when a Sentinel master accepts writes with no replica (lost in a failover)', () => {
    expect(run(facts({ minReplicasToWrite: 0 }), sentinel).warnings.join('\n')).toContain(
      'set min-replicas-to-write 1',
    );
    expect(run(facts({ minReplicasToWrite: 0 }), standalone).warnings).toEqual([]);
  });

  it('waits with WAITAOF on 7.2+, with WAIT before, and says so when it cannot wait at all', () => {
    expect(durabilityFor(facts({ version: '7.2.4' }), standalone)).toEqual({
      mode: 'waitaof',
      local: 1,
      replicas: 1,
      timeoutMs: 5000,
    });
    expect(durabilityFor(facts(), standalone)).toEqual({ mode: 'wait', replicas: 1, timeoutMs: 5000 });
    const none = run(facts({ connectedReplicas: 0 }), { ...standalone, minReplicasAck: 0 });
    expect(none.durability).toEqual({ mode: 'none' });
    expect(none.warnings.join('\n')).toContain('not confirmed durable');
  });
});
