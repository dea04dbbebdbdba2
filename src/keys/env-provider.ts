// The env key provider: KEYTURN_MASTER_KEY, 32 random bytes, wraps each DEK with AES-256-GCM in this process. For
// development and small installs: whoever reads the process's environment holds every secret's key. Production
// should keep the key in AWS KMS or Vault transit (aws-kms-provider.ts, vault-transit-provider.ts), where it never
// leaves the provider and every unwrap is logged there.
import { createHash, randomBytes } from 'node:crypto';
import {
  aesGcm,
  DecryptionError,
  type KeyProvider,
  type SealContext,
  type SealedParts,
} from '../crypto/envelope.ts';

/** The first 8 bytes of SHA-256 over a master key, hex: names the key in sealed values, never reveals it. */
export function masterKeyId(kek: Buffer): string {
  return createHash('sha256').update(kek).digest('hex').slice(0, 16);
}

export class EnvKeyProvider implements KeyProvider {
  readonly name = 'env';
  readonly kid: string;
  readonly #kek: Buffer;
  readonly #hex: string;
  /** Which variable holds it, for messages. */
  readonly #source: string;

  constructor(kek: Buffer, source = 'KEYTURN_MASTER_KEY') {
    if (kek.length !== 32) throw new Error(`${source}: the key-encryption key must be 32 bytes`);
    this.#kek = Buffer.from(kek);
    this.#hex = masterKeyId(kek);
    this.kid = `env:${this.#hex}`;
    this.#source = source;
  }

  canUnwrap(kid: string): boolean {
    return kid === this.kid;
  }

  // The DEK's AAD names the key and the value: a wrapped DEK moved to another value does not unwrap.
  #aad(context: SealContext): Buffer {
    return Buffer.from(`keyturn:dek:${this.#hex}:${context.secret}:${context.version}`);
  }

  async generate(context: SealContext): Promise<{ plaintext: Buffer; wrapped: string }> {
    const plaintext = randomBytes(32);
    return { plaintext, wrapped: await this.wrap(plaintext, context) };
  }

  async wrap(plaintext: Buffer, context: SealContext): Promise<string> {
    return aesGcm.seal(this.#kek, plaintext, this.#aad(context)).join('.');
  }

  async unwrap(kid: string, wrapped: string, context: SealContext): Promise<Buffer> {
    if (kid !== this.kid) throw new DecryptionError(`${this.#source} is key ${this.kid}, not ${kid}`);
    // v1 values (before key providers) bound the DEK to the key only.
    const legacy = wrapped.startsWith('v1.');
    const parts = (legacy ? wrapped.slice(3) : wrapped).split('.');
    if (parts.length !== 3) throw new DecryptionError('A wrapped data key is malformed');
    const aad = legacy ? Buffer.from(`keyturn:dek:${this.#hex}`) : this.#aad(context);
    try {
      return aesGcm.open(this.#kek, parts as SealedParts, aad);
    } catch {
      throw new DecryptionError(
        `A data key wrapped by ${this.kid} failed authentication: it was altered, or moved from another value`,
      );
    }
  }

  isCurrent(wrapped: string): boolean {
    return !wrapped.startsWith('v1.');
  }

  describe(): Record<string, string> {
    return { provider: 'env', kid: this.kid, source: this.#source };
  }

  async check(): Promise<void> {}

  async close(): Promise<void> {
    this.#kek.fill(0);
  }
}
