// The Fastify application: one plugin per concern (errors, auth, health, metrics, docs, connections, credentials,
// leases, audit).
// Bodies are validated strictly (no type coercion, unknown fields refused); query strings and path parameters
// are coerced from text, since that is all a URL can carry.
import type { ServerOptions } from 'node:https';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from 'fastify';
import type { Authenticator } from '../auth/authenticator.ts';
import { currentSecretScope, runInNewSecretScope } from '../crypto/secret-scope.ts';
import type { Logger } from '../logging/logger.ts';
import type { Metrics } from '../metrics/metrics.ts';
import { installAuthentication, installAuthGate, installAuthorization } from './auth.ts';
import type { ApiContext } from './context.ts';
import { frameworkError, installErrorHandling } from './errors.ts';
import { type HardeningOptions, installHardening } from './hardening.ts';
import { installDocsAccess, installDocsUi, installOpenApi } from './openapi.ts';
import { approvalRoutes } from './routes/approvals.ts';
import { auditRoutes } from './routes/audit.ts';
import { complianceRoutes } from './routes/compliance.ts';
import { connectionRoutes } from './routes/connections.ts';
import { consoleRoutes, installConsoleAccess } from './routes/console.ts';
import { credentialRoutes } from './routes/credentials.ts';
import { eventRoutes } from './routes/events.ts';
import { healthRoutes } from './routes/health.ts';
import { leaseRoutes } from './routes/leases.ts';
import { installMetrics } from './routes/metrics.ts';
import { overviewRoutes } from './routes/overview.ts';
import { rekeyRoutes } from './routes/rekey.ts';

