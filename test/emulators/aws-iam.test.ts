// The AWS IAM + STS emulator, exercised through the real @aws-sdk/client-iam and @aws-sdk/client-sts so that
// every response shape, date and error is the one the SDKs parse, and every signature is a real SigV4 one.
import { randomUUID } from 'node:crypto';
import {
  CreateAccessKeyCommand,
  DeleteAccessKeyCommand,
  GetAccessKeyLastUsedCommand,
  GetUserCommand,
  IAMClient,
  IAMServiceException,
  LimitExceededException,
  ListAccessKeysCommand,
  NoSuchEntityException,
  ServiceFailureException,
  SimulatePrincipalPolicyCommand,
  UpdateAccessKeyCommand,
} from '@aws-sdk/client-iam';
import { GetCallerIdentityCommand, STSClient, STSServiceException } from '@aws-sdk/client-sts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AwsIamEmulator, startAwsIamEmulator } from './aws-iam.ts';

type Credentials = { accessKeyId: string; secretAccessKey: string };

let emu: AwsIamEmulator;
let admin: Credentials;
let adminIam: IAMClient;
const clients: Array<IAMClient | STSClient> = [];

const ROTATOR_ACTIONS = [
  'iam:GetUser',
  'iam:CreateAccessKey',
  'iam:ListAccessKeys',
  'iam:UpdateAccessKey',
  'iam:DeleteAccessKey',
];

function iam(e: AwsIamEmulator, credentials: Credentials, maxAttempts = 1): IAMClient {
  const c = new IAMClient({ endpoint: e.endpoint, region: e.region, credentials, maxAttempts });
  clients.push(c);
  return c;
}
function sts(e: AwsIamEmulator, credentials: Credentials, maxAttempts = 1): STSClient {
  const c = new STSClient({ endpoint: e.endpoint, region: e.region, credentials, maxAttempts });
  clients.push(c);
  return c;
}

beforeAll(async () => {
  emu = await startAwsIamEmulator();
  admin = emu.createUser(`admin-${randomUUID().slice(0, 8)}`, { allow: ['iam:*'] });
  adminIam = iam(emu, admin);
});
afterAll(async () => {
  for (const c of clients) c.destroy();
  await emu.close();
});

