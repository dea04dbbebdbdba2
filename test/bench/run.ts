// `npm run bench [section ...]`: the figures of issue 14's goals, each against a reference measured in the same
// run, plus plain figures of the other hot paths. Runs against real Redis, a password-checking PostgreSQL
// cluster made for the run, and servers it starts itself. Nothing here asserts timing; tests guard correctness.
// Sections run in the order below; naming some runs only those. Results go to stdout and docs/bench/latest.json.
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { hotPaths } from './hot-paths.ts';
import { lists } from './lists.ts';
import { read } from './read.ts';
import { BenchReport, type BenchSection } from './report.ts';
import { rotations } from './rotations.ts';
import { scale } from './scale.ts';

const sections: Record<string, (report: BenchSection) => Promise<void>> = {
  'hot-paths': hotPaths,
  read,
  rotations,
  scale,
  lists,
};

const asked = process.argv.slice(2);
const unknown = asked.filter((name) => !(name in sections));
if (unknown.length) {
  process.stderr.write(
    `npm run bench: no section ${unknown.map((n) => `"${n}"`).join(', ')}; sections are ${Object.keys(sections).join(', ')}\n`,
  );
  process.exit(2);
}
const report = new BenchReport();
const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}`;
process.stdout.write(`keyturn bench on ${machine}\n`);
for (const [name, run] of Object.entries(sections)) {
  if (asked.length && !asked.includes(name)) continue;
  process.stdout.write(`\n[${name}]\n`);
  await run(report.for(name));
}
process.stdout.write(report.summary());
if (!asked.length) {
  const file = report.write(join(import.meta.dirname, '../../docs/bench'), {
    date: new Date().toISOString(),
    machine,
  });
  process.stdout.write(`results written to ${file}\n`);
}
