import { describe, expect, it } from 'vitest';
import { DURATION_PATTERN, parseDuration } from '../../src/config/duration.ts';
import type { Schedule } from '../../src/registry/types.ts';
import { isValidTimezone, nextRun, validateSchedule } from '../../src/scheduling/schedule.ts';

describe('parseDuration', () => {
  it.each([
    ['1s', 1000],
    ['45s', 45_000],
    ['1m', 60_000],
    ['30m', 1_800_000],
    ['1h', 3_600_000],
    ['12h', 43_200_000],
    ['1d', 86_400_000],
    ['30d', 2_592_000_000],
    ['3650d', 3650 * 86_400_000],
  ])('%s = %i ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each([
    '',
    '0s',
    '01s',
    '0d',
    '1',
    's',
    '1w',
    '1y',
    '1ms',
    '1.5h',
    '1 s',
    ' 1s',
    '1s ',
    '-1s',
    '+1s',
    '1S',
    '1D',
    '1000000000s',
    '1h30m',
    '٣s',
  ])('rejects %j with a RangeError that quotes the input', (text) => {
    expect(() => parseDuration(text)).toThrow(RangeError);
    expect(() => parseDuration(text)).toThrow(`"${text}" is not a duration`);
  });

  it('DURATION_PATTERN (used by the API schema) accepts and rejects the same texts', () => {
    const re = new RegExp(DURATION_PATTERN);
    for (const ok of ['1s', '30d', '999999999h']) expect(re.test(ok)).toBe(true);
    for (const bad of ['0s', '01s', '1w', '1000000000s', '1.5h']) expect(re.test(bad)).toBe(false);
  });
});

describe('isValidTimezone', () => {
  it('accepts IANA zones and refuses others', () => {
    for (const tz of ['UTC', 'Europe/London', 'America/New_York', 'Asia/Kolkata'])
      expect(isValidTimezone(tz)).toBe(true);
    for (const tz of ['Mars/Olympus_Mons', 'Europe/Londres', '', 'GMT+25'])
      expect(isValidTimezone(tz)).toBe(false);
  });
});

