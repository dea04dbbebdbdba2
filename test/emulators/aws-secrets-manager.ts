/**
 * Test fixture: an in-memory HTTP emulator of AWS Secrets Manager speaking the JSON 1.1 protocol, so that
 * `@aws-sdk/client-secrets-manager` can be pointed at it with `endpoint`. Only node:http; no network beyond
 * 127.0.0.1.
 *
 * Every rule cites `../shared/reference/secret-store-protocols.md` (A1 rotation protocol, A2 wire protocol,
 * A3 moto semantics). Where moto and the AWS docs disagree, the AWS docs win (the SDK's model doc comments
 * in `dist-types/models/models_0.d.ts` are the AWS API reference text and were used as such).
 *
 * Emulated operations: CreateSecret, GetSecretValue, PutSecretValue, UpdateSecretVersionStage,
 * DescribeSecret, ListSecretVersionIds, DeleteSecret, RestoreSecret and RotateSecret (RotateSecret records
 * the rotation configuration and creates the empty AWSPENDING placeholder; no Lambda exists, so nothing is
 * invoked: the test plays the rotation function). Anything else is answered with UnknownOperationException.
 *
 * Authentication (`./sigv4.ts`, shared with the IAM and KMS emulators), unless `requireSignature: false`: the
 * SigV4 signature is really recomputed with the secret of the access key in the credential scope, which must
 * name service `secretsmanager`, this region and today. The keys are `credentials` (long-term, no session token)
 * and those from `issueSessionCredentials()` (each with its own session token). No header is
 * `MissingAuthenticationTokenException`; an unknown key, or a session token that is not the key's,
 * `UnrecognizedClientException`; a wrong secret, scope or a clock more than 15 minutes off
 * `InvalidSignatureException`; a malformed header `IncompleteSignatureException` (all 400, `{"__type","message"}`).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { JSON_PROTOCOL_ERRORS, type SigV4Key, verifySigV4 } from './sigv4.ts';

export interface AwsSecretsManagerEmulator {
  endpoint: string; // http://127.0.0.1:<port>
  region: string; // 'eu-west-1'
  /** Long-term keys (`AKIA…`): requests signed with them must carry no session token. */
  credentials: { accessKeyId: string; secretAccessKey: string };
  /**
   * New temporary keys (`ASIA…`) as STS or the EKS Pod Identity agent hand them out: requests signed with them
   * must carry exactly this `X-Amz-Security-Token`.
   */
  issueSessionCredentials(): { accessKeyId: string; secretAccessKey: string; sessionToken: string };
  close(): Promise<void>;
  /** The next `count` requests whose operation matches fail with this error (ThrottlingException is 400 with __type ThrottlingException and message "Rate exceeded"; InternalFailure is 500; ResourceNotFoundException 400). */
  failNext(
    count: number,
    error: 'ThrottlingException' | 'InternalFailure' | 'ResourceNotFoundException' | 'ServiceUnavailable',
    match?: (operation: string) => boolean,
  ): void;
  requests: Array<{ operation: string; body: Record<string, unknown>; authorization?: string }>;
}

type Body = Record<string, unknown>;

const CURRENT = 'AWSCURRENT';
const PREVIOUS = 'AWSPREVIOUS';
const PENDING = 'AWSPENDING';

interface Version {
  id: string;
  /** Exactly one of string/binary is set, or neither for RotateSecret's empty placeholder (A1, A3). */
  string?: string;
  /** Base64 text exactly as it came over the wire. */
  binary?: string;
  stages: string[];
  createdAt: number;
  lastAccessedAt?: number;
}

interface Secret {
  arn: string;
  name: string;
  description?: string;
  kmsKeyId?: string;
  tags?: unknown;
  createdAt: number;
  lastChangedAt: number;
  lastAccessedAt?: number;
  deletedAt?: number;
  rotationEnabled?: boolean;
  rotationLambdaArn?: string;
  rotationRules?: unknown;
  lastRotatedAt?: number;
  /** Token of the last RotateSecret: AWSCURRENT reaching it marks the rotation done (LastRotatedDate). */
  rotationToken?: string;
  /** Insertion order = creation order. */
  versions: Map<string, Version>;
}

