// Envelope encryption for the local store. Every value gets its own random data key (DEK); the value is sealed
// with AES-256-GCM under the DEK, and the DEK is sealed under the key-encryption key (KEK, KEYTURN_MASTER_KEY).
// Why a DEK per value: rotating the KEK re-wraps 32-byte keys instead of re-encrypting every secret, and no
// single key ever approaches GCM's per-key limit on random nonces. The additional data binds each ciphertext to
// where it lives (store key and version), so a Redis writer cannot move a sealed value to another credential.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';

const ALGORITHM = 'aes-256-gcm';
const NONCE_BYTES = 12;

export interface SealedValue {
  /** Format version. */
  v: 1;
  /** Which KEK sealed the DEK: the first 8 bytes of SHA-256 over the KEK, hex. */
  kid: string;
  /** The DEK sealed under the KEK: nonce, ciphertext, tag (base64). */
  dek: [string, string, string];
  /** The value sealed under the DEK: nonce, ciphertext, tag (base64). */
  data: [string, string, string];
}

export class DecryptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DecryptionError';
  }
}

function seal(key: Buffer, plaintext: Buffer, aad: Buffer): [string, string, string] {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv(ALGORITHM, key, nonce, { authTagLength: 16 });
  cipher.setAAD(aad);
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return [nonce.toString('base64'), ct.toString('base64'), cipher.getAuthTag().toString('base64')];
}

const TAG_BYTES = 16;

function open(key: Buffer, [nonce, ct, tag]: [string, string, string], aad: Buffer): Buffer {
  const authTag = Buffer.from(tag, 'base64');
  // A shortened tag would make forgery far cheaper (GCM accepts 4-byte tags unless told otherwise).
  if (authTag.length !== TAG_BYTES)
    throw new DecryptionError('A sealed value has a truncated authentication tag');
  const decipher = createDecipheriv(ALGORITHM, key, Buffer.from(nonce, 'base64'), {
    authTagLength: TAG_BYTES,
  });
  decipher.setAAD(aad);
  decipher.setAuthTag(authTag);
  return Buffer.concat([decipher.update(Buffer.from(ct, 'base64')), decipher.final()]);
}

export class Envelope {
  readonly #kek: Buffer;
  readonly kid: string;

  constructor(kek: Buffer) {
    if (kek.length !== 32) throw new Error('The key-encryption key must be 32 bytes');
    this.#kek = Buffer.from(kek);
    this.kid = createHash('sha256').update(kek).digest('hex').slice(0, 16);
  }

  encrypt(plaintext: string, context: string): SealedValue {
    const dek = randomBytes(32);
    try {
      const aad = Buffer.from(`keyturn:v1:${context}`);
      return {
        v: 1,
        kid: this.kid,
        dek: seal(this.#kek, dek, Buffer.from(`keyturn:dek:${this.kid}`)),
        data: seal(dek, Buffer.from(plaintext, 'utf8'), aad),
      };
    } finally {
      dek.fill(0);
    }
  }

  decrypt(sealed: SealedValue, context: string): string {
    const plain = this.decryptBytes(sealed, context);
    try {
      return plain.toString('utf8');
    } finally {
      plain.fill(0);
    }
  }

  /** The plaintext as bytes, which the caller can zero when done with them (stores/open-cache.ts does). */
  decryptBytes(sealed: SealedValue, context: string): Buffer {
    if (sealed.v !== 1) throw new DecryptionError(`Unknown sealed-value format ${String(sealed.v)}`);
    if (sealed.kid !== this.kid) {
      throw new DecryptionError(
        `This value was sealed under master key ${sealed.kid}, but KEYTURN_MASTER_KEY is key ${this.kid}: start Keyturn with the key that wrote the store`,
      );
    }
    let dek: Buffer | undefined;
    try {
      dek = open(this.#kek, sealed.dek, Buffer.from(`keyturn:dek:${this.kid}`));
      return open(dek, sealed.data, Buffer.from(`keyturn:v1:${context}`));
    } catch (err) {
      if (err instanceof DecryptionError) throw err;
      throw new DecryptionError(
        'A sealed value failed authentication: it was altered, or moved from another credential or version',
      );
    } finally {
      dek?.fill(0);
    }
  }
}
