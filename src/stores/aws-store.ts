// AWS Secrets Manager, with the protocol of the AWS rotation templates: the rotation id is the
// ClientRequestToken, the new version is put with VersionStages ["AWSPENDING"], promotion moves AWSCURRENT with
// UpdateSecretVersionStage (AWSPREVIOUS follows by itself), and every step starts with the templates' checks
// (is the token already AWSCURRENT? does it carry AWSPENDING?). A leftover AWSPENDING from a broken rotation
// loses its label when the next pending version is put. Region, endpoint and credentials come from the SDK's
// standard chain (AWS_REGION, AWS_ENDPOINT_URL, profiles, IRSA…); throttling is retried by the SDK's adaptive
// retry mode.
import {
  CreateSecretCommand,
  DeleteSecretCommand,
  DescribeSecretCommand,
  GetSecretValueCommand,
  ListSecretsCommand,
  PutSecretValueCommand,
  SecretsManagerClient,
  type SecretsManagerClientConfig,
  UpdateSecretVersionStageCommand,
} from '@aws-sdk/client-secrets-manager';
import {
  type SecretDocument,
  type SecretRef,
  type SecretStore,
  type SecretVersion,
  type Stage,
  StoreConflictError,
  StoreRefusedError,
  StoreUnavailableError,
  type VersionSelector,
} from './types.ts';

export interface AwsSettings {
  /** Default region when a store spec names none (else the SDK's chain decides). */
  region?: string;
  /** Test and LocalStack hook; normally the SDK reads AWS_ENDPOINT_URL itself. */
  endpoint?: string;
  credentials?: SecretsManagerClientConfig['credentials'];
  maxAttempts: number;
  timeoutMs: number;
}

const LABELS: Record<string, Stage> = {
  AWSCURRENT: 'current',
  AWSPENDING: 'pending',
  AWSPREVIOUS: 'previous',
};
const AWS_LABEL: Record<Stage, string> = {
  current: 'AWSCURRENT',
  pending: 'AWSPENDING',
  previous: 'AWSPREVIOUS',
};

// Errors that say "try again later" rather than "this cannot be done".
const TRANSIENT = new Set([
  'ThrottlingException',
  'InternalFailure',
  'InternalServiceError',
  'ServiceUnavailable',
  'ServiceUnavailableException',
  'RequestTimeout',
  'TimeoutError',
]);
const REFUSED = new Set([
  'CredentialsProviderError',
  'AccessDeniedException',
  'UnrecognizedClientException',
  'InvalidSignatureException',
  'ExpiredTokenException',
  'DecryptionFailure',
  'EncryptionFailure',
]);

const nameOf = (err: unknown): string => (err as { name?: string }).name ?? 'Error';

/** AWS ClientRequestToken must be 32–64 characters: Keyturn's version ids (UUIDs, import-<uuid>) are. */
function checkToken(token: string): string {
  if (token.length < 32 || token.length > 64) {
    throw new StoreConflictError(
      `version id "${token}" is not a valid ClientRequestToken (32-64 characters)`,
    );
  }
  return token;
}

export class AwsStore implements SecretStore {
  readonly type = 'aws' as const;
  readonly #settings: AwsSettings;
  readonly #clients = new Map<string, SecretsManagerClient>();

  constructor(settings: AwsSettings) {
    this.#settings = settings;
  }

  #client(ref: SecretRef | undefined): SecretsManagerClient {
    const region = (ref?.spec.type === 'aws' ? ref.spec.region : undefined) ?? this.#settings.region ?? '';
    let client = this.#clients.get(region);
    if (!client) {
      client = new SecretsManagerClient({
        ...(region ? { region } : {}),
        ...(this.#settings.endpoint ? { endpoint: this.#settings.endpoint } : {}),
        ...(this.#settings.credentials ? { credentials: this.#settings.credentials } : {}),
        retryMode: 'adaptive',
        maxAttempts: this.#settings.maxAttempts,
        requestHandler: {
          requestTimeout: this.#settings.timeoutMs,
          connectionTimeout: this.#settings.timeoutMs,
        },
      });
      this.#clients.set(region, client);
    }
    return client;
  }

  #secretId(ref: SecretRef): string {
    if (ref.spec.type !== 'aws') throw new Error(`AwsStore given a ${ref.spec.type} reference`);
    return ref.spec.secretId;
  }

