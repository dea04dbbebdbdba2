import { describe, expect, it } from 'vitest';
import { scrubError, scrubText } from '../../src/crypto/scrub.ts';

const SECRET = 'S3cretPw9';

describe('scrubText: known secrets', () => {
  it('cuts every occurrence of a known secret', () => {
    const out = scrubText(`login with ${SECRET} failed; retry with ${SECRET}`, [SECRET]);
    expect(out).toBe('login with [redacted] failed; retry with [redacted]');
  });

  it('cuts the longest secret first when one contains another', () => {
    // Shortest first would leave "[redacted]-suffix".
    expect(scrubText('value abcd-suffix here', ['abcd', 'abcd-suffix'])).toBe('value [redacted] here');
    expect(scrubText('value abcd-suffix here', ['abcd-suffix', 'abcd'])).toBe('value [redacted] here');
    // …and the shorter one is still cut where it stands alone.
    expect(scrubText('abcd and abcd-suffix', ['abcd', 'abcd-suffix'])).toBe('[redacted] and [redacted]');
  });

  it('ignores secrets shorter than 4 characters and undefined entries', () => {
    expect(scrubText('a tab about abc', ['ab', 'abc', '', undefined])).toBe('a tab about abc');
    expect(scrubText('wxyz is four', ['wxyz'])).toBe('[redacted] is four');
  });

  it('takes secrets from any iterable', () => {
    expect(scrubText(`x ${SECRET} y`, new Set([SECRET]))).toBe('x [redacted] y');
  });

  it('treats secrets literally (no regular-expression meaning)', () => {
    expect(scrubText('a.b*c+d? and axbbbcd', ['a.b*c+d?'])).toBe('[redacted] and axbbbcd');
  });
});

