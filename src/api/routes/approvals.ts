// Dual control's approvals (SPEC, "Dual control"): list, show, approve, deny. Every role may call these routes; each
// principal sees and decides only what the service lets it (service/approvals.ts): admins and auditors see every
// approval, others those they requested or may decide; nobody decides their own.
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import type { ApprovalCursor } from '../../registry/approvals.ts';
import type { Actor } from '../../service/approvals.ts';
import type { ApiContext } from '../context.ts';
import { ApiError } from '../errors.ts';
import { ApprovalsQuery, DecisionBody, UuidParams } from '../schemas.ts';
import { approvalView } from '../views.ts';

function actor(request: FastifyRequest): Actor {
  const p = request.principal;
  if (!p) throw new ApiError(401, 'unauthorized', 'not authenticated');
  return { name: p.name, roles: p.roles, via: p.via };
}

/** A list cursor: base64url of "<ms>:<id>", opaque to clients. */
function encodeCursor(at: ApprovalCursor): string {
  return Buffer.from(`${at.at}:${at.id}`, 'utf8').toString('base64url');
}

function decodeCursor(cursor: string): ApprovalCursor {
  const text = /^[A-Za-z0-9_-]+$/.test(cursor) ? Buffer.from(cursor, 'base64url').toString('utf8') : '';
  const m = /^(\d{1,15}):([0-9a-f-]{36})$/.exec(text);
  if (!m) {
    throw new ApiError(
      400,
      'invalid_request',
      'querystring.cursor is not a cursor this API returned: pass the `next` of the previous page as it came',
    );
  }
  return { at: Number(m[1]), id: m[2] as string };
}

export const approvalRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.get<{ Querystring: ApprovalsQuery }>(
    '/v1/approvals',
    { schema: { querystring: ApprovalsQuery }, config: { access: 'approvals' } },
    async (request) => {
      const { status, limit = 100, cursor } = request.query;
      const page = await ctx.approvals.list(actor(request), {
        ...(status ? { status } : {}),
        limit,
        ...(cursor !== undefined ? { cursor: decodeCursor(cursor) } : {}),
      });
      return {
        approvals: page.approvals.map(approvalView),
        next: page.next ? encodeCursor(page.next) : null,
      };
    },
  );

  app.get<{ Params: { id: string } }>(
    '/v1/approvals/:id',
    { schema: { params: UuidParams }, config: { access: 'approvals' } },
    async (request) => approvalView(await ctx.approvals.get(request.params.id.toLowerCase(), actor(request))),
  );

  for (const decision of ['approve', 'deny'] as const) {
    app.post<{ Params: { id: string }; Body: DecisionBody }>(
      `/v1/approvals/:id/${decision}`,
      { schema: { params: UuidParams, body: DecisionBody }, config: { access: 'approvals' } },
      async (request) =>
        approvalView(
          await ctx.approvals.decide(
            request.params.id.toLowerCase(),
            actor(request),
            decision,
            request.body.reason.trim(),
          ),
        ),
    );
  }
};
