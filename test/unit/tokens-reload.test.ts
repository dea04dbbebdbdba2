// The tokens file while the process runs: the watcher (src/auth/tokens-watcher.ts) notices changes by its stat poll
// alone or by fs.watch, puts valid files in force, and refuses bad ones once each, keeping the last good file; the
// authenticator swaps its entries and refuses removed tokens as revoked, and expired ones by name; administrator
// sources decide whether production may start without KEYTURN_ADMIN_TOKEN.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdtemp, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Authenticator } from '../../src/auth/authenticator.ts';
import type { Principal } from '../../src/auth/principal.ts';
import { administratorSources, parseTokensFile, type TokensFile } from '../../src/auth/tokens-file.ts';
import { type ReloadOutcome, TokensWatcher } from '../../src/auth/tokens-watcher.ts';
import { sha256Hex } from '../../src/crypto/tokens.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { waitFor } from '../support/harness.ts';

vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  return { ...actual, timingSafeEqual: vi.fn(actual.timingSafeEqual) };
});

const token = () => randomBytes(32).toString('base64url');
const entry = (name: string, value: string, extra = 'roles: [operator]') =>
  `  - {name: ${name}, sha256: ${sha256Hex(value)}, ${extra}}`;
const file = (...lines: string[]) => ['tokens:', ...lines, ''].join('\n');
const presented = (value: string) => ({ authorization: `Bearer ${value}`, certificateSubject: undefined });

function capture() {
  const lines: Array<{ level: number; msg: string; [k: string]: unknown }> = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { lines, logger: createLogger({ level: 'info', format: 'json', destination }) };
}

describe('TokensWatcher', () => {
  let dir: string;
  let path: string;
  let watcher: TokensWatcher | undefined;
  const a = token();
  const b = token();

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kt-watch-'));
    path = join(dir, 'tokens.yaml');
    await writeFile(path, file(entry('a', a)));
  });
  afterEach(async () => {
    watcher?.close();
    watcher = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  /** Polling every 50 ms; tests that call check() themselves poll never, so that nothing races them. */
  async function open(options: { watch: boolean; pollMs?: number }) {
    const { lines, logger } = capture();
    watcher = await TokensWatcher.open(path, { logger, pollMs: 50, debounceMs: 20, ...options });
    const applied: TokensFile[] = [];
    const outcomes: ReloadOutcome[] = [];
    watcher.start({
      apply: (next) => {
        applied.push(next);
        return { names: next.tokens.map((t) => t.name).join(',') };
      },
      onReload: (o) => outcomes.push(o),
    });
    return { watcher, lines, applied, outcomes };
  }

  it('notices a change by its stat poll alone (no fs.watch), and puts the file in force', async () => {
    const { watcher, applied, outcomes, lines } = await open({ watch: false });
    expect(watcher.current.tokens.map((t) => t.name)).toEqual(['a']);
    await writeFile(path, file(entry('a', a), entry('b', b)));
    await waitFor('the poll to apply the file', async () => applied.length === 1, 10_000, 20);
    expect(watcher.current.tokens.map((t) => t.name)).toEqual(['a', 'b']);
    expect(outcomes).toMatchObject([{ ok: true, summary: { names: 'a,b' } }]);
    expect(lines.find((l) => l.msg.startsWith('tokens file reloaded'))).toMatchObject({
      tokens: 2,
      names: 'a,b',
    });
    expect(watcher.status()).toMatchObject({ file: path, entries: { tokens: 2 } });
    expect(watcher.status().refused).toBeUndefined();
  });

  it('notices a file replaced by a rename through fs.watch on its folder', async () => {
    const { applied } = await open({ watch: true });
    await writeFile(`${path}.tmp`, file(entry('b', b)));
    await rename(`${path}.tmp`, path);
    await waitFor('the watch to apply the file', async () => applied.length === 1, 10_000, 20);
    expect(applied[0]?.tokens.map((t) => t.name)).toEqual(['b']);
  });

  it('refuses an invalid file once, keeps the last good one, and clears the refusal when fixed', async () => {
    const { watcher, applied, outcomes, lines } = await open({ watch: false, pollMs: 600_000 });
    await writeFile(path, file('  - {name: a, roles: [operator]}'));
    expect(await watcher.check()).toBe('refused');
    // Read again (a poll, a watch event): the same file is not reported again.
    expect(await watcher.check()).toBe('refused');
    expect(outcomes).toHaveLength(1);
    expect(outcomes[0]).toMatchObject({ ok: false, reason: 'tokens[0].sha256 is required' });
    expect(lines.filter((l) => l.msg.includes('refused on reload'))).toHaveLength(1);
    expect(watcher.status().refused?.reason).toBe('tokens[0].sha256 is required');
    expect(watcher.current.tokens.map((t) => t.name)).toEqual(['a']);
    expect(applied).toHaveLength(0);

    // Put back as it was: nothing to apply, nothing refused any more.
    await writeFile(path, file(entry('a', a)));
    expect(await watcher.check()).toBe('unchanged');
    expect(watcher.status().refused).toBeUndefined();
  });

  it('refuses a missing file and an emptied one (a half-written file looks the same)', async () => {
    const { watcher } = await open({ watch: false, pollMs: 600_000 });
    await unlink(path);
    expect(await watcher.check()).toBe('refused');
    expect(watcher.status().refused?.reason).toMatch(
      /cannot read .*tokens\.yaml \(KEYTURN_TOKENS_FILE\): the file does not exist/,
    );
    await writeFile(path, '# nothing yet\n');
    expect(await watcher.check()).toBe('refused');
    expect(watcher.status().refused?.reason).toMatch(/^the file is empty: refused on reload/);
    // "tokens: []" is how every entry is removed on purpose.
    await writeFile(path, 'tokens: []\n');
    expect(await watcher.check()).toBe('applied');
    expect(watcher.current.tokens).toEqual([]);
  });

  it('refuses a file its apply step throws on, with that reason', async () => {
    const { lines, logger } = capture();
    watcher = await TokensWatcher.open(path, { logger, watch: false, pollMs: 60_000 });
    watcher.start({
      apply: () => {
        throw new Error('JWT issuer https://x is configured twice');
      },
    });
    await writeFile(path, file(entry('b', b)));
    expect(await watcher.check()).toBe('refused');
    expect(watcher.current.tokens.map((t) => t.name)).toEqual(['a']);
    expect(lines.some((l) => l.msg.includes('JWT issuer https://x is configured twice'))).toBe(true);
  });
});

