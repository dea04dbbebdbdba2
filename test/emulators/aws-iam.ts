/**
 * Test fixture: an in-memory HTTP emulator of AWS IAM and STS speaking the AWS Query protocol, so that
 * `@aws-sdk/client-iam` and `@aws-sdk/client-sts` can be pointed at it with `endpoint`. Only node:http and
 * node:crypto; no network beyond 127.0.0.1.
 *
 * It stands in for real IAM in tests of the rotation target that rotates IAM access keys, so it is strict
 * where AWS is strict:
 *
 * - Authentication (`./sigv4.ts`, shared with the KMS and Secrets Manager emulators): every request must
 *   carry a SigV4 `Authorization` header, and the signature is really recomputed (HMAC-SHA256 over the
 *   received method, path, query, the headers named in SignedHeaders and the SHA-256 of the received body)
 *   with the secret of the access key named in the credential scope.
 *   Unknown, inactive, deleted and not-yet-propagated keys are `InvalidClientTokenId` (403); a wrong secret,
 *   a wrong scope (service, region, date) or a clock more than 15 minutes off is `SignatureDoesNotMatch`
 *   (403); no header at all is `MissingAuthenticationToken` (403); a malformed header `IncompleteSignature`.
 * - Eventual consistency: a key made by CreateAccessKey authenticates nothing until `propagationMs` has
 *   passed (real AWS: a few seconds of InvalidClientTokenId). Deactivation and deletion take effect at once
 *   (the strict side: a rotation must never rely on an old key still working).
 * - Authorization: each user has a set of allowed IAM actions (glob patterns, case-insensitive, e.g.
 *   `iam:*`, `iam:*AccessKey*`, `*`). Every IAM action checks the caller's set, also when acting on its own
 *   keys, and answers `AccessDenied` (403) with AWS's message form otherwise. The allow list is action-only:
 *   it applies to every resource. STS GetCallerIdentity needs no permission (as in AWS).
 * - Quota: at most two access keys per user, active or inactive (`LimitExceeded`, 409).
 *
 * Emulated operations (IAM Version=2010-05-08): GetUser, CreateAccessKey, ListAccessKeys, UpdateAccessKey,
 * DeleteAccessKey, GetAccessKeyLastUsed, SimulatePrincipalPolicy; (STS Version=2011-06-15):
 * GetCallerIdentity. Anything else is `InvalidAction` (400). Response and error XML follow the AWS shapes
 * (`<XResponse><XResult>…</XResult><ResponseMetadata>…`, `<ErrorResponse><Error><Type>…`), with member
 * names taken from the SDK's schemas in `@aws-sdk/client-iam/dist-cjs/index.js`.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { actionMatches, QUERY_PROTOCOL_ERRORS, verifySigV4 } from './sigv4.ts';

export type IamAction =
  | 'GetUser'
  | 'CreateAccessKey'
  | 'ListAccessKeys'
  | 'UpdateAccessKey'
  | 'DeleteAccessKey'
  | 'GetAccessKeyLastUsed'
  | 'SimulatePrincipalPolicy'
  | 'GetCallerIdentity';

export interface IamRequestRecord {
  /** The `Action` form parameter ('' when absent). */
  action: string;
  /** The `Version` form parameter ('' when absent). */
  version: string;
  /** The access key id named in the Authorization header (never the secret). */
  accessKeyId?: string;
  /** The authenticated user, once the signature was verified. */
  caller?: string;
  /** The `UserName` parameter of the request, when given. */
  userName?: string;
  /** The other form parameters (IAM/STS requests carry no secrets; anything secret-looking is dropped). */
  params: Record<string, string>;
  /** Filled in when the answer is sent. */
  status?: number;
  /** The error code of the answer, if it was an error. */
  error?: string;
}

export type IamInjectedFailure = 'Throttling' | 'ServiceFailure' | 'ServiceUnavailable';

