/**
 * Test fixture: the AWS Signature Version 4 check the AWS emulators (IAM/STS, KMS, Secrets Manager) share, so
 * that each of them is as strict as AWS about who signed a request, and all of them in the same way.
 *
 * What it verifies, in the order AWS reports problems:
 * - an `Authorization` header is present (else the service's "missing authentication token" error);
 * - it is `AWS4-HMAC-SHA256` with Credential, SignedHeaders and Signature, an `X-Amz-Date` header exists, the
 *   credential scope has five parts, `host` is signed, and the date is ISO 8601 basic format (else the
 *   service's "incomplete signature" error);
 * - the access key is one the emulator knows and may use now (`lookup`), and the request's
 *   `X-Amz-Security-Token` is exactly the session token issued with that key: none for long-term keys (else
 *   the service's "invalid client token" error);
 * - the date is within 15 minutes of the server clock, the scope's date is that date's day, the terminator is
 *   `aws4_request`, and the scope names this service and region;
 * - the signature, recomputed over what was received (method, path with each segment encoded again as
 *   non-S3 services expect, the sorted query, the headers named in SignedHeaders with whitespace folded, and
 *   the SHA-256 of the received body whatever `x-amz-content-sha256` claims) with the key's secret, matches
 *   in a constant-time compare (these four are the service's "signature does not match" error).
 *
 * What it does not do: presigned URLs (signature in the query string), the `Date` header instead of
 * `X-Amz-Date`, SigV4A, chunked/streaming payload signing (`STREAMING-*`, `UNSIGNED-PAYLOAD`), S3's
 * single-encoded paths, and checking that headers AWS requires to be signed (content-type, x-amz-*) are in
 * SignedHeaders: only `host` is required, as the emulated services only ever see the SDK's full signatures.
 *
 * The error codes, statuses and fixed messages differ between the protocols (Query: IAM/STS answer
 * `SignatureDoesNotMatch` 403 in XML; JSON 1.1: KMS/Secrets Manager answer `InvalidSignatureException` 400 as
 * `{"__type","message"}`): `QUERY_PROTOCOL_ERRORS` and `JSON_PROTOCOL_ERRORS` hold them; the emulator's `fail`
 * turns code, message and status into the error it sends.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/** The four refusals of a SigV4 check, as one AWS protocol spells them. */
export interface SigV4Errors {
  /** No Authorization header at all. */
  missing: { code: string; message: string; status: number };
  /** A malformed Authorization header or date (the message names the problem). */
  incomplete: { code: string; status: number };
  /** An unknown or unusable access key, or a session token that is not the key's. */
  invalidToken: { code: string; message: string; status: number };
  /** A wrong secret, scope (service, region, date, terminator) or a clock more than 15 minutes off. */
  mismatch: { code: string; status: number };
}

/** IAM and STS (AWS Query protocol, XML errors). */
export const QUERY_PROTOCOL_ERRORS: SigV4Errors = {
  missing: {
    code: 'MissingAuthenticationToken',
    message: 'Request is missing Authentication Token',
    status: 403,
  },
  incomplete: { code: 'IncompleteSignature', status: 400 },
  invalidToken: {
    code: 'InvalidClientTokenId',
    message: 'The security token included in the request is invalid.',
    status: 403,
  },
  mismatch: { code: 'SignatureDoesNotMatch', status: 403 },
};

/** KMS and Secrets Manager (AWS JSON 1.1 protocol, `{"__type","message"}` errors, all 400). */
export const JSON_PROTOCOL_ERRORS: SigV4Errors = {
  missing: {
    code: 'MissingAuthenticationTokenException',
    message: 'Missing Authentication Token',
    status: 400,
  },
  incomplete: { code: 'IncompleteSignatureException', status: 400 },
  invalidToken: {
    code: 'UnrecognizedClientException',
    message: 'The security token included in the request is invalid.',
    status: 400,
  },
  mismatch: { code: 'InvalidSignatureException', status: 400 },
};

