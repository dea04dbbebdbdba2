// Short-lived credentials: issue, read, renew, revoke. The password is in the issue response only; every other
// answer describes the lease without it.
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { parseDuration } from '../../config/duration.ts';
import type { Lease } from '../../leases/types.ts';
import { approvalGate, personalReadPolicy } from '../approval-gate.ts';
import { actorOf } from '../auth.ts';
import type { ApiContext } from '../context.ts';
import { ApiError } from '../errors.ts';
import {
  CreateLeaseBody,
  GatedHeaders,
  IdParams,
  LeasesQuery,
  RenewLeaseBody,
  UuidParams,
} from '../schemas.ts';
import { leaseView } from '../views.ts';

/** The body's ttl in milliseconds: "15m" or a number of seconds. */
function ttlOf(body: { ttl?: string | number } | undefined): number | undefined {
  const ttl = body?.ttl;
  if (ttl === undefined) return undefined;
  if (typeof ttl === 'number') return ttl * 1000;
  try {
    return parseDuration(ttl);
  } catch (err) {
    throw new ApiError(400, 'invalid_request', `body.ttl: ${(err as Error).message}`);
  }
}

/** These routes take an optional body: none at all is the same as {}. */
async function emptyBodyIsObject(request: FastifyRequest): Promise<void> {
  if (request.body === undefined || request.body === null) request.body = {};
}

const location = (lease: Lease) => `/v1/leases/${lease.id}`;

export const leaseRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.post<{ Params: IdParams; Body: CreateLeaseBody }>(
    '/v1/credentials/:id/leases',
    {
      schema: { params: IdParams, body: CreateLeaseBody, headers: GatedHeaders },
      config: { access: 'credential-secret' },
      preValidation: emptyBodyIsObject,
    },
    async (request, reply) => {
      // A lease hands its taker a working login: a person's is gated like a person's secret read (dual control).
      const id = request.params.id;
      const policy = await personalReadPolicy(ctx, request, id);
      return approvalGate(
        ctx,
        request,
        reply,
        { action: 'lease', target: { kind: 'credential', id }, policy },
        async () => {
          const { lease, password, connection } = await ctx.leases.issue(
            id,
            ttlOf(request.body),
            actorOf(request),
          );
          return reply
            .code(201)
            .header('location', location(lease))
            .send({
              ...leaseView(lease),
              password,
              host: connection.host,
              port: connection.port,
              database: connection.database ?? null,
            });
        },
      );
    },
  );

  app.get<{ Params: IdParams; Querystring: LeasesQuery }>(
    '/v1/credentials/:id/leases',
    { schema: { params: IdParams, querystring: LeasesQuery }, config: { access: 'credential-secret' } },
    async (request) => {
      const leases = await ctx.leases.list(request.params.id, request.query.limit ?? 100);
      return { leases: leases.map(leaseView) };
    },
  );

  app.get<{ Params: { id: string } }>(
    '/v1/leases/:id',
    { schema: { params: UuidParams }, config: { access: 'lease' } },
    async (request) => leaseView(await ctx.leases.get(request.params.id)),
  );

  app.post<{ Params: { id: string }; Body: RenewLeaseBody }>(
    '/v1/leases/:id/renew',
    {
      schema: { params: UuidParams, body: RenewLeaseBody },
      config: { access: 'lease' },
      preValidation: emptyBodyIsObject,
    },
    async (request) => {
      const { lease, capped } = await ctx.leases.renew(
        request.params.id,
        ttlOf(request.body),
        actorOf(request),
      );
      return { ...leaseView(lease), capped };
    },
  );

  app.delete<{ Params: { id: string } }>(
    '/v1/leases/:id',
    { schema: { params: UuidParams }, config: { access: 'lease-revoke' } },
    async (request, reply) => {
      const result = await ctx.leases.revoke(request.params.id, 'requested', actorOf(request), 'api');
      switch (result.outcome) {
        case 'revoked':
          return reply.code(200).send(leaseView(result.lease));
        case 'failed':
          // Accepted: the user is not gone yet; the lease stays `revoking` and is retried. Poll it.
          return reply
            .code(202)
            .header('location', location(result.lease))
            .send({
              ...leaseView(result.lease),
              message: `The lease user could not be dropped yet (${result.error.message}); Keyturn keeps trying: poll GET ${location(result.lease)}`,
            });
        default:
          throw new ApiError(404, 'not_found', `Lease "${request.params.id}" does not exist`);
      }
    },
  );
};
