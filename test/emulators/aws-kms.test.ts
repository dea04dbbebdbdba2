// The AWS KMS emulator, exercised through the real @aws-sdk/client-kms so that every response shape and error is
// the one the SDK parses and every signature is a real SigV4 one. Each strict rule is shown refusing.
import { randomBytes } from 'node:crypto';
import {
  CancelKeyDeletionCommand,
  CreateAliasCommand,
  CreateKeyCommand,
  DecryptCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  EnableKeyCommand,
  EnableKeyRotationCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GetKeyRotationStatusCommand,
  KMSClient,
  KMSServiceException,
  ListAliasesCommand,
  ListKeysCommand,
  ReEncryptCommand,
  RotateKeyOnDemandCommand,
  ScheduleKeyDeletionCommand,
} from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AwsKmsEmulator, startAwsKmsEmulator } from './aws-kms.ts';

let emu: AwsKmsEmulator;
let kms: KMSClient;
const clients: KMSClient[] = [];

function client(
  credentials: { accessKeyId: string; secretAccessKey: string },
  options: { region?: string; maxAttempts?: number } = {},
) {
  const c = new KMSClient({
    endpoint: emu.endpoint,
    region: options.region ?? emu.region,
    credentials,
    maxAttempts: options.maxAttempts ?? 1,
  });
  clients.push(c);
  return c;
}

/** The rejection of `p`, which must be an SDK service exception; returns its name, message and status. */
async function refusal(
  p: Promise<unknown>,
): Promise<{ name: string; message: string; status: number | undefined }> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(KMSServiceException);
    const err = e as KMSServiceException;
    return { name: err.name, message: err.message, status: err.$metadata.httpStatusCode };
  }
  throw new Error('expected the call to be refused, but it succeeded');
}

async function newKey(description = 'test key') {
  const out = await kms.send(
    new CreateKeyCommand({ Description: description, KeySpec: 'SYMMETRIC_DEFAULT' }),
  );
  return out.KeyMetadata!;
}

beforeAll(async () => {
  emu = await startAwsKmsEmulator();
  kms = client(emu.credentials);
});
afterAll(async () => {
  for (const c of clients) c.destroy();
  await emu.close();
});

