// Request schemas (JSON Schema through TypeBox). Every object refuses unknown fields, every string has a length
// limit and every number a range, so that bad input is a 400 naming the field and never reaches a handler.
import { type Static, Type } from 'typebox';
import { DURATION_PATTERN } from '../config/duration.ts';
import { StoreSpecSchema } from '../registry/store-spec.ts';

export const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';
// PostgreSQL/MySQL identifiers Keyturn is willing to manage: letters, digits, _ . -; the _clone suffix must fit.
const USERNAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_.$-]{0,56}$';
const HOST_PATTERN = '^[A-Za-z0-9]([A-Za-z0-9.:_-]{0,252})$';

export const Id = Type.String({
  pattern: ID_PATTERN,
  description: 'Letters, digits, ".", "_" and "-"; 1-128 characters',
});
const Duration = Type.String({
  pattern: DURATION_PATTERN,
  description: 'A whole number and a unit: s, m, h or d',
});
const Labels = Type.Record(
  Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$' }),
  Type.String({ maxLength: 256 }),
  {
    maxProperties: 32,
    additionalProperties: false, // without it a key not matching the pattern was accepted with a value of any type
  },
);

const TlsSchema = Type.Object(
  {
    mode: Type.Union([Type.Literal('disable'), Type.Literal('require'), Type.Literal('verify-full')]),
    ca: Type.Optional(Type.String({ maxLength: 32_768 })),
  },
  { additionalProperties: false },
);

const Password = Type.String({ minLength: 1, maxLength: 1024 });

// Downstreams with a well-known address (aws-iam): the region the SDK signs for, and a URL that replaces the address.
const Region = Type.String({
  pattern: '^[a-z]{2}(-[a-z0-9]+){1,3}-[0-9]{1,2}$',
  description: 'An AWS region such as "eu-west-1" (aws-iam connections)',
});
const Endpoint = Type.String({
  pattern: '^https?://[^\\s/?#@]+/?$',
  maxLength: 512,
  description:
    "aws-iam connections: the IAM and STS endpoint URL instead of AWS's own (an emulator, a VPC endpoint): scheme, host and port only; http:// only on a loopback address",
});

// Target-specific settings; each target's driver says which it knows (targets/*/ validateOptions).
const ConnectionOptions = Type.Record(
  Type.String({ pattern: '^[A-Za-z][A-Za-z0-9]{0,62}$' }),
  Type.Union([Type.String({ maxLength: 1024 }), Type.Number(), Type.Boolean()]),
  { maxProperties: 16 },
);

const ScheduleExtras = {
  window: Type.Optional(Duration),
  jitter: Type.Optional(Duration),
};
export const ScheduleSchema = Type.Union([
  Type.Object({ every: Duration, ...ScheduleExtras }, { additionalProperties: false }),
  Type.Object(
    {
      cron: Type.String({ minLength: 9, maxLength: 128 }),
      timezone: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
      ...ScheduleExtras,
    },
    { additionalProperties: false },
  ),
]);

// Dual control (SPEC, "Dual control"): who must approve the gated operations of a credential or connection.
export const ApprovalPolicySchema = Type.Object(
  {
    required: Type.Integer({
      minimum: 1,
      maximum: 5,
      description: 'approvals a gated request needs, by principals other than its requester',
    }),
    approvers: Type.Array(
      Type.String({
        pattern: '^(role:(admin|operator|reader|auditor)|name:[^\\x00-\\x1f\\x7f]{1,256})$',
        description:
          '"role:<role>" or "name:<principal name>" (a token name, a JWT subject, a certificate\'s name)',
      }),
      { minItems: 1, maxItems: 16, uniqueItems: true },
    ),
  },
  {
    additionalProperties: false,
    description:
      'dual control: its DELETE (and, for a connection, a change of its admin or address; for a credential, a person reading its secret or taking a lease, and a change of its sync) needs approval; removing or weakening it needs approval too',
  },
);

