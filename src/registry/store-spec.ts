// Where a secret lives, declared once: the schema the API validates requests with, and the type the registry keeps
// (derived from it, so the two cannot drift apart).
import { type Static, Type } from 'typebox';

export const StoreSpecSchema = Type.Union([
  Type.Object({ type: Type.Literal('local') }, { additionalProperties: false }),
  Type.Object(
    {
      type: Type.Literal('vault'),
      // No "." or ".." segments: "../../sys/x" passed and would climb out of the mount once a Vault client joins it.
      mount: Type.String({ pattern: '^(?!\\.\\.?$)[A-Za-z0-9_.-]{1,128}$' }),
      path: Type.String({
        pattern: '^(?!\\.\\.?(/|$))[A-Za-z0-9_.-]+(/(?!\\.\\.?(/|$))[A-Za-z0-9_.-]+){0,15}$',
        maxLength: 512,
      }),
    },
    { additionalProperties: false },
  ),
  Type.Object(
    {
      type: Type.Literal('aws'),
      secretId: Type.String({ minLength: 1, maxLength: 2048 }),
      region: Type.Optional(Type.String({ pattern: '^[a-z]{2}(-[a-z]+)+-[0-9]$' })),
    },
    { additionalProperties: false },
  ),
]);

export type StoreSpec = Static<typeof StoreSpecSchema>;
