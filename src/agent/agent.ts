// `keyturn agent`: renders files from credentials' secrets and reloads the service that reads them (SPEC, "Agent").
//
// At start every credential is read once: an unknown credential (404) or a refused token ends the agent with one
// line, so that a typo fails the deployment instead of leaving an empty file. Then, per credential:
//   - a rotation event on GET /v1/events (resumed with Last-Event-ID, reconnected with backoff and jitter) asks for
//     a read at once;
//   - a timer reads again at the secret's Cache-Control max-age (the safety net when events are lost), and after
//     one second while a rotation is in flight (max-age=0);
//   - a read that fails is retried with backoff; the file keeps what it had, which still works (alternating users).
// The agent writes what the secret read returns, which is always a version that works downstream (I1). A file is
// written only when its content changes, atomically; then the template's command runs or its signal is sent.
// Nothing secret is logged: credential ids, versions, paths and outcomes only (not even the username).
import { utimes, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { Logger } from 'pino';
import { backoffDelay, followEvents } from '../client/events.ts';
import { AgentApiError, connect, type KeyturnConnection, type SecretRead } from './api.ts';
import type { AgentConfig, AgentTemplate } from './config.ts';
import { writeIfChanged } from './files.ts';
import { reload } from './reload.ts';
import { render } from './render.ts';

/** A problem at start that no retry will fix: the CLI prints its message and exits non-zero. */
export class AgentStartError extends Error {
  override name = 'AgentStartError';
}

interface TemplateState {
  template: AgentTemplate;
  version?: string;
  renderedAt?: string;
  error?: string;
  /** The file changed and its reload has not succeeded yet: tried again at the next read. */
  reloadPending?: boolean;
}

interface CredentialState {
  id: string;
  templates: TemplateState[];
  version?: string;
  /** A read is running; `again` asks for one more after it. */
  reading: boolean;
  again: boolean;
  timer?: NodeJS.Timeout;
  failures: number;
  /** The password last read, to be dropped from the scrubber's set when it is replaced. */
  password?: string;
  /** The last read's Cache-Control max-age (seconds). */
  maxAge?: number;
}

export interface AgentOptions {
  /** Render once and return (init containers). */
  once?: boolean;
  /** Poll and retry limits (tests shorten them). */
  minPollMs?: number;
  maxPollMs?: number;
  retry?: { minMs: number; maxMs: number };
  /**
   * The log scrubber's set (crypto/secret-scope.ts): the agent keeps its token and the passwords it holds now in
   * it, and drops a password once it is replaced, so the set stays small however long the agent runs.
   */
  secrets?: Set<string>;
}

export class KeyturnAgent {
  readonly #config: AgentConfig;
  readonly #log: Logger;
  readonly #options: Required<Omit<AgentOptions, 'once' | 'secrets'>> & { once: boolean };
  readonly #secrets: Set<string>;
  readonly #credentials = new Map<string, CredentialState>();
  #api: KeyturnConnection | undefined;
  #events: { close(): void } | undefined;
  #health: Server | undefined;
  #stopped = false;
  #lastContact = 0;

  constructor(config: AgentConfig, logger: Logger, options: AgentOptions = {}) {
    this.#config = config;
    this.#log = logger;
    this.#secrets = options.secrets ?? new Set();
    this.#options = {
      once: options.once ?? false,
      minPollMs: options.minPollMs ?? 1000,
      maxPollMs: options.maxPollMs ?? 3_600_000,
      retry: options.retry ?? { minMs: 1000, maxMs: 30_000 },
    };
    for (const template of config.templates) {
      let state = this.#credentials.get(template.credential);
      if (!state) {
        state = { id: template.credential, templates: [], reading: false, again: false, failures: 0 };
        this.#credentials.set(template.credential, state);
      }
      state.templates.push({ template });
    }
  }

  /**
   * Reads every credential and renders every template once. Throws AgentStartError for what will not fix itself
   * (unknown credential, refused token, unreadable token file). Keyturn unreachable is retried `attempts` times.
   */
  async start(attempts = Number.POSITIVE_INFINITY): Promise<{ failed: number }> {
    try {
      this.#api = await connect(this.#config, (token) => this.#secrets.add(token));
      await this.#api.bearer();
    } catch (err) {
      throw new AgentStartError((err as Error).message);
    }
    if (this.#config.healthPort !== undefined && !this.#options.once) await this.#listenHealth();
    let failed = 0;
    for (const state of this.#credentials.values()) {
      let read: SecretRead | undefined;
      for (let attempt = 0; !read && !this.#stopped; attempt += 1) {
        try {
          read = await this.#api.readSecret(state.id);
        } catch (err) {
          if (!(err instanceof AgentApiError) || fatalAtStart(err))
            throw new AgentStartError((err as Error).message);
          if (attempt + 1 >= attempts) {
            this.#log.error({ credential: state.id, reason: err.message }, 'agent: cannot read the secret');
            failed += state.templates.length;
            break;
          }
          const delay = backoffDelay(attempt, this.#options.retry);
          this.#log.warn(
            { credential: state.id, reason: err.message, retryInMs: delay },
            'agent: cannot read the secret yet; retrying',
          );
          await sleep(delay);
        }
      }
      if (read) failed += await this.#apply(state, read);
    }
    return { failed };
  }

  /** Follows rotations until stop(). start() first. */
  follow(): void {
    const api = this.#api;
    if (!api) throw new Error('start() first');
    for (const state of this.#credentials.values()) {
      const unwritten = state.version === undefined || state.templates.some((t) => t.error !== undefined);
      this.#schedule(state, unwritten ? this.#options.retry.minMs : this.#nextPollMs(state));
    }
    this.#events = followEvents(
      api,
      [...this.#credentials.keys()],
      {
        onRotation: (credential, outcome) => {
          this.#log.info({ credential, outcome }, 'agent: rotation event');
          const state = this.#credentials.get(credential);
          if (state) void this.#refresh(state);
        },
        onConnected: (resumed) => {
          this.#log.info({ resumed }, 'agent: following rotation events');
          // Whatever the resume brings, read everything once: a Keyturn that lost its stream still has the secrets.
          if (resumed) for (const state of this.#credentials.values()) void this.#refresh(state);
        },
        onContact: () => {
          this.#contact();
        },
        onDisconnected: (reason, retryInMs) => {
          if (!this.#stopped) this.#log.warn({ reason, retryInMs }, 'agent: event stream lost; reconnecting');
        },
      },
      this.#options.retry,
    );
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#events?.close();
    for (const state of this.#credentials.values()) if (state.timer) clearTimeout(state.timer);
    this.#api?.close();
    await new Promise<void>((resolve) => (this.#health ? this.#health.close(() => resolve()) : resolve()));
    this.#health?.closeAllConnections();
  }

  /** The health endpoint's answer: ready once every template has been rendered, with each one's state. */
  status(): { ok: boolean; lastContactAt: string | null; templates: object[] } {
    const templates = [...this.#credentials.values()].flatMap((c) =>
      c.templates.map((t) => ({
        credential: c.id,
        destination: t.template.destination,
        version: t.version ?? null,
        renderedAt: t.renderedAt ?? null,
        ...(t.error ? { error: t.error } : {}),
      })),
    );
    return {
      ok: templates.every((t) => t.renderedAt !== null),
      lastContactAt: this.#lastContact ? new Date(this.#lastContact).toISOString() : null,
      templates,
    };
  }

  /** Reads a credential and renders its templates; one read at a time per credential. */
  async #refresh(state: CredentialState): Promise<void> {
    if (this.#stopped) return;
    if (state.reading) {
      state.again = true;
      return;
    }
    state.reading = true;
    if (state.timer) clearTimeout(state.timer);
    let next: number;
    try {
      const read = await this.#api!.readSecret(state.id);
      const failed = await this.#apply(state, read);
      if (failed > 0) {
        // A file that could not be written (a full disk, a missing directory): soon again, not at max-age.
        next = backoffDelay(state.failures, this.#options.retry);
        state.failures += 1;
      } else {
        state.failures = 0;
        next =
          read.maxAgeSeconds === 0 ? this.#options.minPollMs : this.#nextPollMs(state, read.maxAgeSeconds);
      }
    } catch (err) {
      next = backoffDelay(state.failures, this.#options.retry);
      state.failures += 1;
      this.#log.warn(
        { credential: state.id, reason: (err as Error).message, retryInMs: next },
        'agent: reading the secret failed; the files keep what they have',
      );
    } finally {
      state.reading = false;
    }
    if (this.#stopped) return;
    if (state.again) {
      state.again = false;
      void this.#refresh(state);
      return;
    }
    this.#schedule(state, next);
  }

  #nextPollMs(state: CredentialState, maxAgeSeconds?: number): number {
    const seconds = maxAgeSeconds ?? state.maxAge ?? 60;
    return Math.min(this.#options.maxPollMs, Math.max(this.#options.minPollMs, seconds * 1000));
  }

  #schedule(state: CredentialState, ms: number): void {
    if (state.timer) clearTimeout(state.timer);
    state.timer = setTimeout(() => void this.#refresh(state), ms);
    state.timer.unref?.();
  }

  /** Renders the credential's templates from a read; returns how many failed. */
  async #apply(state: CredentialState, read: SecretRead): Promise<number> {
    this.#contact();
    state.maxAge = read.maxAgeSeconds;
    const { secret } = read;
    if (state.password !== secret.password) {
      if (state.password !== undefined) this.#secrets.delete(state.password);
      this.#secrets.add(secret.password);
      state.password = secret.password;
    }
    const changedVersion = state.version !== secret.version;
    state.version = secret.version;
    let failed = 0;
    for (const t of state.templates) {
      const { template } = t;
      const where = { credential: state.id, destination: template.destination, version: secret.version };
      let outcome: 'written' | 'unchanged';
      try {
        outcome = await writeIfChanged(
          template.destination,
          render(template.template, secret),
          template.mode,
        );
      } catch (err) {
        failed += 1;
        t.error = `cannot write ${template.destination} (${(err as NodeJS.ErrnoException).code ?? 'error'})`;
        this.#log.error({ ...where, reason: t.error }, 'agent: rendering failed');
        continue;
      }
      t.version = secret.version;
      t.renderedAt = new Date().toISOString();
      delete t.error;
      if (outcome === 'written') {
        this.#log.info({ ...where, mode: template.mode.toString(8).padStart(4, '0') }, 'agent: file written');
        t.reloadPending = true;
      } else if (changedVersion) {
        this.#log.info(where, 'agent: file already up to date');
      }
      if (this.#options.once || !t.reloadPending) continue;
      const result = await reload(template);
      t.reloadPending = !result.ok;
      if (result.action === 'none') continue;
      const line = { ...where, action: result.action, detail: result.detail, durationMs: result.durationMs };
      if (result.ok) this.#log.info(line, 'agent: reload done');
      else this.#log.warn(line, 'agent: reload failed; tried again at the next read');
    }
    if (failed === 0) await this.#touchHealthFile();
    return failed;
  }

  #contact(): void {
    this.#lastContact = Date.now();
  }

  async #touchHealthFile(): Promise<void> {
    const path = this.#config.healthFile;
    if (!path) return;
    const now = new Date();
    try {
      await utimes(path, now, now);
    } catch {
      await writeFile(path, `${now.toISOString()}\n`).catch((err: NodeJS.ErrnoException) =>
        this.#log.warn({ healthFile: path, reason: err.code }, 'agent: cannot touch the health file'),
      );
    }
  }

  async #listenHealth(): Promise<void> {
    const server = createServer((req, res) => {
      if (req.method !== 'GET' || !['/healthz', '/'].includes(req.url ?? '')) {
        res.writeHead(404).end();
        return;
      }
      const status = this.status();
      res
        .writeHead(status.ok ? 200 : 503, { 'content-type': 'application/json', 'cache-control': 'no-store' })
        .end(JSON.stringify(status));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new AgentStartError(
            `healthPort ${this.#config.healthPort} cannot be listened on (${err.code}): choose another port`,
          ),
        ),
      );
      server.listen(this.#config.healthPort, this.#config.healthHost, () => resolve());
    });
    this.#health = server;
    this.#log.info({ healthPort: this.#config.healthPort }, 'agent: health endpoint listening');
  }
}

/** Errors that a retry will not fix: the agent stops at start with the message. */
function fatalAtStart(err: AgentApiError): boolean {
  return err.code === 'config' || err.status === 401 || err.status === 403 || err.status === 404;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
