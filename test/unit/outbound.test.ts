// The outbound fence's rules (net/outbound.ts) and their configuration: what each address class and list entry
// decides, without any connection (test/integration/outbound-fence.test.ts connects).
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.ts';
import {
  type OutboundPolicy,
  type OutboundRule,
  outboundRefusal,
  parseOutboundRule,
} from '../../src/net/outbound.ts';

const rules = (...entries: string[]): OutboundRule[] =>
  entries.map((e) => {
    const rule = parseOutboundRule(e);
    if (typeof rule === 'string') throw new Error(rule);
    return rule;
  });
const development: OutboundPolicy = { loopback: true, deny: [], denyByDefault: false };
const production: OutboundPolicy = { loopback: false, deny: [], denyByDefault: true };

describe('outboundRefusal', () => {
  it('always refuses link-local and metadata addresses and names, whatever the lists say', () => {
    const allowAll: OutboundPolicy = { ...development, allow: rules('0.0.0.0/0', '::/0', '*.internal') };
    for (const [host, address] of [
      ['169.254.169.254', undefined],
      ['x', '169.254.170.2'],
      ['x', '::ffff:169.254.169.254'],
      ['x', 'fd00:ec2::254'],
      ['x', 'fe80::1'],
      ['x', '100.100.100.200'],
      ['x', '168.63.129.16'],
      ['0.0.0.0', undefined],
      ['metadata.google.internal', undefined],
      ['METADATA.GOOGLE.INTERNAL.', undefined],
    ] as const) {
      expect(outboundRefusal(host, address, allowAll), `${host} ${address}`).toMatch(
        /link-local or cloud metadata/,
      );
    }
  });

  it('loopback: allowed in development, refused in production unless the allow list names it', () => {
    expect(outboundRefusal('localhost', '127.0.0.1', development)).toBeUndefined();
    expect(outboundRefusal('localhost', '::1', { ...development, loopback: false })).toMatch(/loopback/);
    expect(outboundRefusal('x', '::ffff:127.0.0.1', { ...development, loopback: false })).toMatch(/loopback/);
    expect(outboundRefusal('localhost', '127.0.0.1', production)).toMatch(/KEYTURN_OUTBOUND_ALLOW/);
    expect(
      outboundRefusal('localhost', '127.0.0.1', { ...production, allow: rules('127.0.0.1') }),
    ).toBeUndefined();
  });

  it('production denies by default; the allow list admits by range or host pattern; the deny list wins', () => {
    expect(outboundRefusal('db.internal', '10.0.0.5', production)).toMatch(
      /in production Keyturn connects only/,
    );
    const policy: OutboundPolicy = {
      ...production,
      allow: rules('10.20.0.0/16', '*.db.internal'),
      deny: rules('10.20.9.0/24', 'legacy.db.internal'),
    };
    expect(outboundRefusal('any', '10.20.1.1', policy)).toBeUndefined();
    expect(outboundRefusal('pg.db.internal', '192.168.1.1', policy)).toBeUndefined();
    expect(outboundRefusal('db.internal', '192.168.1.1', policy)).toMatch(/not in KEYTURN_OUTBOUND_ALLOW/);
    expect(outboundRefusal('any', '10.20.9.9', policy)).toMatch(/KEYTURN_OUTBOUND_DENY \("10.20.9.0\/24"\)/);
    expect(outboundRefusal('legacy.db.internal', undefined, policy)).toMatch(/KEYTURN_OUTBOUND_DENY/);
    // A name alone is decided by its address later, unless a pattern or a metadata name decides it now.
    expect(outboundRefusal('other.example', undefined, policy)).toBeUndefined();
  });
});

describe('parseOutboundRule and the configuration', () => {
  it('takes CIDRs, addresses and host patterns, and says what is wrong with anything else', () => {
    expect(parseOutboundRule('10.0.0.0/8')).toMatchObject({ cidr: '10.0.0.0/8' });
    expect(parseOutboundRule('fd00::/8')).toMatchObject({ cidr: 'fd00::/8' });
    expect(parseOutboundRule('192.0.2.1')).toMatchObject({ cidr: '192.0.2.1' });
    expect(parseOutboundRule('*.DB.internal')).toMatchObject({ host: '*.db.internal' });
    expect(parseOutboundRule('10.0.0.0/33')).toMatch(/prefix length must be 0 to 32/);
    expect(parseOutboundRule('10.0.0.0/')).toMatch(/not a CIDR/);
    expect(parseOutboundRule('db.*.internal')).toMatch(/neither a CIDR/);
    expect(parseOutboundRule('http://db')).toMatch(/neither a CIDR/);
  });

  it('KEYTURN_OUTBOUND_ALLOW and _DENY load into the policy, production denies by default, bad entries stop the start', () => {
    const base = { KEYTURN_MASTER_KEY: Buffer.alloc(32, 1).toString('base64') };
    const dev = loadConfig({ ...base, KEYTURN_OUTBOUND_DENY: '10.0.0.0/8, *.corp.example' });
    expect(dev.outbound).toMatchObject({ loopback: true, denyByDefault: false });
    expect(dev.outbound.allow).toBeUndefined();
    expect(dev.outbound.deny).toHaveLength(2);
    expect(() => loadConfig({ ...base, KEYTURN_OUTBOUND_ALLOW: '10.0.0.0/99' })).toThrow(
      /KEYTURN_OUTBOUND_ALLOW: "10.0.0.0\/99" is not a CIDR/,
    );
  });
});
