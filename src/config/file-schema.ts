// What the YAML files Keyturn reads (the tokens file, `keyturn agent`'s configuration) share: a schema compiled once
// with every error collected, places named the way a person writes them (`tokens[1].sha256`), and the sentence for
// an unknown field, which echoes the field only when it looks like a field name (a key may be a secret pasted in the
// wrong place). Each file keeps its own hints and its own sentences for the rest.
import Ajv, { type ErrorObject, type Options } from 'ajv';
import addFormats from 'ajv-formats';

/** A validator compiled at first use: the errors of `data` (all of them), or none. */
export function schemaValidator(
  schema: object,
  formats: Array<'date-time'> = [],
): (data: unknown) => ErrorObject[] {
  let compiled: ReturnType<InstanceType<typeof Ajv.default>['compile']> | undefined;
  return (data) => {
    if (!compiled) {
      const options: Options = { allErrors: true, verbose: true, strict: false };
      const ajv = new Ajv.default(options);
      if (formats.length > 0) addFormats.default(ajv, formats);
      compiled = ajv.compile(schema);
    }
    return compiled(data) ? [] : [...(compiled.errors ?? [])];
  };
}

/** `/tokens/1/sha256` → `tokens[1].sha256`; a key that is not a plain name is quoted. */
export function pathOf(instancePath: string, child?: string): string {
  const parts = instancePath.split('/').slice(1);
  if (child !== undefined) parts.push(child);
  let out = '';
  for (const raw of parts) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (/^\d+$/.test(part)) out += `[${part}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(part)) out += out ? `.${part}` : part;
    else out += `[${JSON.stringify(part)}]`;
  }
  return out || 'the file';
}

/** The sentence for an `additionalProperties` error: the field (when it looks like one) and a hint or the known ones. */
export function unknownFieldMessage(e: ErrorObject, hints: Record<string, string>): string {
  const field = String((e.params as { additionalProperty: string }).additionalProperty);
  const known = Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {});
  const shown = /^[A-Za-z_][A-Za-z0-9_-]{0,39}$/.test(field) ? `"${field}"` : '(not shown)';
  return `${pathOf(e.instancePath)} has an unknown field ${shown}${hints[field] ?? ` (known: ${known.join(', ')})`}`;
}
