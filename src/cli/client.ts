// A small client of Keyturn's HTTP API for the CLI. Errors carry the API's own message, which says what failed
// and what to do.
export class ApiClientError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'ApiClientError';
    this.status = status;
    this.code = code;
  }
}

export class KeyturnClient {
  readonly #url: string;
  readonly #token: string;

  constructor(url: string, token: string) {
    this.#url = url.replace(/\/+$/, '');
    this.#token = token;
  }

  /** A GET whose body the caller reads as a stream (exports); errors as request() reports them. */
  async stream(path: string): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(`${this.#url}${path}`, { headers: { authorization: `Bearer ${this.#token}` } });
    } catch (err) {
      throw new ApiClientError(
        0,
        'unreachable',
        `Cannot reach Keyturn at ${this.#url} (${(err as Error).message}): is it running? Set KEYTURN_URL or --url`,
      );
    }
    if (!res.ok) {
      const text = await res.text();
      let error: { code?: string; message?: string } | undefined;
      try {
        error = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
      } catch {
        error = undefined;
      }
      throw new ApiClientError(res.status, error?.code ?? 'error', error?.message ?? `HTTP ${res.status}`);
    }
    return res;
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.#url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.#token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(30_000),
      });
    } catch (err) {
      throw new ApiClientError(
        0,
        'unreachable',
        `Cannot reach Keyturn at ${this.#url} (${(err as Error).message}): is it running? Set KEYTURN_URL or --url`,
      );
    }
    const text = await res.text();
    const parsed = text ? (JSON.parse(text) as unknown) : undefined;
    if (!res.ok) {
      const error = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
      throw new ApiClientError(res.status, error?.code ?? 'error', error?.message ?? `HTTP ${res.status}`);
    }
    return parsed as T;
  }
}
