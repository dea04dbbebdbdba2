// The declarative files of `keyturn plan` and `keyturn apply` (SPEC, "Declarative files"): YAML documents, each an
// API body plus `kind: Connection | Credential`, checked against the very schemas the API validates its bodies with,
// so a file that passes here is one the API accepts field for field. Every problem names the file, the line and the
// field, as an editor or a CI log needs to point at it.
//
// Secret fields never hold the secret: they hold a reference that the CLI resolves on the operator's machine (see
// references.ts). A literal value there is refused unless the caller says --allow-literal-secrets, because a file
// kept in Git is the last place a password should be.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join, resolve } from 'node:path';
import Ajv, { type ErrorObject } from 'ajv';
import addFormats from 'ajv-formats';
import { isMap, isScalar, LineCounter, parseAllDocuments, type Document as YamlDocument } from 'yaml';
import { CreateConnectionBody, CreateCredentialBody } from '../../api/schemas.ts';
import { parseReference, type Reference } from './references.ts';

export type Kind = 'Connection' | 'Credential';

/** Where a secret comes from: a reference to resolve, or (with --allow-literal-secrets) the value itself. */
export type SecretSource = { reference: Reference } | { literal: string };

export interface SecretField {
  /** The path of the field in the API body, e.g. ["admin", "password"]. */
  path: string[];
  source: SecretSource;
  line: number;
}

/** One object the files declare. `body` is the API body without its secrets (they are in `secrets`). */
export interface DeclaredObject {
  kind: Kind;
  id: string;
  body: Record<string, unknown>;
  secrets: SecretField[];
  file: string;
  line: number;
}

/** A problem in a file: the place and the field, and what to change. */
export class FileError extends Error {
  readonly file: string;
  readonly line: number;
  readonly field: string | undefined;
  constructor(file: string, line: number, field: string | undefined, message: string) {
    super(`${file}:${line}: ${field ? `${field}: ` : ''}${message}`);
    this.name = 'FileError';
    this.file = file;
    this.line = line;
    this.field = field;
  }
}

/** Every problem of the files at once, so one run shows all that needs fixing. */
export class FilesError extends Error {
  readonly problems: FileError[];
  constructor(problems: FileError[]) {
    super(problems.map((p) => p.message).join('\n'));
    this.name = 'FilesError';
    this.problems = problems;
  }
}

/** The fields that hold secrets, per kind: the only places a reference is taken, and where literals are refused. */
export const SECRET_FIELDS: Record<Kind, string[][]> = {
  Connection: [['admin', 'password']],
  Credential: [['currentPassword']],
};

// As the API's validator of bodies (src/api/app.ts): no coercion, no defaults, unknown fields refused.
const ajv = new Ajv.default({
  allErrors: true,
  removeAdditional: false,
  useDefaults: false,
  coerceTypes: false,
  strict: false,
  verbose: true, // the failing schema's description makes the message
});
addFormats.default(ajv);
// Compiled on first use: commands that read no file do not pay for it.
let compiled: Record<Kind, ReturnType<typeof ajv.compile>> | undefined;
const validators = () => {
  compiled ??= {
    Connection: ajv.compile(CreateConnectionBody),
    Credential: ajv.compile(CreateCredentialBody),
  };
  return compiled;
};

/** The files a path names: a file, or the YAML files of a directory and its subdirectories, in name order. */
export function filesOf(path: string): string[] {
  let stat: ReturnType<typeof statSync>;
  try {
    stat = statSync(path);
  } catch (err) {
    throw new FilesError([new FileError(path, 0, undefined, `cannot read it: ${(err as Error).message}`)]);
  }
  if (!stat.isDirectory()) return [path];
  return readdirSync(path, { withFileTypes: true })
    .sort((a, b) => a.name.localeCompare(b.name))
    .flatMap((entry) => {
      const child = join(path, entry.name);
      if (entry.isDirectory()) return filesOf(child);
      return ['.yaml', '.yml'].includes(extname(entry.name)) ? [child] : [];
    });
}

/**
 * Reads and checks every document of the files `paths` name. Throws FilesError with every problem found; returns
 * the objects otherwise, in file order.
 */
