// Dual control at the routes (SPEC, "Dual control"): a route whose request is gated calls `approvalGate` once its
// input is validated and its access checked, with the target's policy. Three ways through:
//
//   no header                    → a pending approval is created: 202 {approvalId, status, expiresAt}, nothing runs
//   X-Keyturn-Approval: <id>     → the approval is claimed (used) atomically, or 403/409 naming why not; the operation
//                                  runs, and a refusal of the operation itself (a 4xx) gives the approval back
//   X-Keyturn-Break-Glass: <why> → the operation runs without approval: audited and notified (approval.break_glass)
//
// A request that is not gated (no policy, or nothing the policy covers) runs as it is, and break-glass is then not an
// event (nothing was skipped); an X-Keyturn-Approval sent is always checked, so a used or foreign approval is refused.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ApprovalPolicy } from '../registry/types.ts';
import { type Actor, type GatedRequest, isPersonalRead } from '../service/approvals.ts';
import type { ApiContext } from './context.ts';
import { ApiError } from './errors.ts';

/**
 * The policy that gates a person's read of credential `id` (its secret, or a lease: both hand over a working login);
 * undefined for a service's read (service/approvals.ts, isPersonalRead), which costs no look-up at all.
 */
export async function personalReadPolicy(
  ctx: ApiContext,
  request: FastifyRequest,
  id: string,
): Promise<ApprovalPolicy | undefined> {
  const personal = request.principal !== null && isPersonalRead(request.principal);
  return personal ? (await ctx.registry.findCredential(id))?.spec.approval : undefined;
}

export const APPROVAL_HEADER = 'x-keyturn-approval';
export const BREAK_GLASS_HEADER = 'x-keyturn-break-glass';

/** The gated operation: what it does and to what; the route and the body come from the request. */
export interface GateInput {
  action: string;
  target: GatedRequest['target'];
  /** The target's policy as read for this request; undefined: nothing to gate. */
  policy: ApprovalPolicy | undefined;
}

/** Runs the operation when the gate lets it through, or answers 202 (returns the reply) when it asks for approval. */
export async function approvalGate<T>(
  ctx: ApiContext,
  request: FastifyRequest,
  reply: FastifyReply,
  input: GateInput,
  operation: () => Promise<T>,
): Promise<T | FastifyReply> {
  const policy = input.policy;
  const approvalId = header(request, APPROVAL_HEADER);
  const breakGlass = header(request, BREAK_GLASS_HEADER);
  if (approvalId !== undefined && breakGlass !== undefined) {
    throw new ApiError(
      400,
      'invalid_request',
      `headers.${APPROVAL_HEADER} and headers.${BREAK_GLASS_HEADER} exclude each other: send one`,
    );
  }
  // Not gated: runs as it is. Break-glass then skips nothing (no event); an approval sent is still checked below.
  if (!policy && approvalId === undefined) return operation();
  const principal = request.principal;
  if (!principal) throw new ApiError(401, 'unauthorized', 'not authenticated');
  const who: Actor = { name: principal.name, roles: principal.roles, via: principal.via };
  const gated: GatedRequest = {
    route: `${request.method} ${request.routeOptions.url ?? ''}`,
    action: input.action,
    target: input.target,
    body: request.body,
  };
  if (approvalId !== undefined) return claimed(ctx, request, approvalId, gated, who, policy, operation);
  if (!policy) return operation();
  if (breakGlass !== undefined) {
    await ctx.approvals.breakGlass(gated, who, breakGlass.trim(), policy);
    request.log.warn(
      { principal: principal.name, route: gated.route, target: `${input.target.kind}:${input.target.id}` },
      'dual control skipped with break-glass',
    );
    return operation();
  }
  const pending = await ctx.approvals.request(gated, who, policy);
  return reply.code(202).header('location', `/v1/approvals/${pending.approvalId}`).send(pending);
}

/**
 * The repeat of a gated request: the approval is claimed (used) first, checked against the target's policy as it is
 * now (none: refused, as asked under another policy), then the operation runs; a refusal of the operation (a 4xx)
 * gives the approval back.
 */
async function claimed<T>(
  ctx: ApiContext,
  request: FastifyRequest,
  approvalId: string,
  gated: GatedRequest,
  who: Actor,
  policy: ApprovalPolicy | undefined,
  operation: () => Promise<T>,
): Promise<T> {
  const approval = await ctx.approvals.claim(approvalId.toLowerCase(), gated, who, policy);
  let result: T;
  try {
    result = await operation();
  } catch (err) {
    const status = statusOf(err);
    await ctx.approvals
      .settle(approval, {
        ok: false,
        refused: status >= 400 && status < 500,
        reason: err instanceof Error ? err.message.slice(0, 300) : 'failed',
      })
      .catch((e) => request.log.error({ err: e }, 'could not settle an approval'));
    throw err;
  }
  await ctx.approvals
    .settle(approval, { ok: true })
    .catch((e) => request.log.error({ err: e }, 'could not settle an approval'));
  return result;
}

function header(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** The HTTP status an error of the operation becomes (api/errors.ts), to tell a refusal from a failure. */
function statusOf(err: unknown): number {
  if (err instanceof ApiError) return err.status;
  const name = err instanceof Error ? err.name : '';
  switch (name) {
    case 'NotFoundError':
      return 404;
    case 'ConflictError':
      return 409;
    case 'ForbiddenError':
      return 403;
    case 'UnprocessableError':
      return 422;
    case 'TooManyRequestsError':
      return 429;
    default:
      return 500;
  }
}
