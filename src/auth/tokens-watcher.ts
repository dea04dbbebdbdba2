// The tokens file (KEYTURN_TOKENS_FILE) kept in force while the process runs: a change is read and put in force
// without a restart, and a bad file never replaces a good one.
//
//   fs.watch on the file ──┐
//   fs.watch on its folder ├─▶ debounce (250 ms) ─▶ read ─▶ same text as in force? nothing
//   stat every 5 s ────────┘                                 │
//                                                            ├─ valid ─▶ apply (the next request is judged by it)
//                                                            └─ invalid, unreadable or emptied ─▶ refused: the last
//                                                               good file stays, the log and /readyz say why
//
// The folder is watched because editors and Kubernetes replace a file rather than write into it (a rename, or the
// `..data` symlink swap of a mounted ConfigMap or Secret), which a watch on the file alone misses; the stat is for
// file systems where watches say nothing (NFS, some container mounts). The debounce lets a write finish before it
// is read. A refused file is reported once, not at every poll; so is each file put in force.
import { createHash } from 'node:crypto';
import { type FSWatcher, watch } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from '../logging/logger.ts';
import { parseTokensFile, readTokensFileText, type TokensFile, TokensFileError } from './tokens-file.ts';

export interface TokensWatcherOptions {
  logger: Logger;
  /** Quiet time after the last change before the file is read. Default 250 ms. */
  debounceMs?: number;
  /** How often the file's stat is compared, whatever the watches say. Default 5000 ms. */
  pollMs?: number;
  /** fs.watch the file and its folder (default true); off, only the stat poll notices changes. */
  watch?: boolean;
}

/** What one reload did; `refused` outcomes carry the reason (the positions and rules broken, never a value). */
export type ReloadOutcome =
  | { ok: true; file: TokensFile; previous: TokensFile; at: Date; summary: Record<string, unknown> }
  | { ok: false; reason: string; problems: string[]; at: Date; inForceSince: Date };

export interface TokensWatcherHandlers {
  /**
   * Puts a validated file in force. What it returns is added to the log line; throwing refuses the file (its message
   * is the reason).
   */
  apply(file: TokensFile, previous: TokensFile): Record<string, unknown> | undefined;
  /** Told of each file put in force and each refused, once each. */
  onReload?(outcome: ReloadOutcome): void;
}

export interface TokensFileStatus {
  file: string;
  /** When the file in force was read. */
  loadedAt: string;
  entries: { tokens: number; certificates: number; jwt: number };
  /** Set while the file on disk is refused: the last good one stays in force. */
  refused?: { at: string; reason: string };
}

export type CheckResult = 'applied' | 'unchanged' | 'refused';

const digest = (text: string): string => createHash('sha256').update(text).digest('hex');

