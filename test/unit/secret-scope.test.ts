// Finding 10 of issue 11: the scrubber knows every secret an operation touched, on every path.
import { request } from 'node:http';
import { Writable } from 'node:stream';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installSecretScope } from '../../src/api/app.ts';
import { installErrorHandling } from '../../src/api/errors.ts';
import { scrubText } from '../../src/crypto/scrub.ts';
import {
  currentSecretScope,
  noteSecret,
  runInNewSecretScope,
  scrubJsonLine,
  secretsInScope,
} from '../../src/crypto/secret-scope.ts';
import { createLogger } from '../../src/logging/logger.ts';
import { UnprocessableError } from '../../src/registry/errors.ts';

describe('finding 10: secret scope', () => {
  it('scrubText cuts the secrets noted in the current operation, and only there', async () => {
    const secret = 'Sup3r-secret-admin-pw';
    noteSecret(secret); // outside any scope: nothing to remember
    expect(secretsInScope()).toEqual([]);
    await runInNewSecretScope(async () => {
      noteSecret(secret);
      await new Promise((done) => setTimeout(done, 1));
      expect(scrubText(`login failed: got "${secret}"`)).toBe('login failed: got "[redacted]"');
    });
    expect(scrubText(`got ${secret}`)).toBe(`got ${secret}`);
  });

  it('keeps concurrent operations apart', async () => {
    const seen = await Promise.all(
      ['first-secret-value', 'second-secret-value'].map((s) =>
        runInNewSecretScope(async () => {
          noteSecret(s);
          await new Promise((done) => setTimeout(done, 5));
          return secretsInScope();
        }),
      ),
    );
    expect(seen).toEqual([['first-secret-value'], ['second-secret-value']]);
  });

  it('scrubs a JSON log line, escaped forms included, and leaves it valid JSON', () => {
    const secret = 'pa"ss\\word-with-quote';
    runInNewSecretScope(() => {
      noteSecret(secret);
      const line = JSON.stringify({ msg: `echo ${secret}`, err: { message: secret } });
      const out = scrubJsonLine(line);
      expect(out).not.toContain(JSON.stringify(secret).slice(1, -1));
      expect(JSON.parse(out)).toEqual({ msg: 'echo [redacted]', err: { message: '[redacted]' } });
    });
  });

  it('ignores values too short to be secrets Keyturn handles', () => {
    runInNewSecretScope(() => {
      noteSecret('abc');
      noteSecret(42);
      expect(secretsInScope()).toEqual([]);
    });
  });
});

describe('finding 10: scopes at the entry points and the sinks', () => {
  it('an error leaving a scope carries none of its secrets (sync and async, message and stack)', async () => {
    const secret = 'admin-pw-echoed-by-downstream';
    let thrown: Error | undefined;
    try {
      runInNewSecretScope(() => {
        noteSecret(secret);
        throw new Error(`login failed: got ${secret}`);
      });
    } catch (err) {
      thrown = err as Error;
    }
    expect(thrown?.message).toBe('login failed: got [redacted]');
    expect(thrown?.stack).not.toContain(secret);

    // What a worker's job runs: BullMQ stores the failed reason in Redis, outside the scope.
    const rejected = runInNewSecretScope(async () => {
      noteSecret(secret);
      await new Promise((done) => setTimeout(done, 1));
      throw new Error(`downstream said "${secret}"`);
    });
    await expect(rejected).rejects.toThrow('downstream said "[redacted]"');
    const stack = await rejected.catch((err: Error) => err.stack);
    expect(stack).not.toContain(secret);
  });

  describe('an API request', () => {
    const secret = 'echoed-Admin-Passw0rd';
    const logs: string[] = [];
    let app: FastifyInstance;
    let url: string;

    beforeAll(async () => {
      const destination = new Writable({
        write(chunk, _encoding, done) {
          logs.push(String(chunk));
          done();
        },
      });
      app = Fastify({
        loggerInstance: createLogger({ level: 'info', format: 'json', destination }) as FastifyBaseLogger,
      }) as unknown as FastifyInstance;
      installSecretScope(app);
      installErrorHandling(app);
      // What a route does with a downstream that echoes: the driver notes the password, the error quotes it.
      const handler = async (request: FastifyRequest) => {
        const inScope = currentSecretScope() !== undefined && currentSecretScope() === request.secretScope;
        await new Promise((done) => setTimeout(done, 1));
        noteSecret(secret);
        request.log.warn(`the downstream answered: got "${secret}"`);
        if ((request.query as { fail?: string }).fail) {
          throw new UnprocessableError(`Could not create a lease user: got "${secret}"`);
        }
        return { inScope, noted: secretsInScope().length };
      };
      app.get('/op', handler);
      app.post('/op', handler);
      url = await app.listen({ port: 0, host: '127.0.0.1' });
    });
    afterAll(async () => {
      await app?.close();
    });

    it('runs its handler in its own scope, with and without a body', async () => {
      const answers = await Promise.all([
        fetch(`${url}/op`).then((r) => r.json()),
        fetch(`${url}/op`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ some: 'body' }),
        }).then((r) => r.json()),
        postInTwoPackets(`${url}/op`, JSON.stringify({ some: 'body' })),
      ]);
      expect(answers).toEqual([
        { inScope: true, noted: 1 },
        { inScope: true, noted: 1 },
        { inScope: true, noted: 1 },
      ]);
    });

    it('answers errors and logs without the secrets it touched', async () => {
      for (const init of [
        {},
        { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"some":"body"}' },
      ]) {
        const res = await fetch(`${url}/op?fail=1`, init);
        const text = await res.text();
        expect(res.status).toBe(422);
        expect(text).not.toContain(secret);
        expect(JSON.parse(text).error.message).toBe('Could not create a lease user: got "[redacted]"');
      }
      expect(logs.join('\n')).toContain('the downstream answered');
      expect(logs.join('\n')).not.toContain(secret);
    });
  });
});

/**
 * A POST whose body arrives after its headers, in a packet of its own: Fastify then parses it from the socket's
 * `data` event, outside the context its onRequest hooks ran in.
 */
function postInTwoPackets(url: string, body: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          text += chunk;
        });
        res.on('end', () => resolve(JSON.parse(text)));
      },
    );
    req.on('error', reject);
    req.flushHeaders();
    setTimeout(() => req.end(body), 20);
  });
}