class AwsError extends Error {
  readonly type: string;
  readonly status: number;
  constructor(type: string, message: string, status = 400) {
    super(message);
    this.type = type;
    this.status = status;
  }
}

// A2: CommonErrors lists 400 for client errors, 500 for InternalFailure. The reference notes moto answers
// ResourceNotFoundException with 404; AWS answers 400 (it is a modelled client error), so 400 it is.
const INJECTED: Record<string, { status: number; message: string }> = {
  ThrottlingException: { status: 400, message: 'Rate exceeded' },
  InternalFailure: { status: 500, message: 'An internal error has occurred. Try again later.' },
  ServiceUnavailable: { status: 503, message: 'The service is unavailable. Try again later.' },
  ResourceNotFoundException: { status: 400, message: "Secrets Manager can't find the specified secret." },
};

const notFound = () =>
  new AwsError('ResourceNotFoundException', "Secrets Manager can't find the specified secret.");
const invalidParam = (message: string) => new AwsError('InvalidParameterException', message);
const invalidRequest = (message: string) => new AwsError('InvalidRequestException', message);

/** A2: dates are epoch seconds as JSON numbers (the SDK runs them through its epoch parser; ISO text throws). */
const epoch = (ms: number | undefined) => (ms === undefined ? undefined : ms / 1000);
/** LastAccessedDate has day resolution (SDK doc of SecretVersionsListEntry.LastAccessedDate). */
const today = (now: number) => now - (now % 86_400_000);

const SUFFIX_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const randomChars = (n: number, alphabet = SUFFIX_CHARS) =>
  Array.from(randomBytes(n), (b) => alphabet[b % alphabet.length]).join('');

// ---- request field readers: wrong JSON types are SerializationException, as the AWS JSON front end does ----

function optString(body: Body, key: string): string | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new AwsError('SerializationException', `${key} must be a string`);
  return v;
}
function reqString(body: Body, key: string): string {
  const v = optString(body, key);
  if (v === undefined) {
    // Missing required member: the AWS front end's model validation, before the service sees the call.
    throw new AwsError(
      'ValidationException',
      `1 validation error detected: Value null at '${key.charAt(0).toLowerCase()}${key.slice(1)}' failed to satisfy constraint: Member must not be null`,
    );
  }
  return v;
}
function optBool(body: Body, key: string): boolean | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw new AwsError('SerializationException', `${key} must be a boolean`);
  return v;
}
function optNumber(body: Body, key: string): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number') throw new AwsError('SerializationException', `${key} must be a number`);
  return v;
}
function optStringList(body: Body, key: string): string[] | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) {
    throw new AwsError('SerializationException', `${key} must be a list of strings`);
  }
  return v as string[];
}

/** A3 (moto) / brief: ClientRequestToken must be 32–64 characters, else InvalidParameterException. */
function token(body: Body): string {
  const t = optString(body, 'ClientRequestToken') ?? randomUUID(); // the SDK always fills one (A2)
  if (t.length < 32 || t.length > 64) {
    throw invalidParam('ClientRequestToken must be 32-64 characters long.');
  }
  return t;
}

/** Secret value of a request: exactly one of SecretString / SecretBinary. */
function secretValue(body: Body): { string?: string; binary?: string } | undefined {
  const string = optString(body, 'SecretString');
  const binary = optString(body, 'SecretBinary');
  if (string !== undefined && binary !== undefined) {
    throw invalidParam(
      "You can't specify both a binary secret value and a string secret value in the same secret.",
    );
  }
  if (string !== undefined) return { string };
  if (binary !== undefined) return { binary };
  return undefined;
}

const sameValue = (v: Version, value: { string?: string; binary?: string }) =>
  v.string === value.string && v.binary === value.binary;

// ---- staging labels (A1 "Labels": AWSCURRENT always present, no two versions share a label) ----

const holderOf = (s: Secret, label: string) => [...s.versions.values()].find((v) => v.stages.includes(label));
const removeLabel = (v: Version, label: string) => {
  v.stages = v.stages.filter((l) => l !== label);
};
const addLabel = (v: Version, label: string) => {
  if (!v.stages.includes(label)) v.stages.push(label);
};