/** What the verifier needs of an access key: its secret, and the session token issued with it, if any. */
export interface SigV4Key {
  secret: string;
  /** Set only for temporary credentials; a long-term key accepts no `X-Amz-Security-Token` at all. */
  sessionToken?: string;
}

export interface SigV4Options<K extends SigV4Key> {
  /** The signing name the scope must carry ('iam', 'sts', 'kms', 'secretsmanager'). */
  service: string;
  region: string;
  /** The server clock (ms), for the 15-minute window. */
  now: number;
  errors: SigV4Errors;
  /** The key, or undefined when it is unknown or may not authenticate now (inactive, deleted, not propagated). */
  lookup(accessKeyId: string): K | undefined;
  /** Builds the error the emulator throws and later sends. */
  fail(code: string, message: string, status: number): Error;
}

/** SigV4: requests dated more than 15 minutes away from the server clock are refused. */
export const MAX_SKEW_MS = 15 * 60_000;

const sha256hex = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data).digest();

/** RFC 3986 encoding as SigV4 canonicalization wants it. */
const uriEncode = (s: string) =>
  encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** SigV4 `X-Amz-Date` form (`20150830T123600Z`). */
const amzDate = (ms: number) =>
  new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');

/** The values of header `name` as received, joined and whitespace-normalized as SigV4 canonicalizes them. */
function headerValue(req: IncomingMessage, name: string): string | undefined {
  const values: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]!.toLowerCase() === name) {
      values.push(req.rawHeaders[i + 1]!.trim().replace(/\s+/g, ' '));
    }
  }
  return values.length === 0 ? undefined : values.join(',');
}

