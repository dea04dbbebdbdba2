// AWS IAM access keys (type "aws-iam"): the credential is an IAM user, and its secret is one of the user's access keys,
// which AWS makes (CreateAccessKey answers the secret once, and no call sets or reads it again). So this session has
// no password verbs: it declares mintedSecrets, and the engine's set step asks for a new key instead of sending a
// password (engine.ts, #setMinted). IAM allows two keys per user, active or not, which is the natural overlap: the new
// key is made next to the current one, tested with STS GetCallerIdentity (which needs no permission), and made
// current; after the grace period the old key is deactivated, and the next rotation deletes it.
//
// The connection is `{type: "aws-iam", region?, endpoint?, admin: {username: <access key id>, password: <secret>}}`:
// the admin is an IAM user's access key, used by the SDK's SigV4 signing only (the secret never goes on the wire).
// `endpoint` (an emulator, a VPC endpoint) serves both IAM and STS; without it IAM is iam.amazonaws.com and STS is
// the region's endpoint. `tls.ca` adds a CA for an endpoint with a private certificate.
//
// Errors: an answer that refuses the admin's key (InvalidClientTokenId, SignatureDoesNotMatch) or the action
// (AccessDenied), a user that does not exist (NoSuchEntity) and the two-key limit (LimitExceeded) are refused; no
// answer, throttling and AWS's own faults (5xx) are unavailable. Every message says what to grant or do.
import https from 'node:https';
import {
  CreateAccessKeyCommand,
  DeleteAccessKeyCommand,
  GetUserCommand,
  IAMClient,
  ListAccessKeysCommand,
  SimulatePrincipalPolicyCommand,
  UpdateAccessKeyCommand,
} from '@aws-sdk/client-iam';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { scrubText } from '../../crypto/scrub.ts';
import type { Connection } from '../../registry/types.ts';
import {
  type AuthOutcome,
  type CallOptions,
  type Check,
  type Login,
  type MintedSecret,
  type MintedSecrets,
  nothingSent,
  type SecretKey,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  TargetUnavailableError,
} from '../types.ts';

const KNOWN_OPTIONS = ['settleSeconds'];
/** IAM's limit: two access keys per user, active or inactive. */
const KEYS_PER_USER = 2;
/** How long a new key may be refused before that means something: AWS documents "a few seconds". */
const DEFAULT_SETTLE_SECONDS = 30;
const MAX_SETTLE_SECONDS = 300;
/** IAM is global and signs for us-east-1 unless the connection says otherwise. */
const DEFAULT_REGION = 'us-east-1';
/** The actions rotations need of the admin, checked by checkAdmin (least privilege, docs/aws-iam-target.md). */
export const IAM_ROTATION_ACTIONS = [
  'iam:GetUser',
  'iam:ListAccessKeys',
  'iam:CreateAccessKey',
  'iam:UpdateAccessKey',
  'iam:DeleteAccessKey',
] as const;

/** Answers that say the caller's key is not accepted: nothing was done. */
const KEY_REFUSED = new Set([
  'InvalidClientTokenId',
  'SignatureDoesNotMatch',
  'UnrecognizedClientException',
  'IncompleteSignature',
  'MissingAuthenticationToken',
  'ExpiredToken',
]);
/** Errors of a connection that was never made: the request cannot have reached AWS. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

function validateOptions(options: Record<string, string | number | boolean>): string[] {
  const problems: string[] = [];
  for (const name of Object.keys(options)) {
    if (!KNOWN_OPTIONS.includes(name)) {
      problems.push(`"${name}" is not an option of aws-iam connections (known: ${KNOWN_OPTIONS.join(', ')})`);
    }
  }
  const { settleSeconds } = options;
  if (
    settleSeconds !== undefined &&
    !(
      typeof settleSeconds === 'number' &&
      Number.isInteger(settleSeconds) &&
      settleSeconds >= 1 &&
      settleSeconds <= MAX_SETTLE_SECONDS
    )
  ) {
    problems.push(
      `settleSeconds must be a whole number of seconds from 1 to ${MAX_SETTLE_SECONDS}: how long a new access key may be refused while IAM propagates it`,
    );
  }
  return problems;
}

interface AwsError {
  name?: string;
  code?: string;
  message?: string;
  $fault?: string;
  $metadata?: { httpStatusCode?: number };
}

/** The IAM user name in a caller ARN (`arn:aws:iam::123456789012:user/path/name`), or undefined for another kind. */
export function iamUserOf(arn: string): string | undefined {
  const match = /^arn:aws[a-z-]*:iam::\d{12}:user\/(.+)$/.exec(arn);
  if (!match) return undefined;
  const path = match[1] as string;
  return path.slice(path.lastIndexOf('/') + 1);
}

