// Who is calling, and what that lets them do (SPEC, Roles). A principal comes from one of four places: the static
// admin token, the static-token file, a verified JWT, or a verified client certificate; whatever the source, the
// rest of Keyturn sees only this shape, and decides only from it.
import picomatch from 'picomatch';

export const ROLES = ['admin', 'operator', 'reader', 'auditor'] as const;
export type Role = (typeof ROLES)[number];

export interface Principal {
  /** The name in audit events: the token file's name, the JWT's subject (or mapped name), the certificate's CN. */
  name: string;
  roles: Role[];
  /** reader only: credential ids or globs ("payments-*") whose secret and leases it may use. */
  credentials?: string[];
  /** reader only: credentials carrying all of these labels are bound too. */
  labels?: Record<string, string>;
  via: 'admin-token' | 'static-token' | 'jwt' | 'certificate';
}

/** What a route needs, declared next to it (`config.access`). */
export type Access =
  /** Open without authentication (probes, docs). */
  | 'public'
  /** Connections, credentials' settings and rotations: admin and operator. */
  | 'manage'
  /** Read connections, credentials' settings and rotations, without secrets: admin, operator, auditor. */
  | 'view'
  /**
   * The list of credentials and the console's overview: admin, operator, auditor see every credential; a reader gets
   * one too, narrowed by the route to the credentials bound to it (a reader's console lists what it may use).
   */
  | 'credential-list'
  /** Who the caller is (GET /v1/me): every role, about itself only. */
  | 'self'
  /** One credential's settings and rotations, named by `:id`: admin, operator, auditor, or a reader bound to it. */
  | 'credential-view'
  /** One rotation, named by `:id`: admin, operator, auditor, or a reader bound to the rotation's credential. */
  | 'rotation-view'
  /** A credential's secret or leases, named by the route's `:id`: admin, or a reader bound to that credential. */
  | 'credential-secret'
  /** A lease, named by the route's `:id`: admin, or a reader bound to the lease's credential. */
  | 'lease'
  /** Revoking a lease (no secret in the answer): admin, operator, or a reader bound to the lease's credential. */
  | 'lease-revoke'
  /** The audit trail and compliance: admin and auditor. */
  | 'audit'
  /**
   * The rotation event stream (GET /v1/events): every role; admin, operator and auditor see every credential's
   * events, a reader only those of the credentials bound to it (filtered per event).
   */
  | 'events'
  /**
   * Dual control's approvals (GET /v1/approvals…, approve, deny): every role; the route shows and lets decide only the
   * approvals a principal requested or matches the approvers of (admins and auditors see all).
   */
  | 'approvals'
  /** The key-encryption key's providers and the rekey: admin only (it decides which key guards every secret). */
  | 'keys';

const ANY_OF: Record<Exclude<Access, 'public'>, Role[]> = {
  manage: ['admin', 'operator'],
  view: ['admin', 'operator', 'auditor'],
  audit: ['admin', 'auditor'],
  'credential-list': ['admin', 'operator', 'auditor', 'reader'],
  self: ['admin', 'operator', 'auditor', 'reader'],
  'credential-view': ['admin', 'operator', 'auditor', 'reader'],
  'rotation-view': ['admin', 'operator', 'auditor', 'reader'],
  'credential-secret': ['admin', 'reader'],
  lease: ['admin', 'reader'],
  'lease-revoke': ['admin', 'operator', 'reader'],
  events: ['admin', 'operator', 'auditor', 'reader'],
  approvals: ['admin', 'operator', 'auditor', 'reader'],
  keys: ['admin'],
};

/** Roles that pass without a look at the credential: the others (reader) must be bound to it. */
export const UNBOUND_ROLES: Record<Exclude<Access, 'public'>, Role[]> = {
  manage: ['admin', 'operator'],
  view: ['admin', 'operator', 'auditor'],
  audit: ['admin', 'auditor'],
  // A reader passes too: the route keeps only the credentials bound to it (mayList).
  'credential-list': ['admin', 'operator', 'auditor', 'reader'],
  self: ['admin', 'operator', 'auditor', 'reader'],
  'credential-view': ['admin', 'operator', 'auditor'],
  'rotation-view': ['admin', 'operator', 'auditor'],
  'credential-secret': ['admin'],
  lease: ['admin'],
  'lease-revoke': ['admin', 'operator'],
  events: ['admin', 'operator', 'auditor'],
  // No credential to bind: the service checks each approval against the principal.
  approvals: ['admin', 'operator', 'auditor', 'reader'],
  keys: ['admin'],
};

export function hasRole(principal: Principal, roles: readonly Role[]): boolean {
  return principal.roles.some((r) => roles.includes(r));
}

/** Whether the principal's roles allow the kind of access, before any credential is looked at. */
export function allowsAccess(principal: Principal, access: Exclude<Access, 'public'>): boolean {
  return hasRole(principal, ANY_OF[access]);
}

/** The roles that may use an access kind, for messages and the README's table. */
export function rolesFor(access: Exclude<Access, 'public'>): readonly Role[] {
  return ANY_OF[access];
}

const matchers = new Map<string, (id: string) => boolean>();
/** Whether a credential id matches an id or glob, with the semantics of reader bindings. */
export function globMatch(pattern: string, id: string): boolean {
  let m = matchers.get(pattern);
  if (!m) {
    // Credential ids have no "/": picomatch's `*` then matches any run of id characters. Dots are ordinary.
    m = picomatch(pattern, { dot: true, nobrace: true, noextglob: true });
    if (matchers.size > 10_000) matchers.clear();
    matchers.set(pattern, m);
  }
  return m(id);
}

/** What a reader is bound to: credential ids or globs, and labels a credential must all carry. */
export interface Binding {
  credentials?: string[];
  labels?: Record<string, string>;
}

/**
 * A reader binding as configured (a token, a certificate or a JWT rule of the tokens file), named for messages:
 * the registry refuses an operator a change that would give one of them a credential, or take one away.
 */
export interface ReaderBinding extends Binding {
  source: string;
}

/** Whether a binding reaches a credential: one of its ids or globs matches the id, or the credential has all its labels. */
export function bindingMatches(
  binding: Binding,
  credential: { id: string; labels: Record<string, string> },
): boolean {
  if (binding.credentials?.some((p) => globMatch(p, credential.id))) return true;
  const labels = binding.labels;
  if (labels && Object.keys(labels).length > 0) {
    return Object.entries(labels).every(([k, v]) => credential.labels[k] === v);
  }
  return false;
}

/**
 * Whether a list (GET /v1/credentials, the overview) shows this credential to the principal: every credential to
 * admin, operator and auditor; to a reader, those bound to it.
 */
export function mayList(
  principal: Principal,
  credential: { id: string; labels: Record<string, string> },
): boolean {
  if (hasRole(principal, UNBOUND_ROLES.view)) return true;
  return mayUseCredential(principal, credential);
}

/**
 * Whether the principal may use this credential's secret and leases: admin always; a reader when one of its ids or
 * globs matches the credential id, or when the credential carries all of its labels. Operators and auditors never.
 */
export function mayUseCredential(
  principal: Principal,
  credential: { id: string; labels: Record<string, string> },
): boolean {
  if (principal.roles.includes('admin')) return true;
  if (!principal.roles.includes('reader')) return false;
  return bindingMatches(principal, credential);
}
