// GET /v1/compliance: the compliance report (compliance/report.ts) as JSON, or as CSV with ?format=csv or
// `Accept: text/csv` (?format wins over Accept). The CSV holds the rows only, each with the report's asOf; the
// totals are in the JSON form, since a totals line inside a CSV breaks the readers that auditors load it into.
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { complianceCsv } from '../../compliance/report.ts';
import type { ApiContext } from '../context.ts';
import { ComplianceQuery } from '../schemas.ts';

/** CSV when the query says so, or when Accept prefers text/csv to JSON; JSON otherwise. */
function wantsCsv(request: FastifyRequest<{ Querystring: ComplianceQuery }>): boolean {
  if (request.query.format) return request.query.format === 'csv';
  let csv = 0;
  let json = 0;
  for (const part of String(request.headers.accept ?? '').split(',')) {
    const [type = '', ...params] = part.split(';').map((p) => p.trim().toLowerCase());
    const qParam = params.find((p) => p.startsWith('q='));
    const q = qParam ? Number(qParam.slice(2)) : 1;
    if (!Number.isFinite(q)) continue;
    if (type === 'text/csv') csv = Math.max(csv, q);
    else if (type === 'application/json' || type === 'application/*' || type === '*/*')
      json = Math.max(json, q);
  }
  return csv > json;
}

export const complianceRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.get<{ Querystring: ComplianceQuery }>(
    '/v1/compliance',
    { schema: { querystring: ComplianceQuery }, config: { access: 'audit' } },
    async (request, reply) => {
      const { label, overdue } = request.query;
      const [key, value] = label ? label.split(/[:=](.*)/s) : [];
      const report = await ctx.compliance.build({
        ...(key !== undefined && value !== undefined ? { label: { key, value } } : {}),
        ...(overdue !== undefined ? { overdue } : {}),
      });
      reply.header('vary', 'accept');
      if (!wantsCsv(request)) return report;
      const stamp = report.asOf.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
      return reply
        .type('text/csv; charset=utf-8; header=present')
        .header('content-disposition', `attachment; filename="keyturn-compliance-${stamp}.csv"`)
        .send(complianceCsv(report));
    },
  );
};
