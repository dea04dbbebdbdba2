// The agent's configuration file (SPEC, "Agent"): YAML checked against a TypeBox schema with Ajv, as the API and
// the tokens file are. Every problem is one sentence naming its place (`templates[1].mode`); the CLI prints them on
// one line and exits non-zero. Messages name places and rules, never values: a token pasted into the wrong field
// must not be echoed into a log.
import { readFile } from 'node:fs/promises';
import { constants as os } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { ErrorObject } from 'ajv';
import { Type } from 'typebox';
import { parse, YAMLError } from 'yaml';
import { pathOf, schemaValidator, unknownFieldMessage } from '../config/file-schema.ts';
import { checkTemplate } from './render.ts';

export interface AgentTemplate {
  credential: string;
  /** Absolute path of the rendered file. */
  destination: string;
  /** The template text (read from templateFile when that was given). */
  template: string;
  /** Where the text came from, for logs: "inline" or the template file's path. */
  source: string;
  /** File mode, e.g. 0o600. */
  mode: number;
  /** argv run after each change (no shell). */
  command?: string[];
  /** Signal sent to the process whose pid is in pidFile after each change. */
  signal?: NodeJS.Signals;
  pidFile?: string;
  /** How long the command may run (ms). */
  commandTimeoutMs: number;
}

export interface AgentConfig {
  url: string;
  auth: { kind: 'token' | 'jwt'; file: string };
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  healthFile?: string;
  healthPort?: number;
  healthHost: string;
  templates: AgentTemplate[];
}

export class AgentConfigError extends Error {
  readonly problems: string[];
  constructor(source: string, problems: string[]) {
    super(`${source}: ${problems.join('; ')}`);
    this.name = 'AgentConfigError';
    this.problems = problems;
  }
}

const CREDENTIAL_ID = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';
const SIGNALS = Object.keys(os.signals).filter((s) => !['SIGKILL', 'SIGSTOP'].includes(s));

const MSG = {
  url: 'must be the Keyturn API address, such as https://keyturn.example:8080',
  file: 'must be a file path',
  credential: 'must be a credential id: a letter or digit, then up to 127 letters, digits, ".", "_" or "-"',
  destination: 'must be the path of the file to write',
  template: 'must be the template text',
  mode: 'must be an octal file mode in quotes, such as "0600" or "0640"',
  command:
    'must be a non-empty list of strings: the program and its arguments (no shell; write ["sh", "-c", "…"] for one)',
  signal: `must be a signal name such as SIGHUP (one of ${['SIGHUP', 'SIGUSR1', 'SIGUSR2', 'SIGTERM'].join(', ')}, …)`,
  commandTimeout: 'must be a whole number of seconds between 1 and 3600',
  healthPort: 'must be a port number between 1 and 65535',
  healthHost: 'must be an address to listen on, such as 127.0.0.1 or 0.0.0.0',
  templates: 'must be a non-empty list of templates',
} as const;
const d = (description: string) => ({ description });
const Path = (message: string = MSG.file) => Type.String({ minLength: 1, maxLength: 4096, ...d(message) });

const TemplateSchema = Type.Object(
  {
    credential: Type.String({ pattern: CREDENTIAL_ID, ...d(MSG.credential) }),
    destination: Path(MSG.destination),
    template: Type.Optional(Type.String({ minLength: 1, maxLength: 1_000_000, ...d(MSG.template) })),
    templateFile: Type.Optional(Path()),
    mode: Type.Optional(Type.String({ pattern: '^0?[0-7]{3}$', ...d(MSG.mode) })),
    command: Type.Optional(
      Type.Array(Type.String({ minLength: 1, maxLength: 8192, ...d(MSG.command) }), {
        minItems: 1,
        maxItems: 256,
        ...d(MSG.command),
      }),
    ),
    signal: Type.Optional(Type.String({ enum: SIGNALS, ...d(MSG.signal) })),
    pidFile: Type.Optional(Path()),
    commandTimeout: Type.Optional(Type.Integer({ minimum: 1, maximum: 3600, ...d(MSG.commandTimeout) })),
  },
  { additionalProperties: false },
);

