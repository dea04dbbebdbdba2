// The web console at /ui (issue 19): the files `npm run build:console` writes to console-dist/ (scripts/build-console.mjs),
// served by @fastify/static. The console is a client of the same API with the same authentication: these routes
// are public (a page and its scripts carry no data), and every request the page makes is authorized by the API.
//
// Two parts, in this order in app.ts:
//   installConsoleAccess  (an onRoute hook next to installDocsAccess, before the hook that refuses routes without
//                         access) the console's routes are public and get the console's CSP
//   consoleRoutes         the page (GET /ui) and its files (GET /ui/*)
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyPluginAsync } from 'fastify';
import { ApiError } from '../errors.ts';

export const CONSOLE_PREFIX = '/ui';
/** Where scripts/build-console.mjs writes the bundle (not committed: `npm start` builds it when missing or stale). */
export const CONSOLE_DIST = fileURLToPath(new URL('../../../console-dist/', import.meta.url));

/**
 * Strict: the bundle's own script and stylesheet, requests to this origin's API and nothing else. No inline
 * script or style (the page sets styles through the CSSOM only, which CSP does not govern), no eval, no framing,
 * no form posts, no <base>. The charts draw on a canvas: no image source is needed.
 */
export const CONSOLE_CSP = {
  useDefaults: false,
  directives: {
    defaultSrc: ["'none'"],
    baseUri: ["'none'"],
    formAction: ["'none'"],
    frameAncestors: ["'none'"],
    scriptSrc: ["'self'"],
    styleSrc: ["'self'"],
    connectSrc: ["'self'"],
    imgSrc: ["'self'"],
    manifestSrc: ["'none'"],
  },
};

const isConsoleRoute = (url: string): boolean =>
  url === CONSOLE_PREFIX || url.startsWith(`${CONSOLE_PREFIX}/`);

/** The console's routes are public and get its CSP; every other answer keeps the API's `default-src 'none'`. */
export function installConsoleAccess(app: FastifyInstance): void {
  app.addHook('onRoute', (route) => {
    if (!isConsoleRoute(route.url)) return;
    route.config = {
      ...route.config,
      access: 'public',
      helmet: { contentSecurityPolicy: CONSOLE_CSP },
    } as typeof route.config;
  });
}

export const consoleRoutes: FastifyPluginAsync<{ root?: string }> = async (app, options) => {
  const root = options.root ?? CONSOLE_DIST;
  const notBuilt = () =>
    new ApiError(
      503,
      'unavailable',
      `The console is not built (${root} has no index.html): run "npm run build:console" (npm start does it when the build is missing or stale)`,
    );
  // The bundle's files, fetched by the page; the no-store of every other answer applies (cacheControl off), so a
  // rebuilt console is never mixed with a cached older script.
  await app.register(fastifyStatic, {
    root,
    prefix: `${CONSOLE_PREFIX}/`,
    cacheControl: false,
    etag: true,
    lastModified: false,
    dotfiles: 'deny',
    index: false,
    wildcard: true,
  });
  // The page itself, at /ui (and /ui/ through the router's ignoreTrailingSlash). Its pages are #fragments: the
  // server has one page to serve, and nothing of a page's state (ids, filters) reaches the server's logs.
  // Hidden from the OpenAPI document, like the files (@fastify/static hides its routes): a page, not an operation.
  app.get(CONSOLE_PREFIX, { schema: { hide: true } }, async (_request, reply) => {
    if (!existsSync(`${root}/index.html`)) throw notBuilt();
    return reply.type('text/html; charset=utf-8').sendFile('index.html', root);
  });
};
