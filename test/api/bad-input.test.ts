// Acceptance (SPEC, "HTTP API (v1)"): bad input on every route (wrong types, unknown fields, huge bodies, unknown
// ids) gets a 4xx with the error shape {"error": {"code", "message", "details"?}}, never a 5xx; a 400 names the
// offending field. Part 1 is table-driven, route by route; part 2 generates thousands of requests (fast-check).
//
// The runtime is API-only (no worker), so the rotation that registering a credential starts stays queued: that is
// what makes "delete a connection in use" answer 409. (A DELETE cancels a rotation that has not started, so "delete a
// credential with a rotation in flight" is no bad input any more: races.test.ts covers the 409 of a started one.)
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createAppRole,
  dropPrefix,
  type Keyturn,
  registerPgConnection,
  startKeyturn,
  testEnv,
} from '../support/harness.ts';

// warn: thousands of requests would otherwise log two info lines each.
const env = testEnv({ LOG_LEVEL: 'warn' });
let kt: Keyturn;

/** A connection no credential uses; 127.0.0.1:1 refuses at once, should anything ever try it. */
const CONN = 'bi-conn';
/** The password-checking PostgreSQL of global-setup, with PG_CRED on it. */
const PG_CONN = 'bi-pg';
/** An aws-iam connection, registered unchecked at an address nothing listens on: for its credentials' 422s. */
const IAM_CONN = 'bi-iam';
/** A credential whose first rotation stays queued (no worker): its connection cannot be deleted, nor itself. */
const PG_CRED = 'bi-pg-cred';
let rotationId = '';

const UNKNOWN_ID = 'no-such-id';
const UNKNOWN_UUID = '7d444840-9dc0-11d1-b245-5ffdce74fad2';
const KiB = 1024;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api'] });
  const conn = await kt.api('POST', '/v1/connections', {
    id: CONN,
    type: 'postgres',
    host: '127.0.0.1',
    port: 1,
    database: 'nothing',
    admin: { username: 'admin', password: 'not-a-real-password' },
    verify: false, // nothing listens there: the connection exists for its routes, never rotates
  });
  expect(conn.status, conn.text).toBe(201);
  const iam = await kt.api('POST', '/v1/connections', {
    id: IAM_CONN,
    type: 'aws-iam',
    region: 'eu-west-1',
    endpoint: 'http://127.0.0.1:1',
    admin: { username: 'AKIAEXAMPLEEXAMPLE12', password: 'not-a-real-secret-access-key' },
    verify: false,
  });
  expect(iam.status, iam.text).toBe(201);
  await registerPgConnection(kt, PG_CONN);
  const role = await createAppRole();
  const cred = await kt.api('POST', '/v1/credentials', {
    id: PG_CRED,
    connection: PG_CONN,
    username: role.name,
    strategy: 'single-user',
    schedule: { every: '30d' },
  });
  expect(cred.status, cred.text).toBe(201);
  expect(cred.body.rotation.status).toBe('queued');
  rotationId = cred.body.rotation.id;
});

afterAll(async () => {
  if (process.env.KT_DEBUG) for (const l of kt?.logs ?? []) console.log(l);
  await kt?.close();
  await dropPrefix(env.prefix);
});

// Requests and the checks every answer gets

interface Req {
  method: string;
  path: string;
  /** A value to send as JSON, or raw text/bytes when `raw` is set. */
  body?: unknown;
  raw?: string | Uint8Array;
  /** Defaults to application/json when there is a body; null sends none. */
  contentType?: string | null;
  /** Defaults to the admin bearer token; null sends no Authorization header. */
  auth?: string | null;
  /** More request headers (GET /v1/events reads Last-Event-ID). */
  headers?: Record<string, string>;
}

interface Res {
  status: number;
  headers: Headers;
  text: string;
  json: unknown;
  /** Error lines (level >= 50) the runtime logged while answering. */
  errors: string[];
}

