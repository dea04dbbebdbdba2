// The compliance report (GET /v1/compliance): every credential's age against its policy, its next rotation and last
// outcome, with totals, as of the runtime's clock. Evidence for PCI DSS 8.6 / SOC 2 CC6.1 that credentials are
// rotated within policy; it reads the registry only, never a secret.
import type { Clock } from '../clock.ts';
import { type CsvValue, csvRecord } from '../csv.ts';
import type { Registry } from '../registry/registry.ts';
import { adminSubjectId, type Credential, type CredentialStatus } from '../registry/types.ts';
import { DAY_MS, isOverdue, neverRotated, passwordSetAt, policyDeadline } from './policy.ts';

export interface ComplianceFilter {
  /** Only credentials carrying this label with this value. */
  label?: { key: string; value: string };
  overdue?: boolean;
}

export interface ComplianceRow {
  id: string;
  connection: string;
  /** The connection's type (postgres, mysql, redis, webhook); null if the connection is gone. */
  targetType: string | null;
  strategy: string;
  status: CredentialStatus;
  labels: Record<string, string>;
  maxAgeDays: number | null;
  /** Days since the current password was set (its last rotation or import, else the registration), one decimal, rounded down. */
  ageDays: number;
  /** The last successful rotation by Keyturn; null while none has succeeded (an imported password, a first rotation pending or failed). */
  lastRotatedAt: string | null;
  nextRotationAt: string | null;
  lastOutcome: 'succeeded' | 'failed' | 'skipped' | null;
  consecutiveFailures: number;
  overdue: boolean;
  /** When it left its policy (see policy.ts); null while it is within it. */
  overdueSince: string | null;
  neverRotated: boolean;
  /** Its scheduled rotations are stopped (PATCH {"paused": true} on it or on its connection); a manual rotate still runs. */
  paused: boolean;
  /** Since when (its own pause, else its connection's); null while not paused. */
  pausedSince: string | null;
}

export interface ComplianceTotals {
  credentials: number;
  withinPolicy: number;
  /** withinPolicy / credentials × 100, one decimal; null when there is no credential to judge. */
  withinPolicyPercent: number | null;
  overdue: number;
  /** Last rotation failed. */
  failed: number;
  neverRotated: number;
  /** Scheduled rotations stopped, by the credential's pause or its connection's. */
  paused: number;
}

export interface ComplianceReportData {
  /** The clock's time the report was computed at. */
  asOf: string;
  totals: ComplianceTotals;
  credentials: ComplianceRow[];
  admins: AdminRow[];
}

/** A connection's admin password (PCI DSS 8.6.3): its age, and its rotation by Keyturn if it has one. */
export interface AdminRow {
  connection: string;
  targetType: string;
  username: string;
  /** Rotated on a schedule (the connection's adminRotation). */
  scheduled: boolean;
  maxAgeDays: number | null;
  /** Days since the admin password was set: its last rotation by Keyturn, else when it was given to Keyturn. */
  ageDays: number;
  lastRotatedAt: string | null;
  nextRotationAt: string | null;
  lastOutcome: 'succeeded' | 'failed' | 'skipped' | null;
  overdue: boolean;
}

/** The CSV columns, in order; each row repeats asOf so that an exported file stands alone as evidence. */
export const CSV_COLUMNS = [
  'asOf',
  'id',
  'connection',
  'targetType',
  'strategy',
  'status',
  'maxAgeDays',
  'ageDays',
  'lastRotatedAt',
  'nextRotationAt',
  'lastOutcome',
  'consecutiveFailures',
  'overdue',
  'overdueSince',
  'neverRotated',
  'paused',
  'pausedSince',
  'labels',
] as const;

const READ_BATCH = 500;

/** What a row needs of the credential's connection: its type, and when it was paused (if it is). */
export interface RowConnection {
  type: string;
  pausedAt?: string;
}

export function complianceRow(
  credential: Credential,
  connection: RowConnection | null,
  now: number,
): ComplianceRow {
  const { spec, state } = credential;
  const pausedSince = spec.pausedAt ?? connection?.pausedAt ?? null;
  const overdue = isOverdue(credential, now);
  const deadline = policyDeadline(credential);
  const never = neverRotated(credential);
  return {
    id: spec.id,
    connection: spec.connection,
    targetType: connection?.type ?? null,
    strategy: spec.strategy,
    status: state.status,
    labels: spec.labels,
    maxAgeDays: spec.maxAgeDays ?? null,
    ageDays: Math.max(0, Math.floor(((now - passwordSetAt(credential)) / DAY_MS) * 10) / 10),
    lastRotatedAt: never ? null : (state.rotatedAt ?? null),
    nextRotationAt: state.nextRotationAt ?? null,
    lastOutcome: state.lastOutcome ?? null,
    consecutiveFailures: state.failures ?? 0,
    overdue,
    overdueSince: overdue && deadline !== undefined ? new Date(deadline).toISOString() : null,
    neverRotated: never,
    paused: pausedSince !== null,
    pausedSince,
  };
}

export function complianceTotals(rows: readonly ComplianceRow[]): ComplianceTotals {
  const totals = new TotalsCounter();
  for (const row of rows) totals.add(row);
  return totals.totals();
}

