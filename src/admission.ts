/**
 * Who may open a socket, decided on the upgrade request before any 101: not while shutting down,
 * only from an allowed Origin, only within the connection limits, only when authenticated.
 */
import type { Socket } from 'node:net';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { authenticateRequest, principalKey, redeemTicket } from './auth.js';
import { RETRY_AFTER_SECONDS, UpgradeError } from './errors.js';
import type { Principal, ResolvedOptions } from './options.js';
import type { MeshMetrics } from './metrics.js';
import { offeredTicket, type TicketStore } from './tickets.js';

type Refusal = (typeof UpgradeError)[keyof typeof UpgradeError];

// The place an admitted socket holds, found on the socket by one shared listener (no closure per socket).
const PLACE = Symbol('mesh admission place');
type Placed = Socket & { [PLACE]?: { admission: Admission; key: string } };

function givePlaceBack(this: Placed): void {
  const place = this[PLACE];
  if (place) place.admission.release(place.key);
}

export class Admission {
  closing = false;
  private total = 0;
  private readonly perPrincipal = new Map<string, number>();
  /** The principal of each admitted upgrade request, from the hook to the socket handler. */
  private readonly admitted = new WeakMap<FastifyRequest, Principal>();

  constructor(
    private readonly options: ResolvedOptions,
    private readonly metrics: MeshMetrics,
    /** Where browser tickets are redeemed; undefined when tickets are off. */
    private readonly tickets?: TicketStore,
  ) {}

  principalOf(request: FastifyRequest): Principal | undefined {
    return this.admitted.get(request);
  }

  /** The route's preValidation hook. */
  readonly hook = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const { options } = this;
    if (this.closing) return refuse(reply, UpgradeError.SHUTTING_DOWN, true);
    const origin = request.headers.origin;
    if (options.allowedOrigins.size > 0 && origin !== undefined && !options.allowedOrigins.has(origin)) {
      request.log.info({ origin }, 'upgrade refused: Origin not allowed');
      return refuse(reply, UpgradeError.ORIGIN_NOT_ALLOWED);
    }
    if (this.total >= options.maxConnections) return refuse(reply, UpgradeError.SERVER_BUSY, true);

    // A ticket is spent only by an upgrade, never by a plain GET that would be answered 426.
    const ticket = this.tickets && request.ws ? offeredTicket(request.headers['sec-websocket-protocol']) : undefined;
    const outcome =
      ticket !== undefined ? await redeemTicket(this.tickets!, ticket, request.log) : await authenticateRequest(options.authenticate, request);
    if (!('principal' in outcome)) {
      this.metrics.authFailed(ticket !== undefined ? 'ticket' : 'upgrade');
      if ('failed' in outcome) request.log.warn({ err: outcome.failed }, 'authentication threw; refusing the upgrade');
      return refuse(reply, UpgradeError.UNAUTHORIZED);
    }
    const key = principalKey(outcome.principal);
    if ((this.perPrincipal.get(key) ?? 0) >= options.maxConnectionsPerPrincipal) {
      return refuse(reply, UpgradeError.TOO_MANY_CONNECTIONS);
    }
    this.admitted.set(request, outcome.principal);
    // A plain GET (answered 426) holds no place: only upgrades count, from here rather than from
    // the 101 so that concurrent upgrades cannot overshoot; the TCP socket's end gives it back.
    if (!request.ws) return;
    this.total++;
    this.perPrincipal.set(key, (this.perPrincipal.get(key) ?? 0) + 1);
    const socket = request.raw.socket as Placed;
    socket[PLACE] = { admission: this, key };
    socket.once('close', givePlaceBack);
  };

  release(key: string): void {
    this.total--;
    const left = (this.perPrincipal.get(key) ?? 1) - 1;
    if (left === 0) this.perPrincipal.delete(key);
    else this.perPrincipal.set(key, left);
  }
}

async function refuse(reply: FastifyReply, refusal: Refusal, retry = false): Promise<void> {
  if (retry) reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  await reply.code(refusal.status).send({ code: refusal.code, message: refusal.message });
}
