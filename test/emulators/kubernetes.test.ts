// The contract the Kubernetes emulator is held to, through @kubernetes/client-node as Keyturn calls it. The shared
// part runs against the emulator and, when KUBECONFIG is set, against that real cluster (in namespace
// KEYTURN_TEST_K8S_NAMESPACE, default "default"; it creates and deletes a Secret and a Deployment with 0 replicas).
// The emulator-only part covers what a test cannot arrange on a real cluster: tokens, RBAC and namespaces.
import { randomBytes } from 'node:crypto';
import {
  ApiException,
  AppsV1Api,
  CoreV1Api,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
} from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type KubernetesEmulator, mergePatch, startKubernetesEmulator } from './kubernetes.ts';

interface Cluster {
  name: string;
  core: CoreV1Api;
  apps: AppsV1Api;
  namespace: string;
  /** Raw HTTP to the cluster's API with its credentials (content types the client does not send). */
  raw(
    method: string,
    path: string,
    body: string,
    contentType: string,
  ): Promise<{ status: number; body: any }>;
}

async function statusOf(work: Promise<unknown>): Promise<{ code: number; body: any }> {
  try {
    await work;
  } catch (err) {
    if (err instanceof ApiException) {
      return { code: err.code, body: typeof err.body === 'string' ? JSON.parse(err.body) : err.body };
    }
    throw err;
  }
  throw new Error('the call succeeded');
}

function clusterOf(name: string, kc: KubeConfig, namespace: string): Cluster {
  return {
    name,
    core: kc.makeApiClient(CoreV1Api),
    apps: kc.makeApiClient(AppsV1Api),
    namespace,
    async raw(method, path, body, contentType) {
      const server = kc.getCurrentCluster()?.server as string;
      const headers: Record<string, string> = { 'content-type': contentType };
      const opts = { headers } as never;
      await kc.applyToFetchOptions(opts);
      const res = await fetch(`${server}${path}`, { method, headers, body });
      return { status: res.status, body: await res.json() };
    },
  };
}

let emulator: KubernetesEmulator;
const clusters: Cluster[] = [];

beforeAll(async () => {
  emulator = await startKubernetesEmulator();
  emulator.addNamespace('apps');
  for (const resource of ['secrets', 'deployments'] as const) {
    emulator.grant('apps', resource, ['get', 'create', 'update', 'patch', 'delete']);
  }
  const kc = new KubeConfig();
  kc.loadFromFile(emulator.kubeconfig);
  clusters.push(clusterOf('emulator', kc, 'apps'));
  if (process.env.KUBECONFIG) {
    const real = new KubeConfig();
    real.loadFromDefault();
    clusters.push(clusterOf('KUBECONFIG cluster', real, process.env.KEYTURN_TEST_K8S_NAMESPACE ?? 'default'));
  } else {
    console.log(
      'kubernetes contract: KUBECONFIG is not set, so the real-cluster half is skipped; the emulator half runs',
    );
  }
});