describe('Authenticator.replace', () => {
  const keep = token();
  const gone = token();
  const added = token();
  const admin = token();
  const parse = (text: string) => parseTokensFile(text, 'tokens.yaml');

  it('judges the next request by the new file; a removed token is refused as revoked, by name', async () => {
    const auth = new Authenticator({
      adminToken: admin,
      tokens: parse(file(entry('keep', keep), entry('gone', gone, 'roles: [reader], credentials: [x]'))),
    });
    expect(await auth.authenticate(presented(gone))).toMatchObject({ ok: true, principal: { name: 'gone' } });
    const at = new Date('2026-12-01T10:00:00Z');
    const change = auth.replace(
      parse(file(entry('keep', keep, 'roles: [auditor]'), entry('added', added))),
      undefined,
      at,
    );
    expect(change).toEqual({
      added: ['token "added"'],
      removed: ['token "gone"'],
      changed: ['token "keep"'],
      revoked: ['gone'],
    });
    expect(await auth.authenticate(presented(gone))).toEqual({
      ok: false,
      reason: 'token of "gone" was revoked (removed from the tokens file at 2026-12-01T10:00:00.000Z)',
      token: { name: 'gone', state: 'revoked', at: '2026-12-01T10:00:00.000Z' },
    });
    expect(await auth.authenticate(presented(added))).toMatchObject({
      ok: true,
      principal: { name: 'added' },
    });
    expect(await auth.authenticate(presented(keep))).toMatchObject({
      ok: true,
      principal: { roles: ['auditor'] },
    });
    // The static admin token stays whatever the file says.
    expect(await auth.authenticate(presented(admin))).toMatchObject({
      ok: true,
      principal: { name: 'admin' },
    });
    // Unknown tokens are still just unknown.
    expect(await auth.authenticate(presented(token()))).toEqual({ ok: false, reason: 'unknown token' });
  });

  it('revokes the old value of a token given a new sha256, and forgets a revocation when the value comes back', async () => {
    const next = token();
    const auth = new Authenticator({ tokens: parse(file(entry('ci', keep))) });
    expect(auth.replace(parse(file(entry('ci', next))))).toMatchObject({
      changed: ['token "ci"'],
      revoked: ['ci'],
    });
    expect(await auth.authenticate(presented(keep))).toMatchObject({
      ok: false,
      token: { state: 'revoked' },
    });
    auth.replace(parse(file(entry('ci', keep))));
    expect(await auth.authenticate(presented(keep))).toMatchObject({ ok: true });
    expect(await auth.authenticate(presented(next))).toMatchObject({ ok: false, token: { name: 'ci' } });
  });

  it('still compares every live entry in constant time after a reload', async () => {
    const auth = new Authenticator({ adminToken: admin, tokens: parse(file(entry('a', keep))) });
    auth.replace(parse(file(entry('b', added), entry('c', token()))));
    const spy = vi.mocked(timingSafeEqual);
    spy.mockClear();
    await auth.authenticate(presented(keep));
    expect(spy).toHaveBeenCalledTimes(3);
  });

  it('refuses an expired token at each request, naming it and when it expired', async () => {
    const auth = new Authenticator({
      tokens: parse(file(entry('old-ci', keep, 'roles: [operator], expiresAt: 2020-01-01T00:00:00Z'))),
    });
    expect(await auth.authenticate(presented(keep))).toEqual({
      ok: false,
      reason: 'token of "old-ci" expired at 2020-01-01T00:00:00.000Z',
      token: { name: 'old-ci', state: 'expired', at: '2020-01-01T00:00:00.000Z' },
    });
  });

  it('tells whether an authenticated principal would still be let in (for open event streams)', async () => {
    const auth = new Authenticator({
      tokens: parse(
        file(entry('ci', keep), entry('soon', gone, 'roles: [operator], expiresAt: 2099-01-01T00:00:00Z')),
      ),
    });
    const ci = ((await auth.authenticate(presented(keep))) as { principal: Principal }).principal;
    const soon = ((await auth.authenticate(presented(gone))) as { principal: Principal }).principal;
    expect(auth.stillValid(ci)).toBe(true);
    expect(auth.stillValid(soon, Date.parse('2099-01-01T00:00:01Z'))).toBe(false);
    auth.replace(parse(file(entry('ci', keep, 'roles: [auditor]'))));
    expect(auth.stillValid(ci)).toBe(false);
    expect(auth.stillValid({ name: 'x', roles: ['reader'], via: 'jwt' })).toBe(true);
  });
});

describe('administratorSources', () => {
  it('lists admin tokens not expired, admin certificates and JWT rules granting admin', () => {
    const sources = administratorSources(
      parseTokensFile(
        [
          'tokens:',
          entry('ops', token(), 'roles: [admin]'),
          entry('old-ops', token(), 'roles: [admin], expiresAt: 2020-01-01T00:00:00Z'),
          entry('ci', token(), 'roles: [operator]'),
          'certificates:',
          '  - {name: break-glass, subject: break-glass, roles: [admin]}',
          'jwt:',
          '  - issuer: https://idp.example.com',
          '    audience: keyturn',
          '    rules:',
          '      - {match: {groups: sre}, roles: [admin]}',
          '      - {match: {groups: dev}, roles: [operator]}',
          '',
        ].join('\n'),
        'tokens.yaml',
      ),
    );
    expect(sources).toEqual([
      'token "ops"',
      'certificate "break-glass"',
      'JWT rule 1 of https://idp.example.com',
    ]);
  });

  it('finds none in a file without admins, or without a file', () => {
    expect(administratorSources(parseTokensFile(file(entry('ci', token())), 'tokens.yaml'))).toEqual([]);
    expect(administratorSources(undefined)).toEqual([]);
  });
});
