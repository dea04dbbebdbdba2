// What route plugins get from the runtime.

import type { AuditLog } from '../audit/audit-log.ts';
import type { AuditTrail } from '../audit/trail.ts';
import type { TokensFileStatus } from '../auth/tokens-watcher.ts';
import type { Clock } from '../clock.ts';
import type { ComplianceReport } from '../compliance/report.ts';
import type { RedisSettings } from '../config/redis-topology.ts';
import type { EventHub } from '../events/event-hub.ts';
import type { LeaseService } from '../leases/lease-service.ts';
import type { RedisClient } from '../redis/client.ts';
import type { Registry } from '../registry/registry.ts';
import type { RekeyService } from '../rekey/rekey.ts';
import type { RotationEngine } from '../rotation/engine.ts';
import type { RotationRepo } from '../rotation/rotation-repo.ts';
import type { SecretReader } from '../rotation/secret-reader.ts';
import type { ApprovalService } from '../service/approvals.ts';
import type { RegistryService } from '../service/registry-service.ts';
import type { StoreSet } from '../stores/index.ts';

export interface ApiContext {
  redis: RedisClient;
  /** The configured topology (for /readyz: never a password is shown). */
  redisSettings: RedisSettings;
  registry: Registry;
  service: RegistryService;
  /** Dual control: approvals of gated requests, and break-glass. */
  approvals: ApprovalService;
  /** The key providers and the rekey (GET/POST /v1/rekey). */
  rekey: RekeyService;
  engine: RotationEngine;
  rotations: RotationRepo;
  secrets: SecretReader;
  stores: StoreSet;
  audit: AuditLog;
  leases: LeaseService;
  /** GET /v1/events: this process's follower of the audit stream and its subscribers. */
  events: EventHub;
  /** The time credential age and overdue are judged by. */
  clock: Clock;
  compliance: ComplianceReport;
  /** The audit hash chain: verify, export, public keys. */
  auditTrail: AuditTrail;
  /** The tokens file in force and, while the file on disk is refused, why (for /readyz); absent without a file. */
  tokensFile?: () => TokensFileStatus;
}
