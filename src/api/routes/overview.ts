// What the web console (/ui) needs beyond the other routes, read-only: who the caller is (GET /v1/me), so that the
// page offers only what the caller's roles allow (the API still decides every request), and the overview
// (GET /v1/overview): credentials by state, rotations per day, the next rotations due, for the credentials the
// caller may see.
import type { FastifyPluginAsync } from 'fastify';
import { mayList } from '../../auth/principal.ts';
import { DAY_MS } from '../../compliance/policy.ts';
import type { ComplianceRow } from '../../compliance/report.ts';
import type { ApiContext } from '../context.ts';
import { OverviewQuery } from '../schemas.ts';

/** Rotations read per credential for the chart: 90 days of a daily schedule with retries fit well within it. */
const ROTATIONS_PER_CREDENTIAL = 500;
/** Credentials whose rotations are read at once. */
const PARALLEL_READS = 50;
/** How many of the next rotations due the overview lists. */
const NEXT_DUE = 10;

const utcDay = (ms: number) => new Date(ms).toISOString().slice(0, 10);

export const overviewRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.get(
    '/v1/me',
    {
      schema: {
        summary: 'The calling principal: its name, roles and (a reader) what it is bound to',
        tags: ['console'],
      },
      config: { access: 'self' },
    },
    async (request) => {
      const p = request.principal!;
      return {
        name: p.name,
        roles: p.roles,
        via: p.via,
        credentials: p.credentials ?? null,
        labels: p.labels ?? null,
      };
    },
  );

  app.get<{ Querystring: OverviewQuery }>(
    '/v1/overview',
    {
      schema: {
        summary:
          'Credentials by state, rotations per UTC day (succeeded and failed) and the next rotations due, over the credentials the caller may see',
        tags: ['console'],
        querystring: OverviewQuery,
      },
      config: { access: 'credential-list' },
    },
    async (request) => {
      const principal = request.principal!;
      const days = request.query.days ?? 30;
      const { asOf, batches } = ctx.compliance.stream();
      const now = Date.parse(asOf);
      // Today and the days before it: `days` buckets, oldest first.
      const firstDay = Date.parse(`${utcDay(now - (days - 1) * DAY_MS)}T00:00:00.000Z`);
      const perDay = new Map<string, { succeeded: number; failed: number }>();
      for (let d = 0; d < days; d++) perDay.set(utcDay(firstDay + d * DAY_MS), { succeeded: 0, failed: 0 });
      const counts = { total: 0, active: 0, rotating: 0, failed: 0, pending: 0, overdue: 0, paused: 0 };
      const due: ComplianceRow[] = [];

      const countRotations = async (id: string) => {
        // Only the window's rotations are read (by creation time, from a day before it: one that started before the
        // window and ended inside it still counts, by its finishedAt below).
        const rotations = await ctx.rotations.listForCredential(
          id,
          ROTATIONS_PER_CREDENTIAL,
          undefined,
          firstDay - DAY_MS,
        );
        for (const r of rotations) {
          if (!r.finishedAt || (r.status !== 'succeeded' && r.status !== 'failed')) continue;
          const bucket = perDay.get(utcDay(Date.parse(r.finishedAt)));
          if (bucket) bucket[r.status]++;
        }
      };

      for await (const batch of batches) {
        const visible = batch.filter((row) => mayList(principal, { id: row.id, labels: row.labels }));
        for (const row of visible) {
          counts.total++;
          counts[row.status]++;
          if (row.overdue) counts.overdue++;
          if (row.paused) counts.paused++;
          if (!row.paused && row.nextRotationAt) {
            due.push(row);
            due.sort((a, b) => Date.parse(a.nextRotationAt!) - Date.parse(b.nextRotationAt!));
            if (due.length > NEXT_DUE) due.pop();
          }
        }
        for (let i = 0; i < visible.length; i += PARALLEL_READS) {
          await Promise.all(visible.slice(i, i + PARALLEL_READS).map((row) => countRotations(row.id)));
        }
      }
      return {
        asOf,
        days,
        credentials: counts,
        rotationsPerDay: [...perDay].map(([day, c]) => ({ day, ...c })),
        nextDue: due.map((row) => ({
          id: row.id,
          nextRotationAt: row.nextRotationAt,
          status: row.status,
          overdue: row.overdue,
        })),
      };
    },
  );
};
