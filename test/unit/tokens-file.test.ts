import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  loadTokensFile,
  parseTokensFile,
  readerBindings,
  TokensFileError,
  tokensFileFromData,
} from '../../src/auth/tokens-file.ts';

const H1 = '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08';
const H2 = '60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752';
const H3 = 'fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9';

const FULL = `
# Keyturn static tokens
tokens:
  - name: platform-ci            # the principal's name in audit events
    sha256: ${H1.toUpperCase()}
    roles: [operator]
  - name: payments-api
    sha256: ${H2}
    roles: [reader]
    credentials: ["payments-*"]
    labels: {team: payments}
    expiresAt: 2027-06-30T00:00:00Z
certificates:
  - name: payments-worker
    subject: payments-worker
    roles: [reader]
    credentials: [payments-db]
jwt:
  - issuer: https://kubernetes.default.svc.cluster.local
    audience: keyturn          # string or list
    algorithms: [RS256]
    clockSkewSeconds: 30
    rules:
      - match: {sub: "system:serviceaccount:payments:*"}
        roles: [reader]
        credentials: ["payments-*"]
      - match: {groups: "keyturn-operators"}
        nameClaim: email
        roles: [operator]
  - issuer: http://127.0.0.1:9999/realms/test
    audience: [keyturn, keyturn-admin]
    jwksUrl: http://localhost:9999/jwks
    rules:
      - match: {sub: "*"}
        roles: [auditor]
`;

