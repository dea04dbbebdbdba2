// Finding 9 of issue 11: the secret read's cache hint ran to the next scheduled rotation (a month), so a password
// cached before a manual rotation was refused once the grace period ended. SPEC's "Cache hint" bounds it.
import { describe, expect, it } from 'vitest';
import { secretCacheMaxAge } from '../../src/rotation/cache-hint.ts';

const now = Date.parse('2026-12-03T00:00:00Z');
const inDays = (d: number) => new Date(now + d * 86_400_000).toISOString();

describe('finding 9: secretCacheMaxAge', () => {
  it('is at most KEYTURN_SECRET_MAX_AGE, not the month to the next rotation', () => {
    expect(secretCacheMaxAge({ rotating: false, nextRotationAt: inDays(30), maxAgeMs: 300_000, now })).toBe(
      300,
    );
  });
  it('is at most half the grace period', () => {
    expect(
      secretCacheMaxAge({
        rotating: false,
        nextRotationAt: inDays(30),
        gracePeriod: '1m',
        maxAgeMs: 300_000,
        now,
      }),
    ).toBe(30);
  });
  it('never runs past the next rotation, and is 0 once it is due or while rotating', () => {
    const soon = new Date(now + 42_000).toISOString();
    expect(secretCacheMaxAge({ rotating: false, nextRotationAt: soon, maxAgeMs: 300_000, now })).toBe(42);
    expect(secretCacheMaxAge({ rotating: false, nextRotationAt: inDays(-1), maxAgeMs: 300_000, now })).toBe(
      0,
    );
    expect(secretCacheMaxAge({ rotating: true, nextRotationAt: inDays(30), maxAgeMs: 300_000, now })).toBe(0);
  });
  it('without a planned rotation, the configured maximum (0 turns caching off)', () => {
    expect(secretCacheMaxAge({ rotating: false, maxAgeMs: 120_000, now })).toBe(120);
    expect(secretCacheMaxAge({ rotating: false, maxAgeMs: 0, now })).toBe(0);
  });
  it('is 0, never NaN, when a bound cannot be read', () => {
    expect(secretCacheMaxAge({ rotating: false, nextRotationAt: 'not a date', maxAgeMs: 300_000, now })).toBe(
      0,
    );
    expect(secretCacheMaxAge({ rotating: false, gracePeriod: 'soon', maxAgeMs: 300_000, now })).toBe(0);
  });
});
