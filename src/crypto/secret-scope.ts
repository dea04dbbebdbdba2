// Every secret an operation has touched, known to the scrubber wherever that operation writes (finding 10 of issue
// 11). A downstream may echo any password it was sent in an error: the admin's, the current one, the pending one, a
// lease's. Scrubbing per call site missed some (the admin password in a lease error went to the answer, the audit
// trail, the logs and the lease record). Instead, an operation (an API request, a worker job) runs in a scope; the
// stores and target drivers note every password that passes through them (stores/index.ts, targets/index.ts);
// scrubText consults the scope, and the logger and the audit trail scrub every line with it.
import { AsyncLocalStorage } from 'node:async_hooks';

/** Shorter values are not secrets Keyturn handles (generated passwords are 16+); cutting them would mangle text. */
const MIN_NOTED_LENGTH = 6;
/** A runaway loop must not grow a scope without bound; a scope holds a handful of secrets in practice. */
const MAX_PER_SCOPE = 256;

const storage = new AsyncLocalStorage<Set<string>>();

/** Runs `fn` in a fresh scope of its own (an API request, a job). */
export function runInNewSecretScope<T>(fn: () => T, scope: Set<string> = new Set()): T {
  return storage.run(scope, fn);
}

/** The current scope itself, to be re-entered where async context is lost (a request's body parsing). */
export function currentSecretScope(): Set<string> | undefined {
  return storage.getStore();
}

/** Records a secret value in the current scope (nothing happens outside one). */
export function noteSecret(value: unknown): void {
  const scope = storage.getStore();
  if (!scope || typeof value !== 'string' || value.length < MIN_NOTED_LENGTH) return;
  if (scope.size < MAX_PER_SCOPE) scope.add(value);
}

/** The secrets the current operation has touched. */
export function secretsInScope(): readonly string[] {
  const scope = storage.getStore();
  return scope ? [...scope] : [];
}

/**
 * A serialized log line with every secret of the scope cut out. The secret is replaced where it appears as is and
 * where JSON escaping changed it (quotes, backslashes, control characters), so that the line stays valid JSON.
 */
export function scrubJsonLine(line: string): string {
  const scope = storage.getStore();
  if (!scope || scope.size === 0) return line;
  let out = line;
  for (const secret of [...scope].sort((a, b) => b.length - a.length)) {
    const escaped = JSON.stringify(secret).slice(1, -1);
    if (out.includes(escaped)) out = out.split(escaped).join('[redacted]');
  }
  return out;
}
