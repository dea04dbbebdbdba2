// A rotation's persisted record. Any worker can pick it up and carry on from `step`: the record is the
// write-ahead log of the protocol (SPEC, The rotation protocol).

export type RotationStep = 'create' | 'set' | 'test' | 'finish';
export type RotationStatus = 'queued' | 'running' | 'retrying' | 'rolling_back' | 'succeeded' | 'failed';
export type RotationTrigger = 'register' | 'manual' | 'schedule';

export interface StepRecord {
  step: RotationStep | 'rollback';
  outcome: 'succeeded' | 'skipped' | 'failed';
  attempt: number;
  at: string;
  note?: string;
}

export interface RotationError {
  step: RotationStep | 'rollback';
  code?: string;
  /** Scrubbed: never a secret value or connection string. */
  message: string;
  at: string;
}

export interface Rotation {
  id: string;
  credentialId: string;
  trigger: RotationTrigger;
  actor: string;
  status: RotationStatus;
  /** The next step to run; 'finish' stays until the rotation is terminal. */
  step: RotationStep;
  /**
   * Write-ahead marker: set before the downstream change is sent. From then on the downstream may hold the
   * pending password, so a failure must restore the old one before the pending version may be dropped.
   */
  setStarted: boolean;
  /** Set once the downstream change is known to have landed. */
  setDone: boolean;
  /**
   * Downstreams that make the secret (TargetSession.mintedSecrets): the ids of the user's keys before this rotation
   * minted, saved with setStarted. A key not among them and not in the store was made by this rotation and never
   * stored (a crash between the mint and the store write), and is deleted. Key ids are not secrets.
   */
  keysBefore?: string[];
  /** The downstream user this rotation changes. */
  username?: string;
  attempts: number;
  maxAttempts: number;
  steps: StepRecord[];
  error?: RotationError;
  rollback?: { outcome: 'done' | 'pending'; note: string; at: string };
  createdAt: string;
  /** A scheduled rotation with jitter waits until then before its first step. */
  notBefore?: string;
  updatedAt: string;
  startedAt?: string;
  finishedAt?: string;
}

export const TERMINAL: ReadonlySet<RotationStatus> = new Set(['succeeded', 'failed']);