/** The JSON Schema of agent.yaml. */
export const AgentConfigSchema = Type.Object(
  {
    url: Type.String({ minLength: 1, maxLength: 2048, ...d(MSG.url) }),
    tokenFile: Type.Optional(Path()),
    jwtFile: Type.Optional(Path()),
    caFile: Type.Optional(Path()),
    certFile: Type.Optional(Path()),
    keyFile: Type.Optional(Path()),
    healthFile: Type.Optional(Path()),
    healthPort: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, ...d(MSG.healthPort) })),
    healthHost: Type.Optional(Type.String({ minLength: 1, maxLength: 255, ...d(MSG.healthHost) })),
    templates: Type.Array(TemplateSchema, { minItems: 1, maxItems: 1000, ...d(MSG.templates) }),
  },
  { additionalProperties: false },
);

const validate = schemaValidator(AgentConfigSchema);

const HINTS: Record<string, string> = {
  token: ': the file names a token file (tokenFile), never the token itself',
  jwt: ': did you mean jwtFile (the path of a service-account token)?',
  ca: ': did you mean caFile?',
  cert: ': did you mean certFile?',
  key: ': did you mean keyFile?',
  dest: ': did you mean destination?',
  path: ': did you mean destination?',
  file: ': did you mean templateFile?',
  contents: ': did you mean template?',
  perms: ': did you mean mode?',
  exec: ': did you mean command?',
};

