// Following GET /v1/events (the client's watch, and the agent): one stream, parsed as the WHATWG "Server-sent events" rules say, resumed
// with Last-Event-ID after a disconnect, reconnected with exponential backoff and full jitter. It only says which
// credential rotated; the caller then reads the secret itself (the read says what works, the event does not).
import type { IncomingMessage } from 'node:http';
import type { KeyturnConnection } from './connection.ts';

export interface EventHandlers {
  /** A rotation of this credential ended (succeeded or failed). */
  onRotation(credential: string, outcome: string): void;
  /** The stream is (re)connected: events missed while it was down have been asked for with Last-Event-ID. */
  onConnected(resumed: boolean): void;
  /** Bytes arrived (an event or a heartbeat): Keyturn is reachable. */
  onContact(): void;
  /** The stream failed or ended; it is retried after `retryInMs`. */
  onDisconnected(reason: string, retryInMs: number): void;
}

export interface Backoff {
  minMs: number;
  maxMs: number;
}

/** Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): a random delay up to the doubled cap. */
export function backoffDelay(attempt: number, backoff: Backoff, random = Math.random): number {
  const cap = Math.min(backoff.maxMs, backoff.minMs * 2 ** Math.min(attempt, 20));
  return Math.max(backoff.minMs, Math.round(random() * cap));
}

export function followEvents(
  api: KeyturnConnection,
  credentials: string[],
  handlers: EventHandlers,
  backoff: Backoff = { minMs: 500, maxMs: 30_000 },
): { close(): void } {
  let lastEventId = '';
  let closed = false;
  let attempt = 0;
  let abort = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  // One credential: let the server filter. Several: the stream shows what the token may see, filtered here.
  const query = credentials.length === 1 ? `?credential=${encodeURIComponent(credentials[0] as string)}` : '';
  const wanted = new Set(credentials);

  const once = async (): Promise<string> => {
    let res: IncomingMessage;
    try {
      res = await api.get(
        `/v1/events${query}`,
        { accept: 'text/event-stream', ...(lastEventId ? { 'last-event-id': lastEventId } : {}) },
        abort.signal,
        // Keyturn's heartbeat is 15 s by default (KEYTURN_EVENTS_HEARTBEAT_MS, at most 300 s): a stream silent for
        // longer than that is dead (a half-open connection) and is opened again.
        310_000,
      );
    } catch (err) {
      return (err as Error).message;
    }
    if (res.statusCode !== 200) {
      res.resume();
      return `GET /v1/events answered ${res.statusCode}`;
    }
    if (!/^text\/event-stream/.test(String(res.headers['content-type'] ?? ''))) {
      res.resume();
      return 'GET /v1/events did not answer an event stream: is url Keyturn?';
    }
    attempt = 0;
    handlers.onConnected(lastEventId !== '');
    res.setEncoding('utf8');
    let buffer = '';
    let data: string[] = [];
    let event = '';
    try {
      for await (const chunk of res as AsyncIterable<string>) {
        handlers.onContact();
        buffer += chunk;
        for (;;) {
          const match = /\r\n|\n|\r(?!$)/.exec(buffer);
          if (!match) break;
          const line = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          if (line === '') {
            if (data.length > 0 && event === 'rotation') dispatch(data.join('\n'));
            data = [];
            event = '';
            continue;
          }
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon === -1 ? line : line.slice(0, colon);
          const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'data') data.push(value);
          else if (field === 'event') event = value;
          else if (field === 'id' && !value.includes('\0')) lastEventId = value;
        }
      }
      return 'the event stream ended';
    } catch (err) {
      return `the event stream broke (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`;
    }
  };

  const dispatch = (data: string) => {
    let parsed: { credential?: unknown; outcome?: unknown };
    try {
      parsed = JSON.parse(data) as typeof parsed;
    } catch {
      return;
    }
    if (typeof parsed.credential === 'string' && wanted.has(parsed.credential))
      handlers.onRotation(parsed.credential, String(parsed.outcome ?? ''));
  };

  const loop = async () => {
    while (!closed) {
      const reason = await once();
      if (closed) return;
      const delay = backoffDelay(attempt, backoff);
      attempt += 1;
      handlers.onDisconnected(reason, delay);
      await new Promise<void>((resolve) => {
        timer = setTimeout(resolve, delay);
      });
      abort = new AbortController();
    }
  };
  void loop();
  return {
    close() {
      closed = true;
      if (timer) clearTimeout(timer);
      abort.abort();
    },
  };
}
