// `keyturn token create` and `keyturn token hash`: offline helpers for the static-token file (KEYTURN_TOKENS_FILE).
// `create` makes a token of 32 random bytes, prints it once, and prints (or adds to the file) its entry, which holds
// only the token's SHA-256. The entry is checked by the same parser the server uses before anything is written, and
// the file keeps its comments and layout: it is edited through yaml's Document API, never regenerated.
import { randomBytes } from 'node:crypto';
import { readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Command } from 'commander';
import { Document, isMap, isScalar, isSeq, parseDocument, YAMLMap, YAMLSeq } from 'yaml';
import { parseTokensFile, type TokensFile, TokensFileError } from '../auth/tokens-file.ts';
import { parseDuration } from '../config/duration.ts';
import { sha256Hex } from '../crypto/tokens.ts';

/** Exit code for bad input (options, an existing file with problems): nothing was made or written. */
export const EXIT_BAD_INPUT = 2;

export interface TokenEntryInput {
  name: string;
  roles: string[];
  credentials?: string[];
  labels?: Record<string, string>;
  expiresAt?: string;
}

/** The entry as written to the file (and printed): expiresAt as an ISO string. */
export interface TokenEntryOutput {
  name: string;
  sha256: string;
  roles: string[];
  credentials?: string[];
  labels?: Record<string, string>;
  expiresAt?: string;
}

class BadInput extends Error {
  readonly problems: string[];
  constructor(problems: string[], heading?: string) {
    super(heading ?? problems.join('; '));
    this.problems = problems;
  }
}

const FILE_HEADER =
  '# Keyturn static tokens (KEYTURN_TOKENS_FILE): each entry holds the SHA-256 of a token, never the token.\n' +
  '# Add entries with `keyturn token create --file <this file>`.\n';

/** 32 random bytes, base64url: 43 characters, 256 bits. */
export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

/** `--role reader --role auditor` and `--role reader,auditor` alike. */
export function splitList(values: string[] | undefined): string[] {
  return (values ?? [])
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter(Boolean);
}

const iso = (d: Date) => d.toISOString().replace(/\.000Z$/, 'Z');

/** `--expires`: an ISO date (midnight UTC), a date-time with a time zone, or a duration from now ("90d"). */
export function parseExpires(raw: string, now: Date = new Date()): string {
  const text = raw.trim();
  let at: Date;
  if (/^[1-9][0-9]*[smhd]$/.test(text)) {
    try {
      // Whole seconds: the entry reads 2027-06-30T12:00:00Z, not …:00.123Z.
      at = new Date(Math.floor((now.getTime() + parseDuration(text)) / 1000) * 1000);
    } catch (err) {
      throw new BadInput([`--expires: ${(err as Error).message}`]);
    }
  } else if (/^\d{4}-\d{2}-\d{2}$/.test(text)) {
    at = new Date(`${text}T00:00:00Z`);
  } else if (/^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:?\d{2})$/.test(text)) {
    at = new Date(text.replace(' ', 'T'));
  } else {
    throw new BadInput([
      '--expires must be a date (2027-06-30, midnight UTC), a date-time with a time zone (2027-06-30T12:00:00Z) or a duration from now (90d, 12h)',
    ]);
  }
  if (Number.isNaN(at.getTime())) throw new BadInput([`--expires: "${text}" is not a real date`]);
  if (at.getTime() <= now.getTime())
    throw new BadInput(['--expires is in the past: the token would never work']);
  return iso(at);
}

/** `--label team=payments` (the value may hold "="); a key given twice with two values is refused. */
export function parseLabels(values: string[] | undefined): Record<string, string> | undefined {
  if (!values || values.length === 0) return undefined;
  const labels: Record<string, string> = {};
  const problems: string[] = [];
  for (const raw of values.flatMap((v) => v.split(','))) {
    const eq = raw.indexOf('=');
    const key = eq > 0 ? raw.slice(0, eq).trim() : '';
    if (!key) {
      problems.push(`--label must be key=value, got "${raw}"`);
      continue;
    }
    const value = raw.slice(eq + 1).trim();
    if (key in labels && labels[key] !== value) problems.push(`--label gives "${key}" two values`);
    labels[key] = value;
  }
  if (problems.length > 0) throw new BadInput(problems);
  return labels;
}