const AdminRotationSchema = Type.Object(
  {
    schedule: ScheduleSchema,
    maxAgeDays: Type.Optional(Type.Integer({ minimum: 1, maximum: 3650 })),
  },
  {
    additionalProperties: false,
    description:
      "rotates the admin's own password on this schedule, with the engine's four steps; POST /v1/connections/:id/rotate rotates it now",
  },
);

export const CreateConnectionBody = Type.Object(
  {
    id: Id,
    type: Type.String({ minLength: 1, maxLength: 32 }),
    host: Type.Optional(
      Type.String({ pattern: HOST_PATTERN, description: 'required, except for aws-iam (region, endpoint)' }),
    ),
    region: Type.Optional(Region),
    endpoint: Type.Optional(Endpoint),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535 })),
    database: Type.Optional(Type.String({ minLength: 1, maxLength: 63 })),
    tls: Type.Optional(TlsSchema),
    admin: Type.Object(
      {
        username: Type.String({ minLength: 1, maxLength: 63 }),
        password: Password,
        store: Type.Optional(StoreSpecSchema),
      },
      { additionalProperties: false },
    ),
    options: Type.Optional(ConnectionOptions),
    labels: Type.Optional(Labels),
    adminRotation: Type.Optional(AdminRotationSchema),
    approval: Type.Optional(ApprovalPolicySchema),
    verify: Type.Optional(
      Type.Boolean({
        description:
          'true (the default): log in with the admin and check the privileges rotations need before saving; false: save unchecked (offline registration)',
      }),
    ),
  },
  { additionalProperties: false },
);
export type CreateConnectionBody = Static<typeof CreateConnectionBody>;

export const PatchConnectionBody = Type.Object(
  {
    host: Type.Optional(Type.String({ pattern: HOST_PATTERN })),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535 })),
    region: Type.Optional(Region),
    endpoint: Type.Optional(Endpoint),
    database: Type.Optional(Type.String({ minLength: 1, maxLength: 63 })),
    tls: Type.Optional(TlsSchema),
    admin: Type.Optional(
      Type.Object(
        {
          username: Type.Optional(Type.String({ minLength: 1, maxLength: 63 })),
          password: Type.Optional(Password),
        },
        { additionalProperties: false, minProperties: 1 },
      ),
    ),
    options: Type.Optional(ConnectionOptions),
    labels: Type.Optional(Labels),
    adminRotation: Type.Optional(Type.Union([AdminRotationSchema, Type.Null()])),
    approval: Type.Optional(Type.Union([ApprovalPolicySchema, Type.Null()])),
    paused: Type.Optional(
      Type.Boolean({
        description:
          'true stops the scheduled rotations of every credential on it; a manual rotate still runs',
      }),
    ),
    verify: Type.Optional(
      Type.Boolean({
        description:
          'true (the default): log in with the admin and check the privileges rotations need before saving; false: save unchecked (offline registration)',
      }),
    ),
  },
  { additionalProperties: false, minProperties: 1 },
);
export type PatchConnectionBody = Static<typeof PatchConnectionBody>;

