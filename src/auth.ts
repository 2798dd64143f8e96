/**
 * Authentication of the upgrade request, and again of every open socket on an interval. It fails
 * closed: a `null` or a malformed principal refuses; a throw (the host's store is down) is no
 * verdict on the credentials: it keeps a new socket out with a "retry later", an open one open.
 */
import type { FastifyBaseLogger, FastifyRequest } from 'fastify';
import type { Principal, ResolvedOptions } from './options.js';
import { UUID_REGEX } from './protocol/schemas.js';
import type { TicketStore } from './tickets.js';


function normalise(value: unknown): Principal | null {
  if (typeof value !== 'object' || value === null) return null;
  const { ownerId, admin, id } = value as Partial<Principal>;
  if (typeof admin !== 'boolean') return null;
  if (id !== undefined && (typeof id !== 'string' || id.length === 0 || id.length > 256)) return null;
  if (ownerId !== null && (typeof ownerId !== 'string' || !UUID_REGEX.test(ownerId))) return null;
  const principal: Principal = { ownerId: ownerId === null ? null : ownerId.toLowerCase(), admin };
  if (id !== undefined) principal.id = id;
  return principal;
}

export type AuthOutcome = { principal: Principal } | { refused: true } | { failed: unknown };

/** Runs one of the host's checks; a throw is reported apart from a refusal. Never throws. */
async function outcomeOf(check: () => Promise<unknown>, name: string, log: FastifyBaseLogger): Promise<AuthOutcome> {
  let answer: unknown;
  try {
    answer = await check();
  } catch (error) {
    return { failed: error };
  }
  const principal = normalise(answer);
  if (principal) return { principal };
  if (answer !== null) log.error(`${name} returned something that is not a Principal; refusing`);
  return { refused: true };
}

export function authenticateRequest(authenticate: ResolvedOptions['authenticate'], request: FastifyRequest): Promise<AuthOutcome> {
  return outcomeOf(() => authenticate(request), 'authenticate', request.log);
}

/**
 * A ticket offered on the upgrade: the principal it was minted for, once, checked again with
 * `reauthenticate` when the host gave it, since the key may have been revoked (or its grant
 * changed) after the ticket was minted: `null` refuses, a changed principal is the one admitted.
 */
export async function redeemTicket(
  store: TicketStore,
  ticket: string,
  reauthenticate: ResolvedOptions['reauthenticate'],
  log: FastifyBaseLogger,
): Promise<AuthOutcome> {
  const redeemed = await outcomeOf(() => store.redeem(ticket), 'the ticket store', log);
  if (!('principal' in redeemed) || !reauthenticate) return redeemed;
  return reauthenticatePrincipal(reauthenticate, redeemed.principal, log);
}

export function reauthenticatePrincipal(
  reauthenticate: NonNullable<ResolvedOptions['reauthenticate']>,
  principal: Principal,
  log: FastifyBaseLogger,
): Promise<AuthOutcome> {
  return outcomeOf(() => reauthenticate({ ...principal }), 'reauthenticate', log);
}

/** The identity the per-principal connection limit counts: never a secret. */
export function principalKey(p: Principal): string {
  return p.id ?? p.ownerId ?? (p.admin ? 'admin' : 'nobody');
}

export function samePrincipal(a: Principal, b: Principal): boolean {
  return a.ownerId === b.ownerId && a.admin === b.admin && a.id === b.id;
}
