// Schedules (SPEC): {"every": "30d"} or {"cron": "0 3 * * 1", "timezone": "Europe/London"}, each with an
// optional window (how late a missed slot may still run) and jitter (a random delay spreading rotations).
import { CronExpressionParser } from 'cron-parser';
import { parseDuration } from '../config/duration.ts';
import type { Schedule } from '../registry/types.ts';

export function isValidTimezone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-GB', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** Problems with a schedule, each naming its field; empty when valid. */
export function validateSchedule(schedule: Schedule, field = 'schedule'): string[] {
  const problems: string[] = [];
  if ('every' in schedule) {
    try {
      if (parseDuration(schedule.every) < 1000) problems.push(`${field}.every must be at least 1s`);
    } catch (err) {
      problems.push(`${field}.every: ${(err as Error).message}`);
    }
  } else {
    const tz = schedule.timezone ?? 'UTC';
    if (!isValidTimezone(tz))
      problems.push(`${field}.timezone: "${tz}" is not an IANA time zone (e.g. "Europe/London")`);
    else {
      try {
        CronExpressionParser.parse(schedule.cron, { tz });
        if (schedule.cron.trim().split(/\s+/).length !== 5) {
          problems.push(`${field}.cron must have five fields (minute hour day-of-month month day-of-week)`);
        }
      } catch (err) {
        problems.push(
          `${field}.cron: "${schedule.cron}" is not a cron expression (${(err as Error).message})`,
        );
      }
    }
  }
  for (const key of ['window', 'jitter'] as const) {
    const value = schedule[key];
    if (value !== undefined) {
      try {
        parseDuration(value);
      } catch (err) {
        problems.push(`${field}.${key}: ${(err as Error).message}`);
      }
    }
  }
  if (problems.length === 0 && schedule.jitter !== undefined) {
    // A jitter longer than the interval would push a rotation past the next one and leave it queued most of the time.
    const interval = shortestInterval(schedule);
    if (parseDuration(schedule.jitter) > interval) {
      problems.push(
        `${field}.jitter (${schedule.jitter}) must not be longer than the time between two rotations (${Math.round(interval / 1000)}s)`,
      );
    }
  }
  return problems;
}

/** The time between two scheduled rotations: `every`, or for cron the shortest gap among its next few slots. */
function shortestInterval(schedule: Schedule): number {
  if ('every' in schedule) return parseDuration(schedule.every);
  const it = CronExpressionParser.parse(schedule.cron, { tz: schedule.timezone ?? 'UTC' });
  const slots = Array.from({ length: 8 }, () => it.next().getTime());
  return Math.min(...slots.slice(1).map((t, i) => t - (slots[i] as number)));
}

/** The next scheduled rotation after `from` (for `every`: counted from the last rotation). */
export function nextRun(schedule: Schedule, from: Date): Date {
  if ('every' in schedule) return new Date(from.getTime() + parseDuration(schedule.every));
  const it = CronExpressionParser.parse(schedule.cron, { currentDate: from, tz: schedule.timezone ?? 'UTC' });
  return it.next().toDate();
}
