/**
 * HashiCorp Vault emulator for tests: the KV version 2 engine plus the sys/auth endpoints Keyturn uses, served by
 * node:http on 127.0.0.1. No Vault server exists here, so this is the fixture the Vault store is tested against.
 *
 * Wire contract: ../shared/reference/secret-store-protocols.md, cited below as "ref B1" (KV v2), "ref B2" (sys and
 * auth) and "ref B3" (node-vault). Where the reference is silent, the behaviour follows
 * hashicorp/vault-plugin-secrets-kv (path_data.go, path_metadata.go, path_delete.go, path_destroy.go,
 * path_config.go, AddVersion) and Vault's token store, cited as "kv plugin" / "vault".
 *
 * Kubernetes auth (auth/<mount>/login, after hashicorp/vault-plugin-auth-kubernetes path_login.go): the emulator
 * cannot verify a JWT signed by a real Kubernetes API server, so it plays that server too. `mintServiceAccountToken`
 * issues a projected service-account JWT (RS256 header, projected-token claims, a random signature) and remembers
 * it; the login then does what Vault does without `pem_keys`: it parses the JWT without checking the signature,
 * checks exp and the role's audience, the role's bound service-account names and namespaces (globs, "*" for any),
 * and finally asks "Kubernetes" (TokenReview) whether the JWT is genuine, which here means: minted by this
 * emulator, not revoked with `revokeServiceAccountToken`, not expired. A test therefore chooses which JWTs a role
 * accepts through the role's bindings and the tokens it mints or revokes; a hand-made JWT with the right claims is
 * refused as TokenReview would refuse it.
 *
 * Modelled: one token store, AppRole and Kubernetes role set for the whole server; data, mount config and metadata per namespace
 * (X-Vault-Namespace) and per mount. Not modelled: leases, response wrapping, the namespace-as-path-prefix form
 * (/v1/ns1/secret/...), KV v1 mounts, sys/mounts, sys/policy (policies are set with `setPolicy`), policy
 * parameters (allowed_parameters, denied_parameters, required_parameters, min/max_wrapping_ttl).
 *
 * ACL (vault: acl.go, policy.go): `setPolicy(name, {path: {...}})` takes a policy in Vault's JSON form. Once any
 * policy is set (or the emulator starts with `acl: true`), every request with a token that is not root is checked
 * against the token's policies as Vault does, on KV and transit paths alike: exact paths first, then the glob
 * (`*` suffix) and segment-wildcard (`+`) rules by Vault's priority order, capabilities of equal paths in several
 * policies merged, `deny` winning; a policy name that was never set grants nothing. The capability a request
 * needs is read, list, delete, patch, or for POST/PUT create or update, decided by Vault's existence checks
 * (KV data/ and metadata/ need create for a new key; transit encrypt/<name> needs create for an unknown key,
 * which is what lets it upsert). Missing capability → 403 permission denied. Before any policy is set the ACL is
 * off and any live token may do anything (what the older tests rely on), so a test of authorization sets one.
 * restrictToken still narrows a token further. The token self paths stay open (Vault's default policy).
 *
 * Transit (./vault-transit.ts, which lists what it models): mounted at each of `transitMounts` (default
 * ['transit']), per namespace. Plaintext in a transit request body is redacted in `requests`; `transitCallCount`
 * counts the requests that reached each transit endpoint, refused and failed ones included.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { createTransitEngine, type TransitOp } from './vault-transit.ts';

export type HealthState = 'active' | 'standby' | 'performance_standby' | 'dr_secondary' | 'uninitialized';

export interface RecordedRequest {
  /** HTTP method as sent: 'LIST' for the LIST verb, 'GET' for `GET ?list=true`. */
  method: string;
  /** Path after /v1/, without the query string: 'secret/data/app/db'. */
  path: string;
  /** The X-Vault-Namespace header, when sent. */
  namespace?: string;
  /** Parsed JSON body (or the raw text when it was not JSON), when there was one. */
  body?: unknown;
  /** Query parameters, when there were any ({ version: '2' }, { list: 'true' }). */
  query?: Record<string, string>;
}

export interface VaultEmulator {
  url: string; // http://127.0.0.1:<port>
  rootToken: string; // a valid token with every policy
  close(): Promise<void>;
  /** Makes the next `count` requests matching `match` (default: any) fail with this status; 403 → {"errors":["1 error occurred:\n\t* permission denied\n\n"]}, 503 → {"errors":["Vault is sealed"]}, 500 → {"errors":["internal error"]}. */
  failNext(count: number, status: 403 | 500 | 503, match?: (method: string, path: string) => boolean): void;
  seal(): void;
  unseal(): void; // while sealed: every request 503 {"errors":["Vault is sealed"]}, sys/health 503 with sealed:true
  /** What sys/health reports (default 'active'); 'uninitialized' also answers every other request as sealed. */
  setHealth(state: HealthState): void;
  /** ttlSeconds 0 makes a token that never expires (and cannot be renewed, like the root token). */
  createToken(options: { ttlSeconds: number; policies?: string[]; renewable?: boolean }): string;
  revokeToken(token: string): void; // later use → 403 permission denied
  /** Revokes every token a login path issued ('auth/kubernetes/login'), as sys/leases/revoke-prefix does; returns how many. */
  revokeTokensFrom(loginPath: string): number;
  /** Adds a role (or, for an existing role name, one more secret ID). `mount` defaults to 'approle'. */
  addAppRole(
    roleName: string,
    options?: { tokenTtlSeconds?: number; policies?: string[]; mount?: string },
  ): { roleId: string; secretId: string };
  /**
   * Adds (or replaces) a Kubernetes auth role, as `vault write auth/<mount>/role/<name>
   * bound_service_account_names=… bound_service_account_namespaces=…` does. `mount` defaults to 'kubernetes'.
   */
  addKubernetesRole(
    roleName: string,
    options: {
      serviceAccountNames: string[];
      serviceAccountNamespaces: string[];
      audience?: string;
      tokenTtlSeconds?: number;
      policies?: string[];
      mount?: string;
    },
  ): void;
  /** As the Kubernetes API server: a service-account JWT that the emulated TokenReview accepts (see the header). */
  mintServiceAccountToken(options: {
    namespace: string;
    serviceAccount: string;
    /** Lifetime of the JWT (exp - iat); default 3600. */
    ttlSeconds?: number;
    audience?: string;
  }): string;
  /** TokenReview stops accepting this JWT, as when its pod or service account is deleted: login → 403. */
  revokeServiceAccountToken(jwt: string): void;
  /** Restrict a token to paths: requests outside every prefix get 403 permission denied. */
  restrictToken(token: string, allowedPathPrefixes: string[]): void;
  requests: RecordedRequest[]; // every request seen, for assertions
  mounts: string[]; // KV v2 mounts served; default ['secret']; read on every request, so pushing one adds it
  /** Transit mounts served; default ['transit'] (option `transitMounts`); read on every request. */
  transitMounts: string[];
  /**
   * Sets (or replaces) a policy in Vault's JSON form, e.g.
   * `{ path: { 'transit/encrypt/kek': { capabilities: ['update'] }, 'transit/decrypt/*': { capabilities: ['update'] } } }`.
   * Turns the ACL on for the whole emulator (see the header).
   */
  setPolicy(name: string, policy: VaultPolicy): void;
  /**
   * Requests that reached a transit endpoint ('encrypt', 'decrypt', 'rewrap', 'datakey', 'keys', 'rotate',
   * 'config'), optionally only for one key name and mount; counted on arrival, so refused, sealed and injected
   * failures count too.
   */
  transitCallCount(endpoint: TransitEndpoint, options?: { name?: string; mount?: string }): number;
  resetTransitCalls(): void;
}

export type VaultCapability = 'create' | 'read' | 'update' | 'patch' | 'delete' | 'list' | 'sudo' | 'deny';
export interface VaultPolicy {
  path: Record<string, { capabilities: VaultCapability[] }>;
}
export type TransitEndpoint = 'encrypt' | 'decrypt' | 'rewrap' | 'datakey' | 'keys' | 'rotate' | 'config';

// ---------------------------------------------------------------------------------------------------------------
// Constants and small helpers

