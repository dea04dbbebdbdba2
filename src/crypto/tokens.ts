// Bearer tokens are compared through their SHA-256 digests with timingSafeEqual: equal-length buffers, so the
// comparison takes the same time whatever the input, and the length of the real token does not leak either.
import { createHash } from 'node:crypto';

export function sha256Hex(value: string): string {
  return createHash('sha256').update(value, 'utf8').digest('hex');
}
