// One contract, every key-encryption key provider (issue 17 §1): the same cases run against the env provider, the AWS
// KMS and Vault transit emulators, and a real KMS key or transit key when configured (KEYTURN_TEST_KMS_KEY_ID with the
// AWS environment; VAULT_ADDR and VAULT_TOKEN with KEYTURN_TEST_TRANSIT_KEY). The suite prints which providers ran and
// why others did not. Cases only an emulator can stage (a disabled key, a denied action, throttling, a sealed Vault)
// run on the emulators and say so when skipped on a real endpoint.
import { randomBytes } from 'node:crypto';
import {
  CreateAliasCommand,
  CreateKeyCommand,
  DisableKeyCommand,
  EnableKeyCommand,
  KMSClient,
  RotateKeyOnDemandCommand,
} from '@aws-sdk/client-kms';
import { afterAll, describe, expect, it } from 'vitest';
import { DekCache } from '../../src/crypto/dek-cache.ts';
import {
  DecryptionError,
  Envelope,
  type KeyProvider,
  KeyProviderError,
  type SealContext,
} from '../../src/crypto/envelope.ts';
import { AwsKmsKeyProvider } from '../../src/keys/aws-kms-provider.ts';
import { EnvKeyProvider, keyringOf } from '../../src/keys/index.ts';
import { VaultTransitKeyProvider } from '../../src/keys/vault-transit-provider.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { VaultStore, vaultRequester } from '../../src/stores/vault-store.ts';
import { type AwsKmsEmulator, startAwsKmsEmulator } from '../emulators/aws-kms.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault.ts';

const logger = createLogger({ level: 'silent', format: 'json' });

interface World {
  provider: KeyProvider;
  /** A second provider of the same kind with another key (rekey between keys), when the backend can make one. */
  other?: () => Promise<KeyProvider>;
  /** Rotates the provider's key to a new version (KMS: on demand; transit: keys/<name>/rotate). */
  rotate?: () => Promise<void>;
  kms?: { emulator?: AwsKmsEmulator; client: KMSClient; keyId: string };
  transit?: { emulator?: VaultEmulator; request: ReturnType<typeof vaultRequester>; key: string };
  close(): Promise<void>;
}

interface Backend {
  name: string;
  skipReason(): string | undefined;
  start(): Promise<World>;
}

const kmsSettings = (e: { endpoint?: string; region: string; credentials?: object }, keyId: string) => ({
  keyId,
  region: e.region,
  ...(e.endpoint ? { endpoint: e.endpoint } : {}),
  ...(e.credentials ? { credentials: e.credentials as never } : {}),
  maxAttempts: 2,
  timeoutMs: 5000,
});

async function kmsWorld(emulated: boolean): Promise<World> {
  const emulator = emulated ? await startAwsKmsEmulator() : undefined;
  const where = emulator
    ? { endpoint: emulator.endpoint, region: emulator.region, credentials: emulator.credentials }
    : {
        region: process.env.AWS_REGION ?? 'us-east-1',
        ...(process.env.AWS_ENDPOINT_URL ? { endpoint: process.env.AWS_ENDPOINT_URL } : {}),
      };
  const client = new KMSClient({
    region: where.region,
    ...(where.endpoint ? { endpoint: where.endpoint } : {}),
    ...(emulator ? { credentials: emulator.credentials } : {}),
  });
  const makeKey = async () => {
    const made = await client.send(new CreateKeyCommand({ Description: 'keyturn key-provider contract' }));
    return made.KeyMetadata!.Arn!;
  };
  const keyId = emulator ? await makeKey() : process.env.KEYTURN_TEST_KMS_KEY_ID!;
  const provider = new AwsKmsKeyProvider(kmsSettings(where, keyId));
  return {
    provider,
    ...(emulator ? { other: async () => new AwsKmsKeyProvider(kmsSettings(where, await makeKey())) } : {}),
    ...(emulator
      ? { rotate: async () => void (await client.send(new RotateKeyOnDemandCommand({ KeyId: keyId }))) }
      : {}),
    kms: { ...(emulator ? { emulator } : {}), client, keyId },
    async close() {
      await provider.close();
      client.destroy();
      await emulator?.close();
    },
  };
}

