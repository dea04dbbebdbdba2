// Free loopback ports for the servers tests start (slapd, redis-server, sentinels, PostgreSQL clusters, API
// processes) and for addresses where nothing listens: bound on 127.0.0.1, then closed, so the port was free a moment
// ago. A server started on it may still lose it to another process; the starters retry or fail with the reason.
import { createServer } from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address !== null && typeof address === 'object') resolve(address.port);
        else reject(new Error('could not read the port of a socket bound to 127.0.0.1:0'));
      });
    });
  });
}
