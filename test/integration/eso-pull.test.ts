// The External Secrets Operator route (config/eso/): read the manifests, do what ESO's webhook provider does with
// them against the real Keyturn API (render the URL and header templates, GET, apply result.jsonPath to the JSON
// reply), and check that what would land in the Kubernetes Secret logs in to PostgreSQL, before and after a rotation.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import {
  canLogin,
  dropPrefix,
  importCredential,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
  tokensFile,
  waitForRotation,
} from '../support/harness.ts';

const dir = new URL('../../config/eso/', import.meta.url);
const docs = (file: string) =>
  parseAllDocuments(readFileSync(new URL(file, dir), 'utf8')).map((d) => d.toJSON() as any);

/** The `{{ .remoteRef.key }}` and `{{ .<secret>.<key> }}` substitutions ESO's webhook templates use here. */
function render(template: string, values: Record<string, string>): string {
  return template.replace(/\{\{\s*\.([A-Za-z]+(?:\.[A-Za-z]+)*)\s*\}\}/g, (_, path: string) => {
    const value = values[path];
    if (value === undefined) throw new Error(`template names .${path}, which this test does not provide`);
    return value;
  });
}

/** A JSONPath of the `$.a.b` form, as the manifests use: enough to apply result.jsonPath. */
function jsonPath(path: string, value: unknown): unknown {
  const m = /^\$((?:\.[A-Za-z_][A-Za-z0-9_]*)*)$/.exec(path);
  if (!m) throw new Error(`jsonPath "${path}" is beyond the $.a.b form this test evaluates`);
  return (m[1] as string)
    .split('.')
    .filter(Boolean)
    .reduce<unknown>((at, key) => (at as Record<string, unknown> | undefined)?.[key], value);
}

const stores = docs('cluster-secret-store.yaml');
const [externalSecret] = docs('external-secret.yaml');
const [readerSecret] = docs('reader-token-secret.yaml');

let kt: Keyturn;
let tokens: Awaited<ReturnType<typeof tokensFile>>;
const env = testEnv();

beforeAll(async () => {
  tokens = await tokensFile({ eso: 'roles: [reader], credentials: ["eso-*"]' });
  env.env.KEYTURN_TOKENS_FILE = tokens.path;
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
});
afterAll(async () => {
  await kt?.close();
  await tokens?.remove();
  await dropPrefix(env.prefix);
});

describe('External Secrets Operator: pull through the webhook provider', () => {
  it('the manifests are what ESO expects: stores with URL, auth header and jsonPath; the token Secret labelled', () => {
    expect(stores.map((s) => s.kind)).toEqual(['ClusterSecretStore', 'ClusterSecretStore']);
    for (const store of stores) {
      expect(store.apiVersion).toBe('external-secrets.io/v1');
      const webhook = store.spec.provider.webhook;
      expect(webhook.url).toMatch(/\/v1\/credentials\/\{\{ \.remoteRef\.key \}\}\/secret$/);
      expect(webhook.method).toBe('GET');
      // A ClusterSecretStore must name the namespace of every Secret it reads.
      expect(webhook.secrets[0].secretRef).toEqual({
        name: readerSecret.metadata.name,
        namespace: readerSecret.metadata.namespace,
      });
    }
    expect(readerSecret.metadata.labels['external-secrets.io/type']).toBe('webhook');
    expect(externalSecret.kind).toBe('ExternalSecret');
    const used = externalSecret.spec.data.map(
      (d: any) => d.sourceRef?.storeRef.name ?? externalSecret.spec.secretStoreRef.name,
    );
    expect(used.sort()).toEqual(stores.map((s) => s.metadata.name).sort());
  });

  it('what ESO fetches with the reader token logs in, before and after a rotation', async () => {
    const connection = await registerPgConnection(kt);
    const cred = await importCredential(kt, connection, { strategy: 'alternating-users', idPrefix: 'eso' });
    /** Fetches every data entry of the ExternalSecret as ESO would: the target Secret's content. */
    const pull = async (): Promise<Record<string, string>> => {
      const out: Record<string, string> = {};
      for (const entry of externalSecret.spec.data) {
        const storeName = entry.sourceRef?.storeRef.name ?? externalSecret.spec.secretStoreRef.name;
        const webhook = stores.find((s) => s.metadata.name === storeName).spec.provider.webhook;
        // Keyturn's address in this test instead of the in-cluster Service's.
        const url = render(webhook.url, { 'remoteRef.key': cred.id }).replace(/^https?:\/\/[^/]+/, kt.url);
        const headers = Object.fromEntries(
          Object.entries(webhook.headers as Record<string, string>).map(([k, v]) => [
            k,
            render(v, { 'reader.token': tokens.tokens.eso as string }),
          ]),
        );
        const res = await fetch(url, { method: webhook.method, headers });
        expect(res.status).toBe(200);
        expect(res.headers.get('content-type')).toContain('application/json');
        const value = jsonPath(webhook.result.jsonPath, await res.json());
        expect(typeof value).toBe('string');
        out[entry.secretKey] = value as string;
      }
      return out;
    };
    const before = await pull();
    expect(before).toEqual({ PGPASSWORD: cred.password, PGUSER: cred.role.name });
    const rotate = await kt.api('POST', `/v1/credentials/${cred.id}/rotate`);
    expect((await waitForRotation(kt, rotate.body.rotationId)).status).toBe('succeeded');
    const after = await pull();
    expect(after.PGPASSWORD).not.toBe(before.PGPASSWORD);
    expect(after.PGUSER).toBe(`${cred.role.name}_clone`);
    expect(await canLogin(after.PGUSER as string, after.PGPASSWORD as string)).toBe(true);
    // The reader token reaches only its credentials: another id is refused, as ESO would report it.
    const other = stores[0].spec.provider.webhook.url.replace('{{ .remoteRef.key }}', 'payments-db');
    const denied = await fetch(other.replace(/^https?:\/\/[^/]+/, kt.url), {
      headers: { authorization: `Bearer ${tokens.tokens.eso}` },
    });
    expect([403, 404]).toContain(denied.status);
  });

  it('the tiny JSONPath refuses what it cannot evaluate instead of guessing', () => {
    expect(jsonPath('$.a.b', { a: { b: 'x' } })).toBe('x');
    expect(() => jsonPath('$..password', {})).toThrow(/beyond/);
  });
});
