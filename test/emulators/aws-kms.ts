/**
 * Test fixture: an in-memory HTTP emulator of AWS KMS speaking the JSON 1.1 protocol (`POST /`,
 * `X-Amz-Target: TrentService.<Operation>`), so that `@aws-sdk/client-kms` can be pointed at it with `endpoint`.
 * Only node:http and node:crypto; no network beyond 127.0.0.1.
 *
 * It stands in for real KMS in tests of the key-encryption-key provider that wraps the local store's data keys
 * (issue 17 §1), so it is strict where KMS is strict:
 *
 * - Authentication (`./sigv4.ts`, shared with the IAM and Secrets Manager emulators): every request carries a
 *   SigV4 `Authorization` header whose signature is really recomputed (method, path, query, the SignedHeaders,
 *   SHA-256 of the received body) with the secret of the access key in the credential scope, which must name
 *   service `kms`, this region and today. No header is
 *   `MissingAuthenticationTokenException`; an unknown or removed access key `UnrecognizedClientException`; a wrong
 *   secret, scope or a clock more than 15 minutes off `InvalidSignatureException`; a malformed header
 *   `IncompleteSignatureException` (all 400, as the JSON-protocol services answer them).
 * - Authorization: each credential has a deny list of actions (`kms:Decrypt`, `Decrypt`, globs such as `kms:*`);
 *   a denied action is `AccessDeniedException` (400) in KMS's message form. ReEncrypt needs `kms:ReEncryptFrom` on
 *   the source key and `kms:ReEncryptTo` on the destination key, as in KMS.
 * - Ciphertext: the blob is opaque but self-describing (format byte, key UUID, backing-key version, 12-byte nonce,
 *   AES-256-GCM ciphertext and tag) and really encrypted under a random 256-bit secret of that key version. The
 *   header and the encryption context (keys sorted, so order does not matter; keys and values case-sensitive) are
 *   the AAD: a context that differs in any key or value, one missing or extra, or any tampered byte is
 *   `InvalidCiphertextException` (no message, as KMS sends it). Decrypt/ReEncrypt with a KeyId/SourceKeyId that is
 *   not the blob's key is `IncorrectKeyException`.
 * - Key states: Disabled → `DisabledException`; PendingDeletion → `KMSInvalidStateException` for cryptographic
 *   operations; DescribeKey works in every state. CancelKeyDeletion leaves the key Disabled (as KMS does).
 *   RotateKeyOnDemand adds a backing-key version: older ciphertexts still decrypt, new ones use the new version;
 *   at most 10 on-demand rotations per key (`LimitExceededException`).
 * - Key identifiers: key id, key ARN, alias name (`alias/x`) or alias ARN where KMS takes them; management
 *   operations that take only a key id or key ARN refuse an alias. A well-formed but unknown id or alias is
 *   `NotFoundException`; a malformed id is `NotFoundException` ("Invalid keyId ..."), as KMS answers it; an
 *   empty one `ValidationException`. Field sizes follow the API reference (Plaintext 1–4096 bytes,
 *   NumberOfBytes 1–1024, PendingWindowInDays 7–30) with `ValidationException` in AWS's "N validation error(s)
 *   detected" form; wrong JSON types are `SerializationException`.
 *
 * Emulated operations: CreateKey, DescribeKey, ListKeys, CreateAlias, DeleteAlias, ListAliases, EnableKey,
 * DisableKey, ScheduleKeyDeletion, CancelKeyDeletion, EnableKeyRotation, DisableKeyRotation,
 * GetKeyRotationStatus, RotateKeyOnDemand, GenerateDataKey, GenerateDataKeyWithoutPlaintext, Encrypt, Decrypt,
 * ReEncrypt. Anything else is `UnknownOperationException`.
 *
 * Not reproduced: key policies, grants and grant tokens (the only authorization is the per-credential deny list;
 * `Policy` and `GrantTokens` are accepted and ignored), asymmetric/HMAC/multi-Region/imported/custom-key-store
 * keys (CreateKey with another KeySpec, KeyUsage or Origin is `UnsupportedOperationException` naming the
 * emulator), the deletion window elapsing (a key stays PendingDeletion until cancelled), scheduled automatic
 * rotation (EnableKeyRotation records the setting; only RotateKeyOnDemand rotates), session tokens (a request with
 * `X-Amz-Security-Token` is refused as an unknown client), tags, and real KMS's blob layout and length. Plaintext
 * is never logged or recorded; `requests` holds operation names and outcomes only.
 */
import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { actionMatches, JSON_PROTOCOL_ERRORS, verifySigV4 } from './sigv4.ts';

export type KmsInjectedFailure =
  | 'KMSInternalException'
  | 'ThrottlingException'
  | 'DependencyTimeoutException'
  | 'KeyUnavailableException';

export interface KmsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  /** The IAM user ARN KMS names in AccessDeniedException messages. */
  arn: string;
}