/** The token file's paths (of the one entry being made) as the options that set them. */
function asOptions(problem: string): string {
  const out = problem
    .replace(/^tokens\[0\]\.name\b/, '--name')
    .replace(/^tokens\[0\]\.roles(\[\d+\])?/, '--role')
    .replace(/^tokens\[0\]\.credentials(\[\d+\])?/, '--credential')
    .replace(/^tokens\[0\]\.labels\b/, '--label')
    .replace(/^tokens\[0\]\.expiresAt\b/, '--expires')
    .replace(/^tokens\[0\]/, 'the token');
  return /neither credentials nor labels/.test(out) ? `${out} (give --credential or --label)` : out;
}

// `[operator]` as in the SPEC's example and most hand-written files (yaml's default is `[ operator ]`).
const TO_STRING = { flowCollectionPadding: false } as const;

/** A block-style entry with flow-style roles, credentials and labels, as in the SPEC's example. */
function entryNode(doc: Document, entry: TokenEntryOutput) {
  const node = doc.createNode(entry);
  if (isMap(node)) {
    for (const key of ['roles', 'credentials', 'labels']) {
      const child = node.get(key, true);
      // Short ones on one line, as in the SPEC's example; a long list reads better as a block.
      if ((isSeq(child) || isMap(child)) && JSON.stringify(child.toJSON()).length <= 72) child.flow = true;
    }
  }
  return node;
}

/** The entry's YAML, as a one-item list to paste under `tokens:`. */
export function entryYaml(entry: TokenEntryOutput): string {
  const doc = new Document([]);
  const seq = doc.contents;
  if (isSeq(seq)) seq.items.push(entryNode(doc, entry));
  return doc.toString(TO_STRING);
}

/** Builds the entry and checks it with the server's parser; throws BadInput naming the options at fault. */
export function buildEntry(input: TokenEntryInput, token: string): TokenEntryOutput {
  const entry: TokenEntryOutput = {
    name: input.name,
    sha256: sha256Hex(token),
    roles: input.roles,
    ...(input.credentials && input.credentials.length > 0 ? { credentials: input.credentials } : {}),
    ...(input.labels && Object.keys(input.labels).length > 0 ? { labels: input.labels } : {}),
    ...(input.expiresAt ? { expiresAt: input.expiresAt } : {}),
  };
  try {
    const parsed = parseTokensFile(`tokens:\n${entryYaml(entry)}`, 'the new entry');
    if (parsed.tokens[0]?.sha256 !== entry.sha256) throw new Error('the entry did not round-trip');
  } catch (err) {
    if (err instanceof TokensFileError) throw new BadInput(err.problems.map(asOptions));
    throw err;
  }
  return entry;
}

function readError(path: string, err: unknown): Error {
  const code = (err as NodeJS.ErrnoException).code;
  return new Error(
    `cannot read ${path}: ${code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : (err as Error).message}`,
  );
}

/**
 * The new text of the tokens file with the entry appended to `tokens`. Throws BadInput when the file is not valid,
 * already has problems, or has an entry of that name.
 *
 * The entry's lines are inserted into the text, after the last entry of `tokens` (or under an empty `tokens:`, or
 * as a new section at the end), so every other byte of the file stays as it was: comments, their alignment, blank
 * lines, quoting. Only for layouts where that is not safe (a flow-style `tokens: [...]`, a flow-style file) is the
 * file re-rendered through yaml's Document, which keeps comments but may respace them. Either way the result must
 * parse to the old entries, unchanged, plus the new one, or nothing is written.
 */
