// The Vault emulator's transit engine and ACL, driven over HTTP as a Vault client drives them (plain fetch with
// X-Vault-Token, JSON bodies). Each strict rule is shown refusing with Vault's status and message.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startVaultEmulator, type VaultEmulator } from './vault.ts';

let emu: VaultEmulator;
let n = 0;
/** A fresh key name per test, so tests share one emulator without sharing keys. */
const keyName = (prefix = 'kek') => `${prefix}-${++n}`;
const b64 = (text: string | Buffer) => Buffer.from(text).toString('base64');

interface Answer {
  status: number;
  body: { data?: Record<string, unknown>; errors?: string[]; warnings?: string[] | null } | undefined;
}

async function call(method: string, path: string, body?: unknown, token = emu.rootToken): Promise<Answer> {
  const res = await fetch(`${emu.url}/v1/${path}`, {
    method,
    headers: {
      'x-vault-token': token,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, body: text === '' ? undefined : JSON.parse(text) };
}
const post = (path: string, body: unknown = {}, token?: string) => call('POST', path, body, token);

async function encrypt(name: string, plaintext: string, extra: Record<string, unknown> = {}, token?: string) {
  const r = await post(`transit/encrypt/${name}`, { plaintext: b64(plaintext), ...extra }, token);
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return r.body!.data as { ciphertext: string; key_version: number };
}
async function decryptOk(name: string, ciphertext: string, extra: Record<string, unknown> = {}) {
  const r = await post(`transit/decrypt/${name}`, { ciphertext, ...extra });
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return Buffer.from(r.body!.data!.plaintext as string, 'base64').toString();
}
/** A 400 with exactly this one Vault error message. */
function expect400(r: Answer, message: string) {
  expect(r.status).toBe(400);
  expect(r.body).toEqual({ errors: [message] });
}

beforeAll(async () => {
  emu = await startVaultEmulator();
});
afterAll(async () => {
  await emu.close();
});

describe('keys', () => {
  it('creates an aes256-gcm96 key by default and reads it back in Vault shape; unknown keys are 404', async () => {
    const name = keyName();
    const created = await post(`transit/keys/${name}`);
    expect(created.status).toBe(200);
    const read = await call('GET', `transit/keys/${name}`);
    expect(read.status).toBe(200);
    expect(read.body!.data).toMatchObject({
      name,
      type: 'aes256-gcm96',
      derived: false,
      deletion_allowed: false,
      latest_version: 1,
      min_decryption_version: 1,
      min_encryption_version: 0,
      supports_encryption: true,
      supports_decryption: true,
    });
    const keys = read.body!.data!.keys as Record<string, number>;
    expect(Object.keys(keys)).toEqual(['1']);
    expect(Math.abs(keys['1']! - Date.now() / 1000)).toBeLessThan(60);
    const again = await post(`transit/keys/${name}`);
    expect(again.body!.warnings).toEqual([`key ${name} already existed`]);
    const missing = await call('GET', 'transit/keys/nobody');
    expect(missing).toEqual({ status: 404, body: { errors: [] } });
    const list = await call('LIST', 'transit/keys');
    expect(list.body!.data!.keys).toContain(name);
  });

  it('creates chacha20-poly1305 and derived keys; refuses unknown types', async () => {
    const chacha = keyName();
    await post(`transit/keys/${chacha}`, { type: 'chacha20-poly1305' });
    expect((await call('GET', `transit/keys/${chacha}`)).body!.data!.type).toBe('chacha20-poly1305');
    const ct = await encrypt(chacha, 'hello');
    expect(await decryptOk(chacha, ct.ciphertext)).toBe('hello');
    const derived = keyName();
    await post(`transit/keys/${derived}`, { derived: true });
    expect((await call('GET', `transit/keys/${derived}`)).body!.data).toMatchObject({
      derived: true,
      kdf: 'hkdf_sha256',
    });
    expect400(await post(`transit/keys/${keyName()}`, { type: 'aes512' }), 'unknown key type: aes512');
  });

  it('DELETE needs deletion_allowed; unknown keys are refused in Vault words', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`);
    expect400(
      await call('DELETE', `transit/keys/${name}`),
      `error deleting policy ${name}: deletion is not allowed for this key`,
    );
    const config = await post(`transit/keys/${name}/config`, { deletion_allowed: true });
    expect(config.status).toBe(200);
    expect((await call('DELETE', `transit/keys/${name}`)).status).toBe(204);
    expect((await call('GET', `transit/keys/${name}`)).status).toBe(404);
    expect400(
      await call('DELETE', `transit/keys/${name}`),
      `error deleting policy ${name}: could not delete key; not found`,
    );
    expect400(
      await post(`transit/keys/${name}/config`, { deletion_allowed: true }),
      `no existing key named ${name} could be found`,
    );
    expect400(await post(`transit/keys/${name}/rotate`), 'key not found');
  });
});

describe('encrypt and decrypt', () => {
  it('round-trips with a fresh nonce each time, as vault:v1:<base64>', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`);
    const a = await encrypt(name, 'data key bytes');
    const b = await encrypt(name, 'data key bytes');
    expect(a.ciphertext).toMatch(/^vault:v1:[A-Za-z0-9+/]+=*$/);
    expect(a.key_version).toBe(1);
    expect(a.ciphertext).not.toBe(b.ciphertext);
    expect(await decryptOk(name, a.ciphertext)).toBe('data key bytes');
  });

  it('binds associated_data: a different or missing one fails authentication', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`);
    const ct = await encrypt(name, 'dek', { associated_data: b64('store:main') });
    expect(await decryptOk(name, ct.ciphertext, { associated_data: b64('store:main') })).toBe('dek');
    expect400(
      await post(`transit/decrypt/${name}`, {
        ciphertext: ct.ciphertext,
        associated_data: b64('store:other'),
      }),
      'cipher: message authentication failed',
    );
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: ct.ciphertext }),
      'cipher: message authentication failed',
    );
    const bare = await encrypt(name, 'dek');
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: bare.ciphertext, associated_data: b64('x') }),
      'cipher: message authentication failed',
    );
  });

  it('a tampered ciphertext, or one from another key, fails authentication', async () => {
    const name = keyName();
    const other = keyName();
    await post(`transit/keys/${name}`);
    await post(`transit/keys/${other}`);
    const ct = await encrypt(name, 'dek');
    const raw = Buffer.from(ct.ciphertext.slice('vault:v1:'.length), 'base64');
    raw[raw.length - 3] = raw[raw.length - 3]! ^ 1;
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: `vault:v1:${raw.toString('base64')}` }),
      'cipher: message authentication failed',
    );
    expect400(
      await post(`transit/decrypt/${other}`, { ciphertext: ct.ciphertext }),
      'cipher: message authentication failed',
    );
    const chacha = keyName();
    await post(`transit/keys/${chacha}`, { type: 'chacha20-poly1305' });
    expect400(
      await post(`transit/decrypt/${chacha}`, { ciphertext: ct.ciphertext }),
      'chacha20poly1305: message authentication failed',
    );
  });

  it('malformed ciphertexts and inputs are refused with Vault messages', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`);
    expect400(await post(`transit/decrypt/${name}`, { ciphertext: 'abc' }), 'invalid ciphertext: no prefix');
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: 'vault:v1' }),
      'invalid ciphertext: wrong number of fields',
    );
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: 'vault:vX:AAAA' }),
      'invalid ciphertext: version number could not be decoded',
    );
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: 'vault:v1:!!!' }),
      'invalid ciphertext: could not decode base64',
    );
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: 'vault:v1:AAAA' }),
      'invalid ciphertext length',
    );
    expect400(await post(`transit/decrypt/${name}`, {}), 'missing ciphertext to decrypt');
    expect400(await post(`transit/encrypt/${name}`, {}), 'missing plaintext to encrypt');
    const bad = await post(`transit/encrypt/${name}`, { plaintext: 'not base64!' });
    expect(bad.status).toBe(400);
    expect(bad.body!.errors![0]).toMatch(/^illegal base64 data at input byte \d+$/);
    expect400(
      await post('transit/decrypt/nobody', { ciphertext: 'vault:v1:AAAA' }),
      'encryption key not found',
    );
    expect400(
      await post(`transit/encrypt/${name}`, { batch_input: [] }),
      'batch_input is not emulated by the Vault emulator',
    );
  });

  it('a derived key needs a context; a different context fails authentication', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`, { derived: true });
    const missing =
      "missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key";
    expect400(await post(`transit/encrypt/${name}`, { plaintext: b64('x') }), missing);
    const ct = await encrypt(name, 'x', { context: b64('tenant-a') });
    expect(await decryptOk(name, ct.ciphertext, { context: b64('tenant-a') })).toBe('x');
    expect400(await post(`transit/decrypt/${name}`, { ciphertext: ct.ciphertext }), missing);
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: ct.ciphertext, context: b64('tenant-b') }),
      'cipher: message authentication failed',
    );
    expect400(await post(`transit/datakey/wrapped/${name}`, {}), missing);
  });
});

describe('versions', () => {
  it('rotation: old ciphertexts still decrypt, new ones use the new version; key_version picks one', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`);
    const v1 = await encrypt(name, 'one');
    const rotated = await post(`transit/keys/${name}/rotate`);
    expect(rotated.body!.data).toMatchObject({ latest_version: 2 });
    expect(Object.keys(rotated.body!.data!.keys as object)).toEqual(['1', '2']);
    const v2 = await encrypt(name, 'two');
    expect(v2).toMatchObject({ key_version: 2 });
    expect(v2.ciphertext).toMatch(/^vault:v2:/);
    expect(await decryptOk(name, v1.ciphertext)).toBe('one');
    expect(await decryptOk(name, v2.ciphertext)).toBe('two');
    const pinned = await encrypt(name, 'pinned', { key_version: 1 });
    expect(pinned.ciphertext).toMatch(/^vault:v1:/);
    expect400(
      await post(`transit/encrypt/${name}`, { plaintext: b64('x'), key_version: 3 }),
      'requested version for encryption is higher than the latest key version',
    );
    // A v1 ciphertext relabelled v2 does not open under version 2's key.
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: v1.ciphertext.replace('vault:v1:', 'vault:v2:') }),
      'cipher: message authentication failed',
    );
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: v1.ciphertext.replace('vault:v1:', 'vault:v3:') }),
      'invalid ciphertext: version is too new',
    );
  });

  it('min_decryption_version refuses older ciphertexts; min_encryption_version refuses older key_version', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`);
    const v1 = await encrypt(name, 'one');
    await post(`transit/keys/${name}/rotate`);
    await post(`transit/keys/${name}/rotate`);
    const config = await post(`transit/keys/${name}/config`, {
      min_decryption_version: 2,
      min_encryption_version: 3,
    });
    expect(config.status).toBe(200);
    expect(config.body!.data).toMatchObject({
      min_decryption_version: 2,
      min_encryption_version: 3,
      latest_version: 3,
    });
    expect400(
      await post(`transit/decrypt/${name}`, { ciphertext: v1.ciphertext }),
      'ciphertext or signature version is disallowed by policy (too old)',
    );
    expect400(
      await post(`transit/rewrap/${name}`, { ciphertext: v1.ciphertext }),
      'ciphertext or signature version is disallowed by policy (too old)',
    );
    expect400(
      await post(`transit/encrypt/${name}`, { plaintext: b64('x'), key_version: 2 }),
      'requested version for encryption is less than the minimum encryption key version',
    );
    expect((await encrypt(name, 'x')).key_version).toBe(3);
    // Lowering the minimum brings the old version back (Vault archives, never drops, versions).
    await post(`transit/keys/${name}/config`, { min_decryption_version: 1 });
    expect(await decryptOk(name, v1.ciphertext)).toBe('one');
  });

  it('config refuses minima above the latest version or out of order', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`);
    expect400(
      await post(`transit/keys/${name}/config`, { min_decryption_version: 2 }),
      'cannot set min decryption version of 2, latest key version is 1',
    );
    expect400(
      await post(`transit/keys/${name}/config`, { min_encryption_version: 5 }),
      'cannot set min encryption version of 5, latest key version is 1',
    );
    await post(`transit/keys/${name}/rotate`);
    const r = await post(`transit/keys/${name}/config`, {
      min_decryption_version: 2,
      min_encryption_version: 1,
    });
    expect(r.status).toBe(400);
    expect(r.body!.errors![0]).toContain(
      'min encryption version of 1 must be greater than or equal to min decryption version of 2',
    );
  });

  it('rewrap moves a ciphertext to the latest (or a chosen) version without revealing it', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`);
    const v1 = await encrypt(name, 'dek');
    await post(`transit/keys/${name}/rotate`);
    const re = await post(`transit/rewrap/${name}`, { ciphertext: v1.ciphertext });
    expect(re.status).toBe(200);
    expect(re.body!.data).toMatchObject({ key_version: 2 });
    expect(re.body!.data).not.toHaveProperty('plaintext');
    expect(await decryptOk(name, re.body!.data!.ciphertext as string)).toBe('dek');
    const pinned = await post(`transit/rewrap/${name}`, { ciphertext: v1.ciphertext, key_version: 1 });
    expect(pinned.body!.data!.ciphertext).toMatch(/^vault:v1:/);
  });
});

describe('data keys', () => {
  it('datakey/plaintext returns the key and its wrapping; datakey/wrapped only the wrapping', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`);
    const plain = await post(`transit/datakey/plaintext/${name}`, {});
    expect(plain.status).toBe(200);
    const { plaintext, ciphertext, key_version } = plain.body!.data as Record<string, string | number>;
    expect(Buffer.from(plaintext as string, 'base64')).toHaveLength(32);
    expect(key_version).toBe(1);
    const unwrapped = await post(`transit/decrypt/${name}`, { ciphertext });
    expect(unwrapped.body!.data!.plaintext).toBe(plaintext);
    const wrapped = await post(`transit/datakey/wrapped/${name}`, { bits: 512 });
    expect(wrapped.body!.data).not.toHaveProperty('plaintext');
    const opened = await post(`transit/decrypt/${name}`, { ciphertext: wrapped.body!.data!.ciphertext });
    expect(Buffer.from(opened.body!.data!.plaintext as string, 'base64')).toHaveLength(64);
    expect400(await post(`transit/datakey/wrapped/${name}`, { bits: 100 }), 'invalid bits length');
    expect400(
      await post(`transit/datakey/other/${name}`, {}),
      "Invalid path, must be 'plaintext' or 'wrapped'",
    );
    expect400(await post('transit/datakey/wrapped/nobody', {}), 'encryption key not found');
  });
});

