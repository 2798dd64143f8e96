/**
 * Who may open a socket, decided on the upgrade request before any 101: not while shutting down,
 * only from an allowed Origin, only within the connection limits, only when authenticated.
 */
import type { Socket } from 'node:net';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { authenticateRequest, principalKey, redeemTicket, type AuthResult } from './authenticate.js';
import { RETRY_AFTER_SECONDS, UpgradeError } from '../errors.js';
import type { Place } from '../core/connection.js';
import type { LimitsOptions, Principal, ResolvedOptions } from '../options.js';
import type { MeshMetrics } from '../metrics.js';
import { offeredTicket, type TicketStore } from './tickets.js';

export type Refusal = { readonly status: number; readonly code: string; readonly message: string };

/**
 * The place an upgrade holds under the limits, from the total check (before any await) until its
 * socket (once upgraded, its WebSocket) closes or it is refused, whichever comes first: given back once. `key` is the
 * principal's, once authentication named it and the per-principal limit counted it.
 */
class AdmissionPlace implements Place {
  key: string | undefined = undefined;
  /**
   * Who authenticated, once the upgrade is admitted: what the socket handler opens the connection
   * as. Kept here, on the upgrade's own socket, rather than in a WeakMap by request: an insertion
   * into a WeakMap per upgrade, and its ephemerons at every GC, were a reconnect storm's cost.
   */
  principal: Principal | undefined = undefined;
  /** Whether it still counts (until the socket ends, or the upgrade is refused). */
  taken = true;

  constructor(readonly admission: Admission) {}

  /** Gives the place back: its socket is gone. Idempotent. */
  release(): void {
    this.admission.vacate(this);
  }
}

// The place is found on the socket by one shared listener (no closure per socket).
const PLACE = Symbol('mesh admission place');
type Placed = Socket & { [PLACE]?: AdmissionPlace };

function givePlaceBack(this: Placed): void {
  this[PLACE]?.release();
}

/**
 * What admission is built with: the connection counts of the options group `limits`, the allowed
 * Origins, and the host's checks.
 */
export interface AdmissionOptions extends Pick<ResolvedOptions, 'allowedOrigins' | 'authenticate' | 'reauthenticate'> {
  limits: Pick<LimitsOptions, 'maxConnections' | 'maxConnectionsPerPrincipal'>;
}

export class Admission {
  closing = false;
  /** Places taken: admitted sockets and upgrades still being authenticated. */
  private total = 0;
  private readonly perPrincipal = new Map<string, number>();

  constructor(
    private readonly options: AdmissionOptions,
    private readonly metrics: MeshMetrics,
    /** Where browser tickets are redeemed; undefined when tickets are off. */
    private readonly tickets?: TicketStore,
  ) {}

  /**
   * An admitted upgrade, now a WebSocket: its principal, and its place, which the caller gives
   * back when that WebSocket is closed (undefined: the request was not admitted). From here the
   * place no longer listens to its socket's 'close': a listener array per socket, for as long
   * as it is open, where the WebSocket's own 'close' serves.
   */
  handOver(request: FastifyRequest): { principal: Principal; place: Place } | undefined {
    const socket = request.raw.socket as Placed | undefined;
    const place = socket?.[PLACE];
    if (place?.principal === undefined) return undefined;
    socket!.removeListener('close', givePlaceBack);
    return { principal: place.principal, place };
  }

  /** The route's preValidation hook. */
  readonly hook = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const { options } = this;
    if (this.closing) return refuse(reply, UpgradeError.SHUTTING_DOWN);
    const origin = request.headers.origin;
    if (options.allowedOrigins.size > 0 && origin !== undefined && !options.allowedOrigins.has(origin)) {
      request.log.info({ origin }, 'upgrade refused: Origin not allowed');
      return refuse(reply, UpgradeError.ORIGIN_NOT_ALLOWED);
    }
    if (this.total >= options.limits.maxConnections) return refuse(reply, UpgradeError.SERVER_BUSY);
    // Taken here, in the same turn as the check, so that concurrent upgrades waiting on
    // `authenticate` cannot all pass it. A plain GET (answered 426) takes none.
    const socket = request.raw.socket as Placed;
    const place = request.ws ? this.reserve(socket) : undefined;

    let outcome: AuthResult;
    let ticket: string | undefined;
    try {
      // A ticket is spent only by an upgrade, never by a plain GET that would be answered 426.
      ticket = this.tickets && request.ws ? offeredTicket(request.headers['sec-websocket-protocol']) : undefined;
      outcome =
        ticket !== undefined
          ? await redeemTicket(this.tickets!, ticket, options.reauthenticate, request.log)
          : await authenticateRequest(options.authenticate, request);
    } catch (error) {
      if (place) this.giveBack(socket, place);
      throw error;
    }
    if (place && !place.taken) {
      // The client went away while it was authenticated: its place is back already, and nobody is
      // left to read an answer.
      return refuse(reply, UpgradeError.UNAVAILABLE);
    }
    if (!outcome.ok && outcome.why === 'unavailable') {
      // Not a verdict on the credentials (the host's store, or the ticket store, is down): retry.
      if (place) this.giveBack(socket, place);
      request.log.warn({ err: outcome.error }, 'credentials could not be checked; refusing the upgrade with 503');
      return refuse(reply, UpgradeError.UNAVAILABLE);
    }
    if (!outcome.ok) {
      if (place) this.giveBack(socket, place);
      this.metrics.authFailed(ticket !== undefined ? 'ticket' : 'upgrade');
      return refuse(reply, UpgradeError.UNAUTHORIZED);
    }
    // From this check to the count below, no await: the per-principal limit cannot be overshot.
    const key = principalKey(outcome.principal);
    if ((this.perPrincipal.get(key) ?? 0) >= options.limits.maxConnectionsPerPrincipal) {
      if (place) this.giveBack(socket, place);
      return refuse(reply, UpgradeError.TOO_MANY_CONNECTIONS);
    }
    // A plain GET (answered 426) opens nothing: it needs no principal kept.
    if (!place) return;
    this.perPrincipal.set(key, (this.perPrincipal.get(key) ?? 0) + 1);
    place.key = key;
    place.principal = outcome.principal;
  };

  /** Takes a place under `limits.maxConnections` for an upgrade; its TCP socket's end gives it back. */
  private reserve(socket: Placed): AdmissionPlace {
    const place = new AdmissionPlace(this);
    this.total++;
    socket[PLACE] = place;
    // `on`, not `once`: giving back is idempotent, and `once` wraps the listener in two objects per socket.
    socket.on('close', givePlaceBack);
    return place;
  }

  /** A refused upgrade's place, given back now rather than when its socket closes. */
  private giveBack(socket: Placed, place: AdmissionPlace): void {
    this.vacate(place);
    socket.removeListener('close', givePlaceBack);
    if (socket[PLACE] === place) delete socket[PLACE];
  }

  /** The place no longer counts: its socket ended, or its upgrade was refused. */
  vacate(place: AdmissionPlace): void {
    if (!place.taken) return;
    place.taken = false;
    this.total--;
    if (place.key === undefined) return;
    const left = (this.perPrincipal.get(place.key) ?? 1) - 1;
    if (left === 0) this.perPrincipal.delete(place.key);
    else this.perPrincipal.set(place.key, left);
  }
}

/** Answers with `{code, message}`; every 503 says when to retry. */
export async function refuse(reply: FastifyReply, refusal: Refusal): Promise<void> {
  if (refusal.status === 503) reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  await reply.code(refusal.status).send({ code: refusal.code, message: refusal.message });
}