export interface AwsIamEmulator {
  endpoint: string; // http://127.0.0.1:<port>
  region: string; // 'us-east-1' (IAM is global and signed for us-east-1; STS is served for the same region)
  accountId: string; // '123456789012'
  /**
   * Makes a user with one active, already-propagated access key. `allow` lists the IAM actions the user may
   * call (glob patterns such as 'iam:*' or 'iam:CreateAccessKey'); it defaults to none.
   */
  createUser(name: string, options?: { allow?: string[] }): { accessKeyId: string; secretAccessKey: string };
  /** Replaces a user's allowed actions (e.g. to revoke a privilege mid-test). */
  setAllow(name: string, allow: string[]): void;
  /** The user's access keys in creation order; never the secret. Throws for an unknown user. */
  keysOf(name: string): Array<{ accessKeyId: string; status: 'Active' | 'Inactive'; createdAt: Date }>;
  /**
   * The next `count` authenticated requests whose action matches fail with this error before the operation
   * runs (Throttling is 400 "Rate exceeded"; ServiceFailure 500; ServiceUnavailable 503).
   */
  failNext(count: number, code: IamInjectedFailure, match?: (action: string) => boolean): void;
  /** Every request, including failed ones, in arrival order. */
  requests: IamRequestRecord[];
  /** Propagation delay for keys created from now on by CreateAccessKey. */
  setPropagationMs(ms: number): void;
  /** Every secret access key it ever issued, deleted keys' included (the leak tests look for each). */
  issuedSecrets(): string[];
  close(): Promise<void>;
}

const IAM_VERSION = '2010-05-08';
const STS_VERSION = '2011-06-15';
const IAM_NS = 'https://iam.amazonaws.com/doc/2010-05-08/';
const STS_NS = 'https://sts.amazonaws.com/doc/2011-06-15/';
const MAX_KEYS_PER_USER = 2;

type Status = 'Active' | 'Inactive';

interface Key {
  id: string;
  secret: string;
  userName: string;
  status: Status;
  /** Second precision, as IAM reports CreateDate. */
  createdAt: number;
  /** Before this instant the key authenticates nothing (eventual consistency). */
  usableAt: number;
  lastUsed?: { at: number; service: string; region: string };
}

interface User {
  name: string;
  userId: string;
  arn: string;
  createdAt: number;
  allow: string[];
  /** Creation order. */
  keys: Key[];
}

class AwsError extends Error {
  readonly code: string;
  readonly status: number;
  constructor(code: string, message: string, status = 400) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

const INJECTED: Record<IamInjectedFailure, { status: number; message: string }> = {
  Throttling: { status: 400, message: 'Rate exceeded' },
  ServiceFailure: {
    status: 500,
    message: 'The request processing has failed because of an unknown error, exception or failure.',
  },
  ServiceUnavailable: { status: 503, message: 'Service Unavailable' },
};

const noSuchUser = (name: string) =>
  new AwsError('NoSuchEntity', `The user with name ${name} cannot be found.`, 404);
const noSuchKey = (id: string) =>
  new AwsError('NoSuchEntity', `The Access Key with id ${id} cannot be found.`, 404);

// ---- small helpers ----

const KEY_ID_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'; // AWS key ids are base32 upper case
const randomChars = (n: number, alphabet: string) =>
  Array.from(randomBytes(n), (b) => alphabet[b % alphabet.length]).join('');

/** IAM dates: ISO 8601, second precision, UTC (`2015-03-09T18:39:23Z`). */
const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

const esc = (s: string) =>
  s.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!,
  );
/** An element holding already-serialized XML. */
const tag = (name: string, inner: string) => (inner === '' ? `<${name}/>` : `<${name}>${inner}</${name}>`);
/** An element holding text (escaped); nothing when the value is undefined. */
const text = (name: string, value: string | number | boolean | undefined) =>
  value === undefined ? '' : `<${name}>${esc(String(value))}</${name}>`;
