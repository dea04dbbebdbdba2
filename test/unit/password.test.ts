import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DEFAULT_PASSWORD_POLICY, generatePassword, type PasswordPolicy } from '../../src/crypto/password.ts';

const LOWER = 'abcdefghijklmnopqrstuvwxyz';
const UPPER = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';
const DIGITS = '0123456789';
const SYMBOLS = '!*+,-.<=>^_{|}~()[]';
const ALPHANUMERIC = LOWER + UPPER + DIGITS;

const ALPHABETS: Record<PasswordPolicy['charset'], string> = {
  alphanumeric: ALPHANUMERIC,
  'ascii-printable': ALPHANUMERIC + SYMBOLS,
  hex: '0123456789abcdef',
  base64url: `${ALPHANUMERIC}-_`,
};

const CLASSES: Record<PasswordPolicy['charset'], string[]> = {
  alphanumeric: [LOWER, UPPER, DIGITS],
  'ascii-printable': [LOWER, UPPER, DIGITS, SYMBOLS],
  hex: ['0123456789abcdef'],
  base64url: [LOWER, UPPER, DIGITS, '-_'],
};

const CHARSETS = Object.keys(ALPHABETS) as PasswordPolicy['charset'][];

/** Pearson's chi-square statistic of observed counts against a uniform distribution over `alphabet`. */
function chiSquareUniform(sample: string, alphabet: string): number {
  const counts = new Map<string, number>([...alphabet].map((c) => [c, 0]));
  for (const c of sample) {
    const n = counts.get(c);
    if (n === undefined) throw new Error(`character ${JSON.stringify(c)} is outside the alphabet`);
    counts.set(c, n + 1);
  }
  const expected = sample.length / alphabet.length;
  let stat = 0;
  for (const observed of counts.values()) stat += (observed - expected) ** 2 / expected;
  return stat;
}

// Critical value of the chi-square distribution with 61 degrees of freedom (62 categories - 1) for an upper-tail
// probability of 1e-6, i.e. the x with P(X > x) = 1e-6. Computed with SciPy: `scipy.stats.chi2.isf(1e-6, 61)`
// = 128.5242…, cross-checked with mpmath: the regularized upper incomplete gamma Q(61/2, 128.53/2) = 9.984e-7.
// Rounded up to 128.53 so that the false-alarm rate of the test stays below one in a million.
const CHI2_CRITICAL_DF61_P1E6 = 128.53;
const SAMPLE_CHARS = 200_000;