export function loadDeclarations(
  paths: string[],
  options: { allowLiteralSecrets: boolean },
): DeclaredObject[] {
  const problems: FileError[] = [];
  const objects: DeclaredObject[] = [];
  const files = paths.flatMap(filesOf);
  if (files.length === 0) {
    throw new FilesError([new FileError(paths.join(', '), 0, undefined, 'holds no .yaml or .yml file')]);
  }
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      problems.push(new FileError(file, 0, undefined, `cannot read it: ${(err as Error).message}`));
      continue;
    }
    const lines = new LineCounter();
    for (const doc of parseAllDocuments(text, { lineCounter: lines, uniqueKeys: true })) {
      const lineOf = (offset: number | undefined) => (offset === undefined ? 1 : lines.linePos(offset).line);
      if (!('errors' in doc) || doc.errors.length > 0) {
        for (const e of 'errors' in doc ? doc.errors : []) {
          problems.push(new FileError(file, e.linePos?.[0].line ?? 1, undefined, e.message.split('\n')[0]!));
        }
        continue;
      }
      // An empty document (a trailing or doubled ---) declares nothing.
      if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) continue;
      const found = checkDocument(file, doc, lineOf, options);
      if (Array.isArray(found)) problems.push(...found);
      else objects.push(found);
    }
  }
  // One id, one object per kind: two documents for the same id would fight over it.
  const seen = new Map<string, DeclaredObject>();
  for (const o of objects) {
    const key = `${o.kind}/${o.id}`;
    const first = seen.get(key);
    if (first) {
      problems.push(
        new FileError(
          o.file,
          o.line,
          'id',
          `${o.kind} "${o.id}" is declared twice (first at ${first.file}:${first.line}): keep one`,
        ),
      );
    } else seen.set(key, o);
  }
  if (problems.length > 0) throw new FilesError(problems);
  return objects;
}

function checkDocument(
  file: string,
  doc: YamlDocument.Parsed,
  lineOf: (offset: number | undefined) => number,
  options: { allowLiteralSecrets: boolean },
): DeclaredObject | FileError[] {
  const top = doc.contents;
  const docLine = lineOf(top?.range?.[0]);
  if (!isMap(top)) {
    return [
      new FileError(file, docLine, undefined, 'a document must be a mapping with `kind` and the API fields'),
    ];
  }
  const value = doc.toJS() as Record<string, unknown>;
  const kindNode = doc.get('kind', true);
  const kind = value.kind;
  if (kind !== 'Connection' && kind !== 'Credential') {
    return [
      new FileError(
        file,
        lineOf(isScalar(kindNode) ? kindNode.range?.[0] : top.range?.[0]),
        'kind',
        `${kind === undefined ? 'is missing' : `${JSON.stringify(kind)} is not a kind`}: use Connection or Credential`,
      ),
    ];
  }
  const nodeLine = (path: (string | number)[]) => {
    for (let n = path.length; n >= 0; n--) {
      const node = doc.getIn(path.slice(0, n), true) as { range?: [number, number, number] } | undefined;
      if (node?.range) return lineOf(node.range[0]);
    }
    return docLine;
  };
  const keyLine = (path: (string | number)[], key: string) => {
    const parent = doc.getIn(path, true);
    if (isMap(parent)) {
      const pair = parent.items.find((p) => isScalar(p.key) && p.key.value === key);
      if (pair && isScalar(pair.key) && pair.key.range) return lineOf(pair.key.range[0]);
    }
    return nodeLine(path);
  };

  const problems: FileError[] = [];
  const body: Record<string, unknown> = structuredClone(value);
  delete body.kind;
  const secrets: SecretField[] = [];
  for (const path of SECRET_FIELDS[kind]) {
    const parent = path.slice(0, -1).reduce<unknown>((o, k) => (o as Record<string, unknown>)?.[k], body) as
      | Record<string, unknown>
      | undefined;
    const last = path.at(-1)!;
    if (!parent || typeof parent !== 'object' || !(last in parent)) continue;
    const raw = parent[last];
    const line = nodeLine(path);
    const field = path.join('.');
    if (typeof raw === 'string') {
      if (!options.allowLiteralSecrets) {
        problems.push(
          new FileError(
            file,
            line,
            field,
            'holds a literal secret: write a reference instead ({fromEnv: NAME}, {fromFile: path}, {fromVault: {path, key}} or {fromAws: {secretId, key}}), or pass --allow-literal-secrets',
          ),
        );
        continue;
      }
      secrets.push({ path, source: { literal: raw }, line });
    } else {
      const parsed = parseReference(raw);
      if (typeof parsed === 'string') {
        problems.push(new FileError(file, line, field, parsed));
        continue;
      }
      secrets.push({ path, source: { reference: { ...parsed, baseFile: resolve(file) } }, line });
    }
    // The schema checks the rest with a stand-in of the right type; the value is resolved only when needed.
    parent[last] = 'reference';
  }

  const validate = validators()[kind];
  if (!validate(body)) {
    for (const e of folded(validate.errors ?? [])) {
      const path = e.instancePath.split('/').filter(Boolean);
      if (e.keyword === 'additionalProperties') {
        const name = String(e.params.additionalProperty);
        problems.push(
          new FileError(file, keyLine(path, name), [...path, name].join('.'), `is not a field of ${kind}`),
        );
      } else if (e.keyword === 'required') {
        const name = String(e.params.missingProperty);
        problems.push(new FileError(file, nodeLine(path), [...path, name].join('.'), 'is required'));
      } else {
        problems.push(new FileError(file, nodeLine(path), path.join('.') || undefined, describe(e)));
      }
    }
  }
  if (problems.length > 0) return problems;
  return { kind, id: String(body.id), body, secrets, file, line: docLine };
}

