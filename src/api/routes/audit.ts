// The audit trail for auditors: read it (GET /v1/audit, each sealed event with its place and hashes), check it
// (GET /v1/audit/verify), take it away (GET /v1/audit/export, streamed) and the public key that lets them check
// an export with nothing else (GET /v1/audit/public-key).
import { Readable } from 'node:stream';
import type { FastifyPluginAsync } from 'fastify';
import { csvLines, idRange, jsonlLines } from '../../audit/export.ts';
import { publicKeyPem } from '../../audit/signing.ts';
import { compareStreamIds } from '../../audit/verifier.ts';
import type { ApiContext } from '../context.ts';
import { ApiError } from '../errors.ts';
import { AuditExportQuery, AuditQuerySchema, AuditVerifyQuery } from '../schemas.ts';

/** How long an export waits for the sealer to sign everything appended before it started. */
const SIGN_WAIT_MS = 5000;

function timeRange(q: { since?: string; until?: string }): { since?: Date; until?: Date } {
  const since = q.since ? new Date(q.since) : undefined;
  const until = q.until ? new Date(q.until) : undefined;
  // A format-valid date-time that Date cannot hold (leap second) or before 1970 made XRANGE fail: a 500.
  for (const [field, date] of [
    ['since', since],
    ['until', until],
  ] as const) {
    if (date && !(date.getTime() >= 0)) {
      throw new ApiError(
        400,
        'invalid_request',
        `querystring.${field} must be a date-time from 1970-01-01T00:00:00Z on`,
      );
    }
  }
  if (since && until && since > until) {
    throw new ApiError(400, 'invalid_request', 'querystring.since must not be after querystring.until');
  }
  return { ...(since ? { since } : {}), ...(until ? { until } : {}) };
}

export const auditRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.get<{ Querystring: AuditQuerySchema }>(
    '/v1/audit',
    { schema: { querystring: AuditQuerySchema }, config: { access: 'audit' } },
    async (request) => {
      const q = request.query;
      const { since, until } = timeRange(q);
      const page = await ctx.audit.read({
        limit: q.limit ?? 100,
        ...(q.credential ? { credential: q.credential } : {}),
        ...(q.actor ? { actor: q.actor } : {}),
        ...(q.action ? { action: q.action } : {}),
        ...(since ? { since } : {}),
        ...(until ? { until } : {}),
        ...(q.cursor ? { after: q.cursor } : {}),
      });
      // Sealed events carry their place in the chain; the newest few may not be sealed yet (chain: null).
      const links = await ctx.auditTrail.store.links(page.events.map((e) => e.id));
      return { ...page, events: page.events.map((e) => ({ ...e, chain: links.get(e.id) ?? null })) };
    },
  );

  app.get<{ Querystring: AuditVerifyQuery }>(
    '/v1/audit/verify',
    { schema: { querystring: AuditVerifyQuery }, config: { access: 'audit' } },
    async (request) => {
      if (ctx.auditTrail.publicKeys.length === 0) throw noPublicKey();
      const started = performance.now();
      const { since, until } = timeRange(request.query);
      const result = await ctx.auditTrail.verify(idRange(since, until));
      return { ...result, durationMs: Math.round(performance.now() - started) };
    },
  );

  app.get<{ Querystring: AuditExportQuery }>(
    '/v1/audit/export',
    { schema: { querystring: AuditExportQuery }, config: { access: 'audit' } },
    async (request, reply) => {
      const q = request.query;
      const { since, until } = timeRange(q);
      // Ask for everything up to now to be signed, so the export verifies to its last line; without a running
      // worker it goes out anyway and its verification reports the unsigned tail.
      const signed = await ctx.auditTrail.signUpToNow(SIGN_WAIT_MS);
      const format = q.format ?? 'jsonl';
      const range = idRange(since, until);
      if (signed) {
        // End on that checkpoint: events appended meanwhile (secret reads go on) would be an unsigned tail.
        const checkpoint = (await ctx.auditTrail.store.head()).checkpoint;
        if (checkpoint && (range.end === '+' || compareStreamIds(checkpoint.id, range.end) < 0)) {
          range.end = checkpoint.id;
        }
      }
      const records = ctx.auditTrail.export(
        {
          ...range,
          filter: {
            ...(q.credential ? { credential: q.credential } : {}),
            ...(q.actor ? { actor: q.actor } : {}),
            ...(q.action ? { action: q.action } : {}),
          },
        },
        new Date(),
      );
      const stamp = new Date().toISOString().replaceAll(':', '').slice(0, 15);
      reply
        .header(
          'content-type',
          format === 'csv' ? 'text/csv; charset=utf-8' : 'application/x-ndjson; charset=utf-8',
        )
        .header('content-disposition', `attachment; filename="keyturn-audit-${stamp}.${format}"`)
        .header('keyturn-signed-to-end', String(signed));
      request.log.info({ format, signed }, 'audit export started');
      // Readable.from pulls one record at a time: memory stays flat however long the range.
      return reply.send(Readable.from(format === 'csv' ? csvLines(records) : jsonlLines(records)));
    },
  );

  app.get('/v1/audit/public-key', { config: { access: 'audit' } }, async (_request, reply) => {
    if (ctx.auditTrail.publicKeys.length === 0) throw noPublicKey();
    return reply
      .header('content-type', 'application/x-pem-file')
      .send(publicKeyPem(ctx.auditTrail.publicKeys));
  });
};

function noPublicKey(): ApiError {
  return new ApiError(
    503,
    'unavailable',
    'This API process has no audit public key: set KEYTURN_AUDIT_PUBLIC_KEY_FILE (or the signing key) and restart',
  );
}