const uname = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`;

/** The rejection of `p`, which must reject with an SDK service exception. */
async function failure(p: Promise<unknown>): Promise<IAMServiceException | STSServiceException> {
  try {
    await p;
  } catch (e) {
    expect(e instanceof IAMServiceException || e instanceof STSServiceException).toBe(true);
    return e as IAMServiceException;
  }
  throw new Error('expected the call to fail');
}

const whoAmI = (e: AwsIamEmulator, credentials: Credentials) =>
  sts(e, credentials).send(new GetCallerIdentityCommand({}));

/** A raw Query-protocol POST, bypassing the SDK, to look at the wire itself. */
async function raw(
  e: AwsIamEmulator,
  body: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string }> {
  const res = await fetch(`${e.endpoint}/`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body,
  });
  return { status: res.status, text: await res.text() };
}

describe('identity', () => {
  it('answers GetCallerIdentity and GetUser (UserName defaults to the caller) in the shapes the SDK parses', async () => {
    const name = uname('alice');
    const creds = emu.createUser(name, { allow: ['iam:GetUser'] });
    expect(creds.accessKeyId).toMatch(/^AKIA[A-Z0-9]{16}$/);
    expect(creds.secretAccessKey).toHaveLength(40);

    const me = await whoAmI(emu, creds);
    expect(me.Account).toBe('123456789012');
    expect(me.Arn).toBe(`arn:aws:iam::123456789012:user/${name}`);
    expect(me.UserId).toMatch(/^AIDA[A-Z0-9]{17}$/);

    const got = await iam(emu, creds).send(new GetUserCommand({}));
    expect(got.User).toMatchObject({ UserName: name, Arn: me.Arn, UserId: me.UserId, Path: '/' });
    expect(got.User!.CreateDate).toBeInstanceOf(Date);

    // The log names the action, caller and key id, never a secret.
    const last = emu.requests.at(-1)!;
    expect(last).toMatchObject({
      action: 'GetUser',
      caller: name,
      accessKeyId: creds.accessKeyId,
      status: 200,
    });
    expect(JSON.stringify(emu.requests)).not.toContain(creds.secretAccessKey);
  });

  it('serves IAM and STS on the same endpoint, routed on Action and Version', async () => {
    const unsigned = await raw(emu, 'Action=GetCallerIdentity&Version=2011-06-15');
    expect(unsigned.status).toBe(403);
    expect(unsigned.text).toContain('<Code>MissingAuthenticationToken</Code>');
    expect(unsigned.text).toContain('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">');
    expect(unsigned.text).toMatch(/<Error><Type>Sender<\/Type><Code>/);
    expect(unsigned.text).toMatch(/<\/Error><RequestId>[0-9a-f-]{36}<\/RequestId><\/ErrorResponse>/);

    // A signed request for an action that does not exist (or exists only in the other service's version).
    const c = iam(emu, admin);
    let body = 'Action=CreateUser&Version=2010-05-08&UserName=x';
    c.middlewareStack.add(
      (next) => async (args) => {
        (args.request as { body: string }).body = body;
        return next(args);
      },
      { step: 'build', priority: 'high', name: 'replaceBody' },
    );
    const unknown = await failure(c.send(new GetUserCommand({})));
    expect(unknown.name).toBe('InvalidAction');
    expect(unknown.$metadata.httpStatusCode).toBe(400);
    expect(unknown.message).toBe('Could not find operation CreateUser for version 2010-05-08');
    body = 'Action=GetCallerIdentity&Version=2010-05-08';
    expect((await failure(c.send(new GetUserCommand({})))).name).toBe('InvalidAction');
  });
});

describe('authentication (SigV4 verified for real)', () => {
  it('refuses an unknown access key id with InvalidClientTokenId', async () => {
    const e = await failure(
      whoAmI(emu, { accessKeyId: 'AKIAABCDEFGHIJKLMNOP', secretAccessKey: 'x'.repeat(40) }),
    );
    expect(e.name).toBe('InvalidClientTokenId');
    expect(e.$metadata.httpStatusCode).toBe(403);
    expect(e.message).toBe('The security token included in the request is invalid.');
  });

  it('refuses a wrong secret with SignatureDoesNotMatch, for STS and IAM', async () => {
    const creds = emu.createUser(uname('wrongsecret'), { allow: ['iam:*'] });
    // The last character changed (to one it is not: a secret ending in "x" must not stay right).
    const last = creds.secretAccessKey.endsWith('x') ? 'y' : 'x';
    const wrong = { ...creds, secretAccessKey: `${creds.secretAccessKey.slice(0, 39)}${last}` };
    const e = await failure(whoAmI(emu, wrong));
    expect(e.name).toBe('SignatureDoesNotMatch');
    expect(e.$metadata.httpStatusCode).toBe(403);
    expect(e.message).toMatch(
      /^The request signature we calculated does not match the signature you provided/,
    );
    const e2 = await failure(iam(emu, wrong).send(new ListAccessKeysCommand({})));
    expect(e2.name).toBe('SignatureDoesNotMatch');
    // The right secret works.
    await expect(whoAmI(emu, creds)).resolves.toMatchObject({ Account: '123456789012' });
  });

  it('detects a body altered after signing, and a clock more than 15 minutes off', async () => {
    const name = uname('tamper');
    const other = uname('tamper'); // same length: the signed content-length stays right
    emu.createUser(name);
    emu.createUser(other);
    const c = iam(emu, admin);
    c.middlewareStack.addRelativeTo(
      (next: (args: any) => Promise<any>) => async (args: any) => {
        const req = args.request as { body: string };
        req.body = req.body.replace(`UserName=${name}`, `UserName=${other}`);
        return next(args);
      },
      { relation: 'after', toMiddleware: 'httpSigningMiddleware', name: 'tamper' },
    );
    const e = await failure(c.send(new CreateAccessKeyCommand({ UserName: name })));
    expect(e.name).toBe('SignatureDoesNotMatch');
    expect(emu.keysOf(name)).toHaveLength(1);
    expect(emu.keysOf(other)).toHaveLength(1);

    const skewed = new IAMClient({
      endpoint: emu.endpoint,
      region: emu.region,
      credentials: admin,
      maxAttempts: 1,
      systemClockOffset: -20 * 60_000,
    });
    clients.push(skewed);
    const old = await failure(skewed.send(new GetUserCommand({})));
    expect(old.name).toBe('SignatureDoesNotMatch');
    expect(old.message).toMatch(/^Signature expired: \d{8}T\d{6}Z is now earlier than/);
  });

  it('refuses requests signed for another service or region', async () => {
    const wrongRegion = new STSClient({
      endpoint: emu.endpoint,
      region: 'eu-west-1',
      credentials: admin,
      maxAttempts: 1,
    });
    clients.push(wrongRegion);
    const e = await failure(wrongRegion.send(new GetCallerIdentityCommand({})));
    expect(e.name).toBe('SignatureDoesNotMatch');
    expect(e.message).toContain('valid region');
  });

  it('refuses an inactive key until it is made active again', async () => {
    const name = uname('inactive');
    const creds = emu.createUser(name);
    await whoAmI(emu, creds);
    await adminIam.send(
      new UpdateAccessKeyCommand({ UserName: name, AccessKeyId: creds.accessKeyId, Status: 'Inactive' }),
    );
    expect(emu.keysOf(name)[0]!.status).toBe('Inactive');
    const e = await failure(whoAmI(emu, creds));
    expect(e.name).toBe('InvalidClientTokenId');
    expect(e.$metadata.httpStatusCode).toBe(403);
    await adminIam.send(
      new UpdateAccessKeyCommand({ UserName: name, AccessKeyId: creds.accessKeyId, Status: 'Active' }),
    );
    await expect(whoAmI(emu, creds)).resolves.toMatchObject({ Arn: expect.stringContaining(name) });
  });

  it('refuses a deleted key', async () => {
    const name = uname('deleted');
    const creds = emu.createUser(name);
    await whoAmI(emu, creds);
    await adminIam.send(new DeleteAccessKeyCommand({ UserName: name, AccessKeyId: creds.accessKeyId }));
    expect(emu.keysOf(name)).toEqual([]);
    const e = await failure(whoAmI(emu, creds));
    expect(e.name).toBe('InvalidClientTokenId');
  });

  it('makes a new key usable only after propagationMs (eventual consistency)', async () => {
    const e = await startAwsIamEmulator({ propagationMs: 1500 });
    try {
      const name = uname('propagating');
      const creds = e.createUser(name, { allow: ['iam:*AccessKey*'] });
      // createUser's own key is usable at once.
      await whoAmI(e, creds);
      const created = await iam(e, creds).send(new CreateAccessKeyCommand({}));
      const fresh = {
        accessKeyId: created.AccessKey!.AccessKeyId!,
        secretAccessKey: created.AccessKey!.SecretAccessKey!,
      };
      expect(created.AccessKey).toMatchObject({ UserName: name, Status: 'Active' });
      expect(created.AccessKey!.CreateDate).toBeInstanceOf(Date);
      // The control plane already lists it ...
      const listed = await iam(e, creds).send(new ListAccessKeysCommand({}));
      expect(listed.AccessKeyMetadata!.map((k) => k.AccessKeyId)).toContain(fresh.accessKeyId);

      // ... but it does not authenticate yet, exactly like real AWS for a few seconds.
      const early = await failure(whoAmI(e, fresh));
      expect(early.name).toBe('InvalidClientTokenId');
      expect(early.$metadata.httpStatusCode).toBe(403);

      // Later it does.
      let identity: Awaited<ReturnType<typeof whoAmI>> | undefined;
      const deadline = Date.now() + 15_000;
      while (!identity && Date.now() < deadline) {
        try {
          identity = await whoAmI(e, fresh);
        } catch (err) {
          expect((err as Error).name).toBe('InvalidClientTokenId');
          await new Promise((r) => setTimeout(r, 100)); // the poll interval: propagation keeps real time
        }
      }
      expect(identity?.Arn).toBe(`arn:aws:iam::123456789012:user/${name}`);

      // setPropagationMs(0): keys created from now on work at once.
      e.setPropagationMs(0);
      await iam(e, creds).send(new DeleteAccessKeyCommand({ AccessKeyId: fresh.accessKeyId }));
      const instant = await iam(e, creds).send(new CreateAccessKeyCommand({}));
      await expect(
        whoAmI(e, {
          accessKeyId: instant.AccessKey!.AccessKeyId!,
          secretAccessKey: instant.AccessKey!.SecretAccessKey!,
        }),
      ).resolves.toMatchObject({ Arn: identity!.Arn });
    } finally {
      await e.close();
    }
  });
});

describe('access keys', () => {
  it('allows two keys per user, active or inactive; a third CreateAccessKey is LimitExceeded and changes nothing', async () => {
    const name = uname('bob');
    const first = emu.createUser(name);
    const second = await adminIam.send(new CreateAccessKeyCommand({ UserName: name }));
    expect(second.AccessKey!.AccessKeyId).toMatch(/^AKIA[A-Z0-9]{16}$/);
    expect(second.AccessKey!.SecretAccessKey).toHaveLength(40);
    const before = emu.keysOf(name);
    expect(before.map((k) => k.accessKeyId)).toEqual([first.accessKeyId, second.AccessKey!.AccessKeyId]);

    const third = await failure(adminIam.send(new CreateAccessKeyCommand({ UserName: name })));
    expect(third).toBeInstanceOf(LimitExceededException);
    expect(third.name).toBe('LimitExceededException');
    expect(third.$metadata.httpStatusCode).toBe(409);
    expect(third.message).toBe('Cannot exceed quota for AccessKeysPerUser: 2');
    expect(emu.keysOf(name)).toEqual(before);

    // An inactive key still counts.
    await adminIam.send(
      new UpdateAccessKeyCommand({ UserName: name, AccessKeyId: first.accessKeyId, Status: 'Inactive' }),
    );
    const stillFull = await failure(adminIam.send(new CreateAccessKeyCommand({ UserName: name })));
    expect(stillFull.name).toBe('LimitExceededException');

    // Deleting one makes room.
    await adminIam.send(new DeleteAccessKeyCommand({ UserName: name, AccessKeyId: first.accessKeyId }));
    await adminIam.send(new CreateAccessKeyCommand({ UserName: name }));
    expect(emu.keysOf(name)).toHaveLength(2);
  });

  it('lists keys with AccessKeyMetadata members, IsTruncated and Marker paging', async () => {
    const name = uname('lister');
    const first = emu.createUser(name);
    const second = await adminIam.send(new CreateAccessKeyCommand({ UserName: name }));
    const all = await adminIam.send(new ListAccessKeysCommand({ UserName: name }));
    expect(all.IsTruncated).toBe(false);
    expect(all.Marker).toBeUndefined();
    expect(all.AccessKeyMetadata).toEqual([
      { UserName: name, AccessKeyId: first.accessKeyId, Status: 'Active', CreateDate: expect.any(Date) },
      {
        UserName: name,
        AccessKeyId: second.AccessKey!.AccessKeyId,
        Status: 'Active',
        CreateDate: expect.any(Date),
      },
    ]);
    const p1 = await adminIam.send(new ListAccessKeysCommand({ UserName: name, MaxItems: 1 }));
    expect(p1.IsTruncated).toBe(true);
    expect(p1.AccessKeyMetadata).toHaveLength(1);
    const p2 = await adminIam.send(
      new ListAccessKeysCommand({ UserName: name, MaxItems: 1, Marker: p1.Marker! }),
    );
    expect(p2.IsTruncated).toBe(false);
    expect(p2.AccessKeyMetadata![0]!.AccessKeyId).toBe(second.AccessKey!.AccessKeyId);
  });

  it('lets a user rotate its own key when allowed: create, switch, deactivate, delete', async () => {
    const name = uname('selfrotator');
    const old = emu.createUser(name, { allow: ROTATOR_ACTIONS });
    const created = await iam(emu, old).send(new CreateAccessKeyCommand({}));
    const fresh = {
      accessKeyId: created.AccessKey!.AccessKeyId!,
      secretAccessKey: created.AccessKey!.SecretAccessKey!,
    };
    const withNew = iam(emu, fresh);
    await withNew.send(
      new UpdateAccessKeyCommand({ AccessKeyId: old.accessKeyId, Status: 'Inactive' }), // UserName = caller
    );
    await withNew.send(new DeleteAccessKeyCommand({ AccessKeyId: old.accessKeyId }));
    expect(emu.keysOf(name).map((k) => k.accessKeyId)).toEqual([fresh.accessKeyId]);
    expect((await failure(whoAmI(emu, old))).name).toBe('InvalidClientTokenId');
    await expect(whoAmI(emu, fresh)).resolves.toMatchObject({ Arn: expect.stringContaining(name) });
  });

  it('rejects a bad Status with ValidationError', async () => {
    const name = uname('validation');
    const creds = emu.createUser(name);
    const e = await failure(
      adminIam.send(
        new UpdateAccessKeyCommand({
          UserName: name,
          AccessKeyId: creds.accessKeyId,
          Status: 'Disabled' as 'Active',
        }),
      ),
    );
    expect(e.name).toBe('ValidationError');
    expect(e.$metadata.httpStatusCode).toBe(400);
    expect(e.message).toBe(
      "1 validation error detected: Value 'Disabled' at 'status' failed to satisfy constraint: Member must satisfy enum value set: [Active, Inactive]",
    );
  });

  it('reports when a key was last used', async () => {
    const name = uname('lastused');
    const creds = emu.createUser(name);
    const second = await adminIam.send(new CreateAccessKeyCommand({ UserName: name }));
    await whoAmI(emu, creds);
    const used = await adminIam.send(new GetAccessKeyLastUsedCommand({ AccessKeyId: creds.accessKeyId }));
    expect(used.UserName).toBe(name);
    expect(used.AccessKeyLastUsed).toMatchObject({ ServiceName: 'sts', Region: 'us-east-1' });
    expect(used.AccessKeyLastUsed!.LastUsedDate).toBeInstanceOf(Date);
    const never = await adminIam.send(
      new GetAccessKeyLastUsedCommand({ AccessKeyId: second.AccessKey!.AccessKeyId! }),
    );
    expect(never.AccessKeyLastUsed).toEqual({ ServiceName: 'N/A', Region: 'N/A' });
  });
});

describe('NoSuchEntity', () => {
  it('answers 404 NoSuchEntity for unknown users and keys, and for keys of another user', async () => {
    const ghost = uname('ghost');
    for (const command of [
      new GetUserCommand({ UserName: ghost }),
      new CreateAccessKeyCommand({ UserName: ghost }),
      new ListAccessKeysCommand({ UserName: ghost }),
    ]) {
      const e = await failure(adminIam.send(command as GetUserCommand));
      expect(e).toBeInstanceOf(NoSuchEntityException);
      expect(e.$metadata.httpStatusCode).toBe(404);
      expect(e.message).toBe(`The user with name ${ghost} cannot be found.`);
    }

    const owner = uname('owner');
    const ownerKey = emu.createUser(owner);
    const other = uname('other');
    emu.createUser(other);
    const wrongUser = await failure(
      adminIam.send(new DeleteAccessKeyCommand({ UserName: other, AccessKeyId: ownerKey.accessKeyId })),
    );
    expect(wrongUser.name).toBe('NoSuchEntityException');
    expect(wrongUser.message).toBe(`The Access Key with id ${ownerKey.accessKeyId} cannot be found.`);
    expect(emu.keysOf(owner)).toHaveLength(1);

    const missingKey = await failure(
      adminIam.send(
        new UpdateAccessKeyCommand({
          UserName: owner,
          AccessKeyId: 'AKIAZZZZZZZZZZZZZZZZ',
          Status: 'Inactive',
        }),
      ),
    );
    expect(missingKey.name).toBe('NoSuchEntityException');
  });
});

describe('authorization', () => {
  it('answers AccessDenied naming the caller, the action and the resource, and changes nothing', async () => {
    const target = uname('target');
    emu.createUser(target);
    const caller = uname('limited');
    const creds = emu.createUser(caller, { allow: ['iam:ListAccessKeys'] });
    const c = iam(emu, creds);

    const e = await failure(c.send(new CreateAccessKeyCommand({ UserName: target })));
    expect(e.name).toBe('AccessDenied');
    expect(e.$metadata.httpStatusCode).toBe(403);
    expect(e.message).toBe(
      `User: arn:aws:iam::123456789012:user/${caller} is not authorized to perform: iam:CreateAccessKey on resource: user ${target} because no identity-based policy allows the iam:CreateAccessKey action`,
    );
    expect(emu.keysOf(target)).toHaveLength(1);

    // Allowed actions work; its own keys need permission too.
    await expect(c.send(new ListAccessKeysCommand({ UserName: target }))).resolves.toBeDefined();
    const own = await failure(c.send(new CreateAccessKeyCommand({})));
    expect(own.name).toBe('AccessDenied');
    expect(own.message).toContain(`iam:CreateAccessKey on resource: user ${caller} `);
    const getUser = await failure(c.send(new GetUserCommand({})));
    expect(getUser.message).toContain('iam:GetUser');
    expect(emu.keysOf(caller)).toHaveLength(1);

    // Authorization comes before existence: an unknown user is not revealed to an unauthorized caller.
    const ghost = await failure(
      c.send(new DeleteAccessKeyCommand({ UserName: uname('nobody'), AccessKeyId: creds.accessKeyId })),
    );
    expect(ghost.name).toBe('AccessDenied');

    // STS GetCallerIdentity needs no permission at all.
    const nobody = emu.createUser(uname('noperm'));
    await expect(whoAmI(emu, nobody)).resolves.toMatchObject({ Account: '123456789012' });

    // setAllow changes the policy at once.
    emu.setAllow(caller, ['iam:*AccessKey*']);
    await c.send(new CreateAccessKeyCommand({}));
    expect(emu.keysOf(caller)).toHaveLength(2);
  });

  it('SimulatePrincipalPolicy answers allowed / implicitDeny per action, so a caller can check its privileges', async () => {
    const name = uname('checker');
    const creds = emu.createUser(name, { allow: [...ROTATOR_ACTIONS, 'iam:SimulatePrincipalPolicy'] });
    const me = await whoAmI(emu, creds);
    const out = await iam(emu, creds).send(
      new SimulatePrincipalPolicyCommand({
        PolicySourceArn: me.Arn!,
        ActionNames: ['iam:CreateAccessKey', 'iam:deleteaccesskey', 'iam:CreateUser', 's3:GetObject'],
      }),
    );
    expect(out.IsTruncated).toBe(false);
    expect(out.EvaluationResults!.map((r) => [r.EvalActionName, r.EvalDecision, r.EvalResourceName])).toEqual(
      [
        ['iam:CreateAccessKey', 'allowed', '*'],
        ['iam:deleteaccesskey', 'allowed', '*'], // IAM matches actions case-insensitively
        ['iam:CreateUser', 'implicitDeny', '*'],
        ['s3:GetObject', 'implicitDeny', '*'],
      ],
    );
    expect(out.EvaluationResults![0]!.MatchedStatements).toHaveLength(1);
    expect(out.EvaluationResults![2]!.MatchedStatements).toEqual([]);

    // Wildcards in the allow list.
    const wild = emu.createUser(uname('wild'), { allow: ['iam:*AccessKey*'] });
    const wildMe = await whoAmI(emu, wild);
    const w = await adminIam.send(
      new SimulatePrincipalPolicyCommand({
        PolicySourceArn: wildMe.Arn!,
        ActionNames: ['iam:UpdateAccessKey', 'iam:ListAccessKeys', 'iam:GetUser'],
      }),
    );
    expect(w.EvaluationResults!.map((r) => r.EvalDecision)).toEqual(['allowed', 'allowed', 'implicitDeny']);

    // The simulation itself needs iam:SimulatePrincipalPolicy.
    const denied = await failure(
      iam(emu, wild).send(
        new SimulatePrincipalPolicyCommand({ PolicySourceArn: wildMe.Arn!, ActionNames: ['iam:GetUser'] }),
      ),
    );
    expect(denied.name).toBe('AccessDenied');
    expect(denied.message).toContain('iam:SimulatePrincipalPolicy');

    const missing = await failure(
      adminIam.send(
        new SimulatePrincipalPolicyCommand({
          PolicySourceArn: `arn:aws:iam::123456789012:user/${uname('ghost')}`,
          ActionNames: ['iam:GetUser'],
        }),
      ),
    );
    expect(missing.name).toBe('NoSuchEntityException');
  });
});

describe('failNext', () => {
  it('injects Throttling (400), ServiceFailure (500) and ServiceUnavailable (503) before the operation runs', async () => {
    const name = uname('flaky');
    emu.createUser(name);

    emu.failNext(1, 'Throttling', (action) => action === 'CreateAccessKey');
    // A non-matching action is not affected.
    await adminIam.send(new ListAccessKeysCommand({ UserName: name }));
    const t = await failure(adminIam.send(new CreateAccessKeyCommand({ UserName: name })));
    expect(t.name).toBe('Throttling');
    expect(t.$metadata.httpStatusCode).toBe(400);
    expect(t.message).toBe('Rate exceeded');
    expect(emu.keysOf(name)).toHaveLength(1); // nothing happened

    emu.failNext(1, 'ServiceFailure');
    const s = await failure(adminIam.send(new GetUserCommand({ UserName: name })));
    expect(s).toBeInstanceOf(ServiceFailureException);
    expect(s.$metadata.httpStatusCode).toBe(500);
    expect(s.$fault).toBe('server');

    emu.failNext(1, 'ServiceUnavailable');
    const u = await failure(adminIam.send(new GetUserCommand({ UserName: name })));
    expect(u.name).toBe('ServiceUnavailable');
    expect(u.$metadata.httpStatusCode).toBe(503);

    // The SDK's standard retry strategy rides over transient failures; every attempt is in the log.
    const retrying = iam(emu, admin, 3);
    const before = emu.requests.length;
    emu.failNext(2, 'Throttling');
    const created = await retrying.send(new CreateAccessKeyCommand({ UserName: name }));
    expect(created.AccessKey!.UserName).toBe(name);
    const attempts = emu.requests.slice(before);
    expect(attempts.map((r) => [r.action, r.status, r.error])).toEqual([
      ['CreateAccessKey', 400, 'Throttling'],
      ['CreateAccessKey', 400, 'Throttling'],
      ['CreateAccessKey', 200, undefined],
    ]);
    expect(attempts[2]!.userName).toBe(name);
    expect(emu.keysOf(name)).toHaveLength(2);
  });
});