afterAll(async () => {
  await emulator?.close();
});

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe.each(['emulator', 'KUBECONFIG cluster'])('Kubernetes API contract: %s', (which) => {
  const cluster = () => clusters.find((c) => c.name === which);
  const run = (name: string, fn: (c: Cluster) => Promise<void>) =>
    it(name, async (ctx) => {
      const c = cluster();
      if (!c) {
        console.log(`skipped "${name}" on ${which}: KUBECONFIG is not set`);
        ctx.skip();
        return;
      }
      await fn(c);
    });

  run('a Secret is created, read back base64, and a second create is 409 AlreadyExists', async (c) => {
    const name = `kt-contract-${randomBytes(3).toString('hex')}`;
    try {
      const created = await c.core.createNamespacedSecret({
        namespace: c.namespace,
        body: { metadata: { name, labels: { a: 'b' } }, type: 'Opaque', data: { password: b64('s3cret') } },
      });
      expect(created.metadata?.resourceVersion).toMatch(/^\d+$/);
      const read = await c.core.readNamespacedSecret({ namespace: c.namespace, name });
      expect(read.data?.password).toBe(b64('s3cret'));
      expect(read.type).toBe('Opaque');
      const again = await statusOf(
        c.core.createNamespacedSecret({ namespace: c.namespace, body: { metadata: { name }, data: {} } }),
      );
      expect(again.code).toBe(409);
      expect(again.body).toMatchObject({ kind: 'Status', reason: 'AlreadyExists', code: 409 });
    } finally {
      await c.core.deleteNamespacedSecret({ namespace: c.namespace, name }).catch(() => {});
    }
  });

  run('stringData is folded into data and not stored', async (c) => {
    const name = `kt-contract-${randomBytes(3).toString('hex')}`;
    try {
      await c.core.createNamespacedSecret({
        namespace: c.namespace,
        body: { metadata: { name }, stringData: { user: 'app' } },
      });
      const read = await c.core.readNamespacedSecret({ namespace: c.namespace, name });
      expect(read.data?.user).toBe(b64('app'));
      expect(read.stringData).toBeUndefined();
    } finally {
      await c.core.deleteNamespacedSecret({ namespace: c.namespace, name }).catch(() => {});
    }
  });

  run('a replace with a stale resourceVersion is 409 Conflict; with the current one it lands', async (c) => {
    const name = `kt-contract-${randomBytes(3).toString('hex')}`;
    try {
      const created = await c.core.createNamespacedSecret({
        namespace: c.namespace,
        body: { metadata: { name }, data: { v: b64('1') } },
      });
      const stale = created.metadata?.resourceVersion as string;
      const second = await c.core.replaceNamespacedSecret({
        namespace: c.namespace,
        name,
        body: { metadata: { name, resourceVersion: stale }, data: { v: b64('2') } },
      });
      expect(second.metadata?.resourceVersion).not.toBe(stale);
      const conflict = await statusOf(
        c.core.replaceNamespacedSecret({
          namespace: c.namespace,
          name,
          body: { metadata: { name, resourceVersion: stale }, data: { v: b64('3') } },
        }),
      );
      expect(conflict.code).toBe(409);
      expect(conflict.body).toMatchObject({ reason: 'Conflict', code: 409 });
      expect(conflict.body.message).toContain('the object has been modified');
      const read = await c.core.readNamespacedSecret({ namespace: c.namespace, name });
      expect(read.data?.v).toBe(b64('2'));
    } finally {
      await c.core.deleteNamespacedSecret({ namespace: c.namespace, name }).catch(() => {});
    }
  });

  run('a missing Secret is 404 NotFound, for get and for replace', async (c) => {
    const name = `kt-missing-${randomBytes(3).toString('hex')}`;
    const get = await statusOf(c.core.readNamespacedSecret({ namespace: c.namespace, name }));
    expect(get.code).toBe(404);
    expect(get.body).toMatchObject({
      kind: 'Status',
      reason: 'NotFound',
      details: { name, kind: 'secrets' },
    });
    const put = await statusOf(
      c.core.replaceNamespacedSecret({
        namespace: c.namespace,
        name,
        body: { metadata: { name }, data: {} },
      }),
    );
    expect(put.code).toBe(404);
  });

  run('a Secret data key outside [-._a-zA-Z0-9] is 422 Invalid', async (c) => {
    const name = `kt-contract-${randomBytes(3).toString('hex')}`;
    const bad = await statusOf(
      c.core.createNamespacedSecret({
        namespace: c.namespace,
        body: { metadata: { name }, data: { 'bad key': b64('x') } },
      }),
    );
    expect(bad.code).toBe(422);
    expect(bad.body).toMatchObject({ reason: 'Invalid' });
  });

  run('a Deployment pod-template annotation is merge-patched, as kubectl rollout restart does', async (c) => {
    const name = `kt-contract-${randomBytes(3).toString('hex')}`;
    try {
      await c.apps.createNamespacedDeployment({
        namespace: c.namespace,
        body: {
          metadata: { name },
          spec: {
            replicas: 0,
            selector: { matchLabels: { app: name } },
            template: {
              metadata: { labels: { app: name } },
              spec: { containers: [{ name: 'app', image: 'registry.k8s.io/pause:3.10' }] },
            },
          },
        },
      });
      const before = await c.apps.readNamespacedDeployment({ namespace: c.namespace, name });
      const at = new Date().toISOString();
      const after = await c.apps.patchNamespacedDeployment(
        {
          namespace: c.namespace,
          name,
          body: {
            spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': at } } } },
          },
        },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      expect(after.spec?.template.metadata?.annotations?.['kubectl.kubernetes.io/restartedAt']).toBe(at);
      expect(after.spec?.template.metadata?.labels).toEqual({ app: name });
      expect(after.metadata?.generation).toBe((before.metadata?.generation ?? 0) + 1);
      // A content type the patch endpoint does not take is 415 (plain JSON; the emulator also refuses JSON Patch).
      const plain = await c.raw(
        'PATCH',
        `/apis/apps/v1/namespaces/${c.namespace}/deployments/${name}`,
        '{}',
        'application/json',
      );
      expect(plain.status).toBe(415);
      expect(plain.body).toMatchObject({ reason: 'UnsupportedMediaType' });
    } finally {
      await c.apps.deleteNamespacedDeployment({ namespace: c.namespace, name }).catch(() => {});
    }
  });

  run('a patch of a missing Deployment is 404', async (c) => {
    const missing = await statusOf(
      c.apps.patchNamespacedDeployment(
        { namespace: c.namespace, name: `kt-missing-${randomBytes(3).toString('hex')}`, body: { spec: {} } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      ),
    );
    expect(missing.code).toBe(404);
  });
});

describe('Kubernetes emulator only: authentication, RBAC, namespaces', () => {
  it('a wrong bearer token is 401 Unauthorized', async () => {
    const res = await fetch(`${emulator.url}/api/v1/namespaces/apps/secrets/x`, {
      headers: { authorization: 'Bearer nope' },
    });
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ kind: 'Status', reason: 'Unauthorized', code: 401 });
  });

  it('RBAC: a verb not granted in the namespace is 403 Forbidden naming the verb, resource and namespace', async () => {
    emulator.addNamespace('locked');
    emulator.grant('locked', 'secrets', ['get']);
    const kc = new KubeConfig();
    kc.loadFromFile(emulator.kubeconfig);
    const core = kc.makeApiClient(CoreV1Api);
    const create = await statusOf(
      core.createNamespacedSecret({ namespace: 'locked', body: { metadata: { name: 's' }, data: {} } }),
    );
    expect(create.code).toBe(403);
    expect(create.body.message).toBe(
      'secrets is forbidden: User "system:serviceaccount:keyturn:keyturn" cannot create resource "secrets" in API group "" in the namespace "locked"',
    );
    // get is granted: the answer is the object's absence, not a refusal.
    expect((await statusOf(core.readNamespacedSecret({ namespace: 'locked', name: 's' }))).code).toBe(404);
    emulator.revoke('locked', 'secrets');
    expect((await statusOf(core.readNamespacedSecret({ namespace: 'locked', name: 's' }))).code).toBe(403);
    const apps = kc.makeApiClient(AppsV1Api);
    const deny = await statusOf(apps.readNamespacedDeployment({ namespace: 'locked', name: 'd' }));
    expect(deny.body.message).toContain('cannot get resource "deployments" in API group "apps"');
  });

  it('a create in a namespace that does not exist is 404 naming the namespace', async () => {
    emulator.grant('ghost', 'secrets', ['create']);
    const kc = new KubeConfig();
    kc.loadFromFile(emulator.kubeconfig);
    const core = kc.makeApiClient(CoreV1Api);
    const res = await statusOf(
      core.createNamespacedSecret({ namespace: 'ghost', body: { metadata: { name: 's' }, data: {} } }),
    );
    expect(res.code).toBe(404);
    expect(res.body.message).toBe('namespaces "ghost" not found');
  });

  it('data that is not base64 is 400; a body naming another namespace is 400', async () => {
    const post = (body: object) =>
      fetch(`${emulator.url}/api/v1/namespaces/apps/secrets`, {
        method: 'POST',
        headers: { authorization: `Bearer ${emulator.token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    expect((await post({ metadata: { name: 'b' }, data: { k: 'not base64!' } })).status).toBe(400);
    expect((await post({ metadata: { name: 'b', namespace: 'other' }, data: {} })).status).toBe(400);
  });

  it('interfereAfterRead: the read answers the old object, and a replace with its resourceVersion conflicts', async () => {
    const kc = new KubeConfig();
    kc.loadFromFile(emulator.kubeconfig);
    const core = kc.makeApiClient(CoreV1Api);
    emulator.putSecret('apps', 'raced', { data: { v: '1' } });
    emulator.interfereAfterRead('apps', 'raced', (s) => {
      s.data.v = b64('other');
    });
    const read = await core.readNamespacedSecret({ namespace: 'apps', name: 'raced' });
    expect(read.data?.v).toBe(b64('1'));
    const res = await statusOf(
      core.replaceNamespacedSecret({
        namespace: 'apps',
        name: 'raced',
        body: { ...read, data: { v: b64('2') } },
      }),
    );
    expect(res.code).toBe(409);
    expect(emulator.secret('apps', 'raced')?.decoded.v).toBe('other');
  });

  it('mergePatch follows RFC 7386 (null removes, objects merge, arrays replace)', () => {
    expect(mergePatch({ a: { b: 1, c: 2 }, l: [1, 2] }, { a: { b: null, d: 3 }, l: [3] })).toEqual({
      a: { c: 2, d: 3 },
      l: [3],
    });
  });
});
