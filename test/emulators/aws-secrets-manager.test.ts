// The AWS Secrets Manager emulator, exercised through the real @aws-sdk/client-secrets-manager so that every
// response shape, date and error is the one the SDK parses.
import { randomUUID } from 'node:crypto';
import {
  CreateSecretCommand,
  DeleteSecretCommand,
  DescribeSecretCommand,
  GetSecretValueCommand,
  InvalidParameterException,
  InvalidRequestException,
  ListSecretVersionIdsCommand,
  PutSecretValueCommand,
  ResourceExistsException,
  ResourceNotFoundException,
  RestoreSecretCommand,
  RotateSecretCommand,
  SecretsManagerClient,
  type SecretsManagerClientConfig,
  SecretsManagerServiceException,
  UpdateSecretVersionStageCommand,
} from '@aws-sdk/client-secrets-manager';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AwsSecretsManagerEmulator, startAwsSecretsManagerEmulator } from './aws-secrets-manager.ts';

let emu: AwsSecretsManagerEmulator;
let sm: SecretsManagerClient;
const clients: SecretsManagerClient[] = [];

function client(
  e: AwsSecretsManagerEmulator,
  overrides: Partial<{ maxAttempts: number; region: string; accessKeyId: string }> = {},
): SecretsManagerClient {
  const c = new SecretsManagerClient({
    endpoint: e.endpoint,
    region: overrides.region ?? e.region,
    credentials: {
      ...e.credentials,
      ...(overrides.accessKeyId ? { accessKeyId: overrides.accessKeyId } : {}),
    },
    maxAttempts: overrides.maxAttempts ?? 1,
  });
  clients.push(c);
  return c;
}

beforeAll(async () => {
  emu = await startAwsSecretsManagerEmulator();
  sm = client(emu);
});
afterAll(async () => {
  for (const c of clients) c.destroy();
  await emu.close();
});

/** The rejection of `p`, which must reject with an SDK service exception. */
async function failure(p: Promise<unknown>): Promise<SecretsManagerServiceException> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SecretsManagerServiceException);
    return e as SecretsManagerServiceException;
  }
  throw new Error('expected the call to fail');
}

const name = (prefix: string) => `keyturn/test/${prefix}-${randomUUID().slice(0, 8)}`;
const doc = (password: string) => JSON.stringify({ engine: 'postgres', username: 'app', password });

async function stages(secretId: string): Promise<Record<string, string[]>> {
  const d = await sm.send(new DescribeSecretCommand({ SecretId: secretId }));
  return d.VersionIdsToStages ?? {};
}

