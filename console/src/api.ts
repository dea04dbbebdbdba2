// The console's only way to the server: the same API as every other client, with whatever the browser has to show
// for itself. A bearer token pasted into the page lives in sessionStorage (gone when the tab closes, never sent
// anywhere but this origin's API); without one, requests go out bare and a client certificate (mTLS) may
// authenticate them. The API decides every request: the console hides what the caller's roles cannot do only to
// keep the page honest, never as the check.

const TOKEN_KEY = 'keyturn.token';

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value: string | null): void {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer the API refused, with its `{error: {code, message}}` (the message says what to do). */
export class ApiFailure extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const t = token();
  return { ...(t ? { authorization: `Bearer ${t}` } : {}), ...extra };
}

async function failure(res: Response): Promise<ApiFailure> {
  let code = 'error';
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    code = body.error?.code ?? code;
    message = body.error?.message ?? message;
  } catch {
    // not the API's error shape (a proxy's page): the status line says enough
  }
  return new ApiFailure(res.status, code, message);
}

/** Listeners told when the API answers 401: the session's token no longer works. */
const unauthorized = new Set<() => void>();
export function onUnauthorized(fn: () => void): void {
  unauthorized.add(fn);
}

async function send(method: string, path: string, accept = 'application/json'): Promise<Response> {
  const res = await fetch(path, {
    method,
    headers: headers({ accept }),
    credentials: 'same-origin',
    cache: 'no-store',
  });
  if (res.status === 401) for (const fn of unauthorized) fn();
  if (!res.ok) throw await failure(res);
  return res;
}

export async function getJson<T>(path: string): Promise<T> {
  return (await (await send('GET', path)).json()) as T;
}

/** A POST without a body (rotate now); 2xx answers as JSON. */
export async function post<T>(path: string): Promise<{ status: number; body: T }> {
  const res = await send('POST', path);
  return { status: res.status, body: (await res.json()) as T };
}

export async function getText(path: string, accept: string): Promise<string> {
  return (await send('GET', path, accept)).text();
}

/**
 * Downloads an answer as a file: fetched with the token (a plain link could not carry it), handed to the browser as
 * a blob URL that is revoked at once. The file name is the API's (content-disposition) when it gives one.
 */
export async function download(path: string, accept: string, fallbackName: string): Promise<string> {
  const res = await send('GET', path, accept);
  const blob = await res.blob();
  const name = /filename="([^"]+)"/.exec(res.headers.get('content-disposition') ?? '')?.[1] ?? fallbackName;
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return name;
}

export interface SseMessage {
  event: string;
  data: string;
  id: string;
}

/**
 * GET /v1/events as a stream of messages. Not EventSource: it cannot send an Authorization header. The body is read
 * with fetch and parsed as the text/event-stream format says (fields, comments, blank line ends a message). Resolves
 * once the server has answered (the subscription exists from then on: nothing after it is missed), and calls
 * `onMessage` for each message until `abort` is signalled or the server ends the stream.
 */
export async function openEvents(
  query: string,
  onMessage: (message: SseMessage) => void,
  signal: AbortSignal,
): Promise<{ done: Promise<void> }> {
  const res = await fetch(`/v1/events?${query}`, {
    headers: headers({ accept: 'text/event-stream' }),
    cache: 'no-store',
    signal,
  });
  if (!res.ok || !res.body) throw await failure(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const done = (async () => {
    let buffer = '';
    let event = '';
    let data: string[] = [];
    let id = '';
    try {
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended) return;
        buffer += value;
        let nl = buffer.search(/\r\n|\r|\n/);
        while (nl >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(buffer[nl] === '\r' && buffer[nl + 1] === '\n' ? nl + 2 : nl + 1);
          nl = buffer.search(/\r\n|\r|\n/);
          if (line === '') {
            if (data.length > 0) onMessage({ event: event || 'message', data: data.join('\n'), id });
            event = '';
            data = [];
            continue;
          }
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') event = text;
          else if (field === 'data') data.push(text);
          else if (field === 'id') id = text;
        }
      }
    } catch (err) {
      if (!signal.aborted) throw err;
    }
  })();
  return { done };
}

// What the API answers (the fields the console uses).

export interface Me {
  name: string;
  roles: Array<'admin' | 'operator' | 'reader' | 'auditor'>;
  via: string;
  credentials: string[] | null;
  labels: Record<string, string> | null;
}

export interface Credential {
  id: string;
  connection: string;
  username: string;
  strategy: string;
  schedule: { every?: string; cron?: string; window?: string; jitter?: string } | null;
  store: { type: string } & Record<string, unknown>;
  maxAgeDays: number | null;
  gracePeriod: string | null;
  notifyBefore: string | null;
  labels: Record<string, string>;
  paused: boolean;
  pausedSince: string | null;
  status: string;
  version: string | null;
  activeUsername: string | null;
  rotatedAt: string | null;
  nextRotationAt: string | null;
  lastRotationId: string | null;
  lastOutcome: string | null;
  consecutiveFailures: number;
  overdue: boolean;
  createdAt: string;
  updatedAt: string;
  rotation?: { id: string; status: string; step: string } | null;
}

export interface Rotation {
  id: string;
  credentialId: string;
  trigger: string;
  actor: string;
  status: string;
  step: string;
  attempts: number;
  maxAttempts: number;
  steps: Array<{ step: string; outcome: string; attempt: number; at: string; note?: string }>;
  error?: { step: string; code?: string; message: string; at: string };
  rollback?: { outcome: string; note: string; at: string };
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
}

export interface Overview {
  asOf: string;
  days: number;
  credentials: Record<'total' | 'active' | 'rotating' | 'failed' | 'pending' | 'overdue' | 'paused', number>;
  rotationsPerDay: Array<{ day: string; succeeded: number; failed: number }>;
  nextDue: Array<{ id: string; nextRotationAt: string; status: string; overdue: boolean }>;
}

export interface Verify {
  ok: boolean;
  count: number;
  signedThrough: { n: number; seq: number; id: string; time: string } | null;
  unsigned: number;
  pending: number;
  checkpoints: number;
  firstBad?: { kind: string; id: string | null; seq: number | null; reason: string };
  durationMs: number;
}

export interface ComplianceRow {
  id: string;
  connection: string;
  targetType: string | null;
  strategy: string;
  status: string;
  labels: Record<string, string>;
  maxAgeDays: number | null;
  ageDays: number;
  lastRotatedAt: string | null;
  nextRotationAt: string | null;
  lastOutcome: string | null;
  consecutiveFailures: number;
  overdue: boolean;
  overdueSince: string | null;
  neverRotated: boolean;
  paused: boolean;
}

export interface Compliance {
  asOf: string;
  credentials: ComplianceRow[];
  totals: {
    credentials: number;
    withinPolicy: number;
    withinPolicyPercent: number | null;
    overdue: number;
    failed: number;
    neverRotated: number;
    paused: number;
  };
}

export interface AuditEvent {
  id: string;
  time: string;
  actor: string;
  action: string;
  outcome: string;
  credential?: string;
  rotation?: string;
  details?: Record<string, unknown>;
  chain: { seq: number } | null;
}

export interface Lease {
  id: string;
  username: string;
  status: string;
  createdBy: string;
  createdAt: string;
  expiresAt: string;
  renewals: number;
}