describe('validateSchedule', () => {
  it('accepts valid schedules', () => {
    const valid: Schedule[] = [
      { every: '30d' },
      { every: '1s', window: '1h', jitter: '1s' },
      { every: '30d', jitter: '30d' },
      { cron: '0 3 * * 1' },
      { cron: '0 3 * * 1', timezone: 'Europe/London', window: '6h', jitter: '30m' },
      { cron: '*/15 9-17 1,15 * mon-fri', timezone: 'America/New_York' },
      { cron: ' 0 3 * * 1 ' },
    ];
    for (const s of valid) expect(validateSchedule(s), JSON.stringify(s)).toEqual([]);
  });

  it.each(['0s', '1w', 'often', ''])('every=%j: one problem naming schedule.every', (every) => {
    const problems = validateSchedule({ every });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^schedule\.every\b/);
  });

  it('names the field with the given prefix', () => {
    expect(validateSchedule({ every: 'x' }, 'credentials[3].schedule')[0]).toMatch(
      /^credentials\[3\]\.schedule\.every/,
    );
    expect(validateSchedule({ cron: '0 3 * * 1', jitter: 'x' }, 'spec')[0]).toMatch(/^spec\.jitter/);
  });

  it.each(['0 3 * *', '0 0 3 * * 1', '3', '@daily', ''])(
    'cron %j with the wrong number of fields',
    (cron) => {
      const problems = validateSchedule({ cron });
      expect(problems).toHaveLength(1);
      expect(problems[0]).toMatch(/^schedule\.cron\b/);
    },
  );

  it('a six-field cron (seconds) is refused with the five-field rule', () => {
    expect(validateSchedule({ cron: '0 0 3 * * 1' })).toEqual([
      'schedule.cron must have five fields (minute hour day-of-month month day-of-week)',
    ]);
  });

  it.each([
    '61 3 * * 1',
    '0 25 * * 1',
    '0 3 32 * *',
    '0 3 * 13 *',
    '0 3 * * 8',
    'a b c d e',
    '0 3 * * 1 2026',
  ])('bad cron %j: one problem naming schedule.cron and quoting it', (cron) => {
    const problems = validateSchedule({ cron });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^schedule\.cron\b/);
  });

  it('bad cron values are quoted in the problem', () => {
    expect(validateSchedule({ cron: '61 3 * * 1' })[0]).toContain('"61 3 * * 1" is not a cron expression');
  });

  it.each(['Mars/Olympus_Mons', 'Europe/Londres', 'GMT+25'])(
    'timezone %j: one problem naming schedule.timezone',
    (timezone) => {
      const problems = validateSchedule({ cron: '0 3 * * 1', timezone });
      expect(problems).toHaveLength(1);
      expect(problems[0]).toMatch(/^schedule\.timezone\b/);
      expect(problems[0]).toContain(timezone);
    },
  );

  it.each(['window', 'jitter'] as const)('a bad %s is one problem naming it', (key) => {
    for (const value of ['0s', 'soon', '1w', '']) {
      for (const base of [{ every: '1d' }, { cron: '0 3 * * 1' }]) {
        const problems = validateSchedule({ ...base, [key]: value } as Schedule);
        expect(problems, `${key}=${value}`).toHaveLength(1);
        expect(problems[0]).toMatch(new RegExp(`^schedule\\.${key}\\b`));
      }
    }
  });

  it('reports every problem at once', () => {
    const problems = validateSchedule({ every: '0d', window: 'x', jitter: 'y' });
    expect(problems).toHaveLength(3);
    expect(problems[0]).toMatch(/^schedule\.every/);
    expect(problems[1]).toMatch(/^schedule\.window/);
    expect(problems[2]).toMatch(/^schedule\.jitter/);
    const cronProblems = validateSchedule({ cron: '0 3 * * 1', timezone: 'Nowhere/Here', window: '1w' });
    expect(cronProblems).toHaveLength(2);
  });

  // Regression test (found by review, fixed): durations up to 999999999d are accepted, but
  // anything beyond ~100,000,000 days (Date's range is ±8.64e15 ms) makes nextRun return an Invalid Date, and
  // 999999999d (8.64e16 ms) is also beyond Number.MAX_SAFE_INTEGER. service/registry-service.ts then calls
  // .toISOString() on it (RangeError: Invalid time value) when the credential is created. validateSchedule must
  // refuse an interval nextRun cannot represent.
  it('refuses intervals too long to be scheduled (their next run would not be a date)', () => {
    for (const every of ['999999999h', '100000000d', '999999999d', '3651d']) {
      const problems = validateSchedule({ every });
      expect(problems, every).toHaveLength(1);
      expect(problems[0]).toMatch(/^schedule\.every: .*3650 days/);
    }
    expect(() => parseDuration('999999999s')).toThrow(/longer than the 3650 days/);
  });
});

