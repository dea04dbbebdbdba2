// The map of secret stores by type, and how a credential or connection names its secret in one.
import { UnprocessableError } from '../registry/errors.ts';
import type { Connection, CredentialSpec, StoreSpec } from '../registry/types.ts';
import type { SecretDocument, SecretRef, SecretStore } from './types.ts';

export class StoreSet {
  readonly #stores = new Map<StoreSpec['type'], SecretStore>();

  add(store: SecretStore): this {
    this.#stores.set(store.type, store);
    return this;
  }

  has(type: StoreSpec['type']): boolean {
    return this.#stores.has(type);
  }

  get(spec: StoreSpec): SecretStore {
    const store = this.#stores.get(spec.type);
    if (!store) {
      throw new UnprocessableError(
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

export function credentialSecretRef(spec: Pick<CredentialSpec, 'id' | 'store'>): SecretRef {
  return { spec: spec.store, name: `cred/${spec.id}` };
}

export function connectionAdminRef(connection: Pick<Connection, 'id' | 'adminStore'>): SecretRef {
  return { spec: connection.adminStore, name: `conn/${connection.id}/admin` };
}

/** A secret in the layout of the AWS rotation templates, for a login on a connection. */
export function secretDocument(
  connection: Pick<Connection, 'host' | 'port' | 'database'>,
  engine: string,
  login: { username: string; password: string },
): SecretDocument {
  return {
    engine,
    host: connection.host,
    port: connection.port,
    ...(connection.database ? { dbname: connection.database } : {}),
    username: login.username,
    password: login.password,
  };
}
