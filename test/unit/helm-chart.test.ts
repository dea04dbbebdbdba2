// Reads the Helm chart as text (there is no helm binary here) and checks two promises of issue 12:
//   1. every environment variable the server's configuration reads can be set from values.yaml: an env entry in
//      the templates driven by a values key, or an entry of EXCEPTIONS below with its reason;
//   2. every values path the templates use exists in values.yaml.
// Each extractor is also run on a small made-up input, so that a check that finds nothing cannot pass silently.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const ROOT = join(import.meta.dirname, '..', '..');
const CHART = join(ROOT, 'helm', 'keyturn');

/**
 * Variables Keyturn reads that values.yaml deliberately has no key for. `fixed`: the chart sets them itself and
 * they must appear as env entries; `extraEnv`: left to extraEnv, and must not be set by the chart.
 */
const EXCEPTIONS: Record<string, { kind: 'fixed' | 'extraEnv'; reason: string }> = {
  NODE_ENV: {
    kind: 'fixed',
    reason:
      'always "production": the chart deploys production; development defaults must never apply in a pod',
  },
  KEYTURN_COMPONENTS: {
    kind: 'fixed',
    reason: 'set per Deployment (api or worker); api.enabled and worker.enabled choose which run',
  },
  KEYTURN_STATE_DIR: {
    kind: 'fixed',
    reason: 'the mount path of storage.data (/app/.keyturn), the one writable place for it',
  },
  KEYTURN_FAILPOINTS: {
    kind: 'extraEnv',
    reason: 'test-only fault injection, refused when NODE_ENV=production, which the chart always sets',
  },
  AWS_DEFAULT_REGION: {
    kind: 'extraEnv',
    reason: 'an alias Keyturn reads after AWS_REGION, which aws.region sets',
  },
  AWS_ENDPOINT_URL: {
    kind: 'extraEnv',
    reason:
      'the all-services endpoint; aws.endpoint sets AWS_ENDPOINT_URL_SECRETS_MANAGER, which Keyturn reads first',
  },
  KUBECONFIG: {
    kind: 'extraEnv',
    reason:
      'Kubernetes sync in a pod uses its service account (kubernetesSync.enabled); a kubeconfig file is for a process outside the cluster',
  },
  KUBERNETES_SERVICE_HOST: {
    kind: 'extraEnv',
    reason: 'set by the kubelet in every pod: it is how Keyturn knows it runs in-cluster, never set by hand',
  },
  AWS_PROFILE: {
    kind: 'extraEnv',
    reason:
      'needs a shared config file mounted into the pod (extraVolumes); on EKS, IRSA or Pod Identity replace it',
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Which variables the server reads.

/** Every .ts file under dir, recursively. */
function tsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return tsFiles(path);
    return name.endsWith('.ts') ? [path] : [];
  });
}

/**
 * Environment variables a TypeScript source reads: `env.NAME`, `process.env.NAME`, `env['NAME']`, `env?.NAME`,
 * and calls of local helpers that read `env[<their first parameter>]` (config.ts's `int('NAME', …)` and
 * `duration('NAME', …)`, found by their bodies, not by their names), with a literal first argument.
 */
