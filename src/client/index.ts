// The TypeScript client of Keyturn (`import { KeyturnClient } from 'keyturn/client'`, SPEC "Client"): what a service
// needs to use a rotated credential. It reads the secret (GET /v1/credentials/:id/secret), which returns a version
// that works downstream (I1), honours its Cache-Control hint, and follows rotations on GET /v1/events with the same
// rules as `keyturn agent`: resume with Last-Event-ID, reconnect with backoff and jitter, read again at the hint's
// max-age as a safety net and every second while a rotation is in flight. It runs in the service's process and
// imports nothing of the server.
import { KeyturnApiError, type KeyturnConnection, openConnection, type SecretFields } from './connection.ts';
import { followEvents } from './events.ts';

export { createMysqlPool, createPgPool, followRedisAuth, type RotatingPool } from './pools.ts';
export { KeyturnApiError, type SecretFields };

export interface KeyturnClientOptions {
  /** Keyturn's base URL, such as https://keyturn.keyturn.svc:8080. */
  url: string;
  /** A bearer token (a static token, a JWT), or a function that gives the current one (a token file re-read). */
  token: string | (() => string | Promise<string>);
  /** PEM of the CA that signs Keyturn's certificate, and a client certificate for mTLS. */
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
}

/** A lease's user (POST /v1/credentials/:id/leases): its own login, gone at `expiresAt` unless renewed. */
export interface Lease {
  id: string;
  username: string;
  password: string;
  host?: string;
  port?: number;
  database?: string;
  expiresAt: string;
  maxExpiresAt: string;
}

export interface LeaseHandle {
  readonly lease: Lease;
  /** Stops renewing and revokes the lease's user now. */
  revoke(): Promise<void>;
  /** Stops renewing (the lease expires at its time). */
  close(): void;
}

const IN_FLIGHT_REREAD_MS = 1000;

export class KeyturnClient {
  readonly #connection: KeyturnConnection;
  readonly #token: () => Promise<string>;
  readonly #url: string;
  /** Per credential: the last read and until when it may be served (its max-age). */
  readonly #cache = new Map<string, { secret: SecretFields; until: number }>();
  /** Reads under way, shared by concurrent callers of one credential. */
  readonly #reading = new Map<string, Promise<{ secret: SecretFields; maxAgeSeconds: number }>>();

