// Transport and HTTP hardening of the API: HTTPS (and mTLS) server options, security headers (helmet), CORS for
// configured browser origins only, and a rate limit per principal (per client address before authentication).
//
// Order of the onRequest hooks (app.ts): authentication (sets request.principal, answers nothing) → helmet (headers
// on every answer, 401s included) → CORS (answers preflights before anything asks for a token) → the rate limit
// (counts every non-probe request once, refused callers included, before its body is read) → the 401 gate.
import { readFileSync } from 'node:fs';
import type { ServerOptions } from 'node:https';
import { createSecureContext, TLSSocket } from 'node:tls';
import cors from '@fastify/cors';
import rateLimit, { normalizeIP } from '@fastify/rate-limit';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import helmet, { type HelmetOptions } from 'helmet';
import type { KeyturnConfig } from '../config/config.ts';
import { ApiError, SECURITY_HEADERS } from './errors.ts';
import type { SharedRateLimit } from './rate-limit-store.ts';

function readPem(variable: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new Error(
      `${variable} "${path}" could not be read (${code}): check the path, and that the user Keyturn runs as may read it`,
    );
  }
}

/**
 * HTTPS server options from the TLS configuration, or undefined for plain HTTP. With a client CA the server asks
 * for a client certificate; `requireClientCert` decides whether a client without one (or with one the CA did not
 * sign) is refused at the handshake. When it is not, such a client still connects and may use a bearer token: a
 * certificate authenticates only when the TLS layer verified it (`socket.authorized`, see peerCertificateSubject).
 */
export function httpsOptions(tls: KeyturnConfig['tls']): ServerOptions | undefined {
  if (!tls) return undefined;
  const cert = readPem('KEYTURN_TLS_CERT_FILE', tls.certFile);
  const key = readPem('KEYTURN_TLS_KEY_FILE', tls.keyFile);
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw new Error(
      `KEYTURN_TLS_CERT_FILE "${tls.certFile}" and KEYTURN_TLS_KEY_FILE "${tls.keyFile}" are not a PEM certificate and its private key (${(err as Error).message}): give the server certificate (with its chain) and the unencrypted key that matches it`,
    );
  }
  const options: ServerOptions = { cert, key, minVersion: 'TLSv1.2' };
  if (tls.clientCaFile) {
    const ca = readPem('KEYTURN_TLS_CLIENT_CA_FILE', tls.clientCaFile);
    if (!ca.toString('latin1').includes('-----BEGIN CERTIFICATE-----')) {
      throw new Error(
        `KEYTURN_TLS_CLIENT_CA_FILE "${tls.clientCaFile}" holds no PEM certificate: give the CA certificate(s) that sign client certificates`,
      );
    }
    Object.assign(options, { requestCert: true, ca, rejectUnauthorized: tls.requireClientCert });
  }
  return options;
}

/**
 * The subject CN of the client certificate, only when the TLS layer verified it against the client CA
 * (`authorized === true`). An unverified certificate (another CA, expired) gives undefined: it names nobody.
 */
export function peerCertificateSubject(request: FastifyRequest): string | undefined {
  const socket = request.raw.socket;
  if (!(socket instanceof TLSSocket) || socket.authorized !== true) return undefined;
  const cn = socket.getPeerCertificate().subject?.CN;
  const name = Array.isArray(cn) ? cn[0] : cn;
  return typeof name === 'string' && name.length > 0 ? name : undefined;
}

/** Routes declared public (the probes): no authentication, no rate limit. */
export function isPublic(request: FastifyRequest): boolean {
  const config = request.routeOptions.config as { public?: boolean; access?: string } | undefined;
  return config?.public === true || config?.access === 'public';
}

export interface HardeningOptions {
  /**
   * Requests per window per principal (per client address before authentication). With `shared`, the counters
   * live in Redis and every API replica counts into them (rate-limit-store.ts); without it, in this process.
   */
  rateLimit: { max: number; windowMs: number; shared?: SharedRateLimit };
  /** Exact origins allowed from a browser; empty: no CORS headers at all. */
  corsOrigins: string[];
}

/** helmet's options for every answer but the routes that set `config.helmet` (the docs UI's CSP). */
const API_HEADERS: HelmetOptions = {
  contentSecurityPolicy: {
    useDefaults: false,
    directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] },
  },
  frameguard: { action: 'deny' },
  referrerPolicy: { policy: 'no-referrer' },
  // Only means something over HTTPS (browsers ignore it on HTTP); harmless otherwise.
  strictTransportSecurity: { maxAge: 31_536_000, includeSubDomains: true },
};

