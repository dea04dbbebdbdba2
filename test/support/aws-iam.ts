// An IAM world for the aws-iam target's tests: the project's IAM/STS emulator (test/emulators/aws-iam.ts, strict about
// the two-key limit, SigV4 and propagation), or a real endpoint when AWS_ENDPOINT_URL is set (LocalStack, or AWS
// itself), where the environment's AWS credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) create the test users
// and are the connection's admin. Each world makes IAM users with one key and checks keys the way services use them:
// STS GetCallerIdentity signed with the key.
import { randomBytes } from 'node:crypto';
import {
  CreateAccessKeyCommand,
  CreateUserCommand,
  DeleteAccessKeyCommand,
  DeleteUserCommand,
  DeleteUserPolicyCommand,
  IAMClient,
  ListAccessKeysCommand,
  PutUserPolicyCommand,
} from '@aws-sdk/client-iam';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { type AwsIamEmulator, startAwsIamEmulator } from '../emulators/aws-iam.ts';

export interface IamKey {
  keyId: string;
  secret: string;
}

export interface IamWorld {
  /** Body of POST /v1/connections without the id. */
  connection: {
    type: 'aws-iam';
    region: string;
    endpoint: string;
    admin: { username: string; password: string };
  };
  /** The emulator, when the world is one (tests of propagation and injected faults need it), and its admin user. */
  emulator?: AwsIamEmulator;
  adminUser?: string;
  /** A fresh IAM user with one active key. */
  createUser(): Promise<{ username: string } & IamKey>;
  /** A second key for a user (someone else's key, as far as Keyturn knows). */
  addKey(username: string): Promise<IamKey>;
  keysOf(username: string): Promise<Array<{ keyId: string; active: boolean }>>;
  /** Deletes a key as an operator would (`aws iam delete-access-key`), with the connection's admin key. */
  deleteKey(username: string, keyId: string): Promise<void>;
  /** Whether STS accepts the key now, as the user `username` when given. */
  canLogin(key: IamKey, username?: string): Promise<boolean>;
  /** An admin key that may do everything rotations need but `lacks`. */
  weakAdmin(): Promise<{ login: { username: string; password: string }; lacks: string }>;
  secrets: string[];
  stop(): Promise<void>;
}

/** The admin's actions in these worlds: what rotations need, and the simulation verify runs. */
export const ROTATION_ACTIONS = [
  'iam:GetUser',
  'iam:ListAccessKeys',
  'iam:CreateAccessKey',
  'iam:UpdateAccessKey',
  'iam:DeleteAccessKey',
  'iam:SimulatePrincipalPolicy',
];

export function iamSkipReason(): string | undefined {
  if (process.env.AWS_ENDPOINT_URL && !(process.env.AWS_ACCESS_KEY_ID && process.env.AWS_SECRET_ACCESS_KEY)) {
    return 'AWS_ENDPOINT_URL is set without AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to create the test users with';
  }
  return undefined;
}

async function stsCaller(endpoint: string, region: string, key: IamKey): Promise<string | undefined> {
  const sts = new STSClient({
    region,
    endpoint,
    credentials: { accessKeyId: key.keyId, secretAccessKey: key.secret },
    maxAttempts: 1,
  });
  try {
    return (await sts.send(new GetCallerIdentityCommand({}))).Arn;
  } catch {
    return undefined;
  } finally {
    sts.destroy();
  }
}

const userOfArn = (arn: string | undefined) => arn?.slice(arn.lastIndexOf('/') + 1);

export async function startIamWorld(options: { propagationMs?: number } = {}): Promise<IamWorld> {
  const real = process.env.AWS_ENDPOINT_URL;
  if (real) return startRealWorld(real);
  const emulator = await startAwsIamEmulator({ propagationMs: options.propagationMs ?? 0 });
  const adminName = `keyturn-admin-${randomBytes(3).toString('hex')}`;
  const admin = emulator.createUser(adminName, { allow: ROTATION_ACTIONS });
  const world: IamWorld = {
    connection: {
      type: 'aws-iam',
      region: emulator.region,
      endpoint: emulator.endpoint,
      admin: { username: admin.accessKeyId, password: admin.secretAccessKey },
    },
    emulator,
    adminUser: adminName,
    async createUser() {
      const username = `svc-${randomBytes(4).toString('hex')}`;
      const key = emulator.createUser(username);
      world.secrets.push(key.secretAccessKey);
      return { username, keyId: key.accessKeyId, secret: key.secretAccessKey };
    },
    async addKey(username) {
      // As the admin would, through the API: the emulator's own users have no second-key helper.
      const iam = new IAMClient({
        region: emulator.region,
        endpoint: emulator.endpoint,
        credentials: { accessKeyId: admin.accessKeyId, secretAccessKey: admin.secretAccessKey },
      });
      try {
        const out = await iam.send(new CreateAccessKeyCommand({ UserName: username }));
        const key = { keyId: out.AccessKey!.AccessKeyId!, secret: out.AccessKey!.SecretAccessKey! };
        world.secrets.push(key.secret);
        return key;
      } finally {
        iam.destroy();
      }
    },
    async keysOf(username) {
      return emulator.keysOf(username).map((k) => ({ keyId: k.accessKeyId, active: k.status === 'Active' }));
    },
    deleteKey: (username, keyId) => deleteKeyWith(world.connection, username, keyId),
    async canLogin(key, username) {
      const arn = await stsCaller(emulator.endpoint, emulator.region, key);
      return arn !== undefined && (username === undefined || userOfArn(arn) === username);
    },
    async weakAdmin() {
      const name = `keyturn-weak-${randomBytes(3).toString('hex')}`;
      const weak = emulator.createUser(name, {
        allow: ROTATION_ACTIONS.filter((a) => a !== 'iam:DeleteAccessKey'),
      });
      world.secrets.push(weak.secretAccessKey);
      return {
        login: { username: weak.accessKeyId, password: weak.secretAccessKey },
        lacks: 'iam:DeleteAccessKey',
      };
    },
    secrets: [admin.secretAccessKey],
    stop: () => emulator.close(),
  };
  return world;
}

