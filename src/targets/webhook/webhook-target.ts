// Webhook target: rotates a credential that any HTTP service holds (a third-party API key, an internal
// service's login), provided the service implements this small contract. docs/webhook-target.md has it in
// full, with an example service a team can start from.
//
//   POST <basePath>/set     {"action":"set","username":…,"password":…,"requestId":…,"timestamp":…}
//   POST <basePath>/test    {"action":"test","username":…,"password":…,"requestId":…,"timestamp":…}
//   POST <basePath>/revoke  {"action":"revoke","username":…,"requestId":…,"timestamp":…}
//
//   Content-Type: application/json
//   X-Keyturn-Key-Id: <the connection's admin.username>
//   X-Keyturn-Timestamp: <unix seconds, the same value as the body's timestamp>
//   X-Keyturn-Signature: v1=<hex HMAC-SHA256 over "<timestamp>.<raw body>", keyed with admin.password>
//
// requestId is a fresh UUID per request. The service refuses a key id or signature that does not match (401),
// a timestamp more than 300 s from its clock (401) and a requestId it has already seen within that window
// (409); it applies `set` idempotently (the same password twice is fine).
//
//   set     200/204 = applied (not 202: Keyturn tests the password right after)
//   test    200 = the credentials work; 401/403 = refused; anything else says nothing about them
//   revoke  200/204/404 = gone
//
// 5xx, 408, 429 and network errors are retried (`retries` times, short backoff) with a new requestId and
// timestamp, since the service refuses replays; then TargetUnavailableError. Any other answer to set or revoke
// is TargetRefusedError (retrying will not help: the rotation rolls back at once).
//
// How the engine's verbs map: authenticate → test; updatePassword and createUser → set (the service owns its
// users, so createUser always says 'updated'; alternating-users needs a service that accepts both usernames);
// userExists → true (the contract has no look-up: a set for an unknown user creates it); deleteUser → revoke.
//
// The signing key and the passwords never go into a message, and neither does anything the service answered: a
// failure says the status and its standard phrase (a body read back would let an operator read whatever the connection
// points at). Network errors are scrubbed with both as known secrets.
import { createHmac, randomUUID } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { scrubText } from '../../crypto/scrub.ts';
import type { Connection } from '../../registry/types.ts';
import {
  type AuthOutcome,
  type CallOptions,
  type Check,
  type Login,
  nothingSent,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  TargetUnavailableError,
  type UserTemplate,
} from '../types.ts';

export type WebhookAction = 'set' | 'test' | 'revoke';

/** Bytes of a response body read (and dropped: it never reaches a message) before the connection is let go. */
const MAX_RESPONSE_BYTES = 4096;
const DEFAULT_BASE_PATH = '/keyturn';
const DEFAULT_RETRIES = 2;
const BACKOFF_MS = 100;

const KNOWN_OPTIONS = ['basePath', 'timeoutMs', 'retries'];

/** The signature header's value: `v1=` and the hex HMAC-SHA256 of `<timestamp>.<raw body>`. */
export function webhookSignature(signingKey: string, timestamp: number, body: string): string {
  return `v1=${createHmac('sha256', signingKey).update(`${timestamp}.${body}`).digest('hex')}`;
}

function isInteger(value: unknown, min: number, max: number): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max;
}

