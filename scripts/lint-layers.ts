// `npm run lint:layers`: every import of src/ and workers/ points down the layers of docs/architecture.md, never up.
//
// Each unit (a folder of src/, or one of its top-level files) has a rank; a module may import from its own unit or
// from a unit of a lower rank. Two units of the same rank may not import each other: they are side by side. Type-only
// imports count too: a type from a higher layer is a dependency on it all the same. The client library
// (src/client) stands apart: it is published as `keyturn/client` and imports nothing of the server.
//
// Imports are read with TypeScript's own pre-processor (static, dynamic and type-only), not with a pattern.
// Exit 0 when every import points down; 1 with one line per upward import (file, line, what it imports, why not).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import ts from 'typescript';

/** Bottom first. A unit is `src/<folder>`, `src/<file>.ts` or `workers`. */
export const LAYERS: ReadonlyArray<readonly string[]> = [
  // Foundations: no knowledge of Keyturn's objects.
  ['src/clock.ts', 'src/csv.ts'],
  ['src/crypto'],
  // Where Keyturn may connect on an operator's behalf (the outbound fence).
  ['src/net'],
  ['src/logging'],
  ['src/config'],
  ['src/redis'],
  // Who holds the key-encryption key: the environment, AWS KMS or Vault transit.
  ['src/keys'],
  // Registry types, keys, errors and the registry's own records.
  ['src/registry'],
  ['src/auth'],
  // Where secrets live, who accepts them, and the audit trail.
  ['src/stores', 'src/targets', 'src/audit'],
  ['src/notifications'],
  // The protocols: rotation, leases, scheduling, and what hangs off them.
  ['src/rotation', 'src/compliance', 'src/events'],
  ['src/leases'],
  ['src/scheduling'],
  ['src/sync', 'src/rekey'],
  ['src/metrics'],
  // The application service: what a team does, composed from the layers below.
  ['src/service'],
  ['src/api'],
  // Entry points and composition.
  ['src/agent'],
  ['src/cli'],
  ['src/runtime.ts'],
  ['src/boot.ts'],
  ['src/main.ts', 'workers'],
];

/** Units that import nothing of the rest of src/ (published on their own). */
export const STANDALONE = new Set(['src/client']);

const rankOf = new Map<string, number>();
LAYERS.forEach((units, rank) => {
  for (const unit of units) rankOf.set(unit, rank);
});

/** The unit of a path relative to the project root, or undefined outside src/ and workers/. */
export function unitOf(path: string): string | undefined {
  const parts = path.split(sep).join('/').split('/');
  if (parts[0] === 'workers') return 'workers';
  if (parts[0] !== 'src' || parts.length < 2) return undefined;
  return `src/${parts[1]}`;
}

export interface Violation {
  file: string;
  line: number;
  imports: string;
  reason: string;
}

/** The upward imports of one module, given its path (relative to the root) and its text. */
export function checkModule(file: string, text: string): Violation[] {
  const from = unitOf(file);
  if (!from) return [];
  const { importedFiles } = ts.preProcessFile(text, true, true);
  const found: Violation[] = [];
  for (const ref of importedFiles) {
    if (!ref.fileName.startsWith('.')) continue; // packages and node: builtins
    const target = relative('.', resolve(dirname(file), ref.fileName));
    const to = unitOf(target);
    if (!to || to === from) continue;
    const line = text.slice(0, ref.pos).split('\n').length;
    const reason = verdict(from, to);
    if (reason) found.push({ file, line, imports: ref.fileName, reason });
  }
  return found;
}

function verdict(from: string, to: string): string | undefined {
  if (STANDALONE.has(from)) return `${from} is published on its own and imports nothing of the server`;
  if (STANDALONE.has(to)) return undefined; // anyone may use the client library
  const a = rankOf.get(from);
  const b = rankOf.get(to);
  if (a === undefined) return `${from} has no layer: add it to LAYERS in scripts/lint-layers.ts`;
  if (b === undefined) return `${to} has no layer: add it to LAYERS in scripts/lint-layers.ts`;
  if (b < a) return undefined;
  if (b === a) return `${from} and ${to} are side by side (the same layer): neither may import the other`;
  return `${to} is a higher layer than ${from}: move what is shared down, or pass it in from above`;
}

function* modules(dir: string): Generator<string> {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* modules(path);
    else if (/\.ts$/.test(name) && !name.endsWith('.d.ts')) yield path;
  }
}

/** Every upward import under src/ and workers/ of the project at `root`. */
export function checkProject(root: string): Violation[] {
  const violations: Violation[] = [];
  for (const top of ['src', 'workers']) {
    for (const path of modules(join(root, top))) {
      violations.push(...checkModule(relative(root, path), readFileSync(path, 'utf8')));
    }
  }
  return violations;
}

if (import.meta.main) {
  const root = join(import.meta.dirname, '..');
  process.chdir(root);
  const violations = checkProject('.');
  for (const v of violations) process.stderr.write(`${v.file}:${v.line} imports ${v.imports}: ${v.reason}\n`);
  if (violations.length) {
    process.stderr.write(
      `lint:layers: ${violations.length} upward import(s); the layers are in docs/architecture.md\n`,
    );
    process.exit(1);
  }
  process.stdout.write('lint:layers: every import of src/ and workers/ points down the layers\n');
}