class IamSession implements TargetSession {
  readonly #iam: IAMClient;
  readonly #connection: Connection;
  readonly #admin: Login;
  readonly #timeoutMs: number;
  readonly #agent: https.Agent | undefined;
  readonly #closed = new AbortController();
  readonly mintedSecrets: MintedSecrets;

  constructor(connection: Connection, admin: Login, timeoutMs: number) {
    this.#connection = connection;
    this.#admin = admin;
    this.#timeoutMs = timeoutMs;
    this.#agent = connection.tls?.ca
      ? new https.Agent({ ca: connection.tls.ca, keepAlive: true })
      : undefined;
    this.#iam = new IAMClient(this.#clientConfig(admin));
    const settleSeconds = connection.options?.settleSeconds;
    this.mintedSecrets = {
      limit: KEYS_PER_USER,
      settleMs: (typeof settleSeconds === 'number' ? settleSeconds : DEFAULT_SETTLE_SECONDS) * 1000,
      list: (username, call) => this.#list(username, call),
      mint: (username, call) => this.#mint(username, call),
      deactivate: (username, keyId, call) => this.#deactivate(username, keyId, call),
      delete: (username, keyId, call) => this.#delete(username, keyId, call),
    };
  }

  /** The SDK's settings for a client signing with `login`: one attempt (the engine retries), the connection's timeout. */
  #clientConfig(login: Login) {
    const { endpoint, region } = this.#connection;
    return {
      region: region ?? DEFAULT_REGION,
      ...(endpoint ? { endpoint } : {}),
      credentials: { accessKeyId: login.keyId ?? login.username, secretAccessKey: login.password },
      maxAttempts: 1,
      requestHandler: {
        requestTimeout: this.#timeoutMs,
        connectionTimeout: this.#timeoutMs,
        ...(this.#agent ? { httpsAgent: this.#agent } : {}),
      },
    };
  }