/** The totals of rows seen one at a time (a streamed report gives them after its rows). */
export class TotalsCounter {
  #credentials = 0;
  #overdue = 0;
  #failed = 0;
  #neverRotated = 0;
  #paused = 0;

  add(row: ComplianceRow): void {
    this.#credentials++;
    if (row.overdue) this.#overdue++;
    if (row.lastOutcome === 'failed') this.#failed++;
    if (row.neverRotated) this.#neverRotated++;
    if (row.paused) this.#paused++;
  }

  totals(): ComplianceTotals {
    const withinPolicy = this.#credentials - this.#overdue;
    return {
      credentials: this.#credentials,
      withinPolicy,
      withinPolicyPercent: this.#credentials
        ? Math.round((withinPolicy / this.#credentials) * 1000) / 10
        : null,
      overdue: this.#overdue,
      failed: this.#failed,
      neverRotated: this.#neverRotated,
      paused: this.#paused,
    };
  }
}

/** The CSV form's header row. */
export function complianceCsvHeader(): string {
  return csvRecord(CSV_COLUMNS);
}

/** One row of the CSV form, with the report's asOf. */
export function complianceCsvRow(row: ComplianceRow, asOf: string): string {
  const values: Record<(typeof CSV_COLUMNS)[number], CsvValue> = {
    ...row,
    asOf,
    // One cell for any number of labels; JSON keeps commas, quotes and "=" in keys and values unambiguous.
    labels: JSON.stringify(row.labels),
  };
  return csvRecord(CSV_COLUMNS.map((column) => values[column]));
}

/** The CSV form: a header row and one row per credential; the totals are in the JSON form only. */
export function complianceCsv(report: ComplianceReportData): string {
  return [complianceCsvHeader(), ...report.credentials.map((row) => complianceCsvRow(row, report.asOf))].join(
    '',
  );
}

export class ComplianceReport {
  readonly #registry: Registry;
  readonly #clock: Clock;

  constructor(deps: { registry: Registry; clock: Clock }) {
    this.#registry = deps.registry;
    this.#clock = deps.clock;
  }

  async build(filter: ComplianceFilter = {}): Promise<ComplianceReportData> {
    const { asOf, batches } = this.stream(filter);
    const rows: ComplianceRow[] = [];
    for await (const batch of batches) rows.push(...batch);
    return { asOf, totals: complianceTotals(rows), credentials: rows, admins: await this.admins(filter) };
  }

  /** Every connection's admin password, by connection (few: read at once); the filter applies to the connection. */
  async admins(filter: ComplianceFilter = {}): Promise<AdminRow[]> {
    const now = this.#clock.now();
    const rows: AdminRow[] = [];
    for (const connection of await this.#registry.listConnections()) {
      const { label } = filter;
      if (label && connection.labels[label.key] !== label.value) continue;
      const subject = await this.#registry.findCredential(adminSubjectId(connection.id));
      const rotatedAt = subject?.state.lastOutcome ? subject.state.rotatedAt : undefined;
      const setAt = Math.max(
        Date.parse(connection.adminSetAt ?? connection.createdAt),
        rotatedAt ? Date.parse(rotatedAt) : 0,
      );
      const ageDays = Math.max(0, Math.floor(((now - setAt) / DAY_MS) * 10) / 10);
      const maxAgeDays = connection.adminRotation?.maxAgeDays ?? null;
      const row: AdminRow = {
        connection: connection.id,
        targetType: connection.type,
        username: connection.admin.username,
        scheduled: connection.adminRotation !== undefined,
        maxAgeDays,
        ageDays,
        lastRotatedAt: rotatedAt ?? null,
        nextRotationAt: (connection.adminRotation && subject?.state.nextRotationAt) || null,
        lastOutcome: subject?.state.lastOutcome ?? null,
        overdue: maxAgeDays !== null && now - setAt > maxAgeDays * DAY_MS,
      };
      if (filter.overdue !== undefined && row.overdue !== filter.overdue) continue;
      rows.push(row);
    }
    return rows;
  }

  /**
   * The report's rows a batch at a time, as the registry reads them (GET /v1/compliance streams them): memory stays
   * one batch however large the fleet, and the caller counts the totals as the rows go by (TotalsCounter).
   */
  stream(filter: ComplianceFilter = {}): { asOf: string; batches: AsyncGenerator<ComplianceRow[]> } {
    const now = this.#clock.now();
    const registry = this.#registry;
    async function* batches(): AsyncGenerator<ComplianceRow[]> {
      const connections = new Map<string, RowConnection>(
        (await registry.listConnections()).map((c) => [c.id, { type: c.type, pausedAt: c.pausedAt }]),
      );
      for await (const batch of registry.credentialBatches(READ_BATCH)) {
        const rows: ComplianceRow[] = [];
        for (const credential of batch) {
          const { label } = filter;
          if (label && credential.spec.labels[label.key] !== label.value) continue;
          const row = complianceRow(credential, connections.get(credential.spec.connection) ?? null, now);
          if (filter.overdue !== undefined && row.overdue !== filter.overdue) continue;
          rows.push(row);
        }
        if (rows.length) yield rows;
      }
    }
    return { asOf: new Date(now).toISOString(), batches: batches() };
  }
}