export interface AppOptions {
  ctx: ApiContext;
  logger: Logger;
  /** Turns what a request presents (bearer token, client certificate) into a principal. */
  authenticator: Authenticator;
  maxBodyBytes: number;
  /** HTTPS (and mTLS) server options (hardening.ts httpsOptions); plain HTTP when absent. */
  https?: ServerOptions;
  rateLimit: HardeningOptions['rateLimit'];
  corsOrigins: HardeningOptions['corsOrigins'];
  /** 'health' serves only the probes and /metrics (a worker-only process). */
  routes?: 'all' | 'health';
  /** This runtime's metrics, served at /metrics; HTTP answers are counted into them. */
  metrics: Metrics;
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
  // An HTTPS server hands the same request and response classes to the routes: one instance type for both.
  const app = Fastify({
    ...(options.https ? { https: options.https } : {}),
    loggerInstance: options.logger.child({ component: 'api' }) as FastifyBaseLogger,
    bodyLimit: options.maxBodyBytes,
    requestTimeout: 30_000,
    connectionTimeout: 30_000,
    // Behind a load balancer set trustProxy in a later release; for now the socket address is the client.
    trustProxy: false,
    routerOptions: { maxParamLength: 256, ignoreTrailingSlash: true },
    frameworkErrors: frameworkError,
    logController: new RequestLogController(),
    childLoggerFactory: (logger, bindings, opts) => new LazyRequestLogger(logger as Logger, bindings, opts),
  }) as unknown as FastifyInstance;
  // JSON only: a text/plain body is an unsupported media type (415), not a string to validate.
  app.removeContentTypeParser('text/plain');
  // First: the docs UI's routes declare no access of their own; this makes them public before anything checks.
  installDocsAccess(app);
  // Likewise the web console's page and files (/ui): public, with a CSP of their own.
  installConsoleAccess(app);
  // Routes without query parameters refuse any, like every schema refuses unknown fields. Public routes (probes,
  // metrics, docs) ignore them: scrapers and browsers add their own.
  app.addHook('onRoute', (route) => {
    if (route.schema?.querystring || route.config?.public || route.config?.access === 'public') return;
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

  installSecretScope(app);
  installErrorHandling(app);
  // Order matters: who is calling, then (hardening) the rate limit counts them, refused callers included, then the
  // gate answers 401; authorization runs per route after validation.
  installAuthentication(app, { authenticator: options.authenticator });
  await installHardening(app, { rateLimit: options.rateLimit, corsOrigins: options.corsOrigins });
  installAuthGate(app, { audit: options.ctx.audit });
  installAuthorization(app, {
    registry: options.ctx.registry,
    leases: options.ctx.leases,
    rotations: options.ctx.rotations,
    audit: options.ctx.audit,
  });

  const ctx = options.ctx;
  // Before any route: the OpenAPI document is collected from the routes registered after it.
  if (options.routes !== 'health') await installOpenApi(app);
  await app.register(healthRoutes, { ctx });
  installMetrics(app, options.metrics);
  if (options.routes !== 'health') {
    await installDocsUi(app);
    await app.register(consoleRoutes);
    await app.register(connectionRoutes, { ctx });
    await app.register(credentialRoutes, { ctx });
    await app.register(leaseRoutes, { ctx });
    await app.register(auditRoutes, { ctx });
    await app.register(complianceRoutes, { ctx });
    await app.register(eventRoutes, { ctx });
    await app.register(approvalRoutes, { ctx });
    await app.register(rekeyRoutes, { ctx });
    await app.register(overviewRoutes, { ctx });
  }
  return app;
}

/**
 * Fastify's two lines per request ("incoming request", "request completed") at info cost about a third of a secret
 * read's CPU (pino's redaction and serialisation, twice): see "Request logging" in docs/architecture.md. Here an
 * answered request is one line at debug, built only when debug is on (a level check is all it costs at info);
 * errored requests, stream errors and the framework's own error lines stay as Fastify writes them, and the error
 * handler logs every failure it answers.
 */
class RequestLogController extends LogController {
  override incomingRequest(): void {}

  override requestCompleted(
    error: Error | null | undefined,
    request: FastifyRequest,
    reply: FastifyReply,
  ): void {
    if (error) {
      super.requestCompleted(error, request, reply);
      return;
    }
    if (!(reply.log as unknown as Logger).isLevelEnabled('debug')) return;
    reply.log.debug(
      {
        method: request.method,
        route: request.routeOptions.url ?? null,
        statusCode: reply.statusCode,
        ms: Math.round(reply.elapsedTime * 10) / 10,
      },
      'request completed',
    );
  }
}

type LogArgs = Parameters<Logger['info']>;

/**
 * A request's logger (`request.log`), made only when a line is written: pino's child() runs the redaction over the
 * request id binding, work every request paid before this for a logger most requests never use. Same bindings, same
 * lines, same levels (the parent's, or the route's own level when Fastify passes one).
 */
class LazyRequestLogger {
  readonly #parent: Logger;
  readonly #bindings: Record<string, unknown>;
  readonly #opts: object;
  #real: Logger | undefined;

  constructor(parent: Logger, bindings: Record<string, unknown>, opts: object) {
    this.#parent = parent;
    this.#bindings = bindings;
    this.#opts = opts;
  }

  #logger(): Logger {
    this.#real ??= this.#parent.child(this.#bindings, this.#opts);
    return this.#real;
  }

  get level(): string {
    return this.#real?.level ?? (this.#opts as { level?: string }).level ?? this.#parent.level;
  }

  set level(level: string) {
    this.#logger().level = level;
  }

  isLevelEnabled(level: string): boolean {
    if (this.#real) return this.#real.isLevelEnabled(level);
    const own = (this.#opts as { level?: string }).level;
    if (own === undefined) return this.#parent.isLevelEnabled(level);
    const values = this.#parent.levels.values;
    return (values[level] ?? Number.POSITIVE_INFINITY) >= (values[own] ?? 0);
  }

  fatal(...args: LogArgs): void {
    this.#logger().fatal(...args);
  }
  error(...args: LogArgs): void {
    this.#logger().error(...args);
  }
  warn(...args: LogArgs): void {
    this.#logger().warn(...args);
  }
  info(...args: LogArgs): void {
    this.#logger().info(...args);
  }
  debug(...args: LogArgs): void {
    this.#logger().debug(...args);
  }
  trace(...args: LogArgs): void {
    this.#logger().trace(...args);
  }
  silent(): void {}
  child(bindings: Record<string, unknown>, options?: object): Logger {
    return this.#logger().child(bindings, options);
  }
}

/**
 * Every request runs in a secret scope of its own (crypto/secret-scope.ts): the passwords its stores and drivers
 * touch are scrubbed from its answer, its logs and its audit events. Entered at onRequest, and again after the body is
 * parsed: a body arriving after the headers is read from the socket's events, outside the context the first hook set
 * (Fastify's own parsers carry it over; a parser added later might not). test/unit/secret-scope.test.ts checks both.
 */
export function installSecretScope(app: FastifyInstance): void {
  app.decorateRequest('secretScope', null);
  app.addHook('onRequest', (request, _reply, done) => {
    const scope = new Set<string>();
    request.secretScope = scope;
    runInNewSecretScope(done, scope);
  });
  app.addHook('preValidation', (request, _reply, done) => {
    // Still in the request's scope (no body was read from the socket, e.g. a GET): nothing to restore.
    if (request.secretScope && currentSecretScope() !== request.secretScope)
      runInNewSecretScope(done, request.secretScope);
    else done();
  });
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The secrets this request has touched (see installSecretScope). */
    secretScope: Set<string> | null;
  }
}
