// The aws-kms key provider: each DEK is made by KMS (GenerateDataKey) and unwrapped by it (Decrypt), under the key
// KEYTURN_KMS_KEY_ID, with an encryption context that names the value ({"keyturn:secret", "keyturn:version"}): KMS
// refuses a wrapped DEK presented for another value, and CloudTrail logs which secret each Decrypt was for. The key
// itself never leaves KMS. KMS's own key rotation is invisible here (the key id stays; old blobs still decrypt), so
// a rekey is needed only to move to another key or provider.
//
// Errors: a blob or context KMS rejects is a DecryptionError (the value cannot be opened); a key that is disabled,
// scheduled for deletion, missing, or a principal without permission is a KeyProviderError 'refused' with what to
// fix; throttling, 5xx and network failures are 'unavailable' (the read or rotation is retried).
import {
  DecryptCommand,
  DescribeKeyCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  KMSClient,
  type KMSClientConfig,
} from '@aws-sdk/client-kms';
import { DecryptionError, type KeyProvider, KeyProviderError, type SealContext } from '../crypto/envelope.ts';

export interface AwsKmsSettings {
  /** Key id, key ARN, alias name (alias/x) or alias ARN; resolved to the key's ARN at check(). */
  keyId: string;
  region?: string;
  endpoint?: string;
  maxAttempts: number;
  credentials?: KMSClientConfig['credentials'];
  timeoutMs: number;
}

const PREFIX = 'aws-kms:';

const contextOf = (c: SealContext): Record<string, string> => ({
  'keyturn:secret': c.secret,
  'keyturn:version': c.version,
});

/** What to do about a KMS error code. */
const REFUSED_HINTS: Record<string, string> = {
  AccessDeniedException:
    "give Keyturn's principal kms:GenerateDataKey, kms:Decrypt, kms:Encrypt and kms:DescribeKey on the key (README, key providers)",
  DisabledException: 'enable the key in KMS (EnableKey), or rekey to another key',
  KMSInvalidStateException:
    'the key is pending deletion or not usable: cancel the deletion (CancelKeyDeletion) before rekeying away from it',
  NotFoundException: 'check KEYTURN_KMS_KEY_ID (key id, key ARN or alias) and the region',
  UnrecognizedClientException: "check the AWS credentials Keyturn's process uses",
  InvalidSignatureException: "check the AWS credentials Keyturn's process uses",
  KeyUnavailableException: 'the key is unavailable in KMS; try again, or check its key store',
};

export class AwsKmsKeyProvider implements KeyProvider {
  readonly name = 'aws-kms';
  #kid: string;
  #arn: string;
  readonly #settings: AwsKmsSettings;
  readonly #client: KMSClient;

