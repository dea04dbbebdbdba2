// The vault-transit key provider: each DEK is wrapped by Vault's transit engine (encrypt/decrypt on the named key
// KEYTURN_TRANSIT_KEY at KEYTURN_TRANSIT_MOUNT), with the value's name as associated data, so Vault refuses a wrapped
// DEK presented for another value. The key never leaves Vault. The Vault is the one VAULT_ADDR names, reached with
// Keyturn's Vault authentication (token, AppRole or Kubernetes; src/stores/vault-store.ts renews and logs in).
//
// Key versions: after `vault write -f transit/keys/<key>/rotate` new DEKs are wrapped by the newest version, and the
// ones wrapped before are not current (isCurrent) until `keyturn rekey` wraps them again; only then may
// min_decryption_version be raised. Rekeying does decrypt then encrypt rather than transit's rewrap: rewrap takes no
// associated data, so it cannot re-wrap a ciphertext bound to it.
import { randomBytes } from 'node:crypto';
import { DecryptionError, type KeyProvider, KeyProviderError, type SealContext } from '../crypto/envelope.ts';

/**
 * One request to Keyturn's Vault with its authentication. Throws KeyProviderError for an unavailable Vault
 * ('unavailable') or a refused token ('refused'), and otherwise an error with Vault's `status` and `detail`.
 */
export type VaultRequester = <T>(
  action: string,
  request: { method: 'GET' | 'POST'; path: string; json?: Record<string, unknown> },
) => Promise<T>;

export interface VaultTransitSettings {
  mount: string;
  key: string;
}

interface TransitKey {
  type: string;
  derived: boolean;
  latest_version: number;
  min_decryption_version: number;
  supports_encryption: boolean;
}

/** Key types with associated data (Vault's AEAD ciphers). */
const AEAD_TYPES = new Set(['aes128-gcm96', 'aes256-gcm96', 'chacha20-poly1305']);
const PREFIX = 'vault-transit:';

const b64 = (text: string) => Buffer.from(text, 'utf8').toString('base64');

function versionOf(ciphertext: string): number | undefined {
  const m = /^vault:v(\d+):/.exec(ciphertext);
  return m ? Number(m[1]) : undefined;
}

export class VaultTransitKeyProvider implements KeyProvider {
  readonly name = 'vault-transit';
  readonly kid: string;
  readonly #settings: VaultTransitSettings;
  readonly #request: VaultRequester;
  /** What check() read of the key: its newest version decides what is current. */
  #key: TransitKey | undefined;

  constructor(settings: VaultTransitSettings, request: VaultRequester) {
    this.#settings = settings;
    this.#request = request;
    this.kid = `${PREFIX}${settings.mount}/${settings.key}`;
  }

  canUnwrap(kid: string): boolean {
    return kid.startsWith(PREFIX);
  }

