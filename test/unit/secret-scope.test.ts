// Finding 10 of issue 11: the scrubber knows every secret an operation touched, on every path.
import { describe, expect, it } from 'vitest';
import { scrubText } from '../../src/crypto/scrub.ts';
import {
  noteSecret,
  runInNewSecretScope,
  scrubJsonLine,
  secretsInScope,
} from '../../src/crypto/secret-scope.ts';

describe('finding 10: secret scope', () => {
  it('scrubText cuts the secrets noted in the current operation, and only there', async () => {
    const secret = 'Sup3r-secret-admin-pw';
    noteSecret(secret); // outside any scope: nothing to remember
    expect(secretsInScope()).toEqual([]);
    await runInNewSecretScope(async () => {
      noteSecret(secret);
      await new Promise((done) => setTimeout(done, 1));
      expect(scrubText(`login failed: got "${secret}"`)).toBe('login failed: got "[redacted]"');
    });
    expect(scrubText(`got ${secret}`)).toBe(`got ${secret}`);
  });

  it('keeps concurrent operations apart', async () => {
    const seen = await Promise.all(
      ['first-secret-value', 'second-secret-value'].map((s) =>
        runInNewSecretScope(async () => {
          noteSecret(s);
          await new Promise((done) => setTimeout(done, 5));
          return secretsInScope();
        }),
      ),
    );
    expect(seen).toEqual([['first-secret-value'], ['second-secret-value']]);
  });

  it('scrubs a JSON log line, escaped forms included, and leaves it valid JSON', () => {
    const secret = 'pa"ss\\word-with-quote';
    runInNewSecretScope(() => {
      noteSecret(secret);
      const line = JSON.stringify({ msg: `echo ${secret}`, err: { message: secret } });
      const out = scrubJsonLine(line);
      expect(out).not.toContain(JSON.stringify(secret).slice(1, -1));
      expect(JSON.parse(out)).toEqual({ msg: 'echo [redacted]', err: { message: '[redacted]' } });
    });
  });

  it('ignores values too short to be secrets Keyturn handles', () => {
    runInNewSecretScope(() => {
      noteSecret('abc');
      noteSecret(42);
      expect(secretsInScope()).toEqual([]);
    });
  });
});