/**
 * Ajv reports every branch of a union (a schedule is `every` or `cron`); the branch that came closest, the one with
 * the fewest problems, is what the author meant. Then one message per field is what a person can act on.
 */
function folded(all: ErrorObject[]): ErrorObject[] {
  let errors = all;
  for (const union of all.filter((e) => e.keyword === 'anyOf')) {
    const base = union.schemaPath.replace(/\/anyOf$/, '/anyOf/');
    const branches = new Map<string, ErrorObject[]>();
    for (const e of errors) {
      if (!e.schemaPath.startsWith(base)) continue;
      const branch = e.schemaPath.slice(base.length).split('/')[0]!;
      branches.set(branch, [...(branches.get(branch) ?? []), e]);
    }
    if (branches.size < 2) continue;
    const best = [...branches.values()].sort((a, b) => a.length - b.length)[0]!;
    errors = errors.filter((e) => e === union || !e.schemaPath.startsWith(base) || best.includes(e));
    errors = errors.filter((e) => e !== union);
  }
  const byField = new Map<string, ErrorObject[]>();
  for (const e of errors) {
    const key =
      e.keyword === 'additionalProperties'
        ? `${e.instancePath}/${String(e.params.additionalProperty)}`
        : e.keyword === 'required'
          ? `${e.instancePath}/${String(e.params.missingProperty)}`
          : e.instancePath;
    byField.set(key, [...(byField.get(key) ?? []), e]);
  }
  const out: ErrorObject[] = [];
  for (const list of byField.values()) {
    const consts = list.filter((e) => e.keyword === 'const' || e.keyword === 'enum');
    if (consts.length > 0) {
      const allowed = consts.flatMap((e) =>
        e.keyword === 'const' ? [e.params.allowedValue] : (e.params.allowedValues as unknown[]),
      );
      out.push({ ...consts[0]!, keyword: 'enum', params: { allowedValues: allowed } });
      continue;
    }
    const specific = list.filter((e) => e.keyword !== 'anyOf');
    out.push(specific[0] ?? list[0]!);
  }
  // A union's own anyOf failure is noise when a branch said what is wrong in the same place.
  return out.filter(
    (e) => e.keyword !== 'anyOf' || !out.some((o) => o !== e && o.instancePath.startsWith(e.instancePath)),
  );
}

function describe(e: ErrorObject): string {
  if (e.keyword === 'enum') {
    return `must be one of ${(e.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
  }
  if (e.keyword === 'anyOf') return 'matches none of the forms this field takes (see the API reference)';
  const description = (e.parentSchema as { description?: unknown } | undefined)?.description;
  if (e.keyword === 'pattern' && typeof description === 'string') return `must be: ${description}`;
  return `${e.message ?? 'is not valid'}${typeof description === 'string' ? ` (${description})` : ''}`;
}
