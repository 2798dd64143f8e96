/** Who sees what, and who is who: the visibility rule every delivery and replay applies. */
import type { Principal } from './ports.js';

/** Admins see everything, owners their own tasks; ownerless tasks are admins'. */
export function canSee(principal: Principal, owner: string | null): boolean {
  return principal.admin || (owner !== null && principal.ownerId === owner);
}

/** The identity the per-principal connection limit counts and logs show: never a secret. */
export function principalKey(p: Principal): string {
  return p.id ?? p.ownerId ?? (p.admin ? 'admin' : 'nobody');
}

export function samePrincipal(a: Principal, b: Principal): boolean {
  return a.ownerId === b.ownerId && a.admin === b.admin && a.id === b.id;
}