describe('keys and aliases', () => {
  it('CreateKey returns KMS metadata with a UUID key id and an ARN of the region and account', async () => {
    const meta = await newKey('kek');
    expect(meta.KeyId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(meta.Arn).toBe(`arn:aws:kms:${emu.region}:${emu.accountId}:key/${meta.KeyId}`);
    expect(meta).toMatchObject({
      AWSAccountId: emu.accountId,
      Description: 'kek',
      Enabled: true,
      KeyState: 'Enabled',
      KeySpec: 'SYMMETRIC_DEFAULT',
      KeyUsage: 'ENCRYPT_DECRYPT',
      EncryptionAlgorithms: ['SYMMETRIC_DEFAULT'],
    });
    expect(meta.CreationDate).toBeInstanceOf(Date);
  });

  it('CreateKey of a key spec the emulator does not model is refused, not silently made symmetric', async () => {
    const r = await refusal(
      kms.send(new CreateKeyCommand({ KeySpec: 'RSA_2048', KeyUsage: 'ENCRYPT_DECRYPT' })),
    );
    expect(r.name).toBe('UnsupportedOperationException');
  });

  it('KeyId is accepted as key id, key ARN, alias name and alias ARN', async () => {
    const meta = await newKey();
    const alias = `alias/kek-${meta.KeyId!.slice(0, 8)}`;
    await kms.send(new CreateAliasCommand({ AliasName: alias, TargetKeyId: meta.KeyId }));
    const aliasArn = `arn:aws:kms:${emu.region}:${emu.accountId}:${alias}`;
    for (const id of [meta.KeyId!, meta.Arn!, alias, aliasArn]) {
      const out = await kms.send(new DescribeKeyCommand({ KeyId: id }));
      expect(out.KeyMetadata!.KeyId).toBe(meta.KeyId);
      const enc = await kms.send(new EncryptCommand({ KeyId: id, Plaintext: Buffer.from('x') }));
      expect(enc.KeyId).toBe(meta.Arn);
    }
    const listed = await kms.send(new ListAliasesCommand({ KeyId: meta.KeyId }));
    expect(listed.Aliases?.map((a) => a.AliasName)).toEqual([alias]);
    const keys = await kms.send(new ListKeysCommand({}));
    expect(keys.Keys?.map((k) => k.KeyId)).toContain(meta.KeyId);
    const again = await refusal(
      kms.send(new CreateAliasCommand({ AliasName: alias, TargetKeyId: meta.KeyId })),
    );
    expect(again.name).toBe('AlreadyExistsException');
  });

  it('unknown, malformed and empty key ids are refused as KMS refuses them', async () => {
    const unknown = await refusal(
      kms.send(new DescribeKeyCommand({ KeyId: '11111111-2222-3333-4444-555555555555' })),
    );
    expect(unknown).toMatchObject({ name: 'NotFoundException', status: 400 });
    expect(unknown.message).toContain(
      `arn:aws:kms:${emu.region}:${emu.accountId}:key/11111111-2222-3333-4444-555555555555`,
    );
    const noAlias = await refusal(kms.send(new DescribeKeyCommand({ KeyId: 'alias/nobody' })));
    expect(noAlias.name).toBe('NotFoundException');
    const malformed = await refusal(kms.send(new DescribeKeyCommand({ KeyId: 'not-a-key' })));
    expect(malformed).toMatchObject({ name: 'NotFoundException', message: "Invalid keyId 'not-a-key'" });
    const empty = await refusal(kms.send(new DescribeKeyCommand({ KeyId: '' })));
    expect(empty.name).toBe('ValidationException');
    const otherRegion = (await newKey()).Arn!.replace(emu.region, 'us-west-2');
    expect((await refusal(kms.send(new DescribeKeyCommand({ KeyId: otherRegion })))).name).toBe(
      'NotFoundException',
    );
  });

  it('management operations that take a key id refuse an alias', async () => {
    const meta = await newKey();
    const alias = `alias/mgmt-${meta.KeyId!.slice(0, 8)}`;
    await kms.send(new CreateAliasCommand({ AliasName: alias, TargetKeyId: meta.KeyId }));
    expect((await refusal(kms.send(new DisableKeyCommand({ KeyId: alias })))).name).toBe('NotFoundException');
    expect(emu.inspectKey(meta.KeyId!).state).toBe('Enabled');
  });
});

describe('data keys and encryption', () => {
  it('GenerateDataKey returns a plaintext key and a blob that decrypts to it under the same context', async () => {
    const meta = await newKey();
    const context = { tenant: 'acme', purpose: 'local-store' };
    const dk = await kms.send(
      new GenerateDataKeyCommand({ KeyId: meta.KeyId, KeySpec: 'AES_256', EncryptionContext: context }),
    );
    expect(dk.Plaintext).toHaveLength(32);
    expect(dk.KeyId).toBe(meta.Arn);
    expect(Buffer.from(dk.CiphertextBlob!).includes(Buffer.from(dk.Plaintext!))).toBe(false);
    // Context order does not matter (KMS canonicalizes it).
    const out = await kms.send(
      new DecryptCommand({
        CiphertextBlob: dk.CiphertextBlob,
        EncryptionContext: { purpose: 'local-store', tenant: 'acme' },
      }),
    );
    expect(Buffer.from(out.Plaintext!)).toEqual(Buffer.from(dk.Plaintext!));
    expect(out.KeyId).toBe(meta.Arn);
    const bytes = await kms.send(new GenerateDataKeyCommand({ KeyId: meta.KeyId, NumberOfBytes: 48 }));
    expect(bytes.Plaintext).toHaveLength(48);
  });

  it('GenerateDataKey needs exactly one of KeySpec and NumberOfBytes', async () => {
    const meta = await newKey();
    const neither = await refusal(kms.send(new GenerateDataKeyCommand({ KeyId: meta.KeyId })));
    expect(neither.name).toBe('ValidationException');
    const both = await refusal(
      kms.send(new GenerateDataKeyCommand({ KeyId: meta.KeyId, KeySpec: 'AES_256', NumberOfBytes: 32 })),
    );
    expect(both.name).toBe('ValidationException');
  });

  it('a context that differs in any key or value, or has a key missing or extra, is InvalidCiphertextException', async () => {
    const meta = await newKey();
    const context = { tenant: 'acme', purpose: 'local-store' };
    const enc = await kms.send(
      new EncryptCommand({ KeyId: meta.KeyId, Plaintext: Buffer.from('secret'), EncryptionContext: context }),
    );
    const variants: Array<Record<string, string> | undefined> = [
      undefined,
      {},
      { tenant: 'acme' },
      { tenant: 'acme', purpose: 'local-store', extra: '1' },
      { tenant: 'ACME', purpose: 'local-store' },
      { Tenant: 'acme', purpose: 'local-store' },
      { tenant: 'acme', purpose: 'local-store ' },
    ];
    for (const ctx of variants) {
      const r = await refusal(
        kms.send(
          new DecryptCommand({
            CiphertextBlob: enc.CiphertextBlob,
            ...(ctx ? { EncryptionContext: ctx } : {}),
          }),
        ),
      );
      expect(r).toMatchObject({ name: 'InvalidCiphertextException', status: 400 });
    }
    // And the other way round: a blob made without a context does not open with one.
    const bare = await kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: Buffer.from('secret') }));
    const r = await refusal(
      kms.send(new DecryptCommand({ CiphertextBlob: bare.CiphertextBlob, EncryptionContext: { a: 'b' } })),
    );
    expect(r.name).toBe('InvalidCiphertextException');
  });

  it('a tampered blob, truncated or with any byte flipped, is InvalidCiphertextException', async () => {
    const meta = await newKey();
    const enc = await kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: Buffer.from('secret') }));
    const blob = Buffer.from(enc.CiphertextBlob!);
    for (const i of [0, 5, 18, 25, blob.length - 20, blob.length - 1]) {
      const bad = Buffer.from(blob);
      bad[i] = bad[i]! ^ 0x01;
      expect((await refusal(kms.send(new DecryptCommand({ CiphertextBlob: bad })))).name).toBe(
        'InvalidCiphertextException',
      );
    }
    const short = blob.subarray(0, 30);
    expect((await refusal(kms.send(new DecryptCommand({ CiphertextBlob: short })))).name).toBe(
      'InvalidCiphertextException',
    );
    expect((await refusal(kms.send(new DecryptCommand({ CiphertextBlob: randomBytes(80) })))).name).toBe(
      'InvalidCiphertextException',
    );
  });

  it('Decrypt with a KeyId that is not the blob key is IncorrectKeyException; the right one, by any name, decrypts', async () => {
    const a = await newKey();
    const b = await newKey();
    const alias = `alias/a-${a.KeyId!.slice(0, 8)}`;
    await kms.send(new CreateAliasCommand({ AliasName: alias, TargetKeyId: a.KeyId }));
    const enc = await kms.send(new EncryptCommand({ KeyId: a.KeyId, Plaintext: Buffer.from('p') }));
    const wrong = await refusal(
      kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, KeyId: b.Arn })),
    );
    expect(wrong).toMatchObject({ name: 'IncorrectKeyException', status: 400 });
    for (const id of [a.KeyId!, a.Arn!, alias]) {
      const out = await kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, KeyId: id }));
      expect(Buffer.from(out.Plaintext!).toString()).toBe('p');
    }
  });

  it('Plaintext must be 1 to 4096 bytes', async () => {
    const meta = await newKey();
    await kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: randomBytes(4096) }));
    const big = await refusal(
      kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: randomBytes(4097) })),
    );
    expect(big.name).toBe('ValidationException');
    expect(big.message).toMatch(/^1 validation error detected: .*'plaintext'.*less than or equal to 4096/);
  });

  it('ReEncrypt moves a blob to another key and context; the source context and SourceKeyId are checked', async () => {
    const a = await newKey();
    const b = await newKey();
    const enc = await kms.send(
      new EncryptCommand({ KeyId: a.KeyId, Plaintext: Buffer.from('dek'), EncryptionContext: { v: '1' } }),
    );
    const re = await kms.send(
      new ReEncryptCommand({
        CiphertextBlob: enc.CiphertextBlob,
        SourceEncryptionContext: { v: '1' },
        SourceKeyId: a.KeyId,
        DestinationKeyId: b.Arn,
        DestinationEncryptionContext: { v: '2' },
      }),
    );
    expect(re).toMatchObject({ SourceKeyId: a.Arn, KeyId: b.Arn });
    const out = await kms.send(
      new DecryptCommand({ CiphertextBlob: re.CiphertextBlob, EncryptionContext: { v: '2' } }),
    );
    expect(Buffer.from(out.Plaintext!).toString()).toBe('dek');
    expect(out.KeyId).toBe(b.Arn);
    const badContext = await refusal(
      kms.send(
        new ReEncryptCommand({
          CiphertextBlob: enc.CiphertextBlob,
          SourceEncryptionContext: { v: '2' },
          DestinationKeyId: b.KeyId,
        }),
      ),
    );
    expect(badContext.name).toBe('InvalidCiphertextException');
    const badSource = await refusal(
      kms.send(
        new ReEncryptCommand({
          CiphertextBlob: enc.CiphertextBlob,
          SourceEncryptionContext: { v: '1' },
          SourceKeyId: b.KeyId,
          DestinationKeyId: b.KeyId,
        }),
      ),
    );
    expect(badSource.name).toBe('IncorrectKeyException');
  });
});