function describeError(e: ErrorObject): string | undefined {
  const at = pathOf(e.instancePath);
  const description = (e.parentSchema as { description?: string } | undefined)?.description;
  switch (e.keyword) {
    case 'additionalProperties':
      return unknownFieldMessage(e, HINTS);
    case 'required':
      return `${pathOf(e.instancePath, String((e.params as { missingProperty: string }).missingProperty))} is required`;
    case 'type':
      if (e.instancePath === '') return 'the file must be a YAML mapping with url, tokenFile and templates';
      return `${at} ${description ?? `must be a ${(e.params as { type: string }).type}`}`;
    default:
      return `${at} ${description ?? e.message ?? 'is not valid'}`;
  }
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

function checkUrl(raw: unknown, problems: string[]): void {
  if (typeof raw !== 'string' || raw === '') return;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    problems.push(`url ${MSG.url}`);
    return;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') problems.push(`url ${MSG.url}`);
  else if (url.username || url.password)
    problems.push('url must not carry a user name or password: put the token in tokenFile');
  else if (url.search || url.hash) problems.push('url must not have a query or a fragment');
}

/** Problems the schema cannot say: one of tokenFile/jwtFile, template or templateFile, command or signal. */
function crossCheck(data: Obj, problems: string[]): void {
  checkUrl(data.url, problems);
  if (data.tokenFile !== undefined && data.jwtFile !== undefined)
    problems.push(
      'tokenFile and jwtFile are both set: give one (jwtFile for a Kubernetes service-account token)',
    );
  else if (data.tokenFile === undefined && data.jwtFile === undefined)
    problems.push(
      'tokenFile or jwtFile is required: the file holding the bearer token Keyturn gave this agent',
    );
  if ((data.certFile === undefined) !== (data.keyFile === undefined))
    problems.push('certFile and keyFile go together: give both for a client certificate, or neither');
  const templates = Array.isArray(data.templates) ? data.templates : [];
  const destinations = new Map<string, number>();
  templates.forEach((t, i) => {
    if (!isObj(t)) return;
    const at = `templates[${i}]`;
    if (t.template !== undefined && t.templateFile !== undefined)
      problems.push(`${at} has both template and templateFile: give one`);
    else if (t.template === undefined && t.templateFile === undefined)
      problems.push(`${at}.template or ${at}.templateFile is required`);
    if (t.command !== undefined && (t.signal !== undefined || t.pidFile !== undefined))
      problems.push(`${at} has both command and signal/pidFile: give one way to reload`);
    if ((t.signal === undefined) !== (t.pidFile === undefined))
      problems.push(`${at}.signal and ${at}.pidFile go together: the signal is sent to the pid in pidFile`);
    if (typeof t.destination === 'string') {
      const first = destinations.get(t.destination);
      if (first !== undefined)
        problems.push(
          `${at}.destination is also the destination of templates[${first}]: one file, one template`,
        );
      else destinations.set(t.destination, i);
    }
  });
}

/** Checks already-parsed data; template texts are read and checked by load(). */
export function checkAgentConfig(data: unknown): string[] {
  const problems = validate(data)
    .map(describeError)
    .filter((p): p is string => p !== undefined);
  if (isObj(data)) crossCheck(data, problems);
  return [...new Set(problems)];
}

/** Reads, parses and checks agent.yaml. Relative paths in it are taken from the file's own directory. */
export async function loadAgentConfig(path: string): Promise<AgentConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new AgentConfigError(path, [
      `cannot read the configuration: ${(err as NodeJS.ErrnoException).code ?? 'error'}`,
    ]);
  }
  let data: unknown;
  try {
    data = parse(text, { maxAliasCount: 100 });
  } catch (err) {
    // The YAML parser's message quotes the offending line, which could hold anything: keep only its position.
    const pos = err instanceof YAMLError ? err.linePos?.[0] : undefined;
    throw new AgentConfigError(path, [
      `is not valid YAML${pos ? ` (line ${pos.line}, column ${pos.col})` : ''}${err instanceof YAMLError ? `: ${err.code}` : ''}`,
    ]);
  }
  const problems = checkAgentConfig(data);
  if (problems.length > 0) throw new AgentConfigError(path, problems);
  const raw = data as Obj & { templates: Obj[] };
  const base = dirname(resolve(path));
  const abs = (p: unknown) => (typeof p === 'string' ? (isAbsolute(p) ? p : resolve(base, p)) : undefined);

  const templates: AgentTemplate[] = [];
  for (const [i, t] of raw.templates.entries()) {
    const at = `templates[${i}]`;
    let template = t.template as string | undefined;
    let source = 'inline';
    if (template === undefined) {
      source = abs(t.templateFile) as string;
      try {
        template = await readFile(source, 'utf8');
      } catch (err) {
        problems.push(`${at}.templateFile cannot be read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
        continue;
      }
    }
    const bad = checkTemplate(template);
    if (bad) {
      problems.push(`${at}.${source === 'inline' ? 'template' : 'templateFile'} ${bad}`);
      continue;
    }
    templates.push({
      credential: t.credential as string,
      destination: abs(t.destination) as string,
      template,
      source,
      mode: Number.parseInt((t.mode as string | undefined) ?? '0600', 8),
      ...(t.command ? { command: t.command as string[] } : {}),
      ...(t.signal ? { signal: t.signal as NodeJS.Signals, pidFile: abs(t.pidFile) as string } : {}),
      commandTimeoutMs: ((t.commandTimeout as number | undefined) ?? 60) * 1000,
    });
  }
  if (problems.length > 0) throw new AgentConfigError(path, problems);
  const authFile = (raw.tokenFile ?? raw.jwtFile) as string;
  return {
    url: (raw.url as string).replace(/\/+$/, ''),
    auth: { kind: raw.tokenFile !== undefined ? 'token' : 'jwt', file: abs(authFile) as string },
    ...(raw.caFile ? { caFile: abs(raw.caFile) as string } : {}),
    ...(raw.certFile ? { certFile: abs(raw.certFile) as string, keyFile: abs(raw.keyFile) as string } : {}),
    ...(raw.healthFile ? { healthFile: abs(raw.healthFile) as string } : {}),
    ...(raw.healthPort !== undefined ? { healthPort: raw.healthPort as number } : {}),
    healthHost: (raw.healthHost as string | undefined) ?? '127.0.0.1',
    templates,
  };
}