describe('nextRun', () => {
  it('every: the interval after the given instant (the last rotation)', () => {
    const from = new Date('2026-02-27T10:15:30.250Z');
    expect(nextRun({ every: '30d' }, from).toISOString()).toBe('2026-03-29T10:15:30.250Z');
    expect(nextRun({ every: '90m' }, from).toISOString()).toBe('2026-02-27T11:45:30.250Z');
    expect(nextRun({ every: '1s' }, from).toISOString()).toBe('2026-02-27T10:15:31.250Z');
    // Plain elapsed time: 1d across the London DST change is 24 h, not "same wall-clock time".
    expect(nextRun({ every: '1d' }, new Date('2026-03-28T12:00:00Z')).toISOString()).toBe(
      '2026-03-29T12:00:00.000Z',
    );
  });

  it('cron without a timezone runs in UTC', () => {
    // 2026-03-24 is a Tuesday; the next Monday is 30 March.
    expect(nextRun({ cron: '0 3 * * 1' }, new Date('2026-03-24T00:00:00Z')).toISOString()).toBe(
      '2026-03-30T03:00:00.000Z',
    );
  });

  it('cron in Europe/London follows the spring DST change', () => {
    // UK clocks go forward on the last Sunday of March: Sunday 29 March 2026 at 01:00 UTC, from GMT (UTC+0)
    // to BST (UTC+1).
    //  - Monday 23 March 2026, 03:00 London is still GMT  → 03:00 UTC.
    //  - Monday 30 March 2026, 03:00 London is now BST    → 02:00 UTC.
    // An implementation that ignored the zone (or applied a fixed offset) would give 03:00Z for both.
    expect(
      nextRun(
        { cron: '0 3 * * 1', timezone: 'Europe/London' },
        new Date('2026-03-20T00:00:00Z'),
      ).toISOString(),
    ).toBe('2026-03-23T03:00:00.000Z');
    expect(
      nextRun(
        { cron: '0 3 * * 1', timezone: 'Europe/London' },
        new Date('2026-03-24T00:00:00Z'),
      ).toISOString(),
    ).toBe('2026-03-30T02:00:00.000Z');
  });

  it('cron in Europe/London follows the autumn DST change', () => {
    // UK clocks go back on the last Sunday of October: Sunday 25 October 2026 at 01:00 UTC, BST → GMT.
    //  - Monday 19 October 2026, 03:00 BST → 02:00 UTC.
    //  - Monday 26 October 2026, 03:00 GMT → 03:00 UTC.
    expect(
      nextRun(
        { cron: '0 3 * * 1', timezone: 'Europe/London' },
        new Date('2026-10-13T00:00:00Z'),
      ).toISOString(),
    ).toBe('2026-10-19T02:00:00.000Z');
    expect(
      nextRun(
        { cron: '0 3 * * 1', timezone: 'Europe/London' },
        new Date('2026-10-20T00:00:00Z'),
      ).toISOString(),
    ).toBe('2026-10-26T03:00:00.000Z');
  });

  it('chains across the change: each run is strictly after the previous one', () => {
    const s: Schedule = { cron: '0 3 * * 1', timezone: 'Europe/London' };
    const runs: string[] = [];
    let at = new Date('2026-03-16T12:00:00Z');
    for (let i = 0; i < 4; i++) {
      at = nextRun(s, at);
      runs.push(at.toISOString());
    }
    expect(runs).toEqual([
      '2026-03-23T03:00:00.000Z',
      '2026-03-30T02:00:00.000Z',
      '2026-04-06T02:00:00.000Z',
      '2026-04-13T02:00:00.000Z',
    ]);
  });

  it('cron in another zone: America/New_York (UTC-4 in summer)', () => {
    // Wednesday 1 July 2026, 09:30 EDT = 13:30 UTC.
    expect(
      nextRun(
        { cron: '30 9 * * *', timezone: 'America/New_York' },
        new Date('2026-07-01T00:00:00Z'),
      ).toISOString(),
    ).toBe('2026-07-01T13:30:00.000Z');
  });
});

describe('finding 8: a jitter longer than the interval is refused', () => {
  it('for every and for cron (the shortest gap between slots), naming both', () => {
    expect(validateSchedule({ every: '1h', jitter: '61m' })[0]).toMatch(
      /^schedule\.jitter \(61m\) must not be longer than the time between two rotations \(3600s\)/,
    );
    expect(validateSchedule({ every: '1h', jitter: '60m' })).toEqual([]);
    // Weekdays at 03:00: the shortest gap is a day.
    expect(validateSchedule({ cron: '0 3 * * 1-5', jitter: '25h' })[0]).toMatch(/86400s/);
    expect(validateSchedule({ cron: '0 3 * * 1-5', jitter: '24h' })).toEqual([]);
  });
});
