// The aws-iam target's pure parts: which IAM user a caller ARN names, where a connection points (region and endpoint
// instead of host and port), and the AWS-layout fields an IAM secret adds to what agents and Kubernetes Secrets get.
import { describe, expect, it } from 'vitest';
import { render } from '../../src/agent/render.ts';
import { connectionAddress } from '../../src/service/registry-service.ts';
import { loginOf, secretDocument } from '../../src/stores/index.ts';
import { secretData } from '../../src/sync/kubernetes/kubernetes-sync.ts';
import { iamUserOf } from '../../src/targets/aws-iam/aws-iam-target.ts';
import { targetDriver } from '../../src/targets/index.ts';

const iam = targetDriver('aws-iam')!;
const postgres = targetDriver('postgres')!;

describe('iamUserOf', () => {
  it('names the user of a user ARN, its path left out, and nothing for other principals', () => {
    expect(iamUserOf('arn:aws:iam::123456789012:user/svc-payments')).toBe('svc-payments');
    expect(iamUserOf('arn:aws:iam::123456789012:user/services/payments/svc-payments')).toBe('svc-payments');
    expect(iamUserOf('arn:aws-us-gov:iam::123456789012:user/svc')).toBe('svc');
    expect(iamUserOf('arn:aws:iam::123456789012:root')).toBeUndefined();
    expect(iamUserOf('arn:aws:sts::123456789012:assumed-role/deployer/session')).toBeUndefined();
    expect(iamUserOf('arn:aws:iam::1234:user/short-account')).toBeUndefined();
  });
});

describe('connectionAddress', () => {
  it("aws-iam: AWS's own address by default, or the endpoint's host and port", () => {
    expect(connectionAddress(iam, {})).toEqual({ host: 'iam.amazonaws.com', port: 443 });
    expect(connectionAddress(iam, { region: 'eu-west-1' })).toEqual({
      host: 'iam.amazonaws.com',
      port: 443,
      region: 'eu-west-1',
    });
    expect(connectionAddress(iam, { endpoint: 'https://iam.vpce.example.com' })).toEqual({
      host: 'iam.vpce.example.com',
      port: 443,
      endpoint: 'https://iam.vpce.example.com',
    });
    expect(connectionAddress(iam, { endpoint: 'http://127.0.0.1:4566/' })).toMatchObject({
      host: '127.0.0.1',
      port: 4566,
      endpoint: 'http://127.0.0.1:4566',
    });
    expect(connectionAddress(iam, { endpoint: 'http://[::1]:4566' })).toMatchObject({
      host: '::1',
      port: 4566,
    });
    expect(connectionAddress(iam, { endpoint: 'http://localhost' })).toMatchObject({ port: 80 });
  });

  it('aws-iam: refuses host and port, http off this machine, and a path, login or query', () => {
    expect(() => connectionAddress(iam, { host: 'iam.amazonaws.com' })).toThrow(/not host and port/);
    expect(() => connectionAddress(iam, { port: 443 })).toThrow(/not host and port/);
    expect(() => connectionAddress(iam, { endpoint: 'http://iam.example.invalid' })).toThrow(/https:\/\//);
    expect(() => connectionAddress(iam, { endpoint: 'http://10.0.0.5:4566' })).toThrow(/loopback/);
    expect(() => connectionAddress(iam, { endpoint: 'https://x.invalid/api' })).toThrow(/no path/);
    expect(() => connectionAddress(iam, { endpoint: 'https://a:b@x.invalid' })).toThrow(
      /no path, query or login/,
    );
    expect(() => connectionAddress(iam, { endpoint: 'https://x.invalid?a=1' })).toThrow(
      /no path, query or login/,
    );
    expect(() => connectionAddress(iam, { endpoint: 'not a url' })).toThrow(/not a URL/);
  });

  it('other targets: host is required, its port defaults, region and endpoint are refused', () => {
    expect(connectionAddress(postgres, { host: 'db.internal' })).toEqual({ host: 'db.internal', port: 5432 });
    expect(() => connectionAddress(postgres, {})).toThrow(/host is required for postgres/);
    expect(() => connectionAddress(postgres, { host: 'db', region: 'eu-west-1' })).toThrow(
      /region and endpoint apply/,
    );
    expect(() => connectionAddress(postgres, { host: 'db', endpoint: 'https://db' })).toThrow(
      /region and endpoint/,
    );
  });
});

describe('an IAM secret in the AWS layout', () => {
  const connection = { host: 'iam.amazonaws.com', port: 443 };
  const document = secretDocument(connection, 'aws-iam', {
    username: 'svc-payments',
    password: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
    keyId: 'AKIAIOSFODNN7EXAMPLE',
  });

  it('the stored document carries accessKeyId and secretAccessKey, and its login names the key', () => {
    expect(document).toMatchObject({
      engine: 'aws-iam',
      username: 'svc-payments',
      accessKeyId: 'AKIAIOSFODNN7EXAMPLE',
      secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
    });
    expect(loginOf(document)).toEqual({
      username: 'svc-payments',
      password: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
      keyId: 'AKIAIOSFODNN7EXAMPLE',
    });
    // A password document has no key fields, and its login no keyId.
    const plain = secretDocument(connection, 'postgres', { username: 'app', password: 'x'.repeat(20) });
    expect(plain).not.toHaveProperty('accessKeyId');
    expect(loginOf(plain)).toEqual({ username: 'app', password: 'x'.repeat(20) });
  });

  it('agent templates and Kubernetes Secrets get the key id (empty or absent for other targets)', () => {
    const fields = {
      username: 'svc-payments',
      password: document.password,
      host: 'iam.amazonaws.com',
      port: 443,
      database: null,
      version: 'v1',
      rotatedAt: '2026-12-04T00:00:00.000Z',
    };
    expect(
      render('AWS_ACCESS_KEY_ID={{accessKeyId}}\nAWS_SECRET_ACCESS_KEY={{secretAccessKey}}', {
        ...fields,
        accessKeyId: 'AKIAIOSFODNN7EXAMPLE',
        secretAccessKey: document.password,
      }),
    ).toBe(`AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY=${document.password}`);
    expect(render('[{{accessKeyId}}]', fields)).toBe('[]');
    const payload = {
      credentialId: 'c',
      versionId: 'v1',
      createdAt: 't',
      rotatedAt: 't',
      fields: {
        username: 'svc',
        password: document.password,
        host: 'h',
        port: 443,
        accessKeyId: 'AKIAIOSFODNN7EXAMPLE',
      },
    };
    const spec = {
      type: 'kubernetes' as const,
      namespace: 'ns',
      name: 'aws',
      keys: { accessKeyId: 'AWS_ACCESS_KEY_ID', password: 'AWS_SECRET_ACCESS_KEY' },
    };
    const data = secretData(spec, payload);
    expect(Buffer.from(data.AWS_ACCESS_KEY_ID ?? '', 'base64').toString()).toBe('AKIAIOSFODNN7EXAMPLE');
    expect(Buffer.from(data.AWS_SECRET_ACCESS_KEY ?? '', 'base64').toString()).toBe(document.password);
    const { accessKeyId: _, ...withoutKey } = payload.fields;
    expect(
      Object.keys(secretData({ ...spec, keys: undefined }, { ...payload, fields: withoutKey })),
    ).not.toContain('accessKeyId');
  });
});
