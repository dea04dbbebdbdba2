// Probes, open without a token. Liveness says the process answers; readiness says it can do its work: Redis
// and every configured secret store answer. Readiness also shows the tokens file in force, and why a newer one was
// refused.
import type { FastifyPluginAsync } from 'fastify';
import { scrubError } from '../../crypto/scrub.ts';
import { describeTopology, writeNodes } from '../../redis/client.ts';
import type { ApiContext } from '../context.ts';

export const healthRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.get('/healthz', { config: { public: true } }, async () => ({ status: 'ok' }));

  app.get('/readyz', { config: { public: true } }, async (_request, reply) => {
    const checks: Record<string, { ok: boolean; error?: string; [fact: string]: unknown }> = {};
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
    // Which Redis, and the node that takes writes now: after a failover, the new master.
    checks.redis = {
      ...checks.redis,
      ok: checks.redis?.ok ?? false,
      topology: describeTopology(ctx.redisSettings.topology),
      writeNodes: await writeNodes(ctx.redis).catch(() => []),
    };
    // The tokens file in force. A file on disk that was refused leaves the last good one in force, so the process
    // still does its work: ready, with the reason shown (taking every replica out of service for a typo in the file
    // would be worse than the typo). The probe is open: when it was loaded and why a newer one was refused (positions
    // and rules, never a value), not how many principals it names.
    if (ctx.tokensFile) {
      const { file, loadedAt, refused } = ctx.tokensFile();
      checks.tokensFile = { ok: true, file, loadedAt, ...(refused ? { refused } : {}) };
    }
    const ready = Object.values(checks).every((c) => c.ok);
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready', checks });
  });
};
