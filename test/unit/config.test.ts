import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.ts';

/** Runs loadConfig and returns the ConfigError it throws (fails the test when it does not throw one). */
function configError(env: Record<string, string | undefined>): ConfigError {
  try {
    loadConfig(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

describe('loadConfig defaults', () => {
  it('gives the documented defaults for an empty environment', () => {
    const config = loadConfig({});
    expect(config.port).toBe(8080);
    expect(config.host).toBe('127.0.0.1');
    expect(config.redisUrl).toBe('redis://127.0.0.1:6379');
    expect(config.redisUrlDefaulted).toBe(true);
    expect(config.prefix).toBe('keyturn');
    expect(config.adminToken).toBeUndefined();
    expect(config.masterKey).toBeUndefined();
    expect(config.logLevel).toBe('info');
    expect(config.components).toEqual(['api', 'worker']);
    expect(config.stateDir).toBe('.keyturn');
    expect(config.failpoints).toBe('');
    expect(config.maxBodyBytes).toBe(65536);
    expect(config.rotation).toEqual({
      attempts: 5,
      backoffMs: 2000,
      concurrency: 4,
      leaseMs: 30_000,
      downstreamTimeoutMs: 10_000,
      reconcileIntervalMs: 30_000,
    });
  });

  it('treats empty and blank values as unset', () => {
    const config = loadConfig({
      PORT: '',
      HOST: '  ',
      REDIS_URL: ' ',
      KEYTURN_PREFIX: '',
      KEYTURN_ADMIN_TOKEN: ' ',
    });
    expect(config.port).toBe(8080);
    expect(config.host).toBe('127.0.0.1');
    expect(config.redisUrl).toBe('redis://127.0.0.1:6379');
    expect(config.redisUrlDefaulted).toBe(true);
    expect(config.prefix).toBe('keyturn');
    expect(config.adminToken).toBeUndefined();
  });

  it('logs JSON in production', () => {
    expect(loadConfig({ NODE_ENV: 'production' }).logFormat).toBe('json');
  });
});

describe('loadConfig reads valid values', () => {
  it('parses every variable', () => {
    const key = randomBytes(32);
    const token = randomBytes(32).toString('base64url');
    const config = loadConfig({
      PORT: ' 9000 ',
      HOST: '0.0.0.0',
      REDIS_URL: 'rediss://user:pw@cache.internal:6380/2',
      KEYTURN_PREFIX: 'kt.prod-1_a',
      KEYTURN_ADMIN_TOKEN: ` ${token} `,
      KEYTURN_MASTER_KEY: key.toString('base64'),
      LOG_LEVEL: 'DEBUG',
      LOG_FORMAT: 'pretty',
      KEYTURN_COMPONENTS: 'worker, worker',
      KEYTURN_STATE_DIR: '/var/lib/keyturn',
      KEYTURN_ROTATION_ATTEMPTS: '100',
      KEYTURN_ROTATION_BACKOFF_MS: '10',
      KEYTURN_ROTATION_CONCURRENCY: '256',
      KEYTURN_ROTATION_LEASE_MS: '1000',
      KEYTURN_DOWNSTREAM_TIMEOUT_MS: '300000',
      KEYTURN_RECONCILE_INTERVAL_MS: '500',
      KEYTURN_MAX_BODY_BYTES: '1024',
      KEYTURN_FAILPOINTS: 'after-set=kill',
    });
    expect(config.port).toBe(9000);
    expect(config.host).toBe('0.0.0.0');
    expect(config.redisUrl).toBe('rediss://user:pw@cache.internal:6380/2');
    expect(config.redisUrlDefaulted).toBe(false);
    expect(config.prefix).toBe('kt.prod-1_a');
    expect(config.adminToken).toBe(token);
    expect(config.masterKey?.equals(key)).toBe(true);
    expect(config.logLevel).toBe('debug');
    expect(config.logFormat).toBe('pretty');
    expect(config.components).toEqual(['worker']);
    expect(config.stateDir).toBe('/var/lib/keyturn');
    expect(config.rotation).toEqual({
      attempts: 100,
      backoffMs: 10,
      concurrency: 256,
      leaseMs: 1000,
      downstreamTimeoutMs: 300_000,
      reconcileIntervalMs: 500,
    });
    expect(config.maxBodyBytes).toBe(1024);
    expect(config.failpoints).toBe('after-set=kill');
  });

  it('accepts PORT 0 (any free port) and 65535', () => {
    expect(loadConfig({ PORT: '0' }).port).toBe(0);
    expect(loadConfig({ PORT: '65535' }).port).toBe(65535);
  });

  it('accepts an unpadded base64 master key of 32 bytes', () => {
    const key = randomBytes(32);
    expect(
      loadConfig({ KEYTURN_MASTER_KEY: key.toString('base64').replace(/=+$/, '') }).masterKey?.equals(key),
    ).toBe(true);
  });

  it('accepts failpoints outside production', () => {
    expect(loadConfig({ NODE_ENV: 'test', KEYTURN_FAILPOINTS: 'before-test=throw:3' }).failpoints).toBe(
      'before-test=throw:3',
    );
  });
});

describe('loadConfig rejects bad values, one problem per variable', () => {
  const cases: Array<[string, string]> = [
    ['PORT', 'abc'],
    ['PORT', '-1'],
    ['PORT', '65536'],
    ['PORT', '80.5'],
    ['PORT', '1e3'],
    ['REDIS_URL', 'not a url'],
    ['REDIS_URL', 'http://cache:6379'],
    ['REDIS_URL', 'redis://cache:99999'],
    ['KEYTURN_PREFIX', 'has space'],
    ['KEYTURN_PREFIX', 'a:b'],
    ['KEYTURN_PREFIX', 'x'.repeat(65)],
    ['KEYTURN_ADMIN_TOKEN', 'x'.repeat(31)],
    ['KEYTURN_MASTER_KEY', 'not base64!'],
    ['KEYTURN_MASTER_KEY', randomBytes(16).toString('base64')],
    ['KEYTURN_MASTER_KEY', randomBytes(33).toString('base64')],
    [
      'KEYTURN_MASTER_KEY',
      randomBytes(32)
        .toString('base64url')
        .replace(/[A-Za-z0-9]/, '-'),
    ],
    ['LOG_LEVEL', 'verbose'],
    ['LOG_FORMAT', 'xml'],
    ['KEYTURN_COMPONENTS', 'scheduler'],
    ['KEYTURN_COMPONENTS', 'api,scheduler'],
    ['KEYTURN_ROTATION_ATTEMPTS', '0'],
    ['KEYTURN_ROTATION_ATTEMPTS', '101'],
    ['KEYTURN_ROTATION_BACKOFF_MS', '9'],
    ['KEYTURN_ROTATION_BACKOFF_MS', '3600001'],
    ['KEYTURN_ROTATION_CONCURRENCY', '0'],
    ['KEYTURN_ROTATION_CONCURRENCY', '257'],
    ['KEYTURN_ROTATION_LEASE_MS', '999'],
    ['KEYTURN_ROTATION_LEASE_MS', '600001'],
    ['KEYTURN_DOWNSTREAM_TIMEOUT_MS', '99'],
    ['KEYTURN_DOWNSTREAM_TIMEOUT_MS', 'ten'],
    ['KEYTURN_MAX_BODY_BYTES', '1023'],
    ['KEYTURN_MAX_BODY_BYTES', String(16 * 1024 * 1024 + 1)],
  ];

  it.each(cases)('%s=%s', (name, value) => {
    const err = configError({ [name]: value });
    expect(err.name).toBe('ConfigError');
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toContain(name);
    expect(err.message).toContain(err.problems[0]);
  });

  it('KEYTURN_FAILPOINTS is refused with NODE_ENV=production', () => {
    const err = configError({ NODE_ENV: 'production', KEYTURN_FAILPOINTS: 'after-set=kill' });
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toContain('KEYTURN_FAILPOINTS');
    expect(err.problems[0]).toContain('production');
  });

  it('reports every bad variable at once', () => {
    const err = configError({
      PORT: 'eighty',
      LOG_LEVEL: 'loud',
      KEYTURN_PREFIX: 'a b',
      KEYTURN_ROTATION_ATTEMPTS: '0',
      KEYTURN_MASTER_KEY: 'short',
    });
    expect(err.problems).toHaveLength(5);
    for (const name of [
      'PORT',
      'LOG_LEVEL',
      'KEYTURN_PREFIX',
      'KEYTURN_ROTATION_ATTEMPTS',
      'KEYTURN_MASTER_KEY',
    ]) {
      expect(err.problems.filter((p) => p.includes(name))).toHaveLength(1);
      expect(err.message).toContain(name);
    }
  });

  // Regression test (found by review, fixed): the header promises "one message per bad variable", but
  // KEYTURN_COMPONENTS gives one problem per bad entry: "foo,bar" yields two problems (and a trailing comma,
  // "api,", yields a problem about the empty name ""), so an operator sees the same variable listed twice.
  it('KEYTURN_COMPONENTS with several bad entries is still one problem', () => {
    const err = configError({ KEYTURN_COMPONENTS: 'foo,bar' });
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toContain('KEYTURN_COMPONENTS');
  });
});

describe('loadConfig never echoes a secret', () => {
  function messages(err: ConfigError): string {
    return [err.message, ...err.problems, String(err.stack)].join('\n');
  }

  it('a bad KEYTURN_MASTER_KEY', () => {
    for (const bad of [
      randomBytes(31).toString('base64'),
      `${randomBytes(32).toString('base64')}!`,
      `Zm9vYmFy-master-${randomBytes(8).toString('hex')}`,
    ]) {
      const err = configError({ KEYTURN_MASTER_KEY: bad });
      expect(err.problems).toHaveLength(1);
      expect(err.problems[0]).toContain('KEYTURN_MASTER_KEY');
      expect(messages(err)).not.toContain(bad);
      expect(messages(err)).not.toContain(bad.slice(0, 12));
    }
  });

  it('a bad KEYTURN_ADMIN_TOKEN', () => {
    const bad = `tok-${randomBytes(8).toString('hex')}`;
    const err = configError({ KEYTURN_ADMIN_TOKEN: bad });
    expect(err.problems[0]).toContain('KEYTURN_ADMIN_TOKEN');
    expect(messages(err)).not.toContain(bad);
    expect(messages(err)).not.toContain(bad.slice(4));
  });

  it.each([
    ['an unparsable URL', (pw: string) => `redis://default:${pw}@cache:99999`],
    ['a URL with a space', (pw: string) => `redis://default:${pw}@ca che:6379`],
    ['a wrong scheme', (pw: string) => `http://default:${pw}@cache:6379`],
    ['a wrong scheme without user', (pw: string) => `https://:${pw}@cache`],
  ])('a bad REDIS_URL with a password (%s)', (_what, url) => {
    const password = `pw${randomBytes(8).toString('hex')}`;
    const err = configError({ REDIS_URL: url(password) });
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toContain('REDIS_URL');
    expect(messages(err)).not.toContain(password);
  });

  it('secrets of valid variables do not appear when another variable is bad', () => {
    const token = randomBytes(32).toString('base64url');
    const key = randomBytes(32).toString('base64');
    const err = configError({ KEYTURN_ADMIN_TOKEN: token, KEYTURN_MASTER_KEY: key, PORT: 'x' });
    expect(messages(err)).not.toContain(token);
    expect(messages(err)).not.toContain(key);
  });
});