describe('key states and rotation', () => {
  it('a disabled key refuses cryptography with DisabledException until enabled again', async () => {
    const meta = await newKey();
    const enc = await kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: Buffer.from('p') }));
    await kms.send(new DisableKeyCommand({ KeyId: meta.KeyId }));
    expect((await kms.send(new DescribeKeyCommand({ KeyId: meta.KeyId }))).KeyMetadata).toMatchObject({
      KeyState: 'Disabled',
      Enabled: false,
    });
    for (const p of [
      kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob })),
      kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: Buffer.from('p') })),
      kms.send(new GenerateDataKeyCommand({ KeyId: meta.KeyId, KeySpec: 'AES_256' })),
    ]) {
      expect(await refusal(p)).toMatchObject({ name: 'DisabledException', status: 400 });
    }
    await kms.send(new EnableKeyCommand({ KeyId: meta.KeyId }));
    await kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob }));
  });

  it('a key pending deletion refuses with KMSInvalidStateException; cancelling leaves it disabled', async () => {
    const meta = await newKey();
    const enc = await kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: Buffer.from('p') }));
    const window = await refusal(
      kms.send(new ScheduleKeyDeletionCommand({ KeyId: meta.KeyId, PendingWindowInDays: 3 })),
    );
    expect(window.name).toBe('ValidationException');
    const sched = await kms.send(
      new ScheduleKeyDeletionCommand({ KeyId: meta.KeyId, PendingWindowInDays: 7 }),
    );
    expect(sched).toMatchObject({ KeyId: meta.Arn, KeyState: 'PendingDeletion', PendingWindowInDays: 7 });
    expect(sched.DeletionDate).toBeInstanceOf(Date);
    expect((await refusal(kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob })))).name).toBe(
      'KMSInvalidStateException',
    );
    expect((await refusal(kms.send(new EnableKeyCommand({ KeyId: meta.KeyId })))).name).toBe(
      'KMSInvalidStateException',
    );
    await kms.send(new CancelKeyDeletionCommand({ KeyId: meta.KeyId }));
    expect((await kms.send(new DescribeKeyCommand({ KeyId: meta.KeyId }))).KeyMetadata!.KeyState).toBe(
      'Disabled',
    );
    expect((await refusal(kms.send(new CancelKeyDeletionCommand({ KeyId: meta.KeyId })))).name).toBe(
      'KMSInvalidStateException',
    );
  });

  it('RotateKeyOnDemand adds a backing key: old blobs still decrypt, new blobs use the new backing key', async () => {
    const meta = await newKey();
    await kms.send(new EnableKeyRotationCommand({ KeyId: meta.KeyId }));
    expect((await kms.send(new GetKeyRotationStatusCommand({ KeyId: meta.KeyId }))).KeyRotationEnabled).toBe(
      true,
    );
    const before = await kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: Buffer.from('old') }));
    expect(await kms.send(new RotateKeyOnDemandCommand({ KeyId: meta.KeyId }))).toMatchObject({
      KeyId: meta.Arn,
    });
    expect(emu.inspectKey(meta.KeyId!).backingVersions).toBe(2);
    const after = await kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: Buffer.from('new') }));
    // The blob names its backing version (bytes 17..20 of the emulator's layout).
    expect(Buffer.from(before.CiphertextBlob!).readUInt32BE(17)).toBe(1);
    expect(Buffer.from(after.CiphertextBlob!).readUInt32BE(17)).toBe(2);
    expect(
      Buffer.from(
        (await kms.send(new DecryptCommand({ CiphertextBlob: before.CiphertextBlob }))).Plaintext!,
      ).toString(),
    ).toBe('old');
    expect(
      Buffer.from(
        (await kms.send(new DecryptCommand({ CiphertextBlob: after.CiphertextBlob }))).Plaintext!,
      ).toString(),
    ).toBe('new');
    // A blob claiming the old version but sealed under the new backing key does not open.
    const relabelled = Buffer.from(after.CiphertextBlob!);
    relabelled.writeUInt32BE(1, 17);
    expect((await refusal(kms.send(new DecryptCommand({ CiphertextBlob: relabelled })))).name).toBe(
      'InvalidCiphertextException',
    );
  });

  it('on-demand rotation stops at the KMS limit of 10', async () => {
    const meta = await newKey();
    for (let i = 0; i < 10; i++) await kms.send(new RotateKeyOnDemandCommand({ KeyId: meta.KeyId }));
    expect((await refusal(kms.send(new RotateKeyOnDemandCommand({ KeyId: meta.KeyId })))).name).toBe(
      'LimitExceededException',
    );
  });
});

