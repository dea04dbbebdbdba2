// The outbound fence (issue 17 §2): where Keyturn may open a connection on an operator's behalf. An operator registers
// connections to any host and port, and Keyturn then connects there with secrets and reports what it found: without a
// fence that is a server-side request forgery into the cloud's metadata endpoint or the bank's internal network.
//
// - Always refused: link-local and metadata addresses (169.254.0.0/16 with AWS's, GCP's and Azure's metadata, fe80::/10,
//   fd00:ec2::254, 100.100.100.200, 168.63.129.16), the unspecified addresses, and metadata.google.internal.
// - Loopback (127.0.0.0/8, ::1): refused in production (NODE_ENV=production), unless KEYTURN_OUTBOUND_ALLOW names it.
// - KEYTURN_OUTBOUND_DENY: CIDRs and host patterns refused. KEYTURN_OUTBOUND_ALLOW: when set, nothing else is allowed;
//   in production an empty allow list refuses every downstream (deny by default).
//
// Checked where the connection is made, after DNS resolution: every socket a target driver opens (targets/middleware.ts
// runs each driver call inside `fenced`) gets a lookup that refuses a denied address before any packet goes out, and
// a literal address is checked before the socket connects. So a name that resolves elsewhere later (DNS rebinding) is
// caught, whatever library the driver uses (pg, mysql2, ioredis, ldapts, node:http, the AWS SDK). Registration checks
// the same rules early (checkOutbound) for a 422 instead of a failed rotation.
import { AsyncLocalStorage } from 'node:async_hooks';
import dns from 'node:dns';
import net, { BlockList } from 'node:net';

/** A refused destination: the address class or rule that refuses it, and what to change. Never retried. */
export class OutboundRefusedError extends Error {
  readonly code = 'EOUTBOUND';
  constructor(message: string) {
    super(message);
    this.name = 'OutboundRefusedError';
  }
}

/** One entry of KEYTURN_OUTBOUND_ALLOW or _DENY: a CIDR (or a single address) or a host pattern ("*.db.internal"). */
export type OutboundRule = { cidr: string; list: BlockList } | { host: string; pattern: RegExp };

export interface OutboundPolicy {
  /** Loopback allowed without an allow-list entry (not in production). */
  loopback: boolean;
  /** With an allow list only its entries are allowed; without one, everything not denied (outside production). */
  allow?: OutboundRule[];
  deny: OutboundRule[];
  /** Production without an allow list: every destination is refused until KEYTURN_OUTBOUND_ALLOW names it. */
  denyByDefault: boolean;
  /** The resolver (dns.lookup by default); tests give a stub, so that no name outside this machine is resolved. */
  lookup?: typeof dns.lookup;
}

const ALWAYS = new BlockList();
for (const [net4, prefix] of [
  ['169.254.0.0', 16], // link-local: AWS, GCP and Azure instance metadata (169.254.169.254), ECS (169.254.170.2)
  ['0.0.0.0', 8], // "this network": 0.0.0.0 reaches the local host
  ['100.100.100.200', 32], // Alibaba Cloud metadata
  ['168.63.129.16', 32], // Azure WireServer
] as const) {
  ALWAYS.addSubnet(net4, prefix, 'ipv4');
}
ALWAYS.addSubnet('fe80::', 10, 'ipv6'); // link-local
ALWAYS.addAddress('fd00:ec2::254', 'ipv6'); // AWS metadata over IPv6
ALWAYS.addAddress('::', 'ipv6');
const ALWAYS_NAMES = new Set(['metadata.google.internal', 'metadata.goog', 'metadata']);

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

const DEVELOPMENT: OutboundPolicy = { loopback: true, deny: [], denyByDefault: false };
let policy: OutboundPolicy = DEVELOPMENT;

/** Sets the process's policy (the runtime, from its configuration). */
export function configureOutbound(next: OutboundPolicy): void {
  policy = next;
}

export function outboundPolicy(): OutboundPolicy {
  return policy;
}

/**
 * One KEYTURN_OUTBOUND_* entry, or a sentence saying why it is not one: a CIDR ("10.20.0.0/16", "fd00::/8"), an
 * address, or a host pattern of letters, digits, "-" and "." with "*" for one or more leading labels.
 */