export const PasswordPolicySchema = Type.Object(
  {
    length: Type.Optional(Type.Integer({ minimum: 16, maximum: 256 })),
    charset: Type.Optional(
      Type.Union([
        Type.Literal('alphanumeric'),
        Type.Literal('ascii-printable'),
        Type.Literal('hex'),
        Type.Literal('base64url'),
      ]),
    ),
    requireEachClass: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

// Kubernetes names (SPEC, "Kubernetes sync"): a namespace is a DNS-1123 label, a Secret or Deployment name a DNS-1123
// subdomain, a Secret data key letters, digits, "-", "_" and "." (not "." or ".." alone), as the API server checks.
const DNS1123_LABEL = '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$';
const DNS1123_SUBDOMAIN_BODY =
  '(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*';
const SECRET_KEY = Type.String({
  pattern: '^(?!\\.{1,2}$)[-._a-zA-Z0-9]{1,253}$',
  description: 'A Secret data key: letters, digits, "-", "_" and "."',
});
export const SyncSchema = Type.Object(
  {
    type: Type.Literal('kubernetes'),
    namespace: Type.String({ pattern: DNS1123_LABEL, description: 'A DNS-1123 label' }),
    name: Type.String({ pattern: `^${DNS1123_SUBDOMAIN_BODY}$`, description: 'A DNS-1123 subdomain' }),
    keys: Type.Optional(
      Type.Object(
        {
          username: Type.Optional(SECRET_KEY),
          password: Type.Optional(SECRET_KEY),
          host: Type.Optional(SECRET_KEY),
          port: Type.Optional(SECRET_KEY),
          database: Type.Optional(SECRET_KEY),
          // AWS IAM credentials: the access key's id (its secret is the password).
          accessKeyId: Type.Optional(SECRET_KEY),
        },
        { additionalProperties: false, minProperties: 1 },
      ),
    ),
    rolloutRestart: Type.Optional(
      Type.Array(
        Type.String({
          pattern: `^deployment/${DNS1123_SUBDOMAIN_BODY}$`,
          description: '"deployment/<name>" in the same namespace',
        }),
        { maxItems: 16, uniqueItems: true },
      ),
    ),
  },
  { additionalProperties: false },
);
const SyncList = Type.Array(SyncSchema, { maxItems: 8 });

export const CreateCredentialBody = Type.Object(
  {
    id: Id,
    connection: Id,
    username: Type.String({ pattern: USERNAME_PATTERN }),
    strategy: Type.Union([Type.Literal('single-user'), Type.Literal('alternating-users')]),
    schedule: ScheduleSchema,
    store: Type.Optional(StoreSpecSchema),
    password: Type.Optional(PasswordPolicySchema),
    maxAgeDays: Type.Optional(Type.Integer({ minimum: 1, maximum: 3650 })),
    gracePeriod: Type.Optional(Duration),
    notifyBefore: Type.Optional(
      Type.String({
        ...Duration,
        description:
          'how long before each scheduled rotation a rotation.upcoming event is sent (audit, webhooks, GET /v1/events)',
      }),
    ),
    labels: Type.Optional(Labels),
    import: Type.Optional(Type.Boolean()),
    currentPassword: Type.Optional(Password),
    adoptClone: Type.Optional(
      Type.Boolean({
        description:
          "alternating-users: take over an existing <username>_clone that Keyturn did not create (its memberships, grants or ACL rules must match the user's: 409 clone_access_differs otherwise). Without it such a clone is refused (409 clone_exists); a clone Keyturn labelled for this credential id needs no adoptClone",
      }),
    ),
    sync: Type.Optional(SyncList),
    approval: Type.Optional(ApprovalPolicySchema),
  },
  { additionalProperties: false },
);
export type CreateCredentialBody = Static<typeof CreateCredentialBody>;

export const PatchCredentialBody = Type.Object(
  {
    schedule: Type.Optional(ScheduleSchema),
    password: Type.Optional(PasswordPolicySchema),
    maxAgeDays: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: 3650 }), Type.Null()])),
    gracePeriod: Type.Optional(Type.Union([Duration, Type.Null()])),
    notifyBefore: Type.Optional(
      Type.Union([Duration, Type.Null()], {
        description:
          'how long before each scheduled rotation a rotation.upcoming event is sent (audit, webhooks, GET /v1/events); null removes it',
      }),
    ),
    labels: Type.Optional(Labels),
    sync: Type.Optional(Type.Union([SyncList, Type.Null()])),
    approval: Type.Optional(Type.Union([ApprovalPolicySchema, Type.Null()])),
    paused: Type.Optional(
      Type.Boolean({ description: 'true stops its scheduled rotations; a manual rotate still runs' }),
    ),
  },
  { additionalProperties: false, minProperties: 1 },
);
export type PatchCredentialBody = Static<typeof PatchCredentialBody>;

