// Who is calling (authentication) and whether they may (authorization), for every route.
//
//   onRequest   authenticate: a verified client certificate or a bearer token → request.principal, or the reason
//               it was refused (kept, not answered yet, so that the rate limit counts refused callers too)
//   onRequest   gate (after the rate limit): no principal on a non-public route → 401, audited
//   onRequest   authorize (after the gate, before the body is read or anything validated): the route's declared
//               `access` against the principal's roles → 403, audited
//   preHandler  bind (after validation): for a credential's secret or a lease, the reader's bindings → 403, audited
//
// Deny by default: a route that declares no `access` makes the app refuse to start.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AuditLog } from '../audit/audit-log.ts';
import type { Authenticator, RefusedToken } from '../auth/authenticator.ts';
import {
  type Access,
  allowsAccess,
  hasRole,
  mayUseCredential,
  type Principal,
  rolesFor,
  UNBOUND_ROLES,
} from '../auth/principal.ts';
import type { LeaseService } from '../leases/lease-service.ts';
import type { Registry } from '../registry/registry.ts';
import type { RotationRepo } from '../rotation/rotation-repo.ts';
import type { Requester } from '../service/registry-service.ts';
import { sendError } from './errors.ts';
import { isPublic, peerCertificateSubject } from './hardening.ts';

export type { Principal } from '../auth/principal.ts';

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | null;
    /** Why authentication failed, until the gate answers 401. */
    authFailure: string | null;
    /** A static token refused because it expired or was revoked: its name (never its value), for the audit. */
    refusedToken: RefusedToken | null;
  }
  interface FastifyContextConfig {
    /** Routes open without a token (probes). Same as access: 'public'. */
    public?: boolean;
    /** What the route needs; every route declares it. */
    access?: Access;
  }
}

const routeOf = (request: FastifyRequest): string =>
  `${request.method} ${request.routeOptions.url ?? request.url.split('?')[0]}`;

/** Step 1: who is calling. Never answers by itself. */
export function installAuthentication(app: FastifyInstance, options: { authenticator: Authenticator }): void {
  app.decorateRequest('principal', null);
  app.decorateRequest('authFailure', null);
  app.decorateRequest('refusedToken', null);
  app.addHook('onRequest', async (request) => {
    if (isPublic(request)) return;
    const outcome = await options.authenticator.authenticate({
      authorization: request.headers.authorization,
      certificateSubject: peerCertificateSubject(request),
    });
    if (outcome.ok) request.principal = outcome.principal;
    else {
      request.authFailure = outcome.reason;
      if (outcome.token) request.refusedToken = outcome.token;
    }
  });
}

/**
 * Step 2: 401 for a non-public route without a principal; each one an audit event naming the reason. A static token
 * that expired or was revoked is `auth.token_expired` or `auth.token_revoked`, with the token's name as the actor
 * (whoever presents it holds that principal's token), so that its owner's refused uses can be found by name.
 */
export function installAuthGate(app: FastifyInstance, options: { audit: AuditLog }): void {
  app.addHook('onRequest', async (request, reply) => {
    if (isPublic(request) || request.principal) return;
    const reason = request.authFailure ?? 'not authenticated';
    const token = request.refusedToken;
    await options.audit
      .append({
        actor: token ? token.name : 'anonymous',
        action: token ? `auth.token_${token.state}` : 'auth.failed',
        outcome: 'denied',
        details: {
          reason,
          route: routeOf(request),
          ip: request.ip,
          ...(token
            ? { token: token.name, [token.state === 'expired' ? 'expiredAt' : 'revokedAt']: token.at }
            : {}),
        },
      })
      .catch((err) =>
        request.log.error({ err }, 'could not append the audit event of a failed authentication'),
      );
    reply.header('www-authenticate', 'Bearer realm="keyturn"');
    const expired = /expired/.test(reason);
    return sendError(
      reply,
      401,
      'unauthorized',
      request.headers.authorization === undefined
        ? 'This route needs "Authorization: Bearer <token>" (or a client certificate Keyturn knows)'
        : expired
          ? 'The bearer token has expired: ask for a new one'
          : token?.state === 'revoked'
            ? 'The bearer token has been revoked: ask for a new one'
            : 'The bearer token is not valid for this Keyturn',
    );
  });
}

