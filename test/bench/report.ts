// What `npm run bench` prints and keeps. Every section adds rows; a row that measures one of issue 14's goals
// names its reference (measured in the same run) and the ratio the goal is stated in, so a number is never read
// without the yardstick it was taken against. Absolute figures on a shared 2-core machine vary by a factor of two
// from one run to the next; the ratios are what the README quotes.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface BenchRow {
  section: string;
  name: string;
  /** The measured figure, with its unit. */
  figure: string;
  /** What the figure is measured against, in the same run, if it is a goal. */
  reference?: string;
  /** figure ÷ reference (or the quantity the goal is stated in), if it is a goal. */
  ratio?: number;
  /** The goal, as a sentence: "≥ 0.85", "≤ 2048 B/credential". */
  goal?: string;
  /** Whether the goal holds in this run. */
  met?: boolean;
}

/** What a section writes to: plain figures, goal rows, and series for plots. */
export interface BenchSection {
  /** A plain figure (no goal). */
  record(name: string, figure: string): void;
  /** A goal's figure, its reference, the ratio and whether it holds. */
  goal(row: Omit<BenchRow, 'section'>): void;
  /** Data for a plot, kept in latest.json under this name. */
  series(name: string, data: unknown): void;
}

export class BenchReport {
  readonly rows: BenchRow[] = [];
  readonly series: Record<string, unknown> = {};

  for(section: string): BenchSection {
    return {
      record: (name, figure) => this.add({ section, name, figure }),
      goal: (row) => this.add({ ...row, section }),
      series: (name, data) => {
        this.series[name] = data;
      },
    };
  }

  private add(row: BenchRow): void {
    this.rows.push(row);
    process.stdout.write(`  ${row.name.padEnd(56)} ${row.figure}\n`);
    if (row.reference !== undefined)
      process.stdout.write(
        `  ${''.padEnd(56)} against ${row.reference}: ratio ${row.ratio?.toFixed(2)} (goal ${row.goal}) ${row.met ? 'MET' : 'NOT MET'}\n`,
      );
  }

  summary(): string {
    const goals = this.rows.filter((r) => r.goal !== undefined);
    if (!goals.length) return '';
    const lines = [
      '',
      'Goals (issue 14), each against a reference measured in this run:',
      ...goals.map(
        (r) =>
          `  ${r.met ? 'MET    ' : 'NOT MET'} ${r.name}: ${r.figure}; reference ${r.reference}; ratio ${r.ratio?.toFixed(2)} (goal ${r.goal})`,
      ),
    ];
    return `${lines.join('\n')}\n`;
  }

  /** Writes the rows (and any series) as JSON under dir, for the README's table and plot. */
  write(dir: string, meta: Record<string, unknown>): string {
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'latest.json');
    writeFileSync(file, `${JSON.stringify({ ...meta, rows: this.rows, series: this.series }, null, 2)}\n`);
    return file;
  }
}