/** A real IAM endpoint: users made (and removed at stop) with the environment's credentials, which are the admin too. */
async function startRealWorld(endpoint: string): Promise<IamWorld> {
  const region = process.env.AWS_REGION ?? 'us-east-1';
  const adminKey = { keyId: process.env.AWS_ACCESS_KEY_ID!, secret: process.env.AWS_SECRET_ACCESS_KEY! };
  const iam = new IAMClient({
    region,
    endpoint,
    credentials: { accessKeyId: adminKey.keyId, secretAccessKey: adminKey.secret },
  });
  const made: string[] = [];
  const world: IamWorld = {
    connection: {
      type: 'aws-iam',
      region,
      endpoint,
      admin: { username: adminKey.keyId, password: adminKey.secret },
    },
    async createUser() {
      const username = `keyturn-test-${randomBytes(4).toString('hex')}`;
      await iam.send(new CreateUserCommand({ UserName: username }));
      made.push(username);
      const key = await world.addKey(username);
      return { username, ...key };
    },
    async addKey(username) {
      const out = await iam.send(new CreateAccessKeyCommand({ UserName: username }));
      const key = { keyId: out.AccessKey!.AccessKeyId!, secret: out.AccessKey!.SecretAccessKey! };
      world.secrets.push(key.secret);
      return key;
    },
    deleteKey: (username, keyId) => deleteKeyWith(world.connection, username, keyId),
    async keysOf(username) {
      const out = await iam.send(new ListAccessKeysCommand({ UserName: username }));
      return (out.AccessKeyMetadata ?? []).map((k) => ({
        keyId: k.AccessKeyId!,
        active: k.Status === 'Active',
      }));
    },
    async canLogin(key, username) {
      const arn = await stsCaller(endpoint, region, key);
      return arn !== undefined && (username === undefined || userOfArn(arn) === username);
    },
    async weakAdmin() {
      const user = await world.createUser();
      const allowed = ROTATION_ACTIONS.filter((a) => a !== 'iam:DeleteAccessKey');
      await iam.send(
        new PutUserPolicyCommand({
          UserName: user.username,
          PolicyName: 'keyturn-weak',
          PolicyDocument: JSON.stringify({
            Version: '2012-10-17',
            Statement: [{ Effect: 'Allow', Action: allowed, Resource: '*' }],
          }),
        }),
      );
      return { login: { username: user.keyId, password: user.secret }, lacks: 'iam:DeleteAccessKey' };
    },
    secrets: [adminKey.secret],
    async stop() {
      for (const username of made) {
        for (const k of await world.keysOf(username).catch(() => [])) {
          await iam
            .send(new DeleteAccessKeyCommand({ UserName: username, AccessKeyId: k.keyId }))
            .catch(() => {});
        }
        await iam
          .send(new DeleteUserPolicyCommand({ UserName: username, PolicyName: 'keyturn-weak' }))
          .catch(() => {});
        await iam.send(new DeleteUserCommand({ UserName: username })).catch(() => {});
      }
      iam.destroy();
    },
  };
  return world;
}

/** DeleteAccessKey signed with the connection's admin key. */
async function deleteKeyWith(
  connection: IamWorld['connection'],
  username: string,
  keyId: string,
): Promise<void> {
  const iam = new IAMClient({
    region: connection.region,
    endpoint: connection.endpoint,
    credentials: { accessKeyId: connection.admin.username, secretAccessKey: connection.admin.password },
  });
  try {
    await iam.send(new DeleteAccessKeyCommand({ UserName: username, AccessKeyId: keyId }));
  } finally {
    iam.destroy();
  }
}
