// The map of sync destinations by type. Adding one means adding its folder and one line here; the sync job, the API
// and the engine's hooks stay as they are. A map over every SyncType: a new type does not compile until it is here.
import type { SyncSpec } from '../registry/types.ts';
import { type KubernetesAccess, kubernetesSync } from './kubernetes/kubernetes-sync.ts';
import type { SyncTarget, SyncType } from './types.ts';

export type SyncTargets = { [T in SyncType]: SyncTarget<Extract<SyncSpec, { type: T }>> };

export function syncTargets(config: { kubernetes: KubernetesAccess }): SyncTargets {
  return { kubernetes: kubernetesSync(config.kubernetes) };
}

/** Problems of a credential's sync list (422), including destinations this process cannot reach. */
export function syncProblems(targets: SyncTargets, specs: readonly SyncSpec[]): string[] {
  const problems: string[] = [];
  for (const type of Object.keys(targets) as SyncType[]) {
    const mine = specs.filter((s) => s.type === type);
    if (mine.length === 0) continue;
    const why = targets[type].unavailable();
    if (why) problems.push(`sync: ${why}`);
    problems.push(...targets[type].validate(mine));
  }
  return problems;
}
