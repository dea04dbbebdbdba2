/**
 * Kubernetes API server emulator for tests: the Secret (core/v1) and Deployment (apps/v1) endpoints Keyturn's sync
 * uses, served by node:http on 127.0.0.1. No API server runs here, so this is the fixture the sync is tested against;
 * kubernetes.test.ts holds it to the same contract as a real cluster when KUBECONFIG is set.
 *
 * Strict where the real API server is (cited from kubernetes/apiserver and kubernetes/kubernetes, "apiserver"):
 * - authentication: `Authorization: Bearer <token>`, else 401 with an Unauthorized Status;
 * - authorization before anything else, per namespace, resource and verb (RBAC's get/create/update/patch/delete):
 *   403 Forbidden with the message RBAC gives (`User "…" cannot get resource "secrets" in API group "" in the
 *   namespace "ns"`);
 * - resourceVersion optimistic concurrency: a PUT (or a PATCH carrying metadata.resourceVersion) with a version that
 *   is not the object's current one is 409 Conflict, "the object has been modified; please apply your changes to the
 *   latest version and try again"; a PUT without one is an unconditional update (secrets and deployments allow it);
 * - 404 NotFound Status for a missing object, and `namespaces "x" not found` for a create in a missing namespace;
 * - 409 AlreadyExists on a create of an existing name;
 * - Secret `data` is base64 (bad base64: 400, the JSON decoding of []byte fails), keys are checked as
 *   IsConfigMapKey does (422 Invalid); `stringData` is merged into `data` on write and never stored;
 * - PATCH accepts application/merge-patch+json (RFC 7386) and application/strategic-merge-patch+json (applied as a
 *   merge patch: lists are replaced, not merged by key, which Keyturn never relies on); any other content type is 415.
 *   JSON Patch, which a real server accepts, is not modelled and answers 415 too.
 * - the object's namespace and name must match the URL's (400 BadRequest).
 * A Deployment's metadata.generation moves when its spec changes, as the real one does.
 *
 * Not modelled: lists and watches, label selectors, field managers, admission, finalizers, immutable Secrets.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type Verb = 'get' | 'create' | 'update' | 'patch' | 'delete';
export type Resource = 'secrets' | 'deployments';
type Json = Record<string, any>;

export interface RecordedRequest {
  method: string;
  path: string;
  contentType?: string;
  status: number;
}

export interface KubernetesEmulator {
  url: string;
  /** The bearer token the emulator accepts, as the service account `system:serviceaccount:keyturn:keyturn`. */
  token: string;
  /** A kubeconfig file that points at the emulator with the token (for KUBECONFIG). */
  kubeconfig: string;
  addNamespace(namespace: string): void;
  /** RBAC: allows these verbs on the resource in the namespace (a Role and RoleBinding). */
  grant(namespace: string, resource: Resource, verbs: readonly Verb[]): void;
  /** Takes verbs away (all when none given). */
  revoke(namespace: string, resource: Resource, verbs?: readonly Verb[]): void;
  /** The stored Secret with `data` decoded, or undefined. */
  secret(namespace: string, name: string): (Json & { decoded: Record<string, string> }) | undefined;
  deployment(namespace: string, name: string): Json | undefined;
  addDeployment(namespace: string, name: string): Json;
  /** Writes a Secret as another client would (bumps its resourceVersion); `data` given decoded. */
  putSecret(
    namespace: string,
    name: string,
    object: { data?: Record<string, string>; labels?: Json; annotations?: Json },
  ): void;
  /** After the next GET of this Secret answers, runs `change` on it as another writer: the reader's write then conflicts. */
  interfereAfterRead(namespace: string, name: string, change: (secret: Json) => void): void;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

const USER = 'system:serviceaccount:keyturn:keyturn';
const GROUP: Record<Resource, string> = { secrets: '', deployments: 'apps' };
const KIND: Record<Resource, string> = { secrets: 'Secret', deployments: 'Deployment' };
const ACCEPTED_PATCH = ['application/merge-patch+json', 'application/strategic-merge-patch+json'];
// apimachinery IsConfigMapKey: [-._a-zA-Z0-9]+, at most 253, not "." or "..".
const KEY = /^[-._a-zA-Z0-9]{1,253}$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

class StatusError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly details: Json | undefined;
  constructor(code: number, reason: string, message: string, details?: Json) {
    super(message);
    this.code = code;
    this.reason = reason;
    this.details = details;
  }
}

function status(err: StatusError): Json {
  return {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message: err.message,
    reason: err.reason,
    ...(err.details ? { details: err.details } : {}),
    code: err.code,
  };
}

