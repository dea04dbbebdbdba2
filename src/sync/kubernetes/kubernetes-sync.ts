// Kubernetes Secret push (SPEC, "Kubernetes sync"), with @kubernetes/client-node: one Secret per sync entry, owned
// and labelled by Keyturn, annotated with the version it holds; then `kubectl rollout restart` of the Deployments
// named, as kubectl does it (a merge patch of the pod template's `kubectl.kubernetes.io/restartedAt`).
//
// Monotonic: a push reads the Secret, compares the version it holds with its own, and replaces it with the
// resourceVersion it read, so a concurrent writer makes the replace fail with 409 Conflict (then it reads again).
// A newer version that still works is never overwritten; one that no longer works (a rolled-back single-user
// rotation's pending password) is.
//
// Restart once per version: a Deployment is restarted when its restartedAt is older than the Secret's synced-at
// annotation, so a retried job restarts what the failed attempt did not, and a second push of the same version
// restarts nothing.
import {
  ApiException,
  AppsV1Api,
  CoreV1Api,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  type V1Secret,
} from '@kubernetes/client-node';
import type { KubernetesSyncSpec, SyncField } from '../../registry/types.ts';
import {
  SyncError,
  type SyncPayload,
  type SyncResult,
  type SyncTarget,
  type VersionOracle,
} from '../types.ts';

export const MANAGED_BY_LABEL = 'app.kubernetes.io/managed-by';
export const MANAGED_BY = 'keyturn';
export const ANNOTATIONS = {
  credential: 'keyturn.io/credential',
  version: 'keyturn.io/version',
  versionCreatedAt: 'keyturn.io/version-created-at',
  rotatedAt: 'keyturn.io/rotated-at',
  syncedAt: 'keyturn.io/synced-at',
} as const;
export const RESTARTED_AT = 'kubectl.kubernetes.io/restartedAt';

const DEFAULT_KEYS: Record<SyncField, string> = {
  username: 'username',
  password: 'password',
  host: 'host',
  port: 'port',
  database: 'database',
  // AWS IAM credentials: the key's id (its secret is the password).
  accessKeyId: 'accessKeyId',
};
/** Reads and replaces of one push before it gives up on a Secret that keeps changing (the job then retries). */
const CONFLICT_ROUNDS = 5;

export type KubernetesAccess = { kubeconfig: string[] } | { inCluster: true } | undefined;

/** The client configuration: the KUBECONFIG files merged as kubectl merges them, or the pod's service account. */
export function kubeConfigOf(access: NonNullable<KubernetesAccess>): KubeConfig {
  const kc = new KubeConfig();
  if ('inCluster' in access) {
    kc.loadFromCluster();
    return kc;
  }
  const [first, ...rest] = access.kubeconfig;
  kc.loadFromFile(first as string);
  for (const file of rest) {
    const more = new KubeConfig();
    more.loadFromFile(file);
    kc.mergeConfig(more);
  }
  return kc;
}

/** The Secret data a payload gives under a spec's key names (base64, as the API wants it). */
export function secretData(spec: KubernetesSyncSpec, payload: SyncPayload): Record<string, string> {
  const keys = spec.keys ?? DEFAULT_KEYS;
  const { fields } = payload;
  const values: Record<SyncField, string | undefined> = {
    username: fields.username,
    password: fields.password,
    host: fields.host,
    port: String(fields.port),
    database: fields.database,
    accessKeyId: fields.accessKeyId,
  };
  const data: Record<string, string> = {};
  for (const [field, key] of Object.entries(keys) as [SyncField, string | undefined][]) {
    const value = values[field];
    if (key && value !== undefined) data[key] = Buffer.from(value, 'utf8').toString('base64');
  }
  return data;
}

function statusMessage(err: ApiException<unknown>): string {
  const body = err.body;
  try {
    const parsed = typeof body === 'string' ? JSON.parse(body) : body;
    if (
      parsed &&
      typeof parsed === 'object' &&
      typeof (parsed as { message?: unknown }).message === 'string'
    ) {
      return ((parsed as { message: string }).message as string).slice(0, 300);
    }
  } catch {
    // not JSON
  }
  return `HTTP ${err.code}`;
}

