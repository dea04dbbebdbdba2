import type { FastifyPluginAsync } from 'fastify';
import { CONNECTION_GATED_FIELDS, weakens } from '../../service/approvals.ts';
import { etagOf } from '../../service/etag.ts';
import { approvalGate } from '../approval-gate.ts';
import { actorOf, requesterOf } from '../auth.ts';
import type { ApiContext } from '../context.ts';
import { requireNoBody } from '../errors.ts';
import { CreateConnectionBody, IdParams, PatchConnectionBody, WriteHeaders } from '../schemas.ts';
import { connectionView } from '../views.ts';

export const connectionRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.post<{ Body: CreateConnectionBody }>(
    '/v1/connections',
    { schema: { body: CreateConnectionBody }, config: { access: 'manage' } },
    async (request, reply) => {
      const connection = await ctx.service.createConnection(request.body, actorOf(request));
      return reply
        .code(201)
        .header('location', `/v1/connections/${connection.id}`)
        .header('etag', etagOf(connection))
        .send(connectionView(connection, []));
    },
  );

  app.get('/v1/connections', { config: { access: 'view' } }, async () => ({
    connections: (await ctx.registry.listConnections()).map((c) => connectionView(c)),
  }));

  app.get<{ Params: IdParams }>(
    '/v1/connections/:id',
    { schema: { params: IdParams }, config: { access: 'view' } },
    async (request, reply) => {
      const connection = await ctx.registry.getConnection(request.params.id);
      // The version a PATCH or DELETE may name in If-Match (optimistic concurrency, `keyturn apply`).
      reply.header('etag', etagOf(connection));
      return connectionView(connection, await ctx.registry.connectionUsers(connection.id));
    },
  );

  app.patch<{ Params: IdParams; Body: PatchConnectionBody }>(
    '/v1/connections/:id',
    {
      schema: { params: IdParams, body: PatchConnectionBody, headers: WriteHeaders },
      config: { access: 'manage' },
    },
    async (request, reply) => {
      const id = request.params.id;
      const patch = request.body;
      // Dual control: a change of the admin or of where the connection points, and removing or weakening the policy.
      const judged = (await ctx.registry.findConnection(id))?.approval;
      const gated =
        CONNECTION_GATED_FIELDS.some((f) => patch[f] !== undefined) || weakens(judged, patch.approval);
      return approvalGate(
        ctx,
        request,
        reply,
        {
          action:
            patch.approval !== undefined && !CONNECTION_GATED_FIELDS.some((f) => patch[f] !== undefined)
              ? 'approval change'
              : 'admin change',
          target: { kind: 'connection', id },
          policy: gated ? judged : undefined,
        },
        async () => {
          const connection = await ctx.service.updateConnection(
            id,
            patch,
            requesterOf(request),
            patch.approval !== undefined ? { judged } : undefined,
            { ifMatch: ifMatchOf(request.headers) },
          );
          reply.header('etag', etagOf(connection));
          return connectionView(connection, await ctx.registry.connectionUsers(connection.id));
        },
      );
    },
  );

  // The admin's own password, rotated now (issue 16 §3): the engine's four steps on the connection's admin subject,
  // while no credential rotation on the connection runs. Polled at GET /v1/rotations/:rotationId.
  app.post<{ Params: IdParams }>(
    '/v1/connections/:id/rotate',
    { schema: { params: IdParams }, config: { access: 'manage' } },
    async (request, reply) => {
      requireNoBody(request.body, 'rotate');
      const { rotation, created } = await ctx.service.rotateAdmin(request.params.id, actorOf(request));
      return reply
        .code(202)
        .header('location', `/v1/rotations/${rotation.id}`)
        .send({ rotationId: rotation.id, status: rotation.status, step: rotation.step, created });
    },
  );

  app.delete<{ Params: IdParams }>(
    '/v1/connections/:id',
    { schema: { params: IdParams, headers: WriteHeaders }, config: { access: 'manage' } },
    async (request, reply) => {
      const id = request.params.id;
      const policy = (await ctx.registry.findConnection(id))?.approval;
      return approvalGate(
        ctx,
        request,
        reply,
        { action: 'delete', target: { kind: 'connection', id }, policy },
        async () => {
          await ctx.service.deleteConnection(id, actorOf(request), { ifMatch: ifMatchOf(request.headers) });
          return reply.code(204).send();
        },
      );
    },
  );
};

/** The If-Match header as sent (the schema checked its form), or undefined. */
export function ifMatchOf(headers: Record<string, string | string[] | undefined>): string | undefined {
  const value = headers['if-match'];
  return Array.isArray(value) ? value.join(',') : value;
}