describe('generatePassword', () => {
  it.each(CHARSETS)('gives the requested length using only the %s alphabet', (charset) => {
    const alphabet = new Set(ALPHABETS[charset]);
    for (const length of [16, 17, 40, 255, 256]) {
      for (const requireEachClass of [false, true]) {
        const password = generatePassword({ length, charset, requireEachClass });
        expect(password).toHaveLength(length);
        for (const c of password) expect(alphabet.has(c), `${JSON.stringify(c)} in ${charset}`).toBe(true);
      }
    }
  });

  it.each(CHARSETS)('draws every character of the %s alphabet (none is left out)', (charset) => {
    const seen = new Set<string>();
    for (let i = 0; i < 100; i++) for (const c of generatePassword({ length: 256, charset })) seen.add(c);
    // 25,600 draws over at most 81 characters: the chance that a character never appears is below 81 * e^-316.
    expect([...seen].sort().join('')).toBe([...ALPHABETS[charset]].sort().join(''));
  });

  it('never uses characters that break connection strings, shells or SQL quoting', () => {
    const forbidden = /[\s'"\\`$@/:;%?#&]/;
    for (let i = 0; i < 200; i++) {
      expect(generatePassword({ length: 256, charset: 'ascii-printable' })).not.toMatch(forbidden);
    }
  });

  it.each(CHARSETS.filter((c) => CLASSES[c].length > 1))(
    'requireEachClass puts at least one character of each %s class in every password',
    (charset) => {
      // Length 16 makes a missing class likely without the requirement: for base64url the chance that a
      // password has neither "-" nor "_" is (62/64)^16 ≈ 0.60, so 500 passwords would show it.
      for (let i = 0; i < 500; i++) {
        const password = generatePassword({ length: 16, charset, requireEachClass: true });
        for (const cls of CLASSES[charset]) {
          expect(
            [...password].some((c) => cls.includes(c)),
            `${password} has one of ${cls}`,
          ).toBe(true);
        }
      }
    },
  );

  it('without requireEachClass a class can be missing (the requirement is what guarantees it)', () => {
    const missing = Array.from({ length: 500 }, () =>
      generatePassword({ length: 16, charset: 'base64url', requireEachClass: false }),
    ).filter((p) => !/[-_]/.test(p));
    // Expected ≈ 300 of 500.
    expect(missing.length).toBeGreaterThan(100);
  });

  it('the default policy is 32 alphanumeric characters with one of each class', () => {
    expect(DEFAULT_PASSWORD_POLICY).toEqual({ length: 32, charset: 'alphanumeric', requireEachClass: true });
    for (let i = 0; i < 200; i++) {
      const password = generatePassword();
      expect(password).toMatch(/^[A-Za-z0-9]{32}$/);
      expect(password).toMatch(/[a-z]/);
      expect(password).toMatch(/[A-Z]/);
      expect(password).toMatch(/[0-9]/);
    }
  });

  it('passwords do not repeat', () => {
    const passwords = new Set(Array.from({ length: 1000 }, () => generatePassword()));
    expect(passwords.size).toBe(1000);
  });

  it.each([15, 0, -1, 257, 1000, 16.5, Number.NaN, Number.POSITIVE_INFINITY])(
    'rejects length %s',
    (length) => {
      expect(() => generatePassword({ length, charset: 'alphanumeric' })).toThrow(RangeError);
      expect(() => generatePassword({ length, charset: 'alphanumeric' })).toThrow(/16 to 256/);
    },
  );

  it('accepts the bounds 16 and 256', () => {
    expect(generatePassword({ length: 16, charset: 'hex' })).toHaveLength(16);
    expect(generatePassword({ length: 256, charset: 'hex' })).toHaveLength(256);
  });
});

describe('generatePassword has no modulo bias (chi-square goodness of fit)', () => {
  it('the hard-coded critical value is sane: the chi-square mean is 61 and sd is sqrt(122) ≈ 11', () => {
    // p = 1e-6 sits far out in the tail: about 6 standard deviations above the mean.
    expect(CHI2_CRITICAL_DF61_P1E6).toBeGreaterThan(61 + 5 * Math.sqrt(122));
    expect(CHI2_CRITICAL_DF61_P1E6).toBeLessThan(61 + 7 * Math.sqrt(122));
  });

  it('200k alphanumeric characters fit the uniform distribution', () => {
    let sample = '';
    while (sample.length < SAMPLE_CHARS) {
      sample += generatePassword({ length: 256, charset: 'alphanumeric', requireEachClass: false });
    }
    sample = sample.slice(0, SAMPLE_CHARS);
    const stat = chiSquareUniform(sample, ALPHANUMERIC);
    expect(stat).toBeLessThan(CHI2_CRITICAL_DF61_P1E6);
  });

  it('the same test rejects a generator with modulo bias (random byte % 62)', () => {
    // 256 = 4 * 62 + 8: the first 8 characters come out with probability 5/256, the other 54 with 4/256.
    // Expected statistic ≈ 1,300, ten times the critical value.
    const bytes = randomBytes(SAMPLE_CHARS);
    let sample = '';
    for (const b of bytes) sample += ALPHANUMERIC[b % 62];
    const stat = chiSquareUniform(sample, ALPHANUMERIC);
    expect(stat).toBeGreaterThan(CHI2_CRITICAL_DF61_P1E6);
  });
});
