// The one wrapper every target driver gets (targets/index.ts applies it to each line of the map), in the spirit of
// Vault's dbplugin middleware, which wraps every database plugin once for metrics and error sanitising. Here every
// session verb, whatever the driver:
//   - notes its passwords in the current secret scope before the driver sees them, so that whatever the downstream
//     echoes in an error is scrubbed everywhere (finding 10 of issue 11);
//   - runs under a deadline with an AbortSignal (`call.signal`, CallOptions in types.ts): at the deadline the signal
//     aborts (drivers that can cancel their I/O do) and the call rejects as unavailable, so the engine retries or
//     rolls back knowing the verb was cancelled;
//   - is measured: each call's target, verb, outcome and duration is published on the diagnostics channel
//     `keyturn:target-call`, which the runtime's metrics subscribe to (the targets layer imports no metrics library);
//   - runs inside the outbound fence (net/outbound.ts): every socket it opens is checked after DNS resolution, and a
//     refused destination is a TargetRefusedError saying which rule refused it, before any packet went there.
import { channel } from 'node:diagnostics_channel';
import { noteSecret } from '../crypto/secret-scope.ts';
import { fenced, OutboundRefusedError } from '../net/outbound.ts';
import {
  type CallOptions,
  type DualPasswords,
  type LeaseUsers,
  type Login,
  type MintedSecrets,
  nothingSent,
  type TargetDriver,
  TargetRefusedError,
  type TargetSession,
  TargetUnavailableError,
} from './types.ts';

export type SessionVerb = {
  [K in keyof TargetSession]-?: NonNullable<TargetSession[K]> extends (...args: never[]) => unknown
    ? K
    : never;
}[keyof TargetSession];

/**
 * Per verb: how many arguments it takes before `call` (its arity), and where it takes a password. A Record over every
 * verb: a new verb does not compile until it says both.
 */
const VERBS: Record<SessionVerb, VerbSpec> = {
  authenticate: { arity: 1, passwords: (login: Login) => [login?.password] },
  checkAdmin: { arity: 0, passwords: () => [] },
  userExists: { arity: 1, passwords: () => [] },
  createUser: { arity: 3, passwords: (_username: string, password: string) => [password] },
  updatePassword: { arity: 2, passwords: (_username: string, password: string) => [password] },
  deleteUser: { arity: 1, passwords: () => [] },
  accessOf: { arity: 1, passwords: () => [] },
  labelOf: { arity: 1, passwords: () => [] },
  setLabel: { arity: 2, passwords: () => [] },
  close: { arity: 0, passwords: () => [] },
};

type VerbSpec = {
  arity: number;
  passwords: (...args: never[]) => unknown[];
  /** Secrets in what the verb answers (a secret the downstream made), noted as soon as it answers. */
  answers?: (result: never) => unknown[];
};

/**
 * The capability groups' verbs (TargetSession.dualPasswords, .leaseUsers), wrapped as the session's own are: the same
 * Record, so a verb added to a group does not compile until it says its arity and passwords. Measured as
 * `<group>.<verb>`.
 */
const GROUPS: {
  dualPasswords: Record<keyof DualPasswords, VerbSpec>;
  leaseUsers: Record<keyof LeaseUsers, VerbSpec>;
  mintedSecrets: Record<Exclude<keyof MintedSecrets, 'limit' | 'settleMs'>, VerbSpec>;
} = {
  dualPasswords: {
    set: {
      arity: 2,
      passwords: (_username: string, p: { keep: string; password: string }) => [p?.keep, p?.password],
    },
    remove: {
      arity: 2,
      passwords: (_username: string, p: { remove: string; keep: string }) => [p?.remove, p?.keep],
    },
  },
  leaseUsers: {
    create: { arity: 3, passwords: (_username: string, password: string) => [password] },
    extend: { arity: 2, passwords: () => [] },
    drop: { arity: 2, passwords: () => [] },
  },
  mintedSecrets: {
    list: { arity: 1, passwords: () => [] },
    mint: {
      arity: 1,
      passwords: () => [],
      answers: (minted: { secret?: string } | undefined) => [minted?.secret],
    },
    deactivate: { arity: 2, passwords: () => [] },
    delete: { arity: 2, passwords: () => [] },
  },
};

/** The diagnostics channel every target call is published on (metrics/metrics.ts subscribes). */
export const TARGET_CALL_CHANNEL = 'keyturn:target-call';

/** One finished call of a session verb: names and a duration only, never a user name or a secret. */
export interface TargetCall {
  target: string;
  /** A session verb, or a capability's as `<group>.<verb>` (dualPasswords.set). */
  verb: string;
  /** ok; unavailable or refused as the driver classified it; timeout: cancelled at the deadline; error: anything else. */
  outcome: 'ok' | 'unavailable' | 'refused' | 'timeout' | 'error';
  seconds: number;
}

const calls = channel(TARGET_CALL_CHANNEL);

/**
 * A verb's deadline, from the connection's timeout: each network step of a driver is bounded by the timeout (connect,
 * query, close), and a verb takes a few of them (PostgreSQL: log in, run, close). Four of them, as the lease service
 * allows for a lease's creation; past that, something does not answer and the verb is cancelled.
 */
export const DEADLINE_STEPS = 4;