export interface KmsRequestRecord {
  /** The operation from `X-Amz-Target` ('' when absent or not TrentService). */
  operation: string;
  /** The access key id named in the Authorization header (never the secret). */
  accessKeyId?: string;
  /** The HTTP status of the answer. */
  status?: number;
  /** The `__type` of the answer, when it was an error. */
  error?: string;
}

export interface KmsKeyInspection {
  keyId: string;
  arn: string;
  state: 'Enabled' | 'Disabled' | 'PendingDeletion';
  /** Number of backing-key versions (1 + rotations); new ciphertexts use the last one. */
  backingVersions: number;
  rotationEnabled: boolean;
  aliases: string[];
}

export interface AwsKmsEmulator {
  endpoint: string; // http://127.0.0.1:<port>
  region: string;
  accountId: string;
  /** The default principal (user `keyturn`), allowed every action. */
  credentials: KmsCredentials;
  /**
   * A new principal (IAM user `name`, default a random one) with its own access key. `deny` lists actions it may
   * not call: 'kms:Decrypt', 'Decrypt', or globs ('kms:Generate*', 'kms:*'); case-insensitive.
   */
  addCredentials(options?: { name?: string; deny?: string[] }): KmsCredentials;
  /** Replaces the deny list of the principal owning this access key (e.g. to revoke Decrypt mid-test). */
  setDeny(accessKeyId: string, deny: string[]): void;
  /** Removes the access key: later requests signed with it are UnrecognizedClientException. */
  removeCredentials(accessKeyId: string): void;
  /**
   * Calls per operation ('Decrypt', 'GenerateDataKey', ...): every request naming the operation, whatever its
   * outcome (refused, injected failure or success). Missing operations read as undefined; use callCount.
   */
  calls: Record<string, number>;
  callCount(operation: string): number;
  /** Zeroes `calls` (e.g. after setting up keys, before the part of a test that counts). */
  resetCalls(): void;
  /**
   * The next `count` authenticated requests whose operation matches fail before the operation runs (no state
   * change): KMSInternalException 500, ThrottlingException 400 "Rate exceeded", DependencyTimeoutException 503,
   * KeyUnavailableException 500. The SDK retries these (maxAttempts 3 by default): a test that wants to see the
   * failure itself builds its client with `maxAttempts: 1`.
   */
  failNext(count: number, code: KmsInjectedFailure, match?: (operation: string) => boolean): void;
  /** Key state as KMS holds it (no secret material); throws for an unknown key id/ARN/alias. */
  inspectKey(keyId: string): KmsKeyInspection;
  /** Every request in arrival order; no bodies (they carry plaintext). */
  requests: KmsRequestRecord[];
  close(): Promise<void>;
}

type Body = Record<string, unknown>;
type KeyState = 'Enabled' | 'Disabled' | 'PendingDeletion';

interface Key {
  id: string;
  arn: string;
  createdAt: number;
  description: string;
  state: KeyState;
  deletionDate?: number;
  pendingWindowInDays?: number;
  rotationEnabled: boolean;
  rotationPeriodInDays?: number;
  onDemandRotations: number;
  /** Backing-key secrets; version n is versions[n - 1]. */
  versions: Buffer[];
}

interface Alias {
  name: string; // alias/x
  arn: string;
  keyId: string;
  createdAt: number;
}

interface Principal {
  name: string;
  arn: string;
  secret: string;
  deny: string[];
}

class AwsError extends Error {
  readonly type: string;
  readonly status: number;
  readonly hasMessage: boolean;
  constructor(type: string, message?: string, status = 400) {
    super(message ?? '');
    this.type = type;
    this.status = status;
    this.hasMessage = message !== undefined;
  }
}

const INJECTED: Record<KmsInjectedFailure, { status: number; message: string }> = {
  KMSInternalException: { status: 500, message: 'An internal error occurred. Try again later.' },
  ThrottlingException: { status: 400, message: 'Rate exceeded' },
  DependencyTimeoutException: {
    status: 503,
    message: 'The system timed out while trying to fulfill the request.',
  },
  KeyUnavailableException: { status: 500, message: 'The KMS key is currently unavailable. Try again later.' },
};

const MAX_ON_DEMAND_ROTATIONS = 10;
const BLOB_FORMAT = 0x01;
/** format (1) + key UUID (16) + backing version (4) */
const HEADER_LEN = 21;
const NONCE_LEN = 12;
const TAG_LEN = 16;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ALIAS_NAME = /^alias\/[a-zA-Z0-9/_-]+$/;
const ENCRYPTION_ALGORITHMS = ['SYMMETRIC_DEFAULT', 'RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256', 'SM2PKE'];

/** JSON 1.1: timestamps are epoch seconds as JSON numbers. */
const epoch = (ms: number) => ms / 1000;
const randomChars = (n: number, alphabet: string) =>
  Array.from(randomBytes(n), (b) => alphabet[b % alphabet.length]).join('');

const lowerFirst = (s: string) => s.charAt(0).toLowerCase() + s.slice(1);

// ---- request field readers (wrong JSON types: SerializationException, as the AWS JSON front end answers) ----

