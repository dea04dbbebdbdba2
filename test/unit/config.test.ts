import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.ts';
import {
  createKeyring,
  type KeyringDeps,
  KeyringError,
  type KeyringSettings,
  masterKeyId,
} from '../../src/keys/index.ts';

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
      concurrency: 16,
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

describe('notifications and the overdue scan', () => {
  const secret = randomBytes(32).toString('base64url');

  it('are off by default, with the documented defaults', () => {
    const config = loadConfig({});
    expect(config.notifications).toEqual({
      webhookUrls: [],
      webhookSecret: undefined,
      events: [
        'rotation.succeeded',
        'rotation.failed',
        'credential.overdue',
        'rotation.upcoming',
        'approval.break_glass',
      ],
      attempts: 10,
      backoffMs: 1000,
      timeoutMs: 5000,
    });
    expect(config.overdueScanIntervalMs).toBe(60_000);
  });

  it('reads every variable', () => {
    const config = loadConfig({
      KEYTURN_NOTIFY_WEBHOOK_URLS: ' https://hooks.example.com/keyturn , http://10.0.0.5:8080/x?key=abc ',
      KEYTURN_NOTIFY_WEBHOOK_SECRET: ` ${secret} `,
      KEYTURN_NOTIFY_EVENTS: 'credential.overdue, rotation.failed,credential.overdue',
      KEYTURN_NOTIFY_ATTEMPTS: '100',
      KEYTURN_NOTIFY_BACKOFF_MS: '10',
      KEYTURN_NOTIFY_TIMEOUT_MS: '60000',
      KEYTURN_OVERDUE_SCAN_INTERVAL_MS: '500',
    });
    expect(config.notifications).toEqual({
      webhookUrls: ['https://hooks.example.com/keyturn', 'http://10.0.0.5:8080/x?key=abc'],
      webhookSecret: secret,
      events: ['credential.overdue', 'rotation.failed'],
      attempts: 100,
      backoffMs: 10,
      timeoutMs: 60_000,
    });
    expect(config.overdueScanIntervalMs).toBe(500);
  });

  it.each([
    ['KEYTURN_NOTIFY_WEBHOOK_URLS', 'not a url'],
    ['KEYTURN_NOTIFY_WEBHOOK_URLS', 'ftp://hooks.example.com/x'],
    ['KEYTURN_NOTIFY_WEBHOOK_URLS', 'https://ok.example.com,redis://cache:6379'],
    ['KEYTURN_NOTIFY_EVENTS', 'rotation.started'],
    ['KEYTURN_NOTIFY_EVENTS', 'rotation.succeeded,secret.read'],
    ['KEYTURN_NOTIFY_EVENTS', ','],
    ['KEYTURN_NOTIFY_ATTEMPTS', '0'],
    ['KEYTURN_NOTIFY_ATTEMPTS', '101'],
    ['KEYTURN_NOTIFY_BACKOFF_MS', '9'],
    ['KEYTURN_NOTIFY_BACKOFF_MS', 'soon'],
    ['KEYTURN_NOTIFY_TIMEOUT_MS', '99'],
    ['KEYTURN_NOTIFY_TIMEOUT_MS', '60001'],
    ['KEYTURN_OVERDUE_SCAN_INTERVAL_MS', '499'],
    ['KEYTURN_OVERDUE_SCAN_INTERVAL_MS', '86400001'],
  ])('%s=%s is one problem naming the variable', (name, value) => {
    const err = configError({
      KEYTURN_NOTIFY_WEBHOOK_URLS: 'https://hooks.example.com/keyturn',
      KEYTURN_NOTIFY_WEBHOOK_SECRET: secret,
      [name]: value,
    });
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toContain(name);
  });

  it('a webhook URL needs a secret of at least 32 characters', () => {
    const missing = configError({ KEYTURN_NOTIFY_WEBHOOK_URLS: 'https://hooks.example.com/keyturn' });
    expect(missing.problems).toEqual([expect.stringMatching(/KEYTURN_NOTIFY_WEBHOOK_SECRET is required/)]);
    const short = `s-${randomBytes(8).toString('hex')}`;
    const err = configError({
      KEYTURN_NOTIFY_WEBHOOK_URLS: 'https://hooks.example.com/keyturn',
      KEYTURN_NOTIFY_WEBHOOK_SECRET: short,
    });
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toContain('at least 32 characters');
    expect([err.message, String(err.stack)].join('\n')).not.toContain(short);
  });

  it('never echoes a webhook URL (its path or user may hold a token), only its position', () => {
    const token = randomBytes(12).toString('hex');
    for (const url of [`ftp://hooks.example.com/${token}`, `https://user:${token}@hooks.example.com/x`]) {
      const err = configError({
        KEYTURN_NOTIFY_WEBHOOK_URLS: `https://ok.example.com,${url}`,
        KEYTURN_NOTIFY_WEBHOOK_SECRET: secret,
      });
      expect(err.problems).toEqual([expect.stringContaining('KEYTURN_NOTIFY_WEBHOOK_URLS entry 2')]);
      expect(err.message).not.toContain(token);
      expect(err.message).not.toContain(secret);
    }
  });
});

