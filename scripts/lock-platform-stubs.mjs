// The npm registry this project is developed against serves only some platforms' builds of native optional
// packages (@biomejs/cli-*, @msgpackr-extract/*), so `npm install` writes a lockfile without the others and
// `npm ci` then refuses it as "not in sync". This adds a lock entry for each missing optional platform package,
// marked optional with the os/cpu/libc its name states, so `npm ci` skips it on every other platform exactly as
// it would with the full entry. Run after any `npm install`: `node scripts/lock-platform-stubs.mjs`.
import { readFileSync, writeFileSync } from 'node:fs';

const path = new URL('../package-lock.json', import.meta.url);
const lock = JSON.parse(readFileSync(path, 'utf8'));
const packages = lock.packages;
let added = 0;

function platformOf(name) {
  const n = name.split('/').pop();
  const os = ['darwin', 'win32', 'linux', 'android', 'freebsd'].find((o) => n.includes(o));
  const cpu = ['arm64', 'x64', 'arm', 'ia32'].find((c) => new RegExp(`(^|-)${c}(-|$)`).test(n));
  if (!os || !cpu) return null;
  return {
    os: [os],
    cpu: [cpu],
    ...(n.endsWith('-musl') ? { libc: ['musl'] } : os === 'linux' ? { libc: ['glibc'] } : {}),
  };
}

for (const [location, entry] of Object.entries(packages)) {
  for (const [dep, range] of Object.entries(entry.optionalDependencies ?? {})) {
    const nested = `${location ? `${location}/` : ''}node_modules/${dep}`;
    if (packages[nested] || packages[`node_modules/${dep}`]) continue;
    const platform = platformOf(dep);
    if (!platform) continue;
    packages[`node_modules/${dep}`] = { version: range.replace(/^[\^~=]/, ''), optional: true, ...platform };
    added++;
  }
}
writeFileSync(path, `${JSON.stringify(lock, null, 2)}\n`);
console.log(`lock-platform-stubs: ${added} platform package(s) stubbed`);