describe('authentication and authorization', () => {
  it('unknown credentials are UnrecognizedClientException; a wrong secret or scope is InvalidSignatureException', async () => {
    const unknown = client({ accessKeyId: 'AKIAUNKNOWNUNKNOWN12', secretAccessKey: 'x'.repeat(40) });
    expect(await refusal(unknown.send(new ListKeysCommand({})))).toMatchObject({
      name: 'UnrecognizedClientException',
      status: 400,
    });
    const wrongSecret = client({ accessKeyId: emu.credentials.accessKeyId, secretAccessKey: 'y'.repeat(40) });
    expect(await refusal(wrongSecret.send(new ListKeysCommand({})))).toMatchObject({
      name: 'InvalidSignatureException',
      status: 400,
    });
    const wrongRegion = client(emu.credentials, { region: 'us-east-2' });
    expect((await refusal(wrongRegion.send(new ListKeysCommand({})))).name).toBe('InvalidSignatureException');
  });

  it('an unsigned request is refused', async () => {
    const res = await fetch(emu.endpoint, {
      method: 'POST',
      headers: { 'x-amz-target': 'TrentService.ListKeys', 'content-type': 'application/x-amz-json-1.1' },
      body: '{}',
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ __type: 'MissingAuthenticationTokenException' });
  });

  it('a removed access key stops working', async () => {
    const creds = emu.addCredentials({ name: 'temp' });
    const c = client(creds);
    await c.send(new ListKeysCommand({}));
    emu.removeCredentials(creds.accessKeyId);
    expect((await refusal(c.send(new ListKeysCommand({})))).name).toBe('UnrecognizedClientException');
  });

  it('a principal denied GenerateDataKey may still Decrypt; the refusal is in KMS form', async () => {
    const meta = await newKey();
    const reader = emu.addCredentials({ name: 'reader', deny: ['kms:GenerateDataKey*', 'Encrypt'] });
    const c = client(reader);
    const dk = await kms.send(
      new GenerateDataKeyCommand({ KeyId: meta.KeyId, KeySpec: 'AES_256', EncryptionContext: { a: '1' } }),
    );
    const out = await c.send(
      new DecryptCommand({ CiphertextBlob: dk.CiphertextBlob, EncryptionContext: { a: '1' } }),
    );
    expect(Buffer.from(out.Plaintext!)).toEqual(Buffer.from(dk.Plaintext!));
    const denied = await refusal(
      c.send(new GenerateDataKeyCommand({ KeyId: meta.KeyId, KeySpec: 'AES_256' })),
    );
    expect(denied).toMatchObject({
      name: 'AccessDeniedException',
      status: 400,
      message: `User: ${reader.arn} is not authorized to perform: kms:GenerateDataKey on resource: ${meta.Arn} because no identity-based policy allows the kms:GenerateDataKey action`,
    });
    expect(
      (await refusal(c.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: Buffer.from('x') })))).name,
    ).toBe('AccessDeniedException');
    // Revoking Decrypt mid-test.
    emu.setDeny(reader.accessKeyId, ['kms:Decrypt']);
    const noDecrypt = await refusal(
      c.send(new DecryptCommand({ CiphertextBlob: dk.CiphertextBlob, EncryptionContext: { a: '1' } })),
    );
    expect(noDecrypt.message).toContain('kms:Decrypt on resource');
  });

  it('ReEncrypt needs ReEncryptFrom on the source and ReEncryptTo on the destination', async () => {
    const a = await newKey();
    const b = await newKey();
    const enc = await kms.send(new EncryptCommand({ KeyId: a.KeyId, Plaintext: Buffer.from('x') }));
    const c = client(emu.addCredentials({ deny: ['kms:ReEncryptTo'] }));
    const r = await refusal(
      c.send(new ReEncryptCommand({ CiphertextBlob: enc.CiphertextBlob, DestinationKeyId: b.KeyId })),
    );
    expect(r.message).toContain(`kms:ReEncryptTo on resource: ${b.Arn}`);
  });
});

