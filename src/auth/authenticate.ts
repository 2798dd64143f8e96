/**
 * Authentication of the upgrade request, and again of every open socket on an interval. It fails
 * closed: a `null` or a malformed principal refuses; a throw (the host's store is down) is no
 * verdict on the credentials: it keeps a new socket out with a "retry later", an open one open.
 */
import type { FastifyBaseLogger, FastifyRequest } from 'fastify';
import type { AuthResult, Principal } from '../core/ports.js';
import type { ResolvedOptions } from '../options.js';
import { UUID_REGEX } from '../protocol/schemas.js';
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

export type { AuthResult };

/** Runs one of the host's checks; a throw is reported apart from a refusal. Never throws. */
async function outcomeOf(check: () => Promise<unknown>, name: string, log: FastifyBaseLogger): Promise<AuthResult> {
  let answer: unknown;
  try {
    answer = await check();
  } catch (error) {
    return { ok: false, why: 'unavailable', error };
  }
  const principal = normalise(answer);
  if (principal) return { ok: true, principal };
  if (answer !== null) log.error(`${name} returned something that is not a Principal; refusing`);
  return { ok: false, why: 'refused' };
}

export function authenticateRequest(authenticate: ResolvedOptions['authenticate'], request: FastifyRequest): Promise<AuthResult> {
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
): Promise<AuthResult> {
  const redeemed = await outcomeOf(() => store.redeem(ticket), 'the ticket store', log);
  if (!redeemed.ok || !reauthenticate) return redeemed;
  return reauthenticatePrincipal(reauthenticate, redeemed.principal, log);
}

export function reauthenticatePrincipal(
  reauthenticate: NonNullable<ResolvedOptions['reauthenticate']>,
  principal: Principal,
  log: FastifyBaseLogger,
): Promise<AuthResult> {
  return outcomeOf(() => reauthenticate({ ...principal }), 'reauthenticate', log);
}

export { principalKey, samePrincipal } from '../core/principal.js';
