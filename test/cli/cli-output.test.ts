// The CLI's shared output (src/cli/output.ts): Progress redraws one line on a terminal and, elsewhere, prints a line
// at most every 10% or 2 s; colours only on a terminal without NO_COLOR; tables pad to the widest cell.
import { afterEach, describe, expect, it } from 'vitest';
import { colours, Progress, table } from '../../src/cli/output.ts';

function sink(isTTY: boolean) {
  const chunks: string[] = [];
  return { isTTY, chunks, write: (c: string) => chunks.push(c) };
}

const savedNoColor = process.env.NO_COLOR;
afterEach(() => {
  if (savedNoColor === undefined) delete process.env.NO_COLOR;
  else process.env.NO_COLOR = savedNoColor;
});

describe('Progress', () => {
  it('off a terminal: a line per 10% at most, or per 2 s when nothing else moves', () => {
    const out = sink(false);
    let now = 0;
    const p = new Progress('apply', { stream: out, now: () => now });
    for (let i = 0; i <= 100; i++) p.update(i, 100, `item ${i}`);
    // 0%, then every tenth: 11 lines, not 101.
    expect(out.chunks).toHaveLength(11);
    expect(out.chunks[0]).toBe('apply: 0/100 (0%)  item 0\n');
    expect(out.chunks[1]).toBe('apply: 10/100 (10%)  item 10\n');
    const q = new Progress('export', { stream: out, now: () => now });
    out.chunks.length = 0;
    q.update(1);
    q.update(2);
    now += 1999;
    q.update(3);
    now += 1;
    q.update(4);
    expect(out.chunks).toEqual(['export: 1\n', 'export: 4\n']);
    q.finish('done');
    q.fail('ignored: already finished');
    expect(out.chunks.at(-1)).toBe('export: done\n');
    expect(out.chunks.every((c) => !c.includes('\r') && !c.includes('\u001b'))).toBe(true);
  });

  it('on a terminal: one line redrawn, then the result on its own line', () => {
    delete process.env.NO_COLOR;
    const out = sink(true);
    const p = new Progress('rekey', { stream: out });
    p.update(1, 4);
    p.update(2, 4, 'credentials');
    expect(out.chunks).toHaveLength(2);
    expect(out.chunks.every((c) => c.startsWith('\r') && c.endsWith('\u001b[K'))).toBe(true);
    p.fail('stopped');
    const last = out.chunks.at(-1)!;
    expect(last.startsWith('\r\u001b[K')).toBe(true);
    expect(last).toContain('✗');
    expect(last.endsWith(' rekey: stopped\n')).toBe(true);
  });
});

describe('colours and tables', () => {
  it('colours only on a terminal, and never with NO_COLOR', () => {
    delete process.env.NO_COLOR;
    expect(colours({ isTTY: true, write: () => true }).red('x')).toBe('\u001b[31mx\u001b[39m');
    expect(colours({ isTTY: false, write: () => true }).red('x')).toBe('x');
    process.env.NO_COLOR = '1';
    expect(colours({ isTTY: true, write: () => true }).red('x')).toBe('x');
  });

  it('pads columns to the widest cell', () => {
    expect(
      table([
        ['ID', 'STATUS'],
        ['payments-api', 'active'],
        ['x', 'failed'],
      ]),
    ).toBe('ID            STATUS\npayments-api  active\nx             failed');
  });
});
