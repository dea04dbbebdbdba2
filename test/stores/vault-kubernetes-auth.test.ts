// The Vault store with Kubernetes auth, against the Vault emulator (which also plays the Kubernetes API server that
// mints and reviews service-account tokens): login with the token file's JWT, renewal, login again when Vault
// forgets the token or renewal fails, a token file that the kubelet replaced, and clear refusals that never carry
// the JWT or the Vault token. A real Vault runs the cases that need no control over the server when it is set up
// for it (VAULT_ADDR, VAULT_K8S_ROLE, a token file: only inside a pod), and says why not otherwise.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { createLogger } from '../../src/logging/logger.ts';
import type { StoreSpec } from '../../src/registry/types.ts';
import { StoreRefusedError } from '../../src/stores/types.ts';
import { VaultStore } from '../../src/stores/vault-store.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault.ts';
import { quietLogger, realVaultKubernetesLogin, realVaultKubernetesSkipReason } from './backends.ts';

const unique = () => Math.random().toString(36).slice(2, 10);
const doc = (password: string) => ({ engine: 'postgres', host: 'h', port: 5432, username: 'u', password });
const ref = (): { spec: StoreSpec; name: string } => ({
  spec: { type: 'vault', mount: 'secret', path: `k8s-auth/${unique()}` },
  name: 'unused',
});
const versionId = () => `import-${unique()}${unique()}${unique()}`;

async function refusal(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the call to fail');
}

describe('Vault store, Kubernetes auth (emulator)', () => {
  let emu: VaultEmulator;
  let dir: string;
  let tokenPath: string;
  let logs: string[];
  const stores: VaultStore[] = [];
  const SA = { namespace: 'keyturn', serviceAccount: 'keyturn' };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keyturn-k8s-auth-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));
  beforeEach(async () => {
    emu = await startVaultEmulator();
    tokenPath = join(dir, `token-${unique()}`);
    logs = [];
  });
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((s) => s.close()));
    await emu.close();
  });

  const addRole = (options: { ttl?: number; mount?: string } = {}) =>
    emu.addKubernetesRole('keyturn', {
      serviceAccountNames: ['keyturn'],
      serviceAccountNamespaces: ['keyturn'],
      tokenTtlSeconds: options.ttl ?? 3600,
      ...(options.mount ? { mount: options.mount } : {}),
    });
  const writeToken = async (jwt: string) => writeFile(tokenPath, `${jwt}\n`, { mode: 0o600 });
  const store = (options: { mount?: string; path?: string } = {}) => {
    const s = new VaultStore(
      {
        address: emu.url,
        auth: {
          method: 'kubernetes',
          role: 'keyturn',
          tokenPath: options.path ?? tokenPath,
          mount: options.mount ?? 'kubernetes',
        },
        pendingPrefix: 'keyturn-pending',
        timeoutMs: 5000,
      },
      createLogger({
        level: 'debug',
        format: 'json',
        destination: new Writable({
          write: (chunk, _e, done) => {
            logs.push(String(chunk));
            done();
          },
        }),
      }),
    );
    stores.push(s);
    return s;
  };
  const logins = (mount = 'kubernetes') => emu.requests.filter((r) => r.path === `auth/${mount}/login`);

  it('logs in with {role, jwt} from the token file on its mount, and works with that token', async () => {
    addRole({ mount: 'k8s-prod' });
    const jwt = emu.mintServiceAccountToken(SA);
    await writeToken(jwt);
    const s = store({ mount: 'k8s-prod' });
    const r = ref();
    await s.putCurrent(r, versionId(), doc('k8s-password-1'));
    expect((await s.read(r, { stage: 'current' }))?.value.password).toBe('k8s-password-1');
    expect(logins('k8s-prod').map((l) => [l.method, l.body])).toEqual([['POST', { role: 'keyturn', jwt }]]);
  });

  it('renews its token before the TTL runs out, and logs in again when a renewal is refused', async () => {
    addRole({ ttl: 2 }); // renewal at two thirds of the TTL
    await writeToken(emu.mintServiceAccountToken(SA));
    const s = store();
    const r = ref();
    await s.putCurrent(r, versionId(), doc('renewed-password-1'));
    const renewals = () => emu.requests.filter((q) => q.path === 'auth/token/renew-self').length;
    await vi.waitFor(() => expect(renewals()).toBeGreaterThanOrEqual(1), { timeout: 10_000, interval: 100 });
    expect(logins()).toHaveLength(1);
    // The next renewal is refused: the store logs in again instead of letting the token expire.
    emu.failNext(1, 403, (_m, path) => path === 'auth/token/renew-self');
    await vi.waitFor(() => expect(logins()).toHaveLength(2), { timeout: 10_000, interval: 100 });
    expect((await s.read(r, { stage: 'current' }))?.value.password).toBe('renewed-password-1');
  });

  it('logs in again, with the token file read anew, when Vault forgets its token (403)', async () => {
    addRole();
    const first = emu.mintServiceAccountToken(SA);
    await writeToken(first);
    const s = store();
    const r = ref();
    await s.putCurrent(r, versionId(), doc('relogin-password-1'));
    // The kubelet rotates the projected token; the old one stops being valid; Vault's tokens are revoked.
    const second = emu.mintServiceAccountToken(SA);
    await writeToken(second);
    emu.revokeServiceAccountToken(first);
    expect(emu.revokeTokensFrom('auth/kubernetes/login')).toBe(1);
    expect((await s.read(r, { stage: 'current' }))?.value.password).toBe('relogin-password-1');
    expect(logins().map((l) => (l.body as { jwt: string }).jwt)).toEqual([first, second]);
  });

  it('a JWT the role does not accept is a clear refusal that names the role and never the JWT', async () => {
    addRole();
    const jwt = emu.mintServiceAccountToken({ namespace: 'keyturn', serviceAccount: 'someone-else' });
    await writeToken(jwt);
    const err = await refusal(store().putCurrent(ref(), versionId(), doc('never-written-1')));
    expect(err).toBeInstanceOf(StoreRefusedError);
    expect(err.message).toBe(
      `Vault refused logging in with Kubernetes auth (role "keyturn" at auth/kubernetes) (403: service account name not authorized): check that the role exists on that mount and is bound to this pod's service account and namespace (bound_service_account_names, bound_service_account_namespaces), and that ${tokenPath} holds that service account's token`,
    );
    // A JWT that TokenReview refuses (its pod deleted) gives Vault's bare permission denied.
    emu.revokeServiceAccountToken(jwt);
    const bound = emu.mintServiceAccountToken(SA);
    emu.revokeServiceAccountToken(bound);
    await writeToken(bound);
    const denied = await refusal(store().putCurrent(ref(), versionId(), doc('never-written-2')));
    expect(denied.message).toMatch(
      /^Vault refused logging in with Kubernetes auth .* \(403: permission denied\): check/,
    );
    for (const message of [err.message, denied.message, ...logs]) {
      expect(message).not.toContain(jwt.split('.')[1]);
      expect(message).not.toContain(bound.split('.')[1]);
    }
  });

  it('a role that does not exist (400 from Vault) is refused with the same advice', async () => {
    await writeToken(emu.mintServiceAccountToken(SA));
    const err = await refusal(store().putCurrent(ref(), versionId(), doc('never-written-3')));
    expect(err).toBeInstanceOf(StoreRefusedError);
    expect(err.message).toMatch(
      /^Vault refused logging in with Kubernetes auth \(role "keyturn" at auth\/kubernetes\) \(400: invalid role name "keyturn"\): check that the role exists/,
    );
  });

  it('an unreadable or empty token file names the path and says what to do', async () => {
    addRole();
    const missing = join(dir, 'no-such-token');
    const err = await refusal(
      store({ path: missing }).putCurrent(ref(), versionId(), doc('never-written-4')),
    );
    expect(err).toBeInstanceOf(StoreRefusedError);
    expect(err.message).toBe(
      `cannot read the Kubernetes service-account token at ${missing} (ENOENT) for Vault's Kubernetes auth: mount the service account's token there (automountServiceAccountToken: true, or a projected serviceAccountToken volume) or point VAULT_K8S_TOKEN_PATH at it`,
    );
    await writeFile(tokenPath, '\n');
    const empty = await refusal(store().putCurrent(ref(), versionId(), doc('never-written-5')));
    expect(empty.message).toBe(
      `the Kubernetes service-account token file ${tokenPath} is empty: mount the service account's token there or point VAULT_K8S_TOKEN_PATH at it`,
    );
    expect(logins()).toHaveLength(0);
  });

  it('a re-login that fails during renewal is logged without the JWT or the Vault token', async () => {
    addRole({ ttl: 2 });
    const jwt = emu.mintServiceAccountToken(SA);
    await writeToken(jwt);
    const s = store();
    await s.putCurrent(ref(), versionId(), doc('renewal-log-password'));
    emu.revokeServiceAccountToken(jwt); // the renewal's re-login will be refused
    emu.failNext(1, 403, (_m, path) => path === 'auth/token/renew-self');
    await vi.waitFor(() => expect(logs.join('')).toContain('Vault re-login failed'), {
      timeout: 10_000,
      interval: 100,
    });
    const text = logs.join('');
    expect(text).toContain('403: permission denied');
    expect(text).not.toContain(jwt.split('.')[1]);
    expect(text).not.toMatch(/hvs\.[A-Za-z0-9]{24}/);
  });
});

