// RabbitMQ users (type "rabbitmq"), through the management plugin's HTTP API, as an administrator: a password is set
// with PUT /api/users/:name (keeping the user's tags, which that PUT would otherwise clear), a clone gets the tags,
// vhost permissions and topic permissions of its user, and a login is tested over AMQP 0-9-1 (amqplib), which is how
// the services using the password log in. RabbitMQ keeps one password per user and cannot label a user: single-user
// has a window, and alternating-users tells Keyturn's clone by the registry's record.
//
// The connection's host and port are the management API's (default 15672; `tls` as for every target, verify-full
// unless said otherwise). Options: `amqpPort` (default 5672, 5671 with TLS) and `vhost` (default "/"), where
// authenticate logs in; the user must be allowed on that vhost.
import http from 'node:http';
import https from 'node:https';
import amqp from 'amqplib';
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

const KNOWN_OPTIONS = ['amqpPort', 'vhost'];
/** Bytes of an error answer kept for a message. */
const MAX_RESPONSE_BYTES = 64 * 1024;
/** Errors of a connection that was never made: the request cannot have reached the server. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

function validateOptions(options: Record<string, string | number | boolean>): string[] {
  const problems: string[] = [];
  for (const name of Object.keys(options)) {
    if (!KNOWN_OPTIONS.includes(name)) {
      problems.push(
        `"${name}" is not an option of rabbitmq connections (known: ${KNOWN_OPTIONS.join(', ')})`,
      );
    }
  }
  const { amqpPort, vhost } = options;
  if (
    amqpPort !== undefined &&
    !(typeof amqpPort === 'number' && Number.isInteger(amqpPort) && amqpPort >= 1 && amqpPort <= 65535)
  ) {
    problems.push('amqpPort must be a port number from 1 to 65535');
  }
  if (
    vhost !== undefined &&
    !(typeof vhost === 'string' && vhost.length >= 1 && vhost.length <= 255 && !/[\p{Cc}]/u.test(vhost))
  ) {
    problems.push('vhost must be a virtual host name of 1 to 255 characters, such as "/" or "payments"');
  }
  return problems;
}

interface UserRecord {
  name: string;
  tags: string[] | string;
}
interface Permission {
  vhost: string;
  configure: string;
  write: string;
  read: string;
}
interface TopicPermission {
  vhost: string;
  exchange: string;
  write: string;
  read: string;
}

const tagsOf = (user: UserRecord): string[] =>
  (Array.isArray(user.tags) ? user.tags : user.tags.split(',')).map((t) => t.trim()).filter(Boolean);

class RabbitSession implements TargetSession {
  readonly #connection: Connection;
  readonly #admin: Login;
  readonly #timeoutMs: number;
  readonly #tls: https.RequestOptions | undefined;
  readonly #closed = new AbortController();

  constructor(connection: Connection, admin: Login, timeoutMs: number) {
    this.#connection = connection;
    this.#admin = admin;
    this.#timeoutMs = timeoutMs;
    // Without a tls block the management API is reached over HTTPS with its certificate verified.
    const mode = connection.tls?.mode ?? 'verify-full';
    this.#tls =
      mode === 'disable'
        ? undefined
        : mode === 'require'
          ? { rejectUnauthorized: false }
          : { rejectUnauthorized: true, ...(connection.tls?.ca ? { ca: connection.tls.ca } : {}) };
  }

  get #where(): string {
    return `RabbitMQ at ${this.#connection.host}:${this.#connection.port}`;
  }

  get #vhost(): string {
    return (this.#connection.options?.vhost as string | undefined) ?? '/';
  }

  /**
   * One management API request as the admin. Resolves with the status and the parsed body (2xx and 404); any other
   * answer is an error classified for the engine: 401 and 403 (the admin login or its rights) and other 4xx are
   * refusals, 5xx and no answer are unavailable. `secrets`: passwords the request carries, cut from any message.
   */
  async #request(
    action: string,
    method: 'GET' | 'PUT' | 'DELETE',
    path: string,
    body: unknown,
    secrets: string[],
    call: CallOptions | undefined,
  ): Promise<{ status: number; json: unknown }> {
    const signals = [this.#closed.signal, AbortSignal.timeout(this.#timeoutMs)];
    if (call?.signal) signals.push(call.signal);
    const signal = AbortSignal.any(signals);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const module = this.#tls ? https : http;
    const scrub = (text: string) => scrubText(text, [...secrets, this.#admin.password]);
    let answer: { status: number; text: string };
    try {
      answer = await new Promise((resolve, reject) => {
        const req = module.request(
          {
            method,
            hostname: this.#connection.host,
            port: this.#connection.port,
            path,
            headers: {
              authorization: `Basic ${Buffer.from(`${this.#admin.username}:${this.#admin.password}`).toString('base64')}`,
              accept: 'application/json',
              ...(payload === undefined
                ? {}
                : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }),
            },
            agent: false,
            signal,
            ...(this.#tls ?? {}),
          },
          (res) => {
            const chunks: Buffer[] = [];
            let size = 0;
            res.on('data', (chunk: Buffer) => {
              if (size < MAX_RESPONSE_BYTES) chunks.push(chunk);
              size += chunk.length;
            });
            res.on('end', () =>
              resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }),
            );
            res.on('error', reject);
          },
        );
        req.on('error', reject);
        req.end(payload);
      });
    } catch (err) {
      const code = (err as { code?: string }).code;
      const cancelled = signal.aborted;
      const error = new TargetUnavailableError(
        `${action}: ${this.#where} ${cancelled ? `did not answer within ${this.#timeoutMs} ms or the call was cancelled` : `could not be reached (${scrub((err as Error).message)})`}; check that the management plugin runs there (rabbitmq-plugins enable rabbitmq_management)`,
        code ?? (cancelled ? 'ETIMEDOUT' : undefined),
      );
      // A connection that was never made sent nothing.
      throw !cancelled && code && NOT_CONNECTED.has(code) ? nothingSent(error) : error;
    }
    // 404 answers a look-up (no such user) or a delete (already gone); on a PUT it is a refusal (no such vhost).
    if ((answer.status >= 200 && answer.status < 300) || (answer.status === 404 && method !== 'PUT')) {
      let json: unknown = null;
      try {
        json = answer.text ? JSON.parse(answer.text) : null;
      } catch {
        // an empty or non-JSON success: nothing to read
      }
      return { status: answer.status, json };
    }
    // The status's standard phrase, never the body: a connection points wherever an operator says, and an error that
    // quoted the answer would read that place back to them (issue 17 §2). The body only decides which advice to give.
    const reason = `: ${http.STATUS_CODES[answer.status] ?? 'unknown status'}`;
    if (answer.status === 401) {
      // The admin login, or its rights, were refused before anything was applied. RabbitMQ answers 401 to both: a
      // wrong password, and a user without the administrator tag ("Not administrator user").
      const notAdmin = /administrator/i.test(answer.text.slice(0, 4096));
      throw nothingSent(
        new TargetRefusedError(
          notAdmin
            ? `${action}: ${this.#where} refused the admin "${this.#admin.username}" (401${reason}); it needs the administrator tag`
            : `${action}: ${this.#where} refused the admin login "${this.#admin.username}" (401${reason}); check the connection's admin secret`,
          'HTTP_401',
        ),
      );
    }
    if (answer.status >= 500) {
      throw new TargetUnavailableError(
        `${action}: ${this.#where} answered ${answer.status}${reason}`,
        `HTTP_${answer.status}`,
      );
    }
    throw new TargetRefusedError(
      `${action}: ${this.#where} answered ${answer.status}${reason}${answer.status === 403 ? `; the admin "${this.#admin.username}" needs the administrator tag` : ''}`,
      `HTTP_${answer.status}`,
    );
  }

  #user(name: string): string {
    return `/api/users/${encodeURIComponent(name)}`;
  }

  async #find(name: string, call: CallOptions | undefined): Promise<UserRecord | null> {
    const { status, json } = await this.#request(
      `looking up user "${name}"`,
      'GET',
      this.#user(name),
      undefined,
      [],
      call,
    );
    return status === 404 ? null : (json as UserRecord);
  }

  async authenticate(login: Login, call?: CallOptions): Promise<AuthOutcome> {
    const options = this.#connection.options ?? {};
    const port = (options.amqpPort as number | undefined) ?? (this.#tls ? 5671 : 5672);
    let connection: Awaited<ReturnType<typeof amqp.connect>> | undefined;
    const cut = () => connection?.close().catch(() => {});
    call?.signal?.addEventListener('abort', cut, { once: true });
    try {
      connection = await amqp.connect(
        {
          protocol: this.#tls ? 'amqps' : 'amqp',
          hostname: this.#connection.host,
          port,
          username: login.username,
          password: login.password,
          vhost: this.#vhost,
          heartbeat: 0,
        },
        {
          timeout: this.#timeoutMs,
          ...(this.#tls
            ? {
                rejectUnauthorized: this.#tls.rejectUnauthorized,
                ...(this.#tls.ca ? { ca: this.#tls.ca } : {}),
                servername: this.#connection.host,
              }
            : {}),
        },
      );
      return { ok: true };
    } catch (err) {
      const message = scrubText((err as Error).message ?? String(err), [
        login.password,
        this.#admin.password,
      ]);
      if (/ACCESS_REFUSED|403/.test(message)) {
        return {
          ok: false,
          reason: 'rejected',
          message: `RabbitMQ refused the AMQP login of "${login.username}"`,
        };
      }
      if (/NOT_ALLOWED|530/.test(message)) {
        throw new TargetRefusedError(
          `the AMQP login of "${login.username}" worked but vhost "${this.#vhost}" is not allowed to it; set the connection's options.vhost to one the user may use`,
          'NOT_ALLOWED',
        );
      }
      throw new TargetUnavailableError(
        `logging in as "${login.username}" over AMQP at ${this.#connection.host}:${port} failed: ${message}`,
        (err as { code?: string }).code,
      );
    } finally {
      call?.signal?.removeEventListener('abort', cut);
      await connection?.close().catch(() => {});
    }
  }

  async checkAdmin(call?: CallOptions): Promise<Check[]> {
    const admin = this.#admin.username;
    const { json } = await this.#request(
      `checking the tags of admin "${admin}"`,
      'GET',
      '/api/whoami',
      undefined,
      [],
      call,
    );
    const ok = tagsOf((json as UserRecord | null) ?? { name: admin, tags: [] }).includes('administrator');
    return [
      {
        name: 'administrator tag',
        ok,
        message: ok
          ? `"${admin}" is an administrator`
          : `"${admin}" lacks the administrator tag, which managing users through the management API needs: rabbitmqctl set_user_tags ${admin} administrator`,
      },
    ];
  }

  async userExists(username: string, call?: CallOptions): Promise<boolean> {
    return (await this.#find(username, call)) !== null;
  }

  async updatePassword(username: string, password: string, call?: CallOptions): Promise<void> {
    const user = await this.#find(username, call);
    if (!user) throw new TargetRefusedError(`RabbitMQ has no user "${username}"`, 'user-missing');
    // PUT replaces the user: its tags are sent back as they are, or they would be cleared.
    await this.#request(
      `setting the password of user "${username}"`,
      'PUT',
      this.#user(username),
      { password, tags: tagsOf(user).join(',') },
      [password],
      call,
    );
  }

  async createUser(
    username: string,
    password: string,
    template: UserTemplate,
    call?: CallOptions,
  ): Promise<'created' | 'updated'> {
    const existing = await this.#find(username, call);
    if (existing && template.exclusive) {
      throw new TargetRefusedError(
        `RabbitMQ already has a user "${username}" that Keyturn did not make; it is left as it is`,
        'user-exists',
      );
    }
    const like = await this.#find(template.like, call);
    if (!like)
      throw new TargetRefusedError(`RabbitMQ has no user "${template.like}" to copy`, 'user-missing');
    const [permissions, topics] = await Promise.all([
      this.#permissionsOf(template.like, call),
      this.#topicPermissionsOf(template.like, call),
    ]);
    await this.#request(
      `${existing ? 'updating' : 'creating'} user "${username}" like "${template.like}"`,
      'PUT',
      this.#user(username),
      { password, tags: tagsOf(like).join(',') },
      [password],
      call,
    );
    for (const p of permissions) {
      await this.#request(
        `granting user "${username}" the permissions of "${template.like}" on vhost "${p.vhost}"`,
        'PUT',
        `/api/permissions/${encodeURIComponent(p.vhost)}/${encodeURIComponent(username)}`,
        { configure: p.configure, write: p.write, read: p.read },
        [],
        call,
      );
    }
    for (const t of topics) {
      await this.#request(
        `granting user "${username}" the topic permissions of "${template.like}" on vhost "${t.vhost}"`,
        'PUT',
        `/api/topic-permissions/${encodeURIComponent(t.vhost)}/${encodeURIComponent(username)}`,
        { exchange: t.exchange, write: t.write, read: t.read },
        [],
        call,
      );
    }
    return existing ? 'updated' : 'created';
  }

  async #permissionsOf(username: string, call: CallOptions | undefined): Promise<Permission[]> {
    const { json } = await this.#request(
      `reading the permissions of user "${username}"`,
      'GET',
      `${this.#user(username)}/permissions`,
      undefined,
      [],
      call,
    );
    return (json as Permission[] | null) ?? [];
  }

  async #topicPermissionsOf(username: string, call: CallOptions | undefined): Promise<TopicPermission[]> {
    const { json } = await this.#request(
      `reading the topic permissions of user "${username}"`,
      'GET',
      `${this.#user(username)}/topic-permissions`,
      undefined,
      [],
      call,
    );
    return (json as TopicPermission[] | null) ?? [];
  }

  async deleteUser(username: string, call?: CallOptions): Promise<void> {
    // 404: already gone.
    await this.#request(`deleting user "${username}"`, 'DELETE', this.#user(username), undefined, [], call);
  }

  async accessOf(username: string, call?: CallOptions): Promise<string[] | null> {
    const user = await this.#find(username, call);
    if (!user) return null;
    const [permissions, topics] = await Promise.all([
      this.#permissionsOf(username, call),
      this.#topicPermissionsOf(username, call),
    ]);
    return [
      ...tagsOf(user).map((t) => `tag ${t}`),
      ...permissions.map((p) => `vhost ${p.vhost}: configure ${p.configure} write ${p.write} read ${p.read}`),
      ...topics.map((t) => `vhost ${t.vhost} exchange ${t.exchange}: write ${t.write} read ${t.read}`),
    ].sort();
  }

  async close(): Promise<void> {
    this.#closed.abort();
  }
}

export const rabbitmqTarget: TargetDriver = {
  type: 'rabbitmq',
  engine: 'rabbitmq',
  defaultPort: 15672,
  validateOptions,
  async open(connection, admin, options) {
    return new RabbitSession(connection, admin, options.timeoutMs);
  },
};
