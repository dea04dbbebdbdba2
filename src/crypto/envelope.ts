// Envelope encryption for the local store. Every value gets its own random data key (DEK); the value is sealed
// with AES-256-GCM under the DEK, and the DEK is wrapped by a key provider: the master key in the environment, AWS
// KMS or Vault's transit engine (src/keys/). Why a DEK per value: rekeying re-wraps 32-byte keys instead of
// re-encrypting every secret, a key provider's log names the value each unwrap was for (the context), and no single
// key ever approaches GCM's per-key limit on random nonces. The additional data binds each ciphertext to where it
// lives (store key and version), so a Redis writer cannot move a sealed value to another credential; the providers
// bind the wrapped DEK to the same context.
//
// Two formats are read. v1 (before key providers): {v:1, kid: <16 hex>, dek: [nonce, ct, tag], data}, the DEK
// sealed under KEYTURN_MASTER_KEY with no context; v2: {v:2, kid: "<provider>:<key>", dek: <provider's wrapped
// form>, data}. Only v2 is written. A v1 value is the env provider's key `env:<16 hex>` and is rewrapped to v2 by
// `keyturn rekey` like any value of a key that is not the primary one.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { DekCache } from './dek-cache.ts';

const ALGORITHM = 'aes-256-gcm';
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

export type SealedParts = [nonce: string, ciphertext: string, tag: string];

export type SealedValue =
  | {
      v: 1;
      /** The first 8 bytes of SHA-256 over the master key, hex. */
      kid: string;
      dek: SealedParts;
      data: SealedParts;
    }
  | {
      v: 2;
      /** The key that wrapped the DEK: "<provider>:<key>" (KeyProvider.kid). */
      kid: string;
      /** The DEK as the provider wrapped it (opaque here). */
      dek: string;
      /** The value sealed under the DEK. */
      data: SealedParts;
    };

/** Where a sealed value lives: its AAD, and the context a provider binds the wrapped DEK to (KMS's encryption context). */
export interface SealContext {
  /** The store name of the secret (cred/<id>, conn/<id>/admin, keyring/<name>). */
  secret: string;
  /** Its version id. */
  version: string;
}

export class DecryptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DecryptionError';
  }
}

/** A key provider could not be reached or refused: the value is intact, but cannot be opened or sealed now. */
export class KeyProviderError extends Error {
  /** 'unavailable': try again later (the provider is down or throttling); 'refused': a permission or key problem. */
  readonly kind: 'unavailable' | 'refused';
  constructor(kind: 'unavailable' | 'refused', message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'KeyProviderError';
    this.kind = kind;
  }
}

/**
 * A key-encryption key's keeper (src/keys/). It wraps and unwraps 32-byte data keys; it never sees a secret.
 * Idempotency: wrap may be called again for the same DEK and context (a retried rekey); each call's result unwraps.
 */
export interface KeyProvider {
  /** 'env', 'aws-kms' or 'vault-transit'. */
  readonly name: string;
  /** The key sealed values record, "<provider>:<key>": the env key's hash, the KMS key's ARN, the transit mount/key. */
  readonly kid: string;
  /** True when this provider can unwrap DEKs recorded under `kid` (KMS: any KMS key its principal may use). */
  canUnwrap(kid: string): boolean;
  /** A new DEK and its wrapped form, bound to `context`. The caller zeroes `plaintext`. */
  generate(context: SealContext): Promise<{ plaintext: Buffer; wrapped: string }>;
  /** The DEK `wrapped` under `kid` for `context`; a wrong context, key or a tampered blob is a DecryptionError. */
  unwrap(kid: string, wrapped: string, context: SealContext): Promise<Buffer>;
  /** Wraps an existing DEK under this provider's key (rekey moves a DEK here without touching the data). */
  wrap(plaintext: Buffer, context: SealContext): Promise<string>;
  /**
   * False when a value this provider wrapped should be wrapped again to be current: Vault transit's key has a newer
   * version than the one in `wrapped`. Values of another kid are never current.
   */
  isCurrent(wrapped: string): boolean;
  /** What an operator sees in the rekey status and /readyz: never key material. */
  describe(): Record<string, string | number | boolean>;
  /** Checks the key exists and can be used (at start, before anything is sealed): throws KeyProviderError. */
  check(): Promise<void>;
  close(): Promise<void>;
}

/** The providers of one process: the primary wraps every new DEK; the others (and the primary) unwrap. */
export interface Keyring {
  readonly primary: KeyProvider;
  /** Every configured provider, the primary first. */
  readonly all: readonly KeyProvider[];
}