/** An awsQuery (non-flattened) list: `<Name><member>…</member>…</Name>`. */
const list = (name: string, items: string[]) => tag(name, items.map((i) => tag('member', i)).join(''));

// ---- request parameter validation (awsQuery front end: ValidationError, 400) ----

const USER_NAME = /^[\w+=,.@-]+$/;
const ACCESS_KEY_ID = /^\w+$/;

class Params {
  readonly errors: string[] = [];
  readonly form: URLSearchParams;
  constructor(form: URLSearchParams) {
    this.form = form;
  }

  private fail(value: string | null, member: string, constraint: string) {
    const shown = value === null ? 'null' : `'${value}'`;
    this.errors.push(
      `Value ${shown} at '${member.charAt(0).toLowerCase()}${member.slice(1)}' failed to satisfy constraint: ${constraint}`,
    );
  }

  string(
    member: string,
    rules: { required?: boolean; min?: number; max?: number; pattern?: RegExp; enum?: string[] } = {},
  ): string | undefined {
    const v = this.form.get(member);
    if (v === null) {
      if (rules.required) this.fail(null, member, 'Member must not be null');
      return undefined;
    }
    if (rules.min !== undefined && v.length < rules.min) {
      this.fail(v, member, `Member must have length greater than or equal to ${rules.min}`);
    } else if (rules.max !== undefined && v.length > rules.max) {
      this.fail(v, member, `Member must have length less than or equal to ${rules.max}`);
    } else if (rules.pattern && !rules.pattern.test(v)) {
      const source = rules.pattern.source.replace(/^\^/, '').replace(/\$$/, '');
      this.fail(v, member, `Member must satisfy regular expression pattern: ${source}`);
    } else if (rules.enum && !rules.enum.includes(v)) {
      this.fail(v, member, `Member must satisfy enum value set: [${rules.enum.join(', ')}]`);
    }
    return v;
  }

  int(member: string, rules: { min: number; max: number }): number | undefined {
    const v = this.form.get(member);
    if (v === null) return undefined;
    const n = Number(v);
    if (!/^-?\d+$/.test(v)) {
      this.fail(v, member, 'Member must be an integer');
      return undefined;
    }
    if (n < rules.min) this.fail(v, member, `Member must have value greater than or equal to ${rules.min}`);
    else if (n > rules.max) this.fail(v, member, `Member must have value less than or equal to ${rules.max}`);
    return n;
  }

  /** `Name.member.N` items in N order; `Name=` alone is the empty list. */
  stringList(member: string, rules: { required?: boolean } = {}): string[] | undefined {
    const items: Array<[number, string]> = [];
    const prefix = `${member}.member.`;
    for (const [k, v] of this.form) {
      if (k.startsWith(prefix) && /^\d+$/.test(k.slice(prefix.length))) {
        items.push([Number(k.slice(prefix.length)), v]);
      }
    }
    if (items.length === 0 && !this.form.has(member)) {
      if (rules.required) this.fail(null, member, 'Member must not be null');
      return undefined;
    }
    return items.sort((a, b) => a[0] - b[0]).map(([, v]) => v);
  }

  /** Throws the collected validation errors, in AWS's "N validation error(s) detected: …" form. */
  check(): void {
    if (this.errors.length === 0) return;
    const n = this.errors.length;
    throw new AwsError(
      'ValidationError',
      `${n} validation error${n === 1 ? '' : 's'} detected: ${this.errors.join('; ')}`,
    );
  }
}

/** Marker-based paging shared by the list operations (MaxItems 1–1000, default 100). */
function page<T>(items: T[], marker: string | undefined, maxItems: number | undefined) {
  let start = 0;
  if (marker !== undefined) {
    const m = /^emu:(\d+)$/.exec(Buffer.from(marker, 'base64').toString('utf8'));
    if (!m) throw new AwsError('InvalidInput', 'Invalid Marker.');
    start = Number(m[1]);
  }
  const size = maxItems ?? 100;
  const slice = items.slice(start, start + size);
  const truncated = start + size < items.length;
  const next = truncated ? Buffer.from(`emu:${start + size}`).toString('base64') : undefined;
  return { slice, xml: text('IsTruncated', truncated) + text('Marker', next) };
}