const VAULT_VERSION = '1.20.4';
/** Vault's default system max TTL (768h): renewals never go past issue time + this. */
const SYSTEM_MAX_TTL = 768 * 3600;
/** kv plugin backend.go: defaultMaxVersions. */
const DEFAULT_MAX_VERSIONS = 10;
/** kv plugin path_metadata.go: custom_metadata limits (ref B1). */
const CM_MAX_KEYS = 64;
const CM_MAX_KEY_LEN = 128;
const CM_MAX_VALUE_LEN = 512;
/** Paths the default policy always allows, so restrictToken leaves them open (vault: default policy). */
const SELF_PATHS = new Set(['auth/token/lookup-self', 'auth/token/renew-self', 'auth/token/revoke-self']);
/** Header the LIST shim adds when it turns LIST into GET (see ListRewriter). */
const LIST_MARK = 'x-vault-emulator-list';
const NS_PER_S = 1_000_000_000n;

type Json = Record<string, unknown>;
type Op = 'read' | 'list' | 'write' | 'delete' | 'patch';
interface Reply {
  status: number;
  body?: unknown;
}

/** go-multierror's format, which Vault uses for 403/405 and custom_metadata errors (ref B1 "Errors"). */
function multiError(errors: string[]): string {
  if (errors.length === 1) return `1 error occurred:\n\t* ${errors[0]}\n\n`;
  return `${errors.length} errors occurred:\n\t${errors.map((e) => `* ${e}`).join('\n\t')}\n\n`;
}

const errorReply = (status: number, ...errors: string[]): Reply => ({ status, body: { errors } });
/** ref B1: unknown key, version or path → 404 {"errors":[]}. */
const NOT_FOUND = (): Reply => errorReply(404);
const PERMISSION_DENIED = (): Reply => errorReply(403, multiError(['permission denied']));
const UNSUPPORTED = (): Reply => errorReply(405, multiError(['unsupported operation']));
const SEALED = (): Reply => errorReply(503, 'Vault is sealed');
const NO_CONTENT = (): Reply => ({ status: 204 });
const badRequest = (message: string): Reply => errorReply(400, message);

/** ref B1: the success envelope. Vault (Go) writes map keys sorted, so `data` is sorted deeply. */
function envelope(data: unknown, extra: { warnings?: string[]; auth?: Json } = {}): Json {
  return {
    request_id: randomUUID(),
    lease_id: '',
    renewable: false,
    lease_duration: 0,
    data: sortDeep(data),
    wrap_info: null,
    warnings: extra.warnings ?? null,
    auth: extra.auth ?? null,
  };
}
const ok = (data: unknown, extra?: { warnings?: string[]; auth?: Json }): Reply => ({
  status: 200,
  body: envelope(data, extra),
});

function sortDeep(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortDeep);
  if (!isObject(value)) return value;
  return Object.fromEntries(
    Object.keys(value)
      .sort()
      .map((k) => [k, sortDeep(value[k])]),
  );
}

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Go's encoding/json: HTML-escaped, newline-terminated. */
function goJson(value: unknown): string {
  const text = JSON.stringify(value).replace(
    /[<>&\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
  return `${text}\n`;
}

// Time: nanoseconds since the epoch, strictly increasing, printed like Go's time.RFC3339Nano
// ("2026-11-21T19:00:00.123456789Z"; Go trims trailing zeros of the fraction).
let lastNs = 0n;
function nowNs(): bigint {
  let ns = BigInt(Date.now()) * 1_000_000n + (process.hrtime.bigint() % 1_000_000n);
  if (ns <= lastNs) ns = lastNs + 1n;
  lastNs = ns;
  return ns;
}
function rfc3339(ns: bigint): string {
  const seconds = new Date(Number(ns / 1_000_000n)).toISOString().slice(0, 19);
  const fraction = (ns % NS_PER_S).toString().padStart(9, '0').replace(/0+$/, '');
  return `${seconds}${fraction ? `.${fraction}` : ''}Z`;
}
const timeOrEmpty = (ns: bigint | null): string => (ns === null ? '' : rfc3339(ns));
const unixSeconds = (ns: bigint): number => Number(ns / NS_PER_S);

/** Go's time.Duration.String() for whole seconds: 0s, 45s, 1m30s, 1h0m0s. */
function goDuration(totalSeconds: number): string {
  if (totalSeconds === 0) return '0s';
  let s = Math.abs(totalSeconds);
  const h = Math.floor(s / 3600);
  s %= 3600;
  const m = Math.floor(s / 60);
  s %= 60;
  const text = h ? `${h}h${m}m${s}s` : m ? `${m}m${s}s` : `${s}s`;
  return totalSeconds < 0 ? `-${text}` : text;
}

/** Vault's parseutil.ParseDurationSecond: a number of seconds, "90", "1h30m", "10s", "2d". */
function parseDurationSeconds(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? Math.trunc(value) : undefined;
  if (typeof value !== 'string') return undefined;
  const text = value.trim();
  if (text === '') return 0;
  if (/^[+-]?\d+$/.test(text)) return Number(text);
  const m = /^([+-]?)((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h|d))+)$/.exec(text);
  if (!m) return undefined;
  const unit: Record<string, number> = {
    ns: 1e-9,
    us: 1e-6,
    µs: 1e-6,
    ms: 1e-3,
    s: 1,
    m: 60,
    h: 3600,
    d: 86400,
  };
  let total = 0;
  for (const part of m[2]!.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)/g)) {
    total += Number(part[1]) * unit[part[2]!]!;
  }
  return Math.trunc(m[1] === '-' ? -total : total);
}

/** Go's strconv.ParseBool, used by Vault for query flags (list, standbyok, ...). */
function parseBool(value: string | null): boolean | undefined {
  if (value === null) return false;
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(value)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(value)) return false;
  return undefined;
}

/** mapstructure.WeakDecode into int, as used for options.cas (kv plugin validateCheckAndSetOption). */
function weakInt(value: unknown): number | undefined {
  if (value === null) return 0;
  if (typeof value === 'boolean') return value ? 1 : 0;
  if (typeof value === 'number') return Number.isInteger(value) ? value : undefined;
  if (typeof value === 'string')
    return value === '' ? 0 : /^[+-]?\d+$/.test(value) ? Number(value) : undefined;
  return undefined;
}

/** mapstructure.WeakDecode into string, as used for custom_metadata values. */
function weakString(value: unknown): string | undefined {
  if (value === null) return '';
  if (typeof value === 'string') return value;
  if (typeof value === 'number') return String(value);
  if (typeof value === 'boolean') return value ? '1' : '0';
  return undefined;
}

/** Vault's TypeCommaIntSlice: [1,2], ["1","2"], "1,2" or 3. */
function parseVersions(value: unknown): number[] | undefined {
  if (value === undefined || value === null) return [];
  const items = Array.isArray(value)
    ? value
    : typeof value === 'string'
      ? value.split(',').filter((s) => s.trim() !== '')
      : [value];
  const out: number[] = [];
  for (const item of items) {
    const n = weakInt(typeof item === 'string' ? item.trim() : item);
    if (n === undefined || item === null || typeof item === 'boolean') return undefined;
    out.push(n);
  }
  return out;
}

/** RFC 7386 JSON merge patch (kv plugin: PATCH data/ and metadata/). */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: Json = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

const randomId = (length: number): string => {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  return Array.from(randomBytes(length), (b) => alphabet[b % alphabet.length]).join('');
};

// ---------------------------------------------------------------------------------------------------------------
// LIST over node:http. Node's HTTP parser (llhttp) rejects the LIST verb (HPE_INVALID_METHOD) and closes the
// connection, yet node-vault's list() sends it (ref B3). Each raw connection passes through this rewriter, which
// frames requests (head, then Content-Length bytes of body) and turns `LIST /path` into `GET /path` plus a marker
// header; the handler reads the marker back as LIST. A chunked request body ends the rewriting for that connection
// (no client used here sends one).

class ListRewriter {
  #buffer = Buffer.alloc(0);
  #bodyLeft = 0;
  #passThrough = false;