function problemsOf(text: string): string[] {
  try {
    parseTokensFile(text, 'tokens.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(TokensFileError);
    expect((err as Error).message).toMatch(/^tokens\.yaml is not a valid tokens file:\n {2}- /);
    return (err as TokensFileError).problems;
  }
  throw new Error('expected the file to be refused');
}

describe('parseTokensFile', () => {
  it('reads a full file: tokens, certificates, JWT issuers, with defaults applied', () => {
    const file = parseTokensFile(FULL, 'tokens.yaml');
    expect(file).toEqual({
      tokens: [
        // An upper-case hash is accepted and lower-cased.
        { name: 'platform-ci', sha256: H1, roles: ['operator'] },
        {
          name: 'payments-api',
          sha256: H2,
          roles: ['reader'],
          credentials: ['payments-*'],
          labels: { team: 'payments' },
          expiresAt: new Date('2027-06-30T00:00:00Z'),
        },
      ],
      certificates: [
        {
          name: 'payments-worker',
          subject: 'payments-worker',
          roles: ['reader'],
          credentials: ['payments-db'],
        },
      ],
      jwt: [
        {
          issuer: 'https://kubernetes.default.svc.cluster.local',
          audience: ['keyturn'],
          algorithms: ['RS256'],
          clockSkewSeconds: 30,
          rules: [
            {
              match: { sub: 'system:serviceaccount:payments:*' },
              roles: ['reader'],
              credentials: ['payments-*'],
            },
            { match: { groups: 'keyturn-operators' }, nameClaim: 'email', roles: ['operator'] },
          ],
        },
        {
          issuer: 'http://127.0.0.1:9999/realms/test',
          audience: ['keyturn', 'keyturn-admin'],
          jwksUrl: 'http://localhost:9999/jwks',
          algorithms: ['RS256', 'ES256'],
          clockSkewSeconds: 30,
          rules: [{ match: { sub: '*' }, roles: ['auditor'] }],
        },
      ],
    });
    expect(file.tokens[1]!.expiresAt).toBeInstanceOf(Date);
  });

  it('takes empty sections, an empty file and a comment-only file as no entries', () => {
    const none = { tokens: [], certificates: [], jwt: [] };
    expect(parseTokensFile('tokens:\ncertificates:\njwt:\n', 's')).toEqual(none);
    expect(parseTokensFile('', 's')).toEqual(none);
    expect(parseTokensFile('# nothing yet\n', 's')).toEqual(none);
    expect(parseTokensFile('tokens: []\n', 's')).toEqual(none);
  });

  it('parses expired entries: expiry is enforced when a token is presented, not here', () => {
    const file = parseTokensFile(
      `tokens:\n  - name: old\n    sha256: ${H1}\n    roles: [auditor]\n    expiresAt: 2001-01-01T00:00:00Z\n`,
      's',
    );
    expect(file.tokens[0]!.expiresAt).toEqual(new Date('2001-01-01T00:00:00Z'));
  });

  it('accepts expiresAt as a YAML timestamp (a Date) or a string, with an offset', () => {
    // YAML 1.1 resolves timestamps to Date objects.
    const v11 = parseTokensFile(
      `%YAML 1.1\n---\ntokens:\n  - name: a\n    sha256: ${H1}\n    roles: [admin]\n    expiresAt: 2027-06-30T00:00:00Z\n`,
      's',
    );
    expect(v11.tokens[0]!.expiresAt).toEqual(new Date('2027-06-30T00:00:00Z'));
    const fromData = tokensFileFromData(
      { tokens: [{ name: 'a', sha256: H1, roles: ['admin'], expiresAt: new Date('2027-06-30T00:00:00Z') }] },
      's',
    );
    expect(fromData.tokens[0]!.expiresAt).toEqual(new Date('2027-06-30T00:00:00Z'));
    const offset = parseTokensFile(
      `tokens:\n  - name: a\n    sha256: ${H1}\n    roles: [admin]\n    expiresAt: "2027-06-30T02:00:00+02:00"\n`,
      's',
    );
    expect(offset.tokens[0]!.expiresAt).toEqual(new Date('2027-06-30T00:00:00Z'));
  });

  it('lists every problem at once, each with its place in the file, in file order', () => {
    const problems = problemsOf(`
tokens:
  - name: "bad name!"
    sha256: ${H1}
    roles: [operator]
  - name: short-hash
    sha256: abc123
    roles: []
  - name: pasted-the-token
    token: s3cr3t-t0ken-value
    sha256: s3cr3t-t0ken-value
    roles: [reader, root]
    expiresAt: next tuesday
  - name: operator-with-credentials
    sha256: ${H2}
    roles: [operator]
    credentials: ["payments-*"]
    labels: {team: payments}
  - name: unbound-reader
    sha256: ${H3}
    roles: [reader]
certificates:
  - name: cert
    roles: [auditor]
jwt:
  - issuer: http://issuer.example.com
    audience: keyturn
    algorithms: [HS256, none, RS256]
    clockSkewSeconds: 3600
    rules: []
  - issuer: https://ok.example.com
    audience: []
    jwksUrl: ftp://keys.example.com/jwks
    rules:
      - match: {}
        roles: [auditor]
      - match: {sub: "x"}
        roles: [reader]
surprise: 1
`);
    expect(problems).toEqual([
      'unknown section "surprise" (the file has tokens, certificates and jwt)',
      'tokens[0].name must be 1-128 characters of letters, digits, ".", "_", "@", ":", "/" or "-"',
      'tokens[1].sha256 must be 64 hex characters (the SHA-256 of the token, never the token itself)',
      'tokens[1].roles must list at least one role of admin, operator, reader, auditor, each once',
      'tokens[2] has an unknown field "token": the file holds only the sha256 of a token, never the token itself',
      'tokens[2].sha256 must be 64 hex characters (the SHA-256 of the token, never the token itself)',
      'tokens[2].roles[1] must be one of admin, operator, reader, auditor',
      'tokens[2].expiresAt must be an ISO 8601 date-time with a time zone, such as 2027-06-30T00:00:00Z',
      'tokens[2] has the reader role but neither credentials nor labels: a reader bound to no credential can read nothing, which is surely a mistake',
      'tokens[3].credentials binds credentials to a reader, but roles do not include reader (admin sees every credential; operator and auditor never see secrets)',
      'tokens[3].labels binds credentials to a reader, but roles do not include reader (admin sees every credential; operator and auditor never see secrets)',
      'tokens[4] has the reader role but neither credentials nor labels: a reader bound to no credential can read nothing, which is surely a mistake',
      'certificates[0].subject is required',
      expect.stringMatching(
        /^jwt\[0\]\.algorithms\[0\] is HS256: refused, a symmetric \(HS\*\) or "none" algorithm would let anyone who holds the shared secret.* mint tokens/,
      ),
      expect.stringMatching(/^jwt\[0\]\.algorithms\[1\] is none: refused/),
      'jwt[0].clockSkewSeconds must be a whole number of seconds between 0 and 300',
      'jwt[0].rules must list at least one rule mapping claims to roles',
      'jwt[0].issuer must be an https URL: http is accepted only for 127.0.0.1 and localhost (tests)',
      'jwt[1].audience must be an audience string or a non-empty list of them',
      'jwt[1].rules[0].match must map at least one claim to a glob (a rule matching every token the issuer signs is written {sub: "*"})',
      'jwt[1].jwksUrl must be an https URL (where the issuer publishes its keys)',
      'jwt[1].rules[1] has the reader role but neither credentials nor labels: a reader bound to no credential can read nothing, which is surely a mistake',
    ]);
    // Positions, not values: what was pasted into the file is never echoed.
    for (const p of problems) {
      expect(p).not.toContain('s3cr3t');
      expect(p).not.toContain(H1);
    }
  });

  it('refuses duplicate names (across tokens and certificates) and duplicate hashes (whatever their case)', () => {
    const problems = problemsOf(`
tokens:
  - name: ci
    sha256: ${H1}
    roles: [operator]
  - name: ci
    sha256: ${H2}
    roles: [auditor]
  - name: ci-copy
    sha256: ${H1.toUpperCase()}
    roles: [auditor]
certificates:
  - name: ci
    subject: ci.example.com
    roles: [operator]
  - name: other
    subject: ci.example.com
    roles: [operator]
jwt:
  - issuer: https://idp.example.com
    audience: keyturn
    rules: [{match: {sub: "a"}, roles: [admin]}]
  - issuer: https://idp.example.com
    audience: keyturn
    rules: [{match: {sub: "b"}, roles: [admin]}]
`);
    expect(problems).toEqual([
      'tokens[1].name is already the name of tokens[0]: names must be unique',
      'tokens[2].sha256 is the same as tokens[0].sha256: one token may have only one entry',
      'certificates[0].name is already the name of tokens[0]: names must be unique',
      'certificates[1].subject is already the subject of certificates[0]: one certificate subject maps to one principal',
      'jwt[1].issuer is already the issuer of jwt[0]: put all the rules of one issuer in one entry',
    ]);
  });

  it('names the line of a YAML syntax error, without echoing the line', () => {
    const problems = problemsOf(
      `tokens:\n  - name: a\n    sha256: ${H1}\n    roles: [operator\n  - name: b\n`,
    );
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^YAML syntax error: .* at line \d+, column \d+$/);
    expect(problems[0]).not.toContain(H1);
    expect(problemsOf('tokens:\n  - name: a\n    name: b\n')[0]).toMatch(/unique.* at line 3, column 5/);
  });

  it('refuses a file that is not a mapping, bad shapes, and alias bombs', () => {
    expect(problemsOf('- a\n- b\n')).toEqual([
      'the file must be a mapping with the sections tokens, certificates and/or jwt',
    ]);
    expect(problemsOf('tokens: {name: a}\n')).toEqual(['tokens must be a list']);
    const bomb = [
      'a: &a [x, x, x, x, x, x, x, x, x, x]',
      ...Array.from({ length: 8 }, (_, i) => {
        const prev = i === 0 ? 'a' : `l${i - 1}`;
        return `l${i}: &l${i} [*${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}]`;
      }),
    ].join('\n');
    expect(problemsOf(bomb)[0]).toMatch(/^YAML/);
  });

  it('keeps label and match keys to their patterns', () => {
    const problems = problemsOf(`
tokens:
  - name: r
    sha256: ${H1}
    roles: [reader]
    labels: {"bad key": x, team: 5}
jwt:
  - issuer: https://idp.example.com
    audience: [keyturn, 7]
    rules: [{match: {"no spaces": "a"}, roles: [admin]}]
`);
    expect(problems).toEqual([
      'tokens[0].labels key "bad key" is not a label key: a letter or digit, then up to 62 letters, digits, ".", "_", "/" or "-"',
      'tokens[0].labels.team must be a string of at most 256 characters',
      'jwt[0].audience[1] must be a non-empty string of at most 512 characters',
      'jwt[0].rules[0].match key "no spaces" is not a claim name: 1-128 letters, digits, "_", ".", ":", "/" or "-"',
    ]);
  });
});