// ---- the emulator ----

export async function startAwsIamEmulator(options?: { propagationMs?: number }): Promise<AwsIamEmulator> {
  const region = 'us-east-1';
  const accountId = '123456789012';
  let propagationMs = options?.propagationMs ?? 0;
  const users = new Map<string, User>(); // by name
  const keys = new Map<string, Key>(); // by access key id
  const requests: IamRequestRecord[] = [];
  const issued: string[] = [];
  const failures: Array<{
    remaining: number;
    code: IamInjectedFailure;
    match?: (action: string) => boolean;
  }> = [];

  function makeUser(name: string, allow: string[]): User {
    const user: User = {
      name,
      userId: `AIDA${randomChars(17, KEY_ID_CHARS)}`,
      arn: `arn:aws:iam::${accountId}:user/${name}`,
      createdAt: Math.floor(Date.now() / 1000) * 1000,
      allow: [...allow],
      keys: [],
    };
    users.set(name, user);
    return user;
  }

  function makeKey(user: User, now: number, usableAt: number): Key {
    let id: string;
    do id = `AKIA${randomChars(16, KEY_ID_CHARS)}`;
    while (keys.has(id));
    const key: Key = {
      id,
      secret: randomBytes(30).toString('base64'), // 40 characters
      userName: user.name,
      status: 'Active',
      createdAt: Math.floor(now / 1000) * 1000,
      usableAt,
    };
    user.keys.push(key);
    issued.push(key.secret);
    keys.set(id, key);
    return key;
  }

  // ---- authentication: SigV4, verified for real ----

  interface Authenticated {
    user: User;
    key: Key;
  }

  function authenticate(
    req: IncomingMessage,
    body: Buffer,
    service: 'iam' | 'sts',
    now: number,
  ): Authenticated {
    const { key } = verifySigV4(req, body, {
      service,
      region,
      now,
      errors: QUERY_PROTOCOL_ERRORS,
      // Unknown, deleted, inactive or not yet propagated are all the same to the caller. Only long-term user
      // keys exist here (no session token), so a request carrying X-Amz-Security-Token is refused too.
      lookup: (id) => {
        const key = keys.get(id);
        return key !== undefined && key.status === 'Active' && now >= key.usableAt ? key : undefined;
      },
      fail: (code, message, status) => new AwsError(code, message, status),
    });
    key.lastUsed = { at: now, service, region };
    return { user: users.get(key.userName)!, key };
  }

  // ---- authorization ----

  const allowed = (user: User, action: string) => user.allow.some((p) => actionMatches(p, action));

  function authorize(caller: User, action: string, resource: string): void {
    const full = `iam:${action}`;
    if (allowed(caller, full)) return;
    throw new AwsError(
      'AccessDenied',
      `User: ${caller.arn} is not authorized to perform: ${full} on resource: ${resource} because no identity-based policy allows the ${full} action`,
      403,
    );
  }

  /** The user an operation targets: `UserName`, or the caller when it is omitted. Authorizes, then looks up. */
  function targetUser(caller: User, action: string, userName: string | undefined): User {
    const name = userName ?? caller.name;
    authorize(caller, action, `user ${name}`);
    const user = users.get(name);
    if (!user) throw noSuchUser(name);
    return user;
  }

  /** A key of `user` (IAM answers NoSuchEntity when the key exists but belongs to someone else). */
  function keyOf(user: User, id: string): Key {
    const key = user.keys.find((k) => k.id === id);
    if (!key) throw noSuchKey(id);
    return key;
  }

  const userXml = (u: User) =>
    text('Path', '/') +
    text('UserName', u.name) +
    text('UserId', u.userId) +
    text('Arn', u.arn) +
    text('CreateDate', iso(u.createdAt));

  // ---- operations: each returns the inner XML of <XResult>, or undefined for operations without a result ----

  type Op = (p: Params, caller: Authenticated, now: number) => string | undefined;

  const iamOps: Record<string, Op> = {
    GetUser(p, { user: caller }) {
      const userName = p.string('UserName', { min: 1, max: 128, pattern: USER_NAME });
      p.check();
      const user = targetUser(caller, 'GetUser', userName);
      return tag('User', userXml(user));
    },

    CreateAccessKey(p, { user: caller }, now) {
      const userName = p.string('UserName', { min: 1, max: 128, pattern: USER_NAME });
      p.check();
      const user = targetUser(caller, 'CreateAccessKey', userName);
      // Active and inactive keys both count (AWS: "a maximum of two access keys (active or inactive)").
      if (user.keys.length >= MAX_KEYS_PER_USER) {
        throw new AwsError(
          'LimitExceeded',
          `Cannot exceed quota for AccessKeysPerUser: ${MAX_KEYS_PER_USER}`,
          409,
        );
      }
      const key = makeKey(user, now, now + propagationMs);
      return tag(
        'AccessKey',
        text('UserName', user.name) +
          text('AccessKeyId', key.id) +
          text('Status', key.status) +
          text('SecretAccessKey', key.secret) +
          text('CreateDate', iso(key.createdAt)),
      );
    },

    ListAccessKeys(p, { user: caller }) {
      const userName = p.string('UserName', { min: 1, max: 128, pattern: USER_NAME });
      const marker = p.string('Marker', { min: 1, max: 320 });
      const maxItems = p.int('MaxItems', { min: 1, max: 1000 });
      p.check();
      const user = targetUser(caller, 'ListAccessKeys', userName);
      const { slice, xml } = page(user.keys, marker, maxItems);
      return (
        list(
          'AccessKeyMetadata',
          slice.map(
            (k) =>
              text('UserName', user.name) +
              text('AccessKeyId', k.id) +
              text('Status', k.status) +
              text('CreateDate', iso(k.createdAt)),
          ),
        ) + xml
      );
    },

    UpdateAccessKey(p, { user: caller }) {
      const userName = p.string('UserName', { min: 1, max: 128, pattern: USER_NAME });
      const id = p.string('AccessKeyId', { required: true, min: 16, max: 128, pattern: ACCESS_KEY_ID });
      const status = p.string('Status', { required: true, enum: ['Active', 'Inactive'] });
      p.check();
      const user = targetUser(caller, 'UpdateAccessKey', userName);
      keyOf(user, id!).status = status as Status;
      return undefined;
    },

    DeleteAccessKey(p, { user: caller }) {
      const userName = p.string('UserName', { min: 1, max: 128, pattern: USER_NAME });
      const id = p.string('AccessKeyId', { required: true, min: 16, max: 128, pattern: ACCESS_KEY_ID });
      p.check();
      const user = targetUser(caller, 'DeleteAccessKey', userName);
      const key = keyOf(user, id!);
      user.keys.splice(user.keys.indexOf(key), 1);
      keys.delete(key.id);
      return undefined;
    },

    GetAccessKeyLastUsed(p, { user: caller }) {
      const id = p.string('AccessKeyId', { required: true, min: 16, max: 128, pattern: ACCESS_KEY_ID });
      p.check();
      const key = keys.get(id!);
      // The resource is the key's owner; an unknown key can only be reported once the action is allowed.
      authorize(caller, 'GetAccessKeyLastUsed', key ? `user ${key.userName}` : `access key ${id}`);
      if (!key) throw noSuchKey(id!);
      // Never used: ServiceName and Region are "N/A" and there is no LastUsedDate (AWS API reference).
      const used = key.lastUsed;
      return (
        text('UserName', key.userName) +
        tag(
          'AccessKeyLastUsed',
          text('LastUsedDate', used ? iso(used.at) : undefined) +
            text('ServiceName', used ? used.service : 'N/A') +
            text('Region', used ? used.region : 'N/A'),
        )
      );
    },

    SimulatePrincipalPolicy(p, { user: caller }) {
      const source = p.string('PolicySourceArn', { required: true, min: 20, max: 2048 });
      const actionNames = p.stringList('ActionNames', { required: true });
      const resourceArns = p.stringList('ResourceArns');
      const marker = p.string('Marker', { min: 1, max: 320 });
      const maxItems = p.int('MaxItems', { min: 1, max: 1000 });
      for (const a of actionNames ?? []) {
        if (a.length < 3 || a.length > 128) {
          p.errors.push(
            `Value '${a}' at 'actionNames' failed to satisfy constraint: Member must have length between 3 and 128`,
          );
        }
      }
      p.check();
      const m = /^arn:aws:iam::(\d{12}):(user|role|group)\/(?:[\w+=,.@/-]*\/)?([\w+=,.@-]+)$/.exec(source!);
      if (!m) throw new AwsError('InvalidInput', `ARN ${source} is not valid.`);
      const [, account, kind, name] = m as unknown as [string, string, string, string];
      authorize(caller, 'SimulatePrincipalPolicy', kind === 'user' ? `user ${name}` : source!);
      // Only users exist in this emulator; roles and groups, and other accounts, are never found.
      const principal = account === accountId && kind === 'user' ? users.get(name) : undefined;
      if (!principal) {
        throw new AwsError('NoSuchEntity', `The ${kind} with name ${name} cannot be found.`, 404);
      }
      for (const a of actionNames!) {
        if (!/^[\w-]+:[\w*?]+$/.test(a)) {
          throw new AwsError(
            'InvalidInput',
            'Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc.',
          );
        }
      }
      const resources = resourceArns && resourceArns.length > 0 ? resourceArns : ['*'];
      const results = actionNames!.flatMap((action) =>
        resources.map((resource) => {
          const ok = allowed(principal, action);
          return (
            text('EvalActionName', action) +
            text('EvalResourceName', resource) +
            text('EvalDecision', ok ? 'allowed' : 'implicitDeny') +
            list(
              'MatchedStatements',
              ok ? [text('SourcePolicyId', 'emulator-allow-list') + text('SourcePolicyType', 'user')] : [],
            ) +
            list('MissingContextValues', [])
          );
        }),
      );
      const { slice, xml } = page(results, marker, maxItems);
      return list('EvaluationResults', slice) + xml;
    },
  };

  const stsOps: Record<string, Op> = {
    GetCallerIdentity(p, { user }) {
      p.check();
      return text('Arn', user.arn) + text('UserId', user.userId) + text('Account', accountId);
    },
  };

  // ---- HTTP ----

  function send(res: ServerResponse, status: number, xml: string, requestId: string): void {
    const payload = `<?xml version="1.0" encoding="UTF-8"?>\n${xml}\n`;
    res.writeHead(status, {
      'content-type': 'text/xml',
      'content-length': Buffer.byteLength(payload),
      'x-amzn-requestid': requestId,
    });
    res.end(payload);
  }

  function sendError(res: ServerResponse, e: AwsError, ns: string, requestId: string): void {
    const type = e.status >= 500 ? 'Receiver' : 'Sender';
    send(
      res,
      e.status,
      `<ErrorResponse xmlns="${ns}">${tag(
        'Error',
        text('Type', type) + text('Code', e.code) + text('Message', e.message),
      )}${text('RequestId', requestId)}</ErrorResponse>`,
      requestId,
    );
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const requestId = randomUUID();
    const now = Date.now();

    const form = new URLSearchParams(req.method === 'POST' ? body.toString('utf8') : '');
    const action = form.get('Action') ?? '';
    const version = form.get('Version') ?? '';
    const isSts = version === STS_VERSION;
    const ns = isSts ? STS_NS : IAM_NS;

    const record: IamRequestRecord = { action, version, params: {} };
    for (const [k, v] of form) {
      if (k !== 'Action' && k !== 'Version' && !/secret|password|token/i.test(k)) record.params[k] = v;
    }
    const userName = form.get('UserName');
    if (userName !== null) record.userName = userName;
    const keyId = /Credential=([^/,\s]+)\//.exec(req.headers.authorization ?? '')?.[1];
    if (keyId !== undefined) record.accessKeyId = keyId;
    requests.push(record);

    const finish = (status: number, error?: string) => {
      record.status = status;
      if (error !== undefined) record.error = error;
    };

    try {
      const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (req.method !== 'POST' || contentType !== 'application/x-www-form-urlencoded') {
        throw new AwsError(
          'InvalidAction',
          'Only POST with Content-Type application/x-www-form-urlencoded is emulated.',
        );
      }
      const caller = authenticate(req, body, isSts ? 'sts' : 'iam', now);
      record.caller = caller.user.name;
      if (action === '') throw new AwsError('MissingAction', 'Missing Action');
      const ops = version === IAM_VERSION ? iamOps : isSts ? stsOps : {};
      const op = Object.hasOwn(ops, action) ? ops[action] : undefined;
      if (!op) {
        throw new AwsError('InvalidAction', `Could not find operation ${action} for version ${version}`);
      }
      const rule = failures.find((f) => f.remaining > 0 && (f.match === undefined || f.match(action)));
      if (rule) {
        rule.remaining--;
        if (rule.remaining === 0) failures.splice(failures.indexOf(rule), 1);
        const injected = INJECTED[rule.code];
        // Injected failures happen before the operation runs: no state changes.
        throw new AwsError(rule.code, injected.message, injected.status);
      }
      const result = op(new Params(form), caller, now);
      send(
        res,
        200,
        `<${action}Response xmlns="${ns}">${result === undefined ? '' : tag(`${action}Result`, result)}${tag(
          'ResponseMetadata',
          text('RequestId', requestId),
        )}</${action}Response>`,
        requestId,
      );
      finish(200);
    } catch (e) {
      const error = e instanceof AwsError ? e : new AwsError('ServiceFailure', String(e), 500);
      sendError(res, error, ns, requestId);
      finish(error.status, error.code);
    }
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (!res.headersSent)
        sendError(res, new AwsError('ServiceFailure', String(e), 500), IAM_NS, randomUUID());
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  const existing = (name: string) => {
    const user = users.get(name);
    if (!user) throw new Error(`aws-iam emulator: no user ${name}`);
    return user;
  };

  return {
    endpoint: `http://127.0.0.1:${port}`,
    region,
    accountId,
    requests,
    createUser(name, opts) {
      if (!USER_NAME.test(name) || name.length > 64)
        throw new Error(`aws-iam emulator: bad user name ${name}`);
      if (users.has(name)) throw new Error(`aws-iam emulator: user ${name} already exists`);
      const user = makeUser(name, opts?.allow ?? []);
      const key = makeKey(user, Date.now(), 0); // already propagated
      return { accessKeyId: key.id, secretAccessKey: key.secret };
    },
    setAllow(name, allow) {
      existing(name).allow = [...allow];
    },
    keysOf(name) {
      return existing(name).keys.map((k) => ({
        accessKeyId: k.id,
        status: k.status,
        createdAt: new Date(k.createdAt),
      }));
    },
    failNext(count, code, match) {
      if (count > 0)
        failures.push(match === undefined ? { remaining: count, code } : { remaining: count, code, match });
    },
    issuedSecrets: () => [...issued],
    setPropagationMs(ms) {
      propagationMs = ms;
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections(); // the SDK's keep-alive sockets would otherwise hold close() open
      }),
  };
}
