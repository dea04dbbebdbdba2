// Dual control's rules that need no Redis (service/approvals.ts): which reads are a person's, what weakens a policy,
// which policies can never be met, and what of a body an approval shows (field names, never values).
import { describe, expect, it } from 'vitest';
import {
  checkPolicy,
  fieldNames,
  isPersonalRead,
  matchesApprovers,
  policyText,
  weakens,
} from '../../src/service/approvals.ts';

const policy = { required: 2, approvers: ['role:admin', 'name:bob'] };

describe('dual control rules', () => {
  it("a read is a person's unless the principal is a reader without admin", () => {
    expect(isPersonalRead({ name: 'admin', roles: ['admin'], via: 'admin-token' })).toBe(true);
    expect(isPersonalRead({ name: 'svc', roles: ['reader'], via: 'jwt' })).toBe(false);
    expect(isPersonalRead({ name: 'svc', roles: ['reader'], via: 'certificate' })).toBe(false);
    // Adding reader to an administrator's entry does not switch dual control off.
    expect(isPersonalRead({ name: 'alice', roles: ['admin', 'reader'], via: 'static-token' })).toBe(true);
  });

  it('removing, lowering required or adding an approver weakens; the opposite does not', () => {
    expect(weakens(policy, null)).toBe(true);
    expect(weakens(policy, { ...policy, required: 1 })).toBe(true);
    expect(weakens(policy, { ...policy, approvers: [...policy.approvers, 'name:mallory'] })).toBe(true);
    expect(weakens(policy, { required: 1, approvers: ['role:admin'] })).toBe(true);
    expect(weakens(policy, { required: 3, approvers: ['role:admin'] })).toBe(false);
    expect(weakens(policy, { required: 2, approvers: ['name:bob', 'role:admin'] })).toBe(false);
    expect(weakens(policy, undefined)).toBe(false);
    expect(weakens(undefined, null)).toBe(false);
    expect(weakens(undefined, { required: 1, approvers: ['role:admin'] })).toBe(false);
  });

  it('policies compare whatever the order of approvers', () => {
    expect(policyText(policy)).toBe(policyText({ required: 2, approvers: ['name:bob', 'role:admin'] }));
    expect(policyText(undefined)).toBe('none');
  });

  it('refuses a policy its named approvers alone cannot meet', () => {
    expect(() => checkPolicy({ required: 2, approvers: ['name:bob'] })).toThrow(/approval.required is 2/);
    expect(() => checkPolicy({ required: 2, approvers: ['name:bob', 'name:carol'] })).not.toThrow();
    expect(() => checkPolicy({ required: 5, approvers: ['role:admin'] })).not.toThrow();
    expect(() => checkPolicy(null)).not.toThrow();
  });

  it('matches approvers by role or by name', () => {
    expect(matchesApprovers(policy, { name: 'x', roles: ['admin'], via: 'jwt' })).toBe(true);
    expect(matchesApprovers(policy, { name: 'bob', roles: ['operator'], via: 'static-token' })).toBe(true);
    expect(matchesApprovers(policy, { name: 'bobby', roles: ['operator'], via: 'static-token' })).toBe(false);
  });

  it("shows the names of a body's fields, never a value", () => {
    const names = fieldNames({
      admin: { password: 'hunter2hunter2hunter2' },
      host: 'db',
      labels: { team: 'x' },
    });
    expect(names).toEqual(['admin.password', 'host', 'labels']);
    expect(JSON.stringify(names)).not.toContain('hunter2');
    expect(fieldNames(undefined)).toEqual([]);
    expect(fieldNames([1, 2])).toEqual([]);
  });
});
