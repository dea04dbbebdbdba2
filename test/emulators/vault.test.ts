// The Vault emulator, exercised the way Keyturn talks to Vault: through node-vault, and through fetch where
// node-vault has no helper. Each expectation is a rule of ../shared/reference/secret-store-protocols.md B1–B3.
import net from 'node:net';
import vaultFactory from 'node-vault';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startVaultEmulator, type VaultEmulator } from './vault.ts';

interface ApiError {
  message: string;
  response?: { statusCode: number; body: any };
}

const RFC3339_NANO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/;
const PERMISSION_DENIED = '1 error occurred:\n\t* permission denied\n\n';
const ENVELOPE_KEYS = [
  'request_id',
  'lease_id',
  'renewable',
  'lease_duration',
  'data',
  'wrap_info',
  'warnings',
  'auth',
];

let emu: VaultEmulator;
beforeEach(async () => {
  emu = await startVaultEmulator();
});
afterEach(async () => {
  await emu.close();
});

const client = (options: Partial<vaultFactory.VaultOptions> = {}) =>
  vaultFactory({ endpoint: emu.url, token: emu.rootToken, ...options });

async function rejection(promise: Promise<unknown>): Promise<ApiError> {
  try {
    await promise;
  } catch (err) {
    return err as ApiError;
  }
  throw new Error('expected the call to fail');
}

