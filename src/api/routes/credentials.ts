import type { FastifyPluginAsync } from 'fastify';
import { mayList } from '../../auth/principal.ts';
import { isOverdue } from '../../compliance/policy.ts';
import { parseDuration } from '../../config/duration.ts';
import { NotFoundError } from '../../registry/errors.ts';
import type { CredentialCursor } from '../../registry/registry.ts';
import type { Credential } from '../../registry/types.ts';
import { weakens } from '../../service/approvals.ts';
import { etagOf } from '../../service/etag.ts';
import { approvalGate, personalReadPolicy } from '../approval-gate.ts';
import { actorOf, requesterOf } from '../auth.ts';
import type { ApiContext } from '../context.ts';
import { ApiError, requireNoBody } from '../errors.ts';
import {
  CreateCredentialBody,
  GatedHeaders,
  IdParams,
  ListCredentialsQuery,
  PatchCredentialBody,
  RotateQuery,
  RotationsQuery,
  UuidParams,
  WriteHeaders,
} from '../schemas.ts';
import { credentialView } from '../views.ts';
import { ifMatchOf } from './connections.ts';

/** A duration parseDuration refuses (over 3650 days) is a 400 naming its field. */
function checkDurations(body: { schedule?: object; gracePeriod?: string | null }): void {
  // The service parses gracePeriod and schedule.every outside its checks: "4000d" there was a RangeError, a 500.
  const schedule = (body.schedule ?? {}) as Record<string, unknown>;
  const fields: [string, unknown][] = [
    ['body.schedule.every', schedule.every],
    ['body.schedule.window', schedule.window],
    ['body.schedule.jitter', schedule.jitter],
    ['body.gracePeriod', body.gracePeriod],
  ];
  for (const [field, text] of fields) {
    if (typeof text !== 'string') continue;
    try {
      parseDuration(text);
    } catch (err) {
      throw new ApiError(400, 'invalid_request', `${field}: ${(err as Error).message}`);
    }
  }
}

/** Credentials per page of GET /v1/credentials unless `limit` says otherwise, and index entries one page may read. */
const LIST_DEFAULT_LIMIT = 100;
const LIST_SCAN_BUDGET = 5000;

/** A list cursor: the place of the last credential of a page, opaque to clients (base64url of "<ms>:<id>"). */
function encodeListCursor(at: CredentialCursor): string {
  return Buffer.from(`${at.at}:${at.id}`, 'utf8').toString('base64url');
}

function decodeListCursor(cursor: string): CredentialCursor {
  const text = /^[A-Za-z0-9_-]+$/.test(cursor) ? Buffer.from(cursor, 'base64url').toString('utf8') : '';
  const m = /^(\d{1,15}):(.{1,200})$/s.exec(text);
  if (!m)
    throw new ApiError(
      400,
      'invalid_request',
      'querystring.cursor is not a cursor this API returned: pass the `next` of the previous page as it came, or leave it out to start from the beginning',
    );
  return { at: Number(m[1]), id: m[2]! };
}

const rotationSummary = (r: { id: string; status: string; step: string }) => ({
  id: r.id,
  status: r.status,
  step: r.step,
});