describe('scrubText: credential-shaped text', () => {
  it.each([
    [
      'connect postgres://app:S3cretPw9@db.internal:5432/pay failed',
      'postgres://app:[redacted]@db.internal:5432/pay',
    ],
    ['redis://:S3cretPw9@cache:6379/0', 'redis://:[redacted]@cache:6379/0'],
    ['rediss://default:S3cretPw9@cache:6380', 'rediss://default:[redacted]@cache:6380'],
    ['POSTGRESQL://APP:S3cretPw9@HOST/db', 'POSTGRESQL://APP:[redacted]@HOST/db'],
  ])('URL credentials: %s', (input, expected) => {
    const out = scrubText(input);
    expect(out).not.toContain(SECRET);
    expect(out).toContain(expected);
  });

  it.each([
    ["ALTER ROLE app WITH LOGIN PASSWORD 'S3cretPw9'", "ALTER ROLE app WITH LOGIN PASSWORD '[redacted]'"],
    [
      "alter role app password 'S3cret''Pw9' valid until 'infinity'",
      "alter role app password '[redacted]' valid until 'infinity'",
    ],
    ["ALTER ROLE app PASSWORD E'S3cretPw9'", "ALTER ROLE app PASSWORD '[redacted]'"],
    ['ALTER USER app PASSWORD "S3cretPw9"', "ALTER USER app PASSWORD '[redacted]'"],
    ["CREATE USER 'app'@'%' IDENTIFIED BY 'S3cretPw9'", "CREATE USER 'app'@'%' IDENTIFIED BY '[redacted]'"],
    ["ALTER USER app identified   by 'S3cretPw9'", "ALTER USER app identified   by '[redacted]'"],
  ])('SQL echoes: %s', (input, expected) => {
    const out = scrubText(input);
    expect(out).toBe(expected);
    expect(out).not.toMatch(/S3cret|Pw9/);
  });

  it.each([
    ['host=db password=S3cretPw9 user=app', 'host=db password=[redacted] user=app'],
    ['password = S3cretPw9, next', 'password = [redacted], next'],
    ['{"user":"app","password":"S3cretPw9"}', '{"user":"app","password":[redacted]}'],
    ["{'password': 'S3cretPw9'}", "{'password': [redacted]}"],
    ['{"password":"S3cret\\"Pw9"}', '{"password":[redacted]}'],
    ['token: S3cretPw9', 'token: [redacted]'],
    ['Token=S3cretPw9&x=1', 'Token=[redacted]&x=1'],
    ['pwd=S3cretPw9;', 'pwd=[redacted];'],
    ['passwd: S3cretPw9', 'passwd: [redacted]'],
    ['secret=S3cretPw9', 'secret=[redacted]'],
    ['api_key=S3cretPw9', 'api_key=[redacted]'],
    ['apiKey: S3cretPw9', 'apiKey: [redacted]'],
    ['x-api-key: S3cretPw9', 'x-api-key: [redacted]'],
    ['client_secret=S3cretPw9', 'client_secret=[redacted]'],
  ])('key = value: %s', (input, expected) => {
    const out = scrubText(input);
    expect(out).toBe(expected);
    expect(out).not.toMatch(/S3cret|Pw9/);
  });

  it('Redis ACL ">password" rules', () => {
    expect(scrubText('ERR in ACL SETUSER app on >S3cretPw9 ~* +@all')).toBe(
      'ERR in ACL SETUSER app on >[redacted] ~* +@all',
    );
    expect(scrubText('ACL SETUSER app reset on >one-Pw9 >two-Pw9 &*')).toBe(
      'ACL SETUSER app reset on >[redacted] >[redacted] &*',
    );
  });

  it.each([
    [
      'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl',
      'Authorization: Bearer [redacted]',
    ],
    ['Bearer S3cretPw9/+=-_.~ rest', 'Bearer [redacted] rest'],
    ['Authorization: Basic YXBwOlMzY3JldFB3OQ==', 'Authorization: Basic [redacted]'],
  ])('HTTP credentials: %s', (input, expected) => {
    expect(scrubText(input)).toBe(expected);
  });

  it.each([
    'if a >= b then fail',
    'expected x > y and 1 >= 0',
    'arrow -> here',
    'password authentication failed for user "app"',
    'no password supplied',
    'the password is wrong and the token expired',
    'Connection refused (ECONNREFUSED) at 10.0.0.5:5432',
    'see https://example.com:8443/docs?page=2#top',
    'role "app" does not exist',
    'SQLSTATE 28P01: invalid_password',
    'timeout after 3000 ms; 5 tokens left',
  ])('leaves ordinary text alone: %s', (input) => {
    expect(scrubText(input)).toBe(input);
  });

  it('applies known secrets and patterns together', () => {
    const out = scrubText(`user app: ${SECRET} rejected; dsn postgres://app:other-pw@h/db`, [SECRET]);
    expect(out).toBe('user app: [redacted] rejected; dsn postgres://app:[redacted]@h/db');
  });

  // Regression test (found by review, fixed): the key=value pattern puts \b before the key, and "_" is a word character,
  // so prefixed keys never match: DB_PASSWORD=…, PGPASSWORD=…, access_token=…, refresh_token=…, "access_token":"…"
  // (an OAuth token response) pass through in clear. scrubError(err) is called without known secrets in
  // api/errors.ts and api/routes/health.ts, so these patterns are the only protection there.
  it.each([
    'DB_PASSWORD=S3cretPw9 rejected',
    'PGPASSWORD=S3cretPw9 psql -h db',
    'access_token=S3cretPw9&expires_in=3600',
    '{"access_token":"S3cretPw9","token_type":"bearer"}',
    'refresh_token: S3cretPw9',
  ])('redacts credential keys with a prefix: %s', (input) => {
    expect(scrubText(input)).not.toContain(SECRET);
  });

  // Regression test (found by review, fixed): the Bearer/Basic pattern has no "i" flag, but HTTP authentication schemes
  // are case-insensitive (RFC 9110 §11.1) and many clients send "bearer"; such tokens are not redacted.
  it('redacts a lowercase "bearer" token', () => {
    expect(scrubText('authorization: bearer S3cretPw9')).not.toContain(SECRET);
  });

  // Regression test (found by review, fixed): the URL password is matched by [^@\s]*@, which stops at the first "@",
  // so a password containing "@" (unencoded, as drivers echo it) leaks everything after that "@".
  it('redacts the whole URL password when it contains "@"', () => {
    const out = scrubText('connect postgres://app:S3c@retPw9@db:5432/pay failed');
    expect(out).not.toContain('retPw9');
    expect(out).toContain('@db:5432/pay');
  });
});