  #signal(call: CallOptions | undefined): AbortSignal {
    return call?.signal ? AbortSignal.any([call.signal, this.#closed.signal]) : this.#closed.signal;
  }

  /**
   * Runs one IAM call, classifying its failure. `doing` names it for messages ("listing the access keys of user x");
   * `grant` is the action the admin needs, named when AWS denies it.
   */
  async #send<T>(
    doing: string,
    grant: string,
    run: (signal: AbortSignal) => Promise<T>,
    call?: CallOptions,
  ): Promise<T> {
    try {
      return await run(this.#signal(call));
    } catch (err) {
      throw this.#classify(err, doing, grant);
    }
  }

  #classify(err: unknown, doing: string, grant: string): Error {
    const e = (err ?? {}) as AwsError;
    const name = e.name ?? '';
    const status = e.$metadata?.httpStatusCode;
    const where = this.#connection.endpoint ?? 'AWS IAM';
    // AWS's own message (it names the ARN and the action) only from AWS's own endpoint: an endpoint an operator chose
    // could answer anything, and an error that quoted it would read it back to them (issue 17 §2).
    const detail = this.#connection.endpoint
      ? `${name || 'an error'}${status ? ` (HTTP ${status})` : ''}`
      : scrubText(String(e.message ?? err).slice(0, 300), [this.#admin.password]);
    if (name === 'AbortError' || (err as Error)?.name === 'AbortError') {
      return new TargetUnavailableError(`${doing} was cancelled before ${where} answered`, 'CANCELLED');
    }
    if (KEY_REFUSED.has(name)) {
      return nothingSent(
        new TargetRefusedError(
          `${where} refused the admin's access key "${this.#admin.keyId ?? this.#admin.username}" while ${doing} (${name}): check that the key is active and the connection's admin secret is its secret, then PATCH the connection's admin`,
          'admin-refused',
        ),
      );
    }
    if (name === 'AccessDenied' || name === 'AccessDeniedException') {
      return nothingSent(
        new TargetRefusedError(
          `${where} denied ${doing} (${detail}): grant the admin's IAM user ${grant} (docs/aws-iam-target.md lists the least-privilege policy)`,
          'access-denied',
        ),
      );
    }
    if (name === 'NoSuchEntity' || name === 'NoSuchEntityException') {
      return nothingSent(new TargetRefusedError(`${doing} failed: ${detail}`, 'no-such-user'));
    }
    if (name === 'LimitExceeded' || name === 'LimitExceededException') {
      return nothingSent(new TargetRefusedError(`${doing} failed: ${detail}`, 'limit'));
    }
    const code = e.code ?? (err as { cause?: { code?: string } })?.cause?.code;
    if (code && NOT_CONNECTED.has(code)) {
      return nothingSent(
        new TargetUnavailableError(
          `${doing} failed: ${where} could not be reached (${code}); retry when it answers`,
          code,
        ),
      );
    }
    if (status === undefined || status >= 500 || name === 'Throttling' || name === 'ThrottlingException') {
      return new TargetUnavailableError(
        `${doing} failed: ${where} did not complete the call (${name || code || 'no answer'}: ${detail}); retry`,
        name || code,
      );
    }
    return new TargetRefusedError(`${doing} failed: ${where} answered ${status} ${name}: ${detail}`, name);
  }

  /** STS GetCallerIdentity signed with `login`: the caller's ARN, or the refusal (a key AWS does not accept). */
  async #callerOf(login: Login, call?: CallOptions): Promise<{ arn: string } | { refused: string }> {
    const sts = new STSClient(this.#clientConfig(login));
    try {
      const out = await sts.send(new GetCallerIdentityCommand({}), { abortSignal: this.#signal(call) });
      return { arn: out.Arn ?? '' };
    } catch (err) {
      const name = (err as AwsError).name ?? '';
      if (KEY_REFUSED.has(name)) return { refused: name };
      throw this.#classify(
        err,
        'asking STS who a key belongs to',
        'nothing (GetCallerIdentity needs no permission)',
      );
    } finally {
      sts.destroy();
    }
  }

  async authenticate(login: Login, call?: CallOptions): Promise<AuthOutcome> {
    if (!login.keyId) {
      return { ok: false, reason: 'rejected', message: 'an IAM login is an access key: its id is missing' };
    }
    const caller = await this.#callerOf(login, call);
    if ('refused' in caller) {
      return {
        ok: false,
        reason: 'rejected',
        message: `AWS did not accept access key "${login.keyId}" (${caller.refused}): a wrong secret, an inactive or deleted key, or one IAM has not propagated yet`,
      };
    }
    const user = iamUserOf(caller.arn);
    if (user !== login.username) {
      return {
        ok: false,
        reason: 'rejected',
        message: `access key "${login.keyId}" is not a key of IAM user "${login.username}" (it signs as ${caller.arn})`,
      };
    }
    return { ok: true };
  }

  async checkAdmin(call?: CallOptions): Promise<Check[]> {
    const caller = await this.#callerOf(this.#admin, call);
    if ('refused' in caller) {
      throw nothingSent(
        new TargetRefusedError(
          `AWS did not accept the admin's access key "${this.#admin.username}" (${caller.refused}): check the key id and its secret, and that the key is active`,
          'admin-refused',
        ),
      );
    }
    if (!iamUserOf(caller.arn)) {
      return [
        {
          name: 'an IAM user',
          ok: false,
          message: `the admin key signs as ${caller.arn}, not as an IAM user: use an IAM user's access key with the least-privilege policy (never the root account's)`,
        },
      ];
    }
    let results: Array<{ EvalActionName?: string; EvalDecision?: string }>;
    try {
      const out = await this.#iam.send(
        new SimulatePrincipalPolicyCommand({
          PolicySourceArn: caller.arn,
          ActionNames: [...IAM_ROTATION_ACTIONS],
        }),
        { abortSignal: this.#signal(call) },
      );
      results = out.EvaluationResults ?? [];
    } catch (err) {
      const classified = this.#classify(err, 'simulating the admin policy', 'iam:SimulatePrincipalPolicy');
      if (classified instanceof TargetRefusedError && classified.code === 'access-denied') {
        return [
          {
            name: 'iam:SimulatePrincipalPolicy',
            ok: false,
            message: `the admin (${caller.arn}) may not simulate its own policy, so Keyturn cannot check the actions rotations need: grant iam:SimulatePrincipalPolicy on the admin's own user, or register with "verify": false`,
          },
        ];
      }
      throw classified;
    }
    return IAM_ROTATION_ACTIONS.map((action) => {
      const decision = results.find(
        (r) => r.EvalActionName?.toLowerCase() === action.toLowerCase(),
      )?.EvalDecision;
      const ok = decision === 'allowed';
      return {
        name: action,
        ok,
        message: ok
          ? `allowed to ${caller.arn}`
          : `${decision ?? 'no decision'} for ${caller.arn}: grant ${action} on the users Keyturn rotates (docs/aws-iam-target.md)`,
      };
    });
  }

  async userExists(username: string, call?: CallOptions): Promise<boolean> {
    try {
      await this.#send(
        `looking up IAM user "${username}"`,
        'iam:GetUser',
        (signal) => this.#iam.send(new GetUserCommand({ UserName: username }), { abortSignal: signal }),
        call,
      );
      return true;
    } catch (err) {
      if (err instanceof TargetRefusedError && err.code === 'no-such-user') return false;
      throw err;
    }
  }

  /** The password verbs: AWS makes each key's secret, so there is nothing Keyturn could set. Refused, unchanged. */
  #minted(what: string, username: string): never {
    throw nothingSent(
      new TargetRefusedError(
        `AWS IAM makes each access key's secret itself, so Keyturn cannot ${what} "${username}": IAM users rotate with strategy "single-user", by their two access keys`,
        'minted',
      ),
    );
  }

  async createUser(username: string): Promise<'created' | 'updated'> {
    this.#minted('create (or set the secret of) IAM user', username);
  }

  async updatePassword(username: string): Promise<void> {
    this.#minted('set a secret for IAM user', username);
  }

  async deleteUser(username: string): Promise<void> {
    this.#minted('delete IAM user', username);
  }

  async #list(username: string, call?: CallOptions): Promise<SecretKey[]> {
    const keys: SecretKey[] = [];
    let marker: string | undefined;
    do {
      const page = await this.#send(
        `listing the access keys of IAM user "${username}"`,
        'iam:ListAccessKeys',
        (signal) =>
          this.#iam.send(
            new ListAccessKeysCommand({ UserName: username, ...(marker ? { Marker: marker } : {}) }),
            {
              abortSignal: signal,
            },
          ),
        call,
      );
      for (const k of page.AccessKeyMetadata ?? []) {
        if (!k.AccessKeyId) continue;
        keys.push({
          keyId: k.AccessKeyId,
          active: k.Status === 'Active',
          createdAt: k.CreateDate ?? new Date(0),
        });
      }
      marker = page.IsTruncated ? page.Marker : undefined;
    } while (marker);
    return keys.sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime());
  }

  async #mint(username: string, call?: CallOptions): Promise<MintedSecret> {
    const out = await this.#send(
      `creating an access key for IAM user "${username}"`,
      'iam:CreateAccessKey',
      (signal) => this.#iam.send(new CreateAccessKeyCommand({ UserName: username }), { abortSignal: signal }),
      call,
    );
    const key = out.AccessKey;
    if (!key?.AccessKeyId || !key.SecretAccessKey) {
      throw new TargetUnavailableError(
        `creating an access key for IAM user "${username}" answered no key; the engine deletes any key it made but could not store, and retries`,
      );
    }
    return { keyId: key.AccessKeyId, secret: key.SecretAccessKey };
  }

  async #deactivate(username: string, keyId: string, call?: CallOptions): Promise<void> {
    try {
      await this.#send(
        `deactivating access key "${keyId}" of IAM user "${username}"`,
        'iam:UpdateAccessKey',
        (signal) =>
          this.#iam.send(
            new UpdateAccessKeyCommand({ UserName: username, AccessKeyId: keyId, Status: 'Inactive' }),
            {
              abortSignal: signal,
            },
          ),
        call,
      );
    } catch (err) {
      // Gone already: it works no more than an inactive one.
      if (!(err instanceof TargetRefusedError && err.code === 'no-such-user')) throw err;
    }
  }

  async #delete(username: string, keyId: string, call?: CallOptions): Promise<void> {
    try {
      await this.#send(
        `deleting access key "${keyId}" of IAM user "${username}"`,
        'iam:DeleteAccessKey',
        (signal) =>
          this.#iam.send(new DeleteAccessKeyCommand({ UserName: username, AccessKeyId: keyId }), {
            abortSignal: signal,
          }),
        call,
      );
    } catch (err) {
      if (!(err instanceof TargetRefusedError && err.code === 'no-such-user')) throw err;
    }
  }

  async close(): Promise<void> {
    this.#closed.abort();
    this.#iam.destroy();
    this.#agent?.destroy();
  }
}

export const awsIamTarget: TargetDriver = {
  type: 'aws-iam',
  engine: 'aws-iam',
  defaultPort: 443,
  endpoint: { defaultHost: 'iam.amazonaws.com' },
  registration: {
    strategies: ['single-user'],
    import: false,
    why: "AWS makes each access key's secret, so Keyturn never sets one: an IAM user rotates by its two access keys (single-user, with a gracePeriod for the overlap), and a key is adopted by nobody (Keyturn makes the first at registration and leaves the user's own keys alone)",
  },
  adminRotationRefused:
    "The admin of an aws-iam connection is an access key, and its id is the connection's admin username: rotating it changes the connection itself, which the engine does not do. Rotate it by hand: create a second key for the admin's IAM user, PATCH the connection's admin {username, password} with it, then delete the old key",
  validateOptions,
  async open(connection, admin, options) {
    return new IamSession(connection, admin, options.timeoutMs);
  },
};