  // biome-ignore lint/suspicious/noExplicitAny: every command class of the SDK; the SDK's own union does not type-check here
  async #send<T>(ref: SecretRef | undefined, action: string, command: any): Promise<T> {
    try {
      return (await this.#client(ref).send(command)) as T;
    } catch (err) {
      const name = nameOf(err);
      const where = ref ? ` ${this.#secretId(ref)}` : '';
      if (REFUSED.has(name)) {
        throw new StoreRefusedError(
          `AWS Secrets Manager refused ${action}${where} (${name}): the IAM role needs the permissions listed in the README`,
        );
      }
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (TRANSIENT.has(name) || status === undefined || status >= 500) {
        throw new StoreUnavailableError(
          `AWS Secrets Manager did not complete ${action}${where} (${name}); the rotation resumes when it answers`,
          { cause: err },
        );
      }
      throw err;
    }
  }

  /** VersionIdsToStages, or null when the secret does not exist. */
  async #stages(ref: SecretRef): Promise<Record<string, string[]> | null> {
    try {
      const res = await this.#send<{
        VersionIdsToStages?: Record<string, string[]>;
        DeletedDate?: Date;
        RotationEnabled?: boolean;
        RotationLambdaARN?: string;
      }>(ref, 'describing', new DescribeSecretCommand({ SecretId: this.#secretId(ref) }));
      // A secret scheduled for deletion is gone for every purpose of a rotation.
      if (res.DeletedDate) return null;
      // Two rotators on one secret would move each other's labels: refuse while AWS's own rotation is on.
      if (res.RotationEnabled) {
        throw new StoreRefusedError(
          `secret ${this.#secretId(ref)} has AWS rotation enabled (${res.RotationLambdaARN ?? 'a rotation function'}): turn it off (CancelRotateSecret) so that Keyturn alone rotates it`,
        );
      }
      return res.VersionIdsToStages ?? {};
    } catch (err) {
      if (nameOf(err) === 'ResourceNotFoundException') return null;
      throw err;
    }
  }

  async describe(ref: SecretRef): Promise<Record<string, Stage[]> | null> {
    const stages = await this.#stages(ref);
    if (!stages) return null;
    const out: Record<string, Stage[]> = {};
    for (const [id, labels] of Object.entries(stages)) {
      const mine = labels.map((l) => LABELS[l]).filter((s): s is Stage => s !== undefined);
      if (mine.length) out[id] = mine;
    }
    return out;
  }

  async read(ref: SecretRef, selector: VersionSelector): Promise<SecretVersion | null> {
    const input =
      'stage' in selector
        ? { SecretId: this.#secretId(ref), VersionStage: AWS_LABEL[selector.stage] }
        : { SecretId: this.#secretId(ref), VersionId: selector.versionId };
    let res: { VersionId?: string; SecretString?: string; VersionStages?: string[]; CreatedDate?: Date };
    try {
      res = await this.#send(ref, 'reading', new GetSecretValueCommand(input));
    } catch (err) {
      // Unknown secret or version, or a version without a value (RotateSecret's empty AWSPENDING placeholder),
      // or a secret scheduled for deletion.
      if (nameOf(err) === 'ResourceNotFoundException') return null;
      if (nameOf(err) === 'InvalidRequestException' && /delet/i.test((err as Error).message)) return null;
      throw err;
    }
    if (!res.SecretString || !res.VersionId) return null;
    let value: SecretDocument;
    try {
      value = JSON.parse(res.SecretString) as SecretDocument;
    } catch {
      throw new StoreConflictError(
        `secret ${this.#secretId(ref)} version ${res.VersionId} is not JSON in the AWS template layout ({engine, host, port, dbname, username, password})`,
      );
    }
    return {
      versionId: res.VersionId,
      stages: (res.VersionStages ?? []).map((l) => LABELS[l]).filter((s): s is Stage => s !== undefined),
      createdAt: (res.CreatedDate ?? new Date()).toISOString(),
      value,
    };
  }

  async putPending(ref: SecretRef, token: string, value: SecretDocument): Promise<{ created: boolean }> {
    const stages = await this.#stages(ref);
    if (stages === null) {
      // A secret's first version always carries AWSCURRENT in AWS: a credential's first rotation creates the secret
      // with its new password, which direct readers see before the rotation finishes (Keyturn's own read does not).
      try {
        await this.#send(
          ref,
          'creating',
          new CreateSecretCommand({
            Name: this.#secretId(ref),
            ClientRequestToken: checkToken(token),
            SecretString: JSON.stringify(value),
          }),
        );
        return { created: true };
      } catch (err) {
        if (nameOf(err) !== 'ResourceExistsException') throw err;
        return this.putPending(ref, token, value); // created meanwhile by another worker
      }
    }
    // The templates' createSecret: a version under this token already exists → reuse it, never generate twice.
    if (stages[checkToken(token)]) return { created: false };
    try {
      await this.#send(
        ref,
        'putting the pending version of',
        new PutSecretValueCommand({
          SecretId: this.#secretId(ref),
          ClientRequestToken: token,
          SecretString: JSON.stringify(value),
          VersionStages: ['AWSPENDING'],
        }),
      );
      return { created: true };
    } catch (err) {
      // Same token, different value: another writer got there first with its own secret; ours must not win.
      if (nameOf(err) === 'ResourceExistsException') return { created: false };
      throw err;
    }
  }

  async promote(ref: SecretRef, token: string): Promise<{ promoted: boolean; previousVersionId?: string }> {
    const stages = (await this.#stages(ref)) ?? {};
    const labels = stages[token];
    if (!labels)
      throw new StoreConflictError(`NOVERSION: secret ${this.#secretId(ref)} has no version ${token}`);
    const current = Object.keys(stages).find((id) => stages[id]?.includes('AWSCURRENT'));
    if (current === token) {
      // The templates' finishSecret guard: already current. Drop a stale AWSPENDING if one is left on it.
      if (labels.includes('AWSPENDING')) await this.#removeLabel(ref, 'AWSPENDING', token);
      return { promoted: false };
    }
    try {
      await this.#send(
        ref,
        'making the new version current in',
        new UpdateSecretVersionStageCommand({
          SecretId: this.#secretId(ref),
          VersionStage: 'AWSCURRENT',
          MoveToVersionId: token,
          ...(current ? { RemoveFromVersionId: current } : {}),
        }),
      );
    } catch (err) {
      // Another worker moved the label between our DescribeSecret and this call: fine if it moved it here.
      if (nameOf(err) !== 'InvalidParameterException') throw err;
      const now = (await this.#stages(ref)) ?? {};
      if (!now[token]?.includes('AWSCURRENT')) {
        throw new StoreConflictError(
          `AWSCURRENT of ${this.#secretId(ref)} moved under Keyturn; will re-read and retry`,
        );
      }
      if (now[token]?.includes('AWSPENDING')) await this.#removeLabel(ref, 'AWSPENDING', token);
      return { promoted: false };
    }
    if (labels.includes('AWSPENDING')) await this.#removeLabel(ref, 'AWSPENDING', token);
    return current ? { promoted: true, previousVersionId: current } : { promoted: true };
  }

  async #removeLabel(ref: SecretRef, label: string, versionId: string): Promise<void> {
    try {
      await this.#send(
        ref,
        `removing ${label} from`,
        new UpdateSecretVersionStageCommand({
          SecretId: this.#secretId(ref),
          VersionStage: label,
          RemoveFromVersionId: versionId,
        }),
      );
    } catch (err) {
      // Already removed by an earlier attempt.
      if (nameOf(err) !== 'InvalidParameterException') throw err;
    }
  }

