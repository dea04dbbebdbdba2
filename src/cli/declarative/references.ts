// Secret references of the declarative files, resolved by the CLI on the machine that runs it (a CI runner, an
// operator's laptop): the service never learns where a secret came from, and the files in Git hold only the name of
// a variable, a file or a secret in a store the runner can already read.
//
//   {fromEnv: NAME}                          an environment variable
//   {fromFile: path}                         a file (relative to the YAML file), one trailing newline removed
//   {fromVault: {path, key}}                 a key of a Vault KV v2 secret: path "<mount>/<secret path>", read with
//                                            VAULT_ADDR and VAULT_TOKEN (VAULT_NAMESPACE when set)
//   {fromAws: {secretId, key}}               a key of an AWS Secrets Manager secret (JSON), or its whole string
//                                            without `key`; the SDK's usual credentials, region and endpoint
//                                            variables (AWS_REGION, AWS_ENDPOINT_URL_SECRETS_MANAGER…)
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';

export type Reference = (
  | { fromEnv: string }
  | { fromFile: string }
  | { fromVault: { path: string; key: string } }
  | { fromAws: { secretId: string; key?: string; region?: string } }
) & {
  /** The YAML file the reference is written in: fromFile paths are relative to it. */
  baseFile?: string;
};

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,254}$/;
const FORMS = '{fromEnv: NAME}, {fromFile: path}, {fromVault: {path, key}} or {fromAws: {secretId, key}}';

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function onlyKeys(v: Record<string, unknown>, allowed: string[]): string | undefined {
  return Object.keys(v).find((k) => !allowed.includes(k));
}

const text = (v: unknown, max = 2048) => typeof v === 'string' && v.length > 0 && v.length <= max;

/** The reference a secret field holds, or a message saying what is wrong with it. */
export function parseReference(value: unknown): Reference | string {
  if (!isObject(value) || Object.keys(value).length !== 1) {
    return `must be a reference: one of ${FORMS}`;
  }
  const [form, arg] = Object.entries(value)[0]!;
  switch (form) {
    case 'fromEnv':
      return typeof arg === 'string' && ENV_NAME.test(arg)
        ? { fromEnv: arg }
        : 'fromEnv must name an environment variable (letters, digits and _)';
    case 'fromFile':
      return text(arg, 4096) ? { fromFile: arg as string } : 'fromFile must be a path';
    case 'fromVault': {
      if (!isObject(arg) || !text(arg.path) || !text(arg.key, 256))
        return 'fromVault must be {path: "<mount>/<secret path>", key: "<key of the secret>"}';
      const extra = onlyKeys(arg, ['path', 'key']);
      if (extra) return `fromVault.${extra} is not a field of fromVault (path, key)`;
      if (!String(arg.path).includes('/'))
        return 'fromVault.path must be "<mount>/<secret path>", e.g. secret/apps/db';
      return { fromVault: { path: String(arg.path), key: String(arg.key) } };
    }
    case 'fromAws': {
      if (!isObject(arg) || !text(arg.secretId) || (arg.key !== undefined && !text(arg.key, 256)))
        return 'fromAws must be {secretId: "<name or ARN>", key: "<JSON key>"} (key optional: the whole string)';
      const extra = onlyKeys(arg, ['secretId', 'key', 'region']);
      if (extra) return `fromAws.${extra} is not a field of fromAws (secretId, key, region)`;
      return {
        fromAws: {
          secretId: String(arg.secretId),
          ...(arg.key !== undefined ? { key: String(arg.key) } : {}),
          ...(typeof arg.region === 'string' ? { region: arg.region } : {}),
        },
      };
    }
    default:
      return `"${form}" is not a reference: use ${FORMS}`;
  }
}

/** Where a reference points, in words for messages: never the value. */
export function describeReference(ref: Reference): string {
  if ('fromEnv' in ref) return `environment variable ${ref.fromEnv}`;
  if ('fromFile' in ref) return `file ${ref.fromFile}`;
  if ('fromVault' in ref) return `Vault ${ref.fromVault.path} key ${ref.fromVault.key}`;
  return `AWS secret ${ref.fromAws.secretId}${ref.fromAws.key ? ` key ${ref.fromAws.key}` : ''}`;
}

export class UnreadableReferenceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnreadableReferenceError';
  }
}

/**
 * Resolves references, each once per run (a secret named by two objects is read once). Messages say which reference
 * failed and why; none carries a value.
 */
export class ReferenceResolver {
  readonly #cache = new Map<string, Promise<string>>();
  readonly #env: NodeJS.ProcessEnv;
  #aws: Map<string, SecretsManagerClient> = new Map();

  constructor(env: NodeJS.ProcessEnv = process.env) {
    this.#env = env;
  }

