// A real Sentinel-managed Redis for the HA tests: a master and a replica (redis-server on free loopback ports, no
// persistence) and, unless asked for none, three sentinels (`redis-server <conf> --sentinel`, quorum 2) in a temporary
// directory. Helpers force a clean failover (SENTINEL FAILOVER) or SIGKILL the master, and wait until the sentinels
// name the new master and it takes writes. `stop()` kills every process it started (also when the test process
// exits without calling it) and removes the directory. No mock anywhere: these are the servers Keyturn talks to.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';

export const HOST = '127.0.0.1';
export const MASTER_NAME = 'keyturn-ha';

export interface RedisNode {
  role: 'data' | 'sentinel';
  port: number;
  child: ChildProcess;
  /** Resolves when the process has ended. */
  exited: Promise<void>;
}

export interface SentinelSet {
  masterName: string;
  /** `127.0.0.1:p1,127.0.0.1:p2,…` for REDIS_SENTINEL_HOSTS (empty when started without sentinels). */
  sentinelHosts: string;
  sentinelPorts: number[];
  /** The two data nodes' ports, the first one the initial master. */
  dataPorts: number[];
  /** The port of the master as the sentinels name it now (the initial master when there are no sentinels). */
  masterPort(): Promise<number>;
  /** The data node that is not the master now. */
  replicaPort(): Promise<number>;
  /** A new connection to one data node (with the node password when there is one). The caller disconnects it. */
  connect(port: number): Redis;
  /** SENTINEL FAILOVER, then waits until every sentinel names the new master and it takes a write. */
  failover(): Promise<{ from: number; to: number; ms: number }>;
  /** SIGKILLs the master process, then waits for the new master as `failover` does. */
  killMaster(): Promise<{ from: number; to: number; ms: number }>;
  /** Starts a data node killed by `killMaster` again, as a replica of the current master (it resyncs from empty). */
  restart(port: number): Promise<void>;
  /** SIGSTOP / SIGCONT of a data node: a stopped replica acknowledges nothing. */
  pause(port: number): void;
  resume(port: number): void;
  stop(): Promise<void>;
}

import { freePort } from './ports.ts';

export { freePort };

