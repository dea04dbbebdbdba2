// The Fastify application: one plugin per concern (errors, auth, health, connections, credentials, leases,
// audit).
// Bodies are validated strictly (no type coercion, unknown fields refused); query strings and path parameters
// are coerced from text, since that is all a URL can carry.
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from '../logging/logger.ts';
import { installAuth } from './auth.ts';
import type { ApiContext } from './context.ts';
import { frameworkError, installErrorHandling } from './errors.ts';
import { auditRoutes } from './routes/audit.ts';
import { connectionRoutes } from './routes/connections.ts';
import { credentialRoutes } from './routes/credentials.ts';
import { healthRoutes } from './routes/health.ts';
import { leaseRoutes } from './routes/leases.ts';

export interface AppOptions {
  ctx: ApiContext;
  logger: Logger;
  adminToken: string;
  maxBodyBytes: number;
  /** 'health' serves only the probes (a worker-only process). */
  routes?: 'all' | 'health';
}

function makeAjv(coerce: boolean) {
  const ajv = new Ajv.default({
    allErrors: false,
    removeAdditional: false,
    useDefaults: false,
    coerceTypes: coerce,
    strict: false,
  });
  addFormats.default(ajv);
  return ajv;
}

export async function buildApp(options: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: options.logger.child({ component: 'api' }) as FastifyBaseLogger,
    bodyLimit: options.maxBodyBytes,
    requestTimeout: 30_000,
    connectionTimeout: 30_000,
    // Behind a load balancer set trustProxy in a later release; for now the socket address is the client.
    trustProxy: false,
    routerOptions: { maxParamLength: 256, ignoreTrailingSlash: true },
    frameworkErrors: frameworkError,
  });
  // JSON only: a text/plain body is an unsupported media type (415), not a string to validate.
  app.removeContentTypeParser('text/plain');
  // Routes without query parameters refuse any, like every schema refuses unknown fields.
  app.addHook('onRoute', (route) => {
    if (route.schema?.querystring || route.config?.public) return;
    route.schema = {
      ...route.schema,
      querystring: { type: 'object', properties: {}, additionalProperties: false },
    };
  });

  const strict = makeAjv(false);
  const coercing = makeAjv(true);
  app.setValidatorCompiler(({ schema, httpPart }) =>
    httpPart === 'body' ? strict.compile(schema) : coercing.compile(schema),
  );

  installErrorHandling(app);
  installAuth(app, { adminToken: options.adminToken, audit: options.ctx.audit });

  app.addHook('onSend', async (_request, reply, payload) => {
    reply.header('x-content-type-options', 'nosniff');
    reply.header('x-frame-options', 'DENY');
    reply.header('referrer-policy', 'no-referrer');
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
    return payload;
  });

  const ctx = options.ctx;
  await app.register(healthRoutes, { ctx });
  if (options.routes !== 'health') {
    await app.register(connectionRoutes, { ctx });
    await app.register(credentialRoutes, { ctx });
    await app.register(leaseRoutes, { ctx });
    await app.register(auditRoutes, { ctx });
  }
  return app;
}
