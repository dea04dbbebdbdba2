// GET /metrics, the Prometheus scrape (open without a token, like the probes: SPEC), and the HTTP series of every
// answer. Served by API processes and by worker-only processes alike, so that each pod can be scraped.
import type { FastifyInstance } from 'fastify';
import type { Metrics } from '../../metrics/metrics.ts';

/** A request no route matched: one label value for all of them, whatever URL was asked for. */
const UNMATCHED_ROUTE = 'unmatched';

export function installMetrics(app: FastifyInstance, metrics: Metrics): void {
  // On the root instance, so that it sees every route's answers, 401s and 404s included.
  app.addHook('onResponse', async (request, reply) => {
    metrics.httpAnswered({
      method: request.method,
      // The route's pattern, never request.url: ids in URLs would make one series per credential (and per typo).
      route: request.is404 ? UNMATCHED_ROUTE : (request.routeOptions.url ?? UNMATCHED_ROUTE),
      statusCode: reply.statusCode,
      seconds: reply.elapsedTime / 1000,
    });
  });

  app.get(
    '/metrics',
    { config: { access: 'public' }, schema: { summary: 'Prometheus metrics (text exposition format)' } },
    async (_request, reply) => {
      const text = await metrics.text();
      return reply.type(metrics.contentType).send(text);
    },
  );
}
