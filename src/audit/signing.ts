// The Ed25519 keys of the audit chain. Only the sealer (worker component) needs the private key; the API needs
// only public keys, to verify and to publish at GET /v1/audit/public-key. Several public keys may be configured
// (the current one first, then retired ones), so checkpoints signed before a key rotation still verify.
import { createPublicKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { devAuditSigningKey } from '../config/dev-state.ts';
import { parsePublicKeys, parseSigningKey } from '../crypto/ed25519-keys.ts';
import type { Logger } from '../logging/logger.ts';
import { keyId } from './chain.ts';

export interface AuditKeyConfig {
  /** PEM (PKCS#8) of the Ed25519 private key, from KEYTURN_AUDIT_SIGNING_KEY. */
  signingKey?: string;
  /** File holding that PEM (KEYTURN_AUDIT_SIGNING_KEY_FILE), e.g. a mounted Kubernetes secret. */
  signingKeyFile?: string;
  /** File of one or more public keys (SPKI PEM) that verify checkpoints (KEYTURN_AUDIT_PUBLIC_KEY_FILE). */
  publicKeyFile?: string;
}

export interface AuditKeys {
  signer: KeyObject | undefined;
  /** Current first. */
  publicKeys: KeyObject[];
}

export function publicKeyPem(keys: KeyObject[]): string {
  return keys.map((k) => String(k.export({ type: 'spki', format: 'pem' }))).join('');
}

/**
 * Resolves the keys this process needs. A worker without a configured key gets a development key kept in the
 * state folder (refused when NODE_ENV=production); an API without keys of its own uses that same development
 * key's public half when it exists.
 */
export async function loadAuditKeys(
  config: AuditKeyConfig,
  options: { needsSigner: boolean; production: boolean; stateDir: string; logger: Logger },
): Promise<AuditKeys> {
  let signer: KeyObject | undefined;
  if (config.signingKey) signer = parseSigningKey(config.signingKey, 'KEYTURN_AUDIT_SIGNING_KEY');
  else if (config.signingKeyFile) {
    const text = await readFile(config.signingKeyFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw new Error(`KEYTURN_AUDIT_SIGNING_KEY_FILE ${config.signingKeyFile} cannot be read (${err.code})`);
    });
    signer = parseSigningKey(text, `KEYTURN_AUDIT_SIGNING_KEY_FILE ${config.signingKeyFile}`);
  }
  let publicKeys: KeyObject[] = [];
  if (config.publicKeyFile) {
    const text = await readFile(config.publicKeyFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw new Error(`KEYTURN_AUDIT_PUBLIC_KEY_FILE ${config.publicKeyFile} cannot be read (${err.code})`);
    });
    publicKeys = parsePublicKeys(text, `KEYTURN_AUDIT_PUBLIC_KEY_FILE ${config.publicKeyFile}`);
  }
  if (!signer && (options.needsSigner || publicKeys.length === 0)) {
    if (options.production) {
      if (options.needsSigner) {
        throw new Error(
          'KEYTURN_AUDIT_SIGNING_KEY or KEYTURN_AUDIT_SIGNING_KEY_FILE is required for workers when NODE_ENV=production: it signs the audit checkpoints (make one with `openssl genpkey -algorithm ed25519`)',
        );
      }
    } else {
      const dev = await devAuditSigningKey(options.stateDir);
      signer = parseSigningKey(dev.value, dev.path);
      options.logger.warn(
        { path: dev.path },
        `KEYTURN_AUDIT_SIGNING_KEY is not set: ${dev.created ? 'made' : 'using'} a development audit signing key in ${dev.path}; checkpoints are only as trustworthy as that file`,
      );
    }
  }
  if (signer) {
    const own = createPublicKey(signer);
    if (!publicKeys.some((k) => keyId(k) === keyId(own))) publicKeys = [own, ...publicKeys];
  }
  return { signer: options.needsSigner ? signer : undefined, publicKeys };
}
