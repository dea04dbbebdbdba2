// The map of secret stores by type, and how a credential or connection names its secret in one.
import { noteSecret } from '../crypto/secret-scope.ts';
import {
  adminConnectionOf,
  type Connection,
  type CredentialSpec,
  type StoreSpec,
} from '../registry/types.ts';
import { type SecretDocument, type SecretRef, type SecretStore, StoreNotConfiguredError } from './types.ts';

/** Notes the password of a secret document (or of a version's `value`) in the current secret scope. */
function notePasswordOf(value: unknown): void {
  if (!value || typeof value !== 'object') return;
  const doc = (value as { value?: unknown }).value ?? value;
  if (doc && typeof doc === 'object') noteSecret((doc as { password?: unknown }).password);
}

/**
 * A store whose every call notes the passwords it is given and returns (finding 10 of issue 11): whatever operation
 * reads an admin or credential secret, the scrubber then knows it.
 */
function notingSecrets(store: SecretStore): SecretStore {
  return new Proxy(store, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        for (const arg of args) notePasswordOf(arg);
        const result = (value as (...a: unknown[]) => unknown).apply(target, args);
        return result instanceof Promise
          ? result.then((r: unknown) => {
              notePasswordOf(r);
              return r;
            })
          : result;
      };
    },
  });
}

export class StoreSet {
  readonly #stores = new Map<StoreSpec['type'], SecretStore>();

  /** Adds a store; every document it reads or writes has its password noted in the current secret scope. */
  add(store: SecretStore): this {
    this.#stores.set(store.type, notingSecrets(store));
    return this;
  }

  has(type: StoreSpec['type']): boolean {
    return this.#stores.has(type);
  }

  get(spec: StoreSpec): SecretStore {
    const store = this.#stores.get(spec.type);
    if (!store) {
      throw new StoreNotConfiguredError(
        `The ${spec.type} secret store is not configured on this Keyturn (configured: ${[...this.#stores.keys()].join(', ')})`,
      );
    }
    return store;
  }

  all(): SecretStore[] {
    return [...this.#stores.values()];
  }

  async close(): Promise<void> {
    await Promise.all(this.all().map((s) => s.close()));
  }
}

/** Where a credential's secret lives; a connection's admin subject (see adminSubjectId) is its admin secret. */
export function credentialSecretRef(spec: Pick<CredentialSpec, 'id' | 'store'>): SecretRef {
  const connection = adminConnectionOf(spec.id);
  if (connection !== undefined) return connectionAdminRef({ id: connection, adminStore: spec.store });
  return { spec: spec.store, name: `cred/${spec.id}` };
}

export function connectionAdminRef(connection: Pick<Connection, 'id' | 'adminStore'>): SecretRef {
  return { spec: connection.adminStore, name: `conn/${connection.id}/admin` };
}

/** A secret in the layout of the AWS rotation templates, for a login on a connection. */
export function secretDocument(
  connection: Pick<Connection, 'host' | 'port' | 'database'>,
  engine: string,
  login: { username: string; password: string; keyId?: string },
): SecretDocument {
  return {
    engine,
    host: connection.host,
    port: connection.port,
    ...(connection.database ? { dbname: connection.database } : {}),
    username: login.username,
    password: login.password,
    ...(login.keyId ? { accessKeyId: login.keyId, secretAccessKey: login.password } : {}),
  };
}

/** The login a stored document holds: its user, its secret and, for a secret the downstream made, that secret's id. */
export function loginOf(value: SecretDocument): { username: string; password: string; keyId?: string } {
  return {
    username: value.username,
    password: value.password,
    ...(value.accessKeyId ? { keyId: value.accessKeyId } : {}),
  };
}

/**
 * The document a rotation stores for a credential's user: secretDocument, plus what the store's own layout adds. The
 * AWS multi-user rotation templates name the admin secret that can change the other user (`masterarn`), so an
 * alternating pair whose connection keeps its admin in AWS carries it; the engine knows no store's layout.
 */
export function rotationDocument(
  connection: Pick<Connection, 'host' | 'port' | 'database' | 'adminStore'>,
  engine: string,
  login: { username: string; password: string; keyId?: string },
  strategy: CredentialSpec['strategy'],
): SecretDocument {
  return {
    ...secretDocument(connection, engine, login),
    ...(strategy === 'alternating-users' && connection.adminStore.type === 'aws'
      ? { masterarn: connection.adminStore.secretId }
      : {}),
  };
}
