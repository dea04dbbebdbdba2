// One error shape for every route (SPEC): {"error": {"code", "message", "details"}}. Validation problems name the
// field; registry errors map to 404, 409 and 422; anything unexpected is a 500 whose message says nothing of
// the internals (the scrubbed cause goes to the log).
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify';
import { scrubError } from '../crypto/scrub.ts';
import { scrubSecretsInScope } from '../crypto/secret-scope.ts';
import { isRedisUnavailable } from '../redis/client.ts';
import {
  ConflictError,
  ForbiddenError,
  NotFoundError,
  TooManyRequestsError,
  UnavailableError,
  UnprocessableError,
} from '../registry/errors.ts';
import { PreconditionFailedError } from '../service/etag.ts';
import { StoreNotConfiguredError, StoreUnavailableError } from '../stores/types.ts';

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: unknown;
  constructor(status: number, code: string, message: string, details?: unknown) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** An error answer. Its message never carries a secret the request touched, whoever built it (finding 10, issue 11). */
export function sendError(
  reply: FastifyReply,
  status: number,
  code: string,
  message: string,
  details?: unknown,
) {
  return reply
    .code(status)
    .type('application/json; charset=utf-8')
    .send({
      error: { code, message: scrubSecretsInScope(message), ...(details === undefined ? {} : { details }) },
    });
}

interface AjvIssue {
  instancePath: string;
  keyword: string;
  message?: string;
  params: Record<string, unknown>;
}

/**
 * "body.admin.port must be integer" style messages, one per field. A union (anyOf) reports every branch's
 * failure; those are folded into one message per field, and alternatives of constants into "must be one of".
 */
function describeValidation(context: string, issues: AjvIssue[]): { message: string; details: unknown[] } {
  const relevant = issues.length > 1 ? issues.filter((i) => i.keyword !== 'anyOf') : issues;
  const byField = new Map<string, { messages: string[]; allowed: unknown[] }>();
  for (const issue of relevant) {
    const path = issue.instancePath.split('/').filter(Boolean).join('.');
    let field = path ? `${context}.${path}` : context;
    let message = issue.message ?? 'is invalid';
    if (issue.keyword === 'additionalProperties') {
      field = `${field}.${String(issue.params.additionalProperty)}`;
      message = 'is not a known field';
    } else if (issue.keyword === 'required') {
      field = `${field}.${String(issue.params.missingProperty)}`;
      message = 'is required';
    }
    const entry = byField.get(field) ?? { messages: [], allowed: [] };
    if (issue.keyword === 'const') entry.allowed.push(issue.params.allowedValue);
    else if (issue.keyword === 'enum') entry.allowed.push(...(issue.params.allowedValues as unknown[]));
    else if (!entry.messages.includes(message)) entry.messages.push(message);
    byField.set(field, entry);
  }
  const details = [...byField].map(([field, { messages, allowed }]) => ({
    field,
    message: allowed.length
      ? `must be one of ${[...new Set(allowed)].map((v) => JSON.stringify(v)).join(', ')}`
      : messages.join(', or '),
  }));
  const message = details.map((d) => `${d.field} ${d.message}`).join('; ');
  return { message, details };
}

/**
 * The security headers of every answer (hardening.ts sets them with helmet). Listed here for the answers that no
 * hook sees: framework errors below, and helmet's fallback.
 */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': "default-src 'none';frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'strict-transport-security': 'max-age=31536000; includeSubDomains',
  'cache-control': 'no-store',
};

/**
 * Errors Fastify raises before routing (bad percent-encoding, an over-long path parameter) skip the error
 * handler and every hook; this answers them in the same shape, with the same security headers.
 */