/** A failed API call as a SyncError an operator can act on: what was refused, and what to grant or create. */
function refusal(err: unknown, verb: string, resource: 'secrets' | 'deployments', where: string): Error {
  const [namespace] = where.split('/');
  if (err instanceof ApiException) {
    const said = statusMessage(err);
    if (err.code === 403) {
      return new SyncError(
        'forbidden',
        `Kubernetes refused to ${verb} ${resource} ${where} (403 Forbidden: ${said}). The identity Keyturn uses needs "${verb}" on "${resource}"${resource === 'deployments' ? ' (API group apps)' : ''} in namespace "${namespace}": a Role and RoleBinding there (the Helm chart makes them for kubernetesSync.namespaces)`,
      );
    }
    if (err.code === 401) {
      return new SyncError(
        'unauthorized',
        `Kubernetes did not accept Keyturn's credentials (401) when it tried to ${verb} ${resource} ${where}: check the service-account token or the kubeconfig user`,
      );
    }
    if (err.code === 404) {
      return new SyncError(
        'not-found',
        resource === 'deployments'
          ? `Deployment ${where} does not exist (404: ${said}): create it, or take it out of the credential's rolloutRestart`
          : `Namespace "${namespace}" does not exist (404: ${said}): create it, or change the credential's sync namespace`,
      );
    }
    if (err.code === 409) {
      return new SyncError('conflict', `Kubernetes answered 409 to ${verb} ${resource} ${where}: ${said}`);
    }
    return new SyncError(
      'unavailable',
      `Kubernetes answered ${err.code} to ${verb} ${resource} ${where}: ${said}`,
    );
  }
  return new SyncError(
    'unavailable',
    `the Kubernetes API server could not be reached to ${verb} ${resource} ${where}: ${(err as Error).message ?? String(err)}`,
  );
}

const isStatus = (err: unknown, code: number): boolean => err instanceof ApiException && err.code === code;

