// The OpenAPI document (GET /docs/json, /docs/yaml) and its browsable UI (GET /docs), generated from the routes'
// own TypeBox schemas by @fastify/swagger, so that the document cannot drift from what the API validates.
//
// Two hooks, in this order in app.ts:
//   installDocsAccess   (first onRoute hook) the UI plugin's routes are public and get a CSP that lets the UI
//                       run; it must run before the hooks that refuse a route without access
//   installOpenApi      (before any API route) @fastify/swagger collects every route registered after it
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance, RouteOptions } from 'fastify';
import packageJson from '../../package.json' with { type: 'json' };
import { type Access, rolesFor } from '../auth/principal.ts';

export const DOCS_PREFIX = '/docs';

/** Route groups of the document, in the order the UI lists them. */
const TAGS = [
  {
    name: 'connections',
    description: 'Downstream systems whose users Keyturn manages; their admin secret never comes back out.',
  },
  {
    name: 'credentials',
    description: 'Credentials, their rotation policy, and the secret that works right now.',
  },
  {
    name: 'rotations',
    description: 'Rotate now, rotation history, one rotation with its steps and scrubbed error.',
  },
  {
    name: 'leases',
    description: 'Short-lived credentials: a downstream user of its own, revoked at expiry.',
  },
  { name: 'audit', description: 'The tamper-evident audit trail: read, verify, export.' },
  { name: 'compliance', description: 'Age of every credential against its policy.' },
  {
    name: 'events',
    description: 'Server-sent events for services that reload when their credential rotates.',
  },
  {
    name: 'console',
    description: 'What the web console at /ui reads: who the caller is, and the overview of what it may see.',
  },
  { name: 'operations', description: 'Probes and Prometheus metrics, open without a token.' },
];

// Swagger UI loads its scripts and styles from /docs/static and fetches the document from /docs/json; "Try it
// out" calls the API on the same origin. Nothing else is allowed, and nothing may frame it (as everywhere).
const DOCS_CSP = {
  useDefaults: false,
  directives: {
    defaultSrc: ["'none'"],
    baseUri: ["'none'"],
    formAction: ["'none'"],
    frameAncestors: ["'none'"],
    connectSrc: ["'self'"],
    scriptSrc: ["'self'"],
    // Swagger UI's React components set style attributes on the elements they render.
    styleSrc: ["'self'", "'unsafe-inline'"],
    // The logo and the bundled icons are data: URLs.
    imgSrc: ["'self'", 'data:'],
    fontSrc: ["'self'", 'data:'],
  },
};

const isDocsRoute = (url: string): boolean => url === DOCS_PREFIX || url.startsWith(`${DOCS_PREFIX}/`);

/**
 * The UI plugin declares no access of its own: its routes (page, static files, the document) are public, like the
 * probes, and only they get a CSP that lets Swagger UI run; every other answer keeps the API's `default-src 'none'`.
 */
export function installDocsAccess(app: FastifyInstance): void {
  app.addHook('onRoute', (route) => {
    if (!isDocsRoute(route.url)) return;
    route.config = {
      ...route.config,
      access: 'public',
      helmet: { contentSecurityPolicy: DOCS_CSP },
    } as typeof route.config;
  });
}

/** The group of a route, from its path: /v1/credentials/:id/leases is about leases, /v1/credentials/:id about credentials. */
function tagOf(url: string): string {
  if (!url.startsWith('/v1/')) return 'operations';
  const segments = url.slice('/v1/'.length).split('/');
  const nested = segments[2];
  if (segments[0] === 'credentials' && nested) {
    if (nested === 'rotate' || nested === 'rotations') return 'rotations';
    if (nested === 'leases') return 'leases';
  }
  return segments[0] ?? 'operations';
}

function describeAccess(access: Access | undefined): string {
  if (!access || access === 'public') return 'Open without a token.';
  const roles = rolesFor(access);
  const bound = roles.includes('reader') ? ' (a reader only for the credentials bound to it)' : '';
  return `Needs a bearer token with role ${roles.join(' or ')}${bound}.`;
}

/** @fastify/swagger: registered before the API routes, so it sees every one of them. */
export async function installOpenApi(app: FastifyInstance): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Keyturn',
        version: packageJson.version,
        description:
          'Secrets rotation for payment and banking platforms. Every route but the probes, /metrics and /docs needs `Authorization: Bearer <token>`. Errors are `{"error": {"code", "message", "details"}}`.',
      },
      components: {
        securitySchemes: {
          bearer: {
            type: 'http',
            scheme: 'bearer',
            description:
              'A static token (KEYTURN_ADMIN_TOKEN or the tokens file) or a JWT from a configured issuer.',
          },
        },
      },
      security: [{ bearer: [] }],
      tags: TAGS,
    },
    transform: ({ schema, url, route }) => {
      const access = (route.config as { access?: Access; public?: boolean } | undefined)?.access;
      const open = access === 'public' || (route.config as { public?: boolean } | undefined)?.public === true;
      const documented = {
        ...schema,
        tags: schema?.tags ?? [tagOf(url)],
        description: schema?.description ?? describeAccess(open ? 'public' : access),
        ...(open ? { security: [] } : {}),
      };
      return { schema: documented as RouteOptions['schema'] & object, url };
    },
  });
}

/** @fastify/swagger-ui at /docs (the document at /docs/json). Registered only where the API routes are. */
export async function installDocsUi(app: FastifyInstance): Promise<void> {
  await app.register(swaggerUi, {
    routePrefix: DOCS_PREFIX,
    uiConfig: { deepLinking: true, persistAuthorization: false },
    // The validator badge would send the document to validator.swagger.io.
    validatorUrl: false,
  });
}