export function frameworkError(error: FastifyError, _request: unknown, reply: FastifyReply) {
  reply.headers(SECURITY_HEADERS);
  if (error.code === 'FST_ERR_BAD_URL') {
    return sendError(reply, 400, 'invalid_request', 'path is not valid percent-encoding');
  }
  if (error.code === 'FST_ERR_MAX_PARAM_LENGTH') {
    return sendError(reply, 414, 'uri_too_long', 'path parameter is longer than 256 characters');
  }
  const status =
    error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 400;
  return sendError(reply, status, 'invalid_request', scrubError(error).message);
}

export function installErrorHandling(app: FastifyInstance): void {
  app.setNotFoundHandler((request, reply) =>
    sendError(reply, 404, 'not_found', `No route ${request.method} ${request.url.split('?')[0]}`),
  );

  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error.validation) {
      const { message, details } = describeValidation(
        error.validationContext ?? 'request',
        error.validation as AjvIssue[],
      );
      return sendError(reply, 400, 'invalid_request', message, details);
    }
    if (error instanceof ApiError)
      return sendError(reply, error.status, error.code, error.message, error.details);
    if (error instanceof NotFoundError) return sendError(reply, 404, 'not_found', error.message);
    // Before ConflictError, of which it is a kind: If-Match named a version that is no longer the object's.
    if (error instanceof PreconditionFailedError) return sendError(reply, 412, error.code, error.message);
    if (error instanceof ConflictError) return sendError(reply, 409, error.code, error.message);
    if (error instanceof ForbiddenError) return sendError(reply, 403, 'forbidden', error.message);
    if (error instanceof TooManyRequestsError) {
      reply.header('retry-after', String(error.retryAfterSeconds));
      return sendError(reply, 429, 'too_many_requests', error.message);
    }
    if (error instanceof UnprocessableError || error instanceof StoreNotConfiguredError)
      return sendError(reply, 422, 'unprocessable', error.message);
    if (error instanceof UnavailableError) {
      return sendError(reply, 503, 'unavailable', error.message);
    }
    // The local store is Redis: its outage is Redis's, answered the same way.
    if (
      isRedisUnavailable(error) ||
      (error instanceof StoreUnavailableError && isRedisUnavailable(error.cause))
    ) {
      // No writable master (a failover in progress, Redis restarting): the caller retries. A change cut between its
      // steps is finished by its job or repaired by the reconciler (docs/architecture.md, "Writes across owners").
      request.log.warn({ err: scrubError(error) }, 'redis unavailable');
      reply.header('retry-after', '2');
      return sendError(
        reply,
        503,
        'unavailable',
        'Keyturn cannot reach a writable Redis right now (failover or restart in progress); retry in a few seconds',
      );
    }
    if (error instanceof StoreUnavailableError) {
      request.log.error({ err: scrubError(error) }, 'secret store unavailable');
      reply.header('retry-after', '5');
      return sendError(
        reply,
        503,
        'store_unavailable',
        'The secret store cannot be reached; try again shortly',
      );
    }
    // Fastify's own client errors: bad JSON, body too large, wrong content type, bad URL encoding…
    const status = error.statusCode ?? 500;
    if (status >= 400 && status < 500) {
      if (status === 415) {
        const type = String(request.headers['content-type'] ?? 'none').slice(0, 100);
        return sendError(
          reply,
          415,
          'unsupported_media_type',
          `body content-type "${type}" is not supported: send application/json`,
        );
      }
      const code = status === 413 ? 'payload_too_large' : 'invalid_request';
      return sendError(reply, status, code, scrubError(error).message);
    }
    request.log.error({ err: scrubError(error) }, 'request failed');
    return sendError(
      reply,
      500,
      'internal',
      'Keyturn failed to handle this request; the error is in its log',
    );
  });
}

/** A route that takes no body: none, or an empty JSON object for clients that always send one; 400 otherwise. */
export function requireNoBody(body: unknown, verb: string): void {
  if (
    body !== undefined &&
    body !== null &&
    (typeof body !== 'object' || Array.isArray(body) || Object.keys(body).length > 0)
  ) {
    throw new ApiError(400, 'invalid_request', `body must be empty or {}: ${verb} takes no parameters`);
  }
}
