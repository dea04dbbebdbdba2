// The OpenAPI document and Swagger UI at /docs: open without a token; the document is OpenAPI 3 and lists every
// route the app serves (read from the app's own route table, so that a future route missing from the document fails
// here), each with a tag and the bearer scheme except the public ones; the UI's page, script and document load,
// with a CSP that lets the UI run on /docs only.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropPrefix, type Keyturn, startKeyturn, testEnv } from '../support/harness.ts';

const env = testEnv();
let kt: Keyturn;

beforeAll(async () => {
  kt = await startKeyturn(env, { components: ['api'] });
});
afterAll(async () => {
  await kt?.close();
  await dropPrefix(env.prefix);
});

/** "METHOD /path" for every route in the app's route table (Fastify's printRoutes tree), HEAD left out. */
function routeTable(): Set<string> {
  const tree = kt.runtime.app!.printRoutes({ commonPrefix: false });
  const routes = new Set<string>();
  const stack: string[] = [];
  for (const line of tree.split('\n')) {
    const m = /^(.*?)(?:├── |└── )(.+?)(?: \(([A-Z, ]+)\))?$/.exec(line);
    if (!m) continue;
    const depth = m[1]!.length / 4;
    stack.length = depth;
    stack.push(m[2]!);
    for (const method of (m[3] ?? '').split(', ').filter((x) => x && x !== 'HEAD')) {
      routes.add(`${method} ${stack.join('')}`);
    }
  }
  return routes;
}

const openApiPath = (fastifyPath: string) => fastifyPath.replace(/:([A-Za-z0-9_]+)/g, '{$1}');

async function get(path: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${kt.url}${path}`, { headers });
  return { res, text: await res.text() };
}

describe('GET /docs/json', () => {
  it('is an OpenAPI 3 document of every /v1 route, probe and /metrics, without a token', async () => {
    const { res, text } = await get('/docs/json');
    expect(res.status).toBe(200);
    const doc = JSON.parse(text);
    expect(doc.openapi).toMatch(/^3\./);
    expect(doc.info).toMatchObject({ title: 'Keyturn', version: expect.any(String) });
    expect(doc.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
    expect(doc.security).toEqual([{ bearer: [] }]);

    // The docs UI and the web console (/ui) are pages, not API operations: the document leaves them out.
    const served = [...routeTable()].filter((r) => !r.includes(' /docs') && !r.includes(' /ui'));
    const api = served.filter((r) => r.includes(' /v1/'));
    // Guard against a parser that finds nothing: the app has routes in every group.
    expect(api.length).toBeGreaterThanOrEqual(20);
    const documented = new Set<string>();
    for (const [path, operations] of Object.entries<Record<string, unknown>>(doc.paths)) {
      for (const method of Object.keys(operations)) documented.add(`${method.toUpperCase()} ${path}`);
    }
    const missing = served.filter((r) => {
      const [method, path] = r.split(' ') as [string, string];
      return !documented.has(`${method} ${openApiPath(path)}`);
    });
    expect(missing, 'routes the app serves that the document lacks').toEqual([]);
    const phantom = [...documented].filter(
      (d) => !served.some((r) => `${r.split(' ')[0]} ${openApiPath(r.split(' ')[1]!)}` === d),
    );
    expect(phantom, 'documented routes the app does not serve').toEqual([]);
    expect([...documented].some((d) => d.includes('/docs') || d.includes(' /ui'))).toBe(false);
    // The console's read-only routes are documented like every other.
    expect(doc.paths['/v1/overview'].get.parameters.map((p: { name: string }) => p.name)).toEqual(['days']);
    expect(doc.paths['/v1/me'].get.tags).toEqual(['console']);
    console.log(`${documented.size} operations documented, ${api.length} of them under /v1`);

    for (const [path, operations] of Object.entries<Record<string, any>>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(operations)) {
        expect(op.tags?.length, `${method} ${path} has a tag`).toBeGreaterThan(0);
        const open = ['/healthz', '/readyz', '/metrics'].includes(path);
        // Public routes override the document's bearer requirement with none; the others inherit it.
        if (open) expect(op.security, `${method} ${path}`).toEqual([]);
        else expect(op.security, `${method} ${path}`).toBeUndefined();
        expect(op.description, `${method} ${path}`).toMatch(
          open ? /without a token/ : /Needs a bearer token with role/,
        );
      }
    }
    // Tags by group; and the routes' own TypeBox schemas are in the document.
    expect(doc.paths['/v1/credentials/{id}/leases'].post.tags).toEqual(['leases']);
    expect(doc.paths['/v1/credentials/{id}/rotate'].post.tags).toEqual(['rotations']);
    expect(doc.paths['/v1/connections'].post.tags).toEqual(['connections']);
    expect(doc.paths['/metrics'].get.tags).toEqual(['operations']);
    const createCredential = doc.paths['/v1/credentials'].post.requestBody.content['application/json'].schema;
    expect(createCredential.required).toEqual(expect.arrayContaining(['id', 'connection', 'username']));
    expect(createCredential.additionalProperties).toBe(false);
    const idParam = doc.paths['/v1/credentials/{id}'].get.parameters.find((p: any) => p.name === 'id');
    expect(idParam).toMatchObject({ in: 'path', required: true, schema: { type: 'string' } });
    // The document names no secret: the admin token never appears in it.
    expect(text).not.toContain(env.adminToken);
  });

  it('answers with query parameters too (the docs routes do not take the strict empty query schema)', async () => {
    expect((await get('/docs/json?cache=1')).res.status).toBe(200);
    expect((await get('/docs/yaml')).text).toMatch(/^openapi: 3\./m);
  });
});

describe('GET /docs', () => {
  it('serves the UI without a token: page, scripts, styles, with a CSP that lets it run', async () => {
    const page = await get('/docs');
    expect(page.res.status).toBe(200);
    expect(page.res.headers.get('content-type')).toMatch(/^text\/html/);
    expect(page.text).toContain('swagger-ui');
    const csp = page.res.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("connect-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toMatch(/unsafe-eval/);
    expect(page.res.headers.get('x-frame-options')).toBe('DENY');
    // Every script and stylesheet the page names loads, as the browser would fetch it.
    const assets = [...page.text.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
    expect(assets.length).toBeGreaterThanOrEqual(4);
    for (const asset of assets) {
      const { res } = await get(asset);
      expect(`${asset} → ${res.status}`).toBe(`${asset} → 200`);
    }
    const initializer = await get('/docs/static/swagger-initializer.js');
    expect(initializer.text).toContain("resolveUrl('./json')");
  });

  it('relaxes the CSP on /docs only: API answers keep default-src none and nothing else', async () => {
    const api = await get('/v1/credentials', { authorization: `Bearer ${env.adminToken}` });
    expect(api.res.status).toBe(200);
    expect(api.res.headers.get('content-security-policy')).toBe("default-src 'none';frame-ancestors 'none'");
    const metrics = await get('/metrics');
    expect(metrics.res.headers.get('content-security-policy')).toBe(
      "default-src 'none';frame-ancestors 'none'",
    );
  });

  it('does not open the API: a /v1 route still needs a token', async () => {
    expect((await get('/v1/credentials')).res.status).toBe(401);
  });
});