  feed(chunk: Buffer): Buffer[] {
    if (this.#passThrough) return [chunk];
    this.#buffer = Buffer.concat([this.#buffer, chunk]);
    const out: Buffer[] = [];
    while (this.#buffer.length > 0) {
      if (this.#bodyLeft > 0) {
        const n = Math.min(this.#bodyLeft, this.#buffer.length);
        out.push(this.#buffer.subarray(0, n));
        this.#buffer = this.#buffer.subarray(n);
        this.#bodyLeft -= n;
        continue;
      }
      const end = this.#buffer.indexOf('\r\n\r\n');
      if (end === -1) {
        if (this.#buffer.length > 64 * 1024) this.#stopRewriting(out); // let the parser report the bad head
        break;
      }
      let head = this.#buffer.subarray(0, end + 4).toString('latin1');
      this.#buffer = this.#buffer.subarray(end + 4);
      head = head.replace(/^((?:\r\n)*)LIST ([^\r\n]*)\r\n/, `$1GET $2\r\n${LIST_MARK}: 1\r\n`);
      const length = /^content-length:[ \t]*(\d+)/im.exec(head);
      this.#bodyLeft = length ? Number(length[1]) : 0;
      out.push(Buffer.from(head, 'latin1'));
      if (/^transfer-encoding:.*chunked/im.test(head)) this.#stopRewriting(out);
    }
    return out;
  }

  #stopRewriting(out: Buffer[]): void {
    out.push(this.#buffer);
    this.#buffer = Buffer.alloc(0);
    this.#passThrough = true;
  }
}

/** The raw socket seen through ListRewriter, as a Duplex the HTTP server accepts on 'connection'. */
function rewriteListVerb(socket: net.Socket): Duplex {
  const rewriter = new ListRewriter();
  const wrapped = new Duplex({
    read: () => {
      socket.resume();
    },
    write: (chunk: Buffer, _encoding, callback) => {
      socket.write(chunk, callback);
    },
    final: (callback) => {
      socket.end();
      callback();
    },
    destroy: (err, callback) => {
      socket.destroy();
      callback(err);
    },
  });
  socket.on('data', (chunk: Buffer) => {
    for (const part of rewriter.feed(chunk)) if (!wrapped.push(part)) socket.pause();
  });
  socket.on('end', () => wrapped.push(null));
  socket.on('error', (err) => wrapped.destroy(err));
  socket.on('close', () => wrapped.destroy());
  return wrapped;
}

// ---------------------------------------------------------------------------------------------------------------
// State

interface VersionState {
  created: bigint;
  /** Soft-deleted once this is in the past; a future time comes from delete_version_after (ref B1 "Read"). */
  deletion: bigint | null;
  destroyed: boolean;
  data: Json | null;
}
interface KeyState {
  versions: Map<number, VersionState>;
  current: number;
  oldest: number;
  created: bigint | null;
  updated: bigint | null;
  maxVersions: number;
  casRequired: boolean;
  deleteVersionAfter: number;
  custom: Record<string, string> | null;
}
interface MountState {
  /** The mount's `config` endpoint (kv plugin path_config.go); deleteVersionAfter < 0 disables it. */
  maxVersions: number;
  casRequired: boolean;
  deleteVersionAfter: number;
  keys: Map<string, KeyState>;
}
interface TokenState {
  id: string;
  accessor: string;
  policies: string[];
  /** Creation TTL in seconds; 0 = never expires (no lease, like the root token). */
  ttl: number;
  issued: bigint;
  expires: bigint | null;
  renewable: boolean;
  displayName: string;
  path: string;
  meta: Record<string, string> | null;
  orphan: boolean;
  entityId: string;
  root: boolean;
  revoked: boolean;
  allowedPrefixes?: string[];
  lastRenewal?: bigint;
}
interface AppRoleState {
  name: string;
  mount: string;
  roleId: string;
  secretIds: Set<string>;
  ttl: number;
  policies: string[];
}

interface KubernetesRoleState {
  name: string;
  mount: string;
  serviceAccountNames: string[];
  serviceAccountNamespaces: string[];
  audience?: string;
  ttl: number;
  policies: string[];
}
/** A service-account JWT as the emulated Kubernetes API server issued it. */
interface ServiceAccountTokenState {
  namespace: string;
  name: string;
  uid: string;
  expires: number; // unix seconds
  revoked: boolean;
}

/** vault-plugin-auth-kubernetes allowedSigningAlgs: what a service-account JWT may be signed with. */
const K8S_SIGNING_ALGS = new Set([
  'RS256',
  'RS384',
  'RS512',
  'ES256',
  'ES384',
  'ES512',
  'PS256',
  'PS384',
  'PS512',
]);
const K8S_ISSUER = 'https://kubernetes.default.svc.cluster.local';

/** go-secure-stdlib strutil.StrListContainsGlob: "*" matches any run of characters. */
function globMatches(patterns: string[], value: string): boolean {
  return patterns.some((p) =>
    new RegExp(
      `^${p
        .split('*')
        .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
        .join('.*')}$`,
    ).test(value),
  );
}

const base64url = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

/** The JWT's header and claims, unverified (as Vault does without pem_keys); undefined when it is not a JWS. */
function parseJwt(jwt: string): { header: Json; claims: Json } | undefined {
  const parts = jwt.split('.');
  if (parts.length !== 3) return undefined;
  try {
    const header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
    return isObject(header) && isObject(claims) ? { header, claims } : undefined;
  } catch {
    return undefined;
  }
}

const isDeleted = (v: VersionState): boolean => v.deletion !== null && v.deletion < nowNs();

// ---------------------------------------------------------------------------------------------------------------
// The emulator

export async function startVaultEmulator(
  options: { mounts?: string[]; namespaces?: boolean; transitMounts?: string[]; acl?: boolean } = {},
): Promise<VaultEmulator> {
  /** With namespaces off the header is ignored (recorded only), as Vault Community Edition does. */
  const namespacesEnabled = options.namespaces ?? true;
  const spaces = new Map<string, Map<string, MountState>>();
  const tokens = new Map<string, TokenState>();
  const appRoles = new Map<string, AppRoleState>();
  const kubernetesRoles = new Map<string, KubernetesRoleState>();
  /** The emulated Kubernetes API server's service-account JWTs, by JWT. */
  const serviceAccountTokens = new Map<string, ServiceAccountTokenState>();
  const serviceAccountUids = new Map<string, string>();
  const faults: Array<{ left: number; status: 403 | 500 | 503; match?: (m: string, p: string) => boolean }> =
    [];
  const clusterId = randomUUID();
  let sealed = false;
  let healthState: HealthState = 'active';
  const policies = new Map<string, VaultPolicy>();
  let aclOn = options.acl ?? false;
  const transit = createTransitEngine();
  const transitCalls: Array<{ endpoint: TransitEndpoint; name: string; mount: string }> = [];

  function issueToken(
    fields: Omit<TokenState, 'id' | 'accessor' | 'issued' | 'expires' | 'revoked'>,
  ): TokenState {
    const issued = nowNs();
    const token: TokenState = {
      ...fields,
      id: `hvs.${randomId(24)}`,
      accessor: randomId(24),
      issued,
      expires: fields.ttl > 0 ? issued + BigInt(Math.round(fields.ttl * 1e9)) : null,
      revoked: false,
    };
    tokens.set(token.id, token);
    return token;
  }
  const withDefault = (policies: string[] = []): string[] =>
    policies.includes('root') ? ['root'] : [...new Set(['default', ...policies])].sort();

  const rootToken = issueToken({
    policies: ['root'],
    ttl: 0,
    renewable: false,
    displayName: 'root',
    path: 'auth/token/root',
    meta: null,
    orphan: true,
    entityId: '',
    root: true,
  });

  // -- Namespaces and mounts

  function namespaceOf(header: string | undefined): string {
    if (!namespacesEnabled || header === undefined) return '';
    const name = header.trim().replace(/^\/+|\/+$/g, '');
    return name === 'root' ? '' : name;
  }
  function findMount(path: string): string | undefined {
    return [...emulator.mounts]
      .map((m) => m.replace(/^\/+|\/+$/g, ''))
      .sort((a, b) => b.length - a.length)
      .find((m) => path === m || path.startsWith(`${m}/`));
  }
  function mountState(namespace: string, mount: string): MountState {
    let space = spaces.get(namespace);
    if (!space) {
      space = new Map();
      spaces.set(namespace, space);
    }
    let state = space.get(mount);
    if (!state) {
      state = { maxVersions: 0, casRequired: false, deleteVersionAfter: 0, keys: new Map() };
      space.set(mount, state);
    }
    return state;
  }

  // -- KV v2 (ref B1)

  function versionMetadata(key: KeyState, version: number, v: VersionState): Json {
    return {
      created_time: rfc3339(v.created),
      custom_metadata: key.custom,
      deletion_time: timeOrEmpty(v.deletion),
      destroyed: v.destroyed,
      version,
    };
  }

  /** ref B1 "CAS"; kv plugin validateCheckAndSetOption. */
  function checkAndSet(mount: MountState, key: KeyState, opts: Json | undefined): Reply | undefined {
    if (opts && 'cas' in opts) {
      const cas = weakInt(opts.cas);
      if (cas === undefined) return badRequest('error parsing check-and-set parameter');
      if (cas !== key.current) return badRequest('check-and-set parameter did not match the current version');
    } else if (mount.casRequired || key.casRequired) {
      return badRequest('check-and-set parameter required for this call');
    }
    return undefined;
  }

  /** kv plugin AddVersion: new version, then the max_versions window (ref B1 "Max versions"). */
  function addVersion(mount: MountState, key: KeyState, data: Json): VersionState {
    const created = nowNs();
    let deletion: bigint | null = null;
    if (mount.deleteVersionAfter >= 0) {
      // delete_version_after: the shorter positive of mount and key settings (kv plugin deletionTime).
      const after = [mount.deleteVersionAfter, key.deleteVersionAfter].filter((d) => d > 0);
      if (after.length > 0) deletion = created + BigInt(Math.min(...after)) * NS_PER_S;
    }
    const version: VersionState = { created, deletion, destroyed: false, data: structuredClone(data) };
    key.current += 1;
    key.versions.set(key.current, version);
    key.updated = created;
    key.created ??= created;
    const max = Math.max(key.maxVersions, mount.maxVersions) || DEFAULT_MAX_VERSIONS;
    if (key.current - key.oldest >= max) {
      const newestToDrop = key.current - max;
      for (let i = key.oldest; i <= newestToDrop; i++) key.versions.delete(i);
      key.oldest = newestToDrop + 1;
    }
    return version;
  }

  function newKey(created: bigint | null): KeyState {
    return {
      versions: new Map(),
      current: 0,
      oldest: 0,
      created,
      updated: created,
      maxVersions: 0,
      casRequired: false,
      deleteVersionAfter: 0,
      custom: null,
    };
  }

  /** GET data/<path>[?version=N] (ref B1 "Read"). */
  function readData(mount: MountState, path: string, query: URLSearchParams): Reply {
    const key = mount.keys.get(path);
    const versionParam = query.get('version');
    let number = key?.current ?? 0;
    if (versionParam !== null) {
      const n = weakInt(versionParam);
      if (n === undefined) {
        return badRequest(`error converting input ${versionParam} for field "version": cannot parse as int`);
      }
      if (n > 0) number = n;
    }
    const version = key?.versions.get(number);
    if (!key || !version) return NOT_FOUND();
    const metadata = versionMetadata(key, number, version);
    // Deleted or destroyed: 404 carrying the full envelope, data null (ref B1 "Read").
    if (isDeleted(version) || version.destroyed)
      return { status: 404, body: envelope({ data: null, metadata }) };
    return ok({ data: structuredClone(version.data), metadata });
  }

  /** POST|PUT data/<path> (ref B1 "Write", "CAS"). */
  function writeData(mount: MountState, path: string, body: Json): Reply {
    if (body.data === undefined || body.data === null) return badRequest('no data provided');
    if (!isObject(body.data)) return badRequest('error converting input for field "data": expected a map');
    if (body.options !== undefined && body.options !== null && !isObject(body.options)) {
      return badRequest('error converting input for field "options": expected a map');
    }
    const existing = mount.keys.get(path);
    const key = existing ?? newKey(null);
    const refused = checkAndSet(mount, key, isObject(body.options) ? body.options : undefined);
    if (refused) return refused;
    const version = addVersion(mount, key, body.data);
    if (!existing) mount.keys.set(path, key);
    return ok(versionMetadata(key, key.current, version));
  }

  /** PATCH data/<path>: JSON merge patch onto the latest version, written as a new one (kv plugin pathDataPatch). */
  function patchData(mount: MountState, path: string, body: Json): Reply {
    if (body.data === undefined || body.data === null) return badRequest('no data provided');
    if (!isObject(body.data)) return badRequest('error converting input for field "data": expected a map');
    const key = mount.keys.get(path);
    if (!key) return NOT_FOUND();
    const refused = checkAndSet(mount, key, isObject(body.options) ? body.options : undefined);
    if (refused) return refused;
    const latest = key.versions.get(key.current);
    if (!latest) return NOT_FOUND();
    if (isDeleted(latest) || latest.destroyed) {
      return { status: 404, body: envelope(versionMetadata(key, key.current, latest)) };
    }
    const version = addVersion(mount, key, mergePatch(latest.data, body.data) as Json);
    return ok(versionMetadata(key, key.current, version));
  }

  /** DELETE data/<path>: soft-deletes the latest version; no-op when already deleted or destroyed (ref B1). */
  function deleteLatest(mount: MountState, path: string): Reply {
    const key = mount.keys.get(path);
    const latest = key?.versions.get(key.current);
    if (latest && !latest.destroyed && !isDeleted(latest)) latest.deletion = nowNs();
    return NO_CONTENT();
  }

  /** POST delete|undelete|destroy/<path> {versions} (ref B1 "Delete"; kv plugin path_delete.go, path_destroy.go). */
  function changeVersions(
    mount: MountState,
    path: string,
    body: Json,
    action: 'delete' | 'undelete' | 'destroy',
  ): Reply {
    const versions = parseVersions(body.versions);
    if (versions === undefined)
      return badRequest('error converting input for field "versions": expected integers');
    if (versions.length === 0) {
      // The plugin spells this message differently in destroy.
      return badRequest(action === 'destroy' ? 'no version number provided' : 'No version number provided');
    }
    const key = mount.keys.get(path);
    if (!key) return NO_CONTENT();
    for (const n of versions) {
      const version = key.versions.get(n);
      if (!version || version.destroyed) continue;
      if (action === 'delete') {
        if (!isDeleted(version)) version.deletion = nowNs();
      } else if (action === 'undelete') {
        version.deletion = null;
        const after = [mount.deleteVersionAfter, key.deleteVersionAfter].filter((d) => d > 0);
        if (mount.deleteVersionAfter >= 0 && after.length > 0) {
          version.deletion = nowNs() + BigInt(Math.min(...after)) * NS_PER_S;
        }
      } else {
        version.destroyed = true;
        version.data = null;
      }
    }
    return NO_CONTENT();
  }

  /** GET metadata/<path> (ref B1 "Metadata"). */
  function readMetadata(mount: MountState, path: string): Reply {
    const key = mount.keys.get(path);
    if (!key) return NOT_FOUND();
    const versions: Json = {};
    for (const [n, v] of key.versions) {
      versions[String(n)] = {
        created_time: rfc3339(v.created),
        deletion_time: timeOrEmpty(v.deletion),
        destroyed: v.destroyed,
      };
    }
    return ok({
      cas_required: key.casRequired,
      created_time: timeOrEmpty(key.created),
      current_version: key.current,
      custom_metadata: key.custom,
      delete_version_after: goDuration(key.deleteVersionAfter),
      max_versions: key.maxVersions,
      oldest_version: key.oldest,
      updated_time: timeOrEmpty(key.updated),
      versions,
    });
  }

  /** custom_metadata checks: ≤64 keys, key 1–128 and value 1–512 bytes, printable (ref B1; kv plugin). */
  function validateCustomMetadata(custom: Record<string, string>): string | undefined {
    const prefix = 'custom_metadata validation failed';
    const count = Object.keys(custom).length;
    if (count > CM_MAX_KEYS) {
      return multiError([`${prefix}: payload must contain at most ${CM_MAX_KEYS} keys, provided ${count}`]);
    }
    const errors: string[] = [];
    const printable = /^[\p{L}\p{M}\p{N}\p{P}\p{S} ]*$/u;
    for (const [k, v] of Object.entries(custom)) {
      const keyLength = Buffer.byteLength(k);
      const valueLength = Buffer.byteLength(v);
      if (keyLength === 0 || keyLength > CM_MAX_KEY_LEN) {
        errors.push(
          `${prefix}: length of key ${JSON.stringify(k)} is ${keyLength} but must be 0 < len(key) <= ${CM_MAX_KEY_LEN}`,
        );
      }
      if (valueLength === 0 || valueLength > CM_MAX_VALUE_LEN) {
        errors.push(
          `${prefix}: length of value for key ${JSON.stringify(k)} is ${valueLength} but must be 0 < len(value) <= ${CM_MAX_VALUE_LEN}`,
        );
      }
      if (!printable.test(k)) {
        errors.push(`${prefix}: key ${JSON.stringify(k)} (${k}) contains unprintable characters`);
      }
      if (!printable.test(v)) {
        errors.push(`${prefix}: value for key ${JSON.stringify(k)} contains unprintable characters`);
      }
    }
    return errors.length > 0 ? multiError(errors) : undefined;
  }

  function parseCustomMetadata(raw: unknown, dropNulls: boolean): Record<string, string> | string {
    if (!isObject(raw)) return 'error converting input for field "custom_metadata": expected a map';
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(raw)) {
      if (dropNulls && v === null) continue;
      const s = weakString(v);
      if (s === undefined)
        return `custom_metadata validation failed: value for key ${JSON.stringify(k)} is not a string`;
      out[k] = s;
    }
    return out;
  }

  /** The settable metadata fields, parsed; a string is a 400 message. */
  function parseMetadataFields(
    body: Json,
  ): { maxVersions?: number; casRequired?: boolean; deleteVersionAfter?: number } | string {
    const out: { maxVersions?: number; casRequired?: boolean; deleteVersionAfter?: number } = {};
    if (body.max_versions !== undefined) {
      const n = weakInt(body.max_versions);
      if (n === undefined || n < 0)
        return 'error converting input for field "max_versions": expected an integer';
      out.maxVersions = n;
    }
    if (body.cas_required !== undefined) {
      const b =
        typeof body.cas_required === 'boolean' ? body.cas_required : parseBool(String(body.cas_required));
      if (b === undefined) return 'error converting input for field "cas_required": expected a bool';
      out.casRequired = b;
    }
    if (body.delete_version_after !== undefined) {
      const d = parseDurationSeconds(body.delete_version_after);
      if (d === undefined || d < 0) return 'error converting input for field "delete_version_after"';
      out.deleteVersionAfter = d;
    }
    return out;
  }

  /** POST metadata/<path>: creates no version; 204 (ref B1 "Metadata"; kv plugin pathMetadataWrite). */
  function writeMetadata(mount: MountState, path: string, body: Json, patch: boolean): Reply {
    if (path === '') return badRequest('missing path');
    const fields = ['max_versions', 'cas_required', 'delete_version_after', 'custom_metadata'];
    if (!patch && !fields.some((f) => body[f] !== undefined)) return NO_CONTENT();
    let custom: Record<string, string> | undefined;
    if (body.custom_metadata !== undefined) {
      const parsed = parseCustomMetadata(body.custom_metadata, patch);
      if (typeof parsed === 'string') return badRequest(parsed);
      const invalid = validateCustomMetadata(parsed);
      if (invalid) return badRequest(invalid);
      custom = parsed;
    }
    const parsed = parseMetadataFields(body);
    if (typeof parsed === 'string') return badRequest(parsed);
    let key = mount.keys.get(path);
    if (!key) {
      if (patch) return NOT_FOUND();
      key = newKey(nowNs());
      mount.keys.set(path, key);
    }
    const warnings: string[] = [];
    if (parsed.casRequired === false && mount.casRequired) {
      warnings.push(
        '"cas_required" set to false, but is mandated by backend config. This value will be ignored.',
      );
    }
    if (parsed.maxVersions !== undefined) key.maxVersions = parsed.maxVersions;
    if (parsed.casRequired !== undefined) key.casRequired = parsed.casRequired;
    if (parsed.deleteVersionAfter !== undefined) key.deleteVersionAfter = parsed.deleteVersionAfter;
    if (custom !== undefined) {
      // PATCH merges custom_metadata (null removes a key); POST replaces it whole.
      const merged = patch
        ? (mergePatch(key.custom ?? {}, body.custom_metadata) as Record<string, string>)
        : custom;
      if (patch) for (const [k, v] of Object.entries(merged)) merged[k] = weakString(v) ?? '';
      // Stored as protobuf: an empty map reads back as null.
      key.custom = Object.keys(merged).length > 0 ? merged : null;
    }
    return warnings.length > 0 ? ok(null, { warnings }) : NO_CONTENT();
  }

  /** LIST metadata/<folder>/: direct children, folders with a trailing '/'; none → 404 (ref B1 "LIST"). */
  function listMetadata(mount: MountState, folder: string): Reply {
    const names = new Set<string>();
    for (const path of mount.keys.keys()) {
      if (!path.startsWith(folder)) continue;
      const rest = path.slice(folder.length);
      const slash = rest.indexOf('/');
      names.add(slash === -1 ? rest : rest.slice(0, slash + 1));
    }
    if (names.size === 0) return NOT_FOUND();
    return ok({ keys: [...names].sort() });
  }

  function readConfig(mount: MountState): Reply {
    return ok({
      cas_required: mount.casRequired,
      delete_version_after: goDuration(Math.max(mount.deleteVersionAfter, 0)),
      max_versions: mount.maxVersions,
    });
  }

  /** POST <mount>/config (kv plugin path_config.go): a negative delete_version_after disables it. */
  function writeConfig(mount: MountState, body: Json): Reply {
    const { delete_version_after: dva, ...rest } = body;
    const parsed = parseMetadataFields(rest);
    if (typeof parsed === 'string') return badRequest(parsed);
    if (parsed.maxVersions !== undefined) mount.maxVersions = parsed.maxVersions;
    if (parsed.casRequired !== undefined) mount.casRequired = parsed.casRequired;
    if (dva !== undefined) {
      const d = parseDurationSeconds(dva);
      if (d === undefined) return badRequest('error converting input for field "delete_version_after"');
      mount.deleteVersionAfter = d;
    }
    return NO_CONTENT();
  }

  function routeKv(mount: MountState, rest: string, op: Op, query: URLSearchParams, body: Json): Reply {
    const handlers = (map: Partial<Record<Op, () => Reply>>): Reply => (map[op] ?? UNSUPPORTED)();
    if (rest === 'config') {
      return handlers({ read: () => readConfig(mount), write: () => writeConfig(mount, body) });
    }
    const match = /^(data|metadata|delete|undelete|destroy)\/(.*)$/s.exec(rest);
    if (!match) return NOT_FOUND();
    const [, section, path = ''] = match;
    switch (section) {
      case 'data':
        // kv plugin: data/ needs a key that does not end in '/'.
        if (path === '' || path.endsWith('/')) return NOT_FOUND();
        return handlers({
          read: () => readData(mount, path, query),
          write: () => writeData(mount, path, body),
          patch: () => patchData(mount, path, body),
          delete: () => deleteLatest(mount, path),
        });
      case 'metadata':
        return handlers({
          read: () => readMetadata(mount, path),
          write: () => writeMetadata(mount, path, body, false),
          patch: () => writeMetadata(mount, path, body, true),
          delete: () => {
            mount.keys.delete(path); // the key and all its versions (ref B1)
            return NO_CONTENT();
          },
          list: () => listMetadata(mount, path),
        });
      default:
        return handlers({
          write: () => changeVersions(mount, path, body, section as 'delete' | 'undelete' | 'destroy'),
        });
    }
  }

  // -- sys (ref B2)

  /** GET sys/health: unauthenticated, answers while sealed; status codes and overrides per ref B2. */
  function health(query: URLSearchParams): Reply {
    const flags: Record<string, boolean> = {};
    for (const name of ['standbyok', 'perfstandbyok']) {
      const value = parseBool(query.get(name));
      if (value === undefined) return badRequest(`bad value for ${name} parameter`);
      flags[name] = value;
    }
    const codes: Record<string, number> = {
      activecode: 200,
      standbycode: 429,
      drsecondarycode: 472,
      performancestandbycode: 473,
      uninitcode: 501,
      sealedcode: 503,
    };
    for (const name of Object.keys(codes)) {
      const raw = query.get(name);
      if (raw === null) continue;
      if (!/^\d+$/.test(raw)) return badRequest(`bad code for ${name} parameter`);
      codes[name] = Number(raw);
    }
    const initialized = healthState !== 'uninitialized';
    const isSealed = sealed || !initialized;
    const perfStandby = !isSealed && healthState === 'performance_standby';
    const standby = isSealed || perfStandby || healthState === 'standby';
    let status = codes.activecode!;
    if (!initialized) status = codes.uninitcode!;
    else if (isSealed) status = codes.sealedcode!;
    else if (healthState === 'dr_secondary') status = codes.drsecondarycode!;
    else if (perfStandby) status = flags.perfstandbyok ? status : codes.performancestandbycode!;
    else if (standby) status = flags.standbyok ? status : codes.standbycode!;
    return {
      status,
      body: {
        initialized,
        sealed: isSealed,
        standby,
        performance_standby: perfStandby,
        replication_performance_mode: isSealed ? 'unknown' : 'disabled',
        replication_dr_mode: isSealed ? 'unknown' : healthState === 'dr_secondary' ? 'secondary' : 'disabled',
        server_time_utc: unixSeconds(nowNs()),
        version: namespacesEnabled ? `${VAULT_VERSION}+ent` : VAULT_VERSION,
        enterprise: namespacesEnabled,
        ...(isSealed
          ? {}
          : { cluster_name: `vault-cluster-${clusterId.slice(0, 8)}`, cluster_id: clusterId }),
        echo_duration_ms: 0,
        clock_skew_ms: 0,
        replication_primary_canary_age_ms: 0,
      },
    };
  }

  function sealStatus(): Reply {
    const initialized = healthState !== 'uninitialized';
    return {
      status: 200,
      body: {
        type: 'shamir',
        initialized,
        sealed: sealed || !initialized,
        t: 1,
        n: 1,
        progress: 0,
        nonce: '',
        version: VAULT_VERSION,
        build_date: '2025-01-01T00:00:00Z',
        migration: false,
        ...(sealed || !initialized
          ? {}
          : { cluster_name: `vault-cluster-${clusterId.slice(0, 8)}`, cluster_id: clusterId }),
        recovery_seal: false,
        storage_type: 'inmem',
      },
    };
  }

  // -- auth (ref B2)

  function authBlock(token: TokenState, leaseDuration: number): Json {
    return {
      client_token: token.id,
      accessor: token.accessor,
      policies: token.policies,
      token_policies: token.policies,
      metadata: token.meta,
      lease_duration: leaseDuration,
      renewable: token.renewable,
      entity_id: token.entityId,
      token_type: 'service',
      orphan: token.orphan,
      mfa_requirement: null,
      num_uses: 0,
    };
  }

  /** GET auth/token/lookup-self (ref B2). Tokens without a lease (root) carry no issue_time and no renewable. */
  function lookupSelf(token: TokenState): Reply {
    const now = nowNs();
    const data: Json = {
      accessor: token.accessor,
      creation_time: unixSeconds(token.issued),
      creation_ttl: Math.round(token.ttl),
      display_name: token.displayName,
      entity_id: token.entityId,
      expire_time: token.expires === null ? null : rfc3339(token.expires),
      explicit_max_ttl: 0,
      id: token.id,
      meta: token.meta,
      num_uses: 0,
      orphan: token.orphan,
      path: token.path,
      policies: token.policies,
      ttl: token.expires === null ? 0 : Math.max(0, Math.round(Number(token.expires - now) / 1e9)),
      type: 'service',
    };
    if (token.expires !== null) {
      data.issue_time = rfc3339(token.issued);
      data.renewable = token.renewable;
    }
    if (token.lastRenewal !== undefined) {
      data.last_renewal = rfc3339(token.lastRenewal);
      data.last_renewal_time = unixSeconds(token.lastRenewal);
    }
    return ok(data);
  }

  /** POST auth/token/renew-self {increment?} → auth block; 400 when there is no lease or it is not renewable. */
  function renewSelf(token: TokenState, body: Json): Reply {
    if (token.expires === null) return badRequest('invalid lease ID'); // vault: RenewToken, no lease entry
    if (!token.renewable) return badRequest('lease is not renewable');
    let increment = 0;
    if (body.increment !== undefined) {
      const parsed = parseDurationSeconds(body.increment);
      if (parsed === undefined) return badRequest('error converting input for field "increment"');
      increment = parsed;
    }
    const now = nowNs();
    const maxEnd = token.issued + BigInt(SYSTEM_MAX_TTL) * NS_PER_S;
    const wanted = increment > 0 ? increment : token.ttl;
    const ttl = Math.max(0, Math.min(wanted, Math.floor(Number(maxEnd - now) / 1e9)));
    token.expires = now + BigInt(Math.round(ttl * 1e9));
    token.lastRenewal = now;
    return ok(null, { auth: authBlock(token, ttl) });
  }

  /** POST auth/<approle mount>/login {role_id, secret_id} (ref B2). */
  function appRoleLogin(mount: string, body: Json): Reply {
    const roleId = typeof body.role_id === 'string' ? body.role_id : '';
    const secretId = typeof body.secret_id === 'string' ? body.secret_id : '';
    if (roleId === '') return badRequest('missing role_id');
    const role = [...appRoles.values()].find((r) => r.mount === mount && r.roleId === roleId);
    if (!role?.secretIds.has(secretId)) return badRequest('invalid role or secret ID');
    const token = issueToken({
      policies: withDefault(role.policies),
      ttl: role.ttl,
      renewable: true,
      displayName: mount,
      path: `auth/${mount}/login`,
      meta: { role_name: role.name },
      orphan: true,
      entityId: randomUUID(),
      root: false,
    });
    return ok(null, { auth: authBlock(token, token.ttl) });
  }

  /**
   * POST auth/<kubernetes mount>/login {role, jwt}, in the order of vault-plugin-auth-kubernetes pathLogin: 400 for a
   * missing field or an unknown role; 403 for a JWT that does not parse (signature check failed: "permission
   * denied"), has expired or names another audience, a service account or namespace the role is not bound to, and
   * a JWT that TokenReview does not accept (permission denied).
   */
  function kubernetesLogin(mount: string, body: Json): Reply {
    const roleName = typeof body.role === 'string' ? body.role : '';
    const jwt = typeof body.jwt === 'string' ? body.jwt : '';
    if (roleName === '') return badRequest('missing role');
    if (jwt === '') return badRequest('missing jwt');
    const role = kubernetesRoles.get(`${mount}/${roleName}`);
    if (!role) return badRequest(`invalid role name "${roleName}"`);
    const parsed = parseJwt(jwt);
    if (!parsed || !K8S_SIGNING_ALGS.has(String(parsed.header.alg))) return PERMISSION_DENIED();
    const { claims } = parsed;
    const now = Math.floor(Date.now() / 1000);
    if (typeof claims.exp === 'number' && claims.exp <= now) {
      return errorReply(403, 'invalid exp (expiration time) claim: token is expired');
    }
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (role.audience && !audiences.includes(role.audience)) {
      return errorReply(
        403,
        'invalid aud (audience) claim: audience claim does not match any expected audience',
      );
    }
    const k8s = isObject(claims['kubernetes.io']) ? claims['kubernetes.io'] : undefined;
    const sa = k8s && isObject(k8s.serviceaccount) ? k8s.serviceaccount : undefined;
    const name = String(sa?.name ?? claims['kubernetes.io/serviceaccount/service-account.name'] ?? '');
    const namespace = String(k8s?.namespace ?? claims['kubernetes.io/serviceaccount/namespace'] ?? '');
    if (!(role.serviceAccountNames.length === 1 && role.serviceAccountNames[0] === '*')) {
      if (!globMatches(role.serviceAccountNames, name)) {
        return errorReply(403, 'service account name not authorized');
      }
    }
    if (
      !(role.serviceAccountNamespaces[0] === '*' || globMatches(role.serviceAccountNamespaces, namespace))
    ) {
      return errorReply(403, 'namespace not authorized');
    }
    // TokenReview: only a JWT this emulator minted, still valid, for the service account its claims name.
    const reviewed = serviceAccountTokens.get(jwt);
    if (!reviewed || reviewed.revoked || reviewed.expires <= now) return PERMISSION_DENIED();
    if (reviewed.name !== name || reviewed.namespace !== namespace) return PERMISSION_DENIED();
    const token = issueToken({
      policies: withDefault(role.policies),
      ttl: role.ttl,
      renewable: true,
      displayName: `${mount}-${namespace}-${name}`,
      path: `auth/${mount}/login`,
      meta: {
        role: role.name,
        service_account_name: name,
        service_account_namespace: namespace,
        service_account_secret_name: '',
        service_account_uid: reviewed.uid,
      },
      orphan: true,
      entityId: randomUUID(),
      root: false,
    });
    return ok(null, { auth: authBlock(token, token.ttl) });
  }

  function liveToken(id: string | undefined): TokenState | undefined {
    const token = id ? tokens.get(id) : undefined;
    if (!token || token.revoked || (token.expires !== null && token.expires <= nowNs())) return undefined;
    return token;
  }

  // -- Transit mounts and the ACL (vault: acl.go, policy.go)

  function findTransitMount(path: string): string | undefined {
    return [...emulator.transitMounts]
      .map((m) => m.replace(/^\/+|\/+$/g, ''))
      .sort((a, b) => b.length - a.length)
      .find((m) => path === m || path.startsWith(`${m}/`));
  }
  const transitSpace = (namespace: string, mount: string) => `${namespace}\u0000${mount}`;

  /** Which transit endpoint a path under a transit mount is, for the call counters. */
  function transitEndpoint(rest: string): { endpoint: TransitEndpoint; name: string } | undefined {
    let m = /^(encrypt|decrypt|rewrap)\/([^/]+)$/.exec(rest);
    if (m) return { endpoint: m[1] as TransitEndpoint, name: m[2]! };
    m = /^datakey\/[^/]+\/([^/]+)$/.exec(rest);
    if (m) return { endpoint: 'datakey', name: m[1]! };
    m = /^keys\/([^/]+)\/(rotate|config)$/.exec(rest);
    if (m) return { endpoint: m[2] as TransitEndpoint, name: m[1]! };
    m = /^keys(?:\/([^/]*))?$/.exec(rest);
    if (m) return { endpoint: 'keys', name: m[1] ?? '' };
    return undefined;
  }

  /**
   * The capability a request needs. POST/PUT is update, or create when the backend's existence check says the
   * target does not exist yet: KV v2 data/ and metadata/ (kv plugin dataExistenceCheck, metadataExistenceCheck)
   * and transit encrypt/ (transit pathEncryptExistenceCheck). Other writes have no existence check: update.
   */
  function requiredCapability(path: string, op: Op, namespace: string): VaultCapability {
    if (op !== 'write') return op;
    const transitMount = findTransitMount(path);
    if (transitMount !== undefined) {
      const create = transit.writeIsCreate(
        transitSpace(namespace, transitMount),
        path.slice(transitMount.length + 1),
      );
      return create ? 'create' : 'update';
    }
    const kvMount = findMount(path);
    if (kvMount !== undefined) {
      const m = /^(?:data|metadata)\/(.+)$/s.exec(path.slice(kvMount.length + 1));
      if (m) return mountState(namespace, kvMount).keys.has(m[1]!) ? 'update' : 'create';
    }
    return 'update';
  }

  /** A policy path: exact, `*` as the last character (prefix), `+` as a whole segment (any one segment). */
  function pathMatches(pattern: string, path: string): boolean {
    const glob = pattern.endsWith('*');
    const body = glob ? pattern.slice(0, -1) : pattern;
    const source = body
      .split('/')
      .map((segment) => (segment === '+' ? '[^/]*' : segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
      .join('/');
    return new RegExp(`^${source}${glob ? '.*' : ''}$`, 's').test(path);
  }

  /** Vault's priority between two matching policy paths; > 0 when `a` wins (docs: "Priority matching"). */
  function comparePriority(a: string, b: string): number {
    const firstWildcard = (p: string) => {
      const i = p.search(/[+*]/);
      return i < 0 ? Number.POSITIVE_INFINITY : i;
    };
    const plusSegments = (p: string) => p.split('/').filter((s) => s === '+').length;
    if (firstWildcard(a) !== firstWildcard(b)) return firstWildcard(a) > firstWildcard(b) ? 1 : -1;
    if (a.endsWith('*') !== b.endsWith('*')) return a.endsWith('*') ? -1 : 1;
    if (plusSegments(a) !== plusSegments(b)) return plusSegments(a) < plusSegments(b) ? 1 : -1;
    if (a.length !== b.length) return a.length > b.length ? 1 : -1;
    return a === b ? 0 : a > b ? 1 : -1;
  }

  function aclAllows(token: TokenState, path: string, capability: VaultCapability): boolean {
    const merged = new Map<string, Set<VaultCapability>>();
    for (const name of token.policies) {
      const policy = policies.get(name);
      if (!policy) continue;
      for (const [pattern, rule] of Object.entries(policy.path)) {
        const caps = merged.get(pattern) ?? new Set<VaultCapability>();
        for (const c of rule.capabilities) caps.add(c);
        merged.set(pattern, caps);
      }
    }
    const matching = [...merged.keys()].filter((p) => pathMatches(p, path));
    if (matching.length === 0) return false;
    const best = matching.sort((a, b) => comparePriority(b, a))[0]!;
    const caps = merged.get(best)!;
    return !caps.has('deny') && caps.has(capability);
  }

  // -- Request handling

  function operationOf(method: string, query: URLSearchParams): Op | undefined {
    switch (method) {
      case 'GET':
      case 'HEAD':
        return parseBool(query.get('list')) ? 'list' : 'read';
      case 'LIST':
        return 'list';
      case 'POST':
      case 'PUT':
        return 'write';
      case 'DELETE':
        return 'delete';
      case 'PATCH':
        return 'patch';
      default:
        return undefined;
    }
  }

  function takeFault(method: string, path: string): Reply | undefined {
    const fault = faults.find((f) => f.left > 0 && (!f.match || f.match(method, path)));
    if (!fault) return undefined;
    fault.left -= 1;
    if (fault.left === 0) faults.splice(faults.indexOf(fault), 1);
    if (fault.status === 403) return PERMISSION_DENIED();
    return fault.status === 503 ? SEALED() : errorReply(500, 'internal error');
  }

  async function route(req: http.IncomingMessage): Promise<Reply> {
    const url = new URL(req.url ?? '/', 'http://vault.invalid');
    const method = req.headers[LIST_MARK] ? 'LIST' : (req.method ?? 'GET');
    const header = (name: string): string | undefined => {
      const value = req.headers[name];
      return Array.isArray(value) ? value[0] : value;
    };

    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    let body: unknown;
    let bodyError: string | undefined;
    if (raw.trim() !== '') {
      try {
        body = JSON.parse(raw);
        if (!isObject(body)) bodyError = 'failed to parse JSON input: expected a JSON object';
      } catch (err) {
        body = raw;
        bodyError = `failed to parse JSON input: ${(err as Error).message}`;
      }
    }

    let fullPath: string;
    try {
      fullPath = decodeURIComponent(url.pathname);
    } catch {
      fullPath = url.pathname;
    }
    const inApi = fullPath.startsWith('/v1/');
    let path = inApi ? fullPath.slice(4) : fullPath;
    const nsHeader = header('x-vault-namespace');
    const transitMount = inApi ? findTransitMount(path) : undefined;
    // Transit request bodies carry plaintext: recorded with it redacted.
    const recordedBody =
      transitMount !== undefined && isObject(body) && body.plaintext !== undefined
        ? { ...body, plaintext: '[redacted]' }
        : body;
    emulator.requests.push({
      method,
      path,
      ...(nsHeader !== undefined ? { namespace: nsHeader } : {}),
      ...(recordedBody !== undefined ? { body: recordedBody } : {}),
      ...(url.search ? { query: Object.fromEntries(url.searchParams) } : {}),
    });
    if (transitMount !== undefined) {
      const called = transitEndpoint(path.slice(transitMount.length + 1));
      if (called) transitCalls.push({ ...called, mount: transitMount });
    }

    const fault = takeFault(method, path);
    if (fault) return fault;
    if (!inApi) return NOT_FOUND();
    const op = operationOf(method, url.searchParams);
    if (!op) return UNSUPPORTED();
    if (op === 'list' && !path.endsWith('/')) path += '/'; // vault: a LIST path always names a folder
    if (op === 'patch') {
      const type = (header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
      if (type !== 'application/merge-patch+json') {
        return errorReply(
          415,
          `PATCH requires Content-Type of application/merge-patch+json, provided ${type}`,
        );
      }
    }

    // Unauthenticated endpoints that answer while sealed (ref B2).
    if (path === 'sys/health') return op === 'read' ? health(url.searchParams) : UNSUPPORTED();
    if (path === 'sys/seal-status') return op === 'read' ? sealStatus() : UNSUPPORTED();
    if (sealed || healthState === 'uninitialized') return SEALED();
    if (bodyError) return badRequest(bodyError);
    const json = (body ?? {}) as Json;

    const login = /^auth\/([^/]+)\/login$/.exec(path);
    const appRoleMounts = new Set(['approle', ...[...appRoles.values()].map((r) => r.mount)]);
    if (login && appRoleMounts.has(login[1]!)) {
      return op === 'write' ? appRoleLogin(login[1]!, json) : UNSUPPORTED();
    }
    const kubernetesMounts = new Set(['kubernetes', ...[...kubernetesRoles.values()].map((r) => r.mount)]);
    if (login && kubernetesMounts.has(login[1]!)) {
      return op === 'write' ? kubernetesLogin(login[1]!, json) : UNSUPPORTED();
    }

    // Token check: X-Vault-Token or Authorization: Bearer (ref B1); unknown, revoked or expired → 403.
    const bearer = /^Bearer\s+(.+)$/i.exec(header('authorization') ?? '')?.[1];
    const token = liveToken(header('x-vault-token') ?? bearer);
    if (!token) return PERMISSION_DENIED();
    if (
      token.allowedPrefixes &&
      !SELF_PATHS.has(path) &&
      !token.allowedPrefixes.some((p) => path.startsWith(p))
    ) {
      return PERMISSION_DENIED();
    }
    const namespace = namespaceOf(nsHeader);
    if (aclOn && !token.policies.includes('root') && !SELF_PATHS.has(path)) {
      if (!aclAllows(token, path, requiredCapability(path, op, namespace))) return PERMISSION_DENIED();
    }

    switch (path) {
      case 'auth/token/lookup-self':
        return op === 'read' || op === 'write' ? lookupSelf(token) : UNSUPPORTED();
      case 'auth/token/renew-self':
        return op === 'write' ? renewSelf(token, json) : UNSUPPORTED();
      case 'auth/token/revoke-self':
        if (op !== 'write') return UNSUPPORTED();
        token.revoked = true;
        return NO_CONTENT();
    }

    if (transitMount !== undefined) {
      const reply = transit.route(
        transitSpace(namespace, transitMount),
        path.slice(transitMount.length + 1),
        op as TransitOp,
        json,
      );
      if (reply.status === 204) return NO_CONTENT();
      if (reply.errors) return errorReply(reply.status, ...reply.errors);
      return {
        status: reply.status,
        body: envelope(reply.data ?? null, reply.warnings ? { warnings: reply.warnings } : {}),
      };
    }

    const mount = findMount(path);
    if (mount === undefined) return NOT_FOUND();
    const state = mountState(namespace, mount);
    return routeKv(state, path.slice(mount.length + 1), op, url.searchParams, json);
  }

  function send(res: http.ServerResponse, reply: Reply, head: boolean): void {
    res.statusCode = reply.status;
    res.setHeader('Cache-Control', 'no-store');
    res.setHeader('Content-Type', 'application/json');
    if (reply.status === 204 || reply.body === undefined) {
      res.end();
      return;
    }
    const text = goJson(reply.body);
    res.setHeader('Content-Length', Buffer.byteLength(text));
    res.end(head ? undefined : text);
  }

  // -- Servers: net accepts the connections, node:http parses what the LIST shim hands it.

  const httpServer = http.createServer((req, res) => {
    route(req).then(
      (reply) => send(res, reply, req.method === 'HEAD'),
      (err: unknown) => send(res, errorReply(500, `internal error: ${(err as Error).message}`), false),
    );
  });
  const sockets = new Set<net.Socket>();
  const netServer = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    httpServer.emit('connection', rewriteListVerb(socket));
  });
  await new Promise<void>((resolve, reject) => {
    netServer.once('error', reject);
    netServer.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = netServer.address() as net.AddressInfo;

  const emulator: VaultEmulator = {
    url: `http://127.0.0.1:${port}`,
    rootToken: rootToken.id,
    requests: [],
    mounts: [...(options.mounts ?? ['secret'])],
    transitMounts: [...(options.transitMounts ?? ['transit'])],

    setPolicy(name, policy) {
      if (name === 'root') throw new Error('setPolicy: the root policy cannot be changed');
      policies.set(name, structuredClone(policy));
      aclOn = true;
    },

    transitCallCount(endpoint, filter = {}) {
      return transitCalls.filter(
        (c) =>
          c.endpoint === endpoint &&
          (filter.name === undefined || c.name === filter.name) &&
          (filter.mount === undefined || c.mount === filter.mount),
      ).length;
    },

    resetTransitCalls() {
      transitCalls.length = 0;
    },

    async close() {
      const closed = new Promise<void>((resolve) => netServer.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },

    failNext(count, status, match) {
      if (count > 0) faults.push({ left: count, status, ...(match ? { match } : {}) });
    },

    seal() {
      sealed = true;
    },
    unseal() {
      sealed = false;
    },
    setHealth(state) {
      healthState = state;
    },

    createToken({ ttlSeconds, policies, renewable = true }) {
      const token = issueToken({
        policies: withDefault(policies),
        ttl: ttlSeconds,
        renewable: ttlSeconds > 0 && renewable,
        displayName: 'token',
        path: 'auth/token/create',
        meta: null,
        orphan: false,
        entityId: '',
        root: false,
      });
      return token.id;
    },

    revokeToken(id) {
      const token = tokens.get(id);
      if (token) token.revoked = true;
    },

    revokeTokensFrom(loginPath) {
      let count = 0;
      for (const token of tokens.values()) {
        if (token.path === loginPath && !token.revoked) {
          token.revoked = true;
          count += 1;
        }
      }
      return count;
    },

    addAppRole(roleName, roleOptions = {}) {
      const mount = roleOptions.mount ?? 'approle';
      const key = `${mount}/${roleName}`;
      let role = appRoles.get(key);
      if (!role) {
        role = {
          name: roleName,
          mount,
          roleId: randomUUID(),
          secretIds: new Set(),
          ttl: roleOptions.tokenTtlSeconds ?? SYSTEM_MAX_TTL, // Vault's default token TTL is the system max
          policies: roleOptions.policies ?? [],
        };
        appRoles.set(key, role);
      }
      const secretId = randomUUID();
      role.secretIds.add(secretId);
      return { roleId: role.roleId, secretId };
    },

    addKubernetesRole(roleName, roleOptions) {
      const mount = roleOptions.mount ?? 'kubernetes';
      // vault-plugin-auth-kubernetes path_role.go: both bindings are required ("*" for any).
      if (roleOptions.serviceAccountNames.length === 0 || roleOptions.serviceAccountNamespaces.length === 0) {
        throw new Error(
          'addKubernetesRole: "serviceAccountNames" and "serviceAccountNamespaces" can not be empty',
        );
      }
      kubernetesRoles.set(`${mount}/${roleName}`, {
        name: roleName,
        mount,
        serviceAccountNames: [...roleOptions.serviceAccountNames],
        serviceAccountNamespaces: [...roleOptions.serviceAccountNamespaces],
        ...(roleOptions.audience ? { audience: roleOptions.audience } : {}),
        ttl: roleOptions.tokenTtlSeconds ?? SYSTEM_MAX_TTL,
        policies: roleOptions.policies ?? [],
      });
    },

    mintServiceAccountToken({ namespace, serviceAccount, ttlSeconds = 3600, audience = K8S_ISSUER }) {
      const key = `${namespace}/${serviceAccount}`;
      const uid = serviceAccountUids.get(key) ?? randomUUID();
      serviceAccountUids.set(key, uid);
      const iat = Math.floor(Date.now() / 1000);
      const claims = {
        aud: [audience],
        exp: iat + ttlSeconds,
        iat,
        iss: K8S_ISSUER,
        jti: randomUUID(),
        'kubernetes.io': {
          namespace,
          pod: { name: `${serviceAccount}-${randomId(5).toLowerCase()}`, uid: randomUUID() },
          serviceaccount: { name: serviceAccount, uid },
        },
        nbf: iat,
        sub: `system:serviceaccount:${namespace}:${serviceAccount}`,
      };
      const jwt = [
        base64url({ alg: 'RS256', kid: randomId(43) }),
        base64url(claims),
        randomBytes(256).toString('base64url'),
      ].join('.');
      serviceAccountTokens.set(jwt, {
        namespace,
        name: serviceAccount,
        uid,
        expires: iat + ttlSeconds,
        revoked: false,
      });
      return jwt;
    },

    revokeServiceAccountToken(jwt) {
      const state = serviceAccountTokens.get(jwt);
      if (state) state.revoked = true;
    },

    restrictToken(id, allowedPathPrefixes) {
      const token = tokens.get(id);
      if (!token) throw new Error(`restrictToken: unknown token ${id.slice(0, 8)}…`);
      token.allowedPrefixes = [...allowedPathPrefixes];
    },
  };
  return emulator;
}
