// GET /v1/compliance: the compliance report (compliance/report.ts) as JSON, or as CSV with ?format=csv or
// `Accept: text/csv` (?format wins over Accept). The CSV holds the rows only, each with the report's asOf; the
// totals are in the JSON form, since a totals line inside a CSV breaks the readers that auditors load it into. Both
// are streamed as the registry is read, so the JSON form's totals come after its rows.

import { Readable } from 'node:stream';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import {
  type AdminRow,
  type ComplianceRow,
  complianceCsvHeader,
  complianceCsvRow,
  TotalsCounter,
} from '../../compliance/report.ts';
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

/** Reads the first item of `source` now; the iterable it returns yields it and then the rest. */
async function startedEarly<T>(source: AsyncGenerator<T>): Promise<AsyncIterable<T>> {
  const first = await source.next();
  return (async function* () {
    if (first.done) return;
    yield first.value;
    yield* source;
  })();
}

async function* jsonReport(
  asOf: string,
  batches: AsyncIterable<ComplianceRow[]>,
  admins: AdminRow[],
): AsyncGenerator<string> {
  yield `{"asOf":${JSON.stringify(asOf)},"credentials":[`;
  const totals = new TotalsCounter();
  let first = true;
  for await (const batch of batches) {
    const parts: string[] = [];
    for (const row of batch) {
      totals.add(row);
      parts.push(JSON.stringify(row));
    }
    yield `${first ? '' : ','}${parts.join(',')}`;
    first = false;
  }
  yield `],"totals":${JSON.stringify(totals.totals())},"admins":${JSON.stringify(admins)}}`;
}

async function* csvReport(asOf: string, batches: AsyncIterable<ComplianceRow[]>): AsyncGenerator<string> {
  yield complianceCsvHeader();
  for await (const batch of batches) yield batch.map((row) => complianceCsvRow(row, asOf)).join('');
}

export const complianceRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.get<{ Querystring: ComplianceQuery }>(
    '/v1/compliance',
    { schema: { querystring: ComplianceQuery }, config: { access: 'audit' } },
    async (request, reply) => {
      const { label, overdue } = request.query;
      const [key, value] = label ? label.split(/[:=](.*)/s) : [];
      const filter = {
        ...(key !== undefined && value !== undefined ? { label: { key, value } } : {}),
        ...(overdue !== undefined ? { overdue } : {}),
      };
      const { asOf, batches: rest } = ctx.compliance.stream(filter);
      // The first batch before the answer starts: a registry that cannot be read now is a 503 as before, not a 200 cut
      // short. One that fails later cuts the stream short, which a client sees as invalid JSON or a CSV without end.
      const batches = await startedEarly(rest);
      reply.header('vary', 'accept');
      // Streamed a batch of rows at a time (issue 14: 100,000 credentials in bounded memory). The JSON form's totals
      // follow its rows, counted as they went by.
      if (!wantsCsv(request)) {
        // The connections' admin passwords: one row per connection, read before the answer starts (there are few).
        const admins = await ctx.compliance.admins(filter);
        return reply
          .type('application/json; charset=utf-8')
          .send(Readable.from(jsonReport(asOf, batches, admins)));
      }
      const stamp = asOf.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
      return reply
        .type('text/csv; charset=utf-8; header=present')
        .header('content-disposition', `attachment; filename="keyturn-compliance-${stamp}.csv"`)
        .send(Readable.from(csvReport(asOf, batches)));
    },
  );
};
