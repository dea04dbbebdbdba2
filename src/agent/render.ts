// Rendering an agent template with Mustache (mustache.js): logic-less, so a template cannot run code. It can only
// insert the secret's fields and apply the helper sections below, which are this module's own functions. Values
// go in as they are (no HTML escaping: a password with & or < must reach the file unchanged). Names are checked
// when the configuration is loaded: a misspelt field is a start-up error, not an empty string in a config file.

import Mustache, { type TemplateSpans } from 'mustache';
import type { SecretFields } from '../client/connection.ts';

/** What GET /v1/credentials/:id/secret answers, as far as templates use it. */
export type { SecretFields };

export const FIELDS = [
  'username',
  'password',
  'host',
  'port',
  'database',
  'version',
  'rotatedAt',
  // AWS IAM credentials; empty for others.
  'accessKeyId',
  'secretAccessKey',
] as const;

type Lambda = () => (text: string, render: (text: string) => string) => string;
const section =
  (fn: (rendered: string) => string): Lambda =>
  () =>
  (text, render) =>
    fn(render(text));

/**
 * Helper sections: `{{#urlencode}}{{password}}{{/urlencode}}` for connection strings, `{{#json}}…{{/json}}` for a
 * JSON or YAML string (quotes included), `{{#base64}}…{{/base64}}`, `{{#shell}}…{{/shell}}` for a single-quoted
 * shell word (an env file sourced by sh).
 */
const HELPERS: Record<string, Lambda> = {
  urlencode: section((s) => encodeURIComponent(s)),
  json: section((s) => JSON.stringify(s)),
  base64: section((s) => Buffer.from(s, 'utf8').toString('base64')),
  shell: section((s) => `'${s.replace(/'/g, `'\\''`)}'`),
};

/** Plain fields that save a section in the common case: `{{urlencoded.password}}`, `{{urlencoded.username}}`. */
const DERIVED = ['urlencoded.username', 'urlencoded.password'];

const KNOWN_VALUES = new Set<string>([...FIELDS, ...DERIVED, '.']);
const KNOWN_SECTIONS = new Set<string>([...Object.keys(HELPERS), ...FIELDS]);

/** Why a template cannot be used (a sentence completing "templates[0].template …"), or undefined when it can. */
export function checkTemplate(template: string): string | undefined {
  let spans: TemplateSpans;
  try {
    spans = Mustache.parse(template);
  } catch (err) {
    // mustache.js says what is unclosed and where, quoting only tag names.
    return `is not a valid Mustache template: ${(err as Error).message.split('\n')[0]}`;
  }
  const walk = (list: TemplateSpans): string | undefined => {
    for (const [type, name, , , children] of list) {
      if (type === '>') return `uses a partial ({{> …}}), which the agent does not offer`;
      if ((type === 'name' || type === '&') && !KNOWN_VALUES.has(name)) return unknown(name);
      if ((type === '#' || type === '^') && !KNOWN_SECTIONS.has(name)) return unknown(name);
      if (children) {
        const bad = walk(children);
        if (bad) return bad;
      }
    }
    return undefined;
  };
  return walk(spans);
}

function unknown(name: string): string {
  const shown = /^[A-Za-z_.]{1,40}$/.test(name) ? `"${name}"` : '(not shown)';
  return `uses an unknown name ${shown}: the fields are ${FIELDS.join(', ')}, ${DERIVED.join(', ')}; the helper sections are ${Object.keys(HELPERS).join(', ')}`;
}

/** The file's content for this secret. */
export function render(template: string, secret: SecretFields): string {
  // A view without a prototype: no name can reach Object's methods.
  const view = Object.assign(Object.create(null) as Record<string, unknown>, {
    username: secret.username,
    password: secret.password,
    host: secret.host,
    port: secret.port,
    database: secret.database ?? '',
    version: secret.version,
    rotatedAt: secret.rotatedAt,
    accessKeyId: secret.accessKeyId ?? '',
    secretAccessKey: secret.secretAccessKey ?? '',
    urlencoded: Object.assign(Object.create(null) as Record<string, string>, {
      username: encodeURIComponent(secret.username),
      password: encodeURIComponent(secret.password),
    }),
    ...HELPERS,
  });
  return Mustache.render(template, view, {}, { escape: (value) => String(value) });
}
