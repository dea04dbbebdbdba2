// The time that policy is judged by (credential age, overdue), and that the records policy reads are stamped with
// (the rotation engine's rotatedAt, a rotation's start and end; the archive's days; the read cache's ages). Injected
// in-process only (RuntimeOptions.clock), so that tests can move it days ahead; deliberately not an environment
// variable, so that no deployment can shift the time its compliance report is computed at.
//
// Times that another system keeps stay on the system clock on purpose: BullMQ's delays and Redis's key expiries (the
// execution lease, the due-time index's claims) run on real time, as do a lease's expiry in the downstream
// (PostgreSQL's VALID UNTIL) and a JWT's exp, which its issuer set. Moving those by a test's clock would make a delay
// fire early or a token valid that has expired.
export interface Clock {
  /** Milliseconds since the epoch, like Date.now(). */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };
