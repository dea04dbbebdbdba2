// Acceptance (issue 6): an export verified offline with only the public key passes (the `keyturn audit verify
// --file … --public-key …` command, with no server to ask), and the same export with one byte changed fails.
// Tampering with an export in each way (change a field, delete an event, reorder two, insert one, replace a
// checkpoint) is named at the first bad line. GET /v1/audit/verify reports a stream it cannot vouch for; filtered
// and CSV exports; events show their place in the chain on GET /v1/audit.
import { execFile, spawnSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ChainedEventRecord,
  type CheckpointRecord,
  eventDigest,
  linkHash,
  recordLine,
  signCheckpoint,
} from '../../src/audit/chain.ts';
import { verifyExportLines } from '../../src/audit/export.ts';
import { parsePublicKeys } from '../../src/crypto/ed25519-keys.ts';
import { newSealer } from '../support/audit-chain.ts';
import { dropPrefix, type Keyturn, startKeyturn, testEnv, testKeys } from '../support/harness.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const env = testEnv();
let kt: Keyturn;
let dir: string;
let exported: string;
let lines: string[];
let publicKeyPem: string;
/** The event a test deletes from the stream. */
let deleted: ChainedEventRecord | undefined;

function verifyText(text: string) {
  async function* each() {
    for (const line of text.split('\n')) yield line;
  }
  return verifyExportLines(each(), parsePublicKeys(publicKeyPem, 'test'));
}

function cli(args: string[]) {
  return spawnSync(process.execPath, ['bin/keyturn.js', ...args], {
    cwd: ROOT,
    // No server: the offline check must not need one.
    env: { PATH: process.env.PATH ?? '', KEYTURN_URL: 'http://127.0.0.1:9' },
    encoding: 'utf8',
  });
}

const eventLines = () =>
  lines.map((l, i) => ({ i, r: JSON.parse(l) })).filter(({ r }) => r.type === 'event') as Array<{
    i: number;
    r: ChainedEventRecord;
  }>;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api', 'worker'] });
  dir = await mkdtemp(join(tmpdir(), 'keyturn-audit-'));
  // Real events (refused callers are audited) and many made through the audit log, for two credentials.
  for (let i = 0; i < 5; i++)
    await kt.api('GET', '/v1/credentials', undefined, { authorization: 'Bearer nope' });
  for (let i = 0; i < 120; i++) {
    await kt.runtime.ctx.audit.append({
      actor: i % 2 ? 'platform-ci' : '=cmd|calc',
      action: i % 3 ? 'secret.read' : 'rotation.succeeded',
      outcome: 'success',
      credential: i % 2 ? 'cred-a' : 'cred-b',
      details: { n: i, note: 'commas, "quotes"' },
    });
  }
  const res = await kt.api('GET', '/v1/audit/export');
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/application\/x-ndjson/);
  expect(res.headers.get('keyturn-signed-to-end')).toBe('true');
  exported = res.text;
  lines = exported.split('\n').filter(Boolean);
  publicKeyPem = (await kt.api('GET', '/v1/audit/public-key')).text;
  await writeFile(join(dir, 'export.jsonl'), exported);
  await writeFile(join(dir, 'key.pem'), publicKeyPem);
}, 60_000);

afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('offline verification with only the public key', () => {
  it('passes for the export as it came', async () => {
    expect(publicKeyPem).toMatch(/^-----BEGIN PUBLIC KEY-----/);
    const run = cli([
      'audit',
      'verify',
      '--file',
      join(dir, 'export.jsonl'),
      '--public-key',
      join(dir, 'key.pem'),
    ]);
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^OK: 12\d events verified/);
    expect(run.stdout).toMatch(/signed through seq \d+ by checkpoint/);
  });

  it('fails for the same export with one byte changed, wherever the byte is', async () => {
    const changed = `${exported.slice(0, 300)}${exported[300] === 'a' ? 'b' : 'a'}${exported.slice(301)}`;
    await writeFile(join(dir, 'changed.jsonl'), changed);
    const run = cli([
      'audit',
      'verify',
      '--file',
      join(dir, 'changed.jsonl'),
      '--public-key',
      join(dir, 'key.pem'),
    ]);
    expect(run.status).toBe(1);
    expect(run.stdout).toMatch(/^FAILED/);

    // Every 97th byte, changed to another character: white space, punctuation, a digit of a hash, a signature.
    let checked = 0;
    for (let at = 0; at < exported.length; at += 97) {
      const c = exported[at]!;
      if (c === '\n') continue;
      const other = c === ' ' ? '\t' : c === '0' ? '1' : c === '"' ? "'" : c === 'x' ? 'y' : 'x';
      const result = await verifyText(`${exported.slice(0, at)}${other}${exported.slice(at + 1)}`);
      expect(result.ok, `byte ${at} (${JSON.stringify(c)} → ${JSON.stringify(other)})`).toBe(false);
      checked++;
    }
    expect(checked).toBeGreaterThan(100);
  });

  it('ends on a checkpoint even while events keep coming, so it is signed to its last line', async () => {
    // A second sealer seals each event at once (never checkpointing): the head moves past the export's checkpoint
    // while the export is read, as it does under load.
    const eager = newSealer(
      kt.runtime.ctx.redis,
      testKeys(env.prefix),
      kt.runtime.ctx.auditTrail,
      createPrivateKey(env.env.KEYTURN_AUDIT_SIGNING_KEY!),
    );
    let appending = true;
    const appender = (async () => {
      while (appending) {
        await eager.sealOnce();
        await kt.runtime.ctx.audit.append({
          actor: 'busy',
          action: 'secret.read',
          outcome: 'success',
          credential: 'cred-busy',
        });
        // Paces the concurrent appends (the load's shape); no assertion waits on it.
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
    try {
      for (let i = 0; i < 3; i++) {
        const res = await kt.api('GET', '/v1/audit/export');
        expect(res.headers.get('keyturn-signed-to-end')).toBe('true');
        const last = JSON.parse(res.text.trim().split('\n').at(-1)!);
        expect(last.type).toBe('checkpoint');
        const result = await verifyText(res.text);
        expect(result).toMatchObject({ ok: true, unsigned: 0 });
      }
    } finally {
      appending = false;
      await appender;
    }
  });

  it('fails with a different public key, and without one says so', async () => {
    const other = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' });
    await writeFile(join(dir, 'other.pem'), String(other));
    const run = cli([
      'audit',
      'verify',
      '--file',
      join(dir, 'export.jsonl'),
      '--public-key',
      join(dir, 'other.pem'),
    ]);
    expect(run.status).toBe(1);
    expect(run.stdout).toMatch(/not among the given public keys/);
    const none = cli(['audit', 'verify', '--file', join(dir, 'export.jsonl')]);
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/--public-key/);
  });
});

describe('tampering with an export is named at the first bad event', () => {
  const tampered = (change: (copy: string[]) => string[]) => verifyText(change([...lines]).join('\n'));

  it('a changed field (the line still in canonical form)', async () => {
    const { i, r } = eventLines()[40]!;
    const result = await tampered((copy) => {
      copy[i] = recordLine({ ...r, outcome: 'failure' });
      return copy;
    });
    expect(result.firstBad).toMatchObject({ kind: 'altered', id: r.id, seq: r.seq, line: i + 1 });
  });

  it('a deleted event', async () => {
    const { i, r } = eventLines()[40]!;
    const result = await tampered((copy) => copy.filter((_, k) => k !== i));
    expect(result.firstBad).toMatchObject({ kind: 'missing', seq: r.seq });
  });

  it('two events reordered', async () => {
    const [{ i, r }, { i: j }] = eventLines().slice(40, 42) as [
      { i: number; r: ChainedEventRecord },
      { i: number },
    ];
    const result = await tampered((copy) => {
      [copy[i], copy[j]] = [copy[j]!, copy[i]!];
      return copy;
    });
    expect(result.firstBad).toMatchObject({ kind: 'reordered', seq: r.seq + 1 });
  });

  it('an inserted event, made to link into the chain', async () => {
    const { i, r } = eventLines()[40]!;
    const fake = { ...r, actor: 'intruder', action: 'secret.read' };
    const digest = eventDigest(fake);
    const line = recordLine({ ...fake, digest, hash: linkHash(r.seq, r.prev, digest) });
    const result = await tampered((copy) => [...copy.slice(0, i), line, ...copy.slice(i)]);
    expect(result.firstBad).toMatchObject({ kind: 'inserted', seq: r.seq, line: i + 1 });
  });

  it('a replaced checkpoint', async () => {
    const i = lines.findIndex((l) => JSON.parse(l).type === 'checkpoint');
    const checkpoint = JSON.parse(lines[i]!) as CheckpointRecord;
    const { sig: _sig, ...body } = checkpoint;
    const forged = signCheckpoint(body, generateKeyPairSync('ed25519').privateKey);
    const result = await tampered((copy) => {
      copy[i] = recordLine({ ...forged, keyId: checkpoint.keyId });
      return copy;
    });
    expect(result.firstBad).toMatchObject({ kind: 'checkpoint', id: checkpoint.id, line: i + 1 });
  });
});

describe('the API', () => {
  it('verifies the stream, and reports the first bad event once one is deleted', async () => {
    const ok = await kt.api('GET', '/v1/audit/verify');
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ ok: true });
    expect(ok.body.count).toBeGreaterThanOrEqual(125);

    const events = eventLines();
    const victim = events[60]!.r;
    deleted = victim;
    await kt.runtime.ctx.redis.xdel(testKeys(env.prefix).audit(), victim.id);
    const bad = await kt.api('GET', '/v1/audit/verify');
    expect(bad.body).toMatchObject({ ok: false, firstBad: { kind: 'missing', seq: victim.seq } });
    expect(bad.body.count).toBe(victim.seq - 1);
  });

  it('shows each sealed event with its place and hashes on GET /v1/audit', async () => {
    const page = await kt.api('GET', '/v1/audit?credential=cred-a&limit=5');
    expect(page.status).toBe(200);
    for (const e of page.body.events) {
      expect(e.chain).toMatchObject({
        seq: expect.any(Number),
        digest: expect.stringMatching(/^[0-9a-f]{64}$/),
      });
      const { chain, ...event } = e;
      expect(eventDigest(event)).toBe(chain.digest);
    }
  });

  it('exports one credential’s events with the others as omitted records, and the chain still verifies', async () => {
    const res = await kt.api(
      'GET',
      `/v1/audit/export?credential=cred-a&until=${encodeURIComponent(new Date().toISOString())}`,
    );
    const records = res.text
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));
    expect(records[0]).toMatchObject({ type: 'header', filters: { credential: 'cred-a' } });
    const events = records.filter((r) => r.type === 'event');
    expect(events.length).toBe(60 - (deleted?.credential === 'cred-a' ? 1 : 0));
    expect(events.every((e) => e.credential === 'cred-a')).toBe(true);
    expect(records.some((r) => r.type === 'omitted' && !('actor' in r))).toBe(true);
    // The stream had an event deleted above: the export shows it too.
    const result = await verifyText(res.text);
    expect(result.firstBad?.kind).toBe('missing');
  });

  it('exports CSV for spreadsheets, quoted, with formulas defused', async () => {
    const res = await kt.api('GET', '/v1/audit/export?format=csv&action=rotation.succeeded');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/csv/);
    const rows = res.text.split('\r\n').filter(Boolean);
    expect(rows[0]).toBe(
      'type,id,seq,time,actor,action,outcome,credential,connection,rotation,details,digest,prev,hash,checkpoint,key_id,signature',
    );
    const event = rows.find((r) => r.startsWith('event,') && r.includes("'=cmd|calc"));
    expect(event).toBeDefined();
    expect(event).toContain('"{""n"":');
    expect(rows.some((r) => r.startsWith('checkpoint,'))).toBe(true);
  });

  it('refuses bad export parameters with a 400 that names them', async () => {
    const res = await kt.api('GET', '/v1/audit/export?format=xml');
    expect(res.status).toBe(400);
    expect(res.body.error.message).toMatch(/format/);
    const range = await kt.api(
      'GET',
      '/v1/audit/verify?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z',
    );
    expect(range.status).toBe(400);
  });
});

describe('the CLI against the API', () => {
  // Asynchronous: the API answering the CLI runs in this process.
  const run = (args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        ['bin/keyturn.js', ...args],
        {
          cwd: ROOT,
          env: { PATH: process.env.PATH ?? '', KEYTURN_URL: kt.url, KEYTURN_TOKEN: env.adminToken },
        },
        (err, stdout, stderr) => resolve({ code: err ? Number(err.code) : 0, stdout, stderr }),
      );
    });

  it('exports to a file, fetches the public key, verifies offline and through the API', async () => {
    const out = join(dir, 'cli-export.jsonl');
    const exported = await run(['audit', 'export', '--since', '2020-01-01T00:00:00Z', '--out', out]);
    expect(exported.code, exported.stderr).toBe(0);
    expect(exported.stderr).toMatch(/exported \d+ lines .*signed to its last event/);
    const key = await run(['audit', 'public-key']);
    expect(key.stdout).toBe(publicKeyPem);
    await writeFile(join(dir, 'cli-key.pem'), key.stdout);
    // An event was deleted from the stream above: the export carries the gap, and both checks name it.
    const offline = await run(['audit', 'verify', '--file', out, '--public-key', join(dir, 'cli-key.pem')]);
    expect(offline.code).toBe(1);
    expect(offline.stdout).toMatch(/^FAILED: missing at seq \d+/);
    const online = await run(['audit', 'verify']);
    expect(online.code).toBe(1);
    expect(online.stdout).toMatch(/^FAILED: missing at seq \d+/);
  });
});