/** Nothing but comments and blank lines: a file caught half-written (or truncated) looks just like this. */
const isBlank = (text: string): boolean => text.replace(/#.*$/gm, '').trim() === '';

const entriesOf = (file: TokensFile): number =>
  file.tokens.length + file.certificates.length + file.jwt.length;

export class TokensWatcher {
  readonly path: string;
  readonly #logger: Logger;
  readonly #debounceMs: number;
  readonly #pollMs: number;
  readonly #watch: boolean;
  #current: TokensFile;
  #currentDigest: string;
  #loadedAt: Date;
  /** The content (or read failure) last refused, so that it is reported once; and why. */
  #refused: { key: string; at: Date; reason: string } | undefined;
  #handlers: TokensWatcherHandlers | undefined;
  #folderWatch: FSWatcher | undefined;
  #fileWatch: FSWatcher | undefined;
  #watchFailed = false;
  #poll: NodeJS.Timeout | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #lastStat: string | undefined;
  #running: Promise<CheckResult> | undefined;
  #again = false;
  #closed = false;

  private constructor(path: string, file: TokensFile, text: string, options: TokensWatcherOptions) {
    this.path = path;
    this.#logger = options.logger;
    this.#debounceMs = options.debounceMs ?? 250;
    this.#pollMs = options.pollMs ?? 5000;
    this.#watch = options.watch ?? true;
    this.#current = file;
    this.#currentDigest = digest(text);
    this.#loadedAt = new Date();
  }

  /** Reads and validates the file at start: a bad one is a TokensFileError listing every problem (start stops). */
  static async open(path: string, options: TokensWatcherOptions): Promise<TokensWatcher> {
    const text = await readTokensFileText(path);
    const watcher = new TokensWatcher(path, parseTokensFile(text, path), text, options);
    watcher.#lastStat = await watcher.#statSignature();
    return watcher;
  }

  /** The file in force. */
  get current(): TokensFile {
    return this.#current;
  }

  status(): TokensFileStatus {
    return {
      file: this.path,
      loadedAt: this.#loadedAt.toISOString(),
      entries: {
        tokens: this.#current.tokens.length,
        certificates: this.#current.certificates.length,
        jwt: this.#current.jwt.length,
      },
      ...(this.#refused
        ? { refused: { at: this.#refused.at.toISOString(), reason: this.#refused.reason } }
        : {}),
    };
  }

  /** Starts watching; changes are handed to `handlers`. */
  start(handlers: TokensWatcherHandlers): void {
    this.#handlers = handlers;
    if (this.#watch) {
      this.#folderWatch = this.#watchPath(dirname(this.path), 'its folder');
      this.#fileWatch = this.#watchPath(this.path, 'the file');
    }
    this.#poll = setInterval(() => void this.#pollOnce(), this.#pollMs);
    this.#poll.unref();
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#poll);
    clearTimeout(this.#debounce);
    this.#folderWatch?.close();
    this.#fileWatch?.close();
  }

  #watchPath(target: string, what: string): FSWatcher | undefined {
    try {
      const watcher = watch(target, { persistent: false }, () => this.#schedule());
      watcher.on('error', (err) => {
        watcher.close();
        this.#watchFailedOnce(what, err);
      });
      return watcher;
    } catch (err) {
      // The file may be missing for a moment (being replaced): the folder's watch and the poll still see it come.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.#watchFailedOnce(what, err as Error);
      return undefined;
    }
  }

  #watchFailedOnce(what: string, err: Error): void {
    if (this.#watchFailed) return;
    this.#watchFailed = true;
    this.#logger.warn(
      { file: this.path, err: { message: err.message } },
      `cannot watch ${what} of the tokens file (${err.message}): changes are noticed by a stat every ${this.#pollMs / 1000} s instead`,
    );
  }

  /** The file's watch follows one inode: after a replace it watches the new file. */
  #rewatchFile(): void {
    if (!this.#watch || this.#closed) return;
    this.#fileWatch?.close();
    this.#fileWatch = this.#watchPath(this.path, 'the file');
  }

  async #statSignature(): Promise<string> {
    try {
      const s = await stat(this.path);
      return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
    } catch (err) {
      return `missing:${(err as NodeJS.ErrnoException).code ?? 'error'}`;
    }
  }

  async #pollOnce(): Promise<void> {
    const signature = await this.#statSignature();
    if (signature === this.#lastStat) return;
    this.#lastStat = signature;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#closed) return;
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => void this.check(), this.#debounceMs);
    this.#debounce.unref();
  }

  /**
   * Reads the file now and puts it in force if it changed and is valid (the watches and the poll call this; tests
   * may too). Calls never overlap: one made while another runs makes that one read again when it ends.
   */
  check(): Promise<CheckResult> {
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    const run = async (): Promise<CheckResult> => {
      let result: CheckResult;
      do {
        this.#again = false;
        result = await this.#checkOnce();
      } while (this.#again && !this.#closed);
      return result;
    };
    this.#running = run().finally(() => {
      this.#running = undefined;
      this.#rewatchFile();
    });
    return this.#running;
  }

  async #checkOnce(): Promise<CheckResult> {
    this.#lastStat = await this.#statSignature();
    let text: string;
    try {
      text = await readTokensFileText(this.path);
    } catch (err) {
      const problems = err instanceof TokensFileError ? err.problems : [(err as Error).message];
      return this.#refuse(`read:${problems.join()}`, problems);
    }
    const key = digest(text);
    if (key === this.#currentDigest) {
      if (this.#refused) {
        this.#refused = undefined;
        this.#logger.info(
          { file: this.path },
          'tokens file: the file on disk is again the one in force; nothing is refused any more',
        );
      }
      return 'unchanged';
    }
    if (this.#refused?.key === key) return 'refused';
    if (isBlank(text) && entriesOf(this.#current) > 0) {
      return this.#refuse(key, [
        'the file is empty: refused on reload, since a file caught half-written looks the same; to remove every entry, write "tokens: []"',
      ]);
    }
    let file: TokensFile;
    try {
      file = parseTokensFile(text, this.path);
    } catch (err) {
      if (!(err instanceof TokensFileError)) throw err;
      return this.#refuse(key, err.problems);
    }
    if (this.#closed) return 'unchanged';
    const previous = this.#current;
    let summary: Record<string, unknown> | undefined;
    try {
      summary = this.#handlers?.apply(file, previous);
    } catch (err) {
      return this.#refuse(key, [(err as Error).message]);
    }
    this.#current = file;
    this.#currentDigest = key;
    this.#loadedAt = new Date();
    this.#refused = undefined;
    this.#logger.info(
      {
        file: this.path,
        tokens: file.tokens.length,
        certificates: file.certificates.length,
        jwt: file.jwt.length,
        ...summary,
      },
      'tokens file reloaded: the new file is in force',
    );
    this.#handlers?.onReload?.({ ok: true, file, previous, at: this.#loadedAt, summary: summary ?? {} });
    return 'applied';
  }

  #refuse(key: string, problems: string[]): CheckResult {
    if (this.#refused?.key === key) return 'refused';
    const at = new Date();
    const reason = problems.join('; ');
    this.#refused = { key, at, reason };
    this.#logger.warn(
      { file: this.path, problems, inForceSince: this.#loadedAt.toISOString() },
      `tokens file ${this.path} refused on reload, the file loaded at ${this.#loadedAt.toISOString()} stays in force: ${reason}; fix the file (it is read again as soon as it changes)`,
    );
    this.#handlers?.onReload?.({ ok: false, reason, problems, at, inForceSince: this.#loadedAt });
    return 'refused';
  }
}
