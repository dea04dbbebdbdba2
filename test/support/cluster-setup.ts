/**
 * vitest globalSetup of the cluster run (vitest.cluster.config.ts): a real three-master Redis Cluster for the whole
 * run. Test processes are forked after this, so they inherit KEYTURN_TEST_REDIS_CLUSTER_HOSTS and the harness points
 * every Keyturn it starts (REDIS_CLUSTER_HOSTS) and every test connection at the cluster.
 */
import { startRedisCluster } from './redis-cluster.ts';

export default async function setup(): Promise<() => Promise<void>> {
  const cluster = await startRedisCluster(3);
  process.env.KEYTURN_TEST_REDIS_CLUSTER_HOSTS = cluster.hosts;
  process.stdout.write(`[cluster] Redis Cluster of 3 masters at ${cluster.hosts}\n`);
  return () => cluster.stop();
}