  resolve(ref: Reference): Promise<string> {
    const { baseFile: _base, ...where } = ref;
    const key =
      'fromFile' in ref ? `file:${this.#filePath(ref.fromFile, ref.baseFile)}` : JSON.stringify(where);
    let value = this.#cache.get(key);
    if (!value) {
      value = this.#read(ref).then((v) => {
        if (v.length === 0) throw new UnreadableReferenceError(`${describeReference(ref)} is empty`);
        return v;
      });
      this.#cache.set(key, value);
    }
    return value;
  }

  close(): void {
    for (const client of this.#aws.values()) client.destroy();
    this.#aws.clear();
  }

  #filePath(path: string, baseFile: string | undefined): string {
    return isAbsolute(path) || !baseFile ? resolve(path) : resolve(dirname(baseFile), path);
  }

  async #read(ref: Reference): Promise<string> {
    if ('fromEnv' in ref) {
      const v = this.#env[ref.fromEnv];
      if (v === undefined)
        throw new UnreadableReferenceError(`environment variable ${ref.fromEnv} is not set`);
      return v;
    }
    if ('fromFile' in ref) {
      const path = this.#filePath(ref.fromFile, ref.baseFile);
      try {
        return (await readFile(path, 'utf8')).replace(/\r?\n$/, '');
      } catch (err) {
        throw new UnreadableReferenceError(
          `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`,
        );
      }
    }
    if ('fromVault' in ref) return this.#vault(ref.fromVault);
    return this.#awsSecret(ref.fromAws);
  }

  async #vault(ref: { path: string; key: string }): Promise<string> {
    const addr = this.#env.VAULT_ADDR;
    const token = this.#env.VAULT_TOKEN;
    if (!addr || !token)
      throw new UnreadableReferenceError(
        `Vault ${ref.path}: set VAULT_ADDR and VAULT_TOKEN to read fromVault references`,
      );
    const [mount, ...rest] = ref.path.replace(/^\/+/, '').split('/');
    const url = `${addr.replace(/\/+$/, '')}/v1/${mount}/data/${rest.map(encodeURIComponent).join('/')}`;
    let res: Response;
    try {
      res = await fetch(url, {
        headers: {
          'x-vault-token': token,
          ...(this.#env.VAULT_NAMESPACE ? { 'x-vault-namespace': this.#env.VAULT_NAMESPACE } : {}),
        },
        signal: AbortSignal.timeout(15_000),
      });
    } catch (err) {
      throw new UnreadableReferenceError(
        `Vault ${ref.path}: cannot reach ${addr} (${(err as Error).message})`,
      );
    }
    if (res.status === 404)
      throw new UnreadableReferenceError(`Vault ${ref.path}: no such secret (KV v2, mount "${mount}")`);
    if (!res.ok) {
      await res.body?.cancel().catch(() => {});
      throw new UnreadableReferenceError(
        `Vault ${ref.path}: HTTP ${res.status} (check VAULT_TOKEN's policy)`,
      );
    }
    const body = (await res.json().catch(() => undefined)) as { data?: { data?: Record<string, unknown> } };
    const v = body?.data?.data?.[ref.key];
    if (typeof v !== 'string')
      throw new UnreadableReferenceError(`Vault ${ref.path}: the secret has no text key "${ref.key}"`);
    return v;
  }

  async #awsSecret(ref: { secretId: string; key?: string; region?: string }): Promise<string> {
    const region = ref.region ?? this.#env.AWS_REGION ?? this.#env.AWS_DEFAULT_REGION;
    if (!region)
      throw new UnreadableReferenceError(
        `AWS secret ${ref.secretId}: set AWS_REGION (or the reference's region)`,
      );
    // Loaded only when a file names AWS: the SDK is large, and most commands never need it.
    const { GetSecretValueCommand, SecretsManagerClient } = await import('@aws-sdk/client-secrets-manager');
    let client = this.#aws.get(region);
    if (!client) {
      client = new SecretsManagerClient({ region, maxAttempts: 3 });
      this.#aws.set(region, client);
    }
    let secret: string | undefined;
    try {
      secret = (await client.send(new GetSecretValueCommand({ SecretId: ref.secretId }))).SecretString;
    } catch (err) {
      const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
      throw new UnreadableReferenceError(
        `AWS secret ${ref.secretId}: ${e.name ?? 'error'}${e.$metadata?.httpStatusCode ? ` (HTTP ${e.$metadata.httpStatusCode})` : ''}`,
      );
    }
    if (secret === undefined)
      throw new UnreadableReferenceError(`AWS secret ${ref.secretId}: it holds no string`);
    if (ref.key === undefined) return secret;
    let parsed: unknown;
    try {
      parsed = JSON.parse(secret);
    } catch {
      throw new UnreadableReferenceError(
        `AWS secret ${ref.secretId}: not JSON, so it has no key "${ref.key}" (leave key out for the whole string)`,
      );
    }
    const v = (parsed as Record<string, unknown>)?.[ref.key];
    if (typeof v !== 'string')
      throw new UnreadableReferenceError(`AWS secret ${ref.secretId}: no text key "${ref.key}"`);
    return v;
  }
}