function seal(key: Buffer, plaintext: Buffer, aad: Buffer): SealedParts {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv(ALGORITHM, key, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return [nonce.toString('base64'), ct.toString('base64'), cipher.getAuthTag().toString('base64')];
}

function open(key: Buffer, [nonce, ct, tag]: SealedParts, aad: Buffer): Buffer {
  const authTag = Buffer.from(tag, 'base64');
  // A shortened tag would make forgery far cheaper (GCM accepts 4-byte tags unless told otherwise).
  if (authTag.length !== TAG_BYTES)
    throw new DecryptionError('A sealed value has a truncated authentication tag');
  const decipher = createDecipheriv(ALGORITHM, key, Buffer.from(nonce, 'base64'), {
    authTagLength: TAG_BYTES,
  });
  decipher.setAAD(aad);
  decipher.setAuthTag(authTag);
  try {
    return Buffer.concat([decipher.update(Buffer.from(ct, 'base64')), decipher.final()]);
  } catch {
    throw new DecryptionError('authentication failed');
  }
}

/** AES-256-GCM primitives for providers that wrap locally (the env provider). */
export const aesGcm = { seal, open };

const dataAad = (context: SealContext) => Buffer.from(`keyturn:v1:${context.secret}:${context.version}`);

/** The kid a sealed value records, in the v2 form ("env:<hex>" for a v1 value). */
export function kidOf(sealed: SealedValue): string {
  return sealed.v === 1 ? `env:${sealed.kid}` : sealed.kid;
}

/** The wrapped DEK in the provider's form; a v1 DEK is "v1.<nonce>.<ct>.<tag>" (the env provider reads it). */
function wrappedOf(sealed: SealedValue): string {
  return sealed.v === 1 ? `v1.${sealed.dek.join('.')}` : sealed.dek;
}

export class Envelope {
  readonly #keyring: Keyring;
  readonly #cache: DekCache | undefined;

  constructor(keyring: Keyring, cache?: DekCache) {
    this.#keyring = keyring;
    this.#cache = cache;
  }

  get primary(): KeyProvider {
    return this.#keyring.primary;
  }

  /** Seals `plaintext` under a new DEK that the primary provider wraps. */
  async encrypt(plaintext: string | Buffer, context: SealContext): Promise<SealedValue> {
    const { plaintext: dek, wrapped } = await this.#keyring.primary.generate(context);
    try {
      const bytes = typeof plaintext === 'string' ? Buffer.from(plaintext, 'utf8') : plaintext;
      return { v: 2, kid: this.#keyring.primary.kid, dek: wrapped, data: seal(dek, bytes, dataAad(context)) };
    } finally {
      dek.fill(0);
    }
  }

  async decrypt(sealed: SealedValue, context: SealContext): Promise<string> {
    const plain = await this.decryptBytes(sealed, context);
    try {
      return plain.toString('utf8');
    } finally {
      plain.fill(0);
    }
  }

  /** The plaintext as bytes, which the caller can zero when done with them (stores/open-cache.ts does). */
  async decryptBytes(sealed: SealedValue, context: SealContext): Promise<Buffer> {
    if (sealed.v !== 1 && sealed.v !== 2)
      throw new DecryptionError(`Unknown sealed-value format ${String((sealed as { v: unknown }).v)}`);
    const dek = await this.#dek(sealed, context);
    try {
      return open(dek, sealed.data, dataAad(context));
    } catch (err) {
      throw new DecryptionError(
        `A sealed value failed authentication (${(err as Error).message}): it was altered, or moved from another credential or version`,
      );
    } finally {
      dek.fill(0);
    }
  }

  /** True when `sealed` is wrapped by the primary provider at its current key version. */
  isCurrent(sealed: SealedValue): boolean {
    return kidOf(sealed) === this.#keyring.primary.kid && this.#keyring.primary.isCurrent(wrappedOf(sealed));
  }

  /**
   * The same value with its DEK wrapped by the primary provider (the data, its nonce and tag unchanged), or null when
   * it already is current. The DEK is unwrapped by the provider that wrapped it; nothing else is decrypted.
   */
  async rewrap(sealed: SealedValue, context: SealContext): Promise<SealedValue | null> {
    if (this.isCurrent(sealed)) return null;
    const dek = await this.#dek(sealed, context);
    try {
      // Proves the DEK opens this value before the old wrapping is replaced: a rekey must never store a value that
      // no longer opens.
      open(dek, sealed.data, dataAad(context)).fill(0);
      const wrapped = await this.#keyring.primary.wrap(dek, context);
      return { v: 2, kid: this.#keyring.primary.kid, dek: wrapped, data: sealed.data };
    } finally {
      dek.fill(0);
    }
  }

  /** The value's DEK, a buffer of the caller's own (zero it when done). */
  async #dek(sealed: SealedValue, context: SealContext): Promise<Buffer> {
    const kid = kidOf(sealed);
    const provider = this.#keyring.all.find((p) => p.canUnwrap(kid));
    if (!provider) {
      throw new DecryptionError(
        `This value's data key is wrapped by ${kid}, which no configured key provider holds (configured: ${this.#keyring.all.map((p) => p.kid).join(', ')}): start Keyturn with that key too (KEYTURN_MASTER_KEY_PREVIOUS, KEYTURN_KMS_KEY_ID or KEYTURN_TRANSIT_KEY) until \`keyturn rekey\` has moved every value to the primary key`,
      );
    }
    const wrapped = wrappedOf(sealed);
    const unwrap = () => provider.unwrap(kid, wrapped, context);
    return this.#cache ? this.#cache.get(kid, wrapped, context, unwrap) : unwrap();
  }
}