async function transitWorld(emulated: boolean): Promise<World> {
  const emulator = emulated ? await startVaultEmulator() : undefined;
  const address = emulator?.url ?? process.env.VAULT_ADDR!;
  const token = emulator?.rootToken ?? process.env.VAULT_TOKEN!;
  const store = new VaultStore(
    { address, auth: { method: 'token', token }, pendingPrefix: 'keyturn-pending', timeoutMs: 5000 },
    logger,
  );
  const request = vaultRequester(store);
  const makeKey = async () => {
    const key = `kt-contract-${randomBytes(4).toString('hex')}`;
    await request('creating a transit key', {
      method: 'POST',
      path: `transit/keys/${key}`,
      json: { type: 'aes256-gcm96' },
    });
    return key;
  };
  const key = emulator ? await makeKey() : process.env.KEYTURN_TEST_TRANSIT_KEY!;
  const provider = new VaultTransitKeyProvider({ mount: 'transit', key }, request);
  return {
    provider,
    other: async () => new VaultTransitKeyProvider({ mount: 'transit', key: await makeKey() }, request),
    rotate: async () =>
      void (await request('rotating', { method: 'POST', path: `transit/keys/${key}/rotate`, json: {} })),
    transit: { ...(emulator ? { emulator } : {}), request, key },
    async close() {
      await store.close();
      await emulator?.close();
    },
  };
}

const BACKENDS: Backend[] = [
  {
    name: 'env (KEYTURN_MASTER_KEY)',
    skipReason: () => undefined,
    start: async () => ({
      provider: new EnvKeyProvider(randomBytes(32)),
      other: async () => new EnvKeyProvider(randomBytes(32)),
      close: async () => {},
    }),
  },
  { name: 'aws-kms (emulator)', skipReason: () => undefined, start: () => kmsWorld(true) },
  {
    name: 'aws-kms (real endpoint)',
    skipReason: () =>
      process.env.KEYTURN_TEST_KMS_KEY_ID
        ? undefined
        : 'KEYTURN_TEST_KMS_KEY_ID is not set (a symmetric KMS key the AWS environment may use)',
    start: () => kmsWorld(false),
  },
  { name: 'vault-transit (emulator)', skipReason: () => undefined, start: () => transitWorld(true) },
  {
    name: 'vault-transit (real Vault)',
    skipReason: () =>
      process.env.VAULT_ADDR && process.env.VAULT_TOKEN && process.env.KEYTURN_TEST_TRANSIT_KEY
        ? undefined
        : 'VAULT_ADDR, VAULT_TOKEN and KEYTURN_TEST_TRANSIT_KEY (an aes256-gcm96 key at transit/) are not all set',
    start: () => transitWorld(false),
  },
];

const plan = BACKENDS.map((b) => ({ backend: b, skip: b.skipReason() }));
console.log(
  `key provider contract:\n${plan.map(({ backend, skip }) => `  ${skip ? 'skipped' : 'runs   '}  ${backend.name}${skip ? `: ${skip}` : ''}`).join('\n')}`,
);

const ctx = (secret = 'cred/payments-api', version = randomBytes(8).toString('hex')): SealContext => ({
  secret,
  version,
});

async function refusal(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a refusal, got an answer');
}

