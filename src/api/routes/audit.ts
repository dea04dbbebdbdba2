import type { FastifyPluginAsync } from 'fastify';
import type { ApiContext } from '../context.ts';
import { ApiError } from '../errors.ts';
import { AuditQuerySchema } from '../schemas.ts';

export const auditRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.get<{ Querystring: AuditQuerySchema }>(
    '/v1/audit',
    { schema: { querystring: AuditQuerySchema }, config: { access: 'audit' } },
    async (request) => {
      const q = request.query;
      const since = q.since ? new Date(q.since) : undefined;
      const until = q.until ? new Date(q.until) : undefined;
      // A format-valid date-time that Date cannot hold (leap second) or before 1970 made XRANGE fail: a 500.
      for (const [field, date] of [
        ['since', since],
        ['until', until],
      ] as const) {
        if (date && !(date.getTime() >= 0)) {
          throw new ApiError(
            400,
            'invalid_request',
            `querystring.${field} must be a date-time from 1970-01-01T00:00:00Z on`,
          );
        }
      }
      if (since && until && since > until) {
        throw new ApiError(400, 'invalid_request', 'querystring.since must not be after querystring.until');
      }
      return ctx.audit.read({
        limit: q.limit ?? 100,
        ...(q.credential ? { credential: q.credential } : {}),
        ...(q.actor ? { actor: q.actor } : {}),
        ...(q.action ? { action: q.action } : {}),
        ...(since ? { since } : {}),
        ...(until ? { until } : {}),
        ...(q.cursor ? { after: q.cursor } : {}),
      });
    },
  );
};