  constructor(settings: AwsKmsSettings) {
    this.#settings = settings;
    this.#arn = settings.keyId;
    this.#kid = `${PREFIX}${settings.keyId}`;
    this.#client = new KMSClient({
      ...(settings.region ? { region: settings.region } : {}),
      ...(settings.endpoint ? { endpoint: settings.endpoint } : {}),
      ...(settings.credentials ? { credentials: settings.credentials } : {}),
      maxAttempts: settings.maxAttempts,
      requestHandler: { requestTimeout: settings.timeoutMs, connectionTimeout: settings.timeoutMs },
    });
  }

  /** "aws-kms:<key ARN>" once check() resolved the configured id; the configured id before. */
  get kid(): string {
    return this.#kid;
  }

  canUnwrap(kid: string): boolean {
    return kid.startsWith(PREFIX);
  }

  async #send<T>(operation: string, keyId: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const code = (err as { name?: string }).name ?? 'Error';
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (code === 'InvalidCiphertextException' || code === 'IncorrectKeyException') {
        throw new DecryptionError(
          `AWS KMS refused to ${operation} a data key of ${keyId} (${code}): the wrapped key was altered, moved from another value, or made under another key`,
        );
      }
      const hint = REFUSED_HINTS[code];
      if (hint) {
        throw new KeyProviderError(
          'refused',
          `AWS KMS refused ${operation} with key ${keyId} (${code}): ${hint}`,
          { cause: err },
        );
      }
      const why = status ? `answered ${status} ${code}` : `could not be reached (${code})`;
      throw new KeyProviderError(
        'unavailable',
        `AWS KMS ${why} during ${operation} with key ${keyId}; secrets of the local store cannot be opened or sealed until it answers (the rotation is retried)`,
        { cause: err },
      );
    }
  }

  async generate(context: SealContext): Promise<{ plaintext: Buffer; wrapped: string }> {
    const out = await this.#send('GenerateDataKey', this.#arn, () =>
      this.#client.send(
        new GenerateDataKeyCommand({
          KeyId: this.#arn,
          KeySpec: 'AES_256',
          EncryptionContext: contextOf(context),
        }),
      ),
    );
    if (!out.Plaintext || !out.CiphertextBlob || out.Plaintext.length !== 32)
      throw new KeyProviderError(
        'unavailable',
        'AWS KMS answered GenerateDataKey without a 32-byte data key',
      );
    const plaintext = Buffer.from(out.Plaintext);
    out.Plaintext.fill(0);
    return { plaintext, wrapped: Buffer.from(out.CiphertextBlob).toString('base64') };
  }

  async wrap(plaintext: Buffer, context: SealContext): Promise<string> {
    const out = await this.#send('Encrypt', this.#arn, () =>
      this.#client.send(
        new EncryptCommand({ KeyId: this.#arn, Plaintext: plaintext, EncryptionContext: contextOf(context) }),
      ),
    );
    if (!out.CiphertextBlob)
      throw new KeyProviderError('unavailable', 'AWS KMS answered Encrypt without a ciphertext');
    return Buffer.from(out.CiphertextBlob).toString('base64');
  }

  async unwrap(kid: string, wrapped: string, context: SealContext): Promise<Buffer> {
    const keyId = kid.slice(PREFIX.length);
    const out = await this.#send('Decrypt', keyId, () =>
      this.#client.send(
        new DecryptCommand({
          // Naming the key makes KMS refuse a blob of any other key (IncorrectKeyException).
          KeyId: keyId,
          CiphertextBlob: Buffer.from(wrapped, 'base64'),
          EncryptionContext: contextOf(context),
        }),
      ),
    );
    if (!(out.Plaintext instanceof Uint8Array) || out.Plaintext.length !== 32)
      throw new DecryptionError(`AWS KMS answered Decrypt for ${keyId} without a 32-byte data key`);
    const dek = Buffer.from(out.Plaintext);
    out.Plaintext.fill(0);
    return dek;
  }

  isCurrent(): boolean {
    return true;
  }

  describe(): Record<string, string> {
    return {
      provider: 'aws-kms',
      kid: this.#kid,
      keyId: this.#settings.keyId,
      ...(this.#settings.region ? { region: this.#settings.region } : {}),
    };
  }

  /** Resolves an alias to the key's ARN (sealed values record the ARN, which an alias move cannot change). */
  async check(): Promise<void> {
    const out = await this.#send('DescribeKey', this.#settings.keyId, () =>
      this.#client.send(new DescribeKeyCommand({ KeyId: this.#settings.keyId })),
    );
    const meta = out.KeyMetadata;
    if (!meta?.Arn)
      throw new KeyProviderError('refused', `AWS KMS described ${this.#settings.keyId} without an ARN`);
    if (meta.KeyState !== 'Enabled') {
      throw new KeyProviderError(
        'refused',
        `The KMS key ${meta.Arn} is ${meta.KeyState}: ${meta.KeyState === 'Disabled' ? REFUSED_HINTS.DisabledException : REFUSED_HINTS.KMSInvalidStateException}`,
      );
    }
    if (meta.KeySpec && meta.KeySpec !== 'SYMMETRIC_DEFAULT') {
      throw new KeyProviderError(
        'refused',
        `The KMS key ${meta.Arn} is ${meta.KeySpec}: data keys need a symmetric key (SYMMETRIC_DEFAULT)`,
      );
    }
    this.#arn = meta.Arn;
    this.#kid = `${PREFIX}${meta.Arn}`;
  }

  async close(): Promise<void> {
    this.#client.destroy();
  }
}
