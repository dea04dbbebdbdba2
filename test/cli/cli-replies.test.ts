// Finding 12 of issue 11: the CLI printed a stack trace on a reply that was not JSON (an HTML error page from a proxy,
// a 501). It now checks the status first and prints one line saying what answered and what to check.
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const BIN = fileURLToPath(new URL('../../bin/keyturn.js', import.meta.url));
let server: Server;
let url: string;

const REPLIES: Record<string, { status: number; type: string; body: string }> = {
  '/html502': {
    status: 502,
    type: 'text/html',
    body: '<html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>',
  },
  '/text501': { status: 501, type: 'text/plain', body: 'Not Implemented' },
  '/html200': {
    status: 200,
    type: 'text/html',
    body: '<html><body>Welcome to our portal</body></html>',
  },
  '/json404': {
    status: 404,
    type: 'application/json',
    body: JSON.stringify({ error: { code: 'not_found', message: 'No route GET /v1/credentials' } }),
  },
};

beforeAll(async () => {
  server = createServer((req, res) => {
    // The first path segment picks the reply, whatever the CLI asks for below it.
    const reply = REPLIES[`/${(req.url ?? '').split('/')[1] ?? ''}`] ?? {
      status: 404,
      type: 'text/plain',
      body: 'nope',
    };
    res.writeHead(reply.status, { 'content-type': reply.type });
    res.end(reply.body);
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((done) => server?.close(done));
});

/** Runs the real CLI (asynchronously: the fake server answers from this process). */
function cli(
  base: string,
  env: Record<string, string> = {},
  args: string[] = ['credentials', 'list'],
): Promise<{ code: number | null; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, '--url', `${url}${base}`, ...args], {
      env: { ...process.env, KEYTURN_TOKEN: 'test-token-not-a-secret', KEYTURN_DEBUG: '', ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('finding 12: the CLI on a reply that is not Keyturn JSON', () => {
  for (const [base, what] of [
    [
      '/html502',
      /answered 502 .*text\/html body of \d+ bytes, not an answer from Keyturn: check KEYTURN_URL/,
    ],
    ['/text501', /answered 501 .*text\/plain body of 15 bytes, not an answer from Keyturn/],
    ['/html200', /answered 200 with a text\/html body of \d+ bytes, not Keyturn's JSON: check KEYTURN_URL/],
  ] as const) {
    it(`prints one line, no stack trace (${base.slice(1)})`, async () => {
      const run = await cli(base);
      expect(run.code).toBe(1);
      expect(run.stdout).toBe('');
      const lines = run.stderr.trim().split('\n');
      expect(lines, run.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/^keyturn: GET http:\/\/127\.0\.0\.1:\d+\/\S+\/v1\/credentials/);
      expect(lines[0]).toMatch(what);
      expect(run.stderr).not.toMatch(/\n\s+at /);
      // The body itself never reaches the terminal: it could hold anything.
      expect(run.stderr).not.toContain('<html>');
    });
  }

  it("still prints Keyturn's own message for a Keyturn error", async () => {
    const run = await cli('/json404');
    // Issue 18: the route first, then the API's message, the HTTP status and the error's code.
    expect(run.stderr.trim()).toBe(
      'keyturn: GET /v1/credentials: No route GET /v1/credentials (HTTP 404, not_found)',
    );
  });

  for (const [args, what] of [
    [['audit', 'export'], /not Keyturn's audit export \(JSON lines or CSV\): check KEYTURN_URL/],
    [['audit', 'public-key'], /not Keyturn's public key \(PEM\): check KEYTURN_URL/],
  ] as const) {
    it(`refuses a 200 page that is not what Keyturn streams (${args.join(' ')}), and writes none of it`, async () => {
      const run = await cli('/html200', {}, [...args]);
      expect(run.code).toBe(1);
      expect(run.stdout).toBe('');
      const lines = run.stderr.replace(/\r/g, '\n').trim().split('\n').filter(Boolean);
      expect(lines.at(-1)).toMatch(
        /^keyturn: GET http:\/\/127\.0\.0\.1:\d+\/html200\/v1\/audit\/\S+ answered 200 with a text\/html body, /,
      );
      expect(lines.at(-1)).toMatch(what);
      expect(run.stderr).not.toMatch(/\n\s+at /);
      expect(run.stderr).not.toContain('<html>');
    });
  }
});