for (const { backend, skip } of plan) {
  describe.skipIf(Boolean(skip))(`key provider contract: ${backend.name}`, () => {
    let world: World;
    const start = async () => {
      world ??= await backend.start();
      await world.provider.check();
      return world;
    };
    afterAll(async () => world?.close());

    it('check() passes and names the key as "<provider>:<key>"', async () => {
      const { provider } = await start();
      expect(provider.kid.startsWith(`${provider.name}:`)).toBe(true);
      expect(provider.canUnwrap(provider.kid)).toBe(true);
      expect(JSON.stringify(provider.describe())).toContain(provider.kid);
    });

    it('generate: a 32-byte data key that unwraps to the same bytes, never twice the same', async () => {
      const { provider } = await start();
      const c = ctx();
      const a = await provider.generate(c);
      const b = await provider.generate(c);
      expect(a.plaintext).toHaveLength(32);
      expect(a.plaintext.equals(b.plaintext)).toBe(false);
      expect(a.wrapped).not.toBe(b.wrapped);
      expect((await provider.unwrap(provider.kid, a.wrapped, c)).equals(a.plaintext)).toBe(true);
      // The wrapped form does not carry the key in any encoding.
      for (const form of ['base64', 'hex', 'base64url'] as const)
        expect(a.wrapped).not.toContain(a.plaintext.toString(form).slice(0, 16));
      expect(provider.isCurrent(a.wrapped)).toBe(true);
    });

    it('wrap: an existing data key wraps again (idempotent: every wrapping unwraps)', async () => {
      const { provider } = await start();
      const dek = randomBytes(32);
      const c = ctx();
      const first = await provider.wrap(dek, c);
      const second = await provider.wrap(dek, c);
      expect((await provider.unwrap(provider.kid, first, c)).equals(dek)).toBe(true);
      expect((await provider.unwrap(provider.kid, second, c)).equals(dek)).toBe(true);
    });

    it('a wrapped key presented for another secret or version does not unwrap (DecryptionError)', async () => {
      const { provider } = await start();
      const c = ctx('cred/payments-api', 'v1');
      const { wrapped } = await provider.generate(c);
      for (const other of [
        ctx('cred/payments-api', 'v2'),
        ctx('cred/other', 'v1'),
        ctx('conn/payments-api', 'v1'),
      ]) {
        const err = await refusal(provider.unwrap(provider.kid, wrapped, other));
        expect(err, err.message).toBeInstanceOf(DecryptionError);
      }
    });

    it('a tampered wrapped key does not unwrap (DecryptionError)', async () => {
      const { provider } = await start();
      const c = ctx();
      const { wrapped } = await provider.generate(c);
      // Flip a character in the middle of the payload (keeping the provider's framing).
      const i = Math.floor(wrapped.length * 0.7);
      const tampered = `${wrapped.slice(0, i)}${wrapped[i] === 'A' ? 'B' : 'A'}${wrapped.slice(i + 1)}`;
      const err = await refusal(provider.unwrap(provider.kid, tampered, c));
      expect(err, err.message).toBeInstanceOf(DecryptionError);
    });

    it('through the envelope: seal and open, and a data-key cache asks the provider once per value', async () => {
      const { provider } = await start();
      let unwraps = 0;
      const counting: KeyProvider = {
        name: provider.name,
        get kid() {
          return provider.kid;
        },
        canUnwrap: (kid) => provider.canUnwrap(kid),
        generate: (c) => provider.generate(c),
        wrap: (dek, c) => provider.wrap(dek, c),
        unwrap: (kid, wrapped, c) => {
          unwraps++;
          return provider.unwrap(kid, wrapped, c);
        },
        isCurrent: (wrapped) => provider.isCurrent(wrapped),
        describe: () => provider.describe(),
        check: () => provider.check(),
        close: async () => {},
      };
      const cache = new DekCache({ ttlMs: 60_000, maxEntries: 100, clock: { now: () => Date.now() } });
      const envelope = new Envelope(keyringOf(counting), cache);
      const c = ctx();
      const sealed = await envelope.encrypt('pässwörd-🔑', c);
      expect(sealed).toMatchObject({ v: 2, kid: provider.kid });
      const opened = await Promise.all(Array.from({ length: 5 }, () => envelope.decrypt(sealed, c)));
      expect(opened).toEqual(Array(5).fill('pässwörd-🔑'));
      expect(await envelope.decrypt(sealed, c)).toBe('pässwörd-🔑');
      expect(unwraps).toBe(1);
      cache.close();
    });

    it('rekey to another key of this provider: the value opens with the new key alone, data unchanged', async (t) => {
      const w = await start();
      if (!w.other)
        return t.skip('this backend cannot make a second key here (a real endpoint gets one key)');
      const next = await w.other();
      await next.check();
      const c = ctx();
      const sealed = await new Envelope(keyringOf(w.provider)).encrypt('moved', c);
      const both = new Envelope(keyringOf(next, w.provider));
      expect(both.isCurrent(sealed)).toBe(false);
      const moved = await both.rewrap(sealed, c);
      expect(moved).toMatchObject({ v: 2, kid: next.kid, data: sealed.data });
      expect(await new Envelope(keyringOf(next)).decrypt(moved!, c)).toBe('moved');
      expect(await both.rewrap(moved!, c)).toBeNull();
    });

    it('rekey from the env provider to this one, and back', async () => {
      const { provider } = await start();
      const env = new EnvKeyProvider(randomBytes(32));
      const c = ctx();
      const sealed = await new Envelope(keyringOf(env)).encrypt('from env', c);
      const toHere = await new Envelope(keyringOf(provider, env)).rewrap(sealed, c);
      expect(toHere?.kid).toBe(provider.kid);
      expect(await new Envelope(keyringOf(provider)).decrypt(toHere!, c)).toBe('from env');
      const back = await new Envelope(keyringOf(env, provider)).rewrap(toHere!, c);
      expect(await new Envelope(keyringOf(env)).decrypt(back!, c)).toBe('from env');
    });

    it('after the key rotates, what it wrapped before still unwraps', async (t) => {
      const w = await start();
      if (!w.rotate)
        return t.skip('the env provider has no key versions; rotating a real KMS key is not done by tests');
      const c = ctx();
      const before = await w.provider.generate(c);
      await w.rotate();
      await w.provider.check();
      expect((await w.provider.unwrap(w.provider.kid, before.wrapped, c)).equals(before.plaintext)).toBe(
        true,
      );
    });
  });
}