const notFound = (resource: Resource, name: string) =>
  new StatusError(
    404,
    'NotFound',
    `${resource}${GROUP[resource] ? `.${GROUP[resource]}` : ''} "${name}" not found`,
    {
      name,
      ...(GROUP[resource] ? { group: GROUP[resource] } : {}),
      kind: resource,
    },
  );

/** RFC 7386 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Json =
    target && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Json) } : {};
  for (const [key, value] of Object.entries(patch as Json)) {
    if (value === null) delete out[key];
    else out[key] = mergePatch(out[key], value);
  }
  return out;
}

export async function startKubernetesEmulator(): Promise<KubernetesEmulator> {
  const token = randomBytes(24).toString('base64url');
  const namespaces = new Set<string>();
  const rbac = new Map<string, Set<Verb>>(); // `${ns}/${resource}` → verbs
  const objects: Record<Resource, Map<string, Json>> = { secrets: new Map(), deployments: new Map() };
  const interference = new Map<string, (secret: Json) => void>();
  const requests: RecordedRequest[] = [];
  let revision = 1000;
  const nextRv = () => String(++revision);

  const allowed = (ns: string, resource: Resource, verb: Verb) =>
    rbac.get(`${ns}/${resource}`)?.has(verb) ?? false;

  function checkSecret(secret: Json): void {
    const causes: string[] = [];
    const data: Record<string, unknown> = secret.data ?? {};
    if (typeof data !== 'object' || Array.isArray(data))
      throw new StatusError(400, 'BadRequest', 'data must be an object');
    for (const [key, value] of Object.entries(data)) {
      if (typeof value !== 'string' || !BASE64.test(value)) {
        throw new StatusError(
          400,
          'BadRequest',
          `Secret in version "v1" cannot be handled as a Secret: illegal base64 data at input byte 0`,
        );
      }
      if (!KEY.test(key) || key === '.' || key === '..') {
        causes.push(
          `data[${key}]: Invalid value: "${key}": a valid config key must consist of alphanumeric characters, '-', '_' or '.'`,
        );
      }
    }
    for (const key of Object.keys(secret.stringData ?? {})) {
      if (!KEY.test(key) || key === '.' || key === '..')
        causes.push(`stringData[${key}]: Invalid value: "${key}"`);
    }
    if (causes.length > 0) {
      throw new StatusError(
        422,
        'Invalid',
        `Secret "${secret.metadata?.name}" is invalid: ${causes.join(', ')}`,
        {
          name: secret.metadata?.name,
          kind: 'Secret',
        },
      );
    }
  }

  /** What the API server stores: stringData folded into data, server fields set. */
  function stored(resource: Resource, ns: string, body: Json, previous?: Json): Json {
    const object: Json = structuredClone(body);
    object.apiVersion = resource === 'secrets' ? 'v1' : 'apps/v1';
    object.kind = KIND[resource];
    object.metadata = {
      ...object.metadata,
      namespace: ns,
      uid: previous?.metadata?.uid ?? randomUUID(),
      creationTimestamp:
        previous?.metadata?.creationTimestamp ?? new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
      resourceVersion: nextRv(),
    };
    if (resource === 'secrets') {
      object.type ??= previous?.type ?? 'Opaque';
      if (previous && previous.type !== object.type) {
        throw new StatusError(
          422,
          'Invalid',
          `Secret "${object.metadata.name}" is invalid: type: Invalid value: "${object.type}": field is immutable`,
        );
      }
      const data: Json = { ...(object.data ?? {}) };
      for (const [key, value] of Object.entries(object.stringData ?? {})) {
        data[key] = Buffer.from(String(value), 'utf8').toString('base64');
      }
      delete object.stringData;
      object.data = data;
    } else {
      const specChanged = !previous || JSON.stringify(previous.spec) !== JSON.stringify(object.spec);
      object.metadata.generation = (previous?.metadata?.generation ?? 0) + (specChanged ? 1 : 0);
      object.status = previous?.status ?? {};
    }
    return object;
  }

  async function handle(req: http.IncomingMessage, raw: string): Promise<{ status: number; body: unknown }> {
    const auth = req.headers.authorization ?? '';
    if (auth !== `Bearer ${token}`) throw new StatusError(401, 'Unauthorized', 'Unauthorized');
    const url = new URL(req.url ?? '/', 'http://x');
    const m =
      /^\/api\/v1\/namespaces\/([^/]+)(?:\/(secrets)(?:\/([^/]+))?)?$/.exec(url.pathname) ??
      /^\/apis\/apps\/v1\/namespaces\/([^/]+)\/(deployments)(?:\/([^/]+))?$/.exec(url.pathname);
    if (!m) throw new StatusError(404, 'NotFound', 'the server could not find the requested resource');
    const ns = decodeURIComponent(m[1] as string);
    const resource = m[2] as Resource | undefined;
    const name = m[3] ? decodeURIComponent(m[3]) : undefined;
    if (!resource) {
      if (req.method !== 'GET')
        throw new StatusError(
          405,
          'MethodNotAllowed',
          'the server does not allow this method on the requested resource',
        );
      if (!namespaces.has(ns))
        throw new StatusError(404, 'NotFound', `namespaces "${ns}" not found`, {
          name: ns,
          kind: 'namespaces',
        });
      return {
        status: 200,
        body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns }, status: { phase: 'Active' } },
      };
    }
    const verb: Verb | undefined =
      req.method === 'GET' && name
        ? 'get'
        : req.method === 'POST' && !name
          ? 'create'
          : req.method === 'PUT' && name
            ? 'update'
            : req.method === 'PATCH' && name
              ? 'patch'
              : req.method === 'DELETE' && name
                ? 'delete'
                : undefined;
    if (!verb)
      throw new StatusError(
        405,
        'MethodNotAllowed',
        'the server does not allow this method on the requested resource',
      );
    if (!allowed(ns, resource, verb)) {
      const target = name
        ? `${resource}${GROUP[resource] ? `.${GROUP[resource]}` : ''} "${name}" is forbidden`
        : `${resource}${GROUP[resource] ? `.${GROUP[resource]}` : ''} is forbidden`;
      throw new StatusError(
        403,
        'Forbidden',
        `${target}: User "${USER}" cannot ${verb} resource "${resource}" in API group "${GROUP[resource]}" in the namespace "${ns}"`,
        { ...(name ? { name } : {}), ...(GROUP[resource] ? { group: GROUP[resource] } : {}), kind: resource },
      );
    }
    const store = objects[resource];
    const key = `${ns}/${name}`;
    const parse = (): Json => {
      try {
        const body = JSON.parse(raw);
        if (!body || typeof body !== 'object' || Array.isArray(body)) throw new Error('not an object');
        return body;
      } catch (err) {
        throw new StatusError(
          400,
          'BadRequest',
          `the body of the request could not be decoded: ${(err as Error).message}`,
        );
      }
    };
    const checkIdentity = (body: Json, expectName: string | undefined) => {
      const bodyNs = body.metadata?.namespace;
      if (bodyNs && bodyNs !== ns) {
        throw new StatusError(
          400,
          'BadRequest',
          'the namespace of the provided object does not match the namespace sent on the request',
        );
      }
      if (expectName !== undefined && body.metadata?.name !== expectName) {
        throw new StatusError(
          400,
          'BadRequest',
          `the name of the object (${body.metadata?.name}) does not match the name on the URL (${expectName})`,
        );
      }
    };
    const conflict = (n: string) =>
      new StatusError(
        409,
        'Conflict',
        `Operation cannot be fulfilled on ${resource}${GROUP[resource] ? `.${GROUP[resource]}` : ''} "${n}": the object has been modified; please apply your changes to the latest version and try again`,
        { name: n, ...(GROUP[resource] ? { group: GROUP[resource] } : {}), kind: resource },
      );

    switch (verb) {
      case 'get': {
        const found = store.get(key);
        if (!found) throw notFound(resource, name as string);
        const answer = structuredClone(found);
        const change = resource === 'secrets' ? interference.get(key) : undefined;
        if (change) {
          interference.delete(key);
          const changed = structuredClone(found);
          change(changed);
          store.set(key, { ...changed, metadata: { ...changed.metadata, resourceVersion: nextRv() } });
        }
        return { status: 200, body: answer };
      }
      case 'create': {
        const body = parse();
        checkIdentity(body, undefined);
        const n = body.metadata?.name;
        if (typeof n !== 'string' || n === '') {
          throw new StatusError(
            422,
            'Invalid',
            `${KIND[resource]} "" is invalid: metadata.name: Required value: name or generateName is required`,
          );
        }
        if (!namespaces.has(ns))
          throw new StatusError(404, 'NotFound', `namespaces "${ns}" not found`, {
            name: ns,
            kind: 'namespaces',
          });
        if (resource === 'secrets') checkSecret(body);
        if (store.has(`${ns}/${n}`)) {
          throw new StatusError(
            409,
            'AlreadyExists',
            `${resource}${GROUP[resource] ? `.${GROUP[resource]}` : ''} "${n}" already exists`,
            {
              name: n,
              ...(GROUP[resource] ? { group: GROUP[resource] } : {}),
              kind: resource,
            },
          );
        }
        const object = stored(resource, ns, body);
        store.set(`${ns}/${n}`, object);
        return { status: 201, body: object };
      }
      case 'update': {
        const body = parse();
        checkIdentity(body, name);
        const previous = store.get(key);
        if (!previous) throw notFound(resource, name as string);
        const rv = body.metadata?.resourceVersion;
        if (rv && rv !== previous.metadata.resourceVersion) throw conflict(name as string);
        if (resource === 'secrets') checkSecret(body);
        const object = stored(resource, ns, body, previous);
        store.set(key, object);
        return { status: 200, body: object };
      }
      case 'patch': {
        const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim() ?? '';
        if (!ACCEPTED_PATCH.includes(type)) {
          throw new StatusError(
            415,
            'UnsupportedMediaType',
            `the body of the request was in an unknown format - accepted media types include: ${ACCEPTED_PATCH.join(', ')}`,
          );
        }
        const patch = parse();
        const previous = store.get(key);
        if (!previous) throw notFound(resource, name as string);
        const rv = patch.metadata?.resourceVersion;
        if (rv && rv !== previous.metadata.resourceVersion) throw conflict(name as string);
        const merged = mergePatch(previous, patch) as Json;
        checkIdentity(merged, name);
        if (resource === 'secrets') checkSecret(merged);
        const object = stored(resource, ns, merged, previous);
        store.set(key, object);
        return { status: 200, body: object };
      }
      case 'delete': {
        const found = store.get(key);
        if (!found) throw notFound(resource, name as string);
        store.delete(key);
        return {
          status: 200,
          body: {
            kind: 'Status',
            apiVersion: 'v1',
            metadata: {},
            status: 'Success',
            details: { name, kind: resource },
          },
        };
      }
    }
  }

  const server = http.createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => {
      raw += chunk;
    });
    req.on('end', () => {
      handle(req, raw)
        .catch((err: unknown) => {
          const e =
            err instanceof StatusError
              ? err
              : new StatusError(500, 'InternalError', String((err as Error).message));
          return { status: e.code, body: status(e) };
        })
        .then(({ status: code, body }) => {
          requests.push({
            method: req.method ?? '',
            path: (req.url ?? '').split('?')[0] as string,
            ...(req.headers['content-type'] ? { contentType: req.headers['content-type'] } : {}),
            status: code,
          });
          res.writeHead(code, { 'content-type': 'application/json' });
          res.end(JSON.stringify(body));
        });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  const url = `http://127.0.0.1:${port}`;
  const dir = await mkdtemp(join(tmpdir(), 'kt-kube-'));
  const kubeconfig = join(dir, 'kubeconfig.json');
  await writeFile(
    kubeconfig,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      // client-node refuses plain HTTP unless TLS verification is off; the emulator serves HTTP on loopback only.
      clusters: [{ name: 'emulator', cluster: { server: url, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'keyturn', user: { token } }],
      contexts: [{ name: 'emulator', context: { cluster: 'emulator', user: 'keyturn' } }],
      'current-context': 'emulator',
    }),
    { mode: 0o600 },
  );

  return {
    url,
    token,
    kubeconfig,
    requests,
    addNamespace: (ns) => void namespaces.add(ns),
    grant(ns, resource, verbs) {
      const k = `${ns}/${resource}`;
      rbac.set(k, new Set([...(rbac.get(k) ?? []), ...verbs]));
    },
    revoke(ns, resource, verbs) {
      const k = `${ns}/${resource}`;
      if (!verbs) rbac.delete(k);
      else for (const v of verbs) rbac.get(k)?.delete(v);
    },
    secret(ns, name) {
      const found = objects.secrets.get(`${ns}/${name}`);
      if (!found) return undefined;
      const decoded = Object.fromEntries(
        Object.entries(found.data ?? {}).map(([k, v]) => [
          k,
          Buffer.from(String(v), 'base64').toString('utf8'),
        ]),
      );
      return { ...structuredClone(found), decoded };
    },
    deployment: (ns, name) => structuredClone(objects.deployments.get(`${ns}/${name}`)),
    addDeployment(ns, name) {
      namespaces.add(ns);
      const object = stored('deployments', ns, {
        metadata: { name },
        spec: {
          replicas: 1,
          selector: { matchLabels: { app: name } },
          template: {
            metadata: { labels: { app: name } },
            spec: { containers: [{ name: 'app', image: 'app:1' }] },
          },
        },
      });
      objects.deployments.set(`${ns}/${name}`, object);
      return structuredClone(object);
    },
    putSecret(ns, name, object) {
      namespaces.add(ns);
      const previous = objects.secrets.get(`${ns}/${name}`);
      const data = Object.fromEntries(
        Object.entries(object.data ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')]),
      );
      objects.secrets.set(
        `${ns}/${name}`,
        stored(
          'secrets',
          ns,
          {
            metadata: { name, labels: object.labels ?? {}, annotations: object.annotations ?? {} },
            type: 'Opaque',
            data,
          },
          previous,
        ),
      );
    },
    interfereAfterRead(ns, name, change) {
      interference.set(`${ns}/${name}`, change);
    },
    async close() {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections?.();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