/**
 * Moves `label` to `to`, taking it off whichever version had it (A2 PutSecretValue / UpdateSecretVersionStage).
 * Moving AWSCURRENT moves AWSPREVIOUS to the version AWSCURRENT left (A2, AWS docs). Unlike moto (A3), the old
 * current keeps its other labels: AWS only *adds* AWSPREVIOUS there.
 */
function moveLabel(s: Secret, label: string, to: Version, now: number): void {
  const from = holderOf(s, label);
  if (from === to) return;
  if (from) removeLabel(from, label);
  addLabel(to, label);
  if (label === CURRENT && from) {
    const prev = holderOf(s, PREVIOUS);
    if (prev) removeLabel(prev, PREVIOUS);
    addLabel(from, PREVIOUS);
  }
  if (label === CURRENT && s.rotationToken === to.id) s.lastRotatedAt = now;
}

// ---- the emulator ----

export async function startAwsSecretsManagerEmulator(options?: {
  region?: string;
  accountId?: string;
  requireSignature?: boolean;
}): Promise<AwsSecretsManagerEmulator> {
  const region = options?.region ?? 'eu-west-1';
  const accountId = options?.accountId ?? '123456789012';
  const requireSignature = options?.requireSignature ?? true;
  const keys = new Map<string, SigV4Key>(); // by access key id
  const newKeyId = (prefix: 'AKIA' | 'ASIA') => {
    let id: string;
    do id = `${prefix}${randomChars(16, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567')}`;
    while (keys.has(id));
    return id;
  };
  const credentials = { accessKeyId: newKeyId('AKIA'), secretAccessKey: randomBytes(30).toString('base64') };
  keys.set(credentials.accessKeyId, { secret: credentials.secretAccessKey });
  const secrets = new Map<string, Secret>(); // by name
  const requests: AwsSecretsManagerEmulator['requests'] = [];
  const failures: Array<{ remaining: number; error: string; match?: (operation: string) => boolean }> = [];
  const arnPrefix = `arn:aws:secretsmanager:${region}:${accountId}:secret:`;

  /** A3: SecretId is a name, a full ARN, or a partial ARN (the ARN without the 6-character suffix). */
  function find(id: string): Secret | undefined {
    if (id.startsWith('arn:')) {
      for (const s of secrets.values()) if (s.arn === id || `${arnPrefix}${s.name}` === id) return s;
      return undefined;
    }
    return secrets.get(id);
  }
  /** An existing secret that is not scheduled for deletion (A2 Errors: marked for deletion → InvalidRequest). */
  function live(id: string): Secret {
    const s = find(id);
    if (!s) throw notFound();
    if (s.deletedAt !== undefined) {
      throw invalidRequest(
        "You can't perform this operation on the secret because it was marked for deletion.",
      );
    }
    return s;
  }

  const ops: Record<string, (body: Body, now: number) => Body> = {
    CreateSecret(body, now) {
      const name = reqString(body, 'Name');
      const versionId = token(body);
      const value = secretValue(body);
      const existing = secrets.get(name);
      if (existing) {
        if (existing.deletedAt !== undefined) {
          throw invalidRequest(
            "You can't create this secret because a secret with this name is already scheduled for deletion.",
          );
        }
        // AWS ClientRequestToken rule: same token + same value → the request is ignored (idempotent retry).
        const v = existing.versions.get(versionId);
        if (v && value && sameValue(v, value)) {
          return { ARN: existing.arn, Name: existing.name, VersionId: v.id };
        }
        throw new AwsError(
          'ResourceExistsException',
          `The operation failed because the secret ${name} already exists.`,
        );
      }
      const s: Secret = {
        arn: `${arnPrefix}${name}-${randomChars(6)}`,
        name,
        createdAt: now,
        lastChangedAt: now,
        versions: new Map(),
      };
      const description = optString(body, 'Description');
      if (description !== undefined) s.description = description;
      const kmsKeyId = optString(body, 'KmsKeyId');
      if (kmsKeyId !== undefined) s.kmsKeyId = kmsKeyId;
      if (Array.isArray(body.Tags)) s.tags = body.Tags;
      secrets.set(name, s);
      // Without a value AWS creates the secret with no version at all (the first PutSecretValue gets AWSCURRENT).
      if (!value) return { ARN: s.arn, Name: s.name };
      s.versions.set(versionId, { id: versionId, ...value, stages: [CURRENT], createdAt: now });
      return { ARN: s.arn, Name: s.name, VersionId: versionId };
    },

    GetSecretValue(body, now) {
      const s = live(reqString(body, 'SecretId'));
      const versionId = optString(body, 'VersionId');
      const stageArg = optString(body, 'VersionStage');
      let v: Version | undefined;
      if (versionId !== undefined) {
        v = s.versions.get(versionId);
        if (!v) {
          throw new AwsError(
            'ResourceNotFoundException',
            `Secrets Manager can't find the specified secret value for VersionId: ${versionId}`,
          );
        }
        // A3: both given and the version lacks the stage → InvalidRequestException.
        if (stageArg !== undefined && !v.stages.includes(stageArg)) {
          throw invalidRequest(
            'You provided a VersionStage that is not associated to the provided VersionId.',
          );
        }
      } else {
        const stage = stageArg ?? CURRENT; // default AWSCURRENT (SDK doc of GetSecretValueRequest)
        v = holderOf(s, stage);
        if (!v) {
          throw new AwsError(
            'ResourceNotFoundException',
            `Secrets Manager can't find the specified secret value for staging label: ${stage}`,
          );
        }
      }
      // A2/A3: a version without a value (RotateSecret's placeholder) → ResourceNotFoundException. The AWS
      // templates' createSecret step relies on exactly this to decide whether to generate (A1).
      if (v.string === undefined && v.binary === undefined) {
        throw new AwsError(
          'ResourceNotFoundException',
          `Secrets Manager can't find the specified secret value for staging label: ${stageArg ?? v.stages[0] ?? CURRENT}`,
        );
      }
      s.lastAccessedAt = today(now);
      v.lastAccessedAt = today(now);
      return {
        ARN: s.arn,
        Name: s.name,
        VersionId: v.id,
        ...(v.string !== undefined ? { SecretString: v.string } : { SecretBinary: v.binary }),
        VersionStages: [...v.stages],
        CreatedDate: epoch(v.createdAt),
      };
    },

    PutSecretValue(body, now) {
      const s = live(reqString(body, 'SecretId'));
      const versionId = token(body);
      const value = secretValue(body);
      if (!value) throw invalidRequest('You must provide either SecretString or SecretBinary.');
      // A3: VersionStages defaults to ["AWSCURRENT"]. An explicit [] is taken literally (no label given).
      const stages = optStringList(body, 'VersionStages') ?? [CURRENT];
      let v = s.versions.get(versionId);
      if (v) {
        const placeholder = v.string === undefined && v.binary === undefined && v.stages.includes(PENDING);
        if (!placeholder) {
          // A2: same token + same value → ignored (idempotent: labels untouched); different value → fails.
          if (sameValue(v, value))
            return { ARN: s.arn, Name: s.name, VersionId: v.id, VersionStages: [...v.stages] };
          throw new AwsError(
            'ResourceExistsException',
            `You can't use ClientRequestToken ${versionId} because that token is already in use for a version of this secret. Use a different token.`,
          );
        }
        // A3: the empty AWSPENDING placeholder of RotateSecret is filled in.
        Object.assign(v, value);
      } else {
        v = { id: versionId, ...value, stages: [], createdAt: now };
        s.versions.set(versionId, v);
      }
      // A2: given labels move here from other versions; AWSCURRENT drags AWSPREVIOUS along.
      for (const label of stages) moveLabel(s, label, v, now);
      // A2/A3: the first version always gets AWSCURRENT (keeps "there is always an AWSCURRENT version", A1).
      if (!holderOf(s, CURRENT)) addLabel(v, CURRENT);
      s.lastChangedAt = now;
      return { ARN: s.arn, Name: s.name, VersionId: v.id, VersionStages: [...v.stages] };
    },

    UpdateSecretVersionStage(body, now) {
      const s = live(reqString(body, 'SecretId'));
      const label = reqString(body, 'VersionStage');
      const moveToId = optString(body, 'MoveToVersionId');
      const removeFromId = optString(body, 'RemoveFromVersionId');
      if (moveToId === undefined && removeFromId === undefined) {
        throw invalidParam('You must specify MoveToVersionId or RemoveFromVersionId.');
      }
      // A3: a version id that does not exist → InvalidParameterException.
      const moveTo = moveToId === undefined ? undefined : s.versions.get(moveToId);
      if (moveToId !== undefined && !moveTo)
        throw invalidParam(`${moveToId} is not a valid version of this secret.`);
      const removeFrom = removeFromId === undefined ? undefined : s.versions.get(removeFromId);
      if (removeFromId !== undefined && !removeFrom) {
        throw invalidParam(`${removeFromId} is not a valid version of this secret.`);
      }
      // A3: removing a label from a version that lacks it → InvalidParameterException.
      if (removeFrom && !removeFrom.stages.includes(label)) {
        throw invalidParam(`The staging label ${label} is not attached to version ${removeFromId}.`);
      }
      if (moveTo) {
        // A2 (AWS docs): the label attached elsewhere and RemoveFromVersionId absent or not matching → fails.
        // Unlike moto (A3), this holds for every label, not only AWSCURRENT.
        const holder = holderOf(s, label);
        if (holder && holder !== moveTo && holder !== removeFrom) {
          throw invalidParam(
            removeFromId === undefined
              ? `The parameter RemoveFromVersionId can't be empty. Staging label ${label} is currently attached to version ${holder.id}, so you must explicitly reference that version in RemoveFromVersionId.`
              : `The staging label ${label} is currently attached to version ${holder.id}, not to version ${removeFromId}.`,
          );
        }
        // removeFrom (if any) is the holder here, so moving takes the label off it; AWSPREVIOUS follows (A2).
        moveLabel(s, label, moveTo, now);
      } else if (removeFrom) {
        // A1: there is always an AWSCURRENT version; it can only be moved, never just removed.
        if (label === CURRENT) {
          throw invalidParam(
            `You can't remove the staging label ${CURRENT} without moving it: specify MoveToVersionId.`,
          );
        }
        removeLabel(removeFrom, label); // a version left without labels is deprecated (A1)
      }
      s.lastChangedAt = now;
      return { ARN: s.arn, Name: s.name };
    },

    DescribeSecret(body) {
      // Works on a secret scheduled for deletion (it reports DeletedDate); AWS lists no InvalidRequest here.
      const s = find(reqString(body, 'SecretId'));
      if (!s) throw notFound();
      // VersionIdsToStages lists only versions that carry labels (SDK doc: deprecated versions are left out).
      const versionIdsToStages: Record<string, string[]> = {};
      for (const v of s.versions.values()) if (v.stages.length > 0) versionIdsToStages[v.id] = [...v.stages];
      return {
        ARN: s.arn,
        Name: s.name,
        Description: s.description,
        KmsKeyId: s.kmsKeyId,
        // Brief: false unless rotation was configured. (The AWS doc says null/omitted when never configured;
        // the A1 template guard tolerates both.)
        RotationEnabled: s.rotationEnabled ?? false,
        RotationLambdaARN: s.rotationLambdaArn,
        RotationRules: s.rotationRules,
        LastRotatedDate: epoch(s.lastRotatedAt),
        LastChangedDate: epoch(s.lastChangedAt),
        LastAccessedDate: epoch(s.lastAccessedAt),
        DeletedDate: epoch(s.deletedAt),
        Tags: s.tags,
        VersionIdsToStages: versionIdsToStages,
        CreatedDate: epoch(s.createdAt),
      };
    },

    ListSecretVersionIds(body) {
      const s = find(reqString(body, 'SecretId'));
      if (!s) throw notFound();
      const maxResults = optNumber(body, 'MaxResults') ?? 100;
      if (!Number.isInteger(maxResults) || maxResults < 1 || maxResults > 100) {
        throw new AwsError(
          'ValidationException',
          `1 validation error detected: Value '${maxResults}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and 100`,
        );
      }
      // SDK doc: versions without labels (deprecated) appear only with IncludeDeprecated.
      const includeDeprecated = optBool(body, 'IncludeDeprecated') ?? false;
      const all = [...s.versions.values()].filter((v) => includeDeprecated || v.stages.length > 0);
      const nextToken = optString(body, 'NextToken');
      let start = 0;
      if (nextToken !== undefined) {
        const m = /^v1:(\d+)$/.exec(Buffer.from(nextToken, 'base64').toString('utf8'));
        if (!m) throw new AwsError('InvalidNextTokenException', 'The NextToken value is invalid.');
        start = Number(m[1]);
      }
      const page = all.slice(start, start + maxResults);
      const more = start + maxResults < all.length;
      return {
        Versions: page.map((v) => ({
          VersionId: v.id,
          VersionStages: [...v.stages],
          LastAccessedDate: epoch(v.lastAccessedAt),
          CreatedDate: epoch(v.createdAt),
          KmsKeyIds: [s.kmsKeyId ?? 'DefaultEncryptionKey'],
        })),
        NextToken: more ? Buffer.from(`v1:${start + maxResults}`).toString('base64') : undefined,
        ARN: s.arn,
        Name: s.name,
      };
    },

    DeleteSecret(body, now) {
      const secretId = reqString(body, 'SecretId');
      const window = optNumber(body, 'RecoveryWindowInDays');
      const force = optBool(body, 'ForceDeleteWithoutRecovery') ?? false;
      // A3 / SDK doc: both parameters together → InvalidParameterException; window 7–30 days, default 30.
      if (window !== undefined && force) {
        throw invalidParam(
          "You can't use ForceDeleteWithoutRecovery in conjunction with RecoveryWindowInDays.",
        );
      }
      if (window !== undefined && (!Number.isInteger(window) || window < 7 || window > 30)) {
        throw invalidParam('The RecoveryWindowInDays value must be between 7 and 30 days (inclusive).');
      }
      const s = find(secretId);
      if (force) {
        // SDK doc: a forced delete of a missing or already-deleted secret does not return ResourceNotFound.
        if (s) secrets.delete(s.name);
        const name =
          s?.name ?? (secretId.startsWith(arnPrefix) ? secretId.slice(arnPrefix.length) : secretId);
        const arn =
          s?.arn ?? (secretId.startsWith('arn:') ? secretId : `${arnPrefix}${name}-${randomChars(6)}`);
        return { ARN: arn, Name: name, DeletionDate: epoch(now) };
      }
      if (!s) throw notFound();
      if (s.deletedAt !== undefined) {
        throw invalidRequest(
          "You can't perform this operation on the secret because it was already scheduled for deletion.",
        );
      }
      s.deletedAt = now;
      // The recovery window never elapses within a test run: the secret stays until forced out or restored.
      return { ARN: s.arn, Name: s.name, DeletionDate: epoch(now + (window ?? 30) * 86_400_000) };
    },

    RestoreSecret(body, now) {
      const s = find(reqString(body, 'SecretId'));
      if (!s) throw notFound();
      if (s.deletedAt !== undefined) {
        s.deletedAt = undefined;
        s.lastChangedAt = now;
      }
      return { ARN: s.arn, Name: s.name };
    },

    RotateSecret(body, now) {
      const s = live(reqString(body, 'SecretId'));
      const versionId = token(body);
      const lambdaArn = optString(body, 'RotationLambdaARN');
      if (lambdaArn !== undefined) s.rotationLambdaArn = lambdaArn;
      if (body.RotationRules !== undefined) s.rotationRules = body.RotationRules;
      // SDK doc of InvalidRequestException: enabling rotation without a Lambda ARN configured or given.
      if (s.rotationLambdaArn === undefined) {
        throw invalidRequest('No Lambda rotation function ARN is associated with this secret.');
      }
      s.rotationEnabled = true;
      s.lastChangedAt = now;
      if (optBool(body, 'RotateImmediately') === false) return { ARN: s.arn, Name: s.name };
      // A1 (AWS docs, not moto's reading in A3): AWSPENDING on a version other than AWSCURRENT means a
      // previous rotation is still in progress → error. A retry with the same token is the same rotation.
      const pending = holderOf(s, PENDING);
      if (pending && pending !== holderOf(s, CURRENT) && pending.id !== versionId) {
        throw invalidRequest("A previous rotation isn't complete. That rotation will be reattempted.");
      }
      // A1/A3: the service creates the empty AWSPENDING version (VersionId = token) before createSecret.
      let v = s.versions.get(versionId);
      if (!v) {
        v = { id: versionId, stages: [], createdAt: now };
        s.versions.set(versionId, v);
      }
      moveLabel(s, PENDING, v, now);
      s.rotationToken = versionId;
      return { ARN: s.arn, Name: s.name, VersionId: versionId };
    },
  };

  /** Verified for real (`./sigv4.ts`): the emulator's long-term key, or temporary keys it issued. */
  function checkSignature(req: IncomingMessage, body: Buffer, now: number): void {
    if (!requireSignature) return;
    verifySigV4(req, body, {
      service: 'secretsmanager',
      region,
      now,
      errors: JSON_PROTOCOL_ERRORS,
      lookup: (id) => keys.get(id),
      fail: (type, message, status) => new AwsError(type, message, status),
    });
  }

  function send(res: ServerResponse, status: number, payload: Body): void {
    // Fields set to undefined vanish in JSON.stringify, so optional members are simply omitted.
    const text = JSON.stringify(payload);
    res.writeHead(status, {
      'content-type': 'application/x-amz-json-1.1',
      'content-length': Buffer.byteLength(text),
      'x-amzn-requestid': randomUUID(),
    });
    res.end(text);
  }
  /** A2 error body: exactly {"__type","message"} — never a `code` key, which the SDK could read as the code. */
  const sendError = (res: ServerResponse, e: AwsError) =>
    send(res, e.status, { __type: e.type, message: e.message });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    if (req.method !== 'POST' || (req.url ?? '/').split('?')[0] !== '/') {
      return sendError(res, new AwsError('UnknownOperationException', 'Only POST / is served.', 404));
    }
    const target = req.headers['x-amz-target'];
    const operation =
      typeof target === 'string' && target.startsWith('secretsmanager.')
        ? target.slice('secretsmanager.'.length)
        : '';
    const authorization = req.headers.authorization;
    let body: Body = {};
    let parseError: AwsError | undefined;
    try {
      const text = Buffer.concat(chunks).toString('utf8');
      const parsed: unknown = text.length === 0 ? {} : JSON.parse(text);
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
        throw new Error('not an object');
      body = parsed as Body;
    } catch {
      parseError = new AwsError('SerializationException', 'The request body is not a JSON object.');
    }
    // Every request is recorded, including failed and injected-failure ones (so retries can be counted).
    requests.push(authorization === undefined ? { operation, body } : { operation, body, authorization });
    try {
      checkSignature(req, Buffer.concat(chunks), Date.now());
      const fn = Object.hasOwn(ops, operation) ? ops[operation] : undefined;
      if (!fn) throw new AwsError('UnknownOperationException', `Operation '${operation}' is not emulated.`);
      const rule = failures.find((f) => f.remaining > 0 && (f.match === undefined || f.match(operation)));
      if (rule) {
        rule.remaining--;
        if (rule.remaining === 0) failures.splice(failures.indexOf(rule), 1);
        const injected = INJECTED[rule.error]!;
        // Injected failures happen before the operation runs: no state changes.
        throw new AwsError(rule.error, injected.message, injected.status);
      }
      if (parseError) throw parseError;
      send(res, 200, fn(body, Date.now()));
    } catch (e) {
      if (e instanceof AwsError) return sendError(res, e);
      sendError(res, new AwsError('InternalFailure', String(e), 500));
    }
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (!res.headersSent) sendError(res, new AwsError('InternalFailure', String(e), 500));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    endpoint: `http://127.0.0.1:${port}`,
    region,
    credentials,
    issueSessionCredentials() {
      const issued = {
        accessKeyId: newKeyId('ASIA'),
        secretAccessKey: randomBytes(30).toString('base64'),
        sessionToken: randomBytes(48).toString('base64'),
      };
      keys.set(issued.accessKeyId, { secret: issued.secretAccessKey, sessionToken: issued.sessionToken });
      return issued;
    },
    requests,
    failNext(count, error, match) {
      if (count > 0)
        failures.push(match === undefined ? { remaining: count, error } : { remaining: count, error, match });
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections(); // the SDK's keep-alive sockets would otherwise hold close() open
      }),
  };
}
