// Durations as Keyturn's inputs write them ("30d", "15m"): schedules, grace periods, lease TTLs, configuration.
// At the bottom of the layers, since configuration parses them too.
const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
export const DURATION_PATTERN = '^[1-9][0-9]{0,8}[smhd]$';

/** Ten years: longer intervals are mistakes, and would overflow the dates they are added to. */
export const MAX_DURATION_MS = 3650 * 86_400_000;

/** "30d" → milliseconds. */
export function parseDuration(text: string): number {
  const m = /^([1-9][0-9]{0,8})([smhd])$/.exec(text);
  if (!m)
    throw new RangeError(`"${text}" is not a duration: a whole number followed by s, m, h or d (e.g. "30d")`);
  const ms = Number(m[1]) * UNITS[m[2]!]!;
  if (ms > MAX_DURATION_MS) throw new RangeError(`"${text}" is longer than the 3650 days a duration may be`);
  return ms;
}