export const IdParams = Type.Object({ id: Id }, { additionalProperties: false });
export type IdParams = Static<typeof IdParams>;

export const UuidParams = Type.Object(
  { id: Type.String({ format: 'uuid' }) },
  { additionalProperties: false },
);

export const ListCredentialsQuery = Type.Object(
  {
    label: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}[:=].{0,256}$' })),
    status: Type.Optional(
      Type.Union([
        Type.Literal('pending'),
        Type.Literal('active'),
        Type.Literal('rotating'),
        Type.Literal('failed'),
      ]),
    ),
    overdue: Type.Optional(Type.Boolean()),
    limit: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 1000, description: 'credentials per page (default 100)' }),
    ),
    cursor: Type.Optional(
      Type.String({
        maxLength: 400,
        description: 'the `next` of the previous page: the list goes on after the credential it names',
      }),
    ),
  },
  { additionalProperties: false },
);
export type ListCredentialsQuery = Static<typeof ListCredentialsQuery>;

export const RotateQuery = Type.Object(
  {
    dryRun: Type.Optional(
      Type.Boolean({
        description:
          'true: check everything the rotation needs (admin login and privileges, the user, the store) and change nothing; 200 with {ok, checks}',
      }),
    ),
  },
  { additionalProperties: false },
);

export const RotationsQuery = Type.Object(
  {
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500 })),
    before: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);

