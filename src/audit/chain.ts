// The audit hash chain, as pure functions shared by the sealer (which builds it), the API (which verifies the
// stream and exports it) and the offline verifier (`keyturn audit verify --file`), so all three agree byte for
// byte on what an event's hash is.
//
//   digest(event)  = SHA-256 of the event's canonical JSON (RFC 8785), its stream id included: the content.
//   hash(event)    = SHA-256 of "keyturn-audit-v1\n<seq>\n<prev>\n<digest>": the link. `prev` is the hash of
//                    the event before (64 zeros for the first), `seq` its 1-based position.
//
// Keeping the content digest apart from the link lets an export leave out events a filter excludes and still
// carry the whole chain: an omitted event is its digest alone, and every link can still be recomputed.
// A checkpoint signs (with Ed25519) the chain's head at one position, and the hash of the checkpoint before it;
// whoever holds only the public key can then tell that nothing up to a checkpoint was changed, removed, moved or
// added, because that would need either a SHA-256 preimage or the private key.
import { createHash, type KeyObject, sign, verify } from 'node:crypto';
import canonicalize from 'canonicalize';
import type { AuditEvent } from './audit-log.ts';

export const GENESIS_HASH = '0'.repeat(64);
export const EXPORT_FORMAT = 'keyturn-audit/1';

/** An event as an export line (and as GET /v1/audit shows a sealed one): its fields, its place, its hashes. */
export interface ChainedEventRecord extends AuditEvent {
  type: 'event';
  seq: number;
  digest: string;
  prev: string;
  hash: string;
}

/** An event a filter left out of an export: only what the chain needs. */
export interface OmittedEventRecord {
  type: 'omitted';
  id: string;
  seq: number;
  digest: string;
  prev: string;
  hash: string;
}

export interface CheckpointBody {
  type: 'checkpoint';
  /** 1, 2, 3…: a missing checkpoint shows as a gap. */
  n: number;
  /** The chain position and hash this checkpoint vouches for. */
  seq: number;
  id: string;
  hash: string;
  /** checkpointHash() of checkpoint n-1 (zeros for the first): checkpoints chain too. */
  prevCheckpoint: string;
  time: string;
  /** Which key signed: the SHA-256 fingerprint of its public key (keyId()). */
  keyId: string;
}

export interface CheckpointRecord extends CheckpointBody {
  /** Ed25519 signature (base64) of the canonical JSON of the body. */
  sig: string;
}

/** The first line of an export: where its chain starts, so a range can be verified without what came before. */
export interface HeaderRecord {
  type: 'header';
  format: typeof EXPORT_FORMAT;
  exportedAt: string;
  /** The chain position just before the first event of the export (seq 0 and zeros at the very start). */
  from: { seq: number; hash: string };
  /** The last checkpoint before the export's first event, if any: the start of the checkpoint chain. */
  previousCheckpoint: CheckpointRecord | null;
  filters: Record<string, string>;
}

export type ChainRecord = ChainedEventRecord | OmittedEventRecord;
export type ExportRecord = HeaderRecord | ChainRecord | CheckpointRecord;

function sha256(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

function canonical(value: unknown): string {
  const text = canonicalize(value);
  if (text === undefined) throw new Error('value has no canonical JSON form');
  return text;
}

/** The fields of an event that its digest covers: everything it says, and its stream id (its time and place). */
export function eventContent(event: AuditEvent): AuditEvent {
  const { id, time, actor, action, outcome, credential, connection, rotation, details } = event;
  return {
    id,
    time,
    actor,
    action,
    outcome,
    ...(credential !== undefined ? { credential } : {}),
    ...(connection !== undefined ? { connection } : {}),
    ...(rotation !== undefined ? { rotation } : {}),
    ...(details !== undefined ? { details } : {}),
  };
}

export function eventDigest(event: AuditEvent): string {
  return sha256(canonical(eventContent(event)));
}

export function linkHash(seq: number, prev: string, digest: string): string {
  return sha256(`keyturn-audit-v1\n${seq}\n${prev}\n${digest}`);
}

/** The canonical JSON of a record: an export line is exactly this, so one changed byte anywhere is noticed. */
export function recordLine(record: ExportRecord): string {
  return canonical(record);
}

/** The fingerprint that names a public key in checkpoints: SHA-256 of its SPKI DER, hex, first 16 characters. */
export function keyId(publicKey: KeyObject): string {
  return createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
}

export function signCheckpoint(body: CheckpointBody, privateKey: KeyObject): CheckpointRecord {
  const sig = sign(null, Buffer.from(canonical(body), 'utf8'), privateKey).toString('base64');
  return { ...body, sig };
}

export function checkpointSignatureValid(record: CheckpointRecord, publicKey: KeyObject): boolean {
  const { sig, ...body } = record;
  try {
    return verify(null, Buffer.from(canonical(body), 'utf8'), publicKey, Buffer.from(sig, 'base64'));
  } catch {
    return false;
  }
}

/** What the next checkpoint's prevCheckpoint names: the whole signed record, signature included. */
export function checkpointHash(record: CheckpointRecord): string {
  return sha256(canonical(record));
}
