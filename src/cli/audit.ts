// `keyturn audit …`: read the trail, verify it (through the API, or offline: an export file and the public key
// are all an auditor needs), export it, and fetch the public key.
import { createReadStream, createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { verifyExportLines } from '../audit/export.ts';
import type { VerifyResult } from '../audit/verifier.ts';
import { parsePublicKeys } from '../crypto/ed25519-keys.ts';
import type { KeyturnClient } from './client.ts';
import { Progress } from './output.ts';

export interface CliContext {
  client(): KeyturnClient;
  json(): boolean;
  fail(message: string, code?: number): never;
}

const RANGE_AND_FILTERS = ['credential', 'actor', 'action', 'since', 'until'] as const;

function query(opts: Record<string, string | undefined>, names: readonly string[]): URLSearchParams {
  const q = new URLSearchParams();
  for (const k of names) if (opts[k]) q.set(k, opts[k]!);
  return q;
}

function describe(result: VerifyResult & { pending?: number; durationMs?: number }): string {
  const lines: string[] = [];
  if (result.ok) {
    lines.push(
      result.count === 0
        ? 'OK: no events in the range'
        : `OK: ${result.count} events verified, seq ${result.from?.seq} to ${result.to?.seq} (${result.from?.id} … ${result.to?.id})`,
    );
  } else {
    const bad = result.firstBad!;
    lines.push(
      `FAILED: ${bad.kind}${bad.seq !== null ? ` at seq ${bad.seq}` : ''}${bad.id ? ` (event ${bad.id})` : ''}${bad.line !== undefined ? ` on line ${bad.line}` : ''}`,
      `  ${bad.reason}`,
      `  ${result.count} events before it verified`,
    );
  }
  lines.push(
    result.signedThrough
      ? `signed through seq ${result.signedThrough.seq} by checkpoint ${result.signedThrough.n} (${result.signedThrough.time}); ${result.checkpoints} checkpoints verified`
      : 'no checkpoint verified: nothing in this range is covered by a signature',
  );
  if (result.unsigned > 0)
    lines.push(`${result.unsigned} events after the last checkpoint are not signed yet`);
  if (result.pending) lines.push(`${result.pending} newer events are not sealed into the chain yet`);
  if (result.durationMs !== undefined) lines.push(`took ${result.durationMs} ms`);
  return lines.join('\n');
}

export function addAuditCommands(program: Command, cli: CliContext): void {
  const audit = program.command('audit').description('the audit trail: read, verify, export');

  audit
    .command('list', { isDefault: true })
    .description('read the audit trail, oldest first')
    .option('--credential <id>')
    .option('--actor <name>')
    .option('--action <action>')
    .option('--since <iso-time>')
    .option('--until <iso-time>')
    .option('--limit <n>', 'events per page', '100')
    .action(async (opts: Record<string, string | undefined>) => {
      const page = await cli
        .client()
        .request<{ events: Array<Record<string, unknown>>; next: string | null }>(
          'GET',
          `/v1/audit?${query(opts, [...RANGE_AND_FILTERS, 'limit'])}`,
        );
      process.stdout.write(
        `${
          cli.json()
            ? JSON.stringify(page, null, 2)
            : page.events
                .map(
                  (e) =>
                    `${e.time}  ${String(e.actor).padEnd(12)} ${String(e.action).padEnd(26)} ${e.outcome}  ${e.credential ?? e.connection ?? ''}`,
                )
                .join('\n')
        }\n`,
      );
    });

  audit
    .command('verify')
    .description(
      'check the hash chain and its signed checkpoints: through the API, or offline with --file and --public-key',
    )
    .option('--file <export.jsonl>', 'verify an export offline (no server needed)')
    .option(
      '--public-key <key.pem>',
      'the Ed25519 public key(s) that sign checkpoints (keyturn audit public-key)',
    )
    .option('--since <iso-time>', 'through the API: verify from this time')
    .option('--until <iso-time>', 'through the API: verify up to this time')
    .option('--allow-unsigned', 'offline: pass even if the last events are not covered by a checkpoint')
    .action(async (opts: Record<string, string | boolean | undefined>) => {
      let result: VerifyResult & { pending?: number; durationMs?: number };
      if (opts.file) {
        if (!opts.publicKey)
          cli.fail('--file needs --public-key: the key is what makes the check worth anything', 2);
        let keys: ReturnType<typeof parsePublicKeys>;
        try {
          keys = parsePublicKeys(await readFile(String(opts.publicKey), 'utf8'), String(opts.publicKey));
        } catch (err) {
          cli.fail(`cannot use the public key: ${(err as Error).message}`, 2);
        }
        const started = performance.now();
        const input = createReadStream(String(opts.file));
        const opened = new Promise<void>((resolve, reject) => {
          input.once('open', () => resolve());
          input.once('error', reject);
        });
        try {
          await opened;
        } catch (err) {
          cli.fail(`cannot read ${opts.file}: ${(err as Error).message}`, 2);
        }
        const lines = createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY });
        // Progress on stderr (src/cli/output.ts): one line redrawn on a terminal, a line every 2 s in a log.
        const progress = new Progress('audit verify');
        result = await verifyExportLines(lines, keys, (n) => progress.update(n, undefined, 'lines'));
        progress.finish(`${result.count} events read`);
        result = { ...result, durationMs: Math.round(performance.now() - started) };
      } else {
        result = await cli
          .client()
          .request('GET', `/v1/audit/verify?${query(opts as Record<string, string>, ['since', 'until'])}`);
      }
      process.stdout.write(`${cli.json() ? JSON.stringify(result, null, 2) : describe(result)}\n`);
      const unsignedFails =
        Boolean(opts.file) && !opts.allowUnsigned && (result.unsigned > 0 || !result.signedThrough);
      if (!result.ok) process.exit(1);
      if (unsignedFails) {
        process.stderr.write(
          'keyturn: the export verifies, but its last events are not covered by a signed checkpoint: export again once a worker has signed them, or pass --allow-unsigned\n',
        );
        process.exit(1);
      }
    });

  audit
    .command('export')
    .description('stream the audit trail with its hashes and checkpoints, for offline verification')
    .option('--format <jsonl|csv>', 'jsonl verifies offline; csv is for spreadsheets', 'jsonl')
    .option('--credential <id>')
    .option('--actor <name>')
    .option('--action <action>')
    .option('--since <iso-time>')
    .option('--until <iso-time>')
    .option('--out <file>', 'write here instead of standard output')
    .action(async (opts: Record<string, string | undefined>) => {
      const q = query(opts, [...RANGE_AND_FILTERS, 'format']);
      const progress = new Progress('audit export');
      progress.update(0, undefined, 'waiting for the sealer to sign everything up to now…');
      const res = await cli.client().stream(`/v1/audit/export?${q}`, {
        type: /^(application\/x-ndjson|text\/csv)\b/i,
        what: "Keyturn's audit export (JSON lines or CSV)",
      });
      let lines = 0;
      let bytes = 0;
      const counter = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          bytes += chunk.length;
          for (const byte of chunk) if (byte === 10) lines++;
          progress.update(lines, undefined, `lines, ${(bytes / 1e6).toFixed(1)} MB`);
          done(null, chunk);
        },
      });
      const out = opts.out ? createWriteStream(opts.out, { mode: 0o640 }) : process.stdout;
      await pipeline(Readable.fromWeb(res.body as never), counter, out);
      const signed = res.headers.get('keyturn-signed-to-end') === 'true';
      progress.finish(
        `exported ${lines} lines (${bytes} bytes)${opts.out ? ` to ${opts.out}` : ''}; ${
          signed
            ? 'signed to its last event'
            : 'WARNING: no worker signed the newest events in time; they verify only with --allow-unsigned'
        }`,
      );
    });

  audit
    .command('public-key')
    .description('the Ed25519 public key(s) that sign audit checkpoints (PEM)')
    .action(async () => {
      const res = await cli.client().stream('/v1/audit/public-key', {
        type: /^application\/x-pem-file\b/i,
        what: "Keyturn's public key (PEM)",
      });
      process.stdout.write(await res.text());
    });
}