describe.skipIf(Boolean(plan[1]!.skip))('aws-kms: what only an emulator can stage', () => {
  let world: World;
  const start = async () => {
    world ??= await kmsWorld(true);
    return world;
  };
  afterAll(async () => world?.close());

  it('an alias resolves to the key ARN at check(), which values record (an alias move cannot change them)', async () => {
    const { kms } = await start();
    await kms!.client.send(
      new CreateAliasCommand({ AliasName: 'alias/keyturn-contract', TargetKeyId: kms!.keyId }),
    );
    const e = kms!.emulator!;
    const byAlias = new AwsKmsKeyProvider(
      kmsSettings(
        { endpoint: e.endpoint, region: e.region, credentials: e.credentials },
        'alias/keyturn-contract',
      ),
    );
    await byAlias.check();
    expect(byAlias.kid).toBe(`aws-kms:${kms!.keyId}`);
    await byAlias.close();
  });

  it("a blob of one key presented as another key's is refused (IncorrectKeyException → DecryptionError)", async () => {
    const w = await start();
    const other = await w.other!();
    await other.check();
    const c = ctx();
    const { wrapped } = await w.provider.generate(c);
    const err = await refusal(other.unwrap(other.kid, wrapped, c));
    expect(err).toBeInstanceOf(DecryptionError);
    expect(err.message).toMatch(/IncorrectKeyException/);
  });

  it('a disabled key is refused with what to do, at check() and at unwrap', async () => {
    const w = await start();
    const c = ctx();
    const { wrapped } = await w.provider.generate(c);
    await w.kms!.client.send(new DisableKeyCommand({ KeyId: w.kms!.keyId }));
    try {
      const atUnwrap = await refusal(w.provider.unwrap(w.provider.kid, wrapped, c));
      expect(atUnwrap).toBeInstanceOf(KeyProviderError);
      expect((atUnwrap as KeyProviderError).kind).toBe('refused');
      expect(atUnwrap.message).toMatch(/\(DisabledException\): enable the key/);
      const atCheck = await refusal(w.provider.check());
      expect(atCheck.message).toMatch(/is Disabled/);
    } finally {
      await w.kms!.client.send(new EnableKeyCommand({ KeyId: w.kms!.keyId }));
    }
  });

  it('a principal without kms:Decrypt is refused, naming the permissions to grant', async () => {
    const w = await start();
    const e = w.kms!.emulator!;
    const limited = e.addCredentials({ deny: ['kms:Decrypt'] });
    const provider = new AwsKmsKeyProvider(
      kmsSettings({ endpoint: e.endpoint, region: e.region, credentials: limited }, w.kms!.keyId),
    );
    const c = ctx();
    const { wrapped } = await provider.generate(c);
    const err = await refusal(provider.unwrap(provider.kid, wrapped, c));
    expect((err as KeyProviderError).kind).toBe('refused');
    expect(err.message).toMatch(/AccessDeniedException.*kms:Decrypt/);
    expect(err.message).not.toContain(limited.secretAccessKey);
    await provider.close();
  });

  it('throttling past the retries is "unavailable": the caller retries later', async () => {
    const w = await start();
    const c = ctx();
    const { wrapped } = await w.provider.generate(c);
    w.kms!.emulator!.failNext(5, 'ThrottlingException', (op) => op === 'Decrypt');
    const err = await refusal(w.provider.unwrap(w.provider.kid, wrapped, c));
    expect((err as KeyProviderError).kind).toBe('unavailable');
    expect(err.message).toMatch(/AWS KMS answered 400 ThrottlingException during Decrypt/);
  });
});

