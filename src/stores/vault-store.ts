// HashiCorp Vault, KV version 2, on node-vault.
//
// Services read the secret's own path (<mount>/data/<path>) directly, so its latest version must always be a
// working credential: the pending secret is kept where they do not look, at a sibling path under Keyturn's
// prefix (<mount>/data/<pendingPrefix>/<path>), and the main path is written only when a rotation finishes.
// Which KV versions are current and previous is recorded in the main path's custom_metadata
// (keyturn_current / keyturn_previous = "<kv version>:<Keyturn version id>"), which writes no version.
// Every data write carries check-and-set (options.cas), so two writers can never silently overwrite each other;
// a cas conflict is re-read and retried, and a promote that finds its value already written adopts it instead of
// writing it twice.
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import vaultFactory from 'node-vault';
import type { VaultAuth } from '../config/config.ts';
import { KeyProviderError } from '../crypto/envelope.ts';
import type { VaultRequester } from '../keys/index.ts';
import type { Logger } from '../logging/logger.ts';
import {
  type SecretDocument,
  type SecretRef,
  type SecretStore,
  type SecretVersion,
  type Stage,
  StoreConflictError,
  StoreRefusedError,
  StoreUnavailableError,
  type VersionSelector,
} from './types.ts';

export type { VaultAuth };

/**
 * The store's requests as the transit key provider takes them: an unavailable Vault and a refused token become the
 * provider's errors; any other refusal keeps Vault's status and detail for the provider to read.
 */
export function vaultRequester(store: VaultStore): VaultRequester {
  return async <T>(
    action: string,
    request: { method: 'GET' | 'POST'; path: string; json?: Record<string, unknown> },
  ): Promise<T> => {
    try {
      return await store.request<T>(action, request);
    } catch (err) {
      if (err instanceof StoreUnavailableError)
        throw new KeyProviderError('unavailable', err.message, { cause: err });
      if (err instanceof StoreRefusedError)
        throw new KeyProviderError('refused', err.message, { cause: err });
      throw err;
    }
  };
}

export interface VaultSettings {
  address: string;
  /** A fixed token, or a login method (AppRole, Kubernetes) that Keyturn repeats whenever Vault forgets its token. */
  auth: VaultAuth;
  namespace?: string;
  /** Folder under each mount where pending secrets wait. */
  pendingPrefix: string;
  timeoutMs: number;
}

type VaultClient = ReturnType<typeof vaultFactory>;
interface VaultApiError {
  message: string;
  response?: { statusCode: number; body?: { errors?: string[] } };
}
interface KvRead {
  data: Record<string, unknown> | null;
  metadata: { version: number; created_time: string; deletion_time: string; destroyed: boolean };
}
interface KvMetadata {
  current_version: number;
  oldest_version: number;
  custom_metadata: Record<string, string> | null;
  versions: Record<string, { created_time: string; deletion_time: string; destroyed: boolean }>;
}
interface PendingData {
  version: string;
  secret: SecretDocument;
}

const CURRENT = 'keyturn_current';
const PREVIOUS = 'keyturn_previous';
const CAS_RETRIES = 5;

/** Vault refused a write's check-and-set: someone wrote in between. Read again and retry (casRetry). */
class CasConflictError extends StoreConflictError {}

/**
 * Runs `turn` (read, decide, write with check-and-set) until no check-and-set conflict interrupts it, at most
 * CAS_RETRIES times with a growing pause; each turn re-reads, so it sees the other writer's value and may find its
 * work done. Every other error ends it at once.
 */
async function casRetry<T>(where: string, turn: () => Promise<T>): Promise<T> {
  for (let attempt = 0; attempt < CAS_RETRIES; attempt++) {
    try {
      return await turn();
    } catch (err) {
      if (!(err instanceof CasConflictError)) throw err;
      await sleep(20 * (attempt + 1));
    }
  }
  throw new StoreConflictError(`Vault kept changing ${where} under Keyturn; another writer is active`);
}

const statusOf = (err: unknown): number | undefined => (err as VaultApiError).response?.statusCode;

function parseMarker(marker: string | undefined): { kv: number; id: string } | undefined {
  const m = marker ? /^(\d+):(.+)$/.exec(marker) : null;
  return m ? { kv: Number(m[1]), id: m[2]! } : undefined;
}

/**
 * The service-account token for Kubernetes auth. Its content is a credential: it goes into the login request and
 * nowhere else, and an error names the file, never what is in it.
 */