class DeadlineError extends TargetUnavailableError {
  constructor(target: string, verb: string, ms: number) {
    super(
      `${target} ${verb} did not finish within ${ms} ms (${DEADLINE_STEPS} × the connection's timeout) and was cancelled; check that the downstream answers, then retry`,
      'DEADLINE',
    );
  }
}

/** A connection the outbound fence refused: the downstream was never reached, and retrying will not help. */
function fenceRefusal(err: unknown, target: string): unknown {
  if (!(err instanceof OutboundRefusedError)) return err;
  return nothingSent(
    new TargetRefusedError(
      `${target}: ${err.message}. Keyturn did not connect; change the connection, or the outbound policy`,
      'outbound-refused',
    ),
  );
}

function outcomeOf(err: unknown): TargetCall['outcome'] {
  if (err instanceof DeadlineError) return 'timeout';
  if (err instanceof TargetUnavailableError) return 'unavailable';
  if (err instanceof TargetRefusedError) return 'refused';
  return 'error';
}

/** One verb of a session or of its capability groups, under the middleware: secrets noted, deadline, measure. */
function wrapVerb(
  fn: (...a: unknown[]) => Promise<unknown>,
  inner: object,
  target: string,
  verb: string,
  spec: VerbSpec,
  deadlineMs: number,
): (...given: unknown[]) => Promise<unknown> {
  const { arity, passwords, answers } = spec as {
    arity: number;
    passwords: (...a: unknown[]) => unknown[];
    answers?: (result: unknown) => unknown[];
  };
  return async (...given: unknown[]) => {
    const args = given.slice(0, arity);
    for (const p of passwords(...args)) noteSecret(p);
    const outer = (given[arity] as CallOptions | undefined)?.signal;
    const controller = new AbortController();
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    // The caller's own signal (a rotation being stopped) cancels the call as the deadline does.
    const onOuterAbort = () =>
      controller.abort(
        new TargetUnavailableError(`${target} ${verb} was cancelled by its caller`, 'CANCELLED'),
      );
    if (outer?.aborted) onOuterAbort();
    else outer?.addEventListener('abort', onOuterAbort, { once: true });
    // Settles (rejects) only when the call is cancelled: at the deadline, or by the caller.
    const cancelled = new Promise<never>((_, reject) => {
      const onAbort = () => reject(controller.signal.reason);
      if (controller.signal.aborted) onAbort();
      else controller.signal.addEventListener('abort', onAbort, { once: true });
      timer = setTimeout(() => controller.abort(new DeadlineError(target, verb, deadlineMs)), deadlineMs);
      timer.unref();
    });
    cancelled.catch(() => {}); // rejected after the verb settled: nobody waits on it any more
    let outcome: TargetCall['outcome'] = 'ok';
    try {
      while (args.length < arity) args.push(undefined);
      const call: CallOptions = { signal: controller.signal };
      const result = await Promise.race([
        fenced(() => fn.apply(inner, [...args, call]) as Promise<unknown>).catch((err: unknown) => {
          throw fenceRefusal(err, target);
        }),
        cancelled,
      ]);
      for (const secret of answers?.(result) ?? []) noteSecret(secret);
      return result;
    } catch (err) {
      outcome = outcomeOf(err);
      throw err;
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener('abort', onOuterAbort);
      if (calls.hasSubscribers) {
        calls.publish({
          target,
          verb,
          outcome,
          seconds: (performance.now() - started) / 1000,
        } satisfies TargetCall);
      }
    }
  };
}

/** A capability group with each of its verbs wrapped. */
function wrapGroup(group: object, name: keyof typeof GROUPS, target: string, deadlineMs: number): object {
  const specs = GROUPS[name] as Record<string, VerbSpec>;
  return new Proxy(group, {
    get(inner, prop) {
      const value = Reflect.get(inner, prop, inner);
      if (typeof value !== 'function' || typeof prop !== 'string' || !Object.hasOwn(specs, prop))
        return value;
      return wrapVerb(value, inner, target, `${name}.${prop}`, specs[prop] as VerbSpec, deadlineMs);
    },
  });
}

function wrapSession(session: TargetSession, target: string, deadlineMs: number): TargetSession {
  return new Proxy(session, {
    get(inner, prop) {
      const value = Reflect.get(inner, prop, inner);
      if (typeof prop === 'string' && Object.hasOwn(GROUPS, prop) && value && typeof value === 'object') {
        return wrapGroup(value, prop as keyof typeof GROUPS, target, deadlineMs);
      }
      if (typeof value !== 'function' || !Object.hasOwn(VERBS, prop)) return value;
      const verb = prop as SessionVerb;
      return wrapVerb(value, inner, target, verb, VERBS[verb], deadlineMs);
    },
  });
}

/** The driver with the middleware around its admin login and every session it opens. */
export function withMiddleware(driver: TargetDriver): TargetDriver {
  return {
    ...driver,
    async open(connection, admin, options) {
      noteSecret(admin.password);
      const session = await fenced(() => driver.open(connection, admin, options)).catch((err: unknown) => {
        throw fenceRefusal(err, driver.type);
      });
      return wrapSession(session, driver.type, DEADLINE_STEPS * options.timeoutMs);
    },
  };
}