export function kubernetesSync(access: KubernetesAccess): SyncTarget<KubernetesSyncSpec> {
  let clients: { core: CoreV1Api; apps: AppsV1Api } | undefined;
  const api = () => {
    if (!access) {
      throw new SyncError(
        'unavailable',
        'this Keyturn process has no Kubernetes configuration: set KUBECONFIG, or run it in a pod with a service account',
      );
    }
    if (!clients) {
      const kc = kubeConfigOf(access);
      clients = { core: kc.makeApiClient(CoreV1Api), apps: kc.makeApiClient(AppsV1Api) };
    }
    return clients;
  };

  async function readSecret(namespace: string, name: string): Promise<V1Secret | null> {
    try {
      return await api().core.readNamespacedSecret({ namespace, name });
    } catch (err) {
      if (isStatus(err, 404)) return null;
      throw refusal(err, 'get', 'secrets', `${namespace}/${name}`);
    }
  }

  async function writeSecret(
    spec: KubernetesSyncSpec,
    payload: SyncPayload,
    oracle: VersionOracle,
  ): Promise<{ secret: SyncResult['secret']; conflicts: number; syncedAt?: string }> {
    const { namespace, name } = spec;
    const where = `${namespace}/${name}`;
    let conflicts = 0;
    for (let round = 0; round < CONFLICT_ROUNDS; round++) {
      if (!(await oracle.isLive(payload.versionId))) return { secret: 'superseded', conflicts };
      const existing = await readSecret(namespace, name);
      const syncedAt = new Date().toISOString();
      const body: V1Secret = {
        apiVersion: 'v1',
        kind: 'Secret',
        type: 'Opaque',
        metadata: {
          name,
          namespace,
          labels: { ...(existing?.metadata?.labels ?? {}), [MANAGED_BY_LABEL]: MANAGED_BY },
          annotations: {
            ...(existing?.metadata?.annotations ?? {}),
            [ANNOTATIONS.credential]: payload.credentialId,
            [ANNOTATIONS.version]: payload.versionId,
            [ANNOTATIONS.versionCreatedAt]: payload.createdAt,
            [ANNOTATIONS.rotatedAt]: payload.rotatedAt,
            [ANNOTATIONS.syncedAt]: syncedAt,
          },
        },
        data: secretData(spec, payload),
      };
      if (!existing) {
        try {
          await api().core.createNamespacedSecret({ namespace, body });
          return { secret: 'created', conflicts, syncedAt };
        } catch (err) {
          // Created by someone else since the read: read it again and decide.
          if (isStatus(err, 409)) {
            conflicts++;
            continue;
          }
          throw refusal(err, 'create', 'secrets', where);
        }
      }
      const labels = existing.metadata?.labels ?? {};
      const annotations = existing.metadata?.annotations ?? {};
      if (labels[MANAGED_BY_LABEL] !== MANAGED_BY) {
        throw new SyncError(
          'not-keyturns',
          `Secret ${where} exists and is not Keyturn's (no label ${MANAGED_BY_LABEL}=${MANAGED_BY}), so it was left alone: delete it, or label it so to hand it over, or choose another name`,
        );
      }
      const holder = annotations[ANNOTATIONS.credential];
      if (holder && holder !== payload.credentialId) {
        throw new SyncError(
          'not-keyturns',
          `Secret ${where} holds credential "${holder}", not "${payload.credentialId}": two credentials cannot share one Secret; choose another name`,
        );
      }
      const theirs = annotations[ANNOTATIONS.version];
      if (theirs === payload.versionId) {
        return { secret: 'unchanged', conflicts, syncedAt: annotations[ANNOTATIONS.syncedAt] ?? syncedAt };
      }
      const theirsCreated = Date.parse(annotations[ANNOTATIONS.versionCreatedAt] ?? '');
      if (theirs && theirsCreated > Date.parse(payload.createdAt) && (await oracle.isLive(theirs))) {
        return { secret: 'kept-newer', conflicts };
      }
      body.metadata = { ...body.metadata, resourceVersion: existing.metadata?.resourceVersion as string };
      try {
        await api().core.replaceNamespacedSecret({ namespace, name, body });
        return { secret: 'replaced', conflicts, syncedAt };
      } catch (err) {
        // Changed since the read (409), or deleted since (404): read again and decide again.
        if (isStatus(err, 409) || isStatus(err, 404)) {
          conflicts++;
          continue;
        }
        throw refusal(err, 'update', 'secrets', where);
      }
    }
    throw new SyncError(
      'conflict',
      `Secret ${where} changed under every one of ${CONFLICT_ROUNDS} writes (409 Conflict each time); something else writes it: the job retries`,
    );
  }

  async function restart(namespace: string, target: string, syncedAt: string): Promise<boolean> {
    const name = target.slice('deployment/'.length);
    const where = `${namespace}/${name}`;
    let restartedAt: string | undefined;
    try {
      const deployment = await api().apps.readNamespacedDeployment({ namespace, name });
      restartedAt = deployment.spec?.template?.metadata?.annotations?.[RESTARTED_AT];
    } catch (err) {
      throw refusal(err, 'get', 'deployments', where);
    }
    if (restartedAt && Date.parse(restartedAt) >= Date.parse(syncedAt)) return false;
    try {
      await api().apps.patchNamespacedDeployment(
        {
          namespace,
          name,
          body: {
            spec: { template: { metadata: { annotations: { [RESTARTED_AT]: new Date().toISOString() } } } },
          },
        },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
    } catch (err) {
      throw refusal(err, 'patch', 'deployments', where);
    }
    return true;
  }

  return {
    type: 'kubernetes',
    validate(specs) {
      const problems: string[] = [];
      const seen = new Set<string>();
      specs.forEach((spec, i) => {
        const at = `sync[${i}]`;
        const where = `${spec.namespace}/${spec.name}`;
        if (seen.has(where)) problems.push(`${at}: Secret ${where} is named twice`);
        seen.add(where);
        if (spec.keys) {
          if (!spec.keys.password) problems.push(`${at}.keys: must name a key for password`);
          const byKey = new Map<string, string>();
          for (const [field, key] of Object.entries(spec.keys)) {
            if (!key) continue;
            const other = byKey.get(key);
            if (other) problems.push(`${at}.keys: ${other} and ${field} are both written to key "${key}"`);
            byKey.set(key, field);
          }
        }
      });
      return problems;
    },
    unavailable() {
      return access
        ? undefined
        : 'this Keyturn process has no Kubernetes configuration (neither KUBECONFIG nor an in-cluster service account), so it cannot write Kubernetes Secrets';
    },
    async push(spec, payload, oracle) {
      const written = await writeSecret(spec, payload, oracle);
      const restarted: string[] = [];
      if (written.syncedAt && written.secret !== 'superseded' && written.secret !== 'kept-newer') {
        for (const target of spec.rolloutRestart ?? []) {
          if (await restart(spec.namespace, target, written.syncedAt)) restarted.push(target);
        }
      }
      return { secret: written.secret, restarted, conflicts: written.conflicts };
    },
  };
}
