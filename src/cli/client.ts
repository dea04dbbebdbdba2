// A small client of Keyturn's HTTP API for the CLI. Errors carry the API's own message, which says what failed
// and what to do.
export class ApiClientError extends Error {
  readonly status: number;
  readonly code: string;
  /** "METHOD /path" of the request, when the API answered it: errors name the route (issue 18). */
  readonly route: string | undefined;
  constructor(status: number, code: string, message: string, route?: string) {
    super(message);
    this.name = 'ApiClientError';
    this.status = status;
    this.code = code;
    this.route = route;
  }
}

export class KeyturnClient {
  readonly #url: string;
  readonly #token: string;

  constructor(url: string, token: string) {
    this.#url = url.replace(/\/+$/, '');
    this.#token = token;
  }

  /**
   * A GET whose body the caller reads as a stream (exports); errors as request() reports them. `expected` is the
   * content type Keyturn answers with: a 2xx of another type (a proxy's login page, say) is refused, not streamed.
   */
  async stream(path: string, expected: { type: RegExp; what: string }): Promise<Response> {
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
    if (!res.ok) throw this.#replyError('GET', path, res, await res.text());
    if (!expected.type.test(res.headers.get('content-type') ?? '')) {
      await res.body?.cancel().catch(() => {});
      throw new ApiClientError(
        res.status,
        'not_keyturn',
        `GET ${this.#url}${path} answered ${res.status} with ${describeBody(res, undefined)}, not ${expected.what}: check KEYTURN_URL (or --url) and any proxy in between`,
      );
    }
    return res;
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    return (await this.exchange<T>(method, path, body)).body;
  }

  /**
   * GET of one object with its ETag (the version a later write names in If-Match), or null when it does not exist:
   * `keyturn apply` plans from these.
   */
  async find<T>(path: string): Promise<{ body: T; etag: string | undefined } | null> {
    try {
      const { body, etag } = await this.exchange<T>('GET', path);
      return { body, etag };
    } catch (err) {
      if (err instanceof ApiClientError && err.status === 404 && err.code === 'not_found') return null;
      throw err;
    }
  }

  /** A request with extra headers (If-Match), answering the status and ETag with the body. */
  async exchange<T>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<{ status: number; body: T; etag: string | undefined }> {
    let res: Response;
    try {
      res = await fetch(`${this.#url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.#token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...headers,
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
    // The status first: an error page from a proxy or a server that is not Keyturn is not JSON (finding 12, issue 11).
    if (!res.ok) throw this.#replyError(method, path, res, text);
    const etag = res.headers.get('etag') ?? undefined;
    if (!text) return { status: res.status, body: undefined as T, etag };
    const parsed = parseJson(text);
    if (parsed === undefined || !isJson(res)) {
      throw new ApiClientError(
        res.status,
        'not_keyturn',
        `${method} ${this.#url}${path} answered ${res.status} with ${describeBody(res, text)}, not Keyturn's JSON: check KEYTURN_URL (or --url) and any proxy in between`,
      );
    }
    return { status: res.status, body: parsed as T, etag };
  }

  /** The error of a non-2xx answer: Keyturn's own message when it is Keyturn's JSON error, else what came back. */
  #replyError(method: string, path: string, res: Response, text: string): ApiClientError {
    const error = (parseJson(text) as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    if (typeof error?.message === 'string') {
      return new ApiClientError(
        res.status,
        typeof error.code === 'string' ? error.code : 'error',
        error.message,
        `${method} ${path.split('?')[0]}`,
      );
    }
    return new ApiClientError(
      res.status,
      'not_keyturn',
      `${method} ${this.#url}${path} answered ${res.status} ${res.statusText || ''} with ${describeBody(res, text)}, not an answer from Keyturn: check KEYTURN_URL (or --url), and any proxy in between`.replace(
        /\s+with/,
        ' with',
      ),
    );
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function isJson(res: Response): boolean {
  return /\bjson\b/i.test(res.headers.get('content-type') ?? '');
}

/**
 * What a body was, in a few safe words: its type and length, never its text (it could hold anything). Without the
 * text (a stream not read), its type alone.
 */
function describeBody(res: Response, text: string | undefined): string {
  const type = (res.headers.get('content-type') ?? 'no content type').split(';')[0]?.trim();
  if (text === undefined) return `a ${type} body`;
  return text ? `a ${type} body of ${text.length} bytes` : 'an empty body';
}