export function appendEntry(existing: string | undefined, entry: TokenEntryOutput, path: string): string {
  const text = existing ?? `${FILE_HEADER}tokens:\n`;
  let current: TokensFile;
  try {
    current = parseTokensFile(text, path);
  } catch (err) {
    if (err instanceof TokensFileError) {
      throw new BadInput(
        err.problems,
        `${path} already has problems; fix them first (the file was not changed):`,
      );
    }
    throw err;
  }
  const clash = [
    ...current.tokens.map((t, i) => [t.name, `tokens[${i}]`] as const),
    ...current.certificates.map((c, i) => [c.name, `certificates[${i}]`] as const),
  ].find(([name]) => name === entry.name);
  if (clash) {
    throw new BadInput([
      `--name: ${path} already has an entry named "${entry.name}" (${clash[1]}); names must be unique (the file was not changed)`,
    ]);
  }

  const keeps = (updated: string | undefined): updated is string => {
    if (updated === undefined) return false;
    let after: TokensFile;
    try {
      after = parseTokensFile(updated, path);
    } catch {
      return false;
    }
    const added = after.tokens.at(-1);
    return (
      added?.name === entry.name &&
      added.sha256 === entry.sha256 &&
      JSON.stringify(after.tokens.slice(0, -1)) === JSON.stringify(current.tokens) &&
      JSON.stringify(after.certificates) === JSON.stringify(current.certificates) &&
      JSON.stringify(after.jwt) === JSON.stringify(current.jwt)
    );
  };
  const spliced = spliceEntry(text, entry);
  if (keeps(spliced)) return spliced;
  const rendered = renderWithEntry(text, entry);
  if (keeps(rendered)) return rendered;
  throw new Error(
    `could not add the entry to ${path} without changing its other entries; the file was not changed`,
  );
}

/** The entry's lines, each indented by `indent` spaces. */
function indented(entry: TokenEntryOutput, indent: number): string {
  return entryYaml(entry)
    .split('\n')
    .map((line) => (line ? `${' '.repeat(indent)}${line}` : line))
    .join('\n');
}

const columnOf = (text: string, offset: number) => offset - (text.lastIndexOf('\n', offset - 1) + 1);

/** Offset of the start of the line after the one holding `offset` (the text's end when there is none). */
function nextLine(text: string, offset: number): number {
  if (offset > 0 && text[offset - 1] === '\n') return offset;
  const eol = text.indexOf('\n', offset);
  return eol === -1 ? text.length : eol + 1;
}

function insertAt(text: string, offset: number, lines: string): string {
  const eol = text.includes('\r\n') ? '\r\n' : '\n'; // a file written on Windows keeps its line ends
  const before = text.slice(0, offset);
  return `${before}${before && !before.endsWith('\n') ? eol : ''}${lines.replace(/\n/g, eol)}${text.slice(offset)}`;
}

/** The entry inserted as text; undefined when the file's layout is not one this handles. */
function spliceEntry(text: string, entry: TokenEntryOutput): string | undefined {
  const doc = parseDocument(text);
  if (doc.errors.length > 0) return undefined;
  const root = doc.contents;
  if (root === null || (isScalar(root) && root.value === null)) {
    // Nothing but comments (or nothing): a new section at the end.
    return insertAt(text, text.length, `tokens:\n${indented(entry, 2)}`);
  }
  if (!isMap(root) || root.flow || !root.range || columnOf(text, root.range[0]) !== 0) return undefined;
  const pair = root.items.find((p) => isScalar(p.key) && p.key.value === 'tokens');
  if (!pair) return insertAt(text, text.length, `tokens:\n${indented(entry, 2)}`);
  const key = pair.key;
  const value = pair.value;
  if (!isScalar(key) || !key.range) return undefined;
  if (isSeq(value) && !value.flow && value.range && value.items.length > 0) {
    // After the last entry (its inline comment stays on its line), at the column of the others' dashes.
    return insertAt(text, nextLine(text, value.range[1]), indented(entry, columnOf(text, value.range[0])));
  }
  if (value === null || (isScalar(value) && value.value === null && value.source === '')) {
    // `tokens:` with nothing (or only a comment) after it: the entry goes on the next line.
    const end = isScalar(value) && value.range ? value.range[2] : key.range[2];
    return insertAt(text, nextLine(text, end), indented(entry, 2));
  }
  return undefined;
}