function canonicalQuery(rawQuery: string): string {
  if (rawQuery === '') return '';
  const pairs = rawQuery.split('&').map((part) => {
    const i = part.indexOf('=');
    const k = decodeURIComponent(i < 0 ? part : part.slice(0, i));
    const v = i < 0 ? '' : decodeURIComponent(part.slice(i + 1));
    return [uriEncode(k), uriEncode(v)] as const;
  });
  pairs.sort(([ak, av], [bk, bv]) => (ak < bk ? -1 : ak > bk ? 1 : av < bv ? -1 : av > bv ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

const equalSecret = (a: string, b: string) => {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
};

/**
 * Verifies the SigV4 signature of `req` (whose body was read into `body`) and returns the signing key, or
 * throws `options.fail(...)` with the protocol's code, AWS's message and status.
 */
export function verifySigV4<K extends SigV4Key>(
  req: IncomingMessage,
  body: Buffer,
  options: SigV4Options<K>,
): { accessKeyId: string; key: K } {
  const { service, region, now, errors, fail } = options;
  const incomplete = (message: string) => fail(errors.incomplete.code, message, errors.incomplete.status);
  const mismatch = (message: string) => fail(errors.mismatch.code, message, errors.mismatch.status);
  const invalidToken = () =>
    fail(errors.invalidToken.code, errors.invalidToken.message, errors.invalidToken.status);

  const authorization = req.headers.authorization;
  if (authorization === undefined || authorization === '') {
    throw fail(errors.missing.code, errors.missing.message, errors.missing.status);
  }
  const space = authorization.indexOf(' ');
  const algorithm = space < 0 ? authorization : authorization.slice(0, space);
  if (algorithm !== 'AWS4-HMAC-SHA256') throw incomplete(`Unsupported AWS 'algorithm': '${algorithm}'.`);
  const fields = new Map<string, string>();
  for (const part of authorization.slice(space + 1).split(',')) {
    const i = part.indexOf('=');
    if (i > 0) fields.set(part.slice(0, i).trim(), part.slice(i + 1).trim());
  }
  const problems = ['Credential', 'Signature', 'SignedHeaders']
    .filter((f) => !fields.get(f))
    .map((f) => `Authorization header requires '${f}' parameter.`);
  const dateHeader = headerValue(req, 'x-amz-date');
  if (dateHeader === undefined) {
    problems.push("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.");
  }
  if (problems.length > 0) throw incomplete(`${problems.join(' ')} Authorization=${authorization}`);
  const date = dateHeader!;
  const credential = fields.get('Credential')!;
  const signedHeaders = fields.get('SignedHeaders')!;
  const signature = fields.get('Signature')!;
  const scope = credential.split('/');
  if (scope.length !== 5) {
    throw incomplete(
      `Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '${credential}'`,
    );
  }
  const [accessKeyId, scopeDate, scopeRegion, scopeService, terminator] = scope as [
    string,
    string,
    string,
    string,
    string,
  ];
  const headerNames = signedHeaders.split(';');
  if (!headerNames.includes('host')) {
    throw incomplete(
      `'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization. Authorization=${authorization}`,
    );
  }
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(date);
  if (!m) throw incomplete(`Date must be in ISO-8601 'basic format'. Got '${date}'.`);
  const signedAt = Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);

  // The key itself: unknown, deleted, inactive or not yet propagated are all the same to the caller, and so
  // is a session token that is not the one issued with the key (a long-term key has none).
  const key = options.lookup(accessKeyId);
  if (key === undefined) throw invalidToken();
  const token = req.headers['x-amz-security-token'];
  if (
    key.sessionToken === undefined ? token !== undefined : !equalSecret(String(token ?? ''), key.sessionToken)
  ) {
    throw invalidToken();
  }

  if (signedAt < now - MAX_SKEW_MS) {
    throw mismatch(
      `Signature expired: ${date} is now earlier than ${amzDate(now - MAX_SKEW_MS)} (${amzDate(now)} - 15 min.)`,
    );
  }
  if (signedAt > now + MAX_SKEW_MS) {
    throw mismatch(
      `Signature not yet current: ${date} is still later than ${amzDate(now + MAX_SKEW_MS)} (${amzDate(now)} + 15 min.)`,
    );
  }
  if (scopeDate !== date.slice(0, 8)) {
    throw mismatch(
      `Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '${scopeDate}' != '${date.slice(0, 8)}', from '${date}'.`,
    );
  }
  if (terminator !== 'aws4_request') {
    throw mismatch(
      `Credential should be scoped with a valid terminator: 'aws4_request', not '${terminator}'.`,
    );
  }
  if (scopeService !== service)
    throw mismatch(`Credential should be scoped to correct service: '${service}'. `);
  if (scopeRegion !== region) throw mismatch('Credential should be scoped to a valid region. ');

  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const rawPath = q < 0 ? url : url.slice(0, q);
  const canonicalRequest = [
    req.method ?? '',
    // Non-S3 services: each path segment is URI-encoded again (the SDK double-encodes the path).
    rawPath
      .split('/')
      .map((s) => uriEncode(s))
      .join('/'),
    canonicalQuery(q < 0 ? '' : url.slice(q + 1)),
    headerNames.map((name) => `${name}:${headerValue(req, name) ?? ''}\n`).join(''),
    signedHeaders,
    sha256hex(body), // the received body, whatever x-amz-content-sha256 claims
  ].join('\n');
  const stringToSign = [
    'AWS4-HMAC-SHA256',
    date,
    `${scopeDate}/${scopeRegion}/${scopeService}/aws4_request`,
    sha256hex(canonicalRequest),
  ].join('\n');
  const signingKey = hmac(
    hmac(hmac(hmac(`AWS4${key.secret}`, scopeDate), scopeRegion), scopeService),
    'aws4_request',
  );
  const expected = hmac(signingKey, stringToSign);
  const given = /^[0-9a-f]{64}$/.test(signature) ? Buffer.from(signature, 'hex') : Buffer.alloc(0);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw mismatch(
      'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.',
    );
  }
  return { accessKeyId, key };
}

/** Case-insensitive glob (`*`, `?`) over action names, as IAM matches them in a policy (`kms:Generate*`). */
export const actionMatches = (pattern: string, value: string): boolean =>
  new RegExp(
    `^${pattern
      .split('')
      .map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
      .join('')}$`,
    'i',
  ).test(value);
