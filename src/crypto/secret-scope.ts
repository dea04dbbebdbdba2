// Every secret an operation has touched, known to the scrubber wherever that operation writes (finding 10 of issue
// 11). A downstream may echo any password it was sent in an error: the admin's, the current one, the pending one, a
// lease's. Scrubbing per call site missed some (the admin password in a lease error went to the answer, the audit
// trail, the logs and the lease record). Instead, an operation (an API request, a worker job) runs in a scope; the
// stores and target drivers note every password that passes through them (stores/index.ts, targets/index.ts);
// scrubText consults the scope; the logger, the audit trail and the API's error answers scrub with it, and so does
// an error on its way out of a scope. Entry points open one: the API (api/app.ts), every job and the workers' start-up
// work (scheduling/queues.ts).
import { AsyncLocalStorage } from 'node:async_hooks';

/** Shorter values are not secrets Keyturn handles (generated passwords are 16+); cutting them would mangle text. */
const MIN_NOTED_LENGTH = 6;
/** A runaway loop must not grow a scope without bound; a scope holds a handful of secrets in practice. */
const MAX_PER_SCOPE = 256;

const storage = new AsyncLocalStorage<Set<string>>();

/**
 * Runs `fn` in a fresh scope of its own (an API request, a job). An error that leaves the scope, where its secrets
 * stop being known, has them cut out of its message and stack first: a job's error goes to Redis (BullMQ's failed
 * reason) and to logs written outside the scope.
 */
export function runInNewSecretScope<T>(fn: () => T, scope: Set<string> = new Set()): T {
  return storage.run(scope, () => {
    let result: T;
    try {
      result = fn();
    } catch (err) {
      throw scrubbedOnExit(err, scope);
    }
    if (result instanceof Promise) {
      return result.catch((err: unknown) => {
        throw scrubbedOnExit(err, scope);
      }) as T;
    }
    return result;
  });
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

/** A text with every secret of the scope cut out, and nothing else changed (an API error's message). */
export function scrubSecretsInScope(text: string): string {
  return cutSecrets(text, storage.getStore());
}

function cutSecrets(text: string, scope: Set<string> | undefined): string {
  if (!scope || scope.size === 0) return text;
  let out = text;
  for (const secret of [...scope].sort((a, b) => b.length - a.length)) {
    if (out.includes(secret)) out = out.split(secret).join('[redacted]');
  }
  return out;
}

/** The error leaving `scope`, with the scope's secrets cut out of its message and stack (same object when an Error). */
function scrubbedOnExit(err: unknown, scope: Set<string>): unknown {
  if (scope.size === 0) return err;
  if (typeof err === 'string') return cutSecrets(err, scope);
  if (!(err instanceof Error)) return err;
  try {
    const message = cutSecrets(err.message, scope);
    if (message !== err.message) err.message = message;
    if (typeof err.stack === 'string') {
      const stack = cutSecrets(err.stack, scope);
      if (stack !== err.stack) err.stack = stack;
    }
  } catch {
    // A frozen or exotic error: it leaves as it is rather than as another error.
  }
  return err;
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
