// Passwords come from crypto.randomInt, which draws without modulo bias (it rejects out-of-range samples), one
// character at a time from the policy's alphabet. A policy may require one character of each class, as many
// databases' password checks do; that requirement is met by placing one draw of each class at a random
// position, which keeps every position uniformly random over the classes it may hold.
import { randomInt } from 'node:crypto';

export interface PasswordPolicy {
  length: number;
  /** Character classes to draw from. */
  charset: 'alphanumeric' | 'ascii-printable' | 'hex' | 'base64url';
  /** Require at least one character from each class in the charset. */
  requireEachClass?: boolean;
}

export const DEFAULT_PASSWORD_POLICY: PasswordPolicy = {
  length: 32,
  charset: 'alphanumeric',
  requireEachClass: true,
};

const LOWER = 'abcdefghijklmnopqrstuvwxyz';
const UPPER = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';
const DIGITS = '0123456789';
// Printable ASCII without characters that break connection strings, shells or SQL quoting: space ' " \ ` $ @ / : ; % ? # &
const SYMBOLS = '!*+,-.<=>^_{|}~()[]';

const CLASSES: Record<PasswordPolicy['charset'], string[]> = {
  alphanumeric: [LOWER, UPPER, DIGITS],
  'ascii-printable': [LOWER, UPPER, DIGITS, SYMBOLS],
  hex: ['0123456789abcdef'],
  base64url: [LOWER, UPPER, DIGITS, '-_'],
};

function pick(alphabet: string): string {
  return alphabet[randomInt(alphabet.length)]!;
}

export function generatePassword(policy: PasswordPolicy = DEFAULT_PASSWORD_POLICY): string {
  const classes = CLASSES[policy.charset];
  if (!Number.isInteger(policy.length) || policy.length < 16 || policy.length > 256) {
    throw new RangeError('Password length must be a whole number from 16 to 256');
  }
  const alphabet = classes.join('');
  const chars = Array.from({ length: policy.length }, () => pick(alphabet));
  if (policy.requireEachClass && classes.length > 1) {
    // Distinct random positions, one per class.
    const positions = new Set<number>();
    while (positions.size < classes.length) positions.add(randomInt(policy.length));
    [...positions].forEach((pos, i) => {
      chars[pos] = pick(classes[i]!);
    });
  }
  return chars.join('');
}