describe('the audit chain settings', () => {
  it('has the documented defaults: no archive (never trimmed), 400 days retention, 92 in the stream', () => {
    expect(loadConfig({}).audit).toEqual({
      checkpointEvents: 1000,
      checkpointIntervalMs: 60_000,
      archiveDir: undefined,
      retentionDays: 400,
      streamDays: 92,
    });
  });

  it('reads an Ed25519 signing key, files and periods', () => {
    const pem = String(generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const audit = loadConfig({
      KEYTURN_AUDIT_SIGNING_KEY: pem,
      KEYTURN_AUDIT_PUBLIC_KEY_FILE: '/etc/keyturn/audit-public.pem',
      KEYTURN_AUDIT_CHECKPOINT_EVENTS: '500',
      KEYTURN_AUDIT_CHECKPOINT_INTERVAL_MS: '10000',
      KEYTURN_AUDIT_ARCHIVE_DIR: '/var/lib/keyturn/audit',
      KEYTURN_AUDIT_RETENTION_DAYS: '730',
      KEYTURN_AUDIT_STREAM_DAYS: '30',
    }).audit;
    expect(audit).toMatchObject({
      signingKey: pem.trim(),
      publicKeyFile: '/etc/keyturn/audit-public.pem',
      checkpointEvents: 500,
      checkpointIntervalMs: 10_000,
      archiveDir: '/var/lib/keyturn/audit',
      retentionDays: 730,
      streamDays: 30,
    });
  });

  it.each([
    ['KEYTURN_AUDIT_SIGNING_KEY', 'not a key', /not a PEM private key/],
    [
      'KEYTURN_AUDIT_SIGNING_KEY',
      String(
        generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
          type: 'pkcs8',
          format: 'pem',
        }),
      ),
      /must be an Ed25519 key, got ec/,
    ],
    ['KEYTURN_AUDIT_CHECKPOINT_EVENTS', '0', /KEYTURN_AUDIT_CHECKPOINT_EVENTS/],
    ['KEYTURN_AUDIT_RETENTION_DAYS', 'a year', /KEYTURN_AUDIT_RETENTION_DAYS/],
    ['KEYTURN_AUDIT_STREAM_DAYS', '401', /KEYTURN_AUDIT_STREAM_DAYS must not be longer/],
  ])('%s: one clear problem, never the key', (name, value, message) => {
    const err = configError({ [name]: value });
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toMatch(message);
    if (value.includes('PRIVATE KEY')) expect(err.message).not.toContain(value.split('\n')[1]);
  });

  it('refuses both the key and a key file', () => {
    const pem = String(generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const err = configError({ KEYTURN_AUDIT_SIGNING_KEY: pem, KEYTURN_AUDIT_SIGNING_KEY_FILE: '/k.pem' });
    expect(err.problems).toEqual([
      'KEYTURN_AUDIT_SIGNING_KEY and KEYTURN_AUDIT_SIGNING_KEY_FILE exclude each other: set one',
    ]);
  });
});

