// The layering rule (scripts/lint-layers.ts, `npm run lint:layers`, part of `npm run lint`): this project passes it,
// and each kind of upward import fails it.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkModule, checkProject, LAYERS } from '../../scripts/lint-layers.ts';

const ROOT = join(import.meta.dirname, '../..');

describe('lint:layers', () => {
  it('finds no upward import in src/ and workers/', () => {
    expect(checkProject(ROOT)).toEqual([]);
  });

  it('refuses an import from a higher layer, naming the file, line and why', () => {
    const found = checkModule(
      'src/registry/types.ts',
      "// a comment\nimport { RegistryService } from '../service/registry-service.ts';\n",
    );
    expect(found).toEqual([
      {
        file: 'src/registry/types.ts',
        line: 2,
        imports: '../service/registry-service.ts',
        reason: expect.stringContaining('src/service is a higher layer than src/registry'),
      },
    ]);
  });

  it('counts type-only, re-exported and dynamic imports too', () => {
    const text = [
      "import type { RotationEngine } from '../rotation/engine.ts';",
      "export { buildApp } from '../api/app.ts';",
      "const m = await import('../scheduling/queues.ts');",
    ].join('\n');
    expect(checkModule('src/stores/local-store.ts', text).map((v) => [v.line, v.imports])).toEqual([
      [1, '../rotation/engine.ts'],
      [2, '../api/app.ts'],
      [3, '../scheduling/queues.ts'],
    ]);
  });

  it('allows imports down the layers, inside a unit and of packages', () => {
    const text = [
      "import { Redis } from 'ioredis';",
      "import { createHash } from 'node:crypto';",
      "import type { Registry } from '../registry/registry.ts';",
      "import { parseDuration } from '../config/duration.ts';",
      "import { backoffDelay } from './queues.ts';",
    ].join('\n');
    expect(checkModule('src/scheduling/due-index.ts', text)).toEqual([]);
  });

  it('refuses imports between units side by side, and any import of the server by the client library', () => {
    expect(checkModule('src/stores/aws-store.ts', "import '../targets/index.ts';")[0]?.reason).toMatch(
      /side by side/,
    );
    expect(checkModule('src/client/pools.ts', "import { Clock } from '../clock.ts';")[0]?.reason).toMatch(
      /published on its own/,
    );
  });

  it('refuses a folder that has no layer yet', () => {
    expect(checkModule('src/console/page.ts', "import '../api/app.ts';")[0]?.reason).toMatch(
      /src\/console has no layer/,
    );
  });

  it('every unit of src/ has a layer', () => {
    const units = new Set(LAYERS.flat());
    for (const name of readdirSync(join(ROOT, 'src'))) {
      if (name === 'client') continue;
      expect(units.has(`src/${name}`), `src/${name}`).toBe(true);
    }
  });

  it('the script exits 1 and names the import when one points up (on a copy of the project)', () => {
    const copy = mkdtempSync(join(tmpdir(), 'kt-layers-'));
    try {
      cpSync(join(ROOT, 'src'), join(copy, 'src'), { recursive: true });
      cpSync(join(ROOT, 'workers'), join(copy, 'workers'), { recursive: true });
      cpSync(join(ROOT, 'scripts'), join(copy, 'scripts'), { recursive: true });
      symlinkSync(join(ROOT, 'node_modules'), join(copy, 'node_modules'));
      const run = () =>
        spawnSync(process.execPath, [join(copy, 'scripts/lint-layers.ts')], { encoding: 'utf8' });
      const clean = run();
      expect(clean.status, clean.stderr).toBe(0);
      writeFileSync(
        join(copy, 'src/crypto/upward.ts'),
        "import { buildApp } from '../api/app.ts';\nexport const x = buildApp;\n",
      );
      const dirty = run();
      expect(dirty.status).toBe(1);
      expect(dirty.stderr).toContain(
        'src/crypto/upward.ts:1 imports ../api/app.ts: src/api is a higher layer than src/crypto',
      );
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  });
});