  async discardPending(ref: SecretRef, token: string): Promise<void> {
    const stages = await this.#stages(ref);
    if (stages?.[token]?.includes('AWSPENDING') && !stages[token]?.includes('AWSCURRENT')) {
      await this.#removeLabel(ref, 'AWSPENDING', token);
    }
  }

  async putCurrent(ref: SecretRef, token: string, value: SecretDocument): Promise<void> {
    checkToken(token);
    const stages = await this.#stages(ref);
    if (stages === null) {
      await this.#send(
        ref,
        'creating',
        new CreateSecretCommand({
          Name: this.#secretId(ref),
          ClientRequestToken: token,
          SecretString: JSON.stringify(value),
        }),
      );
      return;
    }
    if (stages[token]?.includes('AWSCURRENT')) return;
    // Without VersionStages the new version becomes AWSCURRENT and the old one AWSPREVIOUS.
    await this.#send(
      ref,
      'putting a new current version of',
      new PutSecretValueCommand({
        SecretId: this.#secretId(ref),
        ClientRequestToken: token,
        SecretString: JSON.stringify(value),
      }),
    );
  }

  async remove(ref: SecretRef): Promise<void> {
    // The secret lives in the team's account and may have other readers: schedule its deletion with AWS's
    // default recovery window instead of forcing it.
    try {
      await this.#send(
        ref,
        'deleting',
        new DeleteSecretCommand({ SecretId: this.#secretId(ref), RecoveryWindowInDays: 30 }),
      );
    } catch (err) {
      if (nameOf(err) !== 'ResourceNotFoundException') throw err;
    }
  }

  async ping(): Promise<void> {
    await this.#send(undefined, 'listing secrets (readiness)', new ListSecretsCommand({ MaxResults: 1 }));
  }

  async close(): Promise<void> {
    for (const client of this.#clients.values()) client.destroy();
    this.#clients.clear();
  }
}