describe('test hooks', () => {
  it('counts calls per operation, refused ones included', async () => {
    const meta = await newKey();
    const enc = await kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: Buffer.from('x') }));
    emu.resetCalls();
    await kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob }));
    await kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob }));
    await refusal(
      kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, EncryptionContext: { x: 'y' } })),
    );
    expect(emu.callCount('Decrypt')).toBe(3);
    expect(emu.callCount('GenerateDataKey')).toBe(0);
    expect(emu.calls).toEqual({ Decrypt: 3 });
  });

  it('failNext injects KMSInternalException (500) and ThrottlingException (400) before the operation runs', async () => {
    const meta = await newKey();
    emu.failNext(1, 'KMSInternalException', (op) => op === 'GenerateDataKey');
    const internal = await refusal(
      kms.send(new GenerateDataKeyCommand({ KeyId: meta.KeyId, KeySpec: 'AES_256' })),
    );
    expect(internal).toMatchObject({ name: 'KMSInternalException', status: 500 });
    emu.failNext(1, 'ThrottlingException');
    const throttled = await refusal(kms.send(new DescribeKeyCommand({ KeyId: meta.KeyId })));
    expect(throttled).toMatchObject({ name: 'ThrottlingException', status: 400, message: 'Rate exceeded' });
    await kms.send(new GenerateDataKeyCommand({ KeyId: meta.KeyId, KeySpec: 'AES_256' }));
    // The SDK's own retries absorb a transient failure when the client allows them.
    const retrying = client(emu.credentials, { maxAttempts: 3 });
    emu.resetCalls();
    emu.failNext(2, 'ThrottlingException');
    await retrying.send(new DescribeKeyCommand({ KeyId: meta.KeyId }));
    expect(emu.callCount('DescribeKey')).toBe(3);
  });

  it('records no plaintext or key material', async () => {
    const meta = await newKey();
    const secret = randomBytes(32);
    await kms.send(new EncryptCommand({ KeyId: meta.KeyId, Plaintext: secret }));
    const recorded = JSON.stringify(emu.requests);
    expect(recorded).not.toContain(secret.toString('base64'));
    expect(Object.keys(emu.requests.at(-1)!).sort()).toEqual(['accessKeyId', 'operation', 'status']);
  });
});