export function parseOutboundRule(entry: string): OutboundRule | string {
  const text = entry.trim().toLowerCase();
  const [address, bits, extra] = text.split('/');
  const family = net.isIP(address ?? '');
  if (family !== 0 && address) {
    const max = family === 4 ? 32 : 128;
    const prefix = bits === undefined ? max : Number(bits);
    if (extra !== undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > max || bits === '') {
      return `"${entry}" is not a CIDR: the prefix length must be 0 to ${max}`;
    }
    const list = new BlockList();
    list.addSubnet(address, prefix, family === 4 ? 'ipv4' : 'ipv6');
    return { cidr: text, list };
  }
  if (!/^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(text)) {
    return `"${entry}" is neither a CIDR (10.0.0.0/8) nor a host pattern (db.internal, *.db.internal)`;
  }
  const body = text.startsWith('*.') ? text.slice(2) : text;
  const escaped = body.replaceAll('.', '\\.');
  return { host: text, pattern: new RegExp(text.startsWith('*.') ? `^.+\\.${escaped}$` : `^${escaped}$`) };
}

const familyOf = (address: string): 'ipv4' | 'ipv6' => (net.isIPv4(address) ? 'ipv4' : 'ipv6');

/** An IPv4-mapped IPv6 address (::ffff:169.254.169.254) is its IPv4 address. */
function plain(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped ? (mapped[1] as string) : address;
}

function matches(rule: OutboundRule, host: string, address: string | undefined): boolean {
  if ('pattern' in rule) return rule.pattern.test(host);
  return address !== undefined && rule.list.check(address, familyOf(address));
}

const normalHost = (host: string) =>
  host
    .toLowerCase()
    .replace(/\.$/, '')
    .replace(/^\[|\]$/g, '');

/**
 * Why `host` (reached at `address`, once resolved) is refused, or undefined when it is allowed. Called without an
 * address for what the name alone decides (patterns, metadata names); with each resolved address at connect time.
 */
export function outboundRefusal(
  host: string,
  address?: string,
  given: OutboundPolicy = policy,
): string | undefined {
  const name = normalHost(host);
  const ip = address === undefined ? (net.isIP(name) ? plain(name) : undefined) : plain(address);
  const where = ip && ip !== name ? `${name} (${ip})` : name;
  if (ALWAYS_NAMES.has(name) || (ip && ALWAYS.check(ip, familyOf(ip)))) {
    return `${where} is a link-local or cloud metadata address, which Keyturn never connects to`;
  }
  const denied = given.deny.find((r) => matches(r, name, ip));
  if (denied)
    return `${where} is refused by KEYTURN_OUTBOUND_DENY ("${'cidr' in denied ? denied.cidr : denied.host}")`;
  if (given.allow?.some((r) => matches(r, name, ip))) return undefined;
  // What the allow list could still admit by address is decided once the name is resolved.
  if (ip === undefined) return undefined;
  if (given.allow) {
    return `${where} is not in KEYTURN_OUTBOUND_ALLOW: add its address range or host name there to let Keyturn connect`;
  }
  if (given.denyByDefault) {
    return `${where} is refused: in production Keyturn connects only where KEYTURN_OUTBOUND_ALLOW says (CIDRs and host patterns); add this downstream there`;
  }
  if (!given.loopback && LOOPBACK.check(ip, familyOf(ip))) {
    return `${where} is a loopback address, refused in production: a downstream on this machine must be named in KEYTURN_OUTBOUND_ALLOW`;
  }
  return undefined;
}

/**
 * Registration's look (a 422 rather than a failed rotation): the name's own verdict, then each address it resolves
 * to now. A name that does not resolve here is left to the connect-time check.
 */
export async function checkOutbound(host: string): Promise<string | undefined> {
  const name = normalHost(host);
  const early = outboundRefusal(name);
  if (early || net.isIP(name)) return early ?? outboundRefusal(name, name);
  const lookup = policy.lookup ?? dns.lookup;
  const addresses = await new Promise<dns.LookupAddress[]>((resolve) => {
    lookup(name, { all: true }, (err, found) => resolve(err ? [] : (found as dns.LookupAddress[])));
  });
  for (const { address } of addresses) {
    const refused = outboundRefusal(name, address);
    if (refused) return refused;
  }
  return undefined;
}