  constructor(options: KeyturnClientOptions) {
    const token = options.token;
    this.#token = async () => (typeof token === 'function' ? await token() : token);
    this.#url = options.url.replace(/\/+$/, '');
    this.#connection = openConnection({
      url: options.url,
      bearer: this.#token,
      authWhat: 'the client token',
      unknownCredentialHint: 'check the credential id passed to the client',
      ...(options.ca ? { ca: options.ca } : {}),
      ...(options.cert ? { cert: options.cert } : {}),
      ...(options.key ? { key: options.key } : {}),
    });
  }

  /**
   * The working secret of a credential. Served from memory while its Cache-Control max-age lasts (0 while a rotation
   * is in flight: then read every time); concurrent calls for one credential share one request. `fresh` skips the
   * cache (a login was just refused).
   */
  async getSecret(id: string, options: { fresh?: boolean } = {}): Promise<SecretFields> {
    const cached = this.#cache.get(id);
    if (!options.fresh && cached && cached.until > Date.now()) return cached.secret;
    return (await this.#read(id)).secret;
  }

  async #read(id: string): Promise<{ secret: SecretFields; maxAgeSeconds: number }> {
    const pending = this.#reading.get(id);
    if (pending) return pending;
    const read = this.#connection
      .readSecret(id)
      .then((r) => {
        this.#cache.set(id, { secret: r.secret, until: Date.now() + r.maxAgeSeconds * 1000 });
        return r;
      })
      .finally(() => this.#reading.delete(id));
    this.#reading.set(id, read);
    return read;
  }

  /**
   * Calls `onChange` with the credential's secret now and after each change of version: on each rotation event, at
   * the read's max-age, and every second while a rotation is in flight. Only what the secret read returns is passed
   * on, so never a version that does not work. `onError` hears of failed reads (retried); `close()` stops.
   */
  watch(
    id: string,
    onChange: (secret: SecretFields) => void | Promise<void>,
    onError: (err: Error) => void = () => {},
  ): { close(): void } {
    let closed = false;
    let version = '';
    let timer: NodeJS.Timeout | undefined;
    let again = false;
    let busy = false;
    const check = async (): Promise<void> => {
      if (closed) return;
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      if (timer) clearTimeout(timer);
      let nextMs = 5000;
      try {
        const r = await this.#read(id);
        nextMs = r.maxAgeSeconds === 0 ? IN_FLIGHT_REREAD_MS : r.maxAgeSeconds * 1000;
        if (r.secret.version !== version) {
          version = r.secret.version;
          await onChange(r.secret);
        }
      } catch (err) {
        onError(err as Error);
      } finally {
        busy = false;
        if (!closed) timer = setTimeout(() => void check(), nextMs);
        if (again) {
          again = false;
          void check();
        }
      }
    };
    const events = followEvents(this.#connection, [id], {
      onRotation: () => void check(),
      onConnected: (resumed) => {
        if (resumed) void check();
      },
      onContact: () => {},
      onDisconnected: () => {},
    });
    void check();
    return {
      close: () => {
        closed = true;
        if (timer) clearTimeout(timer);
        events.close();
      },
    };
  }

  /**
   * A short-lived user of the credential (its own login), renewed before it expires until `close()` or `revoke()`.
   * `onRenewFailed` hears when a renewal fails (the lease may then expire at `expiresAt`): open a new one.
   */
  async lease(
    id: string,
    options: { ttl?: string; onRenewFailed?: (err: Error) => void } = {},
  ): Promise<LeaseHandle> {
    const body = options.ttl ? { ttl: options.ttl } : {};
    const created = (await this.#request(
      'POST',
      `/v1/credentials/${encodeURIComponent(id)}/leases`,
      body,
    )) as Lease;
    let current: Lease = created;
    let timer: NodeJS.Timeout | undefined;
    let closed = false;
    const schedule = () => {
      if (closed) return;
      // At two thirds of what is left: a failed renewal leaves a third of the lease to react.
      const left = Date.parse(current.expiresAt) - Date.now();
      timer = setTimeout(() => void renew(), Math.max(1000, Math.floor((left * 2) / 3)));
      timer.unref();
    };
    const renew = async () => {
      if (closed) return;
      if (Date.parse(current.expiresAt) >= Date.parse(current.maxExpiresAt)) return; // cannot be renewed further
      try {
        const renewed = (await this.#request('POST', `/v1/leases/${current.id}/renew`, body)) as Lease;
        current = { ...current, expiresAt: renewed.expiresAt, maxExpiresAt: renewed.maxExpiresAt };
        schedule();
      } catch (err) {
        options.onRenewFailed?.(err as Error);
      }
    };
    schedule();
    return {
      get lease() {
        return current;
      },
      revoke: async () => {
        closed = true;
        if (timer) clearTimeout(timer);
        await this.#request('DELETE', `/v1/leases/${current.id}`);
      },
      close: () => {
        closed = true;
        if (timer) clearTimeout(timer);
      },
    };
  }

  /** A JSON call; errors carry Keyturn's message (which names ids, never a secret), never the token. */
  async #request(method: string, path: string, body?: unknown): Promise<unknown> {
    let res: Response;
    try {
      res = await fetch(`${this.#url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${await this.#token()}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
    } catch (err) {
      throw new KeyturnApiError(
        0,
        'unreachable',
        `cannot reach Keyturn at ${this.#url} (${(err as Error).message}): is it running, and is url right?`,
      );
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : {};
    } catch {
      throw new KeyturnApiError(
        res.status,
        'not_keyturn',
        `${method} ${path} did not answer JSON: is url Keyturn?`,
      );
    }
    if (!res.ok) {
      const error = (parsed as { error?: { code?: string; message?: string } }).error;
      throw new KeyturnApiError(
        res.status,
        error?.code ?? 'error',
        `${method} ${path} failed with HTTP ${res.status}${error?.message ? `: ${error.message}` : ''}`,
      );
    }
    return parsed;
  }

  /** Closes the client's connections (watches and leases should be closed first). */
  close(): void {
    this.#connection.close();
  }
}
