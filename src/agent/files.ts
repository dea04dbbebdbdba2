// Writing a rendered file: only when its content (or mode) changes, and atomically, so that a service reading it
// at any moment sees the old content or the new, never half of one. A temporary file in the same directory (same
// file system, so rename is atomic), created with the requested mode, written and fsynced; then renamed over the
// destination, and the directory fsynced so that the rename itself survives a crash.
import { randomBytes } from 'node:crypto';
import { chmod, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export type WriteOutcome = 'written' | 'unchanged';

/** Writes `content` to `path` with `mode` unless the file already holds exactly that. */
export async function writeIfChanged(path: string, content: string, mode: number): Promise<WriteOutcome> {
  const wanted = Buffer.from(content, 'utf8');
  const existing = await readFile(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (existing?.equals(wanted)) {
    const current = (await stat(path)).mode & 0o7777;
    if (current === mode) return 'unchanged';
    await chmod(path, mode);
    return 'unchanged';
  }
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await open(temp, 'wx', mode);
  try {
    await handle.writeFile(wanted);
    // open's mode is masked by the umask: set it exactly.
    await handle.chmod(mode);
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => {});
    await unlink(temp).catch(() => {});
    throw err;
  }
  await handle.close();
  try {
    await rename(temp, path);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
  await syncDirectory(dir);
  return 'written';
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } catch (err) {
    // Some file systems refuse fsync on a directory (EINVAL): the rename has happened all the same.
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
  } finally {
    await handle.close();
  }
}
