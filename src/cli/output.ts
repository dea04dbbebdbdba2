// The CLI's shared output. Every command prints through these so that scripts and people get the same contract:
//   - results on stdout: a table (or text) for people, JSON with --json for scripts; nothing else goes to stdout,
//     so `keyturn … --json | jq` always parses;
//   - progress, warnings and errors on stderr;
//   - colours only when the stream is a terminal and NO_COLOR is not set (https://no-color.org), so logs and pipes
//     never collect escape codes;
//   - exit codes: 0 done, 1 failed (the API refused, a rotation failed, the service is unreachable), 2 usage (a bad
//     option, a bad file): CI tells "my input is wrong" from "the service said no".

export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

type Stream = { isTTY?: boolean; write(chunk: string): unknown };

/** Colours for a stream: on for a terminal, off for a pipe, a file or NO_COLOR. */
export function colours(stream: Stream = process.stdout) {
  const on = Boolean(stream.isTTY) && !process.env.NO_COLOR;
  const wrap = (open: number, close: number) => (s: string) =>
    on ? `\u001b[${open}m${s}\u001b[${close}m` : s;
  return {
    enabled: on,
    bold: wrap(1, 22),
    dim: wrap(2, 22),
    red: wrap(31, 39),
    green: wrap(32, 39),
    yellow: wrap(33, 39),
    cyan: wrap(36, 39),
  };
}

/** Characters a terminal shows, without the colour codes: the width a column needs. */
function visibleLength(s: string): number {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the escape character is what is being removed
  return s.replace(/\u001b\[[0-9;]*m/g, '').length;
}

/** Columns padded to their widest cell; the first row is the header (bold on a terminal). */
export function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => visibleLength(r[i] ?? '')))) ?? [];
  const c = colours();
  return rows
    .map((r, n) => {
      const line = r
        .map((cell, i) => cell + ' '.repeat(Math.max(0, (widths[i] ?? 0) - visibleLength(cell))))
        .join('  ')
        .trimEnd();
      return n === 0 ? c.bold(line) : line;
    })
    .join('\n');
}

/** The result of a command on stdout: `value` as JSON for scripts (--json), else the text `human` makes. */
export function print(json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(`${json ? JSON.stringify(value, null, 2) : human()}\n`);
}

/** One line on stderr and the exit: 1 when something failed, EXIT_USAGE (2) when the input was wrong. */
export function fail(message: string, code: number = EXIT_FAILED): never {
  const c = colours(process.stderr);
  process.stderr.write(`${c.red('keyturn:')} ${message}\n`);
  process.exit(code);
}

let usageCode = EXIT_USAGE;

/** The exit code of a usage error: 2, except where 2 means something else (`plan --detailed-exitcode`: changes). */
export function setUsageExitCode(code: number): void {
  usageCode = code;
}

/** A usage error: a bad option or argument. Exit 2 (see setUsageExitCode). */
export function usage(message: string): never {
  return fail(message, usageCode);
}

/** A warning on stderr; the command goes on. */
export function warn(message: string): void {
  const c = colours(process.stderr);
  process.stderr.write(`${c.yellow('keyturn: warning:')} ${message}\n`);
}

/**
 * Progress of something a person waits on (a rotation, an apply, a rekey, an export), on stderr only: stdout stays
 * the result. On a terminal it redraws one line; elsewhere (CI logs, a pipe) it prints a line at most every 10% of
 * the total or every 2 s, so a log shows that work goes on without a line per item.
 */
export class Progress {
  readonly #label: string;
  readonly #stream: Stream;
  readonly #tty: boolean;
  readonly #now: () => number;
  #lastAt = Number.NEGATIVE_INFINITY;
  #lastTenth = -1;
  #drawn = false;
  #done = false;

  constructor(label: string, options: { stream?: Stream; now?: () => number } = {}) {
    this.#label = label;
    this.#stream = options.stream ?? process.stderr;
    this.#tty = Boolean(this.#stream.isTTY);
    this.#now = options.now ?? Date.now;
  }

  /** `done` of `total` (when known), with an optional note (the step, the item). */
  update(done: number, total?: number, note?: string): void {
    if (this.#done) return;
    const known = total !== undefined && total > 0;
    const pct = known ? Math.min(100, Math.floor((done / total) * 100)) : undefined;
    const text = `${this.#label}: ${known ? `${done}/${total} (${pct}%)` : String(done)}${note ? `  ${note}` : ''}`;
    if (this.#tty) {
      const c = colours(this.#stream);
      this.#stream.write(`\r${c.cyan(this.#label)}${text.slice(this.#label.length)}\u001b[K`);
      this.#drawn = true;
      return;
    }
    const now = this.#now();
    const tenth = pct === undefined ? -1 : Math.floor(pct / 10);
    const dueByTime = now - this.#lastAt >= 2000;
    const dueByShare = pct !== undefined && tenth > this.#lastTenth;
    if (!dueByTime && !dueByShare) return;
    this.#lastAt = now;
    if (pct !== undefined) this.#lastTenth = tenth;
    this.#stream.write(`${text}\n`);
  }

  /** The end: the last line says what came of it. */
  finish(message: string): void {
    this.#end(colours(this.#stream).green('✓'), message);
  }

  /** The end of something that failed; the caller still decides the exit code. */
  fail(message: string): void {
    this.#end(colours(this.#stream).red('✗'), message);
  }

  #end(mark: string, message: string): void {
    if (this.#done) return;
    this.#done = true;
    const clear = this.#tty && this.#drawn ? '\r\u001b[K' : '';
    this.#stream.write(`${clear}${this.#tty ? `${mark} ` : ''}${this.#label}: ${message}\n`);
  }
}
