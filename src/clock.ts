// The time that policy is judged by (credential age, overdue). Injected in-process only (RuntimeOptions.clock), so
// that tests can move it days ahead; deliberately not an environment variable, so that no deployment can shift
// the time its compliance report is computed at.
export interface Clock {
  /** Milliseconds since the epoch, like Date.now(). */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };
