// How long a service may cache the secret it read (SPEC, "Cache hint"; finding 9 of issue 11). The hint used to run
// to the next scheduled rotation, a month away, and a manual rotation then cut a cached password off within its grace
// period. Rotations can come early (rotate-now, a policy change), so the hint is bounded three ways.
import { parseDuration } from '../config/duration.ts';

export interface CacheHintInput {
  /** A rotation is in flight: the answer may be stale in a moment. */
  rotating: boolean;
  /** The next scheduled rotation (ISO), when one is planned. */
  nextRotationAt?: string | undefined;
  /** The credential's grace period (a duration), during which the previous password still works after a rotation. */
  gracePeriod?: string | undefined;
  /** KEYTURN_SECRET_MAX_AGE: the longest hint Keyturn gives at all. */
  maxAgeMs: number;
  now: number;
}

/**
 * Seconds for `Cache-Control: private, max-age`: 0 while rotating; otherwise at most `maxAgeMs`, at most half the
 * grace period (a copy cached just before an early rotation then still works for the other half), and never past the
 * next scheduled rotation.
 */
export function secretCacheMaxAge(input: CacheHintInput): number {
  if (input.rotating) return 0;
  let ms = input.maxAgeMs;
  if (input.gracePeriod !== undefined) ms = Math.min(ms, graceMs(input.gracePeriod) / 2);
  if (input.nextRotationAt !== undefined) ms = Math.min(ms, Date.parse(input.nextRotationAt) - input.now);
  // A bound that cannot be read (NaN) means no caching rather than a header a client cannot parse.
  return Number.isFinite(ms) ? Math.max(0, Math.floor(ms / 1000)) : 0;
}

/** The grace period in ms; one that is not a duration (registration refuses those) allows no caching. */
function graceMs(gracePeriod: string): number {
  try {
    return parseDuration(gracePeriod);
  } catch {
    return 0;
  }
}