const live = new Set<ChildProcess>();
let exitHook = false;
function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!exitHook) {
    exitHook = true;
    // A test process that dies without reaching stop() leaves no redis-server behind.
    process.once('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
}

async function until<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs: number,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`,
      );
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startSentinelSet(
  options: {
    /** requirepass and masterauth of the data nodes (REDIS_PASSWORD). */
    password?: string;
    /** requirepass of the sentinels (REDIS_SENTINEL_PASSWORD). */
    sentinelPassword?: string;
    /** 3 by default; 0 for a plain master and replica. */
    sentinels?: number;
    /** Extra `--name value` arguments of the data nodes, e.g. ['--maxmemory-policy', 'allkeys-lru']. */
    dataArgs?: string[];
  } = {},
): Promise<SentinelSet> {
  const dir = mkdtempSync(join(tmpdir(), 'keyturn-sentinel-'));
  const nodes = new Map<number, RedisNode>();
  const dataPorts = [await freePort(), await freePort()];
  const sentinelCount = options.sentinels ?? 3;
  const sentinelPorts: number[] = [];
  for (let i = 0; i < sentinelCount; i++) sentinelPorts.push(await freePort());
  const auth = options.password ? ['--requirepass', options.password, '--masterauth', options.password] : [];

  const launch = (role: RedisNode['role'], port: number, args: string[]): RedisNode => {
    const child = spawn('redis-server', args, { cwd: dir, stdio: 'ignore' });
    track(child);
    const exited = new Promise<void>((done) => child.once('exit', () => done()));
    const node = { role, port, child, exited };
    nodes.set(port, node);
    return node;
  };
  const dataArgs = (port: number, replicaOf?: number) => [
    '--port',
    String(port),
    '--bind',
    HOST,
    '--save',
    '',
    '--appendonly',
    'no',
    '--dir',
    dir,
    '--dbfilename',
    `dump-${port}.rdb`,
    '--logfile',
    join(dir, `redis-${port}.log`),
    // Lets a restarted node be made a replica again, and keeps replicas close behind.
    '--repl-diskless-sync',
    'yes',
    '--repl-diskless-sync-delay',
    '0',
    ...auth,
    ...(options.dataArgs ?? []),
    ...(replicaOf ? ['--replicaof', HOST, String(replicaOf)] : []),
  ];
  const connect = (port: number) =>
    new Redis({
      host: HOST,
      port,
      ...(options.password ? { password: options.password } : {}),
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      lazyConnect: false,
    }).on('error', () => {});
  const ask = async <T>(port: number, fn: (r: Redis) => Promise<T>, password?: string): Promise<T> => {
    const r = new Redis({
      host: HOST,
      port,
      ...(password ? { password } : {}),
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      connectTimeout: 1000,
    }).on('error', () => {});
    try {
      return await fn(r);
    } finally {
      r.disconnect();
    }
  };
  const askSentinel = <T>(port: number, fn: (r: Redis) => Promise<T>) =>
    ask(port, fn, options.sentinelPassword);

  const stop = async () => {
    for (const node of nodes.values()) node.child.kill('SIGKILL');
    await Promise.all([...nodes.values()].map((n) => (n.child.exitCode === null ? n.exited : undefined)));
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    launch('data', dataPorts[0] as number, dataArgs(dataPorts[0] as number));
    await until(
      'the master to answer',
      () => ask(dataPorts[0] as number, (r) => r.ping(), options.password),
      10_000,
    );
    launch('data', dataPorts[1] as number, dataArgs(dataPorts[1] as number, dataPorts[0]));
    await until(
      'the replica to be in sync',
      () =>
        ask(
          dataPorts[1] as number,
          async (r) => /master_link_status:up/.test(await r.info('replication')),
          options.password,
        ),
      10_000,
    );
    for (const port of sentinelPorts) {
      const conf = join(dir, `sentinel-${port}.conf`);
      writeFileSync(
        conf,
        [
          `port ${port}`,
          `bind ${HOST}`,
          `dir ${dir}`,
          `logfile ${join(dir, `sentinel-${port}.log`)}`,
          `sentinel monitor ${MASTER_NAME} ${HOST} ${dataPorts[0]} 2`,
          `sentinel down-after-milliseconds ${MASTER_NAME} 1000`,
          `sentinel failover-timeout ${MASTER_NAME} 3000`,
          `sentinel parallel-syncs ${MASTER_NAME} 1`,
          ...(options.password ? [`sentinel auth-pass ${MASTER_NAME} ${options.password}`] : []),
          // Sentinels with a password of their own log in to each other with it.
          ...(options.sentinelPassword
            ? [
                `requirepass ${options.sentinelPassword}`,
                `sentinel sentinel-pass ${options.sentinelPassword}`,
              ]
            : []),
          '',
        ].join('\n'),
      );
      launch('sentinel', port, [conf, '--sentinel']);
    }
    if (sentinelCount > 0) {
      // Every sentinel knows the replica and the other sentinels: a failover can be agreed on.
      await until(
        'the sentinels to know each other and the replica',
        async () => {
          for (const port of sentinelPorts) {
            const master = (await askSentinel(port, (r) =>
              r.call('SENTINEL', 'MASTER', MASTER_NAME),
            )) as string[];
            const field = (name: string) => Number(master[master.indexOf(name) + 1]);
            if (field('num-slaves') < 1 || field('num-other-sentinels') < sentinelCount - 1) return false;
          }
          return true;
        },
        20_000,
      );
    }
  } catch (err) {
    await stop();
    throw err;
  }

  const sentinelMaster = async (port: number): Promise<number | undefined> => {
    const addr = (await askSentinel(port, (r) =>
      r.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', MASTER_NAME),
    )) as [string, string] | null;
    return addr ? Number(addr[1]) : undefined;
  };
  const masterPort = async () => {
    if (sentinelCount === 0) return dataPorts[0] as number;
    for (const port of sentinelPorts) {
      const m = await sentinelMaster(port).catch(() => undefined);
      if (m) return m;
    }
    throw new Error('no sentinel names a master');
  };
  /** Every live sentinel names a master other than `from`, and that master takes a write. */
  const newMaster = async (from: number, started: number) => {
    const to = await until(
      `the sentinels to elect a master other than ${from}`,
      async () => {
        const named = new Set<number | undefined>();
        for (const port of sentinelPorts) named.add(await sentinelMaster(port));
        const [only] = [...named];
        if (named.size !== 1 || only === undefined || only === from) return false;
        const role = await ask(only, (r) => r.call('ROLE') as Promise<unknown[]>, options.password);
        if (role[0] !== 'master') return false;
        // It takes writes, or refuses them only for want of replicas (min-replicas-to-write, after a SIGKILL left it
        // alone: restart() gives it one).
        const wrote = await ask(
          only,
          (r) => r.set('keyturn-ha-probe', String(Date.now())),
          options.password,
        ).catch((err: Error) => (/NOREPLICAS/.test(err.message) ? 'NOREPLICAS' : Promise.reject(err)));
        return wrote ? only : false;
      },
      30_000,
    );
    return { from, to, ms: Date.now() - started };
  };

  return {
    masterName: MASTER_NAME,
    sentinelHosts: sentinelPorts.map((p) => `${HOST}:${p}`).join(','),
    sentinelPorts,
    dataPorts,
    masterPort,
    async replicaPort() {
      const m = await masterPort();
      return dataPorts.find((p) => p !== m) as number;
    },
    connect,
    async failover() {
      const from = await masterPort();
      const started = Date.now();
      // A sentinel may refuse while it still settles a previous failover (INPROG): ask again.
      await until(
        'a sentinel to accept SENTINEL FAILOVER',
        () => askSentinel(sentinelPorts[0] as number, (r) => r.call('SENTINEL', 'FAILOVER', MASTER_NAME)),
        15_000,
      );
      return newMaster(from, started);
    },
    async killMaster() {
      const from = await masterPort();
      const node = nodes.get(from);
      if (!node) throw new Error(`no process for port ${from}`);
      const started = Date.now();
      node.child.kill('SIGKILL');
      await node.exited;
      return newMaster(from, started);
    },
    async restart(port) {
      const node = nodes.get(port);
      if (node && node.child.exitCode === null && node.child.signalCode === null)
        throw new Error(`port ${port} still runs`);
      // Started as a replica of the current master, as the sentinels would reconfigure it (only sooner).
      const master = await masterPort();
      launch('data', port, dataArgs(port, master));
      await until(
        `node ${port} to be a replica in sync again`,
        () =>
          ask(
            port,
            async (r) => {
              const info = await r.info('replication');
              return info.includes(`master_port:${master}`) && /master_link_status:up/.test(info);
            },
            options.password,
          ),
        30_000,
      );
    },
    pause(port) {
      nodes.get(port)?.child.kill('SIGSTOP');
    },
    resume(port) {
      nodes.get(port)?.child.kill('SIGCONT');
    },
    stop,
  };
}

/** One line of MONITOR: the command and its arguments, and the client (`ip:port`) that sent it. */
export interface MonitoredCommand {
  args: string[];
  source: string;
}

/** Reads the quoted arguments of a MONITOR line (`"SET" "k" "a\\"b\\x00"`). */
function monitorArgs(text: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < text.length) {
    if (text[i] !== '"') {
      i++;
      continue;
    }
    let arg = '';
    i++;
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\') {
        const next = text[i + 1];
        if (next === 'x') {
          arg += String.fromCharCode(Number.parseInt(text.slice(i + 2, i + 4), 16));
          i += 4;
          continue;
        }
        arg += next === 'n' ? '\n' : next === 'r' ? '\r' : next === 't' ? '\t' : (next ?? '');
        i += 2;
        continue;
      }
      arg += text[i];
      i++;
    }
    out.push(arg);
    i++;
  }
  return out;
}

/**
 * MONITOR on a node over a raw connection (ioredis's monitor mode loses its reply queue under load): every command
 * the node runs, in the order it runs them, goes to `onCommand`.
 */
export async function startMonitor(
  port: number,
  onCommand: (c: MonitoredCommand) => void,
  password?: string,
): Promise<{ close(): void }> {
  const socket = createConnection({ host: HOST, port });
  socket.on('error', () => {});
  await new Promise<void>((done, fail) => {
    socket.once('connect', done);
    socket.once('error', fail);
  });
  if (password) socket.write(`AUTH ${password}\r\n`);
  socket.write('MONITOR\r\n');
  let buffer = '';
  let ready: () => void = () => {};
  const started = new Promise<void>((done) => {
    ready = done;
  });
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => {
    buffer += chunk;
    for (let nl = buffer.indexOf('\r\n'); nl >= 0; nl = buffer.indexOf('\r\n')) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 2);
      if (line === '+OK') {
        ready();
        continue;
      }
      const m = /^\+\d+\.\d+ \[\d+ ([^\]]+)\] (.*)$/.exec(line);
      if (m) onCommand({ source: m[1] as string, args: monitorArgs(m[2] as string) });
    }
  });
  await started;
  return { close: () => socket.destroy() };
}
