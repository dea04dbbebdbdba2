// Issue 12: the Redis topology variables (SPEC, "Redis topologies"): exactly one of REDIS_URL, REDIS_SENTINEL_HOSTS
// with REDIS_SENTINEL_MASTER_NAME, or REDIS_CLUSTER_HOSTS; node credentials and TLS for any of them; one clear line per
// problem, never a password.
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.ts';
import { describeTopology } from '../../src/config/redis-topology.ts';

function problems(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

describe('Redis topologies', () => {
  it('reads a Sentinel set, with its passwords and TLS', () => {
    const config = loadConfig({
      REDIS_SENTINEL_HOSTS: '10.0.0.1:26379, sentinel-2.internal:26379,[::1]:26380',
      REDIS_SENTINEL_MASTER_NAME: 'keyturn',
      REDIS_SENTINEL_PASSWORD: 'sentinel-secret',
      REDIS_USERNAME: 'keyturn',
      REDIS_PASSWORD: 'node-secret',
      REDIS_TLS: 'true',
      KEYTURN_REDIS_MIN_REPLICAS_ACK: '1',
    });
    expect(config.redis).toEqual({
      topology: {
        kind: 'sentinel',
        sentinels: [
          { host: '10.0.0.1', port: 26379 },
          { host: 'sentinel-2.internal', port: 26379 },
          { host: '::1', port: 26380 },
        ],
        masterName: 'keyturn',
        sentinelPassword: 'sentinel-secret',
      },
      username: 'keyturn',
      password: 'node-secret',
      tls: {},
      minReplicasAck: 1,
      waitTimeoutMs: 5000,
    });
    expect(config.redisUrlDefaulted).toBe(false);
    expect(describeTopology(config.redis.topology)).toBe(
      'sentinel master "keyturn" via 10.0.0.1:26379,sentinel-2.internal:26379,::1:26380',
    );
  });

  it('reads a Cluster', () => {
    const config = loadConfig({ REDIS_CLUSTER_HOSTS: '127.0.0.1:7000,127.0.0.1:7001' });
    expect(config.redis.topology).toEqual({
      kind: 'cluster',
      nodes: [
        { host: '127.0.0.1', port: 7000 },
        { host: '127.0.0.1', port: 7001 },
      ],
    });
    expect(config.redisUrlDefaulted).toBe(false);
  });

  it('refuses two topologies at once, naming the variables', () => {
    const p = problems({ REDIS_URL: 'redis://:pw@h:6379', REDIS_CLUSTER_HOSTS: 'a:1' });
    expect(p.join('\n')).toMatch(/REDIS_URL and REDIS_CLUSTER_HOSTS are both set: Keyturn uses exactly one/);
    const three = problems({
      REDIS_URL: 'redis://h',
      REDIS_SENTINEL_HOSTS: 'a:1',
      REDIS_SENTINEL_MASTER_NAME: 'm',
      REDIS_CLUSTER_HOSTS: 'b:2',
    });
    expect(three.join('\n')).toContain('REDIS_URL and REDIS_SENTINEL_HOSTS and REDIS_CLUSTER_HOSTS');
  });

  it('refuses a malformed host list, naming the bad entry', () => {
    expect(problems({ REDIS_CLUSTER_HOSTS: 'a:1,b' })).toEqual([
      'REDIS_CLUSTER_HOSTS must be host:port entries separated by commas (IPv6 as [addr]:port), got "b"',
    ]);
    expect(problems({ REDIS_CLUSTER_HOSTS: 'a:1,,b:2' })[0]).toContain('(empty entry)');
    expect(problems({ REDIS_SENTINEL_HOSTS: 'a:70000', REDIS_SENTINEL_MASTER_NAME: 'm' })[0]).toContain(
      '"a:70000"',
    );
    expect(problems({ REDIS_SENTINEL_HOSTS: 'http://a:1', REDIS_SENTINEL_MASTER_NAME: 'm' })).toHaveLength(1);
  });

  it('refuses a Sentinel set without its master name, and Sentinel settings without Sentinel', () => {
    expect(problems({ REDIS_SENTINEL_HOSTS: 'a:26379' })[0]).toMatch(/REDIS_SENTINEL_MASTER_NAME is not/);
    expect(problems({ REDIS_SENTINEL_MASTER_NAME: 'm' })[0]).toMatch(/only apply with REDIS_SENTINEL_HOSTS/);
  });

  it('never echoes a password in a problem', () => {
    const secret = 'Sup3r-Secret-Value';
    const p = problems({
      REDIS_URL: `http://user:${secret}@x`,
      REDIS_SENTINEL_PASSWORD: secret,
      REDIS_USERNAME: 'u',
      REDIS_TLS: 'maybe',
    }).join('\n');
    expect(p).not.toContain(secret);
    expect(p).toContain('REDIS_TLS must be true or false');
    expect(problems({ REDIS_USERNAME: 'u' })[0]).toContain('REDIS_USERNAME needs REDIS_PASSWORD');
    expect(problems({ REDIS_TLS_CA_FILE: '/ca.pem' })[0]).toContain('REDIS_TLS_CA_FILE needs REDIS_TLS=true');
  });
});
