/**
 * The transit secrets engine of the Vault emulator (./vault.ts routes `<transit mount>/...` here after the token
 * and ACL checks). Behaviour and messages follow hashicorp/vault builtin/logical/transit (path_keys.go,
 * path_keys_config.go, path_encrypt.go, path_decrypt.go, path_rewrap.go, path_datakey.go) and
 * sdk/helper/keysutil/policy.go, cited as "transit" / "keysutil".
 *
 * Strict where Vault is strict:
 * - Real authenticated encryption per key version: each version has its own random key (32 bytes for
 *   aes256-gcm96 and chacha20-poly1305, 16 for aes128-gcm96); a ciphertext is `vault:v<N>:` + base64(12-byte
 *   nonce ‖ ciphertext ‖ 16-byte tag). `associated_data` is the AEAD's AAD: a different or missing one fails
 *   authentication ("cipher: message authentication failed"; chacha20-poly1305 says "chacha20poly1305: ...").
 * - Derived keys: the per-request key is HKDF-SHA256(version key, no salt, info = context) (keysutil
 *   DeriveKey, kdf hkdf_sha256); without a context every operation is refused with Vault's message, and a
 *   different context fails authentication.
 * - Versions: below min_decryption_version "ciphertext or signature version is disallowed by policy (too old)",
 *   above latest_version "invalid ciphertext: version is too new"; key_version on encrypt/rewrap/datakey within
 *   [min_encryption_version, latest_version]; config refuses minima above the latest version or a min encryption
 *   version below the min decryption version.
 * - Malformed ciphertexts: "invalid ciphertext: no prefix", "... wrong number of fields", "... version number
 *   could not be decoded", "... could not decode base64", "invalid ciphertext length" (all 400).
 * - Upsert: encrypt on an unknown key creates it (derived when a context is given) only when the request is a
 *   create operation, which the ACL decides (vault.ts asks `exists` first, as Vault's existence check does).
 * - Unknown keys: GET keys/<name> 404; encrypt (update), decrypt, rewrap, datakey "encryption key not found",
 *   rotate "key not found", config "no existing key named <name> could be found", DELETE "error deleting policy
 *   <name>: could not delete key; not found"; DELETE without deletion_allowed "... deletion is not allowed for
 *   this key" (all 400).
 *
 * Not reproduced: batch_input (refused with 400 naming the emulator), convergent encryption, asymmetric, HMAC and
 * managed keys (keys/<name> with such a type is refused as not emulated), sign/verify/hmac/hash/random/export/
 * backup/restore/trim/cache-config, auto_rotate_period (accepted and reported, never acted on), and Vault's exact
 * base64 error byte offsets (the offset reported here is the first invalid character).
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

export type TransitKeyType = 'aes256-gcm96' | 'aes128-gcm96' | 'chacha20-poly1305';
export type TransitOp = 'read' | 'list' | 'write' | 'delete' | 'patch';

/** What the engine answers; vault.ts wraps it in Vault's envelope or {"errors": [...]}. */
export interface TransitReply {
  status: number;
  data?: Record<string, unknown>;
  errors?: string[];
  warnings?: string[];
}

interface KeyVersion {
  secret: Buffer;
  /** Unix seconds, as `keys` reports it. */
  created: number;
}

interface TransitKey {
  name: string;
  type: TransitKeyType;
  derived: boolean;
  exportable: boolean;
  allowPlaintextBackup: boolean;
  deletionAllowed: boolean;
  autoRotatePeriod: number;
  latest: number;
  minDecryption: number;
  minEncryption: number;
  versions: Map<number, KeyVersion>;
}

const KEY_TYPES: TransitKeyType[] = ['aes128-gcm96', 'aes256-gcm96', 'chacha20-poly1305'];
/** Types real Vault knows that the emulator does not model. */
const OTHER_VAULT_TYPES = [
  'ecdsa-p256',
  'ecdsa-p384',
  'ecdsa-p521',
  'ed25519',
  'rsa-2048',
  'rsa-3072',
  'rsa-4096',
  'hmac',
  'aes128-cmac',
  'aes256-cmac',
  'managed_key',
];
const NAME = /^\w(([\w-.@]+)?\w)?$/; // framework.GenericNameRegex
const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const NONCE_LEN = 12;
const TAG_LEN = 16;