describe.skipIf(Boolean(plan[3]!.skip))('vault-transit: what only an emulator can stage', () => {
  let world: World;
  const start = async () => {
    world ??= await transitWorld(true);
    await world.provider.check();
    return world;
  };
  afterAll(async () => world?.close());

  it('after the key rotates, values of the older version are not current until rewrapped', async () => {
    const w = await start();
    const c = ctx();
    const sealed = await new Envelope(keyringOf(w.provider)).encrypt('versioned', c);
    expect(sealed.dek).toMatch(/^vault:v1:/);
    await w.rotate!();
    await w.provider.check();
    const envelope = new Envelope(keyringOf(w.provider));
    expect(envelope.isCurrent(sealed)).toBe(false);
    const rewrapped = await envelope.rewrap(sealed, c);
    expect(rewrapped!.dek).toMatch(/^vault:v2:/);
    expect(envelope.isCurrent(rewrapped!)).toBe(true);
    expect(await envelope.decrypt(rewrapped!, c)).toBe('versioned');
  });

  it('min_decryption_version raised before a rekey: the old value is refused, and the message says what to do', async () => {
    const w = await start();
    const c = ctx();
    const { wrapped } = await w.provider.generate(c);
    const version = Number(/^vault:v(\d+):/.exec(wrapped)![1]);
    await w.rotate!();
    await w.transit!.request('config', {
      method: 'POST',
      path: `transit/keys/${w.transit!.key}/config`,
      json: { min_decryption_version: version + 1 },
    });
    const err = await refusal(w.provider.unwrap(w.provider.kid, wrapped, c));
    expect(err).toBeInstanceOf(DecryptionError);
    expect(err.message).toMatch(/too old.*lower it again, rekey, then raise it/);
  });

  it('a token whose policy lacks decrypt is refused, naming the policy to grant', async () => {
    const w = await start();
    const e = w.transit!.emulator!;
    e.setPolicy('encrypt-only', {
      path: {
        [`transit/encrypt/${w.transit!.key}`]: { capabilities: ['update'] },
        [`transit/keys/${w.transit!.key}`]: { capabilities: ['read'] },
      },
    });
    const token = e.createToken({ ttlSeconds: 3600, policies: ['encrypt-only'] });
    const store = new VaultStore(
      { address: e.url, auth: { method: 'token', token }, pendingPrefix: 'keyturn-pending', timeoutMs: 5000 },
      logger,
    );
    const provider = new VaultTransitKeyProvider(
      { mount: 'transit', key: w.transit!.key },
      vaultRequester(store),
    );
    await provider.check();
    const c = ctx();
    const { wrapped } = await provider.generate(c);
    const err = await refusal(provider.unwrap(provider.kid, wrapped, c));
    expect((err as KeyProviderError).kind).toBe('refused');
    expect(err.message).toMatch(/403|permission/);
    expect(err.message).not.toContain(token);
    await store.close();
  });

  it('a missing key is refused at check() with the command that creates it', async () => {
    const w = await start();
    const missing = new VaultTransitKeyProvider({ mount: 'transit', key: 'no-such-key' }, w.transit!.request);
    const err = await refusal(missing.check());
    expect(err.message).toMatch(
      /no transit key transit\/no-such-key: create it \(vault write -f transit\/keys\/no-such-key/,
    );
  });

  it('a sealed Vault is "unavailable"', async () => {
    const w = await start();
    const e = w.transit!.emulator!;
    const c = ctx();
    const { wrapped } = await w.provider.generate(c);
    e.seal();
    try {
      const err = await refusal(w.provider.unwrap(w.provider.kid, wrapped, c));
      expect((err as KeyProviderError).kind).toBe('unavailable');
    } finally {
      e.unseal();
    }
  });
});