export const credentialRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.post<{ Body: CreateCredentialBody }>(
    '/v1/credentials',
    { schema: { body: CreateCredentialBody }, config: { access: 'manage' } },
    async (request, reply) => {
      checkDurations(request.body);
      const { credential, rotation } = await ctx.service.createCredential(request.body, requesterOf(request));
      return reply
        .code(201)
        .header('location', `/v1/credentials/${credential.spec.id}`)
        .header('etag', etagOf(credential.spec))
        .send({
          ...credentialView(credential, ctx.clock.now()),
          rotation: rotation ? rotationSummary(rotation) : null,
        });
    },
  );

  app.get<{ Querystring: ListCredentialsQuery }>(
    '/v1/credentials',
    { schema: { querystring: ListCredentialsQuery }, config: { access: 'credential-list' } },
    async (request) => {
      const { label, status, overdue, limit = LIST_DEFAULT_LIMIT, cursor } = request.query;
      const [labelKey, labelValue] = label ? label.split(/[:=](.*)/s) : [];
      const now = ctx.clock.now();
      // A reader's list is the credentials bound to it (the console shows a reader what it may use, nothing else).
      const principal = request.principal!;
      const onlyBound = principal.roles.every((role) => role === 'reader');
      const wanted = (c: Credential) =>
        mayList(principal, { id: c.spec.id, labels: c.spec.labels }) &&
        (!status || c.state.status === status) &&
        (overdue === undefined || isOverdue(c, now) === overdue) &&
        (!labelKey || c.spec.labels[labelKey] === labelValue);
      // A page reads the index from the cursor on, `limit` entries at a time, until it has `limit` matches or has
      // looked at LIST_SCAN_BUDGET entries: a filter that matches little answers a short (even empty) page with a
      // `next` rather than reading the whole fleet in one request. `next` is null at the end of the list.
      let after = cursor === undefined ? undefined : decodeListCursor(cursor);
      const credentials: Credential[] = [];
      let scanned = 0;
      let ended = false;
      while (credentials.length < limit && scanned < LIST_SCAN_BUDGET) {
        // Unfiltered, a page's worth; filtered, at least 500 at a time, since most of what is read is left out.
        const chunk = status || overdue !== undefined || labelKey || onlyBound ? Math.max(limit, 500) : limit;
        const ids = await ctx.registry.credentialIds(chunk, after);
        const records = new Map(
          (await ctx.registry.credentialsOf(ids.map((e) => e.id))).map((c) => [c.spec.id, c]),
        );
        let taken = 0;
        for (const entry of ids) {
          if (credentials.length === limit) break;
          after = entry;
          taken++;
          const c = records.get(entry.id);
          if (c && wanted(c)) credentials.push(c);
        }
        scanned += taken;
        // Fewer entries than asked for, all of them taken: the index ends here.
        if (ids.length < chunk && taken === ids.length) {
          ended = true;
          break;
        }
      }
      return {
        credentials: credentials.map((c) => credentialView(c, now)),
        next: ended || !after ? null : encodeListCursor(after),
      };
    },
  );

  app.get<{ Params: IdParams }>(
    '/v1/credentials/:id',
    { schema: { params: IdParams }, config: { access: 'credential-view' } },
    async (request, reply) => {
      const credential = await ctx.registry.getCredential(request.params.id);
      const inflight = await ctx.rotations.inflight(credential.spec.id);
      // The version a PATCH or DELETE may name in If-Match (optimistic concurrency, `keyturn apply`).
      reply.header('etag', etagOf(credential.spec));
      return {
        ...credentialView(credential, ctx.clock.now()),
        rotation: inflight ? rotationSummary(inflight) : null,
      };
    },
  );

  app.patch<{ Params: IdParams; Body: PatchCredentialBody }>(
    '/v1/credentials/:id',
    {
      schema: { params: IdParams, body: PatchCredentialBody, headers: WriteHeaders },
      config: { access: 'manage' },
    },
    async (request, reply) => {
      checkDurations(request.body);
      const id = request.params.id;
      const patch = request.body;
      // Removing or weakening dual control is itself gated by the policy in force (or an operator removes it first);
      // so is a change of where the secret is pushed (sync: a Kubernetes Secret its author may read is a secret read).
      const judged =
        patch.approval !== undefined || patch.sync !== undefined
          ? (await ctx.registry.findCredential(id))?.spec.approval
          : undefined;
      const gated = weakens(judged, patch.approval) || patch.sync !== undefined;
      return approvalGate(
        ctx,
        request,
        reply,
        {
          action: patch.sync !== undefined ? 'sync change' : 'approval change',
          target: { kind: 'credential', id },
          policy: gated ? judged : undefined,
        },
        async () => {
          const credential = await ctx.service.updateCredential(
            id,
            patch,
            requesterOf(request),
            patch.approval !== undefined ? { judged } : undefined,
            { ifMatch: ifMatchOf(request.headers) },
          );
          reply.header('etag', etagOf(credential.spec));
          return credentialView(credential, ctx.clock.now());
        },
      );
    },
  );

  app.delete<{ Params: IdParams }>(
    '/v1/credentials/:id',
    { schema: { params: IdParams, headers: WriteHeaders }, config: { access: 'manage' } },
    async (request, reply) => {
      const id = request.params.id;
      const policy = (await ctx.registry.findCredential(id))?.spec.approval;
      return approvalGate(
        ctx,
        request,
        reply,
        { action: 'delete', target: { kind: 'credential', id }, policy },
        async () => {
          await ctx.service.deleteCredential(id, actorOf(request), { ifMatch: ifMatchOf(request.headers) });
          return reply.code(204).send();
        },
      );
    },
  );

  app.post<{ Params: IdParams; Querystring: { dryRun?: boolean } }>(
    '/v1/credentials/:id/rotate',
    { schema: { params: IdParams, querystring: RotateQuery }, config: { access: 'manage' } },
    async (request, reply) => {
      requireNoBody(request.body, 'rotate');
      // A dry run checks what the rotation needs and changes nothing: 200 with the checks, whatever they say.
      if (request.query.dryRun) return ctx.service.dryRun(request.params.id, actorOf(request));
      const result = await ctx.engine.request(request.params.id, 'manual', actorOf(request));
      if (!result) throw new NotFoundError(`Credential "${request.params.id}" does not exist`);
      const { rotation, created } = result;
      return reply
        .code(202)
        .header('location', `/v1/rotations/${rotation.id}`)
        .send({ rotationId: rotation.id, status: rotation.status, step: rotation.step, created });
    },
  );

  app.get<{ Params: IdParams; Querystring: { limit?: number; before?: number } }>(
    '/v1/credentials/:id/rotations',
    { schema: { params: IdParams, querystring: RotationsQuery }, config: { access: 'credential-view' } },
    async (request) => {
      await ctx.registry.getCredential(request.params.id);
      const limit = request.query.limit ?? 50;
      const rotations = await ctx.rotations.listForCredential(request.params.id, limit, request.query.before);
      const last = rotations.at(-1);
      return {
        rotations,
        next: rotations.length === limit && last ? Date.parse(last.createdAt) : null,
      };
    },
  );

  app.get<{ Params: { id: string } }>(
    '/v1/rotations/:id',
    { schema: { params: UuidParams }, config: { access: 'rotation-view' } },
    async (request) => {
      const rotation = await ctx.rotations.find(request.params.id);
      if (!rotation) throw new NotFoundError(`Rotation "${request.params.id}" does not exist`);
      return rotation;
    },
  );

  // The read, its audit event and its cache hint are the reader's (rotation/secret-reader.ts): the route only
  // names the reader and turns the result into HTTP.
  app.get<{ Params: IdParams }>(
    '/v1/credentials/:id/secret',
    { schema: { params: IdParams, headers: GatedHeaders }, config: { access: 'credential-secret' } },
    async (request, reply) => {
      const id = request.params.id;
      // Dual control gates a person's read; a service's read (a reader) costs nothing more than before.
      const policy = await personalReadPolicy(ctx, request, id);
      return approvalGate(
        ctx,
        request,
        reply,
        { action: 'secret read', target: { kind: 'credential', id }, policy },
        async () => {
          const read = await ctx.secrets.read(id, actorOf(request));
          if (!read.found)
            return reply.code(409).send({ error: { code: 'no_secret_yet', message: read.message } });
          return reply.header('cache-control', `private, max-age=${read.maxAgeSeconds}`).send(read.answer);
        },
      );
    },
  );
};