class Fields {
  readonly errors: string[] = [];
  readonly body: Body;
  constructor(body: Body) {
    this.body = body;
  }

  string(key: string, rules: { required?: boolean; min?: number; max?: number; enum?: string[] } = {}) {
    const v = this.body[key];
    if (v === undefined || v === null) {
      if (rules.required)
        this.errors.push(
          `Value null at '${lowerFirst(key)}' failed to satisfy constraint: Member must not be null`,
        );
      return undefined;
    }
    if (typeof v !== 'string') throw new AwsError('SerializationException', `${key} must be a string`);
    if (rules.min !== undefined && v.length < rules.min) {
      this.errors.push(
        `Value '${v}' at '${lowerFirst(key)}' failed to satisfy constraint: Member must have length greater than or equal to ${rules.min}`,
      );
    } else if (rules.max !== undefined && v.length > rules.max) {
      this.errors.push(
        `Value '${v}' at '${lowerFirst(key)}' failed to satisfy constraint: Member must have length less than or equal to ${rules.max}`,
      );
    } else if (rules.enum && !rules.enum.includes(v)) {
      this.errors.push(
        `Value '${v}' at '${lowerFirst(key)}' failed to satisfy constraint: Member must satisfy enum value set: [${rules.enum.join(', ')}]`,
      );
    }
    return v;
  }

  int(key: string, rules: { min: number; max: number }) {
    const v = this.body[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v)) {
      throw new AwsError('SerializationException', `${key} must be an integer`);
    }
    if (v < rules.min) {
      this.errors.push(
        `Value '${v}' at '${lowerFirst(key)}' failed to satisfy constraint: Member must have value greater than or equal to ${rules.min}`,
      );
    } else if (v > rules.max) {
      this.errors.push(
        `Value '${v}' at '${lowerFirst(key)}' failed to satisfy constraint: Member must have value less than or equal to ${rules.max}`,
      );
    }
    return v;
  }

  bool(key: string) {
    const v = this.body[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'boolean') throw new AwsError('SerializationException', `${key} must be a boolean`);
    return v;
  }

  /** A blob member: base64 text on the wire; the length rules apply to the decoded bytes. */
  blob(key: string, rules: { required?: boolean; min: number; max: number }) {
    const v = this.body[key];
    if (v === undefined || v === null) {
      if (rules.required)
        this.errors.push(
          `Value null at '${lowerFirst(key)}' failed to satisfy constraint: Member must not be null`,
        );
      return undefined;
    }
    if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) {
      throw new AwsError('SerializationException', `${key} must be base64-encoded binary data`);
    }
    const bytes = Buffer.from(v, 'base64');
    // The value itself is never echoed: it may be plaintext.
    if (bytes.length < rules.min) {
      this.errors.push(
        `Value at '${lowerFirst(key)}' failed to satisfy constraint: Member must have length greater than or equal to ${rules.min}`,
      );
    } else if (bytes.length > rules.max) {
      this.errors.push(
        `Value at '${lowerFirst(key)}' failed to satisfy constraint: Member must have length less than or equal to ${rules.max}`,
      );
    }
    return bytes;
  }

  /** EncryptionContext: a string-to-string map; absent is the empty context. */
  context(key: string): Record<string, string> {
    const v = this.body[key];
    if (v === undefined || v === null) return {};
    if (typeof v !== 'object' || Array.isArray(v) || Object.values(v).some((x) => typeof x !== 'string')) {
      throw new AwsError('SerializationException', `${key} must be a map of strings to strings`);
    }
    return v as Record<string, string>;
  }

  check(): void {
    if (this.errors.length === 0) return;
    const n = this.errors.length;
    throw new AwsError(
      'ValidationException',
      `${n} validation error${n === 1 ? '' : 's'} detected: ${this.errors.join('; ')}`,
    );
  }
}

/** The AAD bound to a ciphertext: the blob header and the context with keys sorted by code point. */
function aad(header: Buffer, context: Record<string, string>): Buffer {
  const entries = Object.keys(context)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
    .map((k) => [k, context[k]]);
  return Buffer.concat([header, Buffer.from(JSON.stringify(entries), 'utf8')]);
}

const uuidBytes = (id: string) => Buffer.from(id.replace(/-/g, ''), 'hex');
const uuidOf = (bytes: Buffer) => {
  const h = bytes.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
};

// ---- the emulator ----