/** A raw JSON 1.1 call, bypassing the SDK, to look at the wire itself. */
async function raw(
  e: AwsSecretsManagerEmulator,
  operation: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${e.endpoint}/`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-amz-json-1.1',
      'x-amz-target': `secretsmanager.${operation}`,
      ...headers,
    },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

describe('CreateSecret and GetSecretValue', () => {
  it('creates a secret whose first version is AWSCURRENT, readable by name and by ARN', async () => {
    const n = name('create');
    const token = randomUUID();
    const created = await sm.send(
      new CreateSecretCommand({ Name: n, SecretString: doc('p1'), ClientRequestToken: token }),
    );
    expect(created.Name).toBe(n);
    expect(created.VersionId).toBe(token);
    expect(created.ARN).toMatch(
      new RegExp(`^arn:aws:secretsmanager:eu-west-1:123456789012:secret:${n}-[A-Za-z0-9]{6}$`),
    );

    for (const id of [n, created.ARN!]) {
      const got = await sm.send(new GetSecretValueCommand({ SecretId: id }));
      expect(got).toMatchObject({ ARN: created.ARN, Name: n, VersionId: token, SecretString: doc('p1') });
      expect(got.VersionStages).toEqual(['AWSCURRENT']);
      expect(got.CreatedDate).toBeInstanceOf(Date);
      expect(Math.abs(got.CreatedDate!.getTime() - Date.now())).toBeLessThan(10_000);
    }

    // What went over the wire: PascalCase body, SigV4 authorization for the emulator's key.
    const last = emu.requests.at(-1)!;
    expect(last.operation).toBe('GetSecretValue');
    expect(last.body).toEqual({ SecretId: created.ARN });
    expect(last.authorization).toMatch(
      new RegExp(
        `^AWS4-HMAC-SHA256 Credential=${emu.credentials.accessKeyId}/\\d{8}/eu-west-1/secretsmanager/`,
      ),
    );
  });

  it('lets the SDK fill ClientRequestToken, and round-trips SecretBinary', async () => {
    const n = name('binary');
    const bytes = new Uint8Array([0, 1, 2, 250, 255]);
    const created = await sm.send(new CreateSecretCommand({ Name: n, SecretBinary: bytes }));
    expect(created.VersionId).toMatch(/^[0-9a-f-]{36}$/);
    expect(emu.requests.at(-1)!.body.ClientRequestToken).toBe(created.VersionId);
    const got = await sm.send(new GetSecretValueCommand({ SecretId: n }));
    expect(got.SecretString).toBeUndefined();
    expect(got.SecretBinary).toEqual(bytes);
  });

  it('treats a repeated CreateSecret with the same token and value as a no-op, anything else as ResourceExists', async () => {
    const n = name('dup');
    const token = randomUUID();
    const first = await sm.send(
      new CreateSecretCommand({ Name: n, SecretString: 'a', ClientRequestToken: token }),
    );
    const again = await sm.send(
      new CreateSecretCommand({ Name: n, SecretString: 'a', ClientRequestToken: token }),
    );
    expect(again).toMatchObject({ ARN: first.ARN, VersionId: token });

    const otherToken = await failure(sm.send(new CreateSecretCommand({ Name: n, SecretString: 'a' })));
    expect(otherToken).toBeInstanceOf(ResourceExistsException);
    expect(otherToken.name).toBe('ResourceExistsException');
    expect(otherToken.$metadata.httpStatusCode).toBe(400);
    const otherValue = await failure(
      sm.send(new CreateSecretCommand({ Name: n, SecretString: 'b', ClientRequestToken: token })),
    );
    expect(otherValue.name).toBe('ResourceExistsException');
  });

  it('refuses both SecretString and SecretBinary, and tokens outside 32-64 characters', async () => {
    const both = await failure(
      sm.send(
        new CreateSecretCommand({ Name: name('both'), SecretString: 'x', SecretBinary: new Uint8Array([1]) }),
      ),
    );
    expect(both).toBeInstanceOf(InvalidParameterException);
    const short = await failure(
      sm.send(
        new CreateSecretCommand({ Name: name('short'), SecretString: 'x', ClientRequestToken: 'too-short' }),
      ),
    );
    expect(short.name).toBe('InvalidParameterException');
    const long = await failure(
      sm.send(
        new CreateSecretCommand({
          Name: name('long'),
          SecretString: 'x',
          ClientRequestToken: 'x'.repeat(65),
        }),
      ),
    );
    expect(long.name).toBe('InvalidParameterException');
  });
});

describe('GetSecretValue errors', () => {
  it('reports an unknown secret, version or stage as ResourceNotFoundException (400)', async () => {
    const missing = await failure(sm.send(new GetSecretValueCommand({ SecretId: name('nope') })));
    expect(missing).toBeInstanceOf(ResourceNotFoundException);
    expect(missing.name).toBe('ResourceNotFoundException');
    expect(missing.$metadata.httpStatusCode).toBe(400);
    expect(missing.$fault).toBe('client');
    expect(missing.message).toBe("Secrets Manager can't find the specified secret.");

    const n = name('get-errors');
    await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'v' }));
    const noVersion = await failure(
      sm.send(new GetSecretValueCommand({ SecretId: n, VersionId: randomUUID() })),
    );
    expect(noVersion.name).toBe('ResourceNotFoundException');
    const noStage = await failure(
      sm.send(new GetSecretValueCommand({ SecretId: n, VersionStage: 'AWSPENDING' })),
    );
    expect(noStage.name).toBe('ResourceNotFoundException');
    expect(noStage.message).toContain('AWSPENDING');
    const noPrevious = await failure(
      sm.send(new GetSecretValueCommand({ SecretId: n, VersionStage: 'AWSPREVIOUS' })),
    );
    expect(noPrevious.name).toBe('ResourceNotFoundException');
  });

  it('reports a VersionId/VersionStage mismatch as InvalidRequestException', async () => {
    const n = name('mismatch');
    const { VersionId } = await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'v' }));
    const err = await failure(
      sm.send(new GetSecretValueCommand({ SecretId: n, VersionId, VersionStage: 'AWSPENDING' })),
    );
    expect(err).toBeInstanceOf(InvalidRequestException);
    expect(err.$metadata.httpStatusCode).toBe(400);
    expect(err.message).toBe('You provided a VersionStage that is not associated to the provided VersionId.');
    // Both naming the same version is fine.
    const ok = await sm.send(
      new GetSecretValueCommand({ SecretId: n, VersionId, VersionStage: 'AWSCURRENT' }),
    );
    expect(ok.SecretString).toBe('v');
  });

  it('puts exactly {__type, message} in error bodies and epoch-second numbers in dates', async () => {
    // The wire itself, read without the SDK: an emulator that takes unsigned requests (the shapes do not
    // depend on authentication; raw requests here carry no real signature).
    const open = await startAwsSecretsManagerEmulator({ requireSignature: false });
    try {
      const missing = await raw(open, 'GetSecretValue', { SecretId: name('raw') });
      expect(missing.status).toBe(400);
      expect(missing.json).toEqual({
        __type: 'ResourceNotFoundException',
        message: "Secrets Manager can't find the specified secret.",
      });
      const n = name('raw');
      await client(open).send(new CreateSecretCommand({ Name: n, SecretString: 'v' }));
      const described = await raw(open, 'DescribeSecret', { SecretId: n });
      expect(described.status).toBe(200);
      expect(typeof described.json.CreatedDate).toBe('number');
      expect(described.json.CreatedDate as number).toBeCloseTo(Date.now() / 1000, -2);
      const unknownOp = await raw(open, 'ListSecrets', {});
      expect(unknownOp).toMatchObject({ status: 400, json: { __type: 'UnknownOperationException' } });
    } finally {
      await open.close();
    }
  });
});

describe('the rotation label dance of the AWS templates', () => {
  it('pending under a token, promote with MoveTo/RemoveFrom, AWSPREVIOUS follows, pending removed', async () => {
    const n = name('rotate');
    const t1 = randomUUID();
    const { ARN: arn } = await sm.send(
      new CreateSecretCommand({ Name: n, SecretString: doc('p1'), ClientRequestToken: t1 }),
    );

    // createSecret step: no AWSPENDING value for the token yet → ResourceNotFoundException → generate and put.
    const t2 = randomUUID();
    const before = await failure(
      sm.send(new GetSecretValueCommand({ SecretId: arn, VersionId: t2, VersionStage: 'AWSPENDING' })),
    );
    expect(before.name).toBe('ResourceNotFoundException');
    const put = await sm.send(
      new PutSecretValueCommand({
        SecretId: arn,
        ClientRequestToken: t2,
        SecretString: doc('p2'),
        VersionStages: ['AWSPENDING'],
      }),
    );
    expect(put).toMatchObject({ ARN: arn, Name: n, VersionId: t2, VersionStages: ['AWSPENDING'] });
    expect(await stages(arn!)).toEqual({ [t1]: ['AWSCURRENT'], [t2]: ['AWSPENDING'] });

    // testSecret step reads the pending value by token and stage.
    const pending = await sm.send(
      new GetSecretValueCommand({ SecretId: arn, VersionId: t2, VersionStage: 'AWSPENDING' }),
    );
    expect(pending.SecretString).toBe(doc('p2'));
    expect((await sm.send(new GetSecretValueCommand({ SecretId: arn }))).SecretString).toBe(doc('p1'));

    // finishSecret: moving AWSCURRENT requires RemoveFromVersionId naming its holder.
    const noRemove = await failure(
      sm.send(
        new UpdateSecretVersionStageCommand({
          SecretId: arn,
          VersionStage: 'AWSCURRENT',
          MoveToVersionId: t2,
        }),
      ),
    );
    expect(noRemove).toBeInstanceOf(InvalidParameterException);
    expect(noRemove.message).toContain(t1);
    const wrongRemove = await failure(
      sm.send(
        new UpdateSecretVersionStageCommand({
          SecretId: arn,
          VersionStage: 'AWSCURRENT',
          MoveToVersionId: t2,
          RemoveFromVersionId: t2,
        }),
      ),
    );
    expect(wrongRemove.name).toBe('InvalidParameterException');
    const moved = await sm.send(
      new UpdateSecretVersionStageCommand({
        SecretId: arn,
        VersionStage: 'AWSCURRENT',
        MoveToVersionId: t2,
        RemoveFromVersionId: t1,
      }),
    );
    expect(moved).toMatchObject({ ARN: arn, Name: n });
    expect(await stages(arn!)).toEqual({ [t1]: ['AWSPREVIOUS'], [t2]: ['AWSPENDING', 'AWSCURRENT'] });
    expect((await sm.send(new GetSecretValueCommand({ SecretId: arn }))).SecretString).toBe(doc('p2'));
    expect(
      (await sm.send(new GetSecretValueCommand({ SecretId: arn, VersionStage: 'AWSPREVIOUS' }))).VersionId,
    ).toBe(t1);

    // Repeating finishSecret's call once done fails: t1 no longer carries AWSCURRENT (the template checks first).
    const repeat = await failure(
      sm.send(
        new UpdateSecretVersionStageCommand({
          SecretId: arn,
          VersionStage: 'AWSCURRENT',
          MoveToVersionId: t2,
          RemoveFromVersionId: t1,
        }),
      ),
    );
    expect(repeat.name).toBe('InvalidParameterException');

    // AWSPENDING removal (RemoveFrom only).
    await sm.send(
      new UpdateSecretVersionStageCommand({
        SecretId: arn,
        VersionStage: 'AWSPENDING',
        RemoveFromVersionId: t2,
      }),
    );
    expect(await stages(arn!)).toEqual({ [t1]: ['AWSPREVIOUS'], [t2]: ['AWSCURRENT'] });

    // A second rotation: t1 loses AWSPREVIOUS and becomes deprecated.
    const t3 = randomUUID();
    await sm.send(
      new PutSecretValueCommand({
        SecretId: n,
        ClientRequestToken: t3,
        SecretString: doc('p3'),
        VersionStages: ['AWSPENDING'],
      }),
    );
    await sm.send(
      new UpdateSecretVersionStageCommand({
        SecretId: n,
        VersionStage: 'AWSCURRENT',
        MoveToVersionId: t3,
        RemoveFromVersionId: t2,
      }),
    );
    await sm.send(
      new UpdateSecretVersionStageCommand({
        SecretId: n,
        VersionStage: 'AWSPENDING',
        RemoveFromVersionId: t3,
      }),
    );
    expect(await stages(n)).toEqual({ [t2]: ['AWSPREVIOUS'], [t3]: ['AWSCURRENT'] });
    const listed = await sm.send(new ListSecretVersionIdsCommand({ SecretId: n }));
    expect(listed.Versions?.map((v) => v.VersionId)).toEqual([t2, t3]);
    const all = await sm.send(new ListSecretVersionIdsCommand({ SecretId: n, IncludeDeprecated: true }));
    expect(all.Versions?.map((v) => [v.VersionId, v.VersionStages])).toEqual([
      [t1, []],
      [t2, ['AWSPREVIOUS']],
      [t3, ['AWSCURRENT']],
    ]);
    expect(all.Versions?.[0]?.CreatedDate).toBeInstanceOf(Date);
    // A deprecated version is still readable by its id.
    expect((await sm.send(new GetSecretValueCommand({ SecretId: n, VersionId: t1 }))).SecretString).toBe(
      doc('p1'),
    );
  });

  it('PutSecretValue without VersionStages makes the new version current; old current keeps its other labels', async () => {
    const n = name('put-current');
    const { VersionId: v1 } = await sm.send(new CreateSecretCommand({ Name: n, SecretString: '1' }));
    await sm.send(
      new UpdateSecretVersionStageCommand({ SecretId: n, VersionStage: 'blue', MoveToVersionId: v1 }),
    );
    const p2 = await sm.send(new PutSecretValueCommand({ SecretId: n, SecretString: '2' }));
    expect(p2.VersionStages).toEqual(['AWSCURRENT']);
    expect(await stages(n)).toEqual({ [v1!]: ['blue', 'AWSPREVIOUS'], [p2.VersionId!]: ['AWSCURRENT'] });
    const p3 = await sm.send(
      new PutSecretValueCommand({ SecretId: n, SecretString: '3', VersionStages: ['AWSCURRENT', 'blue'] }),
    );
    expect(p3.VersionStages).toEqual(['AWSCURRENT', 'blue']);
    expect(await stages(n)).toEqual({
      [p2.VersionId!]: ['AWSPREVIOUS'],
      [p3.VersionId!]: ['AWSCURRENT', 'blue'],
    });

    // A given label moves from the version that had it.
    const p4 = await sm.send(
      new PutSecretValueCommand({ SecretId: n, SecretString: '4', VersionStages: ['blue'] }),
    );
    expect(p4.VersionStages).toEqual(['blue']);
    expect((await stages(n))[p3.VersionId!]).toEqual(['AWSCURRENT']);
  });

  it('a version created without value gets AWSCURRENT from the first PutSecretValue, whatever its labels', async () => {
    const n = name('empty');
    const created = await sm.send(new CreateSecretCommand({ Name: n }));
    expect(created.VersionId).toBeUndefined();
    expect(await stages(n)).toEqual({});
    expect((await failure(sm.send(new GetSecretValueCommand({ SecretId: n })))).name).toBe(
      'ResourceNotFoundException',
    );
    const put = await sm.send(
      new PutSecretValueCommand({ SecretId: n, SecretString: 'x', VersionStages: ['AWSPENDING'] }),
    );
    expect(put.VersionStages).toEqual(['AWSPENDING', 'AWSCURRENT']);
  });
});

describe('ClientRequestToken idempotency', () => {
  it('same token + same value returns the existing version; a different value is ResourceExistsException', async () => {
    const n = name('idem');
    const { VersionId: v1 } = await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'one' }));
    const token = randomUUID();
    const first = await sm.send(
      new PutSecretValueCommand({
        SecretId: n,
        ClientRequestToken: token,
        SecretString: 'two',
        VersionStages: ['AWSPENDING'],
      }),
    );
    // The retry is ignored entirely, even with different labels asked for.
    const retry = await sm.send(
      new PutSecretValueCommand({ SecretId: n, ClientRequestToken: token, SecretString: 'two' }),
    );
    expect(retry).toMatchObject({ VersionId: first.VersionId, VersionStages: ['AWSPENDING'] });
    expect(await stages(n)).toEqual({ [v1!]: ['AWSCURRENT'], [token]: ['AWSPENDING'] });
    const versions = await sm.send(new ListSecretVersionIdsCommand({ SecretId: n, IncludeDeprecated: true }));
    expect(versions.Versions).toHaveLength(2);

    const clash = await failure(
      sm.send(new PutSecretValueCommand({ SecretId: n, ClientRequestToken: token, SecretString: 'three' })),
    );
    expect(clash).toBeInstanceOf(ResourceExistsException);
    expect(clash.$metadata.httpStatusCode).toBe(400);
    expect(clash.message).toContain(token);

    const bad = await failure(
      sm.send(new PutSecretValueCommand({ SecretId: n, ClientRequestToken: 'x', SecretString: 'y' })),
    );
    expect(bad.name).toBe('InvalidParameterException');
    const noValue = await failure(sm.send(new PutSecretValueCommand({ SecretId: n })));
    expect(noValue.name).toBe('InvalidRequestException');
  });
});

describe('UpdateSecretVersionStage rules', () => {
  it('refuses label moves that do not name the holder, and removals from versions without the label', async () => {
    const n = name('stage-rules');
    const { VersionId: a } = await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'a' }));
    const { VersionId: b } = await sm.send(
      new PutSecretValueCommand({ SecretId: n, SecretString: 'b', VersionStages: ['green'] }),
    );
    const { VersionId: c } = await sm.send(
      new PutSecretValueCommand({ SecretId: n, SecretString: 'c', VersionStages: [] }),
    );
    expect(await stages(n)).toEqual({ [a!]: ['AWSCURRENT'], [b!]: ['green'] }); // c is deprecated at birth

    const cases: Array<{ VersionStage: string; MoveToVersionId?: string; RemoveFromVersionId?: string }> = [
      { VersionStage: 'green', MoveToVersionId: c }, // attached to b, no RemoveFrom
      { VersionStage: 'green', MoveToVersionId: c, RemoveFromVersionId: a }, // RemoveFrom does not match
      { VersionStage: 'green', RemoveFromVersionId: a }, // a lacks the label
      { VersionStage: 'AWSCURRENT', RemoveFromVersionId: a }, // AWSCURRENT can only move
      { VersionStage: 'green', MoveToVersionId: randomUUID(), RemoveFromVersionId: b }, // unknown version
      { VersionStage: 'green' }, // neither
    ];
    for (const input of cases) {
      const err = await failure(sm.send(new UpdateSecretVersionStageCommand({ SecretId: n, ...input })));
      expect(err.name, JSON.stringify(input)).toBe('InvalidParameterException');
      expect(err.$metadata.httpStatusCode).toBe(400);
    }
    expect(await stages(n)).toEqual({ [a!]: ['AWSCURRENT'], [b!]: ['green'] });

    await sm.send(
      new UpdateSecretVersionStageCommand({
        SecretId: n,
        VersionStage: 'green',
        MoveToVersionId: c,
        RemoveFromVersionId: b,
      }),
    );
    // A free label needs no RemoveFrom; moving AWSPREVIOUS by hand is allowed like any label.
    await sm.send(
      new UpdateSecretVersionStageCommand({ SecretId: n, VersionStage: 'AWSPREVIOUS', MoveToVersionId: b }),
    );
    expect(await stages(n)).toEqual({ [a!]: ['AWSCURRENT'], [b!]: ['AWSPREVIOUS'], [c!]: ['green'] });
    // Moving AWSCURRENT onto the version that holds AWSPREVIOUS swaps them.
    await sm.send(
      new UpdateSecretVersionStageCommand({
        SecretId: n,
        VersionStage: 'AWSCURRENT',
        MoveToVersionId: b,
        RemoveFromVersionId: a,
      }),
    );
    expect(await stages(n)).toEqual({ [a!]: ['AWSPREVIOUS'], [b!]: ['AWSCURRENT'], [c!]: ['green'] });
  });
});

describe('DescribeSecret and ListSecretVersionIds', () => {
  it('parses dates as Date objects and reports RotationEnabled false until rotation is configured', async () => {
    const n = name('describe');
    const t0 = Date.now();
    await sm.send(
      new CreateSecretCommand({
        Name: n,
        SecretString: 'v',
        Description: 'db creds',
        Tags: [{ Key: 'team', Value: 'pay' }],
      }),
    );
    let d = await sm.send(new DescribeSecretCommand({ SecretId: n }));
    expect(d.CreatedDate).toBeInstanceOf(Date);
    expect(d.LastChangedDate).toBeInstanceOf(Date);
    expect(Math.abs(d.CreatedDate!.getTime() - t0)).toBeLessThan(10_000);
    expect(d.LastAccessedDate).toBeUndefined();
    expect(d.DeletedDate).toBeUndefined();
    expect(d.RotationEnabled).toBe(false);
    expect(d).toMatchObject({ Name: n, Description: 'db creds', Tags: [{ Key: 'team', Value: 'pay' }] });
    await sm.send(new GetSecretValueCommand({ SecretId: n }));
    d = await sm.send(new DescribeSecretCommand({ SecretId: n }));
    expect(d.LastAccessedDate).toBeInstanceOf(Date);
    expect(d.LastAccessedDate!.getUTCHours()).toBe(0); // day resolution
  });

  it('pages with MaxResults/NextToken', async () => {
    const n = name('paging');
    await sm.send(new CreateSecretCommand({ Name: n, SecretString: '0' }));
    for (let i = 1; i <= 4; i++) {
      await sm.send(
        new PutSecretValueCommand({ SecretId: n, SecretString: String(i), VersionStages: [`L${i}`] }),
      );
    }
    const seen: string[] = [];
    let NextToken: string | undefined;
    let pages = 0;
    do {
      const page = await sm.send(new ListSecretVersionIdsCommand({ SecretId: n, MaxResults: 2, NextToken }));
      expect(page.Versions!.length).toBeLessThanOrEqual(2);
      seen.push(...page.Versions!.map((v) => v.VersionId!));
      NextToken = page.NextToken;
      pages++;
    } while (NextToken);
    expect(pages).toBe(3);
    expect(new Set(seen).size).toBe(5);
    const bad = await failure(
      sm.send(new ListSecretVersionIdsCommand({ SecretId: n, NextToken: 'garbage' })),
    );
    expect(bad.name).toBe('InvalidNextTokenException');
    const missing = await failure(sm.send(new ListSecretVersionIdsCommand({ SecretId: name('gone') })));
    expect(missing.name).toBe('ResourceNotFoundException');
  });
});

describe('DeleteSecret and RestoreSecret', () => {
  it('checks the recovery window and refuses both options together', async () => {
    const n = name('del-params');
    await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'v' }));
    for (const input of [
      { RecoveryWindowInDays: 7, ForceDeleteWithoutRecovery: true },
      { RecoveryWindowInDays: 6 },
      { RecoveryWindowInDays: 31 },
    ]) {
      const err = await failure(sm.send(new DeleteSecretCommand({ SecretId: n, ...input })));
      expect(err.name, JSON.stringify(input)).toBe('InvalidParameterException');
    }
    expect((await sm.send(new GetSecretValueCommand({ SecretId: n }))).SecretString).toBe('v');
  });

  it('schedules deletion: use is InvalidRequestException, Describe shows DeletedDate, Restore undoes it', async () => {
    const n = name('del');
    const { ARN } = await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'v' }));
    const t0 = Date.now();
    const del = await sm.send(new DeleteSecretCommand({ SecretId: ARN, RecoveryWindowInDays: 7 }));
    expect(del).toMatchObject({ ARN, Name: n });
    expect(del.DeletionDate).toBeInstanceOf(Date);
    expect(Math.abs(del.DeletionDate!.getTime() - (t0 + 7 * 86_400_000))).toBeLessThan(10_000);

    for (const call of [
      () => sm.send(new GetSecretValueCommand({ SecretId: n })),
      () => sm.send(new PutSecretValueCommand({ SecretId: n, SecretString: 'w' })),
      () => sm.send(new DeleteSecretCommand({ SecretId: n })),
      () => sm.send(new CreateSecretCommand({ Name: n, SecretString: 'w' })),
    ]) {
      const err = await failure(call());
      expect(err).toBeInstanceOf(InvalidRequestException);
      expect(err.$metadata.httpStatusCode).toBe(400);
    }
    const d = await sm.send(new DescribeSecretCommand({ SecretId: n }));
    expect(d.DeletedDate).toBeInstanceOf(Date);

    await sm.send(new RestoreSecretCommand({ SecretId: n }));
    expect((await sm.send(new GetSecretValueCommand({ SecretId: n }))).SecretString).toBe('v');
    expect((await sm.send(new DescribeSecretCommand({ SecretId: n }))).DeletedDate).toBeUndefined();
  });

  it('force-deletes at once (even a scheduled or missing secret); plain delete of a missing secret is not found', async () => {
    const n = name('force');
    const { ARN } = await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'v' }));
    await sm.send(new DeleteSecretCommand({ SecretId: n })); // scheduled, 30 days
    const forced = await sm.send(new DeleteSecretCommand({ SecretId: n, ForceDeleteWithoutRecovery: true }));
    expect(forced).toMatchObject({ ARN, Name: n });
    expect(forced.DeletionDate).toBeInstanceOf(Date);
    expect((await failure(sm.send(new DescribeSecretCommand({ SecretId: n })))).name).toBe(
      'ResourceNotFoundException',
    );
    expect((await failure(sm.send(new DescribeSecretCommand({ SecretId: ARN })))).name).toBe(
      'ResourceNotFoundException',
    );

    const ghost = name('ghost');
    const again = await sm.send(
      new DeleteSecretCommand({ SecretId: ghost, ForceDeleteWithoutRecovery: true }),
    );
    expect(again.Name).toBe(ghost);
    const plain = await failure(sm.send(new DeleteSecretCommand({ SecretId: ghost })));
    expect(plain).toBeInstanceOf(ResourceNotFoundException);

    // The name is free again, under a new ARN.
    const recreated = await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'new' }));
    expect(recreated.ARN).not.toBe(ARN);
  });
});

describe('RotateSecret placeholder', () => {
  it('creates an empty AWSPENDING version that PutSecretValue with the same token fills', async () => {
    const n = name('rotate-secret');
    const { VersionId: v1 } = await sm.send(new CreateSecretCommand({ Name: n, SecretString: doc('p1') }));
    const noLambda = await failure(sm.send(new RotateSecretCommand({ SecretId: n })));
    expect(noLambda.name).toBe('InvalidRequestException');

    const lambda = 'arn:aws:lambda:eu-west-1:123456789012:function:rotate';
    const token = randomUUID();
    const rotated = await sm.send(
      new RotateSecretCommand({ SecretId: n, RotationLambdaARN: lambda, ClientRequestToken: token }),
    );
    expect(rotated.VersionId).toBe(token);
    const d = await sm.send(new DescribeSecretCommand({ SecretId: n }));
    expect(d).toMatchObject({ RotationEnabled: true, RotationLambdaARN: lambda });
    expect(d.VersionIdsToStages).toEqual({ [v1!]: ['AWSCURRENT'], [token]: ['AWSPENDING'] });
    const empty = await failure(
      sm.send(new GetSecretValueCommand({ SecretId: n, VersionId: token, VersionStage: 'AWSPENDING' })),
    );
    expect(empty.name).toBe('ResourceNotFoundException');

    // Another rotation while this one is pending is refused; retrying with the same token is not.
    const busy = await failure(sm.send(new RotateSecretCommand({ SecretId: n })));
    expect(busy.name).toBe('InvalidRequestException');
    await sm.send(new RotateSecretCommand({ SecretId: n, ClientRequestToken: token }));

    await sm.send(
      new PutSecretValueCommand({
        SecretId: n,
        ClientRequestToken: token,
        SecretString: doc('p2'),
        VersionStages: ['AWSPENDING'],
      }),
    );
    await sm.send(
      new UpdateSecretVersionStageCommand({
        SecretId: n,
        VersionStage: 'AWSCURRENT',
        MoveToVersionId: token,
        RemoveFromVersionId: v1,
      }),
    );
    const after = await sm.send(new DescribeSecretCommand({ SecretId: n }));
    expect(after.LastRotatedDate).toBeInstanceOf(Date);
    expect((await sm.send(new GetSecretValueCommand({ SecretId: n }))).SecretString).toBe(doc('p2'));
  });
});

describe('failNext', () => {
  it('ThrottlingException reaches a maxAttempts: 1 client as ThrottlingException (400, Rate exceeded)', async () => {
    const n = name('throttle');
    await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'v' }));
    emu.failNext(1, 'ThrottlingException');
    const err = await failure(sm.send(new GetSecretValueCommand({ SecretId: n })));
    expect(err.name).toBe('ThrottlingException');
    expect(err.message).toBe('Rate exceeded');
    expect(err.$metadata.httpStatusCode).toBe(400);
    expect(err.$metadata.attempts).toBe(1);
    expect((await sm.send(new GetSecretValueCommand({ SecretId: n }))).SecretString).toBe('v');
  });

  it('is retried away by a maxAttempts: 3 client', async () => {
    const n = name('retry');
    await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'v' }));
    const retrying = client(emu, { maxAttempts: 3 });
    const before = emu.requests.length;
    emu.failNext(2, 'ThrottlingException', (op) => op === 'GetSecretValue');
    const got = await retrying.send(new GetSecretValueCommand({ SecretId: n }));
    expect(got.SecretString).toBe('v');
    expect(got.$metadata.attempts).toBe(3);
    expect(emu.requests.slice(before).map((r) => r.operation)).toEqual(Array(3).fill('GetSecretValue'));
  });

  it('matches by operation, and injects InternalFailure 500, ServiceUnavailable 503 and ResourceNotFoundException', async () => {
    const n = name('inject');
    await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'v' }));
    emu.failNext(1, 'InternalFailure', (op) => op === 'PutSecretValue');
    await sm.send(new GetSecretValueCommand({ SecretId: n })); // not matched
    const internal = await failure(sm.send(new PutSecretValueCommand({ SecretId: n, SecretString: 'w' })));
    expect(internal.name).toBe('InternalFailure');
    expect(internal.$metadata.httpStatusCode).toBe(500);
    expect(internal.$fault).toBe('server');
    expect((await sm.send(new GetSecretValueCommand({ SecretId: n }))).SecretString).toBe('v'); // nothing written

    emu.failNext(1, 'ServiceUnavailable');
    const unavailable = await failure(sm.send(new DescribeSecretCommand({ SecretId: n })));
    expect(unavailable.name).toBe('ServiceUnavailable');
    expect(unavailable.$metadata.httpStatusCode).toBe(503);

    emu.failNext(1, 'ResourceNotFoundException');
    const notFound = await failure(sm.send(new GetSecretValueCommand({ SecretId: n })));
    expect(notFound).toBeInstanceOf(ResourceNotFoundException);
    expect(notFound.$metadata.httpStatusCode).toBe(400);
  });
});

describe('signature check', () => {
  it('refuses an unknown access key, a foreign region scope and a missing header', async () => {
    const wrongKey = client(emu, { accessKeyId: 'AKIAWRONGWRONGWRONG0' });
    const e1 = await failure(wrongKey.send(new DescribeSecretCommand({ SecretId: 'x' })));
    expect(e1.name).toBe('UnrecognizedClientException');
    expect(e1.$metadata.httpStatusCode).toBe(400);

    const wrongRegion = client(emu, { region: 'us-east-1' });
    const e2 = await failure(wrongRegion.send(new DescribeSecretCommand({ SecretId: 'x' })));
    expect(e2.name).toBe('InvalidSignatureException');

    const unsigned = await raw(emu, 'DescribeSecret', { SecretId: 'x' });
    expect(unsigned).toMatchObject({ status: 400, json: { __type: 'MissingAuthenticationTokenException' } });
    const garbage = await raw(emu, 'DescribeSecret', { SecretId: 'x' }, { authorization: 'Bearer abc' });
    expect(garbage).toMatchObject({ status: 400, json: { __type: 'IncompleteSignatureException' } });
  });

  /** A client of `emu` signing as configured here (credentials, clock, signing name) instead of as `sm` does. */
  function signing(config: Partial<SecretsManagerClientConfig>): SecretsManagerClient {
    const c = new SecretsManagerClient({
      endpoint: emu.endpoint,
      region: emu.region,
      credentials: emu.credentials,
      maxAttempts: 1,
      ...config,
    });
    clients.push(c);
    return c;
  }
  const describe404 = async (c: SecretsManagerClient) =>
    (await failure(c.send(new DescribeSecretCommand({ SecretId: name('nothing-here') })))).name;

  // Each refusal below is the SDK's reading of the error body's `__type`; the same client with the right
  // secret, scope and clock gets past authentication to the operation (ResourceNotFoundException).
  it('recomputes the signature: a wrong secret is InvalidSignatureException (400)', async () => {
    const { secretAccessKey } = emu.credentials;
    const last = secretAccessKey.endsWith('x') ? 'y' : 'x'; // a last character the secret does not have
    const wrong = signing({
      credentials: { ...emu.credentials, secretAccessKey: `${secretAccessKey.slice(0, -1)}${last}` },
    });
    const e = await failure(wrong.send(new DescribeSecretCommand({ SecretId: 'x' })));
    expect(e.name).toBe('InvalidSignatureException');
    expect(e.$metadata.httpStatusCode).toBe(400);
    expect(e.message).toMatch(
      /^The request signature we calculated does not match the signature you provided/,
    );
    expect(await describe404(signing({}))).toBe('ResourceNotFoundException');
  });

  it('refuses a body altered after signing', async () => {
    const n = name('tamper');
    await sm.send(new CreateSecretCommand({ Name: n, SecretString: 'v' }));
    const other = name('tamper'); // same length: the signed content-length stays right
    const c = signing({});
    c.middlewareStack.addRelativeTo(
      (next: (args: any) => Promise<any>) => async (args: any) => {
        const req = args.request as { body: string };
        req.body = req.body.replace(n, other);
        return next(args);
      },
      { relation: 'after', toMiddleware: 'httpSigningMiddleware', name: 'tamper' },
    );
    const e = await failure(c.send(new CreateSecretCommand({ Name: n, SecretString: 'w' })));
    expect(e.name).toBe('InvalidSignatureException');
    expect((await failure(sm.send(new DescribeSecretCommand({ SecretId: other })))).name).toBe(
      'ResourceNotFoundException',
    );
  });

  it('refuses a request signed for another service (kms) with InvalidSignatureException', async () => {
    // The SDK's own signer, told to sign as KMS: a valid SigV4 signature, for the wrong service. (`signingName`
    // is read by the SDK's SigV4 config resolver but not part of the client's input type.)
    const asKms = signing({ signingName: 'kms' } as Partial<SecretsManagerClientConfig>);
    const e = await failure(asKms.send(new DescribeSecretCommand({ SecretId: 'x' })));
    expect(e.name).toBe('InvalidSignatureException');
    expect(e.$metadata.httpStatusCode).toBe(400);
    expect(e.message).toBe("Credential should be scoped to correct service: 'secretsmanager'. ");
    expect(emu.requests.at(-1)!.authorization).toMatch(/\/kms\/aws4_request, /);
  });

  it('refuses a request dated more than 15 minutes away (stale or ahead) with InvalidSignatureException', async () => {
    const stale = await failure(
      signing({ systemClockOffset: -20 * 60_000 }).send(new DescribeSecretCommand({ SecretId: 'x' })),
    );
    expect(stale.name).toBe('InvalidSignatureException');
    expect(stale.$metadata.httpStatusCode).toBe(400);
    expect(stale.message).toMatch(/^Signature expired: \d{8}T\d{6}Z is now earlier than/);
    const ahead = await failure(
      signing({ systemClockOffset: 20 * 60_000 }).send(new DescribeSecretCommand({ SecretId: 'x' })),
    );
    expect(ahead.name).toBe('InvalidSignatureException');
    expect(ahead.message).toMatch(/^Signature not yet current: /);
    // Within the window is fine.
    expect(await describe404(signing({ systemClockOffset: -5 * 60_000 }))).toBe('ResourceNotFoundException');
  });

  it('takes issued session credentials only with their own session token', async () => {
    const temporary = emu.issueSessionCredentials();
    expect(temporary.accessKeyId).toMatch(/^ASIA/);
    expect(await describe404(signing({ credentials: temporary }))).toBe('ResourceNotFoundException');
    expect(emu.requests.at(-1)!.authorization).toContain(`Credential=${temporary.accessKeyId}/`);

    const refused = async (credentials: {
      accessKeyId: string;
      secretAccessKey: string;
      sessionToken?: string;
    }) => {
      const e = await failure(signing({ credentials }).send(new DescribeSecretCommand({ SecretId: 'x' })));
      return { name: e.name, status: e.$metadata.httpStatusCode };
    };
    const unrecognized = { name: 'UnrecognizedClientException', status: 400 };
    const { sessionToken, ...withoutToken } = temporary;
    expect(await refused(withoutToken)).toEqual(unrecognized);
    expect(
      await refused({
        ...temporary,
        sessionToken: `${sessionToken.slice(0, -1)}${sessionToken.endsWith('x') ? 'y' : 'x'}`,
      }),
    ).toEqual(unrecognized);
    expect(await refused({ ...temporary, sessionToken: emu.issueSessionCredentials().sessionToken })).toEqual(
      unrecognized,
    );
    // A long-term key has no session: a token sent with it is not a valid one.
    expect(await refused({ ...emu.credentials, sessionToken })).toEqual(unrecognized);
  });

  it('accepts unsigned requests when requireSignature is false, with its own region and account', async () => {
    const open = await startAwsSecretsManagerEmulator({
      requireSignature: false,
      region: 'us-west-2',
      accountId: '000000000000',
    });
    try {
      const created = await raw(open, 'CreateSecret', {
        Name: 'plain',
        SecretString: 'v',
        ClientRequestToken: randomUUID(),
      });
      expect(created.status).toBe(200);
      expect(created.json.ARN).toMatch(
        /^arn:aws:secretsmanager:us-west-2:000000000000:secret:plain-[A-Za-z0-9]{6}$/,
      );
      expect(open.requests[0]).toEqual({
        operation: 'CreateSecret',
        body: expect.objectContaining({ Name: 'plain' }),
      });
      const viaSdk = await client(open).send(new GetSecretValueCommand({ SecretId: 'plain' }));
      expect(viaSdk.SecretString).toBe('v');
    } finally {
      await open.close();
    }
  });
});
