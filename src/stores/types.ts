// The SecretStore interface: what the rotation engine needs from any home of a secret. It follows the staging
// model of AWS Secrets Manager (versions carrying the labels current, pending and previous), which the local
// store implements natively and the Vault store maps onto KV v2 versions and metadata.
import type { StoreSpec } from '../registry/types.ts';

export type Stage = 'current' | 'pending' | 'previous';

/**
 * The stored document, in the layout of the AWS rotation templates, so that existing consumers of a secret in
 * Vault or AWS keep reading it unchanged.
 */
export interface SecretDocument {
  engine: string;
  host: string;
  port: number;
  dbname?: string;
  username: string;
  password: string;
  /** alternating-users in AWS: the ARN of the admin secret. */
  masterarn?: string;
  /**
   * A secret the downstream made (AWS IAM access keys, TargetSession.mintedSecrets), in the AWS layout readers of IAM
   * keys expect: the key's id, and its secret again (the same value as `password`, which Keyturn's own paths read).
   */
  accessKeyId?: string;
  secretAccessKey?: string;
}

export interface SecretVersion {
  versionId: string;
  stages: Stage[];
  createdAt: string;
  value: SecretDocument;
}

/** Where a secret lives: the credential's store spec plus Keyturn's own name for it (local store key). */
export interface SecretRef {
  spec: StoreSpec;
  name: string;
}

export type VersionSelector = { stage: Stage } | { versionId: string };

export class StoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

/** The store refused the operation (a policy or permission): retrying will not help; someone must grant it. */
export class StoreRefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreRefusedError';
  }
}

/**
 * The spec names a store this Keyturn has not configured (a credential on Vault, Keyturn started without VAULT_ADDR):
 * nothing can fix it but configuration, so a rotation fails at once and the API answers 422.
 */
export class StoreNotConfiguredError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreNotConfiguredError';
  }
}

export class StoreConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreConflictError';
  }
}

export interface SecretStore {
  readonly type: StoreSpec['type'];
  /** Version ids and their stages, or null when the secret does not exist (AWS DescribeSecret). */
  describe(ref: SecretRef): Promise<Record<string, Stage[]> | null>;
  read(ref: SecretRef, selector: VersionSelector): Promise<SecretVersion | null>;
  /**
   * Writes `value` as the pending version `token`. Idempotent: when `token` already exists the call changes
   * nothing and returns created=false (the caller then reuses the stored value: never generate twice). A
   * pending version left by another token is a leftover of a finished or rolled-back rotation: it loses the
   * label (AWS templates do the same).
   */
  putPending(ref: SecretRef, token: string, value: SecretDocument): Promise<{ created: boolean }>;
  /** Moves `current` to `token`; the old current becomes `previous`. Idempotent when `token` is current already. */
  promote(ref: SecretRef, token: string): Promise<{ promoted: boolean; previousVersionId?: string }>;
  /** Drops the pending version `token` (rollback). Idempotent. */
  discardPending(ref: SecretRef, token: string): Promise<void>;
  /** Writes `value` directly as the current version `token` (imports and connection admin secrets). */
  putCurrent(ref: SecretRef, token: string, value: SecretDocument): Promise<void>;
  /** Removes the secret and all its versions. */
  remove(ref: SecretRef): Promise<void>;
  /** Readiness: throws StoreUnavailableError when the store cannot be reached. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