export const AuditQuerySchema = Type.Object(
  {
    credential: Type.Optional(Id),
    actor: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    action: Type.Optional(Type.String({ pattern: '^[a-z_.]{1,64}$' })),
    since: Type.Optional(Type.String({ format: 'date-time' })),
    until: Type.Optional(Type.String({ format: 'date-time' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
    // 19 digits stay below 2^64, the largest stream id part Redis accepts (20 digits gave a 500 from XRANGE).
    cursor: Type.Optional(Type.String({ pattern: '^[0-9]{1,19}-[0-9]{1,19}$' })),
  },
  { additionalProperties: false },
);
export type AuditQuerySchema = Static<typeof AuditQuerySchema>;

export const AuditVerifyQuery = Type.Object(
  {
    since: Type.Optional(Type.String({ format: 'date-time' })),
    until: Type.Optional(Type.String({ format: 'date-time' })),
  },
  { additionalProperties: false },
);
export type AuditVerifyQuery = Static<typeof AuditVerifyQuery>;

export const AuditExportQuery = Type.Object(
  {
    format: Type.Optional(Type.Union([Type.Literal('jsonl'), Type.Literal('csv')])),
    credential: Type.Optional(Id),
    actor: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    action: Type.Optional(Type.String({ pattern: '^[a-z_.]{1,64}$' })),
    since: Type.Optional(Type.String({ format: 'date-time' })),
    until: Type.Optional(Type.String({ format: 'date-time' })),
  },
  { additionalProperties: false },
);
export type AuditExportQuery = Static<typeof AuditExportQuery>;

export const ComplianceQuery = Type.Object(
  {
    format: Type.Optional(Type.Union([Type.Literal('json'), Type.Literal('csv')])),
    // As GET /v1/credentials: "key:value" (or "key=value"), the value may hold any character.
    label: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}[:=].{0,256}$' })),
    overdue: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type ComplianceQuery = Static<typeof ComplianceQuery>;

/** A lease's TTL: a duration ("15m", "1h") or a number of seconds. */
const Ttl = Type.Union([Duration, Type.Integer({ minimum: 1, maximum: 315_360_000 })], {
  description: 'A duration such as "15m" or "1h", or a number of seconds',
});

export const CreateLeaseBody = Type.Object({ ttl: Type.Optional(Ttl) }, { additionalProperties: false });
export type CreateLeaseBody = Static<typeof CreateLeaseBody>;

export const RenewLeaseBody = Type.Object({ ttl: Type.Optional(Ttl) }, { additionalProperties: false });
export type RenewLeaseBody = Static<typeof RenewLeaseBody>;

export const LeasesQuery = Type.Object(
  { limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) },
  { additionalProperties: false },
);
export type LeasesQuery = Static<typeof LeasesQuery>;

/** GET /v1/events: one credential by id, or those a glob ("*", "?") matches; same syntax as reader bindings. */
export const EventsQuery = Type.Object(
  {
    credential: Type.Optional(
      Type.String({
        pattern: '^[A-Za-z0-9*?][A-Za-z0-9._*?-]{0,127}$',
        description: 'A credential id, or a glob such as "payments-*"',
      }),
    ),
    steps: Type.Optional(
      Type.Boolean({
        description: 'true: also `event: step` for each rotation step as it lands (live progress)',
      }),
    ),
  },
  { additionalProperties: false },
);
export type EventsQuery = Static<typeof EventsQuery>;

/** Last-Event-ID: the id of the last event a reconnecting client received (a stream id, as the audit cursor). */
export const EventsHeaders = Type.Object({
  'last-event-id': Type.Optional(Type.String({ pattern: '^[0-9]{1,19}-[0-9]{1,19}$' })),
});
export type EventsHeaders = Static<typeof EventsHeaders>;

/**
 * The headers of a request dual control may gate: the approval it repeats, or break-glass with its reason. Other
 * headers pass as they are.
 */
export const GatedHeaders = Type.Object({
  'x-keyturn-approval': Type.Optional(
    Type.String({ format: 'uuid', description: 'the approvalId of the 202 that asked for this request' }),
  ),
  'x-keyturn-break-glass': Type.Optional(
    Type.String({
      pattern: '^(?=.*\\S)[^\\x00-\\x1f\\x7f]{1,500}$',
      description: 'skips approval, with this reason (1-500 characters): audited and notified',
    }),
  ),
});

/**
 * The headers of a PATCH or DELETE of a connection or credential: those of dual control, and If-Match (the ETag of
 * the version the client read; 412 when the object changed since). `keyturn apply` sends it on every write.
 */
export const WriteHeaders = Type.Object({
  ...GatedHeaders.properties,
  'if-match': Type.Optional(
    Type.String({
      pattern: '^(\\*|(W/)?"[A-Za-z0-9_-]{1,64}"(\\s*,\\s*(W/)?"[A-Za-z0-9_-]{1,64}"){0,15})$',
      description:
        'the ETag of GET (or of the last PATCH): the write is made only over that version, else 412',
    }),
  ),
});

export const ApprovalsQuery = Type.Object(
  {
    status: Type.Optional(
      Type.Union([
        Type.Literal('pending'),
        Type.Literal('approved'),
        Type.Literal('denied'),
        Type.Literal('expired'),
        Type.Literal('used'),
      ]),
    ),
    limit: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 1000, description: 'approvals per page (default 100)' }),
    ),
    cursor: Type.Optional(Type.String({ maxLength: 200, description: 'the `next` of the previous page' })),
  },
  { additionalProperties: false },
);
export type ApprovalsQuery = Static<typeof ApprovalsQuery>;

export const DecisionBody = Type.Object(
  {
    reason: Type.String({
      minLength: 1,
      maxLength: 500,
      pattern: '\\S',
      description: 'why: it is in the audit trail with the decision',
    }),
  },
  { additionalProperties: false },
);
export type DecisionBody = Static<typeof DecisionBody>;

/** The console's overview: rotations per day over the last 30 or 90 days. */
export const OverviewQuery = Type.Object(
  {
    days: Type.Optional(
      Type.Union([Type.Literal(30), Type.Literal(90)], {
        description: 'days of rotation history, counted per UTC day (default 30)',
      }),
    ),
  },
  { additionalProperties: false },
);
export type OverviewQuery = Static<typeof OverviewQuery>;