describe('scrubError', () => {
  it('keeps a safe code and scrubs the message', () => {
    const err = Object.assign(new Error(`password authentication failed, tried ${SECRET}`), {
      code: '28P01',
    });
    expect(scrubError(err, [SECRET])).toEqual({
      code: '28P01',
      message: 'password authentication failed, tried [redacted]',
    });
    const errno = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
    expect(scrubError(errno).code).toBe('ECONNREFUSED');
  });

  it.each([
    ['spaces', 'bad code'],
    ['a URL', 'postgres://app:S3cretPw9@db'],
    ['too long', 'X'.repeat(41)],
    ['empty', ''],
    ['quotes', 'a"b'],
  ])('drops an unsafe code (%s)', (_what, code) => {
    const out = scrubError(Object.assign(new Error('boom'), { code }));
    expect(out).toEqual({ message: 'boom' });
    expect('code' in out).toBe(false);
  });

  it('drops a non-string code', () => {
    expect(scrubError(Object.assign(new Error('boom'), { code: 42 }))).toEqual({ message: 'boom' });
    expect(scrubError(Object.assign(new Error('boom'), { code: { toString: () => 'X' } }))).toEqual({
      message: 'boom',
    });
  });

  it('keeps a code of exactly 40 safe characters', () => {
    const code = 'A'.repeat(40);
    expect(scrubError(Object.assign(new Error('boom'), { code })).code).toBe(code);
  });

  it('truncates the message to 1000 characters, after scrubbing (no half secret at the cut)', () => {
    expect(scrubError(new Error('x'.repeat(5000))).message).toHaveLength(1000);
    // The secret straddles position 1000: cutting first would leave "S3cre" at the end.
    const message = `${'a'.repeat(995)}${SECRET}${'b'.repeat(10)}`;
    const out = scrubError(new Error(message), [SECRET]);
    expect(out.message).toHaveLength(1000);
    expect(out.message).not.toContain('S3cr');
    expect(out.message.endsWith('[reda')).toBe(true);
    expect(scrubError(`${'a'.repeat(995)}${SECRET}`, [SECRET]).message).not.toContain('S3cr');
  });

  it('uses the error name when the message is empty', () => {
    class TimeoutError extends Error {
      override name = 'TimeoutError';
    }
    expect(scrubError(new TimeoutError('')).message).toBe('TimeoutError');
  });

  it('returns only code and message, never the original error (stack, cause, extra fields)', () => {
    const err = Object.assign(new Error('boom', { cause: new Error(SECRET) }), {
      code: 'E1',
      password: SECRET,
      config: { connectionString: `postgres://a:${SECRET}@h` },
    });
    const out = scrubError(err);
    expect(Object.keys(out).sort()).toEqual(['code', 'message']);
    expect(JSON.stringify(out)).not.toContain(SECRET);
  });

  it('handles non-Error throws', () => {
    expect(scrubError(`postgres://app:${SECRET}@db failed`)).toEqual({
      message: 'postgres://app:[redacted]@db failed',
    });
    expect(scrubError(`tried ${SECRET}`, [SECRET])).toEqual({ message: 'tried [redacted]' });
    expect(scrubError(42)).toEqual({ message: '42' });
    expect(scrubError(undefined)).toEqual({ message: 'undefined' });
    expect(scrubError(null)).toEqual({ message: 'null' });
    expect(scrubError(Symbol('boom'))).toEqual({ message: 'Symbol(boom)' });
    // An error-shaped plain object is not an Error: its code is not trusted and its fields are not copied.
    const plain = { message: `password=${SECRET}`, code: 'E1', password: SECRET };
    const out = scrubError(plain);
    expect(out).toEqual({ message: '[object Object]' });
    expect(scrubError('x'.repeat(2000)).message).toHaveLength(1000);
  });

  // Regression test (found by review, fixed): String(err) throws for values without a usable toString — an object with a
  // null prototype, or one whose toString throws — so scrubError, which runs inside catch blocks and error
  // handlers (engine.ts, api/errors.ts), throws a TypeError instead of "reducing any thrown value".
  it('does not throw for a thrown value that cannot be converted to a string', () => {
    const nullProto = Object.assign(Object.create(null) as object, { password: SECRET });
    const hostile = {
      toString() {
        throw new Error(SECRET);
      },
    };
    for (const value of [nullProto, hostile]) {
      let out: ReturnType<typeof scrubError> | undefined;
      expect(() => {
        out = scrubError(value);
      }).not.toThrow();
      expect(typeof out?.message).toBe('string');
      expect(out?.message).not.toContain(SECRET);
    }
  });
});
