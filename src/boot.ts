// Process start-up shared by `npm start` (src/main.ts) and the worker entry point (workers/): configuration,
// logger, Redis (a private redis-server when none answers at the default address), development secrets,
// the runtime, and graceful shutdown on SIGTERM/SIGINT.
import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { createServer, Socket } from 'node:net';
import { join, resolve } from 'node:path';
import {
  administratorSources,
  loadTokensFile,
  type TokensFile,
  TokensFileError,
} from './auth/tokens-file.ts';
import { type Component, ConfigError, type KeyturnConfig, loadConfig } from './config/config.ts';
import { devAdminToken, devMasterKey } from './config/dev-state.ts';
import { createLogger, type Logger } from './logging/logger.ts';
import { createRuntime, type Runtime } from './runtime.ts';

function fail(message: string): never {
  process.stderr.write(`keyturn: ${message}\n`);
  process.exit(2);
}

function answers(host: string, port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = new Socket();
    socket.setTimeout(500);
    socket.once('connect', () => {
      socket.destroy();
      done(true);
    });
    socket.once('timeout', () => {
      socket.destroy();
      done(false);
    });
    socket.once('error', () => done(false));
    socket.connect(port, host);
  });
}

function freePort(): Promise<number> {
  return new Promise((done, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => done(port));
    });
  });
}

/** Starts a private redis-server whose data lives in the state folder; returns its URL and a stop function. */
async function startPrivateRedis(
  config: KeyturnConfig,
  logger: Logger,
): Promise<{ url: string; stop: () => void }> {
  const dir = resolve(join(config.stateDir, 'redis'));
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const port = await freePort();
  const child = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--dir',
      dir,
      '--appendonly',
      'yes',
      '--save',
      '',
      '--protected-mode',
      'yes',
    ],
    { stdio: 'ignore' },
  );
  await new Promise<void>((done, reject) => {
    child.once('error', (err) =>
      reject(
        (err as NodeJS.ErrnoException).code === 'ENOENT'
          ? new Error(
              'nothing answers at redis://127.0.0.1:6379 and no redis-server is on the PATH: start Redis (e.g. `apt-get install redis-server` or `docker run -p 6379:6379 redis:7`) or set REDIS_URL',
            )
          : err,
      ),
    );
    child.once('spawn', () => done());
  });
  for (let i = 0; i < 50 && !(await answers('127.0.0.1', port)); i++)
    await new Promise((r) => setTimeout(r, 100));
  logger.warn(
    { port, dir },
    `no Redis answered at the default address: started a private redis-server on 127.0.0.1:${port} with its data in ${dir}; set REDIS_URL for a real one`,
  );
  return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill('SIGTERM') };
}

/**
 * What can administer a production Keyturn without KEYTURN_ADMIN_TOKEN: the admin entries of the tokens file. Stops
 * the start, saying what to set, when there is none.
 */
async function administratorsOf(tokensFile: string | undefined): Promise<string[]> {
  const howTo =
    'set KEYTURN_ADMIN_TOKEN (make one with `openssl rand -base64 32`), or give the admin role in KEYTURN_TOKENS_FILE to a token (`npx keyturn token create --name <who> --role admin --file <tokens file>`), a client certificate or a JWT rule';
  if (!tokensFile) {
    fail(
      `KEYTURN_ADMIN_TOKEN is required when NODE_ENV=production unless KEYTURN_TOKENS_FILE provides administrators, and neither is set: ${howTo}`,
    );
  }
  let file: TokensFile;
  try {
    file = await loadTokensFile(tokensFile);
  } catch (err) {
    if (err instanceof TokensFileError) fail(`could not start: ${err.message}`);
    throw err;
  }
  const sources = administratorSources(file);
  if (sources.length === 0) {
    fail(
      `KEYTURN_ADMIN_TOKEN is required when NODE_ENV=production unless KEYTURN_TOKENS_FILE provides administrators, and ${tokensFile} grants the admin role to no unexpired token, no client certificate and no JWT rule: ${howTo}`,
    );
  }
  return sources;
}

