// The static-token file named by KEYTURN_TOKENS_FILE (SPEC, Roles): bearer tokens (stored as their SHA-256, never
// the token), client certificates (by subject CN) and JWT issuers whose claims map to roles. It is read at start-up
// and again whenever it changes (tokens-watcher.ts), and validated in one pass: every problem is reported with its place in the file (`tokens[1].sha256`),
// so that an operator fixes everything at once. Messages name positions and rules, not values: a hash is not a
// secret, but someone who pastes the token itself into `sha256` must not see it echoed into a log.
import { readFile } from 'node:fs/promises';
import type { ErrorObject } from 'ajv';
import { Type } from 'typebox';
import { parse, YAMLError } from 'yaml';
import { pathOf, schemaValidator, unknownFieldMessage } from '../config/file-schema.ts';
import { type ReaderBinding, ROLES, type Role } from './principal.ts';

export interface StaticTokenEntry {
  name: string;
  /** 64 lowercase hex characters: the SHA-256 of the token. */
  sha256: string;
  roles: Role[];
  credentials?: string[];
  labels?: Record<string, string>;
  expiresAt?: Date;
}

export interface CertificateEntry {
  name: string;
  /** the client certificate's subject CN that maps to this principal */
  subject: string;
  roles: Role[];
  credentials?: string[];
  labels?: Record<string, string>;
}

export interface JwtRule {
  /** claim name → glob; a claim holding an array matches when any element matches; all entries must match */
  match: Record<string, string>;
  /** the claim whose value names the principal (default "sub") */
  nameClaim?: string;
  roles: Role[];
  credentials?: string[];
  labels?: Record<string, string>;
}

export interface JwtIssuerConfig {
  issuer: string;
  audience: string[];
  /** else discovered from <issuer>/.well-known/openid-configuration */
  jwksUrl?: string;
  /** default ['RS256', 'ES256'] */
  algorithms: string[];
  /** default 30 */
  clockSkewSeconds: number;
  rules: JwtRule[];
}

export interface TokensFile {
  tokens: StaticTokenEntry[];
  certificates: CertificateEntry[];
  jwt: JwtIssuerConfig[];
}