function envReads(source: string, extraHelpers: Iterable<string> = []): Set<string> {
  const names = new Set<string>();
  const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  for (const m of code.matchAll(/\benv\??\.([A-Z][A-Z0-9_]*)\b/g)) names.add(m[1]!);
  for (const m of code.matchAll(/\benv\??\.?\[\s*['"`]([A-Z][A-Z0-9_]*)['"`]\s*\]/g)) names.add(m[1]!);
  for (const helper of new Set([...helpersReadingEnv(code), ...extraHelpers])) {
    const call = new RegExp(`(?<![\\w.])${helper}\\(\\s*['"\`]([A-Z][A-Z0-9_]*)['"\`]`, 'g');
    for (const m of code.matchAll(call)) names.add(m[1]!);
  }
  return names;
}

/** Names of functions (arrow or declared) whose first parameter `p` is used as `env[p]` in their body. */
function helpersReadingEnv(code: string): Set<string> {
  const helpers = new Set<string>();
  const definitions = [
    ...code.matchAll(/\bconst\s+(\w+)\s*=\s*\(\s*(\w+)\s*:\s*string\b[\s\S]*?=>\s*\{/g),
    ...code.matchAll(/\bfunction\s+(\w+)\s*\(\s*(\w+)\s*:\s*string\b[^)]*\)[^{]*\{/g),
  ];
  for (const m of definitions) {
    const body = bodyFrom(code, (m.index ?? 0) + m[0].length - 1);
    if (new RegExp(`\\benv\\??\\.?\\[\\s*${m[2]}\\s*\\]`).test(body)) helpers.add(m[1]!);
  }
  return helpers;
}

/** The text of the brace block that opens at `open`. */
function bodyFrom(code: string, open: number): string {
  let depth = 0;
  for (let i = open; i < code.length; i++) {
    if (code[i] === '{') depth++;
    else if (code[i] === '}' && --depth === 0) return code.slice(open, i + 1);
  }
  return code.slice(open);
}

/**
 * What the server reads: every file of src/ and workers/ except the CLI (src/cli, a client on an operator's
 * machine, not a pod). Helpers found in one file apply to the others (config.ts passes `int` to sub-readers
 * under the same name).
 */
function serverEnvReads(): Map<string, string[]> {
  const files = [...tsFiles(join(ROOT, 'src')), ...tsFiles(join(ROOT, 'workers'))].filter(
    (f) => !relative(ROOT, f).startsWith(join('src', 'cli')),
  );
  const sources = files.map((f) => ({ file: relative(ROOT, f), code: readFileSync(f, 'utf8') }));
  const helpers = new Set(sources.flatMap((s) => [...helpersReadingEnv(s.code)]));
  const where = new Map<string, string[]>();
  for (const s of sources) {
    for (const name of envReads(s.code, helpers)) where.set(name, [...(where.get(name) ?? []), s.file]);
  }
  return where;
}

// ---------------------------------------------------------------------------------------------------------------
// What the templates do with values.

interface Templates {
  files: { file: string; text: string }[];
  /** define name → body */
  defines: Map<string, string>;
}

function readTemplates(dir = join(CHART, 'templates')): Templates {
  const files = readdirSync(dir)
    .filter((f) => /\.(ya?ml|tpl)$/.test(f))
    .map((f) => ({ file: f, text: readFileSync(join(dir, f), 'utf8') }));
  return { files, defines: definesOf(files.map((f) => f.text).join('\n')) };
}

function stripComments(text: string): string {
  return text.replace(/\{\{-?\s*\/\*[\s\S]*?\*\/\s*-?\}\}/g, '');
}

function definesOf(text: string): Map<string, string> {
  const defines = new Map<string, string>();
  const code = stripComments(text);
  for (const m of code.matchAll(/\{\{-?\s*define\s+"([^"]+)"\s*-?\}\}/g)) {
    // The body runs to the matching end: count the blocks opened inside it.
    const start = (m.index ?? 0) + m[0].length;
    const action = /\{\{-?\s*(if|with|range|define|block|end)\b/g;
    action.lastIndex = start;
    let depth = 1;
    let end = code.length;
    for (let a = action.exec(code); a; a = action.exec(code)) {
      depth += a[1] === 'end' ? -1 : 1;
      if (depth === 0) {
        end = a.index;
        break;
      }
    }
    defines.set(m[1]!, code.slice(start, end));
  }
  return defines;
}

/**
 * Values paths a piece of template text refers to, each as a list of keys: `.Values.a.b` (with any receiver:
 * `$.Values`, `.root.Values`, `$root.Values`), and `$var.a.b` where `$var` was bound to a values path in the
 * file (`$v := .root.Values`, `$redis := $v.redis`, `$cfg := index $.Values $component` in a range over a list of
 * names, `$cfg := .cfg` where includes pass `"cfg" .Values.api`).
 */
function valuesRefs(text: string, bindings: Map<string, string[][]>): string[][] {
  const refs: string[][] = [];
  for (const m of text.matchAll(/\.Values((?:\.[A-Za-z_]\w*)*)/g)) refs.push(keys(m[1]!));
  for (const m of text.matchAll(/(\$[A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)*)/g)) {
    for (const base of bindings.get(m[1]!) ?? []) refs.push([...base, ...keys(m[2]!)]);
  }
  return refs;
}

const keys = (dotted: string) => dotted.split('.').filter(Boolean);

/** `$var` → the values paths it stands for, from the assignments of all templates. */
function valuesBindings(t: Templates): Map<string, string[][]> {
  const code = t.files.map((f) => stripComments(f.text)).join('\n');
  const bindings = new Map<string, string[][]>();
  // "key" .Values.path pairs passed in dicts: what `.key` means inside the included template.
  const dictArgs = new Map<string, string[][]>();
  for (const m of code.matchAll(/"(\w+)"\s+\$?\.Values((?:\.\w+)*)/g)) {
    dictArgs.set(m[1]!, [...(dictArgs.get(m[1]!) ?? []), keys(m[2]!)]);
  }
  const ranges = new Map<string, string[]>();
  for (const m of code.matchAll(/range\s+(\$\w+)\s*:=\s*list((?:\s+"\w+")+)/g)) {
    ranges.set(
      m[1]!,
      [...m[2]!.matchAll(/"(\w+)"/g)].map((x) => x[1]!),
    );
  }
  const assignments = [...code.matchAll(/(\$\w+)\s*:=\s*([^}]*?)\s*-?\}\}/g)].map((m) => ({
    name: m[1]!,
    expr: m[2]!.trim(),
  }));
  // Later assignments may build on earlier ones ($redis := $v.redis): resolve until nothing changes.
  for (let pass = 0; pass < 5; pass++) {
    for (const { name, expr } of assignments) {
      const resolved = resolveBinding(expr, bindings, dictArgs, ranges);
      if (resolved) bindings.set(name, resolved);
    }
  }
  return bindings;
}

/** The values paths one assignment's expression stands for, if it stands for any. */
function resolveBinding(
  expr: string,
  bindings: Map<string, string[][]>,
  dictArgs: Map<string, string[][]>,
  ranges: Map<string, string[]>,
): string[][] | undefined {
  const root = expr.match(/^(?:\$root|\.root|\$)?\.Values((?:\.\w+)*)$/);
  if (root) return [keys(root[1]!)];
  const variable = expr.match(/^(\$\w+)((?:\.\w+)*)$/);
  if (variable && bindings.has(variable[1]!))
    return bindings.get(variable[1]!)!.map((b) => [...b, ...keys(variable[2]!)]);
  const dictArg = expr.match(/^\.(\w+)$/);
  if (dictArg && dictArgs.has(dictArg[1]!)) return dictArgs.get(dictArg[1]!);
  const indexed = expr.match(/^index\s+(\$\.Values|\$\w+)\s+(\$\w+)$/);
  if (indexed && ranges.has(indexed[2]!)) {
    const bases = indexed[1] === '$.Values' ? [[]] : (bindings.get(indexed[1]!) ?? []);
    return bases.flatMap((b) => ranges.get(indexed[2]!)!.map((k) => [...b, k]));
  }
  return undefined;
}

/** Values refs of a text, following `include "name"` into the named templates (transitively). */
function refsWithIncludes(
  text: string,
  t: Templates,
  bindings: Map<string, string[][]>,
  seen = new Set<string>(),
) {
  const refs = valuesRefs(text, bindings);
  for (const m of text.matchAll(/include\s+"([^"]+)"/g)) {
    const name = m[1]!;
    if (seen.has(name) || name === 'keyturn.envVar' || name === 'keyturn.scalar') continue;
    seen.add(name);
    refs.push(...refsWithIncludes(t.defines.get(name) ?? '', t, bindings, seen));
  }
  return refs;
}

interface EnvEntry {
  name: string;
  file: string;
  /** values paths that decide whether and how it is rendered */
  drivenBy: string[][];
}

/**
 * The env entries of the templates: `include "keyturn.envVar" (list "NAME" <value>)` calls and literal
 * `- name: NAME` items (upper-case names only: volumes, ports and containers are lower-case), each with the
 * values it depends on, read from the entry itself and the if/with lines right above it.
 */
function envEntries(t: Templates, bindings = valuesBindings(t)): EnvEntry[] {
  const entries: EnvEntry[] = [];
  for (const { file, text } of t.files) {
    const lines = stripComments(text).split('\n');
    lines.forEach((line, i) => {
      const call = line.match(/include\s+"keyturn\.envVar"\s+\(list\s+"([A-Z][A-Z0-9_]*)"(.*)$/);
      const item = line.match(/^(\s*)- name:\s*"?([A-Z][A-Z0-9_]*)"?\s*$/);
      if (!call && !item) return;
      const context = [call ? call[2]! : line];
      if (item) {
        const indent = item[1]!.length;
        for (let j = i + 1; j < lines.length; j++) {
          const next = lines[j]!;
          if (/^\s*\{\{/.test(next) || next.search(/\S/) <= indent) break;
          context.push(next);
        }
      }
      for (let j = i - 1; j >= 0 && /^\s*\{\{-?\s*(if|with|else if)\b/.test(lines[j]!); j--)
        context.push(lines[j]!);
      const drivenBy = context.flatMap((c) => refsWithIncludes(c, t, bindings));
      entries.push({ name: (call ?? item)![call ? 1 : 2]!, file, drivenBy });
    });
  }
  return entries;
}

/** Every values path the templates use, with the file that uses it. */
function usedValuesPaths(t: Templates): { path: string[]; file: string }[] {
  const bindings = valuesBindings(t);
  return t.files.flatMap(({ file, text }) =>
    valuesRefs(stripComments(text), bindings)
      .filter((path) => path.length > 0)
      .map((path) => ({ path, file })),
  );
}

/** Whether a values path exists in the parsed values (a key may hold null or ""). */
function hasPath(values: unknown, path: string[]): boolean {
  let node: unknown = values;
  for (const key of path) {
    if (node === null || typeof node !== 'object' || Array.isArray(node) || !(key in node)) return false;
    node = (node as Record<string, unknown>)[key];
  }
  return true;
}

/** The variables of `reads` that the chart leaves unsettable: neither driven by a values key nor excepted. */
function unsettable(reads: Iterable<string>, entries: EnvEntry[]): string[] {
  const driven = new Set(entries.filter((e) => e.drivenBy.length > 0).map((e) => e.name));
  return [...reads].filter((name) => !driven.has(name) && !EXCEPTIONS[name]).sort();
}

// ---------------------------------------------------------------------------------------------------------------

const templates = readTemplates();
const values = parse(readFileSync(join(CHART, 'values.yaml'), 'utf8'));
const reads = serverEnvReads();
const entries = envEntries(templates);

describe('the extractors find what they must (each check can fail)', () => {
  it('envReads finds env.X, env[X], process.env.X and calls of helpers that read env[param]', () => {
    const source = `
      const int = (name: string, fallback: number): number => { const raw = env[name]; return Number(raw ?? fallback); };
      function dur(key: string, d: string) { return env?.[key] ?? d; }
      const a = env.ALPHA?.trim(); const b = env['BRAVO']; const c = process.env.CHARLIE;
      const d = int('DELTA', 1); const e = dur("ECHO", '1m'); const label = other('FOXTROT', 1);
      // env.GOLF is only a comment
    `;
    expect([...envReads(source)].sort()).toEqual(['ALPHA', 'BRAVO', 'CHARLIE', 'DELTA', 'ECHO']);
  });

  it('finds, in the real sources, variables read each way config.ts reads them', () => {
    expect(reads.get('HOST')).toContain(join('src', 'config', 'config.ts')); // env.HOST
    expect(reads.has('KEYTURN_ROTATION_ATTEMPTS')).toBe(true); // int('…')
    expect(reads.has('KEYTURN_LEASE_MAX_TTL')).toBe(true); // duration('…')
    expect(reads.has('KEYTURN_NOTIFY_ATTEMPTS')).toBe(true); // int passed to notificationsConfig
    expect(reads.get('NODE_ENV')).toContain(join('src', 'boot.ts')); // process.env outside config
    expect(reads.has('KEYTURN_TOKEN')).toBe(false); // the CLI's, not the server's
  });

  it('every variable config.ts names is found as read (the extractor misses no way of reading)', () => {
    const configDir = join(ROOT, 'src', 'config');
    // Names inside string literals (messages, helper calls), not ${…} in them: SCREAMING_CASE constants are no variables.
    const named = tsFiles(configDir).flatMap((f) =>
      [...stripTsComments(readFileSync(f, 'utf8')).matchAll(/(['"`])((?:\\.|(?!\1)[^\\])*)\1/g)].flatMap(
        (lit) =>
          [
            ...lit[2]!.replace(/\$\{[^}]*\}/g, '').matchAll(/\b((?:KEYTURN|REDIS|VAULT|AWS)_[A-Z0-9_]+)\b/g),
          ].map((m) => m[1]!),
      ),
    );
    expect(named).toContain('KEYTURN_AUDIT_SIGNING_KEY_FILE');
    const missed = named.filter((n) => !reads.has(n));
    expect([...new Set(missed)]).toEqual([]);
  });

  it('envEntries tells a values-driven entry from a fixed one, through variables and includes', () => {
    const t: Templates = {
      files: [
        {
          file: 'x.tpl',
          text: [
            '{{- define "x.env" -}}',
            '{{- $v := .root.Values -}}',
            '{{- $r := $v.redis -}}',
            '- name: FIXED',
            '  value: "1"',
            '{{- include "keyturn.envVar" (list "DIRECT" $r.url) }}',
            '{{- if $v.flag }}',
            '{{- include "keyturn.envVar" (list "GUARDED" "on") }}',
            '{{- end }}',
            '- name: VIA_INCLUDE',
            '  valueFrom:',
            '    secretKeyRef:',
            '      name: {{ include "x.secret" .root }}',
            '{{- end }}',
            '{{- define "x.secret" -}}{{ .Values.secrets.existingSecret }}{{- end }}',
          ].join('\n'),
        },
      ],
      defines: new Map(),
    };
    t.defines = definesOf(t.files[0]!.text);
    const found = Object.fromEntries(envEntries(t).map((e) => [e.name, e.drivenBy.map((p) => p.join('.'))]));
    expect(found).toEqual({
      FIXED: [],
      DIRECT: ['redis.url'],
      GUARDED: ['flag'],
      VIA_INCLUDE: ['secrets.existingSecret'],
    });
    expect(unsettable(['FIXED', 'DIRECT', 'NOT_IN_CHART'], envEntries(t))).toEqual(['FIXED', 'NOT_IN_CHART']);
  });

  it('hasPath refuses a path values.yaml does not have', () => {
    expect(hasPath(values, ['redis', 'sentinel', 'hosts'])).toBe(true);
    expect(hasPath(values, ['redis', 'sentinel', 'nope'])).toBe(false);
    expect(hasPath(values, ['redis', 'url', 'deeper'])).toBe(false);
  });
});

describe('helm/keyturn', () => {
  it('every variable the server reads can be set from values.yaml, or is an explained exception', () => {
    const missing = unsettable(reads.keys(), entries).map(
      (n) => `${n} (read in ${reads.get(n)!.join(', ')})`,
    );
    expect(missing).toEqual([]);
  });

  it('the variables of the Redis topologies and Vault Kubernetes auth (issue 12) are set from values', () => {
    // Not all of them are read by config.ts on every branch yet; the chart must have them when they are.
    const driven = new Set(entries.filter((e) => e.drivenBy.length > 0).map((e) => e.name));
    const issue12 = [
      'REDIS_URL',
      'REDIS_SENTINEL_HOSTS',
      'REDIS_SENTINEL_MASTER_NAME',
      'REDIS_SENTINEL_PASSWORD',
      'REDIS_CLUSTER_HOSTS',
      'REDIS_USERNAME',
      'REDIS_PASSWORD',
      'REDIS_TLS',
      'REDIS_TLS_CA_FILE',
      'KEYTURN_REDIS_MIN_REPLICAS_ACK',
      'KEYTURN_REDIS_WAIT_TIMEOUT_MS',
      'VAULT_AUTH_METHOD',
      'VAULT_K8S_ROLE',
      'VAULT_K8S_TOKEN_PATH',
      'VAULT_K8S_MOUNT',
    ];
    expect(issue12.filter((n) => !driven.has(n))).toEqual([]);
  });

  it('the exceptions are true: read by the server, fixed ones set by the chart, extraEnv ones not', () => {
    const names = new Set(entries.map((e) => e.name));
    for (const [name, { kind, reason }] of Object.entries(EXCEPTIONS)) {
      expect(reason.length, name).toBeGreaterThan(20);
      expect(reads.has(name), `${name} is no longer read: drop its exception`).toBe(true);
      expect(names.has(name), `${name} (${kind})`).toBe(kind === 'fixed');
    }
  });

  it('every values path the templates use exists in values.yaml', () => {
    const used = usedValuesPaths(templates);
    expect(used.length).toBeGreaterThan(100);
    const missing = used
      .filter((u) => !hasPath(values, u.path))
      .map((u) => `${u.path.join('.')} (${u.file})`);
    expect([...new Set(missing)]).toEqual([]);
  });

  it('a values path that does not exist is reported', () => {
    const broken: Templates = {
      files: [
        { file: 'broken.yaml', text: '{{- $v := .Values }}{{ $v.redis.sentinel.hostz }} {{ .Values.nope }}' },
      ],
      defines: new Map(),
    };
    const missing = usedValuesPaths(broken).filter((u) => !hasPath(values, u.path));
    expect(missing.map((u) => u.path.join('.'))).toEqual(['nope', 'redis.sentinel.hostz']);
  });

  it('every template block is closed and every included template is defined', () => {
    for (const { file, text } of templates.files) {
      const code = stripComments(text);
      const opened = [...code.matchAll(/\{\{-?\s*(if|with|range|define|block)\b/g)].length;
      const closed = [...code.matchAll(/\{\{-?\s*end\s*-?\}\}/g)].length;
      expect(closed, file).toBe(opened);
      for (const m of code.matchAll(/include\s+"([^"]+)"/g))
        expect(templates.defines.has(m[1]!), m[1]).toBe(true);
    }
  });

  it('values.yaml holds no secret outside secrets.*: passwords, tokens and keys are Secret references', () => {
    // secrets.* (only with secrets.create) is the one place, and the chart puts it in a Secret of its own.
    const secretLeaf =
      /^(password|token|secretId|roleId|accessKeyId|secretAccessKey|sessionToken|webhookSecret)$/i;
    const inline: string[] = [];
    const walk = (node: unknown, path: string[]) => {
      if (path[0] === 'secrets') return;
      if (node !== null && typeof node === 'object') {
        for (const [k, v] of Object.entries(node)) walk(v, [...path, k]);
      } else if (secretLeaf.test(path.at(-1) ?? '')) {
        inline.push(path.join('.'));
      }
    };
    walk(values, []);
    expect(inline).toEqual([]);
    // …and the check sees one:
    const before = inline.length;
    walk({ redis: { password: 'hunter2' } }, []);
    expect(inline.length).toBe(before + 1);
  });
});

function stripTsComments(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
}