/** The file re-rendered through yaml's Document with the entry added: comments are kept, spacing may not be. */
function renderWithEntry(text: string, entry: TokenEntryOutput): string | undefined {
  const doc: Document = parseDocument(text);
  if (doc.errors.length > 0) return undefined;
  const node = entryNode(doc, entry);
  const root = doc.contents;
  const tokens = doc.get('tokens', true);
  const listOfEntry = () => {
    const seq = new YAMLSeq();
    seq.items.push(node);
    return seq;
  };
  if (isSeq(tokens)) {
    tokens.flow = false; // the entries one under the other, whatever they were
    tokens.items.push(node);
  } else if (root === null || (isScalar(root) && root.value === null)) {
    const map = new YAMLMap();
    map.set('tokens', listOfEntry());
    doc.contents = map;
  } else if (isMap(root) && (tokens === undefined || (isScalar(tokens) && tokens.value === null))) {
    root.set('tokens', listOfEntry());
  } else {
    return undefined;
  }
  return doc.toString(TO_STRING);
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw readError(path, err);
  }
}

/**
 * Appends the entry to the file: written beside it and renamed over it, so that a reader never sees half a file;
 * if the file changed while the entry was being added (another `token create`), it starts again.
 * Returns whether the file was created.
 */
export async function addToFile(path: string, entry: TokenEntryOutput): Promise<{ created: boolean }> {
  // Through a symlink (a mounted ConfigMap, a dotfiles link), the file it points to is the one to change.
  const target = await realpath(path).catch(() => path);
  for (let attempt = 0; attempt < 5; attempt++) {
    const before = await readIfExists(target);
    const updated = appendEntry(before, entry, path);
    const mode = before === undefined ? 0o600 : (await stat(target)).mode & 0o777;
    const tmp = join(
      dirname(target),
      `.${basename(target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`,
    );
    await writeFile(tmp, updated, { mode, flag: 'wx' });
    try {
      if ((await readIfExists(target)) !== before) continue;
      await rename(tmp, target);
      return { created: before === undefined };
    } finally {
      await rm(tmp, { force: true });
    }
  }
  throw new Error(`${path} kept changing while the entry was being added; try again`);
}

async function readStdin(limit = 64 * 1024): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    size += buf.length;
    if (size > limit) throw new BadInput([`the input is longer than ${limit} bytes: expected one token`]);
    chunks.push(buf);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function report(err: unknown): never {
  if (err instanceof BadInput) {
    if (err.message && err.problems.length > 0 && err.message !== err.problems.join('; ')) {
      process.stderr.write(`keyturn: ${err.message}\n`);
      for (const p of err.problems) process.stderr.write(`  - ${p}\n`);
    } else {
      for (const p of err.problems) process.stderr.write(`keyturn: ${p}\n`);
    }
    process.exit(EXIT_BAD_INPUT);
  }
  process.stderr.write(`keyturn: ${(err as Error).message}\n`);
  process.exit(1);
}

interface CreateOptions {
  name: string;
  role: string[];
  credential?: string[];
  label?: string[];
  expires?: string;
  file?: string;
  json?: boolean;
}

