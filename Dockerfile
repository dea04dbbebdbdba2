# syntax=docker/dockerfile:1
# Pin by digest in CI (node:24-bookworm-slim@sha256:...) for reproducible builds.
ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: full deps + tsc ------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the `node` devDependency's install script would download a
# second Node binary; we compile with the image's own node instead.
RUN --mount=type=cache,target=/root/.npm \
    npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY workers ./workers
# Not `npm run build`: npm scripts would resolve node_modules/.bin/node (the
# un-installed `node` package) ahead of the image's node.
RUN node node_modules/typescript/bin/tsc -p tsconfig.build.json
# The web console (/ui): bundled by esbuild from console/ (lit, uPlot) into static files.
COPY console ./console
COPY scripts/build-console.mjs ./scripts/
RUN node scripts/build-console.mjs

# ---- prod-deps: runtime node_modules only ----------------------------------
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
# Scripts skipped here too: msgpackr-extract (via bullmq) loads its prebuilt
# @msgpackr-extract/* binary without its install step, and msgpackr falls back
# to pure JS anyway.
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# ---- runtime ---------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080
WORKDIR /app
# Code stays root-owned so the app user cannot modify it; package.json is
# required at runtime for "type": "module".
COPY package.json package-lock.json ./
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# Where dist/src/api/routes/console.js looks for it (three directories up from itself, as in the source tree).
COPY --from=build /app/console-dist ./dist/console-dist
# The only writable app path: development secrets when no token or key is given
# (the local secret store itself lives, sealed, in Redis).
RUN mkdir -p /app/.keyturn && chown node:node /app/.keyturn && chmod 0700 /app/.keyturn
# The audit archive's day files (KEYTURN_AUDIT_ARCHIVE_DIR); owned by the app user so that a named volume
# mounted here starts writable.
RUN mkdir -p /var/lib/keyturn/audit && chown node:node /var/lib/keyturn/audit && chmod 0750 /var/lib/keyturn/audit

USER node
EXPOSE 8080
# slim has no curl; node's built-in fetch does the probe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz',{signal:AbortSignal.timeout(4000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# node is PID 1 and receives SIGTERM directly (no npm wrapper that would swallow it).
CMD ["node", "dist/src/main.js"]