function validateOptions(options: Record<string, string | number | boolean>): string[] {
  const problems: string[] = [];
  for (const name of Object.keys(options)) {
    if (!KNOWN_OPTIONS.includes(name)) {
      problems.push(`"${name}" is not an option of webhook connections (known: ${KNOWN_OPTIONS.join(', ')})`);
    }
  }
  const { basePath, timeoutMs, retries } = options;
  if (basePath !== undefined) {
    if (typeof basePath !== 'string' || !basePath.startsWith('/')) {
      problems.push('basePath must be a path starting with "/", such as "/keyturn"');
    } else if (/[\s?#\\]|\/\.\.?(\/|$)/.test(basePath)) {
      problems.push('basePath must be a plain path: no spaces, "?", "#", "\\" or "." and ".." segments');
    }
  }
  if (timeoutMs !== undefined && !isInteger(timeoutMs, 100, 60_000)) {
    problems.push('timeoutMs must be a whole number of milliseconds from 100 to 60000');
  }
  if (retries !== undefined && !isInteger(retries, 0, 5)) {
    problems.push('retries must be a whole number from 0 to 5');
  }
  return problems;
}

interface Settings {
  module: typeof http | typeof https;
  scheme: 'http' | 'https';
  tls: https.RequestOptions;
  basePath: string;
  /** The time one call may take, its retries included. */
  timeoutMs: number;
  retries: number;
}

function settings(connection: Connection, timeoutMs: number): Settings {
  const options = connection.options ?? {};
  const problems = validateOptions(options);
  if (problems.length > 0) {
    throw new TargetRefusedError(`connection "${connection.id}": options: ${problems.join('; ')}`);
  }
  // Without a tls block the service is reached over HTTPS with its certificate verified.
  const mode = connection.tls?.mode ?? 'verify-full';
  const basePath = ((options.basePath as string | undefined) ?? DEFAULT_BASE_PATH).replace(/\/+$/, '');
  return {
    // Plain http sends the passwords in clear text: it is for tests and private networks only.
    module: mode === 'disable' ? http : https,
    scheme: mode === 'disable' ? 'http' : 'https',
    tls:
      mode === 'disable'
        ? {}
        : mode === 'require'
          ? { rejectUnauthorized: false }
          : { rejectUnauthorized: true, ...(connection.tls?.ca ? { ca: connection.tls.ca } : {}) },
    basePath,
    timeoutMs: (options.timeoutMs as number | undefined) ?? timeoutMs,
    retries: (options.retries as number | undefined) ?? DEFAULT_RETRIES,
  };
}

/** 5xx, and the 4xx that mean "not now" rather than "no". */
const retryable = (status: number): boolean => status >= 500 || status === 408 || status === 429;

interface Answer {
  status: number;
  /** A short, scrubbed reason taken from the body, or '' */
  reason: string;
}

/** Errors of a connection that was never made: the request cannot have reached the service. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/** Thrown by one attempt that got no answer. */
class NoAnswer extends Error {
  readonly code: string | undefined;
  readonly timedOut: boolean;
  constructor(message: string, code: string | undefined, timedOut: boolean) {
    super(message);
    this.code = code;
    this.timedOut = timedOut;
  }
}

class WebhookSession implements TargetSession {
  readonly #connection: Connection;
  readonly #admin: Login;
  readonly #settings: Settings;
  /** Aborted by close(): a call still retrying (a step the engine gave up on) stops at once. */
  readonly #closed = new AbortController();

  constructor(connection: Connection, admin: Login, settings: Settings) {
    this.#connection = connection;
    this.#admin = admin;
    this.#settings = settings;
  }

  get #origin(): string {
    const host = this.#connection.host.includes(':') ? `[${this.#connection.host}]` : this.#connection.host;
    return `${this.#settings.scheme}://${host}:${this.#connection.port}`;
  }

  /**
   * The reason a failure gives: the status's standard phrase, never the body. Why: a connection can point anywhere an
   * operator says, and copying what answered into an error the operator reads would read that place back to them (a
   * metadata endpoint, an internal service): issue 17 §2.
   */
  #reason(status: number): string {
    return http.STATUS_CODES[status] ?? '';
  }

  /** One POST, bounded by `signal`; resolves with the status and the start of the body. */
  #post(
    action: WebhookAction,
    body: string,
    timestamp: number,
    signal: AbortSignal,
  ): Promise<Answer & { text: string }> {
    const { module, tls, basePath } = this.#settings;
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (err: unknown) => {
        if (settled) return;
        settled = true;
        const timedOut = signal.aborted && !this.#closed.signal.aborted;
        const code = (err as { code?: unknown } | null)?.code;
        reject(
          new NoAnswer(
            timedOut
              ? 'no answer in time'
              : this.#closed.signal.aborted
                ? 'the session was closed'
                : err instanceof Error
                  ? err.message
                  : String(err),
            typeof code === 'string' ? code : undefined,
            timedOut,
          ),
        );
      };
      const req = module.request(
        {
          method: 'POST',
          hostname: this.#connection.host,
          port: this.#connection.port,
          path: `${basePath}/${action}`,
          headers: {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body),
            accept: 'application/json',
            'user-agent': 'keyturn-webhook/1',
            'x-keyturn-key-id': this.#admin.username,
            'x-keyturn-timestamp': String(timestamp),
            'x-keyturn-signature': webhookSignature(this.#admin.password, timestamp, body),
          },
          // A fresh connection per call: a rotation makes a handful of calls, and nothing idles between steps.
          agent: false,
          signal,
          ...tls,
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          const done = () => {
            if (settled) return;
            settled = true;
            resolve({
              status: res.statusCode ?? 0,
              reason: '',
              text: Buffer.concat(chunks).toString('utf8'),
            });
          };
          res.on('data', (chunk: Buffer) => {
            if (size < MAX_RESPONSE_BYTES) chunks.push(chunk.subarray(0, MAX_RESPONSE_BYTES - size));
            size += chunk.length;
            if (size >= MAX_RESPONSE_BYTES) {
              // Enough to explain a failure: stop reading.
              done();
              res.destroy();
            }
          });
          res.on('end', done);
          res.on('error', fail);
          res.on('close', () => {
            // Closed before its end: the status arrived, the body is whatever came.
            if (!settled) done();
          });
        },
      );
      req.on('error', fail);
      req.end(body);
    });
  }

  /**
   * One call: POSTs `action`, retrying answers that mean "not now" and network errors with a new requestId and
   * timestamp each time. All attempts share one deadline (timeoutMs), so a hanging service costs one timeout.
   */
  async #call(
    action: WebhookAction,
    username: string,
    password: string | undefined,
    cancel: AbortSignal | undefined,
  ): Promise<Answer> {
    const where = `${this.#origin}${this.#settings.basePath}/${action}`;
    const what = `webhook ${action} for "${username}" at ${where}`;
    const secrets = [password];
    // The session closing and the middleware's deadline (`cancel`) both end the call, and abort a request in flight.
    const stop = cancel ? AbortSignal.any([this.#closed.signal, cancel]) : this.#closed.signal;
    if (stop.aborted)
      throw new TargetUnavailableError(`${what}: the session is closed or the call was cancelled`);
    const deadline = Date.now() + this.#settings.timeoutMs;
    let last = '';
    let code: string | undefined;
    let attempts = 0;
    // Whether any attempt may have reached the service: only a connection that was never made proves none did.
    let mayHaveArrived = false;
    for (;;) {
      attempts += 1;
      const timestamp = Math.floor(Date.now() / 1000);
      const body = JSON.stringify({
        action,
        username,
        ...(password === undefined ? {} : { password }),
        requestId: randomUUID(),
        timestamp,
      });
      const signal = AbortSignal.any([stop, AbortSignal.timeout(Math.max(1, deadline - Date.now()))]);
      try {
        const answer = await this.#post(action, body, timestamp, signal);
        mayHaveArrived = true;
        const reason = this.#reason(answer.status);
        if (!retryable(answer.status)) return { status: answer.status, reason };
        last = `answered ${answer.status}${reason ? ` (${reason})` : ''}`;
        code = `HTTP_${answer.status}`;
      } catch (err) {
        if (!(err instanceof NoAnswer)) throw err;
        if (stop.aborted)
          throw new TargetUnavailableError(`${what}: the session was closed or the call cancelled`);
        if (err.timedOut || !NOT_CONNECTED.has(err.code ?? '')) mayHaveArrived = true;
        last = err.timedOut
          ? `no answer within ${this.#settings.timeoutMs} ms`
          : scrubText(err.message, [...secrets, this.#admin.password]);
        code = err.timedOut ? 'ETIMEDOUT' : err.code;
      }
      const pause = BACKOFF_MS * 2 ** (attempts - 1) * (0.5 + Math.random() / 2);
      // Retry only while a retry still has time to be answered.
      if (attempts > this.#settings.retries || Date.now() + pause + BACKOFF_MS >= deadline) break;
      await new Promise((resolve) => setTimeout(resolve, pause));
      if (stop.aborted)
        throw new TargetUnavailableError(`${what}: the session was closed or the call cancelled`);
    }
    const error = new TargetUnavailableError(
      `${what}: ${last}, after ${attempts} attempt${attempts === 1 ? '' : 's'}`,
      code,
    );
    throw mayHaveArrived ? error : nothingSent(error);
  }

  /** Refuses an answer to set or revoke that is not in `ok`. */
  #expect(action: WebhookAction, username: string, answer: Answer, ok: number[]): void {
    if (ok.includes(answer.status)) return;
    const hint =
      answer.status === 401
        ? ": the service refused the signature, key id or timestamp (check the connection's admin secret and both clocks)"
        : answer.status === 409
          ? ': the service took the request for a replay'
          : answer.status >= 200 && answer.status < 300
            ? `: ${action} must answer ${ok.join(' or ')} once done`
            : '';
    throw new TargetRefusedError(
      `webhook ${action} for "${username}" at ${this.#origin}${this.#settings.basePath}/${action}: answered ${answer.status}${answer.reason ? ` (${answer.reason})` : ''}${hint}`,
      `HTTP_${answer.status}`,
    );
  }

  async authenticate(login: Login, call?: CallOptions): Promise<AuthOutcome> {
    const answer = await this.#call('test', login.username, login.password, call?.signal);
    if (answer.status === 200) return { ok: true };
    if (answer.status === 401 || answer.status === 403) {
      return {
        ok: false,
        reason: 'rejected',
        message: `the service refused the credentials of "${login.username}" (${answer.status}${answer.reason ? `: ${answer.reason}` : ''})`,
      };
    }
    throw new TargetUnavailableError(
      `webhook test for "${login.username}" at ${this.#origin}${this.#settings.basePath}/test: answered ${answer.status}${answer.reason ? ` (${answer.reason})` : ''}; test answers 200 when the credentials work, 401 or 403 when they do not`,
      `HTTP_${answer.status}`,
    );
  }

  async checkAdmin(call?: CallOptions): Promise<Check[]> {
    // A signed test of a made-up user and password: a service that checks the signature and the credentials answers
    // 403 (refused credentials; the contract keeps 401 for the signature, key id and timestamp).
    const probe = `keyturn-probe-${randomUUID()}`;
    const answer = await this.#call('test', probe, randomUUID(), call?.signal);
    const name = 'signed requests';
    if (answer.status === 403)
      return [
        {
          name,
          ok: true,
          message: 'the service checked the signature and refused the made-up credentials (403)',
        },
      ];
    if (answer.status === 401) {
      return [
        {
          name,
          ok: false,
          message: `the service answered 401 to a signed test${answer.reason ? ` (${answer.reason})` : ''}: check the signing key (admin.password) and key id (admin.username); a service that answers 401 to refused credentials cannot be told apart, register it with verify: false`,
        },
      ];
    }
    if (answer.status === 200) {
      return [
        {
          name,
          ok: false,
          message:
            'the service accepted a made-up username and password in test: its test action does not check credentials, so a rotation could not tell a working password from a broken one',
        },
      ];
    }
    throw new TargetUnavailableError(
      `webhook test at ${this.#origin}${this.#settings.basePath}/test answered ${answer.status}${answer.reason ? ` (${answer.reason})` : ''}; it should answer 403 to made-up credentials`,
      `HTTP_${answer.status}`,
    );
  }

  async userExists(_username: string): Promise<boolean> {
    // The contract has no look-up: the service owns its users, and a set for an unknown one creates it.
    return true;
  }

  async createUser(
    username: string,
    password: string,
    _template?: UserTemplate,
    call?: CallOptions,
  ): Promise<'created' | 'updated'> {
    // The template's memberships mean nothing here: the service decides what the second username may do.
    await this.updatePassword(username, password, call);
    return 'updated';
  }

  async updatePassword(username: string, password: string, call?: CallOptions): Promise<void> {
    this.#expect('set', username, await this.#call('set', username, password, call?.signal), [200, 204]);
  }

  async deleteUser(username: string, call?: CallOptions): Promise<void> {
    this.#expect(
      'revoke',
      username,
      await this.#call('revoke', username, undefined, call?.signal),
      [200, 204, 404],
    );
  }

  async close(): Promise<void> {
    this.#closed.abort();
  }
}

export const webhookTarget: TargetDriver = {
  type: 'webhook',
  engine: 'webhook',
  defaultPort: 443,
  serviceOwnsUsers: true,
  adminRotationRefused:
    "The admin of a webhook connection is the signing key the service shares with Keyturn: rotating it needs the service's side too, which the webhook contract has no call for. Rotate it by hand (PATCH admin.password after the service took the new key)",
  validateOptions,
  async open(connection, admin, options) {
    return new WebhookSession(connection, admin, settings(connection, options.timeoutMs));
  },
};