const fail = (message: string, status = 400): TransitReply => ({ status, errors: [message] });
class TransitError extends Error {}
const userError = (message: string) => new TransitError(message);

/** Go's base64.StdEncoding.DecodeString, strict; the error names the first offending byte. */
function decodeBase64(value: string): Buffer {
  const text = value.replace(/[\r\n]/g, '');
  if (!STRICT_BASE64.test(text)) {
    const bad = text.search(/[^A-Za-z0-9+/=]/);
    throw userError(
      `illegal base64 data at input byte ${bad >= 0 ? bad : Math.max(0, text.length - (text.length % 4))}`,
    );
  }
  return Buffer.from(text, 'base64');
}

/** A string field (Vault's TypeString: weakly decoded; numbers and bools become text). */
function stringField(body: Record<string, unknown>, key: string): string | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  throw userError(`error converting input for field "${key}": expected a string`);
}
function intField(body: Record<string, unknown>, key: string): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'string' && /^[+-]?\d+$/.test(v.trim())) return Number(v.trim());
  throw userError(`error converting input for field "${key}": cannot parse as int`);
}
function boolField(body: Record<string, unknown>, key: string): boolean | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string' && ['1', 't', 'T', 'TRUE', 'true', 'True'].includes(v)) return true;
  if (typeof v === 'string' && ['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(v)) return false;
  throw userError(`error converting input for field "${key}": expected a bool`);
}

export interface TransitEngine {
  /** Vault's existence check for writes: encrypt/<name> is a create when the key does not exist yet. */
  writeIsCreate(space: string, rest: string): boolean;
  route(space: string, rest: string, op: TransitOp, body: Record<string, unknown>): TransitReply;
}

/** `space` identifies namespace + mount; each has its own keys. */
export function createTransitEngine(): TransitEngine {
  const spaces = new Map<string, Map<string, TransitKey>>();
  const keysOf = (space: string) => {
    let keys = spaces.get(space);
    if (!keys) {
      keys = new Map();
      spaces.set(space, keys);
    }
    return keys;
  };

  function newKey(name: string, type: TransitKeyType, derived: boolean): TransitKey {
    const key: TransitKey = {
      name,
      type,
      derived,
      exportable: false,
      allowPlaintextBackup: false,
      deletionAllowed: false,
      autoRotatePeriod: 0,
      latest: 0,
      minDecryption: 1,
      minEncryption: 0,
      versions: new Map(),
    };
    addVersion(key);
    return key;
  }

  function addVersion(key: TransitKey): void {
    key.latest += 1;
    key.versions.set(key.latest, {
      secret: randomBytes(key.type === 'aes128-gcm96' ? 16 : 32),
      created: Math.floor(Date.now() / 1000),
    });
  }

  /** transit formatKeyPolicy, for the symmetric types modelled here. */
  function describe(key: TransitKey): Record<string, unknown> {
    const versions: Record<string, number> = {};
    for (const [n, v] of key.versions) versions[String(n)] = v.created;
    return {
      allow_plaintext_backup: key.allowPlaintextBackup,
      auto_rotate_period: key.autoRotatePeriod,
      deletion_allowed: key.deletionAllowed,
      derived: key.derived,
      exportable: key.exportable,
      imported_key: false,
      keys: versions,
      latest_version: key.latest,
      min_available_version: 0,
      min_decryption_version: key.minDecryption,
      min_encryption_version: key.minEncryption,
      name: key.name,
      supports_decryption: true,
      supports_derivation: true,
      supports_encryption: true,
      supports_signing: false,
      type: key.type,
      ...(key.derived ? { kdf: 'hkdf_sha256', convergent_encryption: false } : {}),
    };
  }

  // ---- keysutil: encryption and decryption ----

  function versionKey(key: TransitKey, version: number, context: Buffer | undefined): Buffer {
    const secret = key.versions.get(version)!.secret;
    if (!key.derived) return secret;
    if (!context || context.length === 0) {
      throw userError(
        "missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key",
      );
    }
    return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), context, secret.length));
  }

  const cipherName = (key: TransitKey) =>
    key.type === 'chacha20-poly1305'
      ? 'chacha20-poly1305'
      : key.type === 'aes128-gcm96'
        ? 'aes-128-gcm'
        : 'aes-256-gcm';

  function encryptWith(
    key: TransitKey,
    requested: number,
    plaintext: Buffer,
    context: Buffer | undefined,
    aad: Buffer | undefined,
  ): { ciphertext: string; version: number } {
    let version = requested;
    if (version === 0) version = key.latest;
    else if (version < 0) throw userError('requested version for encryption is negative');
    else if (version > key.latest)
      throw userError('requested version for encryption is higher than the latest key version');
    else if (version < key.minEncryption) {
      throw userError('requested version for encryption is less than the minimum encryption key version');
    }
    const secret = versionKey(key, version, context);
    const nonce = randomBytes(NONCE_LEN);
    const cipher = createCipheriv(cipherName(key) as 'aes-256-gcm', secret, nonce, {
      authTagLength: TAG_LEN,
    });
    if (aad && aad.length > 0) cipher.setAAD(aad);
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    const blob = Buffer.concat([nonce, body, cipher.getAuthTag()]);
    return { ciphertext: `vault:v${version}:${blob.toString('base64')}`, version };
  }

  function decryptWith(
    key: TransitKey,
    value: string,
    context: Buffer | undefined,
    aad: Buffer | undefined,
  ): Buffer {
    if (!value.startsWith('vault:v')) throw userError('invalid ciphertext: no prefix');
    const rest = value.slice('vault:v'.length);
    const colon = rest.indexOf(':');
    if (colon < 0) throw userError('invalid ciphertext: wrong number of fields');
    const versionText = rest.slice(0, colon);
    if (!/^[+-]?\d+$/.test(versionText))
      throw userError('invalid ciphertext: version number could not be decoded');
    let version = Number(versionText);
    if (version === 0) version = 1; // keysutil: legacy "v0" ciphertexts are version 1
    if (key.minDecryption > 0 && version < key.minDecryption) {
      throw userError('ciphertext or signature version is disallowed by policy (too old)');
    }
    if (version > key.latest) throw userError('invalid ciphertext: version is too new');
    let blob: Buffer;
    try {
      blob = decodeBase64(rest.slice(colon + 1));
    } catch {
      throw userError('invalid ciphertext: could not decode base64');
    }
    const secret = versionKey(key, version, context);
    if (blob.length < NONCE_LEN + TAG_LEN) throw userError('invalid ciphertext length');
    try {
      const decipher = createDecipheriv(
        cipherName(key) as 'aes-256-gcm',
        secret,
        blob.subarray(0, NONCE_LEN),
        {
          authTagLength: TAG_LEN,
        },
      );
      if (aad && aad.length > 0) decipher.setAAD(aad);
      decipher.setAuthTag(blob.subarray(blob.length - TAG_LEN));
      return Buffer.concat([
        decipher.update(blob.subarray(NONCE_LEN, blob.length - TAG_LEN)),
        decipher.final(),
      ]);
    } catch {
      throw userError(
        key.type === 'chacha20-poly1305'
          ? 'chacha20poly1305: message authentication failed'
          : 'cipher: message authentication failed',
      );
    }
  }

  const optionalBase64 = (body: Record<string, unknown>, field: string) => {
    const text = stringField(body, field);
    return text === undefined || text === '' ? undefined : decodeBase64(text);
  };

  function noBatch(body: Record<string, unknown>): void {
    if (body.batch_input !== undefined) throw userError('batch_input is not emulated by the Vault emulator');
  }

  // ---- endpoints ----

  function createKey(
    keys: Map<string, TransitKey>,
    name: string,
    body: Record<string, unknown>,
  ): TransitReply {
    const type = stringField(body, 'type') ?? 'aes256-gcm96';
    if (!KEY_TYPES.includes(type as TransitKeyType)) {
      if (OTHER_VAULT_TYPES.includes(type))
        return fail(`key type ${type} is not emulated by the Vault emulator`);
      return fail(`unknown key type: ${type}`);
    }
    const derived = boolField(body, 'derived') ?? false;
    if (boolField(body, 'convergent_encryption'))
      return fail('convergent encryption is not emulated by the Vault emulator');
    const existing = keys.get(name);
    if (existing) {
      return { status: 200, data: describe(existing), warnings: [`key ${name} already existed`] };
    }
    const key = newKey(name, type as TransitKeyType, derived);
    key.exportable = boolField(body, 'exportable') ?? false;
    key.allowPlaintextBackup = boolField(body, 'allow_plaintext_backup') ?? false;
    keys.set(name, key);
    return { status: 200, data: describe(key) };
  }

  function configure(key: TransitKey, body: Record<string, unknown>): TransitReply {
    const warnings: string[] = [];
    let minDecryption = key.minDecryption;
    let minEncryption = key.minEncryption;
    const dec = intField(body, 'min_decryption_version');
    if (dec !== undefined) {
      if (dec < 0) return fail('min decryption version cannot be negative');
      let wanted = dec;
      if (wanted === 0) {
        wanted = 1;
        warnings.push('since Vault 0.3, transit key numbering starts at 1; forcing minimum to 1');
      }
      if (wanted !== key.minDecryption && wanted > key.latest) {
        return fail(`cannot set min decryption version of ${wanted}, latest key version is ${key.latest}`);
      }
      minDecryption = wanted;
    }
    const enc = intField(body, 'min_encryption_version');
    if (enc !== undefined) {
      if (enc < 0) return fail('min encryption version cannot be negative');
      if (enc !== key.minEncryption && enc > key.latest) {
        return fail(`cannot set min encryption version of ${enc}, latest key version is ${key.latest}`);
      }
      minEncryption = enc;
    }
    if (minEncryption > 0 && minEncryption < minDecryption) {
      return fail(
        `cannot set min encryption/decryption values; min encryption version of ${minEncryption} must be greater than or equal to min decryption version of ${minDecryption}`,
      );
    }
    const deletionAllowed = boolField(body, 'deletion_allowed');
    const exportable = boolField(body, 'exportable');
    if (exportable === false && key.exportable)
      return fail('export cannot be disabled on a key that already has it enabled');
    const backup = boolField(body, 'allow_plaintext_backup');
    if (backup === false && key.allowPlaintextBackup) {
      return fail('plaintext backup cannot be disabled on a key that already has it enabled');
    }
    key.minDecryption = minDecryption;
    key.minEncryption = minEncryption;
    if (deletionAllowed !== undefined) key.deletionAllowed = deletionAllowed;
    if (exportable) key.exportable = true;
    if (backup) key.allowPlaintextBackup = true;
    return { status: 200, data: describe(key), ...(warnings.length > 0 ? { warnings } : {}) };
  }

  function encrypt(
    keys: Map<string, TransitKey>,
    name: string,
    body: Record<string, unknown>,
    create: boolean,
  ): TransitReply {
    noBatch(body);
    const plaintextText = stringField(body, 'plaintext');
    if (plaintextText === undefined) return fail('missing plaintext to encrypt');
    const plaintext = decodeBase64(plaintextText);
    const context = optionalBase64(body, 'context');
    const aad = optionalBase64(body, 'associated_data');
    const keyVersion = intField(body, 'key_version') ?? 0;
    let key = keys.get(name);
    let warnings: string[] | undefined;
    if (!key) {
      // transit pathEncryptWrite: only a create operation (existence check said "absent") upserts.
      if (!create) return fail('encryption key not found');
      const type = stringField(body, 'type') ?? 'aes256-gcm96';
      if (!KEY_TYPES.includes(type as TransitKeyType)) {
        return fail(
          type.startsWith('ecdsa-')
            ? `key type ${type} not supported for this operation`
            : `unknown key type ${type}`,
        );
      }
      if (boolField(body, 'convergent_encryption'))
        return fail('convergent encryption is not emulated by the Vault emulator');
      key = newKey(name, type as TransitKeyType, context !== undefined);
      keys.set(name, key);
    } else if (create) {
      warnings = [
        'Attempted creation of the key during the encrypt operation, but it was created beforehand',
      ];
    }
    const out = encryptWith(key, keyVersion, plaintext, context, aad);
    return {
      status: 200,
      data: { ciphertext: out.ciphertext, key_version: out.version },
      ...(warnings ? { warnings } : {}),
    };
  }

  function decrypt(key: TransitKey | undefined, body: Record<string, unknown>): TransitReply {
    noBatch(body);
    const ciphertext = stringField(body, 'ciphertext');
    if (ciphertext === undefined || ciphertext === '') return fail('missing ciphertext to decrypt');
    const context = optionalBase64(body, 'context');
    const aad = optionalBase64(body, 'associated_data');
    if (!key) return fail('encryption key not found');
    return {
      status: 200,
      data: { plaintext: decryptWith(key, ciphertext, context, aad).toString('base64') },
    };
  }

  function rewrap(key: TransitKey | undefined, body: Record<string, unknown>): TransitReply {
    noBatch(body);
    const ciphertext = stringField(body, 'ciphertext');
    if (ciphertext === undefined || ciphertext === '') return fail('missing ciphertext to decrypt');
    const context = optionalBase64(body, 'context');
    const keyVersion = intField(body, 'key_version') ?? 0;
    if (!key) return fail('encryption key not found');
    // transit path_rewrap: decrypt and encrypt again, without associated data.
    const plaintext = decryptWith(key, ciphertext, context, undefined);
    const out = encryptWith(key, keyVersion, plaintext, context, undefined);
    return { status: 200, data: { ciphertext: out.ciphertext, key_version: out.version } };
  }

  function datakey(key: TransitKey | undefined, kind: string, body: Record<string, unknown>): TransitReply {
    if (kind !== 'plaintext' && kind !== 'wrapped')
      return fail("Invalid path, must be 'plaintext' or 'wrapped'");
    const context = optionalBase64(body, 'context');
    const keyVersion = intField(body, 'key_version') ?? 0;
    const bits = intField(body, 'bits') ?? 256;
    if (![128, 256, 512].includes(bits === 0 ? 256 : bits)) return fail('invalid bits length');
    if (!key) return fail('encryption key not found');
    const plaintext = randomBytes((bits === 0 ? 256 : bits) / 8);
    const out = encryptWith(key, keyVersion, plaintext, context, undefined);
    const data: Record<string, unknown> = { ciphertext: out.ciphertext, key_version: out.version };
    if (kind === 'plaintext') data.plaintext = plaintext.toString('base64');
    return { status: 200, data };
  }

  function route(space: string, rest: string, op: TransitOp, body: Record<string, unknown>): TransitReply {
    const keys = keysOf(space);
    const unsupported = (): TransitReply => fail('1 error occurred:\n\t* unsupported operation\n\n', 405);
    try {
      if (rest === 'keys/' || rest === 'keys') {
        if (op !== 'list') return unsupported();
        if (keys.size === 0) return { status: 404, errors: [] };
        return { status: 200, data: { keys: [...keys.keys()].sort() } };
      }
      let m = /^keys\/([^/]+)$/.exec(rest);
      if (m) {
        const name = m[1]!;
        if (!NAME.test(name)) return { status: 404, errors: [] };
        const key = keys.get(name);
        if (op === 'read') return key ? { status: 200, data: describe(key) } : { status: 404, errors: [] };
        if (op === 'write') return createKey(keys, name, body);
        if (op === 'delete') {
          if (!key) return fail(`error deleting policy ${name}: could not delete key; not found`);
          if (!key.deletionAllowed)
            return fail(`error deleting policy ${name}: deletion is not allowed for this key`);
          keys.delete(name);
          return { status: 204 };
        }
        return unsupported();
      }
      m = /^keys\/([^/]+)\/(rotate|config)$/.exec(rest);
      if (m) {
        if (op !== 'write') return unsupported();
        const [, name, action] = m as unknown as [string, string, string];
        const key = keys.get(name);
        if (action === 'rotate') {
          if (!key) return fail('key not found');
          addVersion(key);
          return { status: 200, data: describe(key) };
        }
        if (!key) return fail(`no existing key named ${name} could be found`);
        return configure(key, body);
      }
      m = /^(encrypt|decrypt|rewrap)\/([^/]+)$/.exec(rest);
      if (m) {
        if (op !== 'write') return unsupported();
        const [, action, name] = m as unknown as [string, string, string];
        if (action === 'encrypt') return encrypt(keys, name, body, !keys.has(name));
        return action === 'decrypt' ? decrypt(keys.get(name), body) : rewrap(keys.get(name), body);
      }
      m = /^datakey\/([^/]+)\/([^/]+)$/.exec(rest);
      if (m) {
        if (op !== 'write') return unsupported();
        return datakey(keys.get(m[2]!), m[1]!, body);
      }
      return { status: 404, errors: [] };
    } catch (e) {
      if (e instanceof TransitError) return fail(e.message);
      throw e;
    }
  }

  return {
    writeIsCreate(space, rest) {
      const m = /^encrypt\/([^/]+)$/.exec(rest);
      return m !== null && !keysOf(space).has(m[1]!);
    },
    route,
  };
}