  #body(kid: string, context: SealContext): Record<string, string> {
    const ad = b64(`keyturn:dek:${kid}:${context.secret}:${context.version}`);
    // A derived key takes the context instead of (and AEAD keys as well as) associated data.
    return this.#key?.derived ? { associated_data: ad, context: ad } : { associated_data: ad };
  }

  async #call<T>(action: string, what: string, path: string, json: Record<string, unknown>): Promise<T> {
    try {
      return await this.#request<T>(action, { method: 'POST', path, json });
    } catch (err) {
      if (err instanceof KeyProviderError) throw err;
      const status = (err as { status?: number }).status;
      const detail = (err as { detail?: string }).detail ?? '';
      if (status === 400 && /message authentication failed|invalid ciphertext/.test(detail)) {
        throw new DecryptionError(
          `Vault transit refused to decrypt a data key of ${what} (${detail}): it was altered, or moved from another value`,
        );
      }
      if (status === 400 && /too old/.test(detail)) {
        throw new DecryptionError(
          `Vault transit refused a data key of ${what} as too old (${detail}): min_decryption_version was raised before \`keyturn rekey\` re-wrapped every value; lower it again, rekey, then raise it`,
        );
      }
      throw new KeyProviderError(
        'refused',
        `Vault transit refused ${action} (${status ?? 'error'}${detail ? `: ${detail}` : ''}): check that ${what} exists and is an AEAD key (aes256-gcm96), and that Keyturn's Vault policy allows update on ${this.#settings.mount}/encrypt/<key> and ${this.#settings.mount}/decrypt/<key>`,
        { cause: err },
      );
    }
  }

  async generate(context: SealContext): Promise<{ plaintext: Buffer; wrapped: string }> {
    const plaintext = randomBytes(32);
    try {
      return { plaintext, wrapped: await this.wrap(plaintext, context) };
    } catch (err) {
      plaintext.fill(0);
      throw err;
    }
  }

  async wrap(plaintext: Buffer, context: SealContext): Promise<string> {
    const { mount, key } = this.#settings;
    const res = await this.#call<{ data: { ciphertext: string } }>(
      `encrypting a data key with transit key ${mount}/${key}`,
      `transit key ${mount}/${key}`,
      `${mount}/encrypt/${key}`,
      { plaintext: plaintext.toString('base64'), ...this.#body(this.kid, context) },
    );
    return res.data.ciphertext;
  }

  async unwrap(kid: string, wrapped: string, context: SealContext): Promise<Buffer> {
    const path = kid.slice(PREFIX.length);
    const slash = path.lastIndexOf('/');
    const mount = path.slice(0, slash);
    const key = path.slice(slash + 1);
    const res = await this.#call<{ data: { plaintext: string } }>(
      `decrypting a data key with transit key ${path}`,
      `transit key ${path}`,
      `${mount}/decrypt/${key}`,
      { ciphertext: wrapped, ...this.#body(kid, context) },
    );
    const dek = Buffer.from(res.data.plaintext, 'base64');
    if (dek.length !== 32) {
      dek.fill(0);
      throw new DecryptionError(`Vault transit key ${path} answered a data key that is not 32 bytes`);
    }
    return dek;
  }

  isCurrent(wrapped: string): boolean {
    const version = versionOf(wrapped);
    return version !== undefined && (this.#key === undefined || version >= this.#key.latest_version);
  }

  describe(): Record<string, string | number | boolean> {
    return {
      provider: 'vault-transit',
      kid: this.kid,
      mount: this.#settings.mount,
      key: this.#settings.key,
      ...(this.#key
        ? { latestVersion: this.#key.latest_version, minDecryptionVersion: this.#key.min_decryption_version }
        : {}),
    };
  }

  /** Reads the key: it must exist, encrypt, and take associated data; its newest version is what rekey moves to. */
  async check(): Promise<void> {
    const { mount, key } = this.#settings;
    let res: { data: TransitKey };
    try {
      res = await this.#request<{ data: TransitKey }>(`reading transit key ${mount}/${key}`, {
        method: 'GET',
        path: `${mount}/keys/${key}`,
      });
    } catch (err) {
      if (err instanceof KeyProviderError) throw err;
      const status = (err as { status?: number }).status;
      throw new KeyProviderError(
        'refused',
        status === 404
          ? `Vault has no transit key ${mount}/${key}: create it (vault write -f ${mount}/keys/${key} type=aes256-gcm96) or fix KEYTURN_TRANSIT_KEY / KEYTURN_TRANSIT_MOUNT`
          : `Vault refused reading transit key ${mount}/${key} (${status ?? 'error'}): Keyturn's policy needs read on ${mount}/keys/${key}`,
        { cause: err },
      );
    }
    const k = res.data;
    if (!AEAD_TYPES.has(k.type) || k.supports_encryption === false) {
      throw new KeyProviderError(
        'refused',
        `Transit key ${mount}/${key} is ${k.type}: data keys need an AEAD key (aes256-gcm96, aes128-gcm96 or chacha20-poly1305), which binds each to its value`,
      );
    }
    this.#key = k;
  }

  async close(): Promise<void> {}
}