async function readServiceAccountToken(path: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new StoreRefusedError(
      `cannot read the Kubernetes service-account token at ${path} (${code}) for Vault's Kubernetes auth: mount the service account's token there (automountServiceAccountToken: true, or a projected serviceAccountToken volume) or point VAULT_K8S_TOKEN_PATH at it`,
    );
  }
  const jwt = text.trim();
  if (jwt === '') {
    throw new StoreRefusedError(
      `the Kubernetes service-account token file ${path} is empty: mount the service account's token there or point VAULT_K8S_TOKEN_PATH at it`,
    );
  }
  return jwt;
}

function sameDocument(a: unknown, b: SecretDocument): boolean {
  if (!a || typeof a !== 'object') return false;
  const x = a as Record<string, unknown>;
  return Object.entries(b).every(([k, v]) => x[k] === v) && Object.keys(x).length === Object.keys(b).length;
}

export class VaultStore implements SecretStore {
  readonly type = 'vault' as const;
  readonly #settings: VaultSettings;
  readonly #log: Logger;
  readonly #client: VaultClient;
  #renewal: NodeJS.Timeout | undefined;
  #login: Promise<void> | undefined;

  constructor(settings: VaultSettings, logger: Logger) {
    this.#settings = settings;
    this.#log = logger.child({ component: 'vault-store' });
    this.#client = vaultFactory({
      apiVersion: 'v1',
      endpoint: settings.address,
      ...(settings.auth.method === 'token' ? { token: settings.auth.token } : {}),
      ...(settings.namespace ? { namespace: settings.namespace } : {}),
      requestOptions: { timeout: settings.timeoutMs },
    });
  }

  // Authentication
  //
  // One path for every method: a login method (AppRole, Kubernetes) posts its credentials to auth/<mount>/login and
  // takes the client token; a fixed token is looked up. Either way the renewal is planned from the TTL, and a login
  // method logs in again when renewal fails or Vault answers 403 to a token it no longer knows.

  /** Logs in (AppRole, Kubernetes) or checks the token, and plans its renewal. Called before the first request. */
  async #ensureAuth(force = false): Promise<void> {
    if (this.#login && !force) return this.#login;
    this.#login = this.#authenticate().catch((err) => {
      this.#login = undefined;
      throw err;
    });
    return this.#login;
  }

  /** True when Keyturn can get a new token by itself (a login method rather than a fixed token). */
  get #logsIn(): boolean {
    return this.#settings.auth.method !== 'token';
  }

  async #authenticate(): Promise<void> {
    const { auth } = this.#settings;
    let ttl: number;
    let renewable: boolean;
    if (auth.method === 'token') {
      const res = await this.#raw('looking up the Vault token', () => this.#client.tokenLookupSelf());
      ttl = Number(res.data.ttl ?? 0);
      renewable = Boolean(res.data.renewable);
    } else {
      const res = await this.#logIn(auth);
      this.#client.token = res.auth.client_token;
      ttl = Number(res.auth.lease_duration ?? 0);
      renewable = Boolean(res.auth.renewable);
    }
    this.#planRenewal(ttl, renewable);
  }

  /** POST auth/<mount>/login with the method's credentials; a refusal says what to check, without the credentials. */
  async #logIn(auth: Exclude<VaultAuth, { method: 'token' }>): Promise<{
    auth: { client_token: string; lease_duration?: number; renewable?: boolean };
  }> {
    let body: Record<string, string>;
    let what: string;
    let hint: string;
    let secret: string;
    if (auth.method === 'approle') {
      body = { role_id: auth.roleId, secret_id: auth.secretId };
      secret = auth.secretId;
      what = `logging in with AppRole at auth/${auth.mount}`;
      hint = 'check VAULT_ROLE_ID and VAULT_SECRET_ID (a secret ID may have expired or run out of uses)';
    } else {
      // Re-read at every login: the kubelet replaces a projected service-account token before it expires.
      const jwt = await readServiceAccountToken(auth.tokenPath);
      body = { role: auth.role, jwt };
      secret = jwt;
      what = `logging in with Kubernetes auth (role "${auth.role}" at auth/${auth.mount})`;
      hint = `check that the role exists on that mount and is bound to this pod's service account and namespace (bound_service_account_names, bound_service_account_namespaces), and that ${auth.tokenPath} holds that service account's token`;
    }
    try {
      return await this.#raw(what, () =>
        this.#client.request({ path: `/auth/${auth.mount}/login`, method: 'POST', json: body }),
      );
    } catch (err) {
      if (err instanceof StoreUnavailableError) throw err;
      const status = (err as { status?: number }).status;
      // Vault's multierror form ("1 error occurred: * permission denied") reads better as its one message.
      let detail = ((err as { detail?: string }).detail ?? '')
        .replace(/^\d+ errors? occurred:\s*/, '')
        .replace(/^\*\s*/, '');
      if (secret) detail = detail.split(secret).join('[redacted]');
      throw new StoreRefusedError(
        `Vault refused ${what} (${status ?? 'error'}${detail ? `: ${detail}` : ''}): ${hint}`,
      );
    }
  }

  /** Renews at two thirds of the TTL; when renewal fails, logs in again (AppRole, Kubernetes) or reports the expiry ahead. */
  #planRenewal(ttlSeconds: number, renewable: boolean): void {
    clearTimeout(this.#renewal);
    if (ttlSeconds <= 0) return; // a token that does not expire
    this.#renewal = setTimeout(
      () => {
        const renew = renewable
          ? this.#raw('renewing the Vault token', () => this.#client.tokenRenewSelf()).then((res) =>
              this.#planRenewal(Number(res.auth.lease_duration ?? 0), Boolean(res.auth.renewable)),
            )
          : Promise.reject(new Error('the token is not renewable'));
        renew.catch((err) => {
          if (this.#logsIn) {
            this.#ensureAuth(true).catch((e) =>
              this.#log.error({ err: { message: e.message } }, 'Vault re-login failed'),
            );
          } else {
            this.#log.error(
              { err: { message: (err as Error).message } },
              'the Vault token could not be renewed and will expire: give Keyturn a renewable token, AppRole or Kubernetes auth',
            );
          }
        });
      },
      Math.max(1000, (ttlSeconds * 1000 * 2) / 3),
    );
    this.#renewal.unref();
  }

  /** One Vault call with error mapping; a token Vault no longer knows is replaced once by logging in again. */
  async #call<T>(action: string, fn: () => Promise<T>): Promise<T> {
    await this.#ensureAuth();
    try {
      return await this.#raw(action, fn);
    } catch (err) {
      if (err instanceof StoreRefusedError && this.#logsIn) {
        await this.#ensureAuth(true);
        return this.#raw(action, fn);
      }
      throw err;
    }
  }

  async #raw<T>(action: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const status = statusOf(err);
      const detail = ((err as VaultApiError).response?.body?.errors ?? [])
        .join('; ')
        .replace(/\s+/g, ' ')
        .trim();
      if (status === 403) {
        throw Object.assign(
          new StoreRefusedError(
            `Vault denied ${action} (403 permission denied): the token's policy must allow it (see the README's Vault policy)`,
          ),
          { status, detail },
        );
      }
      if (status === 503 || status === 429 || status === 500 || status === 502 || status === undefined) {
        const why =
          status === 503
            ? 'Vault is sealed or unavailable'
            : status
              ? `Vault answered ${status}`
              : 'Vault did not answer';
        throw new StoreUnavailableError(
          `${why} while ${action}${detail ? ` (${detail})` : ''}; the rotation resumes when it is back`,
          {
            cause: err,
          },
        );
      }
      if (status === 400 && /check-and-set/.test(detail))
        throw new CasConflictError(`Vault check-and-set conflict while ${action}`);
      throw Object.assign(new Error(`Vault refused ${action} (${status}${detail ? `: ${detail}` : ''})`), {
        status,
        detail,
      });
    }
  }

  /**
   * One request to this Vault with Keyturn's authentication, for the transit key provider (src/keys/): the same
   * login, renewal and re-login as the store's own requests, one place that holds the token.
   */
  async request<T>(
    action: string,
    request: { method: 'GET' | 'POST'; path: string; json?: Record<string, unknown> },
  ): Promise<T> {
    return this.#call(action, () =>
      this.#client.request({
        path: `/${request.path}`,
        method: request.method,
        ...(request.json ? { json: request.json } : {}),
      }),
    );
  }

  // Paths

  #paths(ref: SecretRef) {
    if (ref.spec.type !== 'vault') throw new Error(`VaultStore given a ${ref.spec.type} reference`);
    const { mount, path } = ref.spec;
    return {
      data: `${mount}/data/${path}`,
      metadata: `${mount}/metadata/${path}`,
      pendingData: `${mount}/data/${this.#settings.pendingPrefix}/${path}`,
      pendingMetadata: `${mount}/metadata/${this.#settings.pendingPrefix}/${path}`,
      where: `${mount}/${path}`,
    };
  }

  async #get<T>(action: string, path: string): Promise<T | null> {
    try {
      return await this.#call(action, () => this.#client.read(path));
    } catch (err) {
      // 404: no such key or version (a soft-deleted or destroyed version also answers 404).
      if ((err as { status?: number }).status === 404) return null;
      throw err;
    }
  }

  async #metadata(ref: SecretRef): Promise<KvMetadata | null> {
    const p = this.#paths(ref);
    const res = await this.#get<{ data: KvMetadata }>(`reading the metadata of ${p.where}`, p.metadata);
    return res?.data ?? null;
  }

  async #pending(ref: SecretRef): Promise<{ value: PendingData; kv: number; createdAt: string } | null> {
    const p = this.#paths(ref);
    const res = await this.#get<{ data: KvRead }>(`reading the pending secret of ${p.where}`, p.pendingData);
    if (!res?.data?.data) return null;
    return {
      value: res.data.data as unknown as PendingData,
      kv: res.data.metadata.version,
      createdAt: res.data.metadata.created_time,
    };
  }

  async #readKv(ref: SecretRef, kv: number): Promise<{ value: SecretDocument; createdAt: string } | null> {
    const p = this.#paths(ref);
    const res = await this.#get<{ data: KvRead }>(
      `reading version ${kv} of ${p.where}`,
      `${p.data}?version=${kv}`,
    );
    if (!res?.data?.data) return null;
    return { value: res.data.data as unknown as SecretDocument, createdAt: res.data.metadata.created_time };
  }

  /** Current and previous markers; a secret Keyturn never wrote has its latest version as current. */
  #markers(meta: KvMetadata | null) {
    const custom = meta?.custom_metadata ?? {};
    const current =
      parseMarker(custom[CURRENT]) ??
      (meta && meta.current_version > 0
        ? { kv: meta.current_version, id: `vault-v${meta.current_version}` }
        : undefined);
    return { current, previous: parseMarker(custom[PREVIOUS]) };
  }

  // SecretStore

  async describe(ref: SecretRef): Promise<Record<string, Stage[]> | null> {
    const [meta, pending] = await Promise.all([this.#metadata(ref), this.#pending(ref)]);
    if (!meta && !pending) return null;
    const out: Record<string, Stage[]> = {};
    const add = (id: string, stage: Stage) => {
      out[id] = [...(out[id] ?? []), stage];
    };
    const { current, previous } = this.#markers(meta);
    if (current) add(current.id, 'current');
    if (previous) add(previous.id, 'previous');
    if (pending && pending.value.version !== current?.id) add(pending.value.version, 'pending');
    return out;
  }

  async read(ref: SecretRef, selector: VersionSelector): Promise<SecretVersion | null> {
    const meta = await this.#metadata(ref);
    const { current, previous } = this.#markers(meta);
    const wanted = 'stage' in selector ? selector.stage : undefined;
    const id = 'versionId' in selector ? selector.versionId : undefined;
    const fromKv = async (marker: { kv: number; id: string }, stages: Stage[]) => {
      const found = await this.#readKv(ref, marker.kv);
      return found ? { versionId: marker.id, stages, createdAt: found.createdAt, value: found.value } : null;
    };
    if (current && (wanted === 'current' || id === current.id)) return fromKv(current, ['current']);
    if (previous && (wanted === 'previous' || id === previous.id)) return fromKv(previous, ['previous']);
    if (wanted === 'pending' || id !== undefined) {
      const pending = await this.#pending(ref);
      if (
        pending &&
        (wanted === 'pending' || pending.value.version === id) &&
        pending.value.version !== current?.id
      ) {
        return {
          versionId: pending.value.version,
          stages: ['pending'],
          createdAt: pending.createdAt,
          value: pending.value.secret,
        };
      }
    }
    return null;
  }

  async putPending(ref: SecretRef, token: string, value: SecretDocument): Promise<{ created: boolean }> {
    const p = this.#paths(ref);
    return casRetry(p.pendingData, async () => {
      const [pending, meta] = await Promise.all([this.#pending(ref), this.#metadata(ref)]);
      if (pending?.value.version === token || this.#markers(meta).current?.id === token)
        return { created: false };
      // Check-and-set against the version this very read saw: if another writer puts its pending secret in
      // between, ours is refused and the next turn finds theirs. A leftover of another rotation is replaced.
      // (The pending key is removed whole when a rotation ends, so an absent one is at version 0.)
      const cas = pending?.kv ?? 0;
      await this.#call(`writing the pending secret of ${p.where}`, () =>
        this.#client.write(p.pendingData, {
          options: { cas },
          data: { version: token, secret: value } satisfies PendingData,
        }),
      );
      return { created: true };
    });
  }

  async promote(ref: SecretRef, token: string): Promise<{ promoted: boolean; previousVersionId?: string }> {
    const p = this.#paths(ref);
    return casRetry(p.where, async () => {
      const [meta, pending] = await Promise.all([this.#metadata(ref), this.#pending(ref)]);
      const { current } = this.#markers(meta);
      if (current?.id === token) {
        if (pending?.value.version === token) await this.#deletePending(ref);
        return { promoted: false };
      }
      if (!pending || pending.value.version !== token) {
        throw new StoreConflictError(`NOVERSION: no pending version ${token} at ${p.where}`);
      }
      const kv = await this.#writeMain(ref, meta, pending.value.secret);
      await this.#mark(ref, meta, { kv, id: token }, current);
      await this.#deletePending(ref);
      return current ? { promoted: true, previousVersionId: current.id } : { promoted: true };
    });
  }

  /**
   * Writes the value as the main path's next version. Check-and-set names the version Keyturn made current, so a
   * version written by anyone else since is a conflict, not something to overwrite. If the latest version already
   * holds exactly this value (a promote that died after writing it), it is adopted: never a doubled version.
   */
  async #writeMain(ref: SecretRef, meta: KvMetadata | null, value: SecretDocument): Promise<number> {
    const p = this.#paths(ref);
    const latest = meta?.current_version ?? 0;
    if (latest > 0) {
      const existing = await this.#readKv(ref, latest);
      if (existing && sameDocument(existing.value, value)) return latest;
    }
    const expected = this.#markers(meta).current?.kv ?? latest;
    if (latest !== expected) {
      throw new StoreRefusedError(
        `the secret at ${p.where} was changed outside Keyturn: KV version ${latest} was written after version ${expected}, which Keyturn made current. Find out who wrote it, then import the credential again`,
      );
    }
    const res = await this.#call(`writing ${p.where}`, () =>
      this.#client.write(p.data, { options: { cas: latest }, data: value }),
    );
    return Number(res.data.version);
  }

  async #mark(
    ref: SecretRef,
    meta: KvMetadata | null,
    current: { kv: number; id: string },
    previous: { kv: number; id: string } | undefined,
  ): Promise<void> {
    const p = this.#paths(ref);
    // custom_metadata is replaced whole: keep what the team set there.
    const custom: Record<string, string> = {
      ...(meta?.custom_metadata ?? {}),
      [CURRENT]: `${current.kv}:${current.id}`,
    };
    if (previous) custom[PREVIOUS] = `${previous.kv}:${previous.id}`;
    else delete custom[PREVIOUS];
    await this.#call(`recording the current version of ${p.where} in its custom_metadata`, () =>
      this.#client.write(p.metadata, { custom_metadata: custom }),
    );
  }

  async #deletePending(ref: SecretRef): Promise<void> {
    const p = this.#paths(ref);
    try {
      await this.#call(`removing the pending secret of ${p.where}`, () =>
        this.#client.delete(p.pendingMetadata),
      );
    } catch (err) {
      if ((err as { status?: number }).status !== 404) throw err;
    }
  }

  async discardPending(ref: SecretRef, token: string): Promise<void> {
    const pending = await this.#pending(ref);
    if (pending?.value.version === token) await this.#deletePending(ref);
  }

  async putCurrent(ref: SecretRef, token: string, value: SecretDocument): Promise<void> {
    await casRetry(this.#paths(ref).where, async () => {
      const meta = await this.#metadata(ref);
      const { current } = this.#markers(meta);
      if (current?.id === token) return;
      const kv = await this.#writeMain(ref, meta, value);
      await this.#mark(ref, meta, { kv, id: token }, current);
    });
  }

  async remove(ref: SecretRef): Promise<void> {
    const p = this.#paths(ref);
    for (const path of [p.metadata, p.pendingMetadata]) {
      try {
        await this.#call(`removing ${path}`, () => this.#client.delete(path));
      } catch (err) {
        if ((err as { status?: number }).status !== 404) throw err;
      }
    }
  }

  async ping(): Promise<void> {
    // node-vault resolves sys/health with the body even on 429 and 503.
    const health = await this.#raw('checking Vault health', () => this.#client.health({ standbyok: true }));
    // node-vault resolves sys/health whatever the status: only an explicit unsealed, initialized answer is ready.
    if (health?.sealed !== false || health?.initialized !== true) {
      throw new StoreUnavailableError(
        health?.sealed ? 'Vault is sealed' : 'Vault did not report itself healthy',
      );
    }
    await this.#ensureAuth();
  }

  async close(): Promise<void> {
    clearTimeout(this.#renewal);
  }
}
