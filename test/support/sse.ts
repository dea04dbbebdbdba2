// A small server-sent events client for tests: the response body parsed as the WHATWG HTML standard says (fields,
// comments, id-only messages moving the last event id), with waits on what arrived. No reconnection of its own:
// tests reconnect explicitly, with `lastEventId`, to see exactly what a resuming client gets.
//
// node:http with a connection of its own per stream rather than fetch: after aborted streams, fetch's pool opens
// spare connections that never send a request, and a server's close waits for those until its request timeout.
import { request as httpRequest, type IncomingMessage } from 'node:http';

export interface SseMessage {
  /** The event type (`message` when the stream named none). */
  event: string;
  data: string;
  /** The last event id after this message (as EventSource's lastEventId). */
  lastEventId: string;
  /** When it arrived (performance.now()). */
  at: number;
}

export interface SseOptions {
  headers?: Record<string, string>;
  /** Sent as Last-Event-ID. */
  lastEventId?: string;
  onMessage?: (message: SseMessage) => void;
}

export class SseStream {
  readonly status: number;
  readonly headers: Headers;
  readonly messages: SseMessage[] = [];
  readonly comments: Array<{ text: string; at: number }> = [];
  /** Every byte received, as text: for "nothing secret in it" checks. */
  raw = '';
  lastEventId = '';
  retry: number | undefined;
  /** Resolves when the server ends the stream (or it is closed here, or fails). */
  readonly ended: Promise<void>;
  endedBy: 'server' | 'client' | 'error' | undefined;
  readonly #destroy: () => void;
  readonly #onMessage: ((message: SseMessage) => void) | undefined;
  readonly #waiters = new Set<() => void>();

  constructor(response: IncomingMessage, destroy: () => void, options: SseOptions) {
    this.status = response.statusCode ?? 0;
    this.headers = new Headers();
    for (const [name, value] of Object.entries(response.headers)) {
      for (const v of Array.isArray(value) ? value : value === undefined ? [] : [value]) {
        this.headers.append(name, v);
      }
    }
    this.#destroy = destroy;
    this.#onMessage = options.onMessage;
    this.ended = this.#read(response).finally(() => this.#wake());
  }

  async #read(response: IncomingMessage): Promise<void> {
    response.setEncoding('utf8');
    let buffer = '';
    let data: string[] = [];
    let event = '';
    try {
      for await (const value of response as AsyncIterable<string>) {
        this.raw += value;
        buffer += value;
        // A line ends with CRLF, LF or CR; a CR at the very end may be the first half of a CRLF.
        for (;;) {
          const match = /\r\n|\n|\r(?!$)/.exec(buffer);
          if (!match) break;
          const line = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          if (line === '') {
            // Dispatch: the id was already taken; an empty data buffer dispatches nothing.
            if (data.length > 0) {
              const message: SseMessage = {
                event: event || 'message',
                data: data.join('\n'),
                lastEventId: this.lastEventId,
                at: performance.now(),
              };
              this.messages.push(message);
              this.#onMessage?.(message);
            }
            data = [];
            event = '';
            this.#wake();
            continue;
          }
          if (line.startsWith(':')) {
            this.comments.push({ text: line.slice(1).trim(), at: performance.now() });
            this.#wake();
            continue;
          }
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? '' : line.slice(colon + 1);
          if (value.startsWith(' ')) value = value.slice(1);
          if (field === 'data') data.push(value);
          else if (field === 'event') event = value;
          else if (field === 'id' && !value.includes('\0')) this.lastEventId = value;
          else if (field === 'retry' && /^\d+$/.test(value)) this.retry = Number(value);
        }
      }
      this.endedBy ??= response.complete ? 'server' : 'error';
    } catch {
      this.endedBy ??= 'error';
    }
  }

  #wake(): void {
    for (const wake of [...this.#waiters]) wake();
  }

  /** Waits until `check` returns something truthy (re-checked as data arrives), or fails after timeoutMs. */
  async until<T>(what: string, check: () => T | undefined | null | false, timeoutMs = 10_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = check();
      if (value) return value;
      if (this.endedBy) throw new Error(`the stream ended (${this.endedBy}) while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left);
        function done() {
          clearTimeout(timer);
          waiters.delete(done);
          resolve();
        }
        const waiters = this.#waiters;
        waiters.add(done);
      });
    }
  }

  /** The messages of one event type. */
  events(type: string): SseMessage[] {
    return this.messages.filter((m) => m.event === type);
  }

  /** Waits for the n-th message (1-based) of a type. */
  nth(type: string, n: number, timeoutMs?: number): Promise<SseMessage> {
    return this.until(`${n} "${type}" event(s)`, () => this.events(type)[n - 1], timeoutMs);
  }

  async close(): Promise<void> {
    this.endedBy ??= 'client';
    this.#destroy();
    await this.ended;
  }
}

/**
 * Opens a stream. Resolves once the response headers arrived; for an error status the body is read whole
 * (`raw`), so that its JSON can be checked.
 */
export async function openSse(url: string, options: SseOptions = {}): Promise<SseStream> {
  const request = httpRequest(url, {
    // A connection of its own, closed with the stream.
    agent: false,
    headers: {
      accept: 'text/event-stream',
      ...(options.lastEventId === undefined ? {} : { 'last-event-id': options.lastEventId }),
      ...options.headers,
    },
  });
  const response = await new Promise<IncomingMessage>((resolve, reject) => {
    request.once('response', resolve);
    request.once('error', reject);
    request.end();
  });
  // After the response arrived, a destroyed connection ends the body (as `ended`), not the request.
  request.on('error', () => {});
  const stream = new SseStream(response, () => request.destroy(), options);
  if (stream.status !== 200) await stream.ended;
  return stream;
}
