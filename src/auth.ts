/**
 * Authentication of the upgrade request: it runs as a route hook, so a refusal is an HTTP answer
 * before any 101. It fails closed: a throw, a `null` or a malformed principal all refuse.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { UpgradeError } from './errors.js';
import type { Principal, ResolvedOptions } from './options.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The principal of each upgrade request, from the hook to the socket handler. */
const principals = new WeakMap<FastifyRequest, Principal>();

export function principalOf(request: FastifyRequest): Principal | undefined {
  return principals.get(request);
}

function normalise(value: unknown): Principal | null {
  if (typeof value !== 'object' || value === null) return null;
  const { ownerId, admin } = value as Partial<Principal>;
  if (typeof admin !== 'boolean') return null;
  if (ownerId === null) return { ownerId: null, admin };
  if (typeof ownerId !== 'string' || !UUID.test(ownerId)) return null;
  return { ownerId: ownerId.toLowerCase(), admin };
}

export function upgradeAuthHook(authenticate: ResolvedOptions['authenticate']) {
  return async function authenticateUpgrade(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    let answer: unknown;
    try {
      answer = await authenticate(request);
    } catch (error) {
      request.log.warn({ err: error }, 'authenticate threw; refusing the upgrade');
      answer = null;
    }
    const principal = normalise(answer);
    if (answer !== null && principal === null) {
      request.log.error('authenticate returned something that is not a Principal; refusing the upgrade');
    }
    if (!principal) {
      const { status, code, message } = UpgradeError.UNAUTHORIZED;
      await reply.code(status).send({ code, message });
      return;
    }
    principals.set(request, principal);
  };
}