/** What a fenced call carries: the refusal that stopped one of its connections, for the caller to report. */
interface FenceScope {
  refused?: OutboundRefusedError;
}

const scope = new AsyncLocalStorage<FenceScope>();

/**
 * Runs `work` with every socket it opens checked against the policy. Resolves or rejects as `work` does; a rejection
 * caused by the fence is the OutboundRefusedError itself (whatever the library wrapped it in), so the caller can
 * report it as a refusal, not as a downstream that did not answer.
 */
export async function fenced<T>(work: () => Promise<T>): Promise<T> {
  const state: FenceScope = {};
  try {
    return await scope.run(state, work);
  } catch (err) {
    throw state.refused ?? err;
  }
}

function refuse(socket: net.Socket, message: string): void {
  const err = new OutboundRefusedError(message);
  const state = scope.getStore();
  if (state) state.refused ??= err;
  process.nextTick(() => socket.destroy(err));
}

/** A lookup that hands on only allowed addresses: one denied address refuses the name (it could be picked). */
function fencedLookup(host: string, inner: typeof dns.lookup): typeof dns.lookup {
  return ((hostname: string, options: dns.LookupOptions, callback: (...a: unknown[]) => void) => {
    const opts = typeof options === 'function' ? {} : (options ?? {});
    const done = typeof options === 'function' ? (options as (...a: unknown[]) => void) : callback;
    inner(hostname, { ...(typeof opts === 'number' ? { family: opts } : opts), all: true }, (err, found) => {
      if (err) return done(err);
      const list = found as dns.LookupAddress[];
      for (const { address } of list) {
        const refused = outboundRefusal(host, address);
        if (refused) {
          const state = scope.getStore();
          const error = new OutboundRefusedError(refused);
          if (state) state.refused ??= error;
          return done(error);
        }
      }
      if ((opts as dns.LookupOptions).all) return done(null, list);
      const first = list[0];
      if (!first)
        return done(Object.assign(new Error(`${hostname} resolved to no address`), { code: 'ENOTFOUND' }));
      return done(null, first.address, first.family);
    });
  }) as typeof dns.lookup;
}

type ConnectArgs = unknown[];
const originalConnect = net.Socket.prototype.connect as (
  this: net.Socket,
  ...args: ConnectArgs
) => net.Socket;

/** The options and callback of a Socket#connect call, in any of its forms (options, port/host, node's own array). */
function connectOptions(
  args: ConnectArgs,
): { options: Record<string, unknown>; callback?: unknown } | undefined {
  const first = args[0];
  if (Array.isArray(first)) return { options: { ...(first[0] as object) }, callback: first[1] };
  if (first !== null && typeof first === 'object')
    return { options: { ...(first as object) }, callback: args[1] };
  if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    const host = typeof args[1] === 'string' ? args[1] : undefined;
    const callback = typeof args[1] === 'function' ? args[1] : args[2];
    return { options: { port: first, ...(host ? { host } : {}) }, callback };
  }
  return undefined; // a pipe path: handled by the caller
}

// Installed once per process: only sockets opened inside `fenced` are looked at.
if (!(net.Socket.prototype.connect as { keyturnFenced?: boolean }).keyturnFenced) {
  const connect = function (this: net.Socket, ...args: ConnectArgs): net.Socket {
    if (!scope.getStore()) return originalConnect.apply(this, args);
    const parsed = connectOptions(args);
    if (!parsed || typeof parsed.options.path === 'string') {
      refuse(this, 'a local socket path is not a downstream address');
      return this;
    }
    const host = typeof parsed.options.host === 'string' ? parsed.options.host : 'localhost';
    const early = net.isIP(normalHost(host))
      ? outboundRefusal(host, normalHost(host))
      : outboundRefusal(host);
    if (early) {
      refuse(this, early);
      return this;
    }
    const inner = (parsed.options.lookup as typeof dns.lookup | undefined) ?? policy.lookup ?? dns.lookup;
    const options = { ...parsed.options, lookup: fencedLookup(host, inner) };
    return parsed.callback === undefined
      ? originalConnect.call(this, options)
      : originalConnect.call(this, options, parsed.callback);
  };
  (connect as { keyturnFenced?: boolean }).keyturnFenced = true;
  net.Socket.prototype.connect = connect as typeof net.Socket.prototype.connect;
}
