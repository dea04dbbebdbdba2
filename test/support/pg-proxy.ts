// A TCP proxy in front of the real password-checking PostgreSQL, for tests that must act at the moment a statement
// reaches the server: each statement a client sends (simple Query 'Q' or extended Parse 'P', after the startup and
// password exchange) is held until `onStatement` resolves, then forwarded. Everything else passes through untouched.
// Loopback only, no TLS (the test cluster runs with ssl = off and connections default to tls "disable").
import { createConnection, createServer, type Server, type Socket } from 'node:net';

export interface PgProxy {
  port: number;
  /** Every statement text that went through, in order. */
  readonly statements: string[];
  /** Called with each statement before the server gets it; the server gets it when the promise resolves. */
  onStatement: ((sql: string) => Promise<void>) | undefined;
  close(): Promise<void>;
}

export async function startPgProxy(target: { host: string; port: number }): Promise<PgProxy> {
  const sockets = new Set<Socket>();
  const proxy: PgProxy = {
    port: 0,
    statements: [],
    onStatement: undefined,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((done) => server.close(() => done()));
    },
  };
  const server: Server = createServer((client) => {
    const upstream = createConnection({ host: target.host, port: target.port });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    upstream.on('data', (chunk) => client.write(chunk));
    upstream.on('end', () => client.end());
    client.on('end', () => upstream.end());
    let buffer = Buffer.alloc(0);
    let started = false;
    // Messages are forwarded in order: a statement held by the hook holds everything after it too.
    let queue: Promise<void> = Promise.resolve();
    client.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        if (!started) {
          if (buffer.length < 8) return;
          const length = buffer.readInt32BE(0);
          if (buffer.length < length) return;
          const message = buffer.subarray(0, length);
          buffer = buffer.subarray(length);
          started = true;
          queue = queue.then(() => void upstream.write(message));
          continue;
        }
        if (buffer.length < 5) return;
        const length = buffer.readInt32BE(1);
        if (buffer.length < length + 1) return;
        const message = buffer.subarray(0, length + 1);
        const type = String.fromCharCode(message[0] as number);
        buffer = buffer.subarray(length + 1);
        if (type === 'Q' || type === 'P') {
          const body = message.subarray(5).toString('utf8');
          // Parse: a statement name (NUL-terminated) comes before the text.
          const sql = (type === 'P' ? body.slice(body.indexOf('\0') + 1) : body).split('\0')[0] ?? '';
          queue = queue.then(async () => {
            proxy.statements.push(sql);
            await proxy.onStatement?.(sql);
            upstream.write(message);
          });
        } else {
          queue = queue.then(() => void upstream.write(message));
        }
      }
    });
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  proxy.port = (server.address() as { port: number }).port;
  return proxy;
}