export async function startAwsKmsEmulator(options?: {
  region?: string;
  accountId?: string;
}): Promise<AwsKmsEmulator> {
  const region = options?.region ?? 'eu-west-1';
  const accountId = options?.accountId ?? '123456789012';
  const keyArnPrefix = `arn:aws:kms:${region}:${accountId}:key/`;
  const aliasArnPrefix = `arn:aws:kms:${region}:${accountId}:`;
  const keys = new Map<string, Key>(); // by key id
  const aliases = new Map<string, Alias>(); // by alias name
  const principals = new Map<string, Principal>(); // by access key id
  const requests: KmsRequestRecord[] = [];
  const calls: Record<string, number> = {};
  const failures: Array<{ remaining: number; code: KmsInjectedFailure; match?: (op: string) => boolean }> =
    [];

  function addPrincipal(name: string, deny: string[]): KmsCredentials {
    let id: string;
    do id = `AKIA${randomChars(16, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567')}`;
    while (principals.has(id));
    const principal: Principal = {
      name,
      arn: `arn:aws:iam::${accountId}:user/${name}`,
      secret: randomBytes(30).toString('base64'),
      deny: [...deny],
    };
    principals.set(id, principal);
    return { accessKeyId: id, secretAccessKey: principal.secret, arn: principal.arn };
  }
  const credentials = addPrincipal('keyturn', []);

  // ---- authentication: SigV4, verified for real ----

  function authenticate(req: IncomingMessage, body: Buffer, now: number): Principal {
    return verifySigV4(req, body, {
      service: 'kms',
      region,
      now,
      errors: JSON_PROTOCOL_ERRORS,
      // Only long-term keys exist here (no session token): a request with X-Amz-Security-Token is refused.
      lookup: (id) => principals.get(id),
      fail: (type, message, status) => new AwsError(type, message, status),
    }).key;
  }

  function authorize(principal: Principal, action: string, resource: string): void {
    const full = `kms:${action}`;
    if (!principal.deny.some((p) => actionMatches(p.includes(':') ? p : `kms:${p}`, full))) return;
    throw new AwsError(
      'AccessDeniedException',
      `User: ${principal.arn} is not authorized to perform: ${full} on resource: ${resource} because no identity-based policy allows the ${full} action`,
    );
  }

  // ---- key identifiers ----

  const aliasArn = (name: string) => `${aliasArnPrefix}${name}`;

  /** KeyId as KMS reads it: key id, key ARN, alias name or alias ARN (aliases only where `allowAlias`). */
  function resolve(id: string, allowAlias = true): Key {
    let keyId: string | undefined;
    let aliasName: string | undefined;
    if (id.startsWith('arn:')) {
      const m = /^arn:aws:kms:([^:]+):(\d{12}):(key\/.+|alias\/.+)$/.exec(id);
      if (!m) throw new AwsError('NotFoundException', `Invalid arn ${id}`);
      if (m[1] !== region || m[2] !== accountId)
        throw new AwsError('NotFoundException', `Key '${id}' does not exist`);
      if (m[3]!.startsWith('key/')) keyId = m[3]!.slice(4);
      else aliasName = m[3]!;
    } else if (id.startsWith('alias/')) {
      aliasName = id;
    } else {
      keyId = id;
    }
    if (aliasName !== undefined) {
      if (!allowAlias) {
        throw new AwsError(
          'NotFoundException',
          `Invalid keyId '${id}': this operation takes a key id or key ARN, not an alias`,
        );
      }
      const alias = aliases.get(aliasName);
      if (!alias) throw new AwsError('NotFoundException', `Alias ${aliasArn(aliasName)} is not found.`);
      return keys.get(alias.keyId)!;
    }
    if (!UUID.test(keyId!)) throw new AwsError('NotFoundException', `Invalid keyId '${id}'`);
    const key = keys.get(keyId!);
    if (!key) throw new AwsError('NotFoundException', `Key '${keyArnPrefix}${keyId}' does not exist`);
    return key;
  }

  function keyIdField(f: Fields, member: string, allowAlias = true): Key {
    const id = f.string(member, { required: true, min: 1, max: 2048 });
    f.check();
    return resolve(id!, allowAlias);
  }

  /** Cryptographic operations need an Enabled key. */
  function usable(key: Key): void {
    if (key.state === 'Disabled') throw new AwsError('DisabledException', `${key.arn} is disabled.`);
    if (key.state === 'PendingDeletion') {
      throw new AwsError('KMSInvalidStateException', `${key.arn} is pending deletion.`);
    }
  }
  const notPendingDeletion = (key: Key) => {
    if (key.state === 'PendingDeletion') {
      throw new AwsError('KMSInvalidStateException', `${key.arn} is pending deletion.`);
    }
  };

  function checkAlgorithm(f: Fields, member: string): void {
    const algorithm = f.string(member, { enum: ENCRYPTION_ALGORITHMS });
    f.check();
    if (algorithm !== undefined && algorithm !== 'SYMMETRIC_DEFAULT') {
      throw new AwsError(
        'InvalidKeyUsageException',
        `${algorithm} is not a valid encryption algorithm for a symmetric KMS key.`,
      );
    }
  }

  function dryRun(f: Fields): void {
    if (f.bool('DryRun')) {
      throw new AwsError(
        'DryRunOperationException',
        'The request would have succeeded, but the DryRun option is set.',
      );
    }
  }

  // ---- the cryptography ----

  function seal(key: Key, plaintext: Buffer, context: Record<string, string>): Buffer {
    const version = key.versions.length;
    const header = Buffer.alloc(HEADER_LEN);
    header[0] = BLOB_FORMAT;
    uuidBytes(key.id).copy(header, 1);
    header.writeUInt32BE(version, 17);
    const nonce = randomBytes(NONCE_LEN);
    const cipher = createCipheriv('aes-256-gcm', key.versions[version - 1]!, nonce);
    cipher.setAAD(aad(header, context));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return Buffer.concat([header, nonce, body, cipher.getAuthTag()]);
  }

  /** The key a blob names, without decrypting; a blob that names no key of this emulator is invalid. */
  function keyOfBlob(blob: Buffer): Key {
    if (blob.length < HEADER_LEN + NONCE_LEN + TAG_LEN || blob[0] !== BLOB_FORMAT) {
      throw new AwsError('InvalidCiphertextException');
    }
    const key = keys.get(uuidOf(blob.subarray(1, 17)));
    if (!key) throw new AwsError('InvalidCiphertextException');
    return key;
  }

  function open(key: Key, blob: Buffer, context: Record<string, string>): Buffer {
    const version = blob.readUInt32BE(17);
    const secret = version >= 1 ? key.versions[version - 1] : undefined;
    if (!secret) throw new AwsError('InvalidCiphertextException');
    const header = blob.subarray(0, HEADER_LEN);
    const nonce = blob.subarray(HEADER_LEN, HEADER_LEN + NONCE_LEN);
    const tag = blob.subarray(blob.length - TAG_LEN);
    try {
      const decipher = createDecipheriv('aes-256-gcm', secret, nonce);
      decipher.setAAD(aad(header, context));
      decipher.setAuthTag(tag);
      return Buffer.concat([
        decipher.update(blob.subarray(HEADER_LEN + NONCE_LEN, blob.length - TAG_LEN)),
        decipher.final(),
      ]);
    } catch {
      throw new AwsError('InvalidCiphertextException');
    }
  }

  /** Decrypt's and ReEncrypt's source half: blob key, optional named key (IncorrectKey), permission, state. */
  function decryptSource(
    principal: Principal,
    action: 'Decrypt' | 'ReEncryptFrom',
    blob: Buffer,
    namedKeyId: string | undefined,
    context: Record<string, string>,
  ): { key: Key; plaintext: Buffer } {
    const key = keyOfBlob(blob);
    if (namedKeyId !== undefined && resolve(namedKeyId) !== key) {
      throw new AwsError(
        'IncorrectKeyException',
        'The key ID in the request does not identify a CMK that can perform this operation.',
      );
    }
    authorize(principal, action, key.arn);
    usable(key);
    return { key, plaintext: open(key, blob, context) };
  }

  const metadata = (key: Key) => ({
    AWSAccountId: accountId,
    KeyId: key.id,
    Arn: key.arn,
    CreationDate: epoch(key.createdAt),
    Enabled: key.state === 'Enabled',
    Description: key.description,
    KeyUsage: 'ENCRYPT_DECRYPT',
    KeyState: key.state,
    DeletionDate: key.deletionDate === undefined ? undefined : epoch(key.deletionDate),
    PendingDeletionWindowInDays: key.pendingWindowInDays,
    Origin: 'AWS_KMS',
    KeyManager: 'CUSTOMER',
    CustomerMasterKeySpec: 'SYMMETRIC_DEFAULT',
    KeySpec: 'SYMMETRIC_DEFAULT',
    EncryptionAlgorithms: ['SYMMETRIC_DEFAULT'],
    MultiRegion: false,
  });

  // ---- operations ----

  type Op = (f: Fields, principal: Principal, now: number) => Body;

  const ops: Record<string, Op> = {
    CreateKey(f, principal, now) {
      const description = f.string('Description', { max: 8192 }) ?? '';
      const keySpec = f.string('KeySpec') ?? f.string('CustomerMasterKeySpec') ?? 'SYMMETRIC_DEFAULT';
      const keyUsage = f.string('KeyUsage') ?? 'ENCRYPT_DECRYPT';
      const origin = f.string('Origin') ?? 'AWS_KMS';
      const multiRegion = f.bool('MultiRegion') ?? false;
      f.string('Policy', { min: 1, max: 131072 });
      f.check();
      authorize(principal, 'CreateKey', '*');
      if (
        keySpec !== 'SYMMETRIC_DEFAULT' ||
        keyUsage !== 'ENCRYPT_DECRYPT' ||
        origin !== 'AWS_KMS' ||
        multiRegion
      ) {
        throw new AwsError(
          'UnsupportedOperationException',
          'The KMS emulator only emulates single-Region SYMMETRIC_DEFAULT ENCRYPT_DECRYPT keys with origin AWS_KMS.',
        );
      }
      const id = randomUUID();
      const key: Key = {
        id,
        arn: `${keyArnPrefix}${id}`,
        createdAt: now,
        description,
        state: 'Enabled',
        rotationEnabled: false,
        onDemandRotations: 0,
        versions: [randomBytes(32)],
      };
      keys.set(id, key);
      return { KeyMetadata: metadata(key) };
    },

    DescribeKey(f, principal) {
      const key = keyIdField(f, 'KeyId');
      authorize(principal, 'DescribeKey', key.arn);
      return { KeyMetadata: metadata(key) };
    },

    ListKeys(f, principal) {
      const limit = f.int('Limit', { min: 1, max: 1000 }) ?? 100;
      const marker = f.string('Marker', { min: 1, max: 1024 });
      f.check();
      authorize(principal, 'ListKeys', '*');
      const all = [...keys.values()];
      const start = marker === undefined ? 0 : Number(/^emu:(\d+)$/.exec(marker)?.[1] ?? Number.NaN);
      if (!Number.isInteger(start)) throw new AwsError('InvalidMarkerException', 'The marker is not valid.');
      const page = all.slice(start, start + limit);
      const truncated = start + limit < all.length;
      return {
        Keys: page.map((k) => ({ KeyId: k.id, KeyArn: k.arn })),
        Truncated: truncated,
        NextMarker: truncated ? `emu:${start + limit}` : undefined,
      };
    },

    CreateAlias(f, principal, now) {
      const name = f.string('AliasName', { required: true, min: 1, max: 256 });
      const target = f.string('TargetKeyId', { required: true, min: 1, max: 2048 });
      f.check();
      if (!ALIAS_NAME.test(name!)) {
        throw new AwsError(
          'ValidationException',
          `1 validation error detected: Value '${name}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$`,
        );
      }
      if (name!.startsWith('alias/aws/')) {
        throw new AwsError(
          'NotAuthorizedException',
          'Cannot create an alias with the reserved prefix alias/aws/.',
        );
      }
      const key = resolve(target!, false);
      authorize(principal, 'CreateAlias', aliasArn(name!));
      authorize(principal, 'CreateAlias', key.arn);
      if (aliases.has(name!)) {
        throw new AwsError(
          'AlreadyExistsException',
          `An alias with the name ${aliasArn(name!)} already exists`,
        );
      }
      notPendingDeletion(key);
      aliases.set(name!, { name: name!, arn: aliasArn(name!), keyId: key.id, createdAt: now });
      return {};
    },

    DeleteAlias(f, principal) {
      const name = f.string('AliasName', { required: true, min: 1, max: 256 });
      f.check();
      const alias = aliases.get(name!);
      if (!alias) throw new AwsError('NotFoundException', `Alias ${aliasArn(name!)} is not found.`);
      authorize(principal, 'DeleteAlias', alias.arn);
      authorize(principal, 'DeleteAlias', keys.get(alias.keyId)!.arn);
      aliases.delete(name!);
      return {};
    },

    ListAliases(f, principal) {
      const keyId = f.string('KeyId', { min: 1, max: 2048 });
      f.check();
      const key = keyId === undefined ? undefined : resolve(keyId, false);
      authorize(principal, 'ListAliases', '*');
      return {
        Aliases: [...aliases.values()]
          .filter((a) => key === undefined || a.keyId === key.id)
          .map((a) => ({
            AliasName: a.name,
            AliasArn: a.arn,
            TargetKeyId: a.keyId,
            CreationDate: epoch(a.createdAt),
          })),
        Truncated: false,
      };
    },

    EnableKey(f, principal) {
      const key = keyIdField(f, 'KeyId', false);
      authorize(principal, 'EnableKey', key.arn);
      notPendingDeletion(key);
      key.state = 'Enabled';
      return {};
    },

    DisableKey(f, principal) {
      const key = keyIdField(f, 'KeyId', false);
      authorize(principal, 'DisableKey', key.arn);
      notPendingDeletion(key);
      key.state = 'Disabled';
      return {};
    },

    ScheduleKeyDeletion(f, principal, now) {
      const days = f.int('PendingWindowInDays', { min: 7, max: 30 }) ?? 30;
      const key = keyIdField(f, 'KeyId', false);
      authorize(principal, 'ScheduleKeyDeletion', key.arn);
      notPendingDeletion(key);
      key.state = 'PendingDeletion';
      key.pendingWindowInDays = days;
      key.deletionDate = now + days * 86_400_000;
      return {
        KeyId: key.arn,
        DeletionDate: epoch(key.deletionDate),
        KeyState: key.state,
        PendingWindowInDays: days,
      };
    },

    CancelKeyDeletion(f, principal) {
      const key = keyIdField(f, 'KeyId', false);
      authorize(principal, 'CancelKeyDeletion', key.arn);
      if (key.state !== 'PendingDeletion') {
        throw new AwsError('KMSInvalidStateException', `${key.arn} is not pending deletion.`);
      }
      key.state = 'Disabled'; // KMS: a key whose deletion is cancelled comes back disabled
      key.deletionDate = undefined;
      key.pendingWindowInDays = undefined;
      return { KeyId: key.arn };
    },

    EnableKeyRotation(f, principal) {
      const period = f.int('RotationPeriodInDays', { min: 90, max: 2560 }) ?? 365;
      const key = keyIdField(f, 'KeyId', false);
      authorize(principal, 'EnableKeyRotation', key.arn);
      usable(key);
      key.rotationEnabled = true;
      key.rotationPeriodInDays = period;
      return {};
    },

    DisableKeyRotation(f, principal) {
      const key = keyIdField(f, 'KeyId', false);
      authorize(principal, 'DisableKeyRotation', key.arn);
      usable(key);
      key.rotationEnabled = false;
      key.rotationPeriodInDays = undefined;
      return {};
    },

    GetKeyRotationStatus(f, principal) {
      const key = keyIdField(f, 'KeyId', false);
      authorize(principal, 'GetKeyRotationStatus', key.arn);
      notPendingDeletion(key);
      return {
        KeyRotationEnabled: key.rotationEnabled,
        KeyId: key.arn,
        RotationPeriodInDays: key.rotationPeriodInDays,
      };
    },

    RotateKeyOnDemand(f, principal) {
      const key = keyIdField(f, 'KeyId', false);
      authorize(principal, 'RotateKeyOnDemand', key.arn);
      usable(key);
      if (key.onDemandRotations >= MAX_ON_DEMAND_ROTATIONS) {
        throw new AwsError(
          'LimitExceededException',
          `The on-demand rotation limit of ${MAX_ON_DEMAND_ROTATIONS} has been reached for ${key.arn}.`,
        );
      }
      key.onDemandRotations += 1;
      key.versions.push(randomBytes(32));
      return { KeyId: key.arn };
    },

    GenerateDataKey(f, principal) {
      return generateDataKey(f, principal, 'GenerateDataKey', true);
    },

    GenerateDataKeyWithoutPlaintext(f, principal) {
      return generateDataKey(f, principal, 'GenerateDataKeyWithoutPlaintext', false);
    },

    Encrypt(f, principal) {
      const plaintext = f.blob('Plaintext', { required: true, min: 1, max: 4096 });
      const context = f.context('EncryptionContext');
      checkAlgorithm(f, 'EncryptionAlgorithm');
      const key = keyIdField(f, 'KeyId');
      authorize(principal, 'Encrypt', key.arn);
      usable(key);
      dryRun(f);
      return {
        CiphertextBlob: seal(key, plaintext!, context).toString('base64'),
        KeyId: key.arn,
        EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
      };
    },

    Decrypt(f, principal) {
      const blob = f.blob('CiphertextBlob', { required: true, min: 1, max: 6144 });
      const context = f.context('EncryptionContext');
      const keyId = f.string('KeyId', { min: 1, max: 2048 });
      checkAlgorithm(f, 'EncryptionAlgorithm');
      const { key, plaintext } = decryptSource(principal, 'Decrypt', blob!, keyId, context);
      dryRun(f);
      return {
        KeyId: key.arn,
        Plaintext: plaintext.toString('base64'),
        EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
      };
    },

    ReEncrypt(f, principal) {
      const blob = f.blob('CiphertextBlob', { required: true, min: 1, max: 6144 });
      const sourceContext = f.context('SourceEncryptionContext');
      const destinationContext = f.context('DestinationEncryptionContext');
      const sourceKeyId = f.string('SourceKeyId', { min: 1, max: 2048 });
      const destinationKeyId = f.string('DestinationKeyId', { required: true, min: 1, max: 2048 });
      checkAlgorithm(f, 'SourceEncryptionAlgorithm');
      checkAlgorithm(f, 'DestinationEncryptionAlgorithm');
      const destination = resolve(destinationKeyId!);
      const source = decryptSource(principal, 'ReEncryptFrom', blob!, sourceKeyId, sourceContext);
      authorize(principal, 'ReEncryptTo', destination.arn);
      usable(destination);
      dryRun(f);
      return {
        CiphertextBlob: seal(destination, source.plaintext, destinationContext).toString('base64'),
        SourceKeyId: source.key.arn,
        KeyId: destination.arn,
        SourceEncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
        DestinationEncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
      };
    },
  };

  function generateDataKey(
    f: Fields,
    principal: Principal,
    action: 'GenerateDataKey' | 'GenerateDataKeyWithoutPlaintext',
    withPlaintext: boolean,
  ): Body {
    const keySpec = f.string('KeySpec', { enum: ['AES_256', 'AES_128'] });
    const numberOfBytes = f.int('NumberOfBytes', { min: 1, max: 1024 });
    const context = f.context('EncryptionContext');
    if (withPlaintext && f.body.Recipient !== undefined) {
      throw new AwsError(
        'UnsupportedOperationException',
        'The KMS emulator does not emulate Nitro Enclaves attestation (Recipient).',
      );
    }
    const key = keyIdField(f, 'KeyId');
    if ((keySpec === undefined) === (numberOfBytes === undefined)) {
      throw new AwsError('ValidationException', 'Please specify either number of bytes or key spec.');
    }
    authorize(principal, action, key.arn);
    usable(key);
    dryRun(f);
    const plaintext = randomBytes(numberOfBytes ?? (keySpec === 'AES_128' ? 16 : 32));
    const blob = seal(key, plaintext, context).toString('base64');
    return withPlaintext
      ? { CiphertextBlob: blob, Plaintext: plaintext.toString('base64'), KeyId: key.arn }
      : { CiphertextBlob: blob, KeyId: key.arn };
  }

  // ---- HTTP ----

  function send(res: ServerResponse, status: number, payload: Body): void {
    const text = JSON.stringify(payload);
    res.writeHead(status, {
      'content-type': 'application/x-amz-json-1.1',
      'content-length': Buffer.byteLength(text),
      'x-amzn-requestid': randomUUID(),
    });
    res.end(text);
  }
  /** KMS error body: {"__type","message"}; InvalidCiphertextException comes without a message. */
  const sendError = (res: ServerResponse, e: AwsError) =>
    send(res, e.status, e.hasMessage ? { __type: e.type, message: e.message } : { __type: e.type });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks);
    const now = Date.now();
    const target = req.headers['x-amz-target'];
    const operation =
      typeof target === 'string' && target.startsWith('TrentService.')
        ? target.slice('TrentService.'.length)
        : '';
    const record: KmsRequestRecord = { operation };
    const accessKeyId = /Credential=([^/,\s]+)\//.exec(req.headers.authorization ?? '')?.[1];
    if (accessKeyId !== undefined) record.accessKeyId = accessKeyId;
    requests.push(record);
    if (operation !== '') calls[operation] = (calls[operation] ?? 0) + 1;
    const fail = (e: AwsError) => {
      record.status = e.status;
      record.error = e.type;
      sendError(res, e);
    };
    try {
      if (req.method !== 'POST' || (req.url ?? '/').split('?')[0] !== '/') {
        throw new AwsError('UnknownOperationException', 'Only POST / is served.', 404);
      }
      const principal = authenticate(req, raw, now);
      const op = Object.hasOwn(ops, operation) ? ops[operation] : undefined;
      if (!op) throw new AwsError('UnknownOperationException', `Operation '${operation}' is not emulated.`);
      const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (contentType !== 'application/x-amz-json-1.1') {
        throw new AwsError(
          'SerializationException',
          `Content-Type must be application/x-amz-json-1.1, not '${contentType}'.`,
        );
      }
      const rule = failures.find((r) => r.remaining > 0 && (r.match === undefined || r.match(operation)));
      if (rule) {
        rule.remaining -= 1;
        if (rule.remaining === 0) failures.splice(failures.indexOf(rule), 1);
        const injected = INJECTED[rule.code];
        throw new AwsError(rule.code, injected.message, injected.status);
      }
      let body: unknown;
      try {
        body = raw.length === 0 ? {} : JSON.parse(raw.toString('utf8'));
      } catch {
        body = undefined;
      }
      if (typeof body !== 'object' || body === null || Array.isArray(body)) {
        throw new AwsError('SerializationException', 'The request body is not a JSON object.');
      }
      const result = op(new Fields(body as Body), principal, now);
      record.status = 200;
      send(res, 200, result);
    } catch (e) {
      // Never String(e) of an unknown error into the answer: it could carry request data.
      fail(
        e instanceof AwsError ? e : new AwsError('KMSInternalException', 'An internal error occurred.', 500),
      );
    }
  }

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent)
        sendError(res, new AwsError('KMSInternalException', 'An internal error occurred.', 500));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  const principalOf = (accessKeyId: string) => {
    const p = principals.get(accessKeyId);
    if (!p) throw new Error(`aws-kms emulator: no access key ${accessKeyId}`);
    return p;
  };

  return {
    endpoint: `http://127.0.0.1:${port}`,
    region,
    accountId,
    credentials,
    requests,
    calls,
    addCredentials(opts) {
      const name = opts?.name ?? `principal-${randomChars(8, 'abcdefghijklmnopqrstuvwxyz0123456789')}`;
      if (!/^[\w+=,.@-]{1,64}$/.test(name)) throw new Error(`aws-kms emulator: bad user name ${name}`);
      return addPrincipal(name, opts?.deny ?? []);
    },
    setDeny(accessKeyId, deny) {
      principalOf(accessKeyId).deny = [...deny];
    },
    removeCredentials(accessKeyId) {
      principalOf(accessKeyId);
      principals.delete(accessKeyId);
    },
    callCount: (operation) => calls[operation] ?? 0,
    resetCalls() {
      for (const k of Object.keys(calls)) delete calls[k];
    },
    failNext(count, code, match) {
      if (count > 0)
        failures.push(match === undefined ? { remaining: count, code } : { remaining: count, code, match });
    },
    inspectKey(keyId) {
      let key: Key;
      try {
        key = resolve(keyId);
      } catch (e) {
        throw new Error(`aws-kms emulator: ${(e as Error).message}`);
      }
      return {
        keyId: key.id,
        arn: key.arn,
        state: key.state,
        backingVersions: key.versions.length,
        rotationEnabled: key.rotationEnabled,
        aliases: [...aliases.values()].filter((a) => a.keyId === key.id).map((a) => a.name),
      };
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections(); // the SDK's keep-alive sockets would otherwise hold close() open
      }),
  };
}