const realSkip = await realVaultKubernetesSkipReason();
if (realSkip) console.log(`Vault Kubernetes auth, real Vault: skipped: ${realSkip}`);

describe.skipIf(Boolean(realSkip))('Vault store, Kubernetes auth (real Vault)', () => {
  it('logs in with the pod token and writes and reads; a JWT Vault cannot verify is a clear refusal', async () => {
    const { auth } = realVaultKubernetesLogin();
    const settings = { address: process.env.VAULT_ADDR!, pendingPrefix: 'keyturn-pending', timeoutMs: 5000 };
    const good = new VaultStore({ ...settings, auth }, quietLogger());
    const dir = await mkdtemp(join(tmpdir(), 'keyturn-k8s-real-'));
    try {
      const r = {
        spec: { type: 'vault' as const, mount: 'secret', path: `keyturn-test/${unique()}` },
        name: '',
      };
      await good.putCurrent(r, versionId(), doc('real-k8s-password'));
      expect((await good.read(r, { stage: 'current' }))?.value.password).toBe('real-k8s-password');
      await good.remove(r).catch(() => {}); // the role's policy may not allow delete
      const forged = join(dir, 'token');
      await writeFile(forged, 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJub2JvZHkifQ.c2lnbmF0dXJl');
      const bad = new VaultStore({ ...settings, auth: { ...auth, tokenPath: forged } }, quietLogger());
      const err = await refusal(bad.read(r, { stage: 'current' }));
      expect(err).toBeInstanceOf(StoreRefusedError);
      expect(err.message).toMatch(
        /^Vault refused logging in with Kubernetes auth .*: check that the role exists/,
      );
      await bad.close();
    } finally {
      await good.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