/**
 * Security headers, CORS and the rate limit. Call it after authentication (request.principal is set) and before
 * the hook that answers 401, so that refused callers are counted too (per address), and before the routes.
 */
export async function installHardening(app: FastifyInstance, options: HardeningOptions): Promise<void> {
  // A JSON API: nothing is ever rendered, framed or fetched by a page because of an answer.
  // helmet's middleware is built once here (and once per route that overrides it, such as the docs' CSP), not per
  // request: @fastify/helmet rebuilt it, parsing every directive again, on each request (4% of a secret read's CPU).
  const apiHeaders = helmet(API_HEADERS);
  const routeHeaders = new WeakMap<object, ReturnType<typeof helmet>>();
  app.addHook('onRequest', (request, reply, done) => {
    const override = (request.routeOptions.config as { helmet?: HelmetOptions }).helmet;
    let apply = apiHeaders;
    if (override) {
      apply = routeHeaders.get(override) ?? helmet({ ...API_HEADERS, ...override } as HelmetOptions);
      routeHeaders.set(override, apply);
    }
    apply(request.raw, reply.raw, (err?: unknown) => done(err as Error | undefined));
  });
  app.addHook('onSend', async (_request, reply, payload) => {
    // Secret reads set their own cache-control; every other answer must not be stored either.
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
    // Should an answer ever go out without helmet having run (an error in an earlier onRequest hook), the
    // headers still do.
    if (!reply.raw.hasHeader('x-content-type-options')) {
      for (const [name, value] of Object.entries(SECURITY_HEADERS)) {
        if (!reply.hasHeader(name)) reply.header(name, value);
      }
    }
    return payload;
  });

  if (options.corsOrigins.length > 0) {
    await app.register(cors, {
      origin: [...options.corsOrigins],
      credentials: false,
      methods: ['GET', 'POST', 'PATCH', 'DELETE'],
      // Dual control's headers (api/approval-gate.ts), for a browser console that repeats or breaks glass.
      allowedHeaders: ['authorization', 'content-type', 'x-keyturn-approval', 'x-keyturn-break-glass'],
      maxAge: 600,
    });
  }

  // Counters live in Redis, shared by every API replica (one round trip per request), and fall back to this
  // process's memory while Redis is away (rate-limit-store.ts). Without `shared`, in this process's memory only.
  const shared = options.rateLimit.shared;
  const windowSeconds = options.rateLimit.windowMs / 1000;
  const who = (request: FastifyRequest) =>
    request.principal ? request.principal.name : `address ${request.ip}`;
  await app.register(rateLimit, {
    // Not per route: one app-level hook (below) placed between authentication and the 401 gate.
    global: false,
    max: options.rateLimit.max,
    timeWindow: options.rateLimit.windowMs,
    hook: 'onRequest',
    cache: 10_000,
    ...(shared ? { store: shared.storeClass() } : {}),
    // An IPv6 client is counted per /64 (what one host can usually pick its addresses from).
    keyGenerator: (request) =>
      request.principal ? `p:${request.principal.name}` : `ip:${normalizeIP(request.ip)}`,
    allowList: (request) => isPublic(request),
    addHeadersOnExceeding: {
      'x-ratelimit-limit': true,
      'x-ratelimit-remaining': true,
      'x-ratelimit-reset': true,
    },
    addHeaders: {
      'x-ratelimit-limit': true,
      'x-ratelimit-remaining': true,
      'x-ratelimit-reset': true,
      'retry-after': true,
    },
    // The plugin throws what this returns: the error handler answers an ApiError in the SPEC shape, and keeps
    // the retry-after header the plugin has set.
    errorResponseBuilder: (request, context) => {
      const seconds = Math.max(1, Math.ceil(context.ttl / 1000));
      return new ApiError(
        429,
        'rate_limited',
        `Too many requests for ${who(request)}: at most ${context.max} per ${windowSeconds}s; retry after ${seconds} seconds`,
      );
    },
  });
  const limit = app.rateLimit();
  app.addHook('onRequest', async function rateLimitHook(request, reply) {
    if (isPublic(request)) return;
    await limit.call(this, request, reply);
  });
}