describe('loadConfig: the event stream (GET /v1/events)', () => {
  it('defaults to a 15 s heartbeat and 1000 streams per process', () => {
    expect(loadConfig({}).events).toEqual({ heartbeatMs: 15_000, maxClients: 1000 });
  });

  it('reads KEYTURN_EVENTS_HEARTBEAT_MS and KEYTURN_EVENTS_MAX_CLIENTS', () => {
    expect(
      loadConfig({ KEYTURN_EVENTS_HEARTBEAT_MS: '100', KEYTURN_EVENTS_MAX_CLIENTS: '100000' }).events,
    ).toEqual({ heartbeatMs: 100, maxClients: 100_000 });
  });

  it.each([
    [
      'KEYTURN_EVENTS_HEARTBEAT_MS',
      '99',
      'KEYTURN_EVENTS_HEARTBEAT_MS must be between 100 and 300000, got 99',
    ],
    ['KEYTURN_EVENTS_HEARTBEAT_MS', '15s', 'KEYTURN_EVENTS_HEARTBEAT_MS must be a whole number'],
    ['KEYTURN_EVENTS_MAX_CLIENTS', '0', 'KEYTURN_EVENTS_MAX_CLIENTS must be between 1 and 100000, got 0'],
    ['KEYTURN_EVENTS_MAX_CLIENTS', 'many', 'KEYTURN_EVENTS_MAX_CLIENTS must be a whole number'],
  ])('%s=%s: one problem naming the variable', (name, value, message) => {
    const err = configError({ [name]: value });
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toContain(message);
  });
});

describe('KEYTURN_SECRET_MAX_AGE (finding 9)', () => {
  it('defaults to 5 minutes, takes a duration, allows 0 and refuses nonsense', () => {
    expect(loadConfig({}).secretMaxAgeMs).toBe(300_000);
    expect(loadConfig({ KEYTURN_SECRET_MAX_AGE: '90s' }).secretMaxAgeMs).toBe(90_000);
    expect(loadConfig({ KEYTURN_SECRET_MAX_AGE: '0' }).secretMaxAgeMs).toBe(0);
    expect(configError({ KEYTURN_SECRET_MAX_AGE: 'soon' }).message).toMatch(/KEYTURN_SECRET_MAX_AGE/);
  });
});

