// What route plugins get from the runtime.
import type { Redis } from 'ioredis';
import type { AuditLog } from '../audit/audit-log.ts';
import type { LeaseService } from '../leases/lease-service.ts';
import type { Registry } from '../registry/registry.ts';
import type { RegistryService } from '../registry/service.ts';
import type { RotationEngine } from '../rotation/engine.ts';
import type { RotationRepo } from '../rotation/rotation-repo.ts';
import type { SecretReader } from '../rotation/secret-reader.ts';
import type { StoreSet } from '../stores/index.ts';

export interface ApiContext {
  redis: Redis;
  registry: Registry;
  service: RegistryService;
  engine: RotationEngine;
  rotations: RotationRepo;
  secrets: SecretReader;
  stores: StoreSet;
  audit: AuditLog;
  leases: LeaseService;
}