export async function boot(options: { components?: Component[] } = {}): Promise<Runtime> {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 24) {
    fail(
      `Node ${process.versions.node} is too old: Keyturn runs on Node 24 LTS (npm scripts use the pinned one: run it with \`npm start\`)`,
    );
  }
  let config: KeyturnConfig;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
  if (options.components) config.components = options.components;
  const logger = createLogger({ level: config.logLevel, format: config.logFormat });
  const production = process.env.NODE_ENV === 'production';

  let stopRedis: (() => void) | undefined;
  if (config.redisUrlDefaulted && !(await answers('127.0.0.1', 6379))) {
    try {
      const redis = await startPrivateRedis(config, logger);
      config.redisUrl = redis.url;
      config.redis = { ...config.redis, topology: { kind: 'standalone', url: redis.url } };
      stopRedis = redis.stop;
    } catch (err) {
      fail((err as Error).message);
    }
  }

  let adminToken = config.adminToken;
  if (!adminToken && production) {
    // No standing shared superuser token is needed when the tokens file names administrators (PCI DSS 8.2.2): its
    // admin tokens, certificates or JWT rules. A worker-only process authenticates nobody and needs none.
    if (config.components.includes('api')) {
      const sources = await administratorsOf(config.tokensFile);
      logger.info(
        { administrators: sources },
        `KEYTURN_ADMIN_TOKEN is not set: administrators come from the tokens file (${sources.join(', ')})`,
      );
    }
  } else if (!adminToken) {
    const dev = await devAdminToken(config.stateDir);
    adminToken = dev.value;
    logger.warn(
      { path: dev.path },
      `KEYTURN_ADMIN_TOKEN is not set: ${dev.created ? 'made' : 'using'} a development admin token, kept in ${dev.path} (mode 0600)`,
    );
  }
  let masterKey = config.masterKey;
  if (production && config.kek.provider === 'env') {
    if (!masterKey)
      fail(
        'KEYTURN_MASTER_KEY is required when NODE_ENV=production and KEYTURN_KEK_PROVIDER=env (make one with `openssl rand -base64 32`); better, keep the key in AWS KMS or Vault transit (KEYTURN_KEK_PROVIDER=aws-kms or vault-transit)',
      );
    logger.warn(
      "KEYTURN_KEK_PROVIDER=env: the key of every local secret is in this process's environment; in production keep it in AWS KMS or Vault transit (KEYTURN_KEK_PROVIDER=aws-kms or vault-transit, then `keyturn rekey`)",
    );
  }
  if (!masterKey && config.kek.provider === 'env') {
    const dev = await devMasterKey(config.stateDir);
    masterKey = Buffer.from(dev.value, 'base64');
    logger.warn(
      { path: dev.path },
      `KEYTURN_MASTER_KEY is not set: ${dev.created ? 'made' : 'using'} a development master key in ${dev.path}; secrets in the local store are only as safe as that file`,
    );
  }

  let runtime: Runtime;
  try {
    runtime = await createRuntime({ config, logger, adminToken, masterKey });
  } catch (err) {
    stopRedis?.();
    fail(`could not start: ${(err as Error).message}`);
  }
  const address = await runtime.start().catch((err: Error) => {
    stopRedis?.();
    fail(`could not listen on ${config.host}:${config.port}: ${err.message}`);
  });
  logger.info(
    { address, components: config.components, prefix: config.prefix },
    `keyturn serving on ${address}`,
  );

  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down: finishing the steps under way (each is resumable)');
    runtime
      .close()
      .then(() => {
        stopRedis?.();
        logger.info('stopped');
        logger.flush?.();
        process.exit(0);
      })
      .catch((err) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      });
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  return runtime;
}