describe('loadTokensFile', () => {
  it('reads and parses the file, and names the path when it cannot be read', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'keyturn-tokens-'));
    try {
      const path = join(dir, 'tokens.yaml');
      await writeFile(path, FULL);
      expect((await loadTokensFile(path)).tokens).toHaveLength(2);
      const missing = join(dir, 'missing.yaml');
      const err = await loadTokensFile(missing).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TokensFileError);
      expect((err as TokensFileError).problems).toEqual([
        `cannot read ${missing} (KEYTURN_TOKENS_FILE): the file does not exist`,
      ]);
      await writeFile(path, 'tokens: [');
      const bad = await loadTokensFile(path).catch((e: unknown) => e);
      expect((bad as Error).message).toContain(path);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('readerBindings (finding 11: what an operator may not widen)', () => {
  it('lists reader tokens, reader certificates and JWT rules granting reader, and nothing else', () => {
    const hex = 'a'.repeat(64);
    const file = parseTokensFile(
      [
        'tokens:',
        `  - {name: ops, sha256: ${hex.replace(/^a/, 'b')}, roles: [operator]}`,
        `  - {name: pay, sha256: ${hex}, roles: [reader], credentials: ["pay-*"]}`,
        'certificates:',
        '  - {name: batch, subject: batch.internal, roles: [reader], labels: {team: batch}}',
        'jwt:',
        '  - issuer: https://issuer.invalid',
        '    audience: keyturn',
        '    rules:',
        '      - match: {sub: "ci:*"}',
        '        roles: [operator]',
        '      - match: {sub: "system:serviceaccount:payments:*"}',
        '        roles: [reader]',
        '        labels: {team: payments}',
        '',
      ].join('\n'),
      'test',
    );
    expect(readerBindings(file)).toEqual([
      { source: 'token "pay"', credentials: ['pay-*'] },
      { source: 'certificate "batch"', labels: { team: 'batch' } },
      { source: 'JWT rule 2 of https://issuer.invalid', labels: { team: 'payments' } },
    ]);
  });
});