async function create(opts: CreateOptions, json: boolean): Promise<void> {
  const problems: string[] = [];
  const attempt = <T>(fn: () => T): T | undefined => {
    try {
      return fn();
    } catch (err) {
      if (err instanceof BadInput) problems.push(...err.problems);
      else throw err;
      return undefined;
    }
  };
  const labels = attempt(() => parseLabels(opts.label));
  const expiresAt = opts.expires === undefined ? undefined : attempt(() => parseExpires(opts.expires!));
  const token = newToken();
  // Every problem at once: the entry is checked with whatever of the options could be read.
  const entry = attempt(() =>
    buildEntry(
      {
        name: opts.name,
        roles: [...new Set(splitList(opts.role))],
        credentials: [...new Set(splitList(opts.credential))],
        ...(labels ? { labels } : {}),
        ...(expiresAt ? { expiresAt } : {}),
      },
      token,
    ),
  );
  if (problems.length > 0 || !entry) throw new BadInput(problems);
  const added = opts.file ? await addToFile(opts.file, entry) : undefined;

  // The token is on stdout once, and nowhere else; Keyturn keeps only its SHA-256.
  process.stderr.write(
    'keyturn: the token below is shown only once: Keyturn keeps only its SHA-256, so store it now (in your secret manager)\n',
  );
  if (json) {
    process.stdout.write(
      `${JSON.stringify({ token, entry, ...(opts.file ? { file: opts.file, created: added?.created } : {}) }, null, 2)}\n`,
    );
  } else if (opts.file) {
    process.stdout.write(`${token}\n`);
  } else {
    process.stdout.write(
      `${token}\n\n# Add this entry to the tokens file (KEYTURN_TOKENS_FILE), under tokens:\n${entryYaml(entry)}`,
    );
  }
  if (opts.file) {
    process.stderr.write(
      `keyturn: ${added?.created ? 'created' : 'updated'} ${opts.file}: added the entry "${entry.name}" (the server reads the file at start-up)\n`,
    );
  }
}

async function hash(json: boolean): Promise<void> {
  if (process.stdin.isTTY) process.stderr.write('keyturn: paste the token, then press Enter and Ctrl-D\n');
  const token = (await readStdin()).trim();
  if (token === '')
    throw new BadInput(['no token on stdin (e.g. `printf %s "$TOKEN" | keyturn token hash`)']);
  if (/[\r\n]/.test(token)) throw new BadInput(['stdin holds more than one line: expected one token']);
  if (token.length < 32) {
    process.stderr.write(
      'keyturn: warning: this token is shorter than 32 characters; make tokens with at least 128 random bits (`keyturn token create` makes 256)\n',
    );
  }
  const sha256 = sha256Hex(token);
  process.stdout.write(json ? `${JSON.stringify({ sha256 })}\n` : `${sha256}\n`);
}

/** Adds `keyturn token create|hash` to the program; `--json` is read from the command or the program. */
export function addTokenCommands(program: Command): void {
  const token = program
    .command('token')
    .description('static tokens for the tokens file (KEYTURN_TOKENS_FILE); offline, no server needed');
  // Usage errors (a missing --name, an unknown option) are bad input too: exit code 2, like the checks below.
  const usageExit = (err: { exitCode: number }) => process.exit(err.exitCode === 0 ? 0 : EXIT_BAD_INPUT);

  token
    .command('create')
    .description(
      'make a new token, print it once, and print its entry for the tokens file (or add it with --file)',
    )
    .requiredOption('--name <name>', 'the principal name in audit events (unique in the file)')
    .requiredOption('--role <role...>', 'admin, operator, reader or auditor (repeat it or give a comma list)')
    .option('--credential <glob...>', 'reader only: credential ids or globs it may use, e.g. "payments-*"')
    .option('--label <key=value...>', 'reader only: credentials carrying all these labels are bound too')
    .option('--expires <when>', 'an ISO date or date-time, or a duration from now such as 90d')
    .option(
      '--file <path>',
      'add the entry to this tokens file (created if missing); the file keeps its comments',
    )
    .option('--json', 'print JSON: {token, entry, file}')
    .exitOverride(usageExit)
    .action(async (opts: CreateOptions, cmd: Command) => {
      const json = Boolean(opts.json ?? cmd.optsWithGlobals<{ json?: boolean }>().json);
      await create(opts, json).catch(report);
    });

  token
    .command('hash')
    .description('print the SHA-256 of a token read from stdin, for a tokens file entry of a token you made')
    .option('--json', 'print JSON: {sha256}')
    .exitOverride(usageExit)
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const json = Boolean(opts.json ?? cmd.optsWithGlobals<{ json?: boolean }>().json);
      await hash(json).catch(report);
    });
}
