import type { FastifyPluginAsync } from 'fastify';
import { actorOf, requesterOf } from '../auth.ts';
import type { ApiContext } from '../context.ts';
import { requireNoBody } from '../errors.ts';
import { CreateConnectionBody, IdParams, PatchConnectionBody } from '../schemas.ts';
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
        .send(connectionView(connection, []));
    },
  );

  app.get('/v1/connections', { config: { access: 'view' } }, async () => ({
    connections: (await ctx.registry.listConnections()).map((c) => connectionView(c)),
  }));

  app.get<{ Params: IdParams }>(
    '/v1/connections/:id',
    { schema: { params: IdParams }, config: { access: 'view' } },
    async (request) => {
      const connection = await ctx.registry.getConnection(request.params.id);
      return connectionView(connection, await ctx.registry.connectionUsers(connection.id));
    },
  );

  app.patch<{ Params: IdParams; Body: PatchConnectionBody }>(
    '/v1/connections/:id',
    { schema: { params: IdParams, body: PatchConnectionBody }, config: { access: 'manage' } },
    async (request) => {
      const connection = await ctx.service.updateConnection(
        request.params.id,
        request.body,
        requesterOf(request),
      );
      return connectionView(connection, await ctx.registry.connectionUsers(connection.id));
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
    { schema: { params: IdParams }, config: { access: 'manage' } },
    async (request, reply) => {
      await ctx.service.deleteConnection(request.params.id, actorOf(request));
      return reply.code(204).send();
    },
  );
};
