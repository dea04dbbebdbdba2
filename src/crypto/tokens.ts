// Bearer tokens are compared through their SHA-256 digests with timingSafeEqual: equal-length buffers, so the
// comparison takes the same time whatever the input, and the length of the real token does not leak either.
import { createHash, timingSafeEqual } from 'node:crypto';

export function sha256Hex(value: string): string {
  return createHash('sha256').update(value, 'utf8').digest('hex');
}

/** Constant-time check of a presented token against the SHA-256 (hex) of the expected one. */
export function tokenMatchesDigest(presented: string, expectedSha256Hex: string): boolean {
  // Buffer.from(hex) stops at the first non-hex character: insist on exactly 64 hex digits first.
  if (!/^[0-9a-fA-F]{64}$/.test(expectedSha256Hex)) return false;
  const a = createHash('sha256').update(presented, 'utf8').digest();
  const b = Buffer.from(expectedSha256Hex, 'hex');
  return b.length === a.length && timingSafeEqual(a, b);
}
