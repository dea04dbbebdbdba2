// The rotation's status changes (src/rotation/transitions.ts), without Redis: the table of allowed moves equals the
// one docs/architecture.md lists, every named move changes the record as its row says, and every move not in the
// table is refused.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as moves from '../../src/rotation/transitions.ts';
import { IllegalTransitionError, TRANSITIONS } from '../../src/rotation/transitions.ts';
import type { Rotation, RotationStatus } from '../../src/rotation/types.ts';

const STATUSES = Object.keys(TRANSITIONS) as RotationStatus[];
const AT = '2026-12-04T10:00:00.000Z';

/** The rows of the transition table in docs/architecture.md: [from, to, move]. */
function documentedRows(): Array<[RotationStatus, RotationStatus, string]> {
  const doc = readFileSync(join(import.meta.dirname, '../../docs/architecture.md'), 'utf8');
  const start = doc.search(/^\|\s*from\s*\|\s*to\s*\|\s*move\s*\|\s*when\s*\|/m);
  expect(start, 'the transition table in docs/architecture.md').toBeGreaterThan(0);
  const rows: Array<[RotationStatus, RotationStatus, string]> = [];
  for (const line of doc.slice(start).split('\n').slice(2)) {
    if (!line.startsWith('|')) break;
    const [from, to, move] = line
      .split('|')
      .slice(1, 4)
      .map((c) => c.trim());
    rows.push([from as RotationStatus, to as RotationStatus, move!]);
  }
  return rows;
}

function rotation(status: RotationStatus, fields: Partial<Rotation> = {}): Rotation {
  return {
    id: 'r1',
    credentialId: 'c1',
    trigger: 'manual',
    actor: 'tester',
    status,
    step: 'set',
    setStarted: false,
    setDone: false,
    attempts: 1,
    maxAttempts: 3,
    steps: [],
    createdAt: '2026-12-04T09:00:00.000Z',
    updatedAt: '2026-12-04T09:00:00.000Z',
    ...fields,
  };
}

describe('rotation transitions', () => {
  it('the code allows exactly the moves the architecture document lists', () => {
    const documented = new Set(documentedRows().map(([from, to]) => `${from} → ${to}`));
    const coded = new Set(STATUSES.flatMap((from) => TRANSITIONS[from].map((to) => `${from} → ${to}`)));
    expect([...coded].sort()).toEqual([...documented].sort());
  });

  it('each documented row names a move of transitions.ts that makes it', () => {
    for (const [from, to, name] of documentedRows()) {
      const move = (moves as Record<string, unknown>)[name];
      expect(typeof move, `${name} (${from} → ${to})`).toBe('function');
      const r = rotation(from);
      // The moves that end or park a rotation take a note (the rollback's, or why it was abandoned) first.
      const withNote = ['moveToRollbackPending', 'moveToRolledBack', 'moveToAbandoned'].includes(name);
      if (withNote) (move as (r: Rotation, note: string, at: string) => void)(r, 'a note', AT);
      else (move as (r: Rotation, at: string) => void)(r, AT);
      expect(r.status, `${name} from ${from}`).toBe(to);
      expect(r.updatedAt).toBe(AT);
    }
  });

  it('refuses every move the table does not list, and leaves the record as it was', () => {
    const targets: Array<[RotationStatus, (r: Rotation) => void]> = [
      ['running', (r) => moves.moveToRunning(r, AT)],
      ['retrying', (r) => moves.moveToRetrying(r, AT)],
      ['rolling_back', (r) => moves.moveToRollingBack(r, AT)],
      ['succeeded', (r) => moves.moveToSucceeded(r, AT)],
      ['failed', (r) => moves.moveToRolledBack(r, 'note', AT)],
    ];
    let refused = 0;
    for (const from of STATUSES) {
      for (const [to, apply] of targets) {
        if (TRANSITIONS[from].includes(to)) continue;
        const r = rotation(from);
        const before = structuredClone(r);
        expect(() => apply(r), `${from} → ${to}`).toThrow(IllegalTransitionError);
        expect(r).toEqual(before);
        refused++;
      }
    }
    // Ended rotations move nowhere; queued and retrying cannot skip running; rolling_back cannot go forward again.
    expect(refused).toBe(19);
    expect(() => moves.moveToRunning(rotation('succeeded'), AT)).toThrow(
      'rotation r1 cannot move from succeeded to running (allowed: none, it has ended)',
    );
    expect(() => moves.moveToRunning(rotation('rolling_back'), AT)).toThrow(
      'cannot move from rolling_back to running (allowed: rolling_back, failed)',
    );
  });

  it('moveToRunning counts an attempt and keeps the first start', () => {
    const r = rotation('queued', { attempts: 0 });
    moves.moveToRunning(r, AT);
    expect(r).toMatchObject({ status: 'running', attempts: 1, startedAt: AT });
    moves.moveToRunning(r, '2026-12-04T11:00:00.000Z');
    expect(r).toMatchObject({ attempts: 2, startedAt: AT });
  });

  it('moveToRetrying sends a failed test back to set, and leaves other steps', () => {
    const tested = rotation('running', { step: 'test' });
    moves.moveToRetrying(tested, AT);
    expect(tested).toMatchObject({ status: 'retrying', step: 'set' });
    const created = rotation('running', { step: 'create' });
    moves.moveToRetrying(created, AT);
    expect(created.step).toBe('create');
  });

  it('moveToSucceeded ends it and clears the error of an earlier attempt', () => {
    const r = rotation('running', { step: 'finish', error: { step: 'set', message: 'x', at: AT } });
    moves.moveToSucceeded(r, AT);
    expect(r).toMatchObject({ status: 'succeeded', finishedAt: AT });
    expect(r.error).toBeUndefined();
  });

  it('a pending rollback stays in flight; a done one ends failed with its note; an abandoned one records why', () => {
    const r = rotation('rolling_back');
    moves.moveToRollbackPending(r, 'restoring failed; will retry', AT);
    expect(r).toMatchObject({ status: 'rolling_back', rollback: { outcome: 'pending' } });
    expect(r.finishedAt).toBeUndefined();
    moves.moveToRolledBack(r, 'restored', AT);
    expect(r).toMatchObject({
      status: 'failed',
      finishedAt: AT,
      rollback: { outcome: 'done', note: 'restored' },
    });
    const gone = rotation('retrying', { step: 'test' });
    moves.moveToAbandoned(gone, 'the credential was deleted', AT);
    expect(gone).toMatchObject({
      status: 'failed',
      finishedAt: AT,
      error: { step: 'test', message: 'the credential was deleted', at: AT },
    });
  });
});