describe('ACL on transit paths (and KV paths alike)', () => {
  let acl: VaultEmulator;
  const aclPost = (path: string, body: unknown, token: string) =>
    fetch(`${acl.url}/v1/${path}`, {
      method: 'POST',
      headers: { 'x-vault-token': token, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    }).then(async (r) => ({ status: r.status, body: (await r.json()) as Answer['body'] }));
  const denied = { status: 403, body: { errors: ['1 error occurred:\n\t* permission denied\n\n'] } };

  beforeAll(async () => {
    acl = await startVaultEmulator();
    acl.setPolicy('kek-user', {
      path: {
        'transit/encrypt/kek': { capabilities: ['update'] },
        'transit/decrypt/+': { capabilities: ['update'] },
        'transit/datakey/wrapped/*': { capabilities: ['update'] },
        'secret/data/app/*': { capabilities: ['read'] },
      },
    });
    acl.setPolicy('kek-creator', { path: { 'transit/encrypt/*': { capabilities: ['create', 'update'] } } });
    acl.setPolicy('no-decrypt', { path: { 'transit/decrypt/kek': { capabilities: ['deny'] } } });
    await aclPost('transit/keys/kek', {}, acl.rootToken);
  });
  afterAll(async () => {
    await acl.close();
  });

  it('a token without update on transit/decrypt/<name> gets 403 permission denied', async () => {
    const encryptOnly = acl.createToken({ ttlSeconds: 300, policies: ['kek-creator'] });
    const ct = await aclPost('transit/encrypt/kek', { plaintext: b64('x') }, encryptOnly);
    expect(ct.status).toBe(200);
    const ciphertext = ct.body!.data!.ciphertext;
    expect(await aclPost('transit/decrypt/kek', { ciphertext }, encryptOnly)).toEqual(denied);
    const user = acl.createToken({ ttlSeconds: 300, policies: ['kek-user'] });
    expect((await aclPost('transit/decrypt/kek', { ciphertext }, user)).status).toBe(200);
    // deny in another of the token's policies wins over the + rule.
    const both = acl.createToken({ ttlSeconds: 300, policies: ['kek-user', 'no-decrypt'] });
    expect(await aclPost('transit/decrypt/kek', { ciphertext }, both)).toEqual(denied);
    // Paths the policy does not name, and policy names never set, grant nothing.
    expect(await aclPost('transit/keys/kek/rotate', {}, user)).toEqual(denied);
    const ghost = acl.createToken({ ttlSeconds: 300, policies: ['never-set'] });
    expect(await aclPost('transit/encrypt/kek', { plaintext: b64('x') }, ghost)).toEqual(denied);
  });

  it('encrypt on an unknown key upserts only with create; update alone is 403', async () => {
    const user = acl.createToken({ ttlSeconds: 300, policies: ['kek-user', 'kek-creator'] });
    const updateOnly = acl.createToken({ ttlSeconds: 300, policies: ['kek-user'] });
    expect((await aclPost('transit/encrypt/kek', { plaintext: b64('x') }, updateOnly)).status).toBe(200);
    expect(await aclPost('transit/encrypt/fresh', { plaintext: b64('x') }, updateOnly)).toEqual(denied);
    const upsert = await aclPost('transit/encrypt/fresh', { plaintext: b64('x'), context: b64('c') }, user);
    expect(upsert.status).toBe(200);
    const read = await fetch(`${acl.url}/v1/transit/keys/fresh`, {
      headers: { 'x-vault-token': acl.rootToken },
    });
    expect(((await read.json()) as { data: { derived: boolean } }).data.derived).toBe(true);
  });

  it('the same ACL governs KV: read-only on secret/data/app/* cannot write there', async () => {
    const user = acl.createToken({ ttlSeconds: 300, policies: ['kek-user'] });
    expect(await aclPost('secret/data/app/db', { data: { a: 1 } }, user)).toEqual(denied);
    await aclPost('secret/data/app/db', { data: { a: 1 } }, acl.rootToken);
    const read = await fetch(`${acl.url}/v1/secret/data/app/db`, { headers: { 'x-vault-token': user } });
    expect(read.status).toBe(200);
    const elsewhere = await fetch(`${acl.url}/v1/secret/data/other`, { headers: { 'x-vault-token': user } });
    expect(elsewhere.status).toBe(403);
  });
});

describe('mounts, counters and outages', () => {
  it('serves transit at the mounts the options name, each with its own keys', async () => {
    const other = await startVaultEmulator({ transitMounts: ['kek', 'transit'] });
    try {
      const req = (path: string, body: unknown) =>
        fetch(`${other.url}/v1/${path}`, {
          method: 'POST',
          headers: { 'x-vault-token': other.rootToken, 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
      const enc = await req('kek/encrypt/k', { plaintext: b64('x') });
      expect(enc.status).toBe(200);
      const { ciphertext } = ((await enc.json()) as { data: { ciphertext: string } }).data;
      expect((await req('kek/decrypt/k', { ciphertext })).status).toBe(200);
      // The same name on the other mount is another key.
      await req('transit/keys/k', {});
      const cross = await req('transit/decrypt/k', { ciphertext });
      expect(cross.status).toBe(400);
      expect(other.transitCallCount('decrypt', { mount: 'kek' })).toBe(1);
      expect(other.transitCallCount('decrypt', { mount: 'transit' })).toBe(1);
    } finally {
      await other.close();
    }
  });

  it('counts calls per endpoint (failed ones too) and failNext answers 503 sealed', async () => {
    const name = keyName();
    await post(`transit/keys/${name}`);
    const ct = await encrypt(name, 'dek');
    emu.resetTransitCalls();
    await decryptOk(name, ct.ciphertext);
    emu.failNext(1, 503, (_method, path) => path.startsWith('transit/decrypt/'));
    const sealed = await post(`transit/decrypt/${name}`, { ciphertext: ct.ciphertext });
    expect(sealed).toEqual({ status: 503, body: { errors: ['Vault is sealed'] } });
    expect(await decryptOk(name, ct.ciphertext)).toBe('dek');
    expect(emu.transitCallCount('decrypt', { name })).toBe(3);
    expect(emu.transitCallCount('encrypt')).toBe(0);
  });

  it('records transit requests with the plaintext redacted', async () => {
    const name = keyName();
    const secret = b64('very secret data key');
    await post(`transit/encrypt/${name}`, { plaintext: secret });
    const recorded = emu.requests.filter((r) => r.path === `transit/encrypt/${name}`);
    expect(recorded).toHaveLength(1);
    expect(recorded[0]!.body).toEqual({ plaintext: '[redacted]' });
    expect(JSON.stringify(emu.requests)).not.toContain(secret);
  });
});