async function send(req: Req): Promise<Res> {
  let payload: Uint8Array | undefined;
  if (req.raw !== undefined)
    payload = typeof req.raw === 'string' ? new TextEncoder().encode(req.raw) : req.raw;
  else if (req.body !== undefined) payload = new TextEncoder().encode(JSON.stringify(req.body));
  const headers: Record<string, string> = { ...req.headers };
  const auth = req.auth === undefined ? `Bearer ${env.adminToken}` : req.auth;
  if (auth !== null) headers.authorization = auth;
  // Bytes (not a string) as the body, so that fetch adds no content-type of its own.
  const contentType = req.contentType === undefined ? (payload ? 'application/json' : null) : req.contentType;
  if (contentType !== null) headers['content-type'] = contentType;
  const logsBefore = kt.logs.length;
  const res = await fetch(`${kt.url}${req.path}`, {
    method: req.method,
    headers,
    ...(payload ? { body: payload } : {}),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  const errors = kt.logs.slice(logsBefore).filter((l) => /"level":(5|6)0/.test(l));
  return { status: res.status, headers: res.headers, text, json, errors };
}

/** What is wrong with an error answer's shape, or null: {"error": {"code", "message", "details"?}} as JSON. */
function shapeProblem(res: Res): string | null {
  const type = res.headers.get('content-type') ?? '';
  if (!/^application\/json\b/.test(type)) return `content-type is "${type}", not application/json`;
  const body = res.json as Record<string, unknown> | undefined;
  if (!body || typeof body !== 'object' || Array.isArray(body)) return 'the body is not a JSON object';
  const keys = Object.keys(body);
  if (keys.length !== 1 || keys[0] !== 'error') return `top-level keys are [${keys.join(', ')}], not [error]`;
  const error = body.error as Record<string, unknown>;
  if (!error || typeof error !== 'object' || Array.isArray(error)) return '"error" is not an object';
  const extra = Object.keys(error).filter((k) => !['code', 'message', 'details'].includes(k));
  if (extra.length) return `"error" has unexpected keys [${extra.join(', ')}]`;
  if (typeof error.code !== 'string' || !error.code) return 'error.code is not a non-empty string';
  if (typeof error.message !== 'string' || !error.message) return 'error.message is not a non-empty string';
  return null;
}

function errorOf(res: Res): { code: string; message: string; details?: unknown } {
  return (res.json as { error: { code: string; message: string; details?: unknown } }).error;
}

function describeReq(req: Req): string {
  const body =
    req.raw !== undefined
      ? typeof req.raw === 'string'
        ? req.raw
        : `<${req.raw.length} bytes>`
      : req.body === undefined
        ? ''
        : JSON.stringify(req.body);
  const preview = body.length > 300 ? `${body.slice(0, 300)}… (${body.length} chars)` : body;
  return `${req.method} ${req.path.length > 200 ? `${req.path.slice(0, 200)}…` : req.path} [${req.contentType ?? ''}] ${preview}`;
}

// Part 1: table-driven cases

interface Case extends Req {
  name: string;
  /** The expected status, or the statuses any of which is right. */
  status: number | number[];
  /** Text (or a pattern) the error message must contain; required for 400. */
  field?: string | RegExp;
  code?: string;
}

/** A deep copy of `base` with `path` (dot-separated) set to `value`, or removed when `value` is DROP. */
const DROP = Symbol('drop');
function withField(base: object, path: string, value: unknown): Record<string, unknown> {
  const copy = structuredClone(base) as Record<string, unknown>;
  const keys = path.split('.');
  let target = copy;
  for (const k of keys.slice(0, -1)) {
    if (typeof target[k] !== 'object' || target[k] === null) target[k] = {};
    target = target[k] as Record<string, unknown>;
  }
  const last = keys.at(-1) as string;
  if (value === DROP) delete target[last];
  else target[last] = value;
  return copy;
}

type FieldCase = [path: string, value: unknown, field: string];

/** One 400 per [path, value, field]: `base` with that field changed must be refused naming the field. */
function fieldCases(method: string, path: string, base: object, rows: FieldCase[]): Case[] {
  return rows.map(([p, value, field]) => ({
    name: value === DROP ? `missing ${p}` : `${p} = ${preview(value)}`,
    method,
    path,
    body: withField(base, p, value),
    status: 400,
    field,
    code: 'invalid_request',
  }));
}

function preview(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 40)}… (${text.length} chars)` : text;
}

const missing = (fields: string[]): FieldCase[] => fields.map((f) => [f, DROP, `body.${f} is required`]);
const unknown = (paths: string[]): FieldCase[] => paths.map((p) => [p, 1, `body.${p} is not a known field`]);

/** Bodies that are not a JSON object at all, or that the parser refuses; for every route that reads a body. */
function bodyFormCases(
  method: string,
  path: string,
  overrides: Partial<Record<string, Partial<Case>>> = {},
): Case[] {
  const cases: Omit<Case, 'method' | 'path'>[] = [
    { name: 'malformed JSON', raw: '{"id": ', status: 400, field: /body/i },
    { name: 'JSON with a trailing comma', raw: '{"a": 1,}', status: 400, field: /body/i },
    { name: 'a JSON array', raw: '[]', status: 400, field: 'body' },
    { name: 'a JSON array of objects', raw: '[{"id":"x"}]', status: 400, field: 'body' },
    { name: 'a JSON number', raw: '42', status: 400, field: 'body' },
    { name: 'a JSON string', raw: '"text"', status: 400, field: 'body' },
    { name: 'JSON true', raw: 'true', status: 400, field: 'body' },
    { name: 'JSON null', raw: 'null', status: 400, field: 'body' },
    { name: 'an empty body declared as JSON', raw: '', status: 400, field: /body/i },
    { name: '__proto__ poisoning', raw: '{"__proto__": {"admin": true}}', status: 400, field: /body/i },
    {
      name: 'constructor poisoning',
      raw: '{"constructor": {"prototype": {"admin": true}}}',
      status: 400,
      field: /body/i,
    },
    {
      name: 'a deeply nested value',
      raw: `{"x": ${'['.repeat(5000)}${']'.repeat(5000)}}`,
      status: 400,
      field: /body/i,
    },
    {
      name: 'invalid UTF-8',
      raw: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]),
      status: 400,
      field: /body/i,
    },
    { name: 'text/plain', raw: 'id=x', contentType: 'text/plain', status: 415, field: /body/i },
    { name: 'form-urlencoded', raw: 'id=x', contentType: 'application/x-www-form-urlencoded', status: 415 },
    { name: 'XML', raw: '<id>x</id>', contentType: 'application/xml', status: 415 },
    { name: 'octet-stream', raw: '{}', contentType: 'application/octet-stream', status: 415 },
    { name: 'no content-type', raw: '{}', contentType: null, status: 415, code: 'unsupported_media_type' },
    {
      name: 'JSON in latin1',
      raw: '{}',
      contentType: 'application/json; charset=latin1',
      status: [400, 415],
      field: /body/i,
    },
    {
      name: 'a body just over 64 KiB',
      raw: JSON.stringify({ pad: 'x'.repeat(64 * KiB) }),
      status: 413,
      code: 'payload_too_large',
    },
    {
      name: 'a 2 MiB body',
      raw: JSON.stringify({ pad: 'x'.repeat(2048 * KiB) }),
      status: 413,
      code: 'payload_too_large',
    },
    {
      name: 'a 2 MiB body that is not JSON',
      raw: 'x'.repeat(2048 * KiB),
      contentType: 'text/plain',
      // Refused for its media type before its size is read.
      status: 415,
      code: 'unsupported_media_type',
    },
  ];
  return cases.map((c) => ({ method, path, ...c, ...overrides[c.name] }) as Case);
}

/** Ids no route may accept: 400 naming params.id (the path is URL-encoded as a client would). */
const MALFORMED_IDS: [string, string][] = [
  ['..%2F..', 'a traversal'],
  ['a%20b', 'a space'],
  ['%20lead', 'a leading space'],
  ['-lead', 'a leading dash'],
  ['.hidden', 'a leading dot'],
  ['a%2Fb', 'an encoded slash'],
  ['a%00b', 'a NUL'],
  ['%C3%A4', 'a non-ASCII letter'],
  ['a%3Bb', 'a semicolon'],
  ['a'.repeat(129), '129 characters'],
  ['a'.repeat(256), '256 characters'],
];
function malformedIdCases(method: string, pathOf: (id: string) => string, body?: unknown): Case[] {
  return MALFORMED_IDS.map(([id, what]) => ({
    name: `malformed id: ${what}`,
    method,
    path: pathOf(id),
    ...(body === undefined ? {} : { body }),
    status: 400,
    field: 'params.id',
    code: 'invalid_request',
  }));
}

const validConnection = {
  id: 'bi-new-conn',
  type: 'postgres',
  host: 'db.internal',
  port: 5432,
  database: 'app',
  tls: { mode: 'verify-full', ca: '-----BEGIN CERTIFICATE-----' },
  admin: { username: 'admin', password: 'admin-password', store: { type: 'local' } },
  labels: { team: 'payments' },
  // Registered unchecked: db.internal must not be resolved by a test (verify logs in where a connection points).
  verify: false,
};

const validCredential = {
  id: 'bi-new-cred',
  connection: CONN,
  username: 'app_user',
  strategy: 'alternating-users',
  schedule: { every: '30d', window: '1h', jitter: '5m' },
  store: { type: 'local' },
  password: { length: 32, charset: 'alphanumeric', requireEachClass: true },
  maxAgeDays: 90,
  gracePeriod: '1h',
  labels: { team: 'payments' },
};

const labelRows = (prefix: string): FieldCase[] => [
  [`${prefix}labels`, [], `body.${prefix}labels must be object`],
  [`${prefix}labels`, 'team=payments', `body.${prefix}labels must be object`],
  [`${prefix}labels.team`, 5, `body.${prefix}labels.team must be string`],
  [`${prefix}labels.team`, { nested: 'x' }, `body.${prefix}labels.team must be string`],
  [`${prefix}labels.team`, 'v'.repeat(257), `body.${prefix}labels.team`],
  [`${prefix}labels.!bad`, 'x', `body.${prefix}labels.!bad is not a known field`],
  [`${prefix}labels.${'k'.repeat(64)}`, 'x', `body.${prefix}labels.${'k'.repeat(64)}`],
  [
    `${prefix}labels`,
    Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v'])),
    `body.${prefix}labels must NOT have more than 32 properties`,
  ],
];

const storeRows = (p: string): FieldCase[] => [
  [p, 'local', `body.${p}`],
  [p, { type: 'nope' }, `body.${p}`],
  [p, {}, `body.${p}`],
  [`${p}.extra`, 1, `body.${p}.extra is not a known field`],
  [p, { type: 'vault', mount: 'secret' }, `body.${p}.path is required`],
  [p, { type: 'vault', mount: 'secret', path: '../../sys/policy/x' }, `body.${p}.path`],
  [p, { type: 'vault', mount: 'secret', path: 'apps/./db' }, `body.${p}.path`],
  [p, { type: 'vault', mount: 'secret', path: 'apps//db' }, `body.${p}.path`],
  [p, { type: 'vault', mount: 'se cret', path: 'a/b' }, `body.${p}.mount`],
  [p, { type: 'vault', mount: '..', path: 'a/b' }, `body.${p}.mount`],
  [p, { type: 'vault', mount: 'secret', path: 'a/b', region: 'x' }, `body.${p}.region is not a known field`],
  [p, { type: 'aws', secretId: '' }, `body.${p}.secretId`],
  [p, { type: 'aws', secretId: 's'.repeat(2049) }, `body.${p}.secretId`],
  [p, { type: 'aws', secretId: 'prod/db', region: 'Mars' }, `body.${p}.region`],
  [p, { type: 'aws', secretId: 7 }, `body.${p}.secretId`],
];

const scheduleRows = (p: string): FieldCase[] => [
  [p, '30d', `body.${p}`],
  [p, {}, `body.${p}`],
  [p, [{ every: '30d' }], `body.${p}`],
  [p, { every: 30 }, `body.${p}.every`],
  [p, { every: '0d' }, `body.${p}.every`],
  [p, { every: '10x' }, `body.${p}.every`],
  [p, { every: '30 d' }, `body.${p}.every`],
  [p, { every: '-1d' }, `body.${p}.every`],
  [p, { every: '1.5h' }, `body.${p}.every`],
  [p, { every: '1234567890s' }, `body.${p}.every`],
  // Beyond what Date and BullMQ can schedule (was a 500 that left the credential half-registered).
  [p, { every: '999999999d' }, `body.${p}.every`],
  [p, { every: '1000000d' }, `body.${p}.every`],
  [p, { every: '10000000h' }, `body.${p}.every`],
  // Over parseDuration's 3650 days: gracePeriod and every were parsed unchecked by the service (a 500).
  [p, { every: '3651d' }, `body.${p}.every`],
  [p, { cron: '0 3 * * 1', window: '4000d' }, `body.${p}.window`],
  [p, { every: '30d', foo: 1 }, `body.${p}.foo is not a known field`],
  [p, { every: '30d', timezone: 'UTC' }, `body.${p}.timezone is not a known field`],
  [p, { every: '30d', cron: '0 3 * * 1' }, `body.${p}`],
  [p, { every: '30d', window: 'soon' }, `body.${p}.window`],
  [p, { every: '30d', jitter: 5 }, `body.${p}.jitter`],
  [p, { every: '30d', jitter: '999999999h' }, `body.${p}.jitter`],
  [p, { cron: 5 }, `body.${p}.cron`],
  [p, { cron: '* * *' }, `body.${p}.cron`],
  [p, { cron: `0 3 * * ${'1,'.repeat(70)}1` }, `body.${p}.cron`],
  [p, { cron: '0 3 * * 1', timezone: 'x'.repeat(65) }, `body.${p}.timezone`],
  [p, { cron: '0 3 * * 1', timezone: '' }, `body.${p}.timezone`],
  [p, { cron: '0 3 * * 1', timezone: 1 }, `body.${p}.timezone`],
  [p, { cron: '0 3 * * 1', window: '1 h' }, `body.${p}.window`],
];

const passwordRows = (p: string): FieldCase[] => [
  [p, 'hunter2hunter2hunter2', `body.${p}`],
  [`${p}.length`, 8, `body.${p}.length must be >= 16`],
  [`${p}.length`, 257, `body.${p}.length must be <= 256`],
  [`${p}.length`, 32.5, `body.${p}.length must be integer`],
  [`${p}.length`, '32', `body.${p}.length must be integer`],
  [`${p}.charset`, 'emoji', `body.${p}.charset`],
  [`${p}.requireEachClass`, 'yes', `body.${p}.requireEachClass must be boolean`],
  [`${p}.symbols`, true, `body.${p}.symbols is not a known field`],
];

/** Dual control's policy (SPEC, "Dual control"), on connections and credentials, created or changed. */
const approvalRows = (p: string): FieldCase[] => [
  [p, 'two-person', `body.${p}`],
  [p, [], `body.${p}`],
  [p, {}, `body.${p}.required is required`],
  [p, { approvers: ['role:admin'] }, `body.${p}.required is required`],
  [p, { required: 1 }, `body.${p}.approvers is required`],
  [`${p}.required`, 0, `body.${p}.required must be >= 1`],
  [`${p}.required`, 6, `body.${p}.required must be <= 5`],
  [`${p}.required`, 1.5, `body.${p}.required must be integer`],
  [`${p}.required`, '1', `body.${p}.required must be integer`],
  [`${p}.approvers`, 'role:admin', `body.${p}.approvers must be array`],
  [`${p}.approvers`, [], `body.${p}.approvers must NOT have fewer than 1 items`],
  [
    `${p}.approvers`,
    Array.from({ length: 17 }, (_, i) => `name:p${i}`),
    `body.${p}.approvers must NOT have more than 16 items`,
  ],
  [`${p}.approvers`, ['role:root'], `body.${p}.approvers.0 must match pattern`],
  [`${p}.approvers`, ['admin'], `body.${p}.approvers.0 must match pattern`],
  [`${p}.approvers`, ['name:'], `body.${p}.approvers.0 must match pattern`],
  [`${p}.approvers`, ['name:a\u0000b'], `body.${p}.approvers.0 must match pattern`],
  [`${p}.approvers`, [`name:${'n'.repeat(257)}`], `body.${p}.approvers.0 must match pattern`],
  [`${p}.approvers`, [7], `body.${p}.approvers.0 must be string`],
  [`${p}.approvers`, ['name:bob', 'name:bob'], `body.${p}.approvers must NOT have duplicate items`],
  [`${p}.quorum`, 2, `body.${p}.quorum is not a known field`],
];
const approvalBase = { required: 1, approvers: ['role:admin', 'name:bob'] };

const connectionCases: Case[] = [
  ...fieldCases('POST', '/v1/connections', validConnection, [
    ['id', 42, 'body.id must be string'],
    ['id', '', 'body.id'],
    ['id', '-lead', 'body.id'],
    ['id', 'a/b', 'body.id'],
    ['id', 'a'.repeat(129), 'body.id'],
    ['type', 5, 'body.type must be string'],
    ['type', '', 'body.type'],
    ['type', 't'.repeat(33), 'body.type'],
    ['host', true, 'body.host must be string'],
    ['host', 'bad host!', 'body.host'],
    ['host', 'h'.repeat(254), 'body.host'],
    ['host', '', 'body.host'],
    ['port', '5432', 'body.port must be integer'],
    ['port', 5432.5, 'body.port must be integer'],
    ['port', null, 'body.port must be integer'],
    ['port', 0, 'body.port must be >= 1'],
    ['port', -1, 'body.port must be >= 1'],
    ['port', 65536, 'body.port must be <= 65535'],
    ['port', 1e300, 'body.port must be <= 65535'],
    ['database', 1, 'body.database must be string'],
    ['database', '', 'body.database'],
    ['database', 'd'.repeat(64), 'body.database'],
    ['tls', 'require', 'body.tls must be object'],
    ['tls', {}, 'body.tls.mode is required'],
    ['tls.mode', 'x', 'body.tls.mode'],
    ['tls.mode', true, 'body.tls.mode'],
    ['tls.ca', 1, 'body.tls.ca must be string'],
    ['tls.ca', 'c'.repeat(32 * KiB + 1), 'body.tls.ca'],
    ['admin', 'admin:secret', 'body.admin must be object'],
    ['admin', {}, 'body.admin.username is required'],
    ['admin.username', 1, 'body.admin.username must be string'],
    ['admin.username', '', 'body.admin.username'],
    ['admin.username', 'u'.repeat(64), 'body.admin.username'],
    ['admin.password', 12345678, 'body.admin.password must be string'],
    ['admin.password', '', 'body.admin.password'],
    ['admin.password', 'p'.repeat(1025), 'body.admin.password'],
    ...storeRows('admin.store'),
    ...labelRows(''),
    ['region', 'eu', 'body.region'],
    ['endpoint', 'https://iam.example.invalid/path', 'body.endpoint'],
    ['endpoint', 'https://user:pass@iam.example.invalid', 'body.endpoint'],
    ['endpoint', 'ftp://iam.example.invalid', 'body.endpoint'],
    ...missing(['id', 'type', 'admin', 'admin.username', 'admin.password']),
    ...unknown(['foo', 'password', 'credentials', 'admin.role', 'tls.verify']),
  ]),
  ...fieldCases(
    'POST',
    '/v1/connections',
    { ...validConnection, approval: approvalBase },
    approvalRows('approval'),
  ),
  ...fieldCases('PATCH', `/v1/connections/${CONN}`, { approval: approvalBase }, [
    ...approvalRows('approval'),
  ]),
  {
    name: 'an approval no named approvers can meet',
    method: 'POST',
    path: '/v1/connections',
    body: { ...validConnection, approval: { required: 2, approvers: ['name:bob'] } },
    status: 422,
    code: 'unprocessable',
    field: 'approval.required',
  },
  // The headers of a request dual control may gate: refused before anything runs (the fixtures stay).
  ...(
    [
      ['x-keyturn-approval', 'not-a-uuid', 'headers.x-keyturn-approval must match format "uuid"'],
      ['x-keyturn-approval', '7d444840-9dc0-11d1-b245-5ffdce74fad', 'headers.x-keyturn-approval'],
      ['x-keyturn-break-glass', 'x'.repeat(501), 'headers.x-keyturn-break-glass'],
      ['x-keyturn-break-glass', '   ', 'headers.x-keyturn-break-glass must match pattern'],
    ] as const
  ).flatMap(([header, value, field]): Case[] =>
    (
      [
        ['DELETE', `/v1/connections/${CONN}`, undefined],
        ['PATCH', `/v1/connections/${CONN}`, { port: 5433, verify: false }],
        ['DELETE', `/v1/credentials/${PG_CRED}`, undefined],
        ['PATCH', `/v1/credentials/${PG_CRED}`, { maxAgeDays: 30 }],
        ['GET', `/v1/credentials/${PG_CRED}/secret`, undefined],
        ['POST', `/v1/credentials/${PG_CRED}/leases`, { ttl: '1m' }],
      ] as const
    ).map(([method, path, body]) => ({
      name: `${header}: ${preview(value)}`,
      method,
      path,
      ...(body === undefined ? {} : { body }),
      headers: { [header]: value },
      status: 400,
      field,
      code: 'invalid_request',
    })),
  ),
  ...bodyFormCases('POST', '/v1/connections'),
  {
    name: 'an unsupported type',
    method: 'POST',
    path: '/v1/connections',
    body: { ...validConnection, type: 'oracle' },
    status: 422,
    code: 'unprocessable',
    field: 'oracle',
  },
  // RabbitMQ connections (issue 16): their options are the target's to check, with a 422 naming each problem.
  ...(
    [
      ['an amqpPort out of range', { amqpPort: 70_000 }, 'amqpPort must be a port number'],
      ['an amqpPort that is text', { amqpPort: '5672' }, 'amqpPort must be a port number'],
      ['an empty vhost', { vhost: '' }, 'vhost must be a virtual host name'],
      ['a vhost with a control character', { vhost: 'pay\u0000ments' }, 'vhost must be a virtual host name'],
      [
        'an option it does not take',
        { exchange: 'amq.topic' },
        '"exchange" is not an option of rabbitmq connections',
      ],
    ] as const
  ).map(
    ([name, options, field]): Case => ({
      name: `a rabbitmq connection with ${name}`,
      method: 'POST',
      path: '/v1/connections',
      body: { ...validConnection, type: 'rabbitmq', port: 15672, options },
      status: 422,
      code: 'unprocessable',
      field,
    }),
  ),
  {
    name: 'a postgres connection without host',
    method: 'POST',
    path: '/v1/connections',
    body: { ...validConnection, host: undefined },
    status: 422,
    code: 'unprocessable',
    field: 'host is required for postgres connections',
  },
  // AWS IAM connections (issue 16): region and endpoint, not host and port; the endpoint is https but on loopback.
  ...(
    [
      ['a host', { host: 'iam.amazonaws.com' }, 'not host and port'],
      ['a port', { port: 443 }, 'not host and port'],
      ['an http endpoint off this machine', { endpoint: 'http://iam.example.invalid' }, 'https://'],
      ['a settleSeconds of 0', { options: { settleSeconds: 0 } }, 'settleSeconds must be'],
      ['a settleSeconds that is text', { options: { settleSeconds: '30' } }, 'settleSeconds must be'],
      ['an option it does not take', { options: { userDn: 'x' } }, '"userDn" is not an option of aws-iam'],
      ['an admin rotation', { adminRotation: { schedule: { every: '30d' } } }, 'Rotate it by hand'],
    ] as const
  ).map(
    ([name, change, field]): Case => ({
      name: `an aws-iam connection with ${name}`,
      method: 'POST',
      path: '/v1/connections',
      body: {
        id: 'bi-iam-new',
        type: 'aws-iam',
        endpoint: 'https://iam.example.invalid',
        admin: { username: 'AKIAEXAMPLEEXAMPLE12', password: 'not-a-real-secret-access-key' },
        verify: false,
        ...change,
      },
      status: 422,
      code: 'unprocessable',
      field,
    }),
  ),
  {
    name: 'a postgres connection with a region',
    method: 'POST',
    path: '/v1/connections',
    body: { ...validConnection, region: 'eu-west-1' },
    status: 422,
    code: 'unprocessable',
    field: 'region and endpoint apply',
  },
  ...(
    [
      ['alternating-users', { strategy: 'alternating-users' }, 'single-user only'],
      [
        'an import',
        { import: true, currentPassword: 'not-a-real-secret-access-key' },
        'import does not apply',
      ],
    ] as const
  ).map(
    ([name, change, field]): Case => ({
      name: `an aws-iam credential with ${name}`,
      method: 'POST',
      path: '/v1/credentials',
      body: {
        id: 'bi-iam-cred',
        connection: IAM_CONN,
        username: 'svc-payments',
        strategy: 'single-user',
        schedule: { every: '30d' },
        ...change,
      },
      status: 422,
      code: 'unprocessable',
      field,
    }),
  ),
  // LDAP connections (issue 16): userDn is required and must place {username} as the first RDN's value.
  ...(
    [
      ['no userDn', {}, 'options.userDn is required'],
      [
        'a userDn without {username}',
        { userDn: 'ou=services,dc=example,dc=org' },
        'first RDN is attribute={username}',
      ],
      ['a userDn with {username} twice', { userDn: 'uid={username},cn={username},dc=x' }, 'exactly once'],
      ['a userDn that is a number', { userDn: 42 }, 'options.userDn must be a DN'],
      [
        'an unknown passwordAttribute',
        { userDn: 'uid={username},dc=x', passwordAttribute: 'sambaNTPassword' },
        'options.passwordAttribute must be',
      ],
      [
        'a startTls that is text',
        { userDn: 'uid={username},dc=x', startTls: 'yes' },
        'startTls must be true or false',
      ],
      [
        'a groupBase that is no DN',
        { userDn: 'uid={username},dc=x', groupBase: 'groups' },
        'groupBase must be a DN',
      ],
      [
        'an option it does not take',
        { userDn: 'uid={username},dc=x', filter: '(uid=*)' },
        '"filter" is not an option of ldap connections',
      ],
    ] as const
  ).map(
    ([name, options, field]): Case => ({
      name: `an ldap connection with ${name}`,
      method: 'POST',
      path: '/v1/connections',
      body: { ...validConnection, type: 'ldap', port: 636, options },
      status: 422,
      code: 'unprocessable',
      field,
    }),
  ),
  {
    name: 'a dry run whose dryRun is not a boolean',
    method: 'POST',
    path: `/v1/credentials/${PG_CRED}/rotate?dryRun=maybe`,
    status: 400,
    code: 'invalid_request',
    field: 'dryRun',
  },
  {
    name: 'a verify that is not a boolean',
    method: 'POST',
    path: '/v1/connections',
    body: { ...validConnection, verify: 'no' },
    status: 400,
    code: 'invalid_request',
    field: 'verify',
  },
  // Admin rotation (issue 16 §3): its schedule is checked like a credential's, and the route takes no body.
  {
    name: 'an adminRotation without a schedule',
    method: 'POST',
    path: '/v1/connections',
    body: { ...validConnection, adminRotation: { maxAgeDays: 30 } },
    status: 400,
    code: 'invalid_request',
    field: 'schedule',
  },
  {
    name: 'an adminRotation whose cron is not one',
    method: 'POST',
    path: '/v1/connections',
    body: { ...validConnection, adminRotation: { schedule: { cron: '99 99 * * * *' } } },
    status: 422,
    code: 'unprocessable',
    field: 'adminRotation.schedule',
  },
  {
    name: 'an adminRotation maxAgeDays of 0',
    method: 'PATCH',
    path: `/v1/connections/${CONN}`,
    body: { adminRotation: { schedule: { every: '30d' }, maxAgeDays: 0 } },
    status: 400,
    code: 'invalid_request',
    field: 'maxAgeDays',
  },
  {
    name: 'an admin rotation with a body',
    method: 'POST',
    path: `/v1/connections/${CONN}/rotate`,
    body: { now: true },
    status: 400,
    code: 'invalid_request',
    field: 'rotate takes no parameters',
  },
  {
    name: 'an admin rotation of a connection that does not exist',
    method: 'POST',
    path: `/v1/connections/${UNKNOWN_ID}/rotate`,
    status: 404,
    code: 'not_found',
    field: UNKNOWN_ID,
  },
  ...malformedIdCases('POST', (id) => `/v1/connections/${id}/rotate`),
  {
    name: 'a store this Keyturn has not configured',
    method: 'POST',
    path: '/v1/connections',
    body: withField(validConnection, 'admin.store', { type: 'vault', mount: 'secret', path: 'apps/db' }),
    status: 422,
    code: 'unprocessable',
    field: 'vault',
  },
  {
    name: 'a duplicate id',
    method: 'POST',
    path: '/v1/connections',
    body: { ...validConnection, id: CONN },
    status: 409,
    code: 'conflict',
    field: CONN,
  },
  {
    name: 'an unknown query parameter',
    method: 'GET',
    path: '/v1/connections?foo=1',
    status: 400,
    field: /querystring\.foo/,
  },

  // GET /v1/connections/:id
  {
    name: 'an unknown id',
    method: 'GET',
    path: `/v1/connections/${UNKNOWN_ID}`,
    status: 404,
    code: 'not_found',
    field: UNKNOWN_ID,
  },
  ...malformedIdCases('GET', (id) => `/v1/connections/${id}`),

  // PATCH /v1/connections/:id
  ...fieldCases('PATCH', `/v1/connections/${CONN}`, { port: 5433, verify: false }, [
    ['host', 1, 'body.host must be string'],
    ['host', 'bad host', 'body.host'],
    ['port', 'x', 'body.port must be integer'],
    ['port', 70000, 'body.port must be <= 65535'],
    ['port', 0, 'body.port must be >= 1'],
    ['database', '', 'body.database'],
    ['database', 'd'.repeat(64), 'body.database'],
    ['tls', { mode: 'bad' }, 'body.tls.mode'],
    ['tls', { mode: 'require', foo: 1 }, 'body.tls.foo is not a known field'],
    ['admin', {}, 'body.admin must NOT have fewer than 1 properties'],
    ['admin', 'x', 'body.admin must be object'],
    ['admin.password', '', 'body.admin.password'],
    ['admin.password', 'p'.repeat(1025), 'body.admin.password'],
    ['admin.username', 'u'.repeat(64), 'body.admin.username'],
    // The admin secret's store is chosen at registration only.
    ['admin.store', { type: 'local' }, 'body.admin.store is not a known field'],
    ...labelRows(''),
    ...unknown(['id', 'type', 'foo', 'admin.extra', 'createdAt']),
  ]),
  {
    name: 'an empty patch',
    method: 'PATCH',
    path: `/v1/connections/${CONN}`,
    body: {},
    status: 400,
    field: 'body must NOT have fewer than 1 properties',
  },
  ...bodyFormCases('PATCH', `/v1/connections/${CONN}`),
  {
    name: 'an unknown id',
    method: 'PATCH',
    path: `/v1/connections/${UNKNOWN_ID}`,
    body: { port: 5433, verify: false },
    status: 404,
    code: 'not_found',
    field: UNKNOWN_ID,
  },
  ...malformedIdCases('PATCH', (id) => `/v1/connections/${id}`, { port: 5433, verify: false }),

  // DELETE /v1/connections/:id
  {
    name: 'an unknown id',
    method: 'DELETE',
    path: `/v1/connections/${UNKNOWN_ID}`,
    status: 404,
    code: 'not_found',
  },
  ...malformedIdCases('DELETE', (id) => `/v1/connections/${id}`),
  {
    name: 'a connection a credential uses',
    method: 'DELETE',
    path: `/v1/connections/${PG_CONN}`,
    status: 409,
    code: 'conflict',
    field: PG_CRED,
  },
  {
    name: 'malformed JSON body',
    method: 'DELETE',
    path: `/v1/connections/${UNKNOWN_ID}`,
    raw: '{',
    status: 400,
    field: /body/i,
  },
  {
    name: 'a body over 64 KiB',
    method: 'DELETE',
    path: `/v1/connections/${UNKNOWN_ID}`,
    raw: JSON.stringify({ pad: 'x'.repeat(64 * KiB) }),
    status: 413,
    code: 'payload_too_large',
  },
];

const credentialCases: Case[] = [
  ...fieldCases('POST', '/v1/credentials', validCredential, [
    ['id', 42, 'body.id must be string'],
    ['id', '', 'body.id'],
    ['id', 'a b', 'body.id'],
    ['id', 'a'.repeat(129), 'body.id'],
    ['connection', 5, 'body.connection must be string'],
    ['connection', '../x', 'body.connection'],
    ['connection', { id: CONN }, 'body.connection must be string'],
    ['username', 1, 'body.username must be string'],
    ['username', 'Robert"; DROP ROLE admin; --', 'body.username'],
    ['username', '1starts_with_digit', 'body.username'],
    ['username', 'u'.repeat(58), 'body.username'],
    ['username', '', 'body.username'],
    ['strategy', 'triple-users', 'body.strategy'],
    ['strategy', 1, 'body.strategy'],
    ...scheduleRows('schedule'),
    ...storeRows('store'),
    ...passwordRows('password'),
    ['maxAgeDays', 0, 'body.maxAgeDays must be >= 1'],
    ['maxAgeDays', 3651, 'body.maxAgeDays must be <= 3650'],
    ['maxAgeDays', '90', 'body.maxAgeDays must be integer'],
    ['maxAgeDays', 1.5, 'body.maxAgeDays must be integer'],
    ['maxAgeDays', null, 'body.maxAgeDays must be integer'],
    ['gracePeriod', 5, 'body.gracePeriod must be string'],
    ['gracePeriod', '1 hour', 'body.gracePeriod'],
    ['gracePeriod', '999999999d', 'body.gracePeriod'],
    ['gracePeriod', '4000d', 'body.gracePeriod'],
    ['notifyBefore', 5, 'body.notifyBefore must be string'],
    ['notifyBefore', '1 day', 'body.notifyBefore'],
    ['notifyBefore', null, 'body.notifyBefore must be string'],
    ['import', 'yes', 'body.import must be boolean'],
    ['currentPassword', '', 'body.currentPassword'],
    ['currentPassword', 'p'.repeat(1025), 'body.currentPassword'],
    ...labelRows(''),
    ...missing(['id', 'connection', 'username', 'strategy', 'schedule']),
    ...unknown(['foo', 'status', 'version', 'password.foo', 'schedule.foo', 'store.foo']),
  ]),
  ...bodyFormCases('POST', '/v1/credentials'),
  ...(
    [
      ['an unknown connection', { connection: UNKNOWN_ID }, UNKNOWN_ID],
      ['a cron minute of 61', { schedule: { cron: '61 * * * *' } }, 'schedule.cron'],
      ['a cron that never fires', { schedule: { cron: '0 0 31 2 *' } }, 'schedule.cron'],
      ['a cron with six fields', { schedule: { cron: '0 0 3 * * 1' } }, 'schedule.cron'],
      ['a cron of words', { schedule: { cron: 'every day at noon' } }, 'schedule.cron'],
      [
        'a time zone on Mars',
        { schedule: { cron: '0 3 * * 1', timezone: 'Mars/Olympus' } },
        'schedule.timezone',
      ],
      ['gracePeriod with single-user', { strategy: 'single-user' }, 'gracePeriod'],
      [
        'gracePeriod longer than the interval',
        { schedule: { every: '1h' }, gracePeriod: '2h' },
        'gracePeriod',
      ],
      ['import without currentPassword', { import: true }, 'currentPassword'],
      ['currentPassword without import', { currentPassword: 'the-password-today' }, 'currentPassword'],
      ['a store this Keyturn has not configured', { store: { type: 'aws', secretId: 'prod/db' } }, 'aws'],
    ] as const
  ).map(
    ([name, patch, field]): Case => ({
      name,
      method: 'POST',
      path: '/v1/credentials',
      body: { ...validCredential, ...patch },
      status: 422,
      code: 'unprocessable',
      field,
    }),
  ),
  {
    name: 'a duplicate id',
    method: 'POST',
    path: '/v1/credentials',
    body: { ...validCredential, id: PG_CRED, connection: PG_CONN },
    status: 409,
    code: 'conflict',
    field: PG_CRED,
  },

  // GET /v1/credentials
  ...(
    [
      ['label=noseparator', 'querystring.label'],
      ['label==x', 'querystring.label'],
      [`label=${'k'.repeat(64)}=x`, 'querystring.label'],
      [`label=team=${'v'.repeat(257)}`, 'querystring.label'],
      ['status=done', 'querystring.status'],
      ['status=', 'querystring.status'],
      ['status=active&status=failed', 'querystring.status'],
      ['overdue=maybe', 'querystring.overdue must be boolean'],
      ['overdue=', 'querystring.overdue must be boolean'],
      ['overdue=2', 'querystring.overdue must be boolean'],
      ['foo=1', 'querystring.foo is not a known field'],
      ['labels=team%3Dx', 'querystring.labels is not a known field'],
    ] as const
  ).map(
    ([query, field]): Case => ({
      name: `query ${query.slice(0, 60)}`,
      method: 'GET',
      path: `/v1/credentials?${query}`,
      status: 400,
      field,
      code: 'invalid_request',
    }),
  ),

  // GET /v1/credentials/:id
  {
    name: 'an unknown id',
    method: 'GET',
    path: `/v1/credentials/${UNKNOWN_ID}`,
    status: 404,
    code: 'not_found',
    field: UNKNOWN_ID,
  },
  ...malformedIdCases('GET', (id) => `/v1/credentials/${id}`),

  // Dual control, on a credential created or changed.
  ...fieldCases(
    'POST',
    '/v1/credentials',
    { ...validCredential, approval: approvalBase },
    approvalRows('approval'),
  ),
  ...fieldCases('PATCH', `/v1/credentials/${PG_CRED}`, { approval: approvalBase }, approvalRows('approval')),

  // PATCH /v1/credentials/:id
  ...fieldCases('PATCH', `/v1/credentials/${PG_CRED}`, { maxAgeDays: 30 }, [
    ...scheduleRows('schedule'),
    ...passwordRows('password'),
    ['maxAgeDays', 0, 'body.maxAgeDays'],
    ['maxAgeDays', 'null', 'body.maxAgeDays'],
    ['maxAgeDays', 4000, 'body.maxAgeDays'],
    ['gracePeriod', 5, 'body.gracePeriod'],
    ['gracePeriod', '0s', 'body.gracePeriod'],
    ...labelRows(''),
    // Identity, connection, strategy and store are fixed at registration.
    ...unknown(['id', 'connection', 'username', 'strategy', 'store', 'import', 'foo']),
  ]),
  {
    name: 'an empty patch',
    method: 'PATCH',
    path: `/v1/credentials/${PG_CRED}`,
    body: {},
    status: 400,
    field: 'body must NOT have fewer than 1 properties',
  },
  ...bodyFormCases('PATCH', `/v1/credentials/${PG_CRED}`),
  ...(
    [
      ['gracePeriod on a single-user credential', { gracePeriod: '1h' }, 'gracePeriod'],
      ['a cron minute of 61', { schedule: { cron: '61 * * * *' } }, 'schedule.cron'],
      [
        'a time zone on Mars',
        { schedule: { cron: '0 3 * * 1', timezone: 'Mars/Olympus' } },
        'schedule.timezone',
      ],
    ] as const
  ).map(
    ([name, body, field]): Case => ({
      name,
      method: 'PATCH',
      path: `/v1/credentials/${PG_CRED}`,
      body,
      status: 422,
      code: 'unprocessable',
      field,
    }),
  ),
  {
    name: 'an unknown id',
    method: 'PATCH',
    path: `/v1/credentials/${UNKNOWN_ID}`,
    body: { maxAgeDays: 30 },
    status: 404,
    code: 'not_found',
    field: UNKNOWN_ID,
  },
  ...malformedIdCases('PATCH', (id) => `/v1/credentials/${id}`, { maxAgeDays: 30 }),

  // DELETE /v1/credentials/:id
  {
    name: 'an unknown id',
    method: 'DELETE',
    path: `/v1/credentials/${UNKNOWN_ID}`,
    status: 404,
    code: 'not_found',
  },
  ...malformedIdCases('DELETE', (id) => `/v1/credentials/${id}`),

  // POST /v1/credentials/:id/rotate
  {
    name: 'an unknown id',
    method: 'POST',
    path: `/v1/credentials/${UNKNOWN_ID}/rotate`,
    status: 404,
    code: 'not_found',
  },
  {
    name: 'an unknown id, with {}',
    method: 'POST',
    path: `/v1/credentials/${UNKNOWN_ID}/rotate`,
    body: {},
    status: 404,
    code: 'not_found',
  },
  ...malformedIdCases('POST', (id) => `/v1/credentials/${id}/rotate`),
  ...(
    [
      ['a parameter', { force: true }],
      ['a nested object', { options: { now: true } }],
    ] as const
  ).map(
    ([name, body]): Case => ({
      name: `rotate takes no body: ${name}`,
      method: 'POST',
      path: `/v1/credentials/${PG_CRED}/rotate`,
      body,
      status: 400,
      field: 'body',
    }),
  ),
  // JSON null counts as "no body" on rotate, so an unknown id there is a 404.
  ...bodyFormCases('POST', `/v1/credentials/${UNKNOWN_ID}/rotate`, {
    'JSON null': { status: 404, code: 'not_found', field: UNKNOWN_ID },
    // The parser reads the charset-tagged '{}' as {}, which rotate tolerates.
    'JSON in latin1': { status: 404, code: 'not_found', field: UNKNOWN_ID },
  }),

  // GET /v1/credentials/:id/rotations
  ...(
    [
      ['limit=0', 'querystring.limit must be >= 1'],
      ['limit=-5', 'querystring.limit must be >= 1'],
      ['limit=501', 'querystring.limit must be <= 500'],
      ['limit=abc', 'querystring.limit must be integer'],
      ['limit=1.5', 'querystring.limit must be integer'],
      ['limit=', 'querystring.limit must be integer'],
      ['limit=1&limit=2', 'querystring.limit must be integer'],
      ['before=-1', 'querystring.before must be >= 0'],
      ['before=yesterday', 'querystring.before must be integer'],
      ['before=1.5', 'querystring.before must be integer'],
      ['after=1', 'querystring.after is not a known field'],
    ] as const
  ).map(
    ([query, field]): Case => ({
      name: `query ${query}`,
      method: 'GET',
      path: `/v1/credentials/${PG_CRED}/rotations?${query}`,
      status: 400,
      field,
      code: 'invalid_request',
    }),
  ),
  {
    name: 'an unknown id',
    method: 'GET',
    path: `/v1/credentials/${UNKNOWN_ID}/rotations`,
    status: 404,
    code: 'not_found',
    field: UNKNOWN_ID,
  },
  ...malformedIdCases('GET', (id) => `/v1/credentials/${id}/rotations`),

  // GET /v1/rotations/:id
  ...(
    [
      ['not-a-uuid', 'a word'],
      ['7d444840-9dc0-11d1-b245-5ffdce74fad', 'a digit short'],
      ['7d444840-9dc0-11d1-b245-5ffdce74fad2a', 'a digit long'],
      ['7d444840-9dc0-11d1-b245-5ffdce74fadg', 'a non-hex digit'],
      ['7d4448409dc011d1b2455ffdce74fad2', 'no dashes'],
      ['%7B7d444840-9dc0-11d1-b245-5ffdce74fad2%7D', 'braces'],
      ['7d444840-9dc0-11d1-b245-5ffdce74fad2%20', 'a trailing space'],
      ['..%2F..', 'a traversal'],
      [PG_CRED, 'a credential id'],
      ['a'.repeat(256), '256 characters'],
    ] as const
  ).map(
    ([id, what]): Case => ({
      name: `invalid uuid: ${what}`,
      method: 'GET',
      path: `/v1/rotations/${id}`,
      status: 400,
      field: 'params.id must match format "uuid"',
      code: 'invalid_request',
    }),
  ),
  {
    name: 'an unknown uuid',
    method: 'GET',
    path: `/v1/rotations/${UNKNOWN_UUID}`,
    status: 404,
    code: 'not_found',
    field: UNKNOWN_UUID,
  },
  {
    name: 'an unknown uuid, upper case',
    method: 'GET',
    path: `/v1/rotations/${UNKNOWN_UUID.toUpperCase()}`,
    status: 404,
    code: 'not_found',
  },

  // GET /v1/credentials/:id/secret
  {
    name: 'an unknown id',
    method: 'GET',
    path: `/v1/credentials/${UNKNOWN_ID}/secret`,
    status: 404,
    code: 'not_found',
    field: UNKNOWN_ID,
  },
  ...malformedIdCases('GET', (id) => `/v1/credentials/${id}/secret`),
  {
    name: 'no working version yet (first rotation queued)',
    method: 'GET',
    path: `/v1/credentials/${PG_CRED}/secret`,
    status: 409,
    code: 'no_secret_yet',
    field: PG_CRED,
  },
];

const auditCases: Case[] = (
  [
    ['limit=0', 'querystring.limit must be >= 1'],
    ['limit=1001', 'querystring.limit must be <= 1000'],
    ['limit=abc', 'querystring.limit must be integer'],
    ['limit=1&limit=2', 'querystring.limit must be integer'],
    ['since=not-a-date', 'querystring.since must match format "date-time"'],
    ['since=2026-01-01', 'querystring.since must match format "date-time"'],
    ['since=2026-13-01T00:00:00Z', 'querystring.since must match format "date-time"'],
    ['since=2026-02-30T00:00:00Z', 'querystring.since must match format "date-time"'],
    ['since=1700000000000', 'querystring.since must match format "date-time"'],
    ['until=yesterday', 'querystring.until must match format "date-time"'],
    [
      'since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z',
      'querystring.since must not be after querystring.until',
    ],
    // Format-valid date-times that Date or the audit stream cannot hold (were 500s from XRANGE).
    ['since=0000-01-01T00:00:00Z', 'querystring.since'],
    ['since=1969-12-31T23:59:59Z', 'querystring.since'],
    ['until=1960-01-01T00:00:00Z', 'querystring.until'],
    ['since=2016-12-31T23:59:60Z', 'querystring.since'],
    ['cursor=xyz', 'querystring.cursor must match pattern'],
    ['cursor=1-2-3', 'querystring.cursor must match pattern'],
    ['cursor=-1', 'querystring.cursor must match pattern'],
    // Stream ids beyond 2^64 - 1 (were 500s from XRANGE).
    ['cursor=99999999999999999999-0', 'querystring.cursor'],
    ['cursor=18446744073709551615-18446744073709551615', 'querystring.cursor'],
    ['credential=..%2F..', 'querystring.credential'],
    [`credential=${'c'.repeat(129)}`, 'querystring.credential'],
    ['action=Secret.Read!', 'querystring.action'],
    [`action=${'a'.repeat(65)}`, 'querystring.action'],
    ['actor=', 'querystring.actor'],
    [`actor=${'a'.repeat(129)}`, 'querystring.actor'],
    ['foo=1', 'querystring.foo is not a known field'],
    ['next=1-0', 'querystring.next is not a known field'],
  ] as const
).map(
  ([query, field]): Case => ({
    name: `query ${query.slice(0, 60)}`,
    method: 'GET',
    path: `/v1/audit?${query}`,
    status: 400,
    field,
    code: 'invalid_request',
  }),
);

const auditExportCases: Case[] = (
  [
    ['/v1/audit/export?format=xml', 'querystring.format'],
    ['/v1/audit/export?format=', 'querystring.format'],
    ['/v1/audit/export?since=yesterday', 'querystring.since'],
    ['/v1/audit/export?since=1969-12-31T23:59:59Z', 'querystring.since'],
    ['/v1/audit/export?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z', 'querystring.since'],
    ['/v1/audit/export?action=Secret.Read!', 'querystring.action'],
    ['/v1/audit/export?cursor=1-0', 'querystring.cursor is not a known field'],
    ['/v1/audit/verify?until=soon', 'querystring.until'],
    ['/v1/audit/verify?credential=x', 'querystring.credential is not a known field'],
    ['/v1/audit/public-key?format=der', 'querystring.format is not a known field'],
  ] as const
).map(
  ([path, field]): Case => ({
    name: `GET ${path.slice(0, 70)}`,
    method: 'GET',
    path,
    status: 400,
    field,
    code: 'invalid_request',
  }),
);

const complianceCases: Case[] = [
  ...(
    [
      ['format=xml', 'querystring.format must be one of "json", "csv"'],
      ['format=CSV', 'querystring.format must be one of "json", "csv"'],
      ['format=', 'querystring.format must be one of "json", "csv"'],
      ['format=csv&format=json', 'querystring.format'],
      ['overdue=maybe', 'querystring.overdue must be boolean'],
      ['overdue=2', 'querystring.overdue must be boolean'],
      ['overdue=true&overdue=false', 'querystring.overdue must be boolean'],
      ['label=team', 'querystring.label must match pattern'],
      ['label=:payments', 'querystring.label must match pattern'],
      ['label=', 'querystring.label must match pattern'],
      [`label=${'k'.repeat(64)}:v`, 'querystring.label must match pattern'],
      [`label=team:${'v'.repeat(257)}`, 'querystring.label must match pattern'],
      ['labels=team:payments', 'querystring.labels is not a known field'],
      ['since=2026-01-01T00:00:00Z', 'querystring.since is not a known field'],
    ] as const
  ).map(
    ([query, field]): Case => ({
      name: `query ${query.slice(0, 60)}`,
      method: 'GET',
      path: `/v1/compliance?${query}`,
      status: 400,
      field,
      code: 'invalid_request',
    }),
  ),
  {
    name: 'a label nothing carries: an empty report, not an error',
    method: 'GET',
    path: `/v1/compliance?label=${encodeURIComponent('team:no,body "here"')}`,
    status: 200,
  },
  {
    name: 'POST is not a method of the report',
    method: 'POST',
    path: '/v1/compliance',
    body: {},
    status: 404,
    code: 'not_found',
  },
];

// Only refusals: an accepted GET /v1/events is a stream that never ends (its answers: test/integration/events.test.ts).
const eventCases: Case[] = [
  ...(
    [
      ['credential=..%2F..', 'querystring.credential'],
      ['credential=', 'querystring.credential'],
      ['credential=a%2Fb', 'querystring.credential'],
      ['credential=%7Ba%2Cb%7D', 'querystring.credential'],
      [`credential=${'c'.repeat(129)}`, 'querystring.credential'],
      ['credential=a&credential=b', 'querystring.credential'],
      ['since=1-0', 'querystring.since is not a known field'],
    ] as const
  ).map(
    ([query, field]): Case => ({
      name: `query ${query.slice(0, 60)}`,
      method: 'GET',
      path: `/v1/events?${query}`,
      status: 400,
      field,
      code: 'invalid_request',
    }),
  ),
  ...['yesterday', '1-2-3', '-1', '99999999999999999999-0', '1', ''].map(
    (id): Case => ({
      name: `Last-Event-ID "${id}"`,
      method: 'GET',
      path: '/v1/events',
      headers: { 'last-event-id': id },
      status: 400,
      field: 'headers.last-event-id',
      code: 'invalid_request',
    }),
  ),
  {
    name: 'a POST',
    method: 'POST',
    path: '/v1/events',
    body: {},
    status: 404,
    code: 'not_found',
  },
];

// Dual control's approvals: list, show, approve, deny.
const approvalCases: Case[] = [
  ...(
    [
      ['status=open', 'querystring.status must be one of'],
      ['status=', 'querystring.status must be one of'],
      ['status=pending&status=used', 'querystring.status'],
      ['limit=0', 'querystring.limit must be >= 1'],
      ['limit=1001', 'querystring.limit must be <= 1000'],
      ['limit=x', 'querystring.limit must be integer'],
      ['cursor=xyz', 'querystring.cursor is not a cursor'],
      [`cursor=${'c'.repeat(201)}`, 'querystring.cursor'],
      [`cursor=${Buffer.from('1:../../etc').toString('base64url')}`, 'querystring.cursor is not a cursor'],
      ['requester=ops', 'querystring.requester is not a known field'],
    ] as const
  ).map(
    ([query, field]): Case => ({
      name: `query ${query.slice(0, 60)}`,
      method: 'GET',
      path: `/v1/approvals?${query}`,
      status: 400,
      field,
      code: 'invalid_request',
    }),
  ),
  { name: 'a valid query', method: 'GET', path: '/v1/approvals?status=pending&limit=5', status: 200 },
  ...(['not-a-uuid', '7d444840-9dc0-11d1-b245-5ffdce74fad', PG_CRED, '..%2F..'] as const).flatMap(
    (id): Case[] => [
      {
        name: `invalid uuid ${id}`,
        method: 'GET',
        path: `/v1/approvals/${id}`,
        status: 400,
        field: 'params.id must match format "uuid"',
        code: 'invalid_request',
      },
      {
        name: `invalid uuid ${id}`,
        method: 'POST',
        path: `/v1/approvals/${id}/approve`,
        body: { reason: 'ok' },
        status: 400,
        field: 'params.id must match format "uuid"',
        code: 'invalid_request',
      },
    ],
  ),
  {
    name: 'an unknown approval',
    method: 'GET',
    path: `/v1/approvals/${UNKNOWN_UUID}`,
    status: 404,
    code: 'not_found',
  },
  ...(['approve', 'deny'] as const).flatMap((decision): Case[] => [
    ...fieldCases('POST', `/v1/approvals/${UNKNOWN_UUID}/${decision}`, { reason: 'ticket CHG-1' }, [
      ['reason', DROP, 'body.reason is required'],
      ['reason', '', 'body.reason must NOT have fewer than 1 characters'],
      ['reason', '   ', 'body.reason must match pattern'],
      ['reason', 'r'.repeat(501), 'body.reason must NOT have more than 500 characters'],
      ['reason', 42, 'body.reason must be string'],
      ['reason', null, 'body.reason must be string'],
      ['approve', true, 'body.approve is not a known field'],
    ]),
    {
      name: 'an unknown approval',
      method: 'POST',
      path: `/v1/approvals/${UNKNOWN_UUID}/${decision}`,
      body: { reason: 'ticket CHG-1' },
      status: 404,
      code: 'not_found',
      field: UNKNOWN_UUID,
    },
    ...bodyFormCases('POST', `/v1/approvals/${UNKNOWN_UUID}/${decision}`),
  ]),
  {
    name: 'GET is not a method of a decision',
    method: 'GET',
    path: `/v1/approvals/${UNKNOWN_UUID}/approve`,
    status: 404,
    code: 'not_found',
  },
];

// The key-encryption key: GET shows the providers, POST starts a rekey and takes no parameters.
const rekeyCases: Case[] = [
  ...([{ to: 'aws-kms' }, [1], 'text', 42] as const).map(
    (body): Case => ({
      name: `POST /v1/rekey with ${JSON.stringify(body)}`,
      method: 'POST',
      path: '/v1/rekey',
      body,
      status: 400,
      field: 'body must be empty or {}: rekey takes no parameters',
      code: 'invalid_request',
    }),
  ),
  {
    name: 'a query GET /v1/rekey does not take',
    method: 'GET',
    path: '/v1/rekey?provider=env',
    status: 400,
    field: 'querystring.provider is not a known field',
    code: 'invalid_request',
  },
  { name: 'GET /v1/rekey', method: 'GET', path: '/v1/rekey', status: 200 },
  { name: 'a method the route lacks', method: 'DELETE', path: '/v1/rekey', status: 404, code: 'not_found' },
];

const routingCases: Case[] = [
  { name: 'an unknown route', method: 'GET', path: '/v1/nothing', status: 404, code: 'not_found' },
  { name: 'an unknown version', method: 'GET', path: '/v2/connections', status: 404, code: 'not_found' },
  {
    name: 'a method the route lacks',
    method: 'PUT',
    path: '/v1/connections',
    body: {},
    status: 404,
    code: 'not_found',
  },
  {
    name: 'a method the route lacks',
    method: 'DELETE',
    path: '/v1/connections',
    status: 404,
    code: 'not_found',
  },
  {
    name: 'a method the route lacks',
    method: 'GET',
    path: `/v1/credentials/${PG_CRED}/rotate`,
    status: 404,
    code: 'not_found',
  },
  {
    name: 'an extra path segment',
    method: 'GET',
    path: `/v1/connections/${CONN}/extra`,
    status: 404,
    code: 'not_found',
  },
  { name: 'a probe with POST', method: 'POST', path: '/healthz', body: {}, status: 404, code: 'not_found' },
  { name: 'a probe with DELETE', method: 'DELETE', path: '/readyz', status: 404, code: 'not_found' },
  {
    name: 'probes ignore query parameters',
    method: 'GET',
    path: '/healthz?verbose=maybe&x',
    auth: null,
    status: 200,
  },
  {
    name: 'probes ignore query parameters',
    method: 'GET',
    path: '/readyz?verbose=maybe&x',
    auth: null,
    status: 200,
  },
  { name: 'metrics with POST', method: 'POST', path: '/metrics', body: {}, status: 404, code: 'not_found' },
  {
    name: 'metrics ignore query parameters (a scrape config may add some)',
    method: 'GET',
    path: '/metrics?name[]=x&format=openmetrics',
    auth: null,
    status: 200,
  },
  {
    name: 'the OpenAPI document with POST',
    method: 'POST',
    path: '/docs/json',
    body: {},
    status: 404,
    code: 'not_found',
  },
  {
    name: 'the docs ignore query parameters',
    method: 'GET',
    path: '/docs/json?url=x&%zz',
    auth: null,
    status: 200,
  },
  {
    name: 'a docs asset that does not exist',
    method: 'GET',
    path: '/docs/static/..%2F..%2Fpackage.json',
    auth: null,
    status: 404,
  },
];

/** Every route that needs a token, with a body where it takes one. */
const AUTHENTICATED: [method: string, path: string, body?: unknown][] = [
  ['POST', '/v1/connections', validConnection],
  ['GET', '/v1/connections'],
  ['GET', `/v1/connections/${CONN}`],
  ['PATCH', `/v1/connections/${CONN}`, { port: 5433, verify: false }],
  ['DELETE', `/v1/connections/${CONN}`],
  ['POST', '/v1/credentials', validCredential],
  ['GET', '/v1/credentials?overdue=true'],
  ['GET', `/v1/credentials/${PG_CRED}`],
  ['PATCH', `/v1/credentials/${PG_CRED}`, { maxAgeDays: 30 }],
  ['DELETE', `/v1/credentials/${PG_CRED}`],
  ['POST', `/v1/credentials/${PG_CRED}/rotate`],
  ['GET', `/v1/credentials/${PG_CRED}/rotations?limit=5`],
  ['GET', `/v1/rotations/${UNKNOWN_UUID}`],
  ['GET', `/v1/credentials/${PG_CRED}/secret`],
  ['POST', `/v1/credentials/${PG_CRED}/leases`, { ttl: '1m' }],
  ['GET', `/v1/credentials/${PG_CRED}/leases`],
  ['GET', `/v1/leases/${UNKNOWN_UUID}`],
  ['POST', `/v1/leases/${UNKNOWN_UUID}/renew`, {}],
  ['DELETE', `/v1/leases/${UNKNOWN_UUID}`],
  ['GET', '/v1/audit?limit=5'],
  ['GET', '/v1/audit/verify'],
  ['GET', '/v1/audit/export'],
  ['GET', '/v1/audit/public-key'],
  ['GET', '/v1/compliance?format=csv'],
  ['GET', '/v1/events'],
  ['GET', '/v1/approvals?status=pending'],
  ['GET', `/v1/approvals/${UNKNOWN_UUID}`],
  ['POST', `/v1/approvals/${UNKNOWN_UUID}/approve`, { reason: 'ok' }],
  ['POST', `/v1/approvals/${UNKNOWN_UUID}/deny`, { reason: 'no' }],
  ['GET', '/v1/nothing'],
];

const BAD_AUTH: [string | null, string][] = [
  [null, 'no Authorization header'],
  ['Bearer not-the-token', 'a wrong token'],
  ['Basic YWRtaW46YWRtaW4=', 'Basic credentials'],
  ['Bearer', 'Bearer without a token'],
  ['Bearer ', 'Bearer and a space'],
  ['', 'an empty header'],
];

const authCases: Case[] = AUTHENTICATED.flatMap(([method, path, body]) =>
  [
    ...BAD_AUTH,
    [`Bearer ${'x'.repeat(43)}`, 'a token of the right length'] as [string, string],
    ['TOKEN', 'the token without "Bearer"'] as [string, string],
    ['Bearer TOKEN TOKEN', 'the token twice'] as [string, string],
  ].map(
    ([auth, what]): Case => ({
      name: `401 for ${what}`,
      method,
      path,
      ...(body === undefined ? {} : { body }),
      auth,
      status: 401,
      code: 'unauthorized',
    }),
  ),
);

function resolveAuth(auth: string | null | undefined): string | null | undefined {
  return typeof auth === 'string' ? auth.replaceAll('TOKEN', env.adminToken) : auth;
}

async function runCase(c: Case): Promise<void> {
  const res = await send({ ...c, auth: resolveAuth(c.auth) });
  const what = `${describeReq(c)}\n→ ${res.status} ${res.text.slice(0, 600)}${res.errors.length ? `\nlogged: ${res.errors.join('\n')}` : ''}`;
  const expected = Array.isArray(c.status) ? c.status : [c.status];
  expect(expected, what).toContain(res.status);
  if (res.status < 400) return;
  expect(shapeProblem(res), what).toBeNull();
  const error = errorOf(res);
  if (c.code) expect(error.code, what).toBe(c.code);
  if (res.status === 400)
    expect(c.field, `a 400 case must say which field its message names: ${what}`).toBeDefined();
  if (typeof c.field === 'string') expect(error.message, what).toContain(c.field);
  else if (c.field) expect(error.message, what).toMatch(c.field);
  if (res.status === 401) expect(res.headers.get('www-authenticate'), what).toMatch(/^Bearer /);
}

const caseName = (c: Case) =>
  `${c.method} ${c.path.length > 90 ? `${c.path.slice(0, 90)}…` : c.path}: ${c.name}`;

const TABLES: [string, Case[]][] = [
  ['connections', connectionCases],
  ['credentials and rotations', credentialCases],
  ['audit', auditCases],
  ['audit verify and export', auditExportCases],
  ['compliance', complianceCases],
  ['events', eventCases],
  ['approvals', approvalCases],
  ['rekey', rekeyCases],
  ['routing and probes', routingCases],
  ['authentication', authCases],
];

describe('bad input: table-driven, route by route', () => {
  for (const [name, cases] of TABLES) {
    describe(name, () => {
      for (const c of cases) it(caseName(c), () => runCase(c));
    });
  }

  it('left the fixtures as they were (no bad request changed state)', async () => {
    const conn = await send({ method: 'GET', path: `/v1/connections/${CONN}` });
    expect(conn.status).toBe(200);
    expect(conn.json).toMatchObject({ host: '127.0.0.1', port: 1, database: 'nothing', credentials: [] });
    expect((conn.json as { labels: unknown }).labels).toEqual({});
    const cred = await send({ method: 'GET', path: `/v1/credentials/${PG_CRED}` });
    expect(cred.status).toBe(200);
    expect(cred.json).toMatchObject({ maxAgeDays: null, gracePeriod: null, strategy: 'single-user' });
    expect((cred.json as { schedule: unknown }).schedule).toEqual({ every: '30d' });
    expect((cred.json as { labels: unknown }).labels).toEqual({});
    const rotations = await send({ method: 'GET', path: `/v1/credentials/${PG_CRED}/rotations` });
    expect((rotations.json as { rotations: { id: string }[] }).rotations.map((r) => r.id)).toEqual([
      rotationId,
    ]);
    const list = await send({ method: 'GET', path: '/v1/credentials' });
    expect((list.json as { credentials: { id: string }[] }).credentials.map((c) => c.id)).toEqual([PG_CRED]);
    const conns = await send({ method: 'GET', path: '/v1/connections' });
    expect((conns.json as { connections: { id: string }[] }).connections.map((c) => c.id).sort()).toEqual([
      CONN,
      IAM_CONN,
      PG_CONN,
    ]);
  });
});

// Fastify answers a bad percent-encoding (FST_ERR_BAD_URL) and a path parameter over the router's 256 characters
// (FST_ERR_MAX_PARAM_LENGTH, 414) itself, in its own shape {"error": "Bad Request", "code", "message", "statusCode"},
// without calling the error handler. The fix belongs in src/api/app.ts (Fastify's `frameworkErrors` option, sending
// the SPEC shape through sendError), outside what this test may change. These cases state the SPEC behaviour and
// are marked `it.fails` until then: once app.ts is fixed they pass, vitest reports them, and `.fails` must go.
describe('router errors (bad percent-encoding, over-long parameters) in the SPEC shape', () => {
  const routerCases: Case[] = [
    {
      name: 'bad percent-encoding',
      method: 'GET',
      path: '/v1/connections/%ZZ',
      status: 400,
      field: /id|url|path/i,
    },
    {
      name: 'truncated percent-encoding',
      method: 'GET',
      path: '/v1/credentials/abc%E0%A4%A',
      status: 400,
      field: /id|url|path/i,
    },
    {
      name: 'bad percent-encoding',
      method: 'DELETE',
      path: '/v1/connections/%',
      status: 400,
      field: /id|url|path/i,
    },
    {
      name: 'a 300-character id',
      method: 'GET',
      path: `/v1/connections/${'a'.repeat(300)}`,
      status: [400, 414],
    },
    {
      name: 'a 300-character id',
      method: 'PATCH',
      path: `/v1/credentials/${'a'.repeat(300)}`,
      body: { maxAgeDays: 3 },
      status: [400, 414],
    },
    {
      name: 'a 300-character rotation id',
      method: 'GET',
      path: `/v1/rotations/${'a'.repeat(300)}`,
      status: [400, 414],
    },
  ];
  for (const c of routerCases) {
    it(`still answers 4xx, not 5xx: ${caseName(c)}`, async () => {
      const res = await send(c);
      expect(res.status).toBeGreaterThanOrEqual(400);
      expect(res.status).toBeLessThan(500);
    });
    it(`has the SPEC error shape: ${caseName(c)}`, () => runCase(c));
  }
});

// Part 2: generated requests

// Against the API without this file's fixes, the duration and audit 500s first showed at runs 658 and 851 (one seed),
// so a few hundred runs may miss that kind of bug: `npm test` runs 300 per route and `npm run test:slow`, which CI
// runs too, this file again with 700 (KT_BAD_INPUT_RUNS), each with a fresh seed: 1000 per route in every CI run.
const RUNS = Number(process.env.KT_BAD_INPUT_RUNS ?? process.env.KT_FC_RUNS ?? 300);

/** Every answer: never 5xx, never 1xx/3xx; any non-2xx in the SPEC shape; a 400 names what it refuses. */
function responseProblem(res: Res, options: { downstreamMayBeDown?: boolean } = {}): string | null {
  // A valid lease request on a generated connection reaches a downstream that does not exist: 503 is the right
  // answer there (the request was fine, the service it needs is not), never on any other route.
  if (res.status === 503 && options.downstreamMayBeDown && errorOf(res).code === 'unavailable') {
    return /did not answer/.test(errorOf(res).message) ? null : 'a 503 that does not say what did not answer';
  }
  if (res.status >= 500) return `a ${res.status}`;
  if (res.status < 200 || (res.status >= 300 && res.status < 400)) return `an unexpected ${res.status}`;
  if (res.status < 300) return null;
  const shape = shapeProblem(res);
  if (shape) return `a ${res.status} with the wrong shape: ${shape}`;
  if (res.status === 400 && !/\b(body|querystring|params)\b/i.test(errorOf(res).message)) {
    return 'a 400 whose message names no field (body…, querystring…, params…)';
  }
  return null;
}

async function check(
  req: Req,
  seen: Map<number, number>,
  options: { downstreamMayBeDown?: boolean } = {},
): Promise<void> {
  const res = await send(req);
  seen.set(res.status, (seen.get(res.status) ?? 0) + 1);
  const problem = responseProblem(res, options);
  if (problem) {
    throw new Error(
      `${problem}\n${describeReq(req)}\n→ ${res.status} ${res.text.slice(0, 600)}${res.errors.length ? `\nlogged: ${res.errors.join('\n')}` : ''}`,
    );
  }
}

const anyValue = fc.anything({ maxDepth: 2, maxKeys: 4 });
/** Mostly a plausible value for the field, sometimes anything at all. */
const v = <T>(plausible: fc.Arbitrary<T>) =>
  fc.oneof({ weight: 3, arbitrary: plausible }, { weight: 1, arbitrary: anyValue as fc.Arbitrary<unknown> });
/** Anything that is certainly not a valid id, so that only POOL ids can ever be created. */
const notAnId = anyValue.filter((x) => !(typeof x === 'string' && /^[A-Za-z0-9]/.test(x)));

// The ids generated bodies may create: at most this many connections and credentials come into being.
const POOL = ['pf-a', 'pf-b', 'pf-c'];
const KNOWN_IDS = [CONN, PG_CONN, PG_CRED, UNKNOWN_ID, ...POOL];

/** Path segments: known ids, valid-looking ids and arbitrary text, URL-encoded as a client would. */
const segment = fc
  .oneof(
    { weight: 3, arbitrary: fc.constantFrom(...KNOWN_IDS) },
    { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,30}$/) },
    { weight: 2, arbitrary: fc.string({ maxLength: 40 }) },
    { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 12 }) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        '..',
        '.',
        '../..',
        '..%2F..',
        ' ',
        'a b',
        '\u0000',
        'ä',
        '-x',
        '_x',
        'x\ny',
        'a'.repeat(129),
        'a'.repeat(250),
      ),
    },
  )
  .map((s) => encodeURIComponent(s))
  // Over 256 characters, the router answers in its own shape: the known bug above, kept out of this run.
  .filter((s) => s.length <= 256);

const queryValue = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.integer().map(String),
  fc.double().map(String),
  fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
  fc.constantFrom(
    '',
    '0',
    '-1',
    '1',
    '500',
    '501',
    '1e400',
    'abc',
    'true',
    'false',
    'maybe',
    'NaN',
    '1.5',
    '2026-01-01T00:00:00Z',
    '0000-01-01T00:00:00Z',
    '2016-12-31T23:59:60Z',
    '2026-01-01 00:00:00z',
    '99999999999999999999-0',
    '1-0',
    '0-0',
    'team=payments',
    'team:payments',
    'pending',
    'active',
    'secret.read',
    'admin',
    PG_CRED,
  ),
);

/** A query string of known and unknown keys (repeats included), or raw text. */
function queryArb(keys: string[]): fc.Arbitrary<string> {
  const key = fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...keys, 'foo') },
    { weight: 1, arbitrary: fc.string({ maxLength: 10 }) },
  );
  const pairs = fc
    .array(fc.tuple(key, queryValue), { maxLength: 4 })
    .map((ps) => new URLSearchParams(ps).toString());
  const raw = fc.string({ maxLength: 40 }).map((s) => s.replaceAll('#', ''));
  return fc
    .oneof(
      { weight: 5, arbitrary: pairs },
      { weight: 1, arbitrary: raw },
      { weight: 2, arbitrary: fc.constant('') },
    )
    .map((q) => (q ? `?${q}` : ''));
}
const noisyQuery = queryArb(['x', 'limit', 'verbose']);

// Valid values per field: generated bodies start valid and get up to two fields broken, so that they reach the
// handlers (and the service's own checks) as well as the schema.
const validDuration = fc
  .tuple(fc.integer({ min: 1, max: 999 }), fc.constantFrom('s', 'm', 'h', 'd'))
  .map(([n, unit]) => `${n}${unit}`);
const validSchedule = fc.oneof(
  fc.record(
    { every: validDuration, window: validDuration, jitter: validDuration },
    { requiredKeys: ['every'] },
  ),
  fc.record(
    {
      cron: fc.constantFrom('0 3 * * 1', '*/5 * * * *', '0 0 1 * *', '15 4 * * MON-FRI', '0 0 * * 1#5'),
      timezone: fc.constantFrom('UTC', 'Europe/London', 'America/New_York', 'Asia/Kolkata'),
      window: validDuration,
      jitter: validDuration,
    },
    { requiredKeys: ['cron'] },
  ),
);
const validLabels = fc.dictionary(
  fc.stringMatching(/^[a-z][a-z0-9._/-]{0,10}$/),
  fc.string({ maxLength: 20 }),
  {
    maxKeys: 3,
  },
);
const validPassword = fc.record(
  {
    length: fc.integer({ min: 16, max: 256 }),
    charset: fc.constantFrom('alphanumeric', 'ascii-printable', 'hex', 'base64url'),
    requireEachClass: fc.boolean(),
  },
  { requiredKeys: [] },
);
const validTls = fc.record(
  { mode: fc.constantFrom('disable', 'require', 'verify-full'), ca: fc.string({ maxLength: 30 }) },
  { requiredKeys: ['mode'] },
);
// Hosts that need no name resolution (an import: true check logs in; nothing should wait on DNS).
const validHost = fc.constantFrom('127.0.0.1', 'localhost');

const validConnectionBody = fc.record(
  {
    id: fc.constantFrom(...POOL, CONN),
    type: fc.constantFrom('postgres', 'postgres', 'oracle'),
    host: validHost,
    port: fc.integer({ min: 1, max: 65_535 }),
    database: fc.stringMatching(/^[a-z_]{1,20}$/),
    tls: validTls,
    admin: fc.record(
      {
        username: fc.stringMatching(/^[a-z]{1,10}$/),
        password: fc.string({ minLength: 1, maxLength: 20 }),
        store: fc.constant({ type: 'local' }),
      },
      { requiredKeys: ['username', 'password'] },
    ),
    labels: validLabels,
    // Unchecked: verify would log in at random loopback ports; its own cases are in the integration tests.
    verify: fc.constant(false),
  },
  { requiredKeys: ['id', 'type', 'host', 'admin', 'verify'] },
);
const validPatchConnectionBody = fc
  .record(
    {
      host: validHost,
      port: fc.integer({ min: 1, max: 65_535 }),
      database: fc.stringMatching(/^[a-z_]{1,20}$/),
      tls: validTls,
      admin: fc.record(
        {
          username: fc.stringMatching(/^[a-z]{1,10}$/),
          password: fc.string({ minLength: 1, maxLength: 20 }),
        },
        { requiredKeys: ['password'] },
      ),
      labels: validLabels,
    },
    { requiredKeys: [] },
  )
  .filter((o) => Object.keys(o).length > 0)
  .map((o) => ({ ...o, verify: false })); // unchecked, as validConnectionBody
const validCredentialBody = fc.record(
  {
    id: fc.constantFrom(...POOL, PG_CRED),
    connection: fc.constantFrom(CONN, PG_CONN, UNKNOWN_ID),
    username: fc.stringMatching(/^[a-z_][a-z0-9_]{0,20}$/),
    strategy: fc.constantFrom('single-user', 'alternating-users'),
    schedule: validSchedule,
    store: fc.constant({ type: 'local' }),
    password: validPassword,
    maxAgeDays: fc.integer({ min: 1, max: 3650 }),
    gracePeriod: validDuration,
    labels: validLabels,
  },
  { requiredKeys: ['id', 'connection', 'username', 'strategy', 'schedule'] },
);
const validPatchCredentialBody = fc
  .record(
    {
      schedule: validSchedule,
      password: validPassword,
      maxAgeDays: fc.oneof(fc.integer({ min: 1, max: 3650 }), fc.constant(null)),
      gracePeriod: fc.oneof(validDuration, fc.constant(null)),
      labels: validLabels,
    },
    { requiredKeys: [] },
  )
  .filter((o) => Object.keys(o).length > 0);

/** What a broken field becomes: removed, anything, or a value near some limit. */
const brokenValue = fc.oneof(
  fc.constant<unknown>(DROP),
  anyValue,
  fc.string({ maxLength: 300 }),
  fc.integer(),
  fc.double(),
  fc.constantFrom<unknown>(
    '',
    null,
    true,
    [],
    {},
    'x'.repeat(2000),
    -1,
    0,
    1e308,
    '0d',
    '10x',
    '3651d',
    '999999999d',
    '61 * * * *',
    '0 0 31 2 *',
    'Mars/Olympus',
    { type: 'vault', mount: 'secret', path: 'a/b' },
    { type: 'aws', secretId: 'x' },
    'verify-full',
    'alternating-users',
    PG_CONN,
  ),
);

/** `valid` with up to two of `paths` broken: never a random valid id, so only POOL ids can be created. */
function brokenArb(
  valid: fc.Arbitrary<Record<string, unknown>>,
  paths: string[],
): fc.Arbitrary<Record<string, unknown>> {
  const valueFor = (p: string): fc.Arbitrary<unknown> => {
    if (p === 'id') return fc.oneof(fc.constant<unknown>(DROP), notAnId);
    const near = FIELD_BREAKS[p.split('.').at(-1) as string];
    return near
      ? fc.oneof({ weight: 2, arbitrary: near }, { weight: 1, arbitrary: brokenValue })
      : brokenValue;
  };
  const breakage = fc
    .constantFrom(...paths, 'foo', 'admin.role', 'schedule.foo')
    .chain((p) => fc.tuple(fc.constant(p), valueFor(p)));
  return fc
    .tuple(valid, fc.array(breakage, { maxLength: 2 }))
    .map(([base, breaks]) => breaks.reduce((body, [p, value]) => withField(body, p, value), base));
}

const CONNECTION_PATHS = [
  'id',
  'type',
  'host',
  'port',
  'database',
  'tls',
  'tls.mode',
  'tls.ca',
  'admin',
  'admin.username',
  'admin.password',
  'admin.store',
  'admin.store.type',
  'labels',
  'labels.team',
];
const CREDENTIAL_PATHS = [
  'id',
  'connection',
  'username',
  'strategy',
  'schedule',
  'schedule.every',
  'schedule.cron',
  'schedule.timezone',
  'schedule.window',
  'schedule.jitter',
  'store',
  'store.type',
  'password',
  'password.length',
  'password.charset',
  'maxAgeDays',
  'gracePeriod',
  'labels',
  'labels.team',
  'import',
  'currentPassword',
];

// Chaotic bodies: the real field names, each value plausible or anything.
const durationArb = fc.oneof(
  fc.constantFrom(
    '30d',
    '1h',
    '15m',
    '1s',
    '0d',
    '10x',
    '999999999d',
    '3651d',
    '9999999h',
    '1000000d',
    '',
    ' 1d',
    '1.5h',
  ),
  fc.stringMatching(/^[0-9]{1,10}[smhdx]$/),
);
const cronArb = fc.oneof(
  fc.constantFrom(
    '0 3 * * 1',
    '*/5 * * * *',
    '61 * * * *',
    '0 0 31 2 *',
    '0 0 * * 1#5',
    '0 0 L * *',
    '0 0 3 * * 1',
    '@daily   ',
    '* * * * * * *',
    '*/0 * * * *',
    '0 3 * * MON-FRI',
  ),
  fc
    .array(
      fc.oneof(
        fc.constant('*'),
        fc.integer({ min: -1, max: 70 }).map(String),
        fc.constantFrom(
          '*/0',
          '*/7',
          '1-5',
          '5-1',
          'L',
          'W',
          '?',
          'MON',
          '1#6',
          '1,2,3',
          'JAN-DEC',
          '0-59/0',
        ),
      ),
      { minLength: 4, maxLength: 7 },
    )
    .map((a) => a.join(' ')),
);
const tzArb = fc.constantFrom(
  'UTC',
  'Europe/London',
  'Mars/Olympus',
  'utc',
  'Etc/GMT+5',
  'EST5EDT',
  '+02:00',
  'Local',
  '',
);
const scheduleArb = fc.oneof(
  fc.record(
    { every: v(durationArb), window: v(durationArb), jitter: v(durationArb) },
    { requiredKeys: ['every'] },
  ),
  fc.record(
    { cron: v(cronArb), timezone: v(tzArb), window: v(durationArb), jitter: v(durationArb) },
    { requiredKeys: ['cron'] },
  ),
  anyValue,
);
const labelsArb = fc.dictionary(
  fc.oneof(fc.constantFrom('team', 'env', 'a/b', '!x'), fc.string({ maxLength: 70 })),
  v(fc.string({ maxLength: 300 })),
  { maxKeys: 34 },
);
const storeArb = fc.oneof(
  fc.constant({ type: 'local' }),
  fc.record(
    {
      type: fc.constantFrom('local', 'vault', 'aws', 'gcp'),
      mount: v(fc.constantFrom('secret', 'a b', '..')),
      path: v(fc.constantFrom('apps/db', '../x', '')),
      secretId: v(fc.string({ maxLength: 20 })),
      region: v(fc.constantFrom('eu-west-1', 'Mars')),
    },
    { requiredKeys: ['type'] },
  ),
  anyValue,
);
const passwordArb = fc.record(
  {
    length: v(fc.integer({ min: 0, max: 300 })),
    charset: v(fc.constantFrom('alphanumeric', 'ascii-printable', 'hex', 'base64url', 'emoji')),
    requireEachClass: v(fc.boolean()),
  },
  { requiredKeys: [] },
);
const tlsArb = fc.record(
  { mode: v(fc.constantFrom('disable', 'require', 'verify-full', 'x')), ca: v(fc.string({ maxLength: 30 })) },
  { requiredKeys: [] },
);

/** By field name: values near that field's limits and semantics, for brokenArb. */
const FIELD_BREAKS: Record<string, fc.Arbitrary<unknown>> = {
  every: durationArb,
  window: durationArb,
  jitter: durationArb,
  gracePeriod: durationArb,
  cron: cronArb,
  timezone: tzArb,
  schedule: scheduleArb,
  store: storeArb,
  labels: labelsArb,
  password: passwordArb,
  tls: tlsArb,
  port: fc.integer({ min: -10, max: 70_000 }),
  maxAgeDays: fc.integer({ min: -1, max: 4000 }),
  length: fc.integer({ min: 0, max: 300 }),
  strategy: fc.constantFrom('single-user', 'alternating-users', 'triple'),
  connection: fc.constantFrom(CONN, PG_CONN, UNKNOWN_ID, '../x'),
};

type Fields = Record<string, fc.Arbitrary<unknown>>;
const connectionFields: Fields = {
  id: fc.oneof(fc.constantFrom(...POOL, CONN), notAnId),
  type: v(fc.constantFrom('postgres', 'mysql', 'redis', 'webhook', 'rabbitmq', 'ldap', 'aws-iam')),
  host: v(fc.constantFrom('127.0.0.1', 'localhost', 'bad host', '')),
  region: v(fc.constantFrom('eu-west-1', 'us-east-1', 'moon-1', '')),
  // Loopback or .invalid only: verify may sign a request to it.
  endpoint: v(
    fc.constantFrom(
      'http://127.0.0.1:1',
      'https://127.0.0.1:9',
      'https://iam.x.invalid',
      'http://a.invalid/p',
    ),
  ),
  port: v(fc.integer({ min: -10, max: 70_000 })),
  database: v(fc.string({ maxLength: 70 })),
  tls: v(tlsArb),
  admin: v(
    fc.record(
      {
        username: v(fc.string({ maxLength: 70 })),
        password: v(fc.string({ maxLength: 40 })),
        store: v(storeArb),
      },
      { requiredKeys: [] },
    ),
  ),
  labels: v(labelsArb),
  // Loopback hosts only: verify then logs in at random local ports, and whatever answers must not make a 5xx.
  verify: v(fc.boolean()),
};
const patchConnectionFields: Fields = {
  host: connectionFields.host as fc.Arbitrary<unknown>,
  port: connectionFields.port as fc.Arbitrary<unknown>,
  database: connectionFields.database as fc.Arbitrary<unknown>,
  tls: connectionFields.tls as fc.Arbitrary<unknown>,
  admin: v(
    fc.record(
      { username: v(fc.string({ maxLength: 70 })), password: v(fc.string({ maxLength: 40 })) },
      { requiredKeys: [] },
    ),
  ),
  labels: connectionFields.labels as fc.Arbitrary<unknown>,
};
const credentialFields: Fields = {
  id: fc.oneof(fc.constantFrom(...POOL, PG_CRED), notAnId),
  connection: v(fc.constantFrom(CONN, PG_CONN, UNKNOWN_ID, '../x')),
  username: v(fc.oneof(fc.constantFrom('app_user', 'x; DROP', ''), fc.string({ maxLength: 60 }))),
  strategy: v(fc.constantFrom('single-user', 'alternating-users', 'triple')),
  schedule: scheduleArb,
  store: v(storeArb),
  password: v(passwordArb),
  maxAgeDays: v(fc.integer({ min: -1, max: 4000 })),
  gracePeriod: v(durationArb),
  labels: v(labelsArb),
  // import: true checks currentPassword by logging in: CONN refuses at once, PG_CONN says no.
  import: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: v(fc.boolean()) }),
  currentPassword: v(fc.string({ maxLength: 30 })),
};
const patchCredentialFields: Fields = {
  schedule: scheduleArb,
  password: v(passwordArb),
  maxAgeDays: v(fc.oneof(fc.integer({ min: -1, max: 4000 }), fc.constant(null))),
  gracePeriod: v(fc.oneof(durationArb, fc.constant(null))),
  labels: v(labelsArb),
};

const leaseFields: Fields = {
  ttl: v(fc.oneof(durationArb, fc.integer({ min: -5, max: 400_000_000 }))),
};

const decisionFields: Fields = {
  reason: v(fc.oneof(fc.constantFrom('CHG-1', '', ' ', 'r'.repeat(501)), fc.string({ maxLength: 80 }))),
};

const contentTypeArb = fc.oneof(
  { weight: 10, arbitrary: fc.constant<string | null>('application/json') },
  {
    weight: 1,
    arbitrary: fc.constantFrom<string | null>(
      'application/json; charset=utf-8',
      'APPLICATION/JSON',
      'application/json; charset=latin1',
      'text/plain',
      'application/x-www-form-urlencoded',
      'application/octet-stream',
      'multipart/form-data; boundary=x',
      'application/xml',
      'garbage;;;',
      null,
    ),
  },
);

interface GenBody {
  raw?: string;
  contentType?: string | null;
}

/**
 * Bodies: mostly valid ones with up to two fields broken; then objects with the real field names and chaotic
 * values (unknown keys mixed in), anything at all, arbitrary JSON, arbitrary text; now and then no body.
 */
function bodyArb(fields: Fields, broken?: fc.Arbitrary<Record<string, unknown>>): fc.Arbitrary<GenBody> {
  const extra = fc.dictionary(fc.string({ maxLength: 8 }), anyValue, { maxKeys: 2 });
  const chaotic = fc.oneof(
    fc.record(fields),
    fc.record(fields, { requiredKeys: [] }),
    fc.tuple(fc.record(fields, { requiredKeys: [] }), extra).map(([r, e]) => ({ ...e, ...r })),
  );
  const text = fc.oneof(
    ...(broken ? [{ weight: 8, arbitrary: broken.map((o) => JSON.stringify(o)) }] : []),
    { weight: 3, arbitrary: chaotic.map((o) => JSON.stringify(o)) },
    { weight: 1, arbitrary: anyValue.map((x) => JSON.stringify(x) ?? '') },
    { weight: 1, arbitrary: fc.json({ maxDepth: 3 }) },
    { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
  );
  return fc.oneof(
    { weight: 12, arbitrary: fc.record({ raw: text, contentType: contentTypeArb }) },
    { weight: 1, arbitrary: fc.constant({}) },
  );
}
const emptyishBody = bodyArb({});

interface Route {
  name: string;
  arb: fc.Arbitrary<Req>;
  /** The route talks to the downstream synchronously (lease issue), which may not exist for generated ids. */
  downstreamMayBeDown?: boolean;
}

const uuidish = fc.oneof(
  fc.uuid(),
  fc.uuid().map((u) => u.toUpperCase()),
  fc.constant('ROTATION_ID'),
  segment,
  fc.stringMatching(/^[0-9a-fA-F-]{30,40}$/),
);

const get = (path: fc.Arbitrary<string>, query: fc.Arbitrary<string> = noisyQuery): fc.Arbitrary<Req> =>
  fc.tuple(path, query).map(([p, q]) => ({ method: 'GET', path: `${p}${q}` }));
const withBody = (
  method: string,
  path: fc.Arbitrary<string>,
  body: fc.Arbitrary<GenBody>,
): fc.Arbitrary<Req> =>
  fc.tuple(path, noisyQuery, body).map(([p, q, b]) => ({ method, path: `${p}${q}`, ...b }));
const id = (prefix: string, suffix = '') => segment.map((s) => `${prefix}${s}${suffix}`);

const ROUTES: Route[] = [
  {
    name: 'POST /v1/connections',
    arb: withBody(
      'POST',
      fc.constant('/v1/connections'),
      bodyArb(connectionFields, brokenArb(validConnectionBody, CONNECTION_PATHS)),
    ),
  },
  { name: 'GET /v1/connections', arb: get(fc.constant('/v1/connections')) },
  { name: 'GET /v1/connections/:id', arb: get(id('/v1/connections/')) },
  {
    name: 'PATCH /v1/connections/:id',
    arb: withBody(
      'PATCH',
      id('/v1/connections/'),
      bodyArb(patchConnectionFields, brokenArb(validPatchConnectionBody, CONNECTION_PATHS.slice(2))),
    ),
  },
  {
    name: 'POST /v1/credentials',
    arb: withBody(
      'POST',
      fc.constant('/v1/credentials'),
      bodyArb(credentialFields, brokenArb(validCredentialBody, CREDENTIAL_PATHS)),
    ),
  },
  {
    name: 'GET /v1/credentials',
    arb: get(fc.constant('/v1/credentials'), queryArb(['label', 'status', 'overdue'])),
  },
  { name: 'GET /v1/credentials/:id', arb: get(id('/v1/credentials/')) },
  {
    name: 'PATCH /v1/credentials/:id',
    arb: withBody(
      'PATCH',
      id('/v1/credentials/'),
      bodyArb(patchCredentialFields, brokenArb(validPatchCredentialBody, CREDENTIAL_PATHS)),
    ),
  },
  {
    name: 'POST /v1/credentials/:id/rotate',
    arb: withBody('POST', id('/v1/credentials/', '/rotate'), emptyishBody),
  },
  {
    name: 'GET /v1/credentials/:id/rotations',
    arb: get(id('/v1/credentials/', '/rotations'), queryArb(['limit', 'before'])),
  },
  { name: 'GET /v1/rotations/:id', arb: get(uuidish.map((u) => `/v1/rotations/${u}`)) },
  { name: 'GET /v1/credentials/:id/secret', arb: get(id('/v1/credentials/', '/secret')) },
  {
    name: 'GET /v1/audit',
    arb: get(
      fc.constant('/v1/audit'),
      queryArb(['credential', 'actor', 'action', 'since', 'until', 'limit', 'cursor']),
    ),
  },
  {
    name: 'GET /v1/audit/verify',
    arb: get(fc.constant('/v1/audit/verify'), queryArb(['since', 'until'])),
  },
  {
    name: 'GET /v1/audit/export',
    arb: get(
      fc.constant('/v1/audit/export'),
      queryArb(['format', 'credential', 'actor', 'action', 'since', 'until']),
    ),
  },
  {
    name: 'GET /v1/compliance',
    arb: get(fc.constant('/v1/compliance'), queryArb(['format', 'label', 'overdue'])),
  },
  {
    name: 'POST /v1/credentials/:id/leases',
    arb: withBody('POST', id('/v1/credentials/', '/leases'), bodyArb(leaseFields)),
    downstreamMayBeDown: true,
  },
  {
    name: 'GET /v1/credentials/:id/leases',
    arb: get(id('/v1/credentials/', '/leases'), queryArb(['limit'])),
  },
  { name: 'GET /v1/leases/:id', arb: get(uuidish.map((u) => `/v1/leases/${u}`)) },
  {
    name: 'POST /v1/leases/:id/renew',
    arb: withBody(
      'POST',
      uuidish.map((u) => `/v1/leases/${u}/renew`),
      bodyArb(leaseFields),
    ),
  },
  {
    name: 'DELETE /v1/leases/:id',
    arb: withBody(
      'DELETE',
      uuidish.map((u) => `/v1/leases/${u}`),
      emptyishBody,
    ),
  },
  {
    name: 'GET /v1/approvals',
    arb: get(fc.constant('/v1/approvals'), queryArb(['status', 'limit', 'cursor'])),
  },
  { name: 'GET /v1/approvals/:id', arb: get(uuidish.map((u) => `/v1/approvals/${u}`)) },
  {
    name: 'POST /v1/approvals/:id/approve|deny',
    arb: fc
      .tuple(fc.constantFrom('approve', 'deny'), uuidish)
      .chain(([d, u]) => withBody('POST', fc.constant(`/v1/approvals/${u}/${d}`), bodyArb(decisionFields))),
  },
  { name: 'GET /v1/me', arb: get(fc.constant('/v1/me')) },
  { name: 'GET /v1/overview', arb: get(fc.constant('/v1/overview'), queryArb(['days'])) },
  { name: 'GET /ui', arb: get(fc.constant('/ui')).map((r) => ({ ...r, auth: null })) },
  {
    name: 'GET /ui/*',
    arb: get(segment.map((s) => `/ui/${s}`)).map((r) => ({ ...r, auth: null })),
  },
  { name: 'GET /healthz', arb: get(fc.constant('/healthz')).map((r) => ({ ...r, auth: null })) },
  { name: 'GET /readyz', arb: get(fc.constant('/readyz')).map((r) => ({ ...r, auth: null })) },
  { name: 'GET /metrics', arb: get(fc.constant('/metrics')).map((r) => ({ ...r, auth: null })) },
  { name: 'GET /docs/json', arb: get(fc.constant('/docs/json')).map((r) => ({ ...r, auth: null })) },
  {
    name: 'any method, any path, any Authorization',
    arb: fc
      .record({
        method: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'),
        segments: fc.array(
          fc.oneof(fc.constantFrom('v1', 'connections', 'credentials', 'rotate', 'secret', 'audit'), segment),
          {
            maxLength: 5,
          },
        ),
        query: noisyQuery,
        auth: fc.option(
          fc.oneof(
            fc.constant('Bearer TOKEN'),
            fc.string({ maxLength: 30 }).map((s) => `Bearer ${s}`),
            fc.string({ maxLength: 30 }),
          ),
          {
            nil: null,
          },
        ),
        body: emptyishBody,
      })
      .map(({ method, segments, query, auth, body }) => ({
        method,
        path: `/${segments.join('/')}${query}`,
        auth: auth?.replaceAll('TOKEN', env.adminToken) ?? null,
        ...(method === 'GET' ? {} : body),
      })),
  },
  // Deletions last: they may remove the pool's connections and credentials the routes above use.
  { name: 'DELETE /v1/credentials/:id', arb: withBody('DELETE', id('/v1/credentials/'), emptyishBody) },
  { name: 'DELETE /v1/connections/:id', arb: withBody('DELETE', id('/v1/connections/'), emptyishBody) },
];

describe(`bad input: generated requests (${RUNS} per route, fast-check)`, () => {
  for (const route of ROUTES) {
    it(`${route.name}: never a 5xx, always the error shape`, async () => {
      const seen = new Map<number, number>();
      await fc.assert(
        fc.asyncProperty(route.arb, async (req) => {
          await check({ ...req, path: req.path.replace('ROTATION_ID', rotationId) }, seen, {
            downstreamMayBeDown: route.downstreamMayBeDown,
          });
        }),
        { numRuns: RUNS },
      );
      const histogram = [...seen]
        .sort(([a], [b]) => a - b)
        .map(([status, n]) => `${status}×${n}`)
        .join(' ');
      if (process.env.KT_DEBUG) console.log(`${route.name}: ${histogram}`);
      // The generators must get past the parser and the schema often enough to reach the handlers.
      const handled = [...seen.keys()].filter((status) => ![400, 401, 413, 415].includes(status));
      expect(handled, `statuses seen: ${histogram}`).not.toEqual([]);
    });
  }

  it('created no more than the pool of ids allows', async () => {
    const conns = await send({ method: 'GET', path: '/v1/connections' });
    const creds = await send({ method: 'GET', path: '/v1/credentials' });
    const connIds = (conns.json as { connections: { id: string }[] }).connections.map((c) => c.id);
    const credIds = (creds.json as { credentials: { id: string }[] }).credentials.map((c) => c.id);
    expect(connIds.filter((i) => ![CONN, IAM_CONN, PG_CONN, ...POOL].includes(i))).toEqual([]);
    expect(credIds.filter((i) => ![PG_CRED, ...POOL].includes(i))).toEqual([]);
  });
});
