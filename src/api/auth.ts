// Authentication for now (issue 2): one static admin token, compared in constant time through its digest.
// Every route but the probes needs it; each failure is an audit event naming the route and client address,
// never the presented token.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AuditLog } from '../audit/audit-log.ts';
import { sha256Hex, tokenMatchesDigest } from '../crypto/tokens.ts';
import { sendError } from './errors.ts';

export interface Principal {
  name: string;
  roles: string[];
}

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | null;
  }
  interface FastifyContextConfig {
    /** Routes open without a token (probes). */
    public?: boolean;
  }
}

export function installAuth(app: FastifyInstance, options: { adminToken: string; audit: AuditLog }): void {
  const adminDigest = sha256Hex(options.adminToken);
  app.decorateRequest('principal', null);
  app.addHook('onRequest', async (request: FastifyRequest, reply) => {
    if (request.routeOptions.config?.public) return;
    const header = request.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer[ ]+([^\s]+)\s*$/i.exec(header) : null;
    const presented = match?.[1];
    if (presented && tokenMatchesDigest(presented, adminDigest)) {
      request.principal = { name: 'admin', roles: ['admin'] };
      return;
    }
    const reason =
      header === undefined ? 'no Authorization header' : match ? 'unknown token' : 'not a Bearer token';
    await options.audit
      .append({
        actor: 'anonymous',
        action: 'auth.failed',
        outcome: 'denied',
        details: {
          reason,
          route: `${request.method} ${request.routeOptions.url ?? request.url.split('?')[0]}`,
          ip: request.ip,
        },
      })
      .catch((err) =>
        request.log.error({ err }, 'could not append the audit event of a failed authentication'),
      );
    reply.header('www-authenticate', 'Bearer realm="keyturn"');
    return sendError(
      reply,
      401,
      'unauthorized',
      header === undefined
        ? 'This route needs "Authorization: Bearer <token>"'
        : 'The bearer token is not valid for this Keyturn',
    );
  });
}

/** The acting principal's name for audit events. */
export function actorOf(request: FastifyRequest): string {
  return request.principal?.name ?? 'anonymous';
}