export class TokensFileError extends Error {
  readonly problems: string[];
  constructor(source: string, problems: string[]) {
    super(`${source} is not a valid tokens file:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'TokensFileError';
    this.problems = problems;
  }
}

/** Asymmetric algorithms only: with HS* a shared secret would let anyone who holds it mint tokens. */
export const JWT_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
] as const;
export const DEFAULT_JWT_ALGORITHMS = ['RS256', 'ES256'];
export const DEFAULT_CLOCK_SKEW_SECONDS = 30;

export const NAME_PATTERN = '^[A-Za-z0-9._@:/-]{1,128}$';
const SHA256_PATTERN = '^[0-9a-fA-F]{64}$';
// Credential ids (letters, digits, ".", "_", "-") and the glob characters picomatch reads in them (no braces).
const CREDENTIAL_PATTERN = '^[A-Za-z0-9._*?!\\[\\]-]{1,128}$';
// The same label keys as the API's credential labels (src/api/schemas.ts).
const LABEL_KEY_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$';
const CLAIM_PATTERN = '^[A-Za-z0-9_.:/-]{1,128}$';

// Each constrained schema carries, as its description, the sentence that completes "<path> …" when it is not met.
const MSG = {
  name: 'must be 1-128 characters of letters, digits, ".", "_", "@", ":", "/" or "-"',
  sha256: 'must be 64 hex characters (the SHA-256 of the token, never the token itself)',
  roles: `must list at least one role of ${ROLES.join(', ')}, each once`,
  role: `must be one of ${ROLES.join(', ')}`,
  credentials: 'must be a list of credential ids or globs such as "payments-*", each once',
  credential:
    'must be a credential id or glob: 1-128 letters, digits, ".", "_", "-", "*", "?", "!", "[", "]"',
  labels: 'must be a mapping of at most 32 label keys to values',
  labelKey: 'must be a label key: a letter or digit, then up to 62 letters, digits, ".", "_", "/" or "-"',
  labelValue: 'must be a string of at most 256 characters',
  expiresAt: 'must be an ISO 8601 date-time with a time zone, such as 2027-06-30T00:00:00Z',
  subject: "must be the client certificate's subject CN: 1-256 characters",
  issuer: 'must be the issuer URL exactly as in the tokens\' "iss" claim',
  audience: 'must be an audience string or a non-empty list of them',
  audienceItem: 'must be a non-empty string of at most 512 characters',
  jwksUrl: 'must be a URL',
  algorithms: `must list at least one of ${JWT_ALGORITHMS.join(', ')}, each once`,
  algorithm: `must be one of ${JWT_ALGORITHMS.join(', ')}`,
  clockSkew: 'must be a whole number of seconds between 0 and 300',
  rules: 'must list at least one rule mapping claims to roles',
  match:
    'must map at least one claim to a glob (a rule matching every token the issuer signs is written {sub: "*"})',
  matchKey: 'must be a claim name: 1-128 letters, digits, "_", ".", ":", "/" or "-"',
  glob: 'must be a glob of 1-512 characters',
  nameClaim: 'must be a claim name: 1-128 letters, digits, "_", ".", ":", "/" or "-"',
} as const;

const d = (description: string) => ({ description });

const Roles = Type.Array(Type.Unsafe<Role>({ type: 'string', enum: [...ROLES], ...d(MSG.role) }), {
  minItems: 1,
  uniqueItems: true,
  ...d(MSG.roles),
});
const Credentials = Type.Array(Type.String({ pattern: CREDENTIAL_PATTERN, ...d(MSG.credential) }), {
  uniqueItems: true,
  maxItems: 256,
  ...d(MSG.credentials),
});
const Labels = Type.Record(
  Type.String({ pattern: LABEL_KEY_PATTERN }),
  Type.String({ maxLength: 256, ...d(MSG.labelValue) }),
  { maxProperties: 32, additionalProperties: false, ...d(MSG.labels) },
);
const Binding = {
  roles: Roles,
  credentials: Type.Optional(Credentials),
  labels: Type.Optional(Labels),
};

const TokenSchema = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN, ...d(MSG.name) }),
    sha256: Type.String({ pattern: SHA256_PATTERN, ...d(MSG.sha256) }),
    ...Binding,
    // A YAML timestamp that the parser turned into a Date is made a string before validation (see toJsonValues).
    expiresAt: Type.Optional(Type.String({ format: 'date-time', ...d(MSG.expiresAt) })),
  },
  { additionalProperties: false },
);
const CertificateSchema = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN, ...d(MSG.name) }),
    subject: Type.String({ minLength: 1, maxLength: 256, ...d(MSG.subject) }),
    ...Binding,
  },
  { additionalProperties: false },
);
const RuleSchema = Type.Object(
  {
    match: Type.Record(
      Type.String({ pattern: CLAIM_PATTERN }),
      Type.String({ minLength: 1, maxLength: 512, ...d(MSG.glob) }),
      { minProperties: 1, maxProperties: 16, additionalProperties: false, ...d(MSG.match) },
    ),
    nameClaim: Type.Optional(Type.String({ pattern: CLAIM_PATTERN, ...d(MSG.nameClaim) })),
    ...Binding,
  },
  { additionalProperties: false },
);
const AudienceItem = Type.String({ minLength: 1, maxLength: 512, ...d(MSG.audienceItem) });
const IssuerSchema = Type.Object(
  {
    issuer: Type.String({ minLength: 1, maxLength: 1024, ...d(MSG.issuer) }),
    audience: Type.Union(
      [
        AudienceItem,
        Type.Array(AudienceItem, { minItems: 1, maxItems: 32, uniqueItems: true, ...d(MSG.audience) }),
      ],
      d(MSG.audience),
    ),
    jwksUrl: Type.Optional(Type.String({ minLength: 1, maxLength: 2048, ...d(MSG.jwksUrl) })),
    algorithms: Type.Optional(
      Type.Array(Type.String({ enum: [...JWT_ALGORITHMS], ...d(MSG.algorithm) }), {
        minItems: 1,
        uniqueItems: true,
        ...d(MSG.algorithms),
      }),
    ),
    clockSkewSeconds: Type.Optional(Type.Integer({ minimum: 0, maximum: 300, ...d(MSG.clockSkew) })),
    rules: Type.Array(RuleSchema, { minItems: 1, maxItems: 256, ...d(MSG.rules) }),
  },
  { additionalProperties: false },
);
const Section = <T extends Parameters<typeof Type.Array>[0]>(item: T) =>
  Type.Optional(Type.Array(item, { maxItems: 10_000, ...d('must be a list') }));

/** The JSON Schema of the tokens file (an empty section, null in YAML, is taken as an empty list before it). */
export const TokensFileSchema = Type.Object(
  {
    tokens: Section(TokenSchema),
    certificates: Section(CertificateSchema),
    jwt: Section(IssuerSchema),
  },
  { additionalProperties: false },
);

const validate = schemaValidator(TokensFileSchema, ['date-time']);

const TYPE_NAMES: Record<string, string> = {
  object: 'a mapping',
  array: 'a list',
  string: 'a string',
  integer: 'a whole number',
  number: 'a number',
};

const UNKNOWN_FIELD_HINTS: Record<string, string> = {
  token: ': the file holds only the sha256 of a token, never the token itself',
  role: ': did you mean roles?',
  credential: ': did you mean credentials?',
  label: ': did you mean labels?',
  expires: ': did you mean expiresAt?',
  algorithm: ': did you mean algorithms?',
  audiences: ': did you mean audience?',
  jwks: ': did you mean jwksUrl?',
  jwks_uri: ': did you mean jwksUrl?',
  rule: ': did you mean rules?',
};

function describeError(e: ErrorObject): string | undefined {
  const at = pathOf(e.instancePath);
  const description = (e.parentSchema as { description?: string } | undefined)?.description;
  switch (e.keyword) {
    case 'additionalProperties': {
      const field = String((e.params as { additionalProperty: string }).additionalProperty);
      const known = Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {});
      if (known.length === 0) {
        // A record (labels, match) whose key does not fit the pattern.
        const rule = e.instancePath.endsWith('/match') ? MSG.matchKey : MSG.labelKey;
        const shown = field.length <= 64 ? JSON.stringify(field) : '(not shown)';
        return `${at} key ${shown} ${rule.replace(/^must be/, 'is not')}`;
      }
      if (e.instancePath === '')
        return `unknown section "${field}" (the file has tokens, certificates and jwt)`;
      return unknownFieldMessage(e, UNKNOWN_FIELD_HINTS);
    }
    case 'required':
      return `${pathOf(e.instancePath, String((e.params as { missingProperty: string }).missingProperty))} is required`;
    case 'type':
      if (e.instancePath === '')
        return 'the file must be a mapping with the sections tokens, certificates and/or jwt';
      if (description && !/^must be a (list|mapping)$/.test(description)) return `${at} ${description}`;
      return `${at} must be ${TYPE_NAMES[String((e.params as { type: string }).type)] ?? (e.params as { type: string }).type}`;
    case 'enum':
      if (description === MSG.algorithm && typeof e.data === 'string' && /^(HS\d+|none)$/i.test(e.data)) {
        return `${at} is ${e.data}: refused, a symmetric (HS*) or "none" algorithm would let anyone who holds the shared secret, or anyone at all, mint tokens; use one of ${JWT_ALGORITHMS.join(', ')}`;
      }
      return `${at} ${description ?? 'has a value that is not allowed'}`;
    default:
      return `${at} ${description ?? e.message ?? 'is not valid'}`;
  }
}

/** Ajv's errors as one sentence per place; a union (audience) is reported by its own sentence, or by its items'. */
function describeErrors(errors: ErrorObject[]): string[] {
  const out: string[] = [];
  for (const e of errors) {
    const union = errors.find(
      (u) =>
        u !== e &&
        u.keyword === 'anyOf' &&
        e.schemaPath.startsWith(`${u.schemaPath}/`) &&
        (e.instancePath === u.instancePath || e.instancePath.startsWith(`${u.instancePath}/`)),
    );
    if (union) {
      // A list of the right shape with bad items: report the items; otherwise only the union's sentence.
      if (!Array.isArray(union.data) || (e.keyword === 'type' && e.instancePath === union.instancePath))
        continue;
    } else if (e.keyword === 'anyOf' && Array.isArray(e.data)) {
      continue;
    }
    const message = describeError(e);
    if (message) out.push(message);
  }
  return [...new Set(out)];
}

function toJsonValues(value: unknown): unknown {
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? 'invalid date' : value.toISOString();
  if (Array.isArray(value)) return value.map(toJsonValues);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJsonValues(v)]));
  }
  return value;
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

function checkUrl(raw: unknown, at: string, what: string, problems: string[]): void {
  if (typeof raw !== 'string' || raw === '') return; // the schema has said so
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    problems.push(`${at} must be an https URL (${what})`);
    return;
  }
  if (url.protocol === 'http:' && !LOOPBACK.has(url.hostname)) {
    problems.push(`${at} must be an https URL: http is accepted only for 127.0.0.1 and localhost (tests)`);
  } else if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    problems.push(`${at} must be an https URL (${what})`);
  } else if (url.username || url.password) {
    problems.push(`${at} must not carry a user name or password`);
  } else if (url.hash || (what === 'the issuer' && url.search)) {
    problems.push(`${at} must not have a ${url.hash ? 'fragment' : 'query'} (${what})`);
  }
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

/** Roles against bindings: credentials and labels are for readers, and a reader must be bound to something. */
function checkBinding(entry: Obj, at: string, problems: string[]): void {
  const roles = list(entry.roles);
  const reader = roles.includes('reader');
  const hasCredentials = Array.isArray(entry.credentials) && entry.credentials.length > 0;
  const hasLabels = isObj(entry.labels) && Object.keys(entry.labels).length > 0;
  if (!reader) {
    for (const field of ['credentials', 'labels'] as const) {
      if (entry[field] !== undefined) {
        problems.push(
          `${at}.${field} binds credentials to a reader, but roles do not include reader (admin sees every credential; operator and auditor never see secrets)`,
        );
      }
    }
  } else if (!hasCredentials && !hasLabels) {
    problems.push(
      `${at} has the reader role but neither credentials nor labels: a reader bound to no credential can read nothing, which is surely a mistake`,
    );
  }
}

/** Every problem of already-parsed YAML data, with its path; empty when the data is a valid tokens file. */
function check(data: unknown): string[] {
  const problems = describeErrors(validate(data));
  if (!isObj(data)) return problems;

  const names = new Map<string, string>();
  const hashes = new Map<string, string>();
  const subjects = new Map<string, string>();
  const unique = (map: Map<string, string>, key: unknown, at: string, message: (first: string) => string) => {
    if (typeof key !== 'string') return;
    const first = map.get(key);
    if (first !== undefined) problems.push(message(first));
    else map.set(key, at);
  };

  list(data.tokens).forEach((t, i) => {
    if (!isObj(t)) return;
    const at = `tokens[${i}]`;
    unique(names, t.name, at, (first) => `${at}.name is already the name of ${first}: names must be unique`);
    unique(
      hashes,
      typeof t.sha256 === 'string' ? t.sha256.toLowerCase() : undefined,
      at,
      (first) => `${at}.sha256 is the same as ${first}.sha256: one token may have only one entry`,
    );
    checkBinding(t, at, problems);
  });
  list(data.certificates).forEach((c, i) => {
    if (!isObj(c)) return;
    const at = `certificates[${i}]`;
    unique(names, c.name, at, (first) => `${at}.name is already the name of ${first}: names must be unique`);
    unique(
      subjects,
      c.subject,
      at,
      (first) =>
        `${at}.subject is already the subject of ${first}: one certificate subject maps to one principal`,
    );
    checkBinding(c, at, problems);
  });
  const issuers = new Map<string, string>();
  list(data.jwt).forEach((j, i) => {
    if (!isObj(j)) return;
    const at = `jwt[${i}]`;
    checkUrl(j.issuer, `${at}.issuer`, 'the issuer', problems);
    unique(
      issuers,
      j.issuer,
      at,
      (first) =>
        `${at}.issuer is already the issuer of ${first}: put all the rules of one issuer in one entry`,
    );
    if (j.jwksUrl !== undefined)
      checkUrl(j.jwksUrl, `${at}.jwksUrl`, 'where the issuer publishes its keys', problems);
    list(j.rules).forEach((r, k) => {
      if (isObj(r)) checkBinding(r, `${at}.rules[${k}]`, problems);
    });
  });
  return problems;
}

const SECTIONS = ['tokens', 'certificates', 'jwt'];
/** Problems sorted by the entry they are about, as the file lists them (a stable sort keeps each entry's order). */
function inFileOrder(problems: string[]): string[] {
  const key = (p: string): [number, number] => {
    const m = /^(tokens|certificates|jwt)\[(\d+)\]/.exec(p);
    return m ? [SECTIONS.indexOf(m[1]!), Number(m[2])] : [-1, 0];
  };
  return problems
    .map((p) => ({ p, k: key(p) }))
    .sort((a, b) => a.k[0] - b.k[0] || a.k[1] - b.k[1])
    .map(({ p }) => p);
}

function binding(entry: Obj): Pick<StaticTokenEntry, 'roles' | 'credentials' | 'labels'> {
  return {
    roles: [...(entry.roles as Role[])],
    ...(entry.credentials !== undefined ? { credentials: [...(entry.credentials as string[])] } : {}),
    ...(entry.labels !== undefined ? { labels: { ...(entry.labels as Record<string, string>) } } : {}),
  };
}

/** Validates already-parsed data (YAML or JSON); throws TokensFileError listing every problem. */
export function tokensFileFromData(raw: unknown, source: string): TokensFile {
  // An empty file, or one with only comments, has no entries.
  const data = toJsonValues(raw ?? {});
  if (isObj(data)) {
    // An empty section (`tokens:` with nothing under it) is null in YAML: it means none.
    for (const section of ['tokens', 'certificates', 'jwt']) if (data[section] === null) data[section] = [];
  }
  const problems = inFileOrder(check(data));
  if (problems.length > 0) throw new TokensFileError(source, problems);
  const file = data as Obj;
  return {
    tokens: list(file.tokens).map((e) => {
      const t = e as Obj;
      return {
        name: t.name as string,
        sha256: (t.sha256 as string).toLowerCase(),
        ...binding(t),
        ...(t.expiresAt !== undefined ? { expiresAt: new Date(t.expiresAt as string) } : {}),
      };
    }),
    certificates: list(file.certificates).map((e) => {
      const c = e as Obj;
      return { name: c.name as string, subject: c.subject as string, ...binding(c) };
    }),
    jwt: list(file.jwt).map((e) => {
      const j = e as Obj;
      return {
        issuer: j.issuer as string,
        audience: typeof j.audience === 'string' ? [j.audience] : [...(j.audience as string[])],
        ...(j.jwksUrl !== undefined ? { jwksUrl: j.jwksUrl as string } : {}),
        algorithms:
          j.algorithms !== undefined ? [...(j.algorithms as string[])] : [...DEFAULT_JWT_ALGORITHMS],
        clockSkewSeconds: (j.clockSkewSeconds as number | undefined) ?? DEFAULT_CLOCK_SKEW_SECONDS,
        rules: list(j.rules).map((x) => {
          const r = x as Obj;
          return {
            match: { ...(r.match as Record<string, string>) },
            ...(r.nameClaim !== undefined ? { nameClaim: r.nameClaim as string } : {}),
            ...binding(r),
          };
        }),
      };
    }),
  };
}

/** Parses and validates the YAML text of a tokens file; `source` names it in the error (usually its path). */
export function parseTokensFile(text: string, source: string): TokensFile {
  let raw: unknown;
  try {
    raw = parse(text, { prettyErrors: true, maxAliasCount: 100, logLevel: 'error' });
  } catch (err) {
    if (err instanceof YAMLError) {
      // The pretty message ends with the offending line of the file: keep only the sentence and its position.
      const sentence = err.message.split('\n')[0]!.replace(/:$/, '');
      const pos = err.linePos?.[0];
      const where = pos && !sentence.includes(' at line ') ? ` at line ${pos.line}, column ${pos.col}` : '';
      throw new TokensFileError(source, [`YAML syntax error: ${sentence}${where}`]);
    }
    if (err instanceof ReferenceError || err instanceof RangeError) {
      throw new TokensFileError(source, [`YAML error: ${(err as Error).message}`]);
    }
    throw err;
  }
  return tokensFileFromData(raw, source);
}

/** The text of the tokens file; a file that cannot be read is a TokensFileError naming the path and why. */
export async function readTokensFileText(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'the file does not exist'
        : code === 'EACCES' || code === 'EPERM'
          ? 'permission denied'
          : code === 'EISDIR'
            ? 'it is a directory'
            : (err as Error).message;
    throw new TokensFileError(path, [`cannot read ${path} (KEYTURN_TOKENS_FILE): ${why}`]);
  }
}

/** Reads and validates the tokens file; a file that cannot be read is a TokensFileError naming the path. */
export async function loadTokensFile(path: string): Promise<TokensFile> {
  return parseTokensFile(await readTokensFileText(path), path);
}

/**
 * What in the file can act as an administrator: tokens not yet expired, client certificates and JWT rules that grant
 * the admin role (`token "ops"`, `certificate "break-glass"`, `JWT rule 1 of https://…`). Production needs at least
 * one of these, or KEYTURN_ADMIN_TOKEN (boot.ts).
 */
export function administratorSources(file: TokensFile | undefined, now = Date.now()): string[] {
  if (!file) return [];
  const admin = (e: { roles: Role[] }) => e.roles.includes('admin');
  return [
    ...file.tokens
      .filter((t) => admin(t) && (t.expiresAt === undefined || t.expiresAt.getTime() > now))
      .map((t) => `token "${t.name}"`),
    ...file.certificates.filter(admin).map((c) => `certificate "${c.name}"`),
    ...file.jwt.flatMap((issuer) =>
      issuer.rules.flatMap((r, i) => (admin(r) ? [`JWT rule ${i + 1} of ${issuer.issuer}`] : [])),
    ),
  ];
}

/** Every reader binding the file configures: its reader tokens, reader certificates and JWT rules granting reader. */
export function readerBindings(file: TokensFile): ReaderBinding[] {
  const of = (
    source: string,
    e: { roles: Role[]; credentials?: string[]; labels?: Record<string, string> },
  ) =>
    e.roles.includes('reader')
      ? [
          {
            source,
            ...(e.credentials ? { credentials: e.credentials } : {}),
            ...(e.labels ? { labels: e.labels } : {}),
          },
        ]
      : [];
  return [
    ...file.tokens.flatMap((t) => of(`token "${t.name}"`, t)),
    ...file.certificates.flatMap((c) => of(`certificate "${c.name}"`, c)),
    ...file.jwt.flatMap((issuer) =>
      issuer.rules.flatMap((r, i) => of(`JWT rule ${i + 1} of ${issuer.issuer}`, r)),
    ),
  ];
}