async function raw(
  method: string,
  path: string,
  options: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: any }> {
  const res = await fetch(`${emu.url}/v1/${path}`, {
    method,
    headers: { 'X-Vault-Token': options.token ?? emu.rootToken, ...options.headers },
    ...(options.body !== undefined
      ? { body: typeof options.body === 'string' ? options.body : JSON.stringify(options.body) }
      : {}),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

describe('KV v2 data (ref B1)', () => {
  it('writes versions and reads them back in the documented envelope', async () => {
    const vault = client();
    const first = await vault.write('secret/data/app/db', { data: { password: 'one' } });
    expect(Object.keys(first)).toEqual(ENVELOPE_KEYS);
    expect(first).toMatchObject({
      lease_id: '',
      renewable: false,
      lease_duration: 0,
      wrap_info: null,
      warnings: null,
    });
    expect(first.auth).toBeNull();
    expect(first.request_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(first.data).toEqual({
      version: 1,
      created_time: expect.stringMatching(RFC3339_NANO),
      deletion_time: '',
      destroyed: false,
      custom_metadata: null,
    });
    expect(Number.isNaN(Date.parse(first.data.created_time))).toBe(false);

    const second = await vault.write('secret/data/app/db', { data: { password: 'two' } });
    expect(second.data.version).toBe(2);
    expect(second.data.created_time > first.data.created_time).toBe(true);

    const latest = await vault.read('secret/data/app/db');
    expect(latest.data).toEqual({
      data: { password: 'two' },
      metadata: {
        version: 2,
        created_time: second.data.created_time,
        deletion_time: '',
        destroyed: false,
        custom_metadata: null,
      },
    });
    const v1 = await vault.read('secret/data/app/db?version=1');
    expect(v1.data.data).toEqual({ password: 'one' });
    expect(v1.data.metadata.version).toBe(1);
    const v0 = await vault.read('secret/data/app/db?version=0'); // 0 means latest
    expect(v0.data.metadata.version).toBe(2);

    const meta = await vault.read('secret/metadata/app/db');
    expect(meta.data).toEqual({
      versions: {
        '1': { created_time: first.data.created_time, deletion_time: '', destroyed: false },
        '2': { created_time: second.data.created_time, deletion_time: '', destroyed: false },
      },
      current_version: 2,
      oldest_version: 0,
      created_time: first.data.created_time,
      updated_time: second.data.created_time,
      max_versions: 0,
      cas_required: false,
      delete_version_after: '0s',
      custom_metadata: null,
    });
    expect(emu.requests.at(-2)).toMatchObject({
      method: 'GET',
      path: 'secret/data/app/db',
      query: { version: '0' },
    });
  });

  it('a missing key or version is a bare 404 that node-vault reports as "Status 404"', async () => {
    const vault = client();
    const missing = await rejection(vault.read('secret/data/nope'));
    expect(missing.message).toBe('Status 404');
    expect(missing.response).toEqual({ statusCode: 404, body: { errors: [] } });

    await vault.write('secret/data/one', { data: { a: 1 } });
    const noVersion = await rejection(vault.read('secret/data/one?version=7'));
    expect(noVersion.response).toEqual({ statusCode: 404, body: { errors: [] } });
    expect((await rejection(vault.read('secret/metadata/nope'))).response?.statusCode).toBe(404);
  });

  it('a write without data is 400 "no data provided"', async () => {
    const err = await rejection(client().write('secret/data/x', { options: { cas: 0 } }));
    expect(err.message).toBe('no data provided');
    expect(err.response).toEqual({ statusCode: 400, body: { errors: ['no data provided'] } });
  });

  it('check-and-set mismatch is 400 with the exact message', async () => {
    const vault = client();
    await vault.write('secret/data/cas', { data: { v: 1 }, options: { cas: 0 } });
    await vault.write('secret/data/cas', { data: { v: 2 }, options: { cas: 1 } });
    const err = await rejection(vault.write('secret/data/cas', { data: { v: 3 }, options: { cas: 1 } }));
    expect(err.message).toBe('check-and-set parameter did not match the current version');
    expect(err.response).toEqual({
      statusCode: 400,
      body: { errors: ['check-and-set parameter did not match the current version'] },
    });
    expect((await vault.read('secret/data/cas')).data.data).toEqual({ v: 2 });
  });

  it('cas=0 succeeds only while current_version is 0; soft delete and destroy do not reset it', async () => {
    const vault = client();
    await vault.write('secret/data/new', { data: { v: 1 }, options: { cas: 0 } });
    const again = await rejection(vault.write('secret/data/new', { data: { v: 2 }, options: { cas: 0 } }));
    expect(again.response?.statusCode).toBe(400);

    await vault.delete('secret/data/new');
    await vault.destroySecretVersions({ path: 'new', versions: [1] });
    const afterDestroy = await rejection(
      vault.write('secret/data/new', { data: { v: 2 }, options: { cas: 0 } }),
    );
    expect(afterDestroy.message).toBe('check-and-set parameter did not match the current version');
    expect((await vault.write('secret/data/new', { data: { v: 2 }, options: { cas: 1 } })).data.version).toBe(
      2,
    );

    // Only deleting the metadata starts the key over.
    await vault.delete('secret/metadata/new');
    expect((await vault.write('secret/data/new', { data: { v: 1 }, options: { cas: 0 } })).data.version).toBe(
      1,
    );
  });

  it('cas_required, on the key or on the mount config, refuses writes without cas', async () => {
    const vault = client();
    await vault.write('secret/data/locked', { data: { v: 1 } });
    expect(await vault.write('secret/metadata/locked', { cas_required: true })).toBe(''); // 204, no body
    const err = await rejection(vault.write('secret/data/locked', { data: { v: 2 } }));
    expect(err.message).toBe('check-and-set parameter required for this call');
    expect(err.response?.statusCode).toBe(400);
    expect(
      (await vault.write('secret/data/locked', { data: { v: 2 }, options: { cas: 1 } })).data.version,
    ).toBe(2);

    await vault.write('secret/config', { cas_required: true, max_versions: 5 });
    expect((await vault.read('secret/config')).data).toEqual({
      cas_required: true,
      delete_version_after: '0s',
      max_versions: 5,
    });
    const other = await rejection(vault.write('secret/data/other', { data: { v: 1 } }));
    expect(other.message).toBe('check-and-set parameter required for this call');
    // Turning it off on a key while the mount mandates it is accepted with a warning (200, not 204).
    const warned = await vault.write('secret/metadata/other', { cas_required: false });
    expect(warned.warnings).toEqual([
      '"cas_required" set to false, but is mandated by backend config. This value will be ignored.',
    ]);
  });

  it('soft delete: DELETE data/ then a read is 404 carrying the envelope with data null and metadata', async () => {
    const vault = client();
    await vault.write('secret/data/soft', { data: { v: 1 } });
    await vault.write('secret/data/soft', { data: { v: 2 } });
    expect(await vault.delete('secret/data/soft')).toBe('');

    const err = await rejection(vault.read('secret/data/soft'));
    expect(err.message).toBe('Status 404'); // errors is absent, so node-vault falls back to the status
    expect(err.response?.statusCode).toBe(404);
    const body = err.response?.body;
    expect(Object.keys(body)).toEqual(ENVELOPE_KEYS);
    expect(body.data).toEqual({
      data: null,
      metadata: {
        version: 2,
        created_time: expect.stringMatching(RFC3339_NANO),
        deletion_time: expect.stringMatching(RFC3339_NANO),
        destroyed: false,
        custom_metadata: null,
      },
    });
    expect((await vault.read('secret/data/soft?version=1')).data.data).toEqual({ v: 1 });
    const meta = await vault.read('secret/metadata/soft');
    expect(meta.data.current_version).toBe(2);
    expect(meta.data.versions['2'].deletion_time).toBe(body.data.metadata.deletion_time);

    // Deleting again is a no-op; a new write is version 3 and readable.
    await vault.delete('secret/data/soft');
    expect((await vault.read('secret/metadata/soft')).data.versions['2'].deletion_time).toBe(
      body.data.metadata.deletion_time,
    );
    expect((await vault.write('secret/data/soft', { data: { v: 3 } })).data.version).toBe(3);
  });

  it('delete/ and undelete/ take {versions}; an empty list is 400', async () => {
    const vault = client();
    for (const v of [1, 2, 3]) await vault.write('secret/data/multi', { data: { v } });
    expect(await vault.write('secret/delete/multi', { versions: [1, 2] })).toBe('');
    expect((await rejection(vault.read('secret/data/multi?version=1'))).response?.body.data.data).toBeNull();
    expect((await vault.read('secret/data/multi')).data.data).toEqual({ v: 3 });

    await vault.write('secret/undelete/multi', { versions: [1] });
    const restored = await vault.read('secret/data/multi?version=1');
    expect(restored.data).toMatchObject({ data: { v: 1 }, metadata: { deletion_time: '' } });
    expect((await rejection(vault.read('secret/data/multi?version=2'))).response?.statusCode).toBe(404);

    const empty = await rejection(vault.write('secret/delete/multi', { versions: [] }));
    expect(empty.response).toEqual({ statusCode: 400, body: { errors: ['No version number provided'] } });
    const emptyDestroy = await raw('POST', 'secret/destroy/multi', { body: { versions: [] } });
    expect(emptyDestroy).toEqual({ status: 400, body: { errors: ['no version number provided'] } });
    // A key that does not exist: 204 all the same.
    expect(await vault.write('secret/delete/ghost', { versions: [1] })).toBe('');
  });

  it('destroy removes the data for good: 404 envelope with destroyed true, and undelete cannot bring it back', async () => {
    const vault = client();
    await vault.write('secret/data/gone', { data: { v: 1 } });
    await vault.write('secret/data/gone', { data: { v: 2 } });
    expect(await vault.destroySecretVersions({ path: 'gone', versions: [1] })).toBe('');
    expect(emu.requests.at(-1)).toMatchObject({
      method: 'POST',
      path: 'secret/destroy/gone',
      body: { versions: [1] },
    });

    const err = await rejection(vault.read('secret/data/gone?version=1'));
    expect(err.response?.statusCode).toBe(404);
    expect(err.response?.body.data).toMatchObject({
      data: null,
      metadata: { version: 1, destroyed: true, deletion_time: '' },
    });

    await vault.write('secret/undelete/gone', { versions: [1] });
    expect(
      (await rejection(vault.read('secret/data/gone?version=1'))).response?.body.data.metadata.destroyed,
    ).toBe(true);
    expect((await vault.read('secret/metadata/gone')).data.versions['1'].destroyed).toBe(true);
    expect((await vault.read('secret/data/gone')).data.data).toEqual({ v: 2 });

    // A destroyed latest version: DELETE data/ is a no-op and reads stay 404.
    await vault.destroySecretVersions({ path: 'gone', versions: [2] });
    await vault.delete('secret/data/gone');
    expect((await vault.read('secret/metadata/gone')).data.versions['2']).toEqual({
      created_time: expect.stringMatching(RFC3339_NANO),
      deletion_time: '',
      destroyed: true,
    });
  });

  it('max_versions prunes the oldest versions and advances oldest_version', async () => {
    const vault = client();
    await vault.write('secret/metadata/pruned', { max_versions: 3 });
    for (let v = 1; v <= 5; v++) await vault.write('secret/data/pruned', { data: { v } });
    const meta = (await vault.read('secret/metadata/pruned')).data;
    expect(Object.keys(meta.versions)).toEqual(['3', '4', '5']);
    expect(meta).toMatchObject({ current_version: 5, oldest_version: 3, max_versions: 3 });
    const pruned = await rejection(vault.read('secret/data/pruned?version=2'));
    expect(pruned.response).toEqual({ statusCode: 404, body: { errors: [] } }); // gone, not "deleted"
    expect((await vault.read('secret/data/pruned?version=3')).data.data).toEqual({ v: 3 });
  });

  it('the default window is 10 versions; the larger of key and mount max_versions wins', async () => {
    const vault = client();
    for (let v = 1; v <= 9; v++) await vault.write('secret/data/many', { data: { v } });
    expect((await vault.read('secret/metadata/many')).data.oldest_version).toBe(0);
    await vault.write('secret/data/many', { data: { v: 10 } });
    // vault-plugin-secrets-kv AddVersion: the window moves as soon as current - oldest reaches max.
    expect((await vault.read('secret/metadata/many')).data.oldest_version).toBe(1);
    await vault.write('secret/data/many', { data: { v: 11 } });
    const meta = (await vault.read('secret/metadata/many')).data;
    expect(meta.oldest_version).toBe(2);
    expect(Object.keys(meta.versions).map(Number)).toEqual([2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);

    await vault.write('secret/config', { max_versions: 4 });
    await vault.write('secret/metadata/small', { max_versions: 2 });
    for (let v = 1; v <= 6; v++) await vault.write('secret/data/small', { data: { v } });
    const small = (await vault.read('secret/metadata/small')).data;
    expect(Object.keys(small.versions)).toEqual(['3', '4', '5', '6']);
    expect(small.oldest_version).toBe(3);
  });

  it('custom_metadata is set without a new version and shows in metadata, reads and writes', async () => {
    const vault = client();
    await vault.write('secret/data/tagged', { data: { v: 1 } });
    await vault.write('secret/metadata/tagged', {
      custom_metadata: { owner: 'payments', keyturn_current: '1:abc' },
    });
    const meta = (await vault.read('secret/metadata/tagged')).data;
    expect(meta.custom_metadata).toEqual({ keyturn_current: '1:abc', owner: 'payments' });
    expect(meta.current_version).toBe(1);
    expect((await vault.read('secret/data/tagged')).data.metadata.custom_metadata).toEqual(
      meta.custom_metadata,
    );
    expect((await vault.write('secret/data/tagged', { data: { v: 2 } })).data.custom_metadata).toEqual(
      meta.custom_metadata,
    );
    // POST replaces the whole map.
    await vault.write('secret/metadata/tagged', { custom_metadata: { owner: 'ops' } });
    expect((await vault.read('secret/metadata/tagged')).data.custom_metadata).toEqual({ owner: 'ops' });
    // Metadata can exist before any version: current_version 0 and no data to read.
    await vault.write('secret/metadata/empty', { custom_metadata: { a: 'b' } });
    expect((await vault.read('secret/metadata/empty')).data).toMatchObject({
      current_version: 0,
      versions: {},
    });
    expect((await rejection(vault.read('secret/data/empty'))).response?.body).toEqual({ errors: [] });
  });

  it('custom_metadata limits: 64 keys, key ≤128 and value 1–512 bytes', async () => {
    const vault = client();
    const tooMany = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v']));
    const err = await rejection(vault.write('secret/metadata/limits', { custom_metadata: tooMany }));
    expect(err.response?.statusCode).toBe(400);
    expect(err.message).toBe(
      '1 error occurred:\n\t* custom_metadata validation failed: payload must contain at most 64 keys, provided 65\n\n',
    );
    const long = await rejection(
      vault.write('secret/metadata/limits', { custom_metadata: { big: 'x'.repeat(513) } }),
    );
    expect(long.message).toBe(
      '1 error occurred:\n\t* custom_metadata validation failed: length of value for key "big" is 513 but must be 0 < len(value) <= 512\n\n',
    );
    const two = await rejection(
      vault.write('secret/metadata/limits', { custom_metadata: { ['k'.repeat(129)]: '' } }),
    );
    expect(two.message).toMatch(
      /^2 errors occurred:\n\t\* custom_metadata validation failed: length of key "k+" is 129/,
    );
    expect(two.message).toContain('length of value for key');
    // Nothing was created by the refused writes; exactly at the limits is fine.
    expect((await rejection(vault.read('secret/metadata/limits'))).response?.statusCode).toBe(404);
    const atLimit = Object.fromEntries(
      Array.from({ length: 64 }, (_, i) => [`${i}`.padEnd(128, 'k'), 'v'.repeat(512)]),
    );
    await vault.write('secret/metadata/limits', { custom_metadata: atLimit });
    expect(Object.keys((await vault.read('secret/metadata/limits')).data.custom_metadata)).toHaveLength(64);
  });

  it('DELETE metadata/ removes the key and all its versions', async () => {
    const vault = client();
    await vault.write('secret/data/doomed', { data: { v: 1 } });
    expect(await vault.delete('secret/metadata/doomed')).toBe('');
    expect((await rejection(vault.read('secret/metadata/doomed'))).response?.statusCode).toBe(404);
    expect((await rejection(vault.read('secret/data/doomed?version=1'))).response?.body).toEqual({
      errors: [],
    });
    expect(await vault.delete('secret/metadata/doomed')).toBe(''); // still 204
  });

  it('PATCH (node-vault update) merges into the latest version as a new one', async () => {
    const vault = client();
    await vault.write('secret/data/patched', { data: { user: 'app', password: 'one', extra: 'x' } });
    const res = await vault.update('secret/data/patched', {
      data: { password: 'two', extra: null },
      options: { cas: 1 },
    });
    expect(res.data.version).toBe(2);
    expect((await vault.read('secret/data/patched')).data.data).toEqual({ user: 'app', password: 'two' });
    const wrongType = await raw('PATCH', 'secret/data/patched', {
      body: { data: {} },
      headers: { 'Content-Type': 'application/json' },
    });
    expect(wrongType.status).toBe(415);
    expect(
      (await rejection(vault.update('secret/data/never', { data: { a: 1 } }))).response?.statusCode,
    ).toBe(404);
  });
});

describe('LIST (ref B1)', () => {
  it('lists direct children with the LIST verb, ?list=true and node-vault noCustomHTTPVerbs; empty is 404', async () => {
    const vault = client();
    for (const path of ['app/db', 'app/api/key', 'web', 'app/db/replica']) {
      await vault.write(`secret/data/${path}`, { data: { v: 1 } });
    }
    expect((await vault.list('secret/metadata/')).data.keys).toEqual(['app/', 'web']);
    expect((await vault.list('secret/metadata/app')).data.keys).toEqual(['api/', 'db', 'db/']);
    expect(emu.requests.at(-1)).toMatchObject({ method: 'LIST', path: 'secret/metadata/app' });

    const viaQuery = await raw('GET', 'secret/metadata/app/?list=true');
    expect(viaQuery.status).toBe(200);
    expect(viaQuery.body.data.keys).toEqual(['api/', 'db', 'db/']);
    const noVerbs = client({ noCustomHTTPVerbs: true });
    expect((await noVerbs.list('secret/metadata/app/api')).data.keys).toEqual(['key']);

    const empty = await rejection(vault.list('secret/metadata/nothing/here'));
    expect(empty.message).toBe('Status 404');
    expect(empty.response).toEqual({ statusCode: 404, body: { errors: [] } });

    // Deleted versions keep the key listed; deleting the metadata removes it.
    await vault.delete('secret/data/web');
    expect((await vault.list('secret/metadata/')).data.keys).toContain('web');
    await vault.delete('secret/metadata/web');
    expect((await vault.list('secret/metadata/')).data.keys).toEqual(['app/']);
  });
  it('frames pipelined requests on one connection, whatever the packet boundaries (the LIST shim)', async () => {
    await client().write('secret/data/dir/a', { data: { v: 1 } });
    // A body holding request-like text must pass through untouched (it is not JSON, so Vault answers 400).
    const body = '\r\n\r\nLIST /v1/secret/metadata/ HTTP/1.1\r\n\r\n';
    const auth = `Host: vault\r\nX-Vault-Token: ${emu.rootToken}\r\n`;
    const wire =
      `POST /v1/secret/data/dir/b HTTP/1.1\r\n${auth}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}` +
      `LIST /v1/secret/metadata/dir HTTP/1.1\r\n${auth}Connection: close\r\n\r\n`;
    const socket = net.connect(Number(new URL(emu.url).port), '127.0.0.1');
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    const closed = new Promise((resolve) => socket.on('close', resolve));
    for (let i = 0; i < wire.length; i += 7) {
      socket.write(wire.slice(i, i + 7));
      // Paces the 7-byte chunks, so the server reads a request split across packets; no assertion waits on it.
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await closed;
    const text = Buffer.concat(received).toString('utf8');
    expect(text.match(/^HTTP\/1\.1 \d+/gm)).toEqual(['HTTP/1.1 400', 'HTTP/1.1 200']);
    expect(text).toContain('failed to parse JSON input');
    expect(text).toContain('"keys":["a"]');
    expect(emu.requests.slice(-2).map((r) => r.method)).toEqual(['POST', 'LIST']);
  });
});

describe('routing and errors (ref B1 "Errors")', () => {
  it('unknown paths are 404 {"errors":[]}, unsupported methods 405, bad JSON 400', async () => {
    expect(await raw('GET', 'secret/whatever/x')).toEqual({ status: 404, body: { errors: [] } });
    expect(await raw('GET', 'nomount/data/x')).toEqual({ status: 404, body: { errors: [] } });
    const unsupported = await rejection(client().delete('secret/destroy/x')); // destroy/ only takes POST
    expect(unsupported.response).toEqual({
      statusCode: 405,
      body: { errors: ['1 error occurred:\n\t* unsupported operation\n\n'] },
    });
    expect((await raw('GET', 'secret/destroy/x')).status).toBe(405);
    expect((await raw('POST', 'sys/health')).status).toBe(405);
    // LIST names a folder (Vault appends '/'), and data/ paths never end in '/': no such path.
    expect((await rejection(client().list('secret/data/app'))).response).toEqual({
      statusCode: 404,
      body: { errors: [] },
    });
    const bad = await raw('POST', 'secret/data/x', { body: '{not json' });
    expect(bad.status).toBe(400);
    expect(bad.body.errors[0]).toMatch(/^failed to parse JSON input/);
  });

  it('the Authorization: Bearer header works like X-Vault-Token; no token is 403', async () => {
    const res = await fetch(`${emu.url}/v1/secret/data/x`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${emu.rootToken}` },
      body: JSON.stringify({ data: { a: 1 } }),
    });
    expect(res.status).toBe(200);
    const none = await rejection(vaultFactory({ endpoint: emu.url, token: '' }).read('secret/data/x'));
    expect(none.response).toEqual({ statusCode: 403, body: { errors: [PERMISSION_DENIED] } });
  });
});

describe('tokens and auth (ref B2)', () => {
  it('a revoked token gets 403 and node-vault reports the multierror message', async () => {
    const token = emu.createToken({ ttlSeconds: 3600 });
    const vault = client({ token });
    await vault.write('secret/data/t', { data: { a: 1 } });
    emu.revokeToken(token);
    const err = await rejection(vault.read('secret/data/t'));
    expect(err.message).toBe(PERMISSION_DENIED);
    expect(err.response).toEqual({ statusCode: 403, body: { errors: [PERMISSION_DENIED] } });
  });

  it('tokens expire after their TTL', async () => {
    const token = emu.createToken({ ttlSeconds: 1 });
    const vault = client({ token });
    const self = await vault.tokenLookupSelf();
    expect(self.data).toMatchObject({ ttl: 1, creation_ttl: 1, renewable: true, policies: ['default'] });
    await vault.write('secret/data/short', { data: { a: 1 } });
    // The emulator expires tokens on real time, as Vault does: the TTL has to pass.
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const err = await rejection(vault.read('secret/data/short'));
    expect(err.response?.statusCode).toBe(403);
    expect(err.message).toBe(PERMISSION_DENIED);
  });

  it('lookup-self describes the root token without a lease', async () => {
    const self = await client().tokenLookupSelf();
    expect(self.data).toEqual({
      accessor: expect.any(String),
      creation_time: expect.any(Number),
      creation_ttl: 0,
      display_name: 'root',
      entity_id: '',
      expire_time: null,
      explicit_max_ttl: 0,
      id: emu.rootToken,
      meta: null,
      num_uses: 0,
      orphan: true,
      path: 'auth/token/root',
      policies: ['root'],
      ttl: 0,
      type: 'service',
    });
  });

  it('renew-self extends the TTL; non-renewable tokens and the root token get 400', async () => {
    const token = emu.createToken({ ttlSeconds: 60, policies: ['keyturn'] });
    const vault = client({ token });
    const renewed = await vault.tokenRenewSelf({ increment: 3600 });
    expect(renewed.data).toBeNull();
    expect(renewed.auth).toMatchObject({
      client_token: token,
      lease_duration: 3600,
      renewable: true,
      policies: ['default', 'keyturn'],
      token_type: 'service',
    });
    const self = await vault.tokenLookupSelf();
    expect(self.data.ttl).toBeGreaterThanOrEqual(3599);
    expect(self.data.expire_time).toMatch(RFC3339_NANO);
    expect(self.data.last_renewal).toMatch(RFC3339_NANO);
    // Without an increment the token gets its creation TTL again.
    expect((await vault.tokenRenewSelf()).auth.lease_duration).toBe(60);
    expect((await vault.tokenRenewSelf({ increment: '2h' })).auth.lease_duration).toBe(7200);

    const fixed = client({ token: emu.createToken({ ttlSeconds: 60, renewable: false }) });
    const err = await rejection(fixed.tokenRenewSelf());
    expect(err.response).toEqual({ statusCode: 400, body: { errors: ['lease is not renewable'] } });
    expect((await rejection(client().tokenRenewSelf())).message).toBe('invalid lease ID');
  });

  it('AppRole login returns the documented auth block and the token works', async () => {
    const { roleId, secretId } = emu.addAppRole('keyturn', { tokenTtlSeconds: 900, policies: ['kv-writer'] });
    const vault = vaultFactory({ endpoint: emu.url });
    const login = await vault.approleLogin({ role_id: roleId, secret_id: secretId });
    expect(Object.keys(login)).toEqual(ENVELOPE_KEYS);
    expect(login).toMatchObject({
      data: null,
      lease_duration: 0,
      renewable: false,
      lease_id: '',
      warnings: null,
    });
    expect(login.auth).toEqual({
      client_token: expect.stringMatching(/^hvs\./),
      accessor: expect.any(String),
      policies: ['default', 'kv-writer'],
      token_policies: ['default', 'kv-writer'],
      metadata: { role_name: 'keyturn' },
      lease_duration: 900,
      renewable: true,
      entity_id: expect.any(String),
      token_type: 'service',
      orphan: true,
      mfa_requirement: null,
      num_uses: 0,
    });
    expect(vault.token).toBe(login.auth.client_token); // node-vault keeps it (tokenSource)
    await vault.write('secret/data/by-approle', { data: { a: 1 } });
    expect((await vault.read('secret/data/by-approle')).data.data).toEqual({ a: 1 });
    const self = await vault.tokenLookupSelf();
    expect(self.data).toMatchObject({ path: 'auth/approle/login', meta: { role_name: 'keyturn' }, ttl: 900 });

    const bad = await rejection(
      vaultFactory({ endpoint: emu.url }).approleLogin({ role_id: roleId, secret_id: 'nope' }),
    );
    expect(bad.response).toEqual({ statusCode: 400, body: { errors: ['invalid role or secret ID'] } });
    // Keyturn's store logs in with a raw request to auth/<mount>/login; a custom mount works the same way.
    const custom = emu.addAppRole('other', { mount: 'ci-approle' });
    const res = await raw('POST', 'auth/ci-approle/login', {
      token: '',
      body: { role_id: custom.roleId, secret_id: custom.secretId },
    });
    expect(res.status).toBe(200);
    expect(res.body.auth.lease_duration).toBe(768 * 3600);
  });

  it('Kubernetes login returns the auth block with the service account in its metadata, and the token works', async () => {
    emu.addKubernetesRole('keyturn', {
      serviceAccountNames: ['keyturn'],
      serviceAccountNamespaces: ['platform'],
      tokenTtlSeconds: 600,
      policies: ['kv-writer'],
    });
    const jwt = emu.mintServiceAccountToken({ namespace: 'platform', serviceAccount: 'keyturn' });
    const vault = vaultFactory({ endpoint: emu.url });
    // node-vault 0.12 renders the default mount from a variable its template never receives (the path comes out
    // as auth//login), so mount_point is always given; Keyturn's store posts to auth/<mount>/login itself.
    const login = await vault.kubernetesLogin({ mount_point: 'kubernetes', role: 'keyturn', jwt });
    expect(Object.keys(login)).toEqual(ENVELOPE_KEYS);
    expect(login).toMatchObject({ data: null, lease_duration: 0, renewable: false, lease_id: '' });
    expect(login.auth).toEqual({
      client_token: expect.stringMatching(/^hvs\./),
      accessor: expect.any(String),
      policies: ['default', 'kv-writer'],
      token_policies: ['default', 'kv-writer'],
      metadata: {
        role: 'keyturn',
        service_account_name: 'keyturn',
        service_account_namespace: 'platform',
        service_account_secret_name: '',
        service_account_uid: expect.any(String),
      },
      lease_duration: 600,
      renewable: true,
      entity_id: expect.any(String),
      token_type: 'service',
      orphan: true,
      mfa_requirement: null,
      num_uses: 0,
    });
    expect(vault.token).toBe(login.auth.client_token); // node-vault keeps it (tokenSource)
    await vault.write('secret/data/by-k8s', { data: { a: 1 } });
    expect((await vault.read('secret/data/by-k8s')).data.data).toEqual({ a: 1 });
    expect((await vault.tokenLookupSelf()).data).toMatchObject({
      path: 'auth/kubernetes/login',
      display_name: 'kubernetes-platform-keyturn',
      ttl: 600,
    });
    const renewed = await vault.tokenRenewSelf();
    expect(renewed.auth.lease_duration).toBe(600);
    // The same service account's next (rotated) token logs in too, with the same uid.
    const next = emu.mintServiceAccountToken({ namespace: 'platform', serviceAccount: 'keyturn' });
    const again = await raw('POST', 'auth/kubernetes/login', {
      token: '',
      body: { role: 'keyturn', jwt: next },
    });
    expect(again.status).toBe(200);
    expect(again.body.auth.metadata.service_account_uid).toBe(login.auth.metadata.service_account_uid);
  });

  it('Kubernetes login is strict: 400 for a missing field or unknown role, 403 for a JWT the role or TokenReview refuses', async () => {
    emu.addKubernetesRole('keyturn', {
      serviceAccountNames: ['keyturn'],
      serviceAccountNamespaces: ['platform'],
    });
    const good = emu.mintServiceAccountToken({ namespace: 'platform', serviceAccount: 'keyturn' });
    const login = (body: unknown, mount = 'kubernetes') =>
      raw('POST', `auth/${mount}/login`, { token: '', body });
    expect(await login({ jwt: good })).toEqual({ status: 400, body: { errors: ['missing role'] } });
    expect(await login({ role: 'keyturn' })).toEqual({ status: 400, body: { errors: ['missing jwt'] } });
    expect(await login({ role: 'keyturn', jwt: '' })).toEqual({
      status: 400,
      body: { errors: ['missing jwt'] },
    });
    // vault-plugin-auth-kubernetes answers an unknown role with 400, not 403.
    expect(await login({ role: 'nobody', jwt: good })).toEqual({
      status: 400,
      body: { errors: ['invalid role name "nobody"'] },
    });
    const denied = { status: 403, body: { errors: [PERMISSION_DENIED] } };
    expect(await login({ role: 'keyturn', jwt: 'not-a-jwt' })).toEqual(denied);
    // A hand-made JWT with the right claims: it parses, but TokenReview has never seen it.
    const [header, claims] = good.split('.');
    expect(await login({ role: 'keyturn', jwt: `${header}.${claims}.Zm9yZ2Vk` })).toEqual(denied);
    // Bound names and namespaces.
    const otherAccount = emu.mintServiceAccountToken({ namespace: 'platform', serviceAccount: 'intruder' });
    expect(await login({ role: 'keyturn', jwt: otherAccount })).toEqual({
      status: 403,
      body: { errors: ['service account name not authorized'] },
    });
    const otherNamespace = emu.mintServiceAccountToken({ namespace: 'default', serviceAccount: 'keyturn' });
    expect(await login({ role: 'keyturn', jwt: otherNamespace })).toEqual({
      status: 403,
      body: { errors: ['namespace not authorized'] },
    });
    // Globs, as bound_service_account_namespaces="team-*".
    emu.addKubernetesRole('teams', { serviceAccountNames: ['*'], serviceAccountNamespaces: ['team-*'] });
    const team = emu.mintServiceAccountToken({ namespace: 'team-a', serviceAccount: 'anything' });
    expect((await login({ role: 'teams', jwt: team })).status).toBe(200);
    expect((await login({ role: 'teams', jwt: otherNamespace })).status).toBe(403);
    // A revoked service-account token (its pod deleted) and an expired one.
    emu.revokeServiceAccountToken(good);
    expect(await login({ role: 'keyturn', jwt: good })).toEqual(denied);
    const expired = emu.mintServiceAccountToken({
      namespace: 'platform',
      serviceAccount: 'keyturn',
      ttlSeconds: -1,
    });
    expect(await login({ role: 'keyturn', jwt: expired })).toEqual({
      status: 403,
      body: { errors: ['invalid exp (expiration time) claim: token is expired'] },
    });
    // An audience on the role.
    emu.addKubernetesRole('aud', {
      serviceAccountNames: ['keyturn'],
      serviceAccountNamespaces: ['platform'],
      audience: 'vault',
    });
    const forVault = emu.mintServiceAccountToken({
      namespace: 'platform',
      serviceAccount: 'keyturn',
      audience: 'vault',
    });
    const fresh = emu.mintServiceAccountToken({ namespace: 'platform', serviceAccount: 'keyturn' });
    expect((await login({ role: 'aud', jwt: forVault })).status).toBe(200);
    expect((await login({ role: 'aud', jwt: fresh })).status).toBe(403);
    // A read of the login path is not a login.
    expect((await raw('GET', 'auth/kubernetes/login', { token: '' })).status).toBe(405);
  });

  it('Kubernetes roles live on their mount: another mount does not know them', async () => {
    emu.addKubernetesRole('keyturn', {
      serviceAccountNames: ['keyturn'],
      serviceAccountNamespaces: ['platform'],
      mount: 'k8s-prod',
    });
    const jwt = emu.mintServiceAccountToken({ namespace: 'platform', serviceAccount: 'keyturn' });
    const vault = vaultFactory({ endpoint: emu.url });
    const login = await vault.kubernetesLogin({ mount_point: 'k8s-prod', role: 'keyturn', jwt });
    expect(login.auth.metadata.role).toBe('keyturn');
    expect((await vault.tokenLookupSelf()).data.path).toBe('auth/k8s-prod/login');
    const elsewhere = await rejection(
      vaultFactory({ endpoint: emu.url }).kubernetesLogin({
        mount_point: 'kubernetes',
        role: 'keyturn',
        jwt,
      }),
    );
    expect(elsewhere.response).toEqual({
      statusCode: 400,
      body: { errors: ['invalid role name "keyturn"'] },
    });
    // A mount that no auth method is enabled at: the path needs a token like any other.
    const unmounted = await raw('POST', 'auth/nowhere/login', { token: '', body: { role: 'keyturn', jwt } });
    expect(unmounted).toEqual({ status: 403, body: { errors: [PERMISSION_DENIED] } });
  });

  it('restrictToken confines a token to path prefixes; lookup-self stays open', async () => {
    const token = emu.createToken({ ttlSeconds: 600 });
    emu.restrictToken(token, ['secret/data/team-a/', 'secret/metadata/team-a/']);
    const vault = client({ token });
    await vault.write('secret/data/team-a/db', { data: { a: 1 } });
    await vault.read('secret/metadata/team-a/db');
    const err = await rejection(vault.write('secret/data/team-b/db', { data: { a: 1 } }));
    expect(err.response).toEqual({ statusCode: 403, body: { errors: [PERMISSION_DENIED] } });
    expect((await vault.tokenLookupSelf()).data.id).toBe(token);
  });
});

describe('sys (ref B2)', () => {
  it('sealed: every request is 503 "Vault is sealed"; node-vault resolves sys/health with sealed true', async () => {
    const vault = client();
    await vault.write('secret/data/s', { data: { a: 1 } });
    emu.seal();
    const err = await rejection(vault.read('secret/data/s'));
    expect(err.message).toBe('Vault is sealed');
    expect(err.response).toEqual({ statusCode: 503, body: { errors: ['Vault is sealed'] } });
    expect((await rejection(vault.tokenLookupSelf())).response?.statusCode).toBe(503);
    const health = await vault.health(); // 503, yet resolved (ref B3)
    expect(health).toMatchObject({ initialized: true, sealed: true, standby: true });
    expect(health.cluster_id).toBeUndefined();
    expect((await fetch(`${emu.url}/v1/sys/health`)).status).toBe(503);
    expect((await fetch(`${emu.url}/v1/sys/health?sealedcode=200`)).status).toBe(200);
    emu.unseal();
    expect((await vault.read('secret/data/s')).data.data).toEqual({ a: 1 });
  });

  it('sys/health status codes and query overrides', async () => {
    const status = async (query = '') => (await fetch(`${emu.url}/v1/sys/health${query}`)).status;
    const res = await fetch(`${emu.url}/v1/sys/health`);
    expect(res.status).toBe(200);
    expect(Object.keys((await res.json()) as object)).toEqual(
      expect.arrayContaining([
        'initialized',
        'sealed',
        'standby',
        'performance_standby',
        'replication_performance_mode',
        'replication_dr_mode',
        'server_time_utc',
        'version',
        'cluster_name',
        'cluster_id',
      ]),
    );
    expect(await status('?activecode=204')).toBe(204);
    emu.setHealth('standby');
    expect(await status()).toBe(429);
    expect(await status('?standbyok=true')).toBe(200);
    expect(await status('?standbyok=true&activecode=299')).toBe(299);
    expect(await client().health({ standbyok: true })).toMatchObject({ standby: true, sealed: false });
    emu.setHealth('performance_standby');
    expect(await status()).toBe(473);
    expect(await status('?standbyok=true')).toBe(473);
    expect(await status('?perfstandbyok=true')).toBe(200);
    emu.setHealth('dr_secondary');
    expect(await status()).toBe(472);
    emu.setHealth('uninitialized');
    expect(await status()).toBe(501);
    expect(await status('?uninitcode=200')).toBe(200);
    emu.setHealth('active');
    expect(await status('?standbyok=maybe')).toBe(400);
    expect((await fetch(`${emu.url}/v1/sys/health`, { method: 'HEAD' })).status).toBe(200);
  });
});

describe('failNext', () => {
  it('fails the next matching requests with the documented bodies, then recovers', async () => {
    const vault = client();
    await vault.write('secret/data/f', { data: { a: 1 } });
    emu.failNext(2, 503, (method, path) => method === 'GET' && path.startsWith('secret/data/'));
    await vault.read('secret/metadata/f'); // does not match: untouched
    for (let i = 0; i < 2; i++) {
      const err = await rejection(vault.read('secret/data/f'));
      expect(err.response).toEqual({ statusCode: 503, body: { errors: ['Vault is sealed'] } });
    }
    expect((await vault.read('secret/data/f')).data.data).toEqual({ a: 1 });

    emu.failNext(1, 500);
    const internal = await rejection(vault.read('secret/data/f'));
    expect(internal.response).toEqual({ statusCode: 500, body: { errors: ['internal error'] } });
    emu.failNext(1, 403);
    expect((await rejection(vault.write('secret/data/f', { data: { a: 2 } }))).message).toBe(
      PERMISSION_DENIED,
    );
    expect((await vault.read('secret/data/f')).data.data).toEqual({ a: 1 }); // the refused write changed nothing

    // node-vault resolves sys/health even for an injected 500: the body has errors, not sealed (ref B3).
    emu.failNext(1, 500);
    expect(await vault.health()).toEqual({ errors: ['internal error'] });
    expect(emu.requests.at(-1)).toMatchObject({ method: 'GET', path: 'sys/health' });
  });
});

describe('namespaces', () => {
  it('X-Vault-Namespace gives each namespace its own data', async () => {
    const root = client();
    const ns1 = client({ namespace: 'ns1' });
    const ns2 = client({ namespace: 'ns2' });
    await root.write('secret/data/shared', { data: { where: 'root' } });
    await ns1.write('secret/data/shared', { data: { where: 'ns1' } });
    expect((await root.read('secret/data/shared')).data.data).toEqual({ where: 'root' });
    expect((await ns1.read('secret/data/shared')).data.data).toEqual({ where: 'ns1' });
    expect((await ns1.read('secret/metadata/shared')).data.current_version).toBe(1);
    expect((await rejection(ns2.read('secret/data/shared'))).response?.statusCode).toBe(404);
    expect((await rejection(ns2.list('secret/metadata/'))).response?.statusCode).toBe(404);
    expect(emu.requests.at(-1)).toMatchObject({ method: 'LIST', path: 'secret/metadata/', namespace: 'ns2' });
    expect(emu.requests.filter((r) => r.namespace === 'ns1')).toHaveLength(3);
  });

  it('with namespaces: false the header is ignored, as in Vault Community Edition', async () => {
    const plain = await startVaultEmulator({ namespaces: false, mounts: ['kv'] });
    try {
      const ns1 = vaultFactory({ endpoint: plain.url, token: plain.rootToken, namespace: 'ns1' });
      const root = vaultFactory({ endpoint: plain.url, token: plain.rootToken });
      await ns1.write('kv/data/x', { data: { a: 1 } });
      expect((await root.read('kv/data/x')).data.data).toEqual({ a: 1 });
      expect(plain.requests[0]?.namespace).toBe('ns1');
      expect((await rejection(root.read('secret/data/x'))).response?.statusCode).toBe(404); // only 'kv' is mounted
    } finally {
      await plain.close();
    }
  });
});