describe('the key-encryption key (KEYTURN_KEK_PROVIDER and its variables, issue 17 §1)', () => {
  const KEY = randomBytes(32);
  const KMS_ARN = 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';
  const AWS_SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEYVALUE';
  const VAULT = {
    VAULT_ADDR: 'https://vault.example.com:8200',
    VAULT_TOKEN: 'hvs.SECRETTOKENVALUE0000000000',
  };

  it('defaults to the env provider, no previous keys, and a DEK cache of 5 minutes and 10000 entries', () => {
    expect(loadConfig({}).kek).toEqual({
      provider: 'env',
      previousMasterKeys: [],
      cacheTtlMs: 300_000,
      cacheMaxEntries: 10_000,
    });
    expect(
      loadConfig({ KEYTURN_KEK_PROVIDER: ' ', KEYTURN_KEK_CACHE_TTL: '', KEYTURN_KEK_CACHE_MAX: ' ' }).kek,
    ).toEqual(loadConfig({}).kek);
  });

  it('aws-kms: reads the key id with the AWS region, endpoint and credentials of the environment', () => {
    const kek = loadConfig({
      KEYTURN_KEK_PROVIDER: 'aws-kms',
      KEYTURN_KMS_KEY_ID: KMS_ARN,
      AWS_REGION: 'eu-west-1',
      AWS_ENDPOINT_URL_KMS: 'http://127.0.0.1:4599',
      AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE',
      AWS_SECRET_ACCESS_KEY: AWS_SECRET,
    }).kek;
    expect(kek.provider).toBe('aws-kms');
    expect(kek.kms).toEqual({
      keyId: KMS_ARN,
      region: 'eu-west-1',
      endpoint: 'http://127.0.0.1:4599',
      maxAttempts: 3,
      credentials: { accessKeyId: 'AKIAEXAMPLE', secretAccessKey: AWS_SECRET },
    });
    // Upper case is the same provider; without credentials the SDK's default chain is used (none given here).
    const plain = loadConfig({ KEYTURN_KEK_PROVIDER: 'AWS-KMS', KEYTURN_KMS_KEY_ID: 'alias/keyturn' }).kek;
    expect(plain.provider).toBe('aws-kms');
    expect(plain.kms).toEqual({ keyId: 'alias/keyturn', maxAttempts: 3 });
  });

  it.each([
    '1234abcd-12ab-34cd-56ef-1234567890ab',
    'alias/keyturn-kek',
    KMS_ARN,
    'arn:aws:kms:us-gov-west-1:123456789012:alias/keyturn',
    'arn:aws-cn:kms:cn-north-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
    `mrk-${'0123456789abcdef'.repeat(2)}`,
  ])('KEYTURN_KMS_KEY_ID=%s is accepted', (keyId) => {
    expect(loadConfig({ KEYTURN_KEK_PROVIDER: 'aws-kms', KEYTURN_KMS_KEY_ID: keyId }).kek.kms?.keyId).toBe(
      keyId,
    );
  });

  it.each(['my key', 'keyturn', 'arn:aws:kms:eu-west-1:1234:key/abc', 'arn:aws:s3:::bucket', 'alias/'])(
    'KEYTURN_KMS_KEY_ID=%s is refused with what it must be',
    (keyId) => {
      const err = configError({ KEYTURN_KEK_PROVIDER: 'aws-kms', KEYTURN_KMS_KEY_ID: keyId });
      expect(err.problems).toHaveLength(1);
      expect(err.problems[0]).toContain(
        'KEYTURN_KMS_KEY_ID must be a KMS key id, key ARN, alias/<name> or alias ARN',
      );
    },
  );

  it('vault-transit: reads the key and the mount (default "transit") on the Vault of VAULT_ADDR', () => {
    expect(
      loadConfig({ ...VAULT, KEYTURN_KEK_PROVIDER: 'vault-transit', KEYTURN_TRANSIT_KEY: 'keyturn' }).kek,
    ).toMatchObject({ provider: 'vault-transit', transit: { mount: 'transit', key: 'keyturn' } });
    expect(
      loadConfig({
        ...VAULT,
        KEYTURN_KEK_PROVIDER: 'vault-transit',
        KEYTURN_TRANSIT_KEY: 'kek.v2',
        KEYTURN_TRANSIT_MOUNT: 'platform/transit',
      }).kek.transit,
    ).toEqual({ mount: 'platform/transit', key: 'kek.v2' });
  });

  it.each([
    [{ KEYTURN_KEK_PROVIDER: 'aws-kms' }, 'KEYTURN_KEK_PROVIDER=aws-kms needs KEYTURN_KMS_KEY_ID'],
    [
      { ...VAULT, KEYTURN_KEK_PROVIDER: 'vault-transit' },
      'KEYTURN_KEK_PROVIDER=vault-transit needs KEYTURN_TRANSIT_KEY',
    ],
    [
      { KEYTURN_KEK_PROVIDER: 'vault-transit', KEYTURN_TRANSIT_KEY: 'keyturn' },
      'KEYTURN_TRANSIT_KEY needs VAULT_ADDR',
    ],
    [{ KEYTURN_TRANSIT_KEY: 'keyturn' }, 'KEYTURN_TRANSIT_KEY needs VAULT_ADDR'],
    [{ ...VAULT, KEYTURN_TRANSIT_KEY: 'key/with/slash' }, 'KEYTURN_TRANSIT_KEY must be a transit key name'],
    [
      { ...VAULT, KEYTURN_TRANSIT_KEY: 'k', KEYTURN_TRANSIT_MOUNT: '/transit' },
      'KEYTURN_TRANSIT_MOUNT must be a mount path',
    ],
    [
      { KEYTURN_KEK_PROVIDER: 'gcp-kms' },
      'KEYTURN_KEK_PROVIDER must be one of env, aws-kms, vault-transit, got "gcp-kms"',
    ],
  ] as Array<[Record<string, string>, string]>)('%j is refused: %s', (env, message) => {
    const err = configError(env);
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toContain(message);
    for (const p of err.problems) expect(p).not.toContain(VAULT.VAULT_TOKEN);
  });

  it("another provider's settings are kept when it is not the primary (it still reads its values)", () => {
    const kek = loadConfig({
      ...VAULT,
      KEYTURN_MASTER_KEY: KEY.toString('base64'),
      KEYTURN_KMS_KEY_ID: 'alias/old',
      KEYTURN_TRANSIT_KEY: 'old',
    }).kek;
    expect(kek.provider).toBe('env');
    expect(kek.kms?.keyId).toBe('alias/old');
    expect(kek.transit).toEqual({ mount: 'transit', key: 'old' });
  });

  describe('KEYTURN_MASTER_KEY_PREVIOUS', () => {
    const [a, b] = [randomBytes(32), randomBytes(32)];

    it('is a comma-separated list of base64 keys, read in order (blanks and spaces ignored)', () => {
      expect(
        loadConfig({ KEYTURN_MASTER_KEY_PREVIOUS: a.toString('base64') }).kek.previousMasterKeys,
      ).toEqual([a]);
      expect(
        loadConfig({
          KEYTURN_MASTER_KEY_PREVIOUS: ` ${a.toString('base64')} ,, ${b.toString('base64').replace(/=+$/, '')},`,
        }).kek.previousMasterKeys,
      ).toEqual([a, b]);
    });

    it.each([
      [[randomBytes(16).toString('base64'), b.toString('base64')], 1],
      [[a.toString('base64'), 'not base64!'], 2],
      [[a.toString('base64'), b.toString('base64'), randomBytes(33).toString('base64')], 3],
      [[a.toString('base64'), b.toString('base64url').replace(/[A-Za-z0-9]/, '-')], 2],
    ])('a bad entry is named by its position, never echoed (%j → entry %i)', (entries, position) => {
      const err = configError({ KEYTURN_MASTER_KEY_PREVIOUS: entries.join(',') });
      expect(err.problems).toHaveLength(1);
      expect(err.problems[0]).toContain('KEYTURN_MASTER_KEY_PREVIOUS');
      expect(err.problems[0]).toContain(`entry ${position} `);
      for (const entry of entries) expect(err.message).not.toContain(entry);
    });

    // Finding (left failing for the lead, src/config/config.ts kekConfig): the file's contract is "one message per
    // bad variable" (the KEYTURN_COMPONENTS regression above), but each bad entry of KEYTURN_MASTER_KEY_PREVIOUS is
    // a problem of its own, so an operator sees the variable listed once per bad entry.
    it('with several bad entries is still one problem, naming every bad position', () => {
      const err = configError({ KEYTURN_MASTER_KEY_PREVIOUS: `short,${a.toString('base64')},also-short` });
      expect(err.problems).toHaveLength(1);
      expect(err.problems[0]).toContain('KEYTURN_MASTER_KEY_PREVIOUS');
      expect(err.problems[0]).toMatch(/\b1\b[\s\S]*\b3\b/);
    });
  });

  describe('the DEK cache', () => {
    it('KEYTURN_KEK_CACHE_TTL takes a duration up to 1h, or 0 (no cache)', () => {
      expect(loadConfig({ KEYTURN_KEK_CACHE_TTL: '90s' }).kek.cacheTtlMs).toBe(90_000);
      expect(loadConfig({ KEYTURN_KEK_CACHE_TTL: '1h' }).kek.cacheTtlMs).toBe(3_600_000);
      expect(loadConfig({ KEYTURN_KEK_CACHE_TTL: '0' }).kek.cacheTtlMs).toBe(0);
    });

    it('KEYTURN_KEK_CACHE_MAX takes a whole number from 0 to 1000000', () => {
      expect(loadConfig({ KEYTURN_KEK_CACHE_MAX: '0' }).kek.cacheMaxEntries).toBe(0);
      expect(loadConfig({ KEYTURN_KEK_CACHE_MAX: '1000000' }).kek.cacheMaxEntries).toBe(1_000_000);
    });

    it.each([
      ['KEYTURN_KEK_CACHE_TTL', '2h', 'KEYTURN_KEK_CACHE_TTL must be at most 1h'],
      ['KEYTURN_KEK_CACHE_TTL', '61m', 'KEYTURN_KEK_CACHE_TTL must be at most 1h'],
      ['KEYTURN_KEK_CACHE_TTL', 'soon', 'KEYTURN_KEK_CACHE_TTL: "soon" is not a duration'],
      ['KEYTURN_KEK_CACHE_TTL', '300', 'KEYTURN_KEK_CACHE_TTL: "300" is not a duration'],
      ['KEYTURN_KEK_CACHE_TTL', '-5m', 'KEYTURN_KEK_CACHE_TTL'],
      [
        'KEYTURN_KEK_CACHE_MAX',
        '-1',
        'KEYTURN_KEK_CACHE_MAX must be a whole number from 0 to 1000000, got "-1"',
      ],
      ['KEYTURN_KEK_CACHE_MAX', '1.5', 'KEYTURN_KEK_CACHE_MAX must be a whole number'],
      ['KEYTURN_KEK_CACHE_MAX', 'many', 'KEYTURN_KEK_CACHE_MAX must be a whole number'],
      ['KEYTURN_KEK_CACHE_MAX', '1000001', 'KEYTURN_KEK_CACHE_MAX must be a whole number'],
    ])('%s=%s is refused', (name, value, message) => {
      const err = configError({ [name]: value });
      expect(err.problems).toHaveLength(1);
      expect(err.problems[0]).toContain(message);
    });
  });

  it('a bad KEK variable is reported with the others, and no secret of any variable is echoed', () => {
    const err = configError({
      PORT: 'eighty',
      KEYTURN_KEK_PROVIDER: 'aws-kms',
      KEYTURN_MASTER_KEY: KEY.toString('base64'),
      KEYTURN_MASTER_KEY_PREVIOUS: 'short',
      KEYTURN_KEK_CACHE_MAX: 'many',
      AWS_SECRET_ACCESS_KEY: AWS_SECRET,
      AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE',
    });
    expect(err.problems).toHaveLength(4);
    for (const name of ['PORT', 'KEYTURN_KMS_KEY_ID', 'KEYTURN_MASTER_KEY_PREVIOUS', 'KEYTURN_KEK_CACHE_MAX'])
      expect(
        err.problems.filter((p) => p.includes(name)),
        name,
      ).toHaveLength(1);
    expect(err.message).not.toContain(KEY.toString('base64'));
    expect(err.message).not.toContain(AWS_SECRET);
    expect(err.message).not.toContain('short');
  });
});

