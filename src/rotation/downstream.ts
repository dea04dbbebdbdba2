// Opening a session with a connection's downstream: its driver, logged in with the admin secret from the
// connection's store. The engine, the secret read path and imports all need exactly this.
import { UnprocessableError } from '../registry/errors.ts';
import type { Connection } from '../registry/types.ts';
import { connectionAdminRef, type StoreSet } from '../stores/index.ts';
import { targetDriver } from '../targets/index.ts';
import type { Login, TargetDriver, TargetSession } from '../targets/types.ts';

export interface Downstream {
  driver: TargetDriver;
  admin: Login;
  session: TargetSession;
}

export async function openDownstream(
  connection: Connection,
  stores: StoreSet,
  timeoutMs: number,
  drivers: (type: string) => TargetDriver | undefined = targetDriver,
): Promise<Downstream> {
  const driver = drivers(connection.type);
  if (!driver) throw new UnprocessableError(`no target driver for connection type "${connection.type}"`);
  const adminVersion = await stores
    .get(connection.adminStore)
    .read(connectionAdminRef(connection), { stage: 'current' });
  if (!adminVersion) {
    throw new UnprocessableError(
      `the admin secret of connection "${connection.id}" is missing from its store`,
    );
  }
  const admin = { username: adminVersion.value.username, password: adminVersion.value.password };
  const session = await driver.open(connection, admin, { timeoutMs });
  return { driver, admin, session };
}
