// Probes, open without a token. Liveness says the process answers; readiness says it can do its work: Redis
// and every configured secret store answer.
import type { FastifyPluginAsync } from 'fastify';
import { scrubError } from '../../crypto/scrub.ts';
import type { ApiContext } from '../context.ts';

export const healthRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.get('/healthz', { config: { public: true } }, async () => ({ status: 'ok' }));

  app.get('/readyz', { config: { public: true } }, async (_request, reply) => {
    const checks: Record<string, { ok: boolean; error?: string }> = {};
    const run = async (name: string, fn: () => Promise<unknown>) => {
      try {
        await Promise.race([
          fn(),
          new Promise((_, reject) => setTimeout(() => reject(new Error('timed out after 2s')), 2000).unref()),
        ]);
        checks[name] = { ok: true };
      } catch (err) {
        checks[name] = { ok: false, error: scrubError(err).message };
      }
    };
    await Promise.all([
      run('redis', () => ctx.redis.ping()),
      ...ctx.stores.all().map((store) => run(`store:${store.type}`, () => store.ping())),
    ]);
    const ready = Object.values(checks).every((c) => c.ok);
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready', checks });
  });
};
