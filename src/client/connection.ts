// A connection to Keyturn's API for the programs that run next to a service (the TypeScript client and `keyturn
// agent`): GET with a bearer token asked for at each request (a token file, such as a Kubernetes projected
// service-account token, is replaced on disk before it expires), over http or https with a CA and client certificate,
// and the secret read. Errors say what failed and what to do, never the token or the body. Imports nothing of the
// server: it runs in the service's process.
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';

/** What a secret read returns (GET /v1/credentials/:id/secret). */
export interface SecretFields {
  username: string;
  password: string;
  host: string;
  port: number;
  database: string | null;
  version: string;
  rotatedAt: string;
  /** AWS IAM credentials: the access key's id and secret (the secret is the password too). */
  accessKeyId?: string;
  secretAccessKey?: string;
}

export class KeyturnApiError extends Error {
  /** HTTP status; 0 when Keyturn could not be reached. */
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'KeyturnApiError';
    this.status = status;
    this.code = code;
  }
}

export interface SecretRead {
  secret: SecretFields;
  /** Cache-Control max-age in seconds (0 while a rotation is in flight). */
  maxAgeSeconds: number;
}

export interface KeyturnConnection {
  readonly url: string;
  bearer(): Promise<string>;
  /**
   * Opens a GET and hands back the response (status and body not read yet). `idleMs`: the socket is dropped after
   * that long without a byte (30 s; an event stream, which gets a heartbeat every 15 s by default, passes more).
   */
  get(
    path: string,
    headers?: Record<string, string>,
    signal?: AbortSignal,
    idleMs?: number,
  ): Promise<IncomingMessage>;
  readSecret(credential: string): Promise<SecretRead>;
  close(): void;
}

export interface ConnectionOptions {
  url: string;
  /** The bearer token of each request (asked for every time: a token file may be replaced). */
  bearer(): Promise<string>;
  /** Where the token comes from, for messages ("tokenFile", "jwtFile", "the token"). */
  authWhat: string;
  ca?: Buffer | string;
  cert?: Buffer | string;
  key?: Buffer | string;
  /** What a 404 should tell the user to check. */
  unknownCredentialHint?: string;
}

export function openConnection(options: ConnectionOptions): KeyturnConnection {
  const config = { url: options.url };
  const url = new URL(options.url);
  const https = url.protocol === 'https:';
  const { ca, cert, key, authWhat, bearer } = options;
  const agent = https
    ? new HttpsAgent({ keepAlive: true, ...(ca ? { ca } : {}), ...(cert && key ? { cert, key } : {}) })
    : new HttpAgent({ keepAlive: true });

  const get = async (
    path: string,
    headers: Record<string, string> = {},
    signal?: AbortSignal,
    idleMs = 30_000,
  ) => {
    const token = await bearer();
    const target = new URL(`${url.pathname.replace(/\/+$/, '')}${path}`, url);
    return new Promise<IncomingMessage>((resolve, reject) => {
      const req = (https ? httpsRequest : httpRequest)(
        target,
        {
          method: 'GET',
          agent,
          headers: { authorization: `Bearer ${token}`, accept: 'application/json', ...headers },
          ...(signal ? { signal } : {}),
          timeout: idleMs,
        },
        resolve,
      );
      req.once('timeout', () => req.destroy(new Error(`nothing received for ${idleMs / 1000}s`)));
      req.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new KeyturnApiError(
            0,
            'unreachable',
            `cannot reach Keyturn at ${config.url} (${err.code ?? err.message}): is it running, and is url right?`,
          ),
        ),
      );
      req.end();
    });
  };

  const readSecret = async (credential: string): Promise<SecretRead> => {
    const path = `/v1/credentials/${encodeURIComponent(credential)}/secret`;
    const res = await get(path);
    const body = await readBody(res, config.url);
    if (res.statusCode !== 200)
      throw replyError(
        res,
        body,
        credential,
        authWhat,
        options.unknownCredentialHint ?? 'check the credential id',
      );
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(body) as Record<string, unknown>;
    } catch {
      throw new KeyturnApiError(
        res.statusCode,
        'not_keyturn',
        `GET ${path} did not answer JSON: is url Keyturn?`,
      );
    }
    if (typeof parsed.username !== 'string' || typeof parsed.password !== 'string')
      throw new KeyturnApiError(200, 'not_keyturn', `GET ${path} answered without a username and password`);
    const maxAge = /max-age=(\d+)/.exec(String(res.headers['cache-control'] ?? ''))?.[1];
    return {
      secret: {
        username: parsed.username,
        password: parsed.password,
        host: String(parsed.host ?? ''),
        port: Number(parsed.port ?? 0),
        database: typeof parsed.database === 'string' ? parsed.database : null,
        version: String(parsed.version ?? ''),
        rotatedAt: String(parsed.rotatedAt ?? ''),
      },
      maxAgeSeconds: maxAge === undefined ? 0 : Number(maxAge),
    };
  };

  return { url: config.url, bearer, get, readSecret, close: () => agent.destroy() };
}

async function readBody(res: IncomingMessage, url: string): Promise<string> {
  res.setEncoding('utf8');
  let body = '';
  try {
    for await (const chunk of res as AsyncIterable<string>) {
      body += chunk;
      if (body.length > 1_000_000) {
        res.destroy();
        break;
      }
    }
  } catch (err) {
    throw new KeyturnApiError(0, 'unreachable', `the answer from ${url} was cut (${(err as Error).message})`);
  }
  return body;
}

/** Keyturn's own error message (which names the credential, never a secret), or what the status means here. */
function replyError(
  res: IncomingMessage,
  body: string,
  credential: string,
  authWhat: string,
  unknownHint: string,
): KeyturnApiError {
  const status = res.statusCode ?? 0;
  let code = 'error';
  let message: string | undefined;
  try {
    const error = (JSON.parse(body) as { error?: { code?: unknown; message?: unknown } }).error;
    if (typeof error?.code === 'string') code = error.code;
    if (typeof error?.message === 'string') message = error.message;
  } catch {
    // not Keyturn's JSON
  }
  const what: Record<number, string> = {
    401: `Keyturn refused ${authWhat} (401): is it the right one, and not expired?`,
    403: `${authWhat} may not read credential "${credential}" (403): bind it to the credential in Keyturn's tokens file`,
    404: `Keyturn has no credential "${credential}" (404): ${unknownHint}`,
  };
  return new KeyturnApiError(
    status,
    code,
    what[status] ??
      `reading credential "${credential}" failed with HTTP ${status}${message ? `: ${message}` : ''}`,
  );
}