/** Step 3: may this principal do this? Its roles before anything is parsed; a reader's bindings after validation. */
export function installAuthorization(
  app: FastifyInstance,
  options: { registry: Registry; leases: LeaseService; rotations: RotationRepo; audit: AuditLog },
): void {
  app.addHook('onRoute', (route) => {
    const config = route.config as { public?: boolean; access?: Access } | undefined;
    if (!config?.access && !config?.public) {
      throw new Error(
        `route ${route.method} ${route.url} declares no access: every route must (deny by default)`,
      );
    }
  });
  // The route's roles, before anything of the request is parsed or validated: a caller without access gets 403 and
  // learns nothing of the route's schema (a 400 would describe it), and costs no body parsing.
  app.addHook('onRequest', async (request, reply) => {
    // No route matched: the not-found handler answers 404 (after the gate, so unauthenticated callers learn nothing).
    if (isPublic(request) || request.is404) return;
    const principal = request.principal;
    const access = request.routeOptions.config?.access;
    if (!principal || !access || access === 'public') return deny(request, reply, 'no access declared');
    if (!allowsAccess(principal, access)) {
      return deny(
        request,
        reply,
        `needs ${describe(access)}; ${principal.name} has ${principal.roles.join(', ')}`,
      );
    }
  });
  // A reader's bindings, after validation: they need the route's parameters as validated (and, for a lease or a
  // rotation, a read of what the parameter names).
  app.addHook('preHandler', async (request, reply) => {
    if (isPublic(request) || request.is404) return;
    const principal = request.principal;
    const access = request.routeOptions.config?.access;
    if (!principal || !access || access === 'public') return deny(request, reply, 'no access declared');
    if (hasRole(principal, UNBOUND_ROLES[access])) return;
    // A reader: the credential the route concerns must be bound to it.
    const id = (request.params as { id?: string }).id ?? '';
    let credentialId: string | undefined = id;
    if (access === 'events') {
      // A stream of many credentials, filtered per event by the route. Only a single credential asked for by id
      // is checked here, so that a reader learns at once that it will never see that credential's events.
      const asked = (request.query as { credential?: string }).credential;
      if (asked === undefined || /[*?]/.test(asked)) return;
      credentialId = asked;
    } else if (access === 'lease' || access === 'lease-revoke') {
      credentialId = (await options.leases.find(id))?.credential;
    } else if (access === 'rotation-view') {
      credentialId = (await options.rotations.find(id))?.credentialId;
    }
    // An unknown lease or rotation is the route's 404: a random id tells nobody anything.
    if (credentialId === undefined) return;
    // Bound by id or glob: allowed whatever the credential's labels, so nothing is read (a secret read then costs
    // no Redis command here; the route answers 404 for an unknown id, as before).
    if (mayUseCredential(principal, { id: credentialId, labels: {} })) return;
    // Bound by nothing that could match (no labels): refused whatever the credential is.
    if (!principal.labels || Object.keys(principal.labels).length === 0) {
      return deny(request, reply, `credential "${credentialId}" is not bound to ${principal.name}`);
    }
    const credential = await options.registry.findCredential(credentialId);
    if (!mayUseCredential(principal, { id: credentialId, labels: credential?.spec.labels ?? {} })) {
      return deny(request, reply, `credential "${credentialId}" is not bound to ${principal.name}`);
    }
  });

  async function deny(request: FastifyRequest, reply: import('fastify').FastifyReply, reason: string) {
    const actor = request.principal?.name ?? 'anonymous';
    await options.audit
      .append({
        actor,
        action: 'auth.denied',
        outcome: 'denied',
        details: { reason, route: routeOf(request), ip: request.ip },
      })
      .catch((err) => request.log.error({ err }, 'could not append the audit event of a denied request'));
    return sendError(reply, 403, 'forbidden', `${actor} may not ${routeOf(request)}: ${reason}`);
  }
}

function describe(access: Exclude<Access, 'public'>): string {
  const roles = rolesFor(access);
  const bound = roles.includes('reader') ? ' (a reader only for credentials bound to it)' : '';
  return `role ${roles.join(' or ')}${bound}`;
}

/** The acting principal's name for audit events. */
export function actorOf(request: FastifyRequest): string {
  return request.principal?.name ?? 'anonymous';
}

/** The acting principal as the registry service needs it: its audit name, and whether it holds the admin role. */
export function requesterOf(request: FastifyRequest): Requester {
  return { name: actorOf(request), admin: request.principal?.roles.includes('admin') === true };
}