describe('createKeyring: what each provider needs (src/keys/index.ts)', () => {
  const settings = (over: Partial<KeyringSettings>): KeyringSettings => ({
    ...loadConfig({}).kek,
    timeoutMs: 1000,
    ...over,
  });

  it('env: the primary is KEYTURN_MASTER_KEY, then every KEYTURN_MASTER_KEY_PREVIOUS key, in order', () => {
    const [current, p0, p1] = [randomBytes(32), randomBytes(32), randomBytes(32)];
    const keyring = createKeyring(settings({ masterKey: current, previousMasterKeys: [p0, p1] }), {});
    expect(keyring.primary.kid).toBe(`env:${masterKeyId(current)}`);
    expect(keyring.all.map((p) => p.kid)).toEqual([current, p0, p1].map((k) => `env:${masterKeyId(k)}`));
    expect(keyring.all[2]!.describe()).toEqual({
      provider: 'env',
      kid: `env:${masterKeyId(p1)}`,
      source: 'KEYTURN_MASTER_KEY_PREVIOUS[1]',
    });
  });

  it.each([
    [{ provider: 'env' }, {}, 'KEYTURN_KEK_PROVIDER=env needs KEYTURN_MASTER_KEY'],
    [{ provider: 'aws-kms' }, {}, 'KEYTURN_KEK_PROVIDER=aws-kms needs KEYTURN_KMS_KEY_ID'],
    [{ provider: 'vault-transit' }, {}, 'KEYTURN_KEK_PROVIDER=vault-transit needs KEYTURN_TRANSIT_KEY'],
    [
      { provider: 'vault-transit', transit: { mount: 'transit', key: 'k' } },
      {},
      'KEYTURN_TRANSIT_KEY needs VAULT_ADDR and Vault authentication',
    ],
  ] as Array<[Partial<KeyringSettings>, KeyringDeps, string]>)(
    '%j without what it needs: %s',
    (over, deps, message) => {
      expect(() => createKeyring(settings(over), deps)).toThrow(KeyringError);
      expect(() => createKeyring(settings(over), deps)).toThrow(message);
    },
  );

  it('a configured reader of another kind joins the keyring after the primary', () => {
    const masterKey = randomBytes(32);
    const keyring = createKeyring(
      settings({ provider: 'aws-kms', kms: { keyId: 'alias/keyturn', maxAttempts: 1 }, masterKey }),
      {},
    );
    expect(keyring.primary.name).toBe('aws-kms');
    expect(keyring.all.map((p) => p.name)).toEqual(['aws-kms', 'env']);
    expect(keyring.all[1]!.kid).toBe(`env:${masterKeyId(masterKey)}`);
  });
});
