// `keyturn rekey`: wraps every sealed value of the local store again under the primary key provider (POST /v1/rekey),
// then follows it with a progress line until it ends (GET /v1/rekey), unless --no-wait. `keyturn rekey status`
// shows the key providers and the last rekey. Admin only; the service does the work (src/rekey/), so the CLI holds no
// key and a CLI that dies or is interrupted stops nothing: run it again to follow the same rekey.
import type { Command } from 'commander';
import type { RekeyStatus } from '../rekey/rekey.ts';
import type { CliContext } from './audit.ts';
import { Progress, print, table } from './output.ts';

interface RekeyView {
  keyProviders: { primary: Record<string, unknown>; readable: Array<Record<string, unknown>> };
  rekey: RekeyStatus | null;
}

const byKid = (counts?: Record<string, number>) =>
  Object.entries(counts ?? {})
    .map(([kid, n]) => `${kid}: ${n}`)
    .join(', ') || '-';

function describe(view: RekeyView): string {
  const { primary, readable } = view.keyProviders;
  const lines = [
    table([
      ['KEY', 'PROVIDER', 'ROLE'],
      [String(primary.kid), String(primary.provider), 'primary (wraps new values)'],
      ...readable.map((p) => [String(p.kid), String(p.provider), 'read only']),
    ]),
    '',
  ];
  const r = view.rekey;
  if (!r) return [...lines, 'no rekey has run'].join('\n');
  lines.push(
    `rekey ${r.id}: ${r.status}${r.status === 'running' ? ` (${r.phase})` : ''}, to ${r.to}`,
    `  requested by ${r.requestedBy} at ${r.requestedAt}${r.finishedAt ? `, ended ${r.finishedAt}` : ''}`,
    `  values before: ${byKid(r.before)}`,
    ...(r.after ? [`  values after:  ${byKid(r.after)}`] : []),
    `  rewrapped ${r.rewrapped}, replaced by rotations meanwhile ${r.changed}, walks ${r.walks}, resumed ${r.resumed}`,
  );
  for (const u of r.unopenable) lines.push(`  cannot open ${u.secret} version ${u.version} (key ${u.kid})`);
  if (r.unopenableCount > r.unopenable.length)
    lines.push(`  … and ${r.unopenableCount - r.unopenable.length} more`);
  if (r.error) lines.push(`  ${r.status === 'failed' ? 'failed' : 'last error'}: ${r.error}`);
  return lines.join('\n');
}

export function addRekeyCommand(program: Command, cli: CliContext): void {
  const rekey = program
    .command('rekey')
    .description('wrap every secret of the local store again under the primary key provider, and follow it')
    .option('--no-wait', 'return once the rekey is started')
    .option('--timeout <seconds>', 'how long to follow it', '3600')
    .action(async (opts: { wait: boolean; timeout: string }) => {
      const api = cli.client();
      const started = await api.request<{ rekeyId: string; created: boolean; rekey: RekeyStatus }>(
        'POST',
        '/v1/rekey',
      );
      if (!cli.json()) {
        process.stderr.write(
          started.created
            ? `rekey ${started.rekeyId} started: every value moves to ${started.rekey.to}\n`
            : `a rekey is already running: following ${started.rekeyId}\n`,
        );
      }
      if (!opts.wait) return print(cli.json(), started.rekey, () => started.rekeyId);
      const deadline = Date.now() + Number(opts.timeout) * 1000;
      const progress = new Progress('rekey');
      let view: RekeyView;
      for (;;) {
        view = await api.request<RekeyView>('GET', '/v1/rekey');
        const r = view.rekey;
        if (!r || r.id !== started.rekeyId)
          cli.fail('the rekey was replaced by another; see `keyturn rekey status`');
        if (r.status !== 'running') break;
        if (!cli.json())
          progress.update(
            r.rewrapped + r.changed,
            r.pending,
            `${r.phase}${r.resumed ? `, resumed ${r.resumed}×` : ''}`,
          );
        if (Date.now() > deadline)
          cli.fail(`still running (${r.phase}); follow it with: keyturn rekey status`);
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      const r = view.rekey!;
      if (!cli.json()) {
        if (r.status === 'succeeded')
          progress.finish(
            `${r.rewrapped} value(s) rewrapped; every value is on ${r.to}: the old key can be removed`,
          );
        else progress.fail(r.error ?? 'failed');
      }
      print(cli.json(), r, () => describe(view));
      if (r.status !== 'succeeded') process.exitCode = 1;
    });

  rekey
    .command('status')
    .description('the key providers and the last rekey')
    .action(async () => {
      const view = await cli.client().request<RekeyView>('GET', '/v1/rekey');
      print(cli.json(), view, () => describe(view));
    });
}
