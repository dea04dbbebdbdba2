// GET /v1/events: server-sent events for services that reload their connection pool when their credential rotates
// (SPEC). The stream itself is src/events/event-hub.ts; this is the HTTP side: access, input, headers, lifetime.
import type { OutgoingHttpHeaders } from 'node:http';
import type { FastifyPluginAsync, FastifyReply } from 'fastify';
import type { ApiContext } from '../context.ts';
import { ApiError, SECURITY_HEADERS } from '../errors.ts';
import { EventsHeaders, EventsQuery } from '../schemas.ts';

/** Seconds a client turned away for capacity is asked to wait (another replica may have room sooner). */
const FULL_RETRY_AFTER_S = 5;

/**
 * The stream's headers. A hijacked reply skips the onSend hooks, so what they would add is set here: helmet's
 * headers are already on the raw response (it writes them in onRequest), CORS and rate-limit headers are on the
 * reply; SECURITY_HEADERS fill in whatever is still missing, as hardening's onSend fallback does.
 */
function streamHeaders(reply: FastifyReply): OutgoingHttpHeaders {
  const headers: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(reply.getHeaders())) {
    if (value !== undefined) headers[name] = typeof value === 'number' ? String(value) : value;
  }
  for (const [name, value] of Object.entries(SECURITY_HEADERS)) headers[name] ??= value;
  return {
    ...headers,
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    // nginx (and ingress-nginx) would otherwise hold events back in its buffer.
    'x-accel-buffering': 'no',
    // The connection carries this one stream; when it ends the socket goes, so closing the server never waits
    // on a keep-alive connection.
    connection: 'close',
  };
}

export const eventRoutes: FastifyPluginAsync<{ ctx: ApiContext }> = async (app, { ctx }) => {
  const hub = ctx.events;
  // Open streams would keep the server from closing: end them first, then stop the follower.
  app.addHook('preClose', (done) => {
    hub.endStreams();
    done();
  });
  app.addHook('onClose', async () => {
    await hub.close();
  });

  app.get<{ Querystring: EventsQuery; Headers: EventsHeaders }>(
    '/v1/events',
    {
      schema: {
        summary:
          'Server-sent events (text/event-stream): `rotation` for each finished rotation of the credentials the caller may see',
        querystring: EventsQuery,
        headers: EventsHeaders,
      },
      config: { access: 'events' },
    },
    async (request, reply) => {
      await hub.ready();
      // No await from here to hijack: the subscriber starts exactly where the follower stands.
      const subscriber = hub.subscribe({
        principal: request.principal as NonNullable<typeof request.principal>,
        ...(request.query.credential === undefined ? {} : { credential: request.query.credential }),
        steps: request.query.steps === true,
        res: reply.raw,
      });
      if (!subscriber) {
        reply.header('retry-after', String(FULL_RETRY_AFTER_S));
        throw new ApiError(
          503,
          'unavailable',
          `This Keyturn process already serves ${hub.settings.maxClients} event streams (KEYTURN_EVENTS_MAX_CLIENTS); retry in ${FULL_RETRY_AFTER_S} seconds`,
        );
      }
      reply.hijack();
      // The client left while the follower started: nothing to write to.
      if (subscriber.ended) return;
      reply.raw.writeHead(200, streamHeaders(reply));
      // The server's idle timeout is for requests; a stream is kept busy by its heartbeat, and one whose writes
      // stall (a peer that vanished without closing) times out after a few missed heartbeats.
      request.raw.socket.setTimeout(Math.max(30_000, 3 * hub.settings.heartbeatMs));
      const started = Date.now();
      request.log.info(
        { principal: request.principal?.name, credential: request.query.credential ?? null },
        'event stream opened',
      );
      reply.raw.once('close', () =>
        request.log.info(
          {
            principal: request.principal?.name,
            events: subscriber.sent,
            reason: subscriber.endReason ?? 'client disconnected',
            durationMs: Date.now() - started,
          },
          'event stream closed',
        ),
      );
      await subscriber.start(request.headers['last-event-id']);
    },
  );
};
