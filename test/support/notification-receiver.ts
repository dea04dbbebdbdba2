// A webhook receiver for Keyturn's notifications: records every request as it arrived (raw body, headers), checks
// its signature with the exported verifier, and answers as a path's script says (statuses per event id, then 200).
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { verifyWebhookSignature } from '../../src/notifications/signature.ts';

export interface Delivery {
  path: string;
  headers: IncomingHttpHeaders;
  raw: string;
  body: any;
  /** The signature verified with the receiver's secret (verifyWebhookSignature, 300 s tolerance). */
  verified: boolean;
  /** What the receiver answered. */
  status: number;
  /** 1 for the first request of this event at this path, 2 for its first retry… */
  attempt: number;
}

export interface ReceiverBehaviour {
  /** Statuses for the first requests of each event id at this path; 200 afterwards. */
  script?: number[];
  /** Answer every request with this status (and a Location header for 3xx). */
  always?: number;
  /** Never answer (the request is recorded with status 0). */
  hang?: boolean;
}

export async function startNotificationReceiver(
  secret: string,
  behaviours: Record<string, ReceiverBehaviour> = {},
) {
  const deliveries: Delivery[] = [];
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    const path = (req.url ?? '').split('?')[0] ?? '';
    const eventId = String(req.headers['keyturn-event-id'] ?? '');
    const attempt =
      deliveries.filter((d) => d.path === path && d.headers['keyturn-event-id'] === eventId).length + 1;
    const behaviour = behaviours[path] ?? {};
    const status = behaviour.hang ? 0 : (behaviour.always ?? behaviour.script?.[attempt - 1] ?? 200);
    let body: unknown;
    try {
      body = JSON.parse(raw);
    } catch {
      body = undefined;
    }
    const verified = verifyWebhookSignature(
      secret,
      req.headers['keyturn-timestamp'] as string | undefined,
      raw,
      req.headers['keyturn-signature'] as string | undefined,
      300,
    );
    deliveries.push({ path, headers: req.headers, raw, body, verified, status, attempt });
    if (behaviour.hang) return;
    if (status >= 300 && status < 400) res.setHeader('location', '/ok');
    res.writeHead(status).end();
  });
  await new Promise<void>((listening) => server.listen(0, '127.0.0.1', listening));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    deliveries,
    close: () => new Promise<void>((closed) => server.close(() => closed()).closeAllConnections()),
  };
}
