// Downstream drivers put whatever they like into error messages: connection strings with passwords, echoes of
// the failing statement, DSNs. Before an error is logged, stored in a rotation record or returned, it passes
// through here: known secret values are cut out, and so is anything shaped like a credential.

import { secretsInScope } from './secret-scope.ts';

const MIN_SECRET_LENGTH = 4;

const PATTERNS: Array<[RegExp, string]> = [
  // scheme://user:password@host (greedy to the last "@" of the run, so a password containing "@" goes whole)
  [/([a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*:)[^\s]*@/gi, '$1[redacted]@'],
  // PASSWORD 'xyz' / PASSWORD "xyz" (SQL echoes), IDENTIFIED BY 'xyz'
  [/\b(PASSWORD|IDENTIFIED\s+BY)\s+(E?'(?:[^']|'')*'|"(?:[^"]|"")*")/gi, "$1 '[redacted]'"],
  // password=xyz, DB_PASSWORD=xyz, PGPASSWORD: xyz, "access_token":"xyz", secret=…: the name may carry a
  // prefix or suffix joined by "_" or "-", which \b alone would not see.
  [
    /(["']?[A-Za-z0-9_-]*(?:password|passwd|pwd|secret|token|api[_-]?key)[A-Za-z0-9_-]*["']?\s*[:=]\s*)("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^\s,;&}]+)/gi,
    '$1[redacted]',
  ],
  // ACL SETUSER user >password (and at the very start of a text)
  [/(^|\s)>(?!=)[^\s]+/g, '$1>[redacted]'],
  // Authorization: Bearer xyz (schemes are case-insensitive)
  [/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/gi, '$1 [redacted]'],
];

/**
 * Removes secret values and credential-shaped substrings from a text: the secrets given, every secret the current
 * operation has touched (secret-scope.ts), and anything shaped like a credential.
 */
export function scrubText(text: string, secrets: Iterable<string | undefined> = []): string {
  let out = text;
  // Longest first, so that a secret containing another is cut whole.
  const known = [...secrets, ...secretsInScope()]
    .filter((s): s is string => typeof s === 'string' && s.length >= MIN_SECRET_LENGTH)
    .sort((a, b) => b.length - a.length);
  for (const secret of known) out = out.split(secret).join('[redacted]');
  for (const [pattern, replacement] of PATTERNS) out = out.replace(pattern, replacement);
  return out;
}

export interface ScrubbedError {
  /** Machine-readable code when the driver gave one (SQLSTATE, errno name…). */
  code?: string;
  message: string;
}

/** Reduces any thrown value to a code and a scrubbed message; never carries the original object along. */
export function scrubError(err: unknown, secrets: Iterable<string | undefined> = []): ScrubbedError {
  const list = [...secrets];
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    const out: ScrubbedError = { message: scrubText(err.message || err.name, list).slice(0, 1000) };
    if (typeof code === 'string' && /^[A-Za-z0-9_.-]{1,40}$/.test(code)) out.code = code;
    return out;
  }
  let text: string;
  try {
    text = String(err);
  } catch {
    // Object.create(null), or a toString that throws: this runs inside error handlers and must not throw.
    text = 'an error that cannot be described';
  }
  return { message: scrubText(text, list).slice(0, 1000) };
}
