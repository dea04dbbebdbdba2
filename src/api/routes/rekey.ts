// The key-encryption key (SPEC, "Key-encryption key"), admin only:
//   GET  /v1/rekey  → the key providers of this process (never key material) and the last rekey's status
//   POST /v1/rekey  → 202 {rekeyId, status, created}: rewraps every sealed value under the primary provider
//                     (src/rekey/rekey.ts); one at a time, a second call answers the one running (created: false).
// Progress is the status record, polled here; `keyturn rekey` follows it.
import type { FastifyPluginAsync } from 'fastify';
import { actorOf } from '../auth.ts';
import type { ApiContext } from '../context.ts';
import { requireNoBody } from '../errors.ts';

export const rekeyRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.get('/v1/rekey', { config: { access: 'keys' } }, async () => ({
    keyProviders: ctx.rekey.providers(),
    rekey: await ctx.rekey.status(),
  }));

  app.post('/v1/rekey', { config: { access: 'keys' } }, async (request, reply) => {
    requireNoBody(request.body, 'rekey');
    const { status, created } = await ctx.rekey.start(actorOf(request));
    return reply
      .code(202)
      .header('location', '/v1/rekey')
      .send({ rekeyId: status.id, status: status.status, created, rekey: status });
  });
};
