/**
 * Single-use tickets, the browser's way in: browsers cannot set headers on a WebSocket upgrade,
 * and a key in the URL ends up in proxies' and servers' access logs. An authenticated HTTP call
 * mints a ticket; the browser offers it as a WebSocket subprotocol, which no access log records,
 * within `tickets.ttlMs`, once. Only a ticket's SHA-256 is stored, so whoever reads the store (a
 * database dump) cannot sign in with what it holds. With the PostgreSQL bus the store is a table,
 * so a ticket minted on one instance opens a socket on any other.
 */
import { createHash, randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Sql } from 'postgres';
import type { Principal, TicketsOptions } from '../options.js';

import { MESH_PROTOCOL, TICKET_PROTOCOL_PREFIX } from '../protocol/wire.js';
import { qualified } from '../bus/postgres/schema.js';

// The subprotocol names are wire constants, shared with the client (src/protocol/wire.ts).
export { MESH_PROTOCOL, TICKET_PROTOCOL_PREFIX };

const TICKET = /^[A-Za-z0-9_-]{43}$/;

export interface TicketStore {
  /** A new ticket for `principal`, valid once until `expiresAt`. */
  mint(principal: Principal): Promise<{ ticket: string; expiresAt: Date }>;
  /** The principal a ticket was minted for, once; `null` when unknown, used or expired. */
  redeem(ticket: string): Promise<unknown>;
}

const digest = (ticket: string) => createHash('sha256').update(ticket).digest();
const newTicket = () => randomBytes(32).toString('base64url');

/** The ticket offered in a `Sec-WebSocket-Protocol` header, if any. */
export function offeredTicket(header: string | undefined): string | undefined {
  if (!header) return undefined;
  for (const protocol of header.split(',')) {
    const trimmed = protocol.trim();
    if (trimmed.startsWith(TICKET_PROTOCOL_PREFIX)) return trimmed.slice(TICKET_PROTOCOL_PREFIX.length);
  }
  return undefined;
}

/** ws's `handleProtocols`: select `mesh.v1` when offered, so that a browser accepts the upgrade. */
export function selectProtocol(protocols: Set<string>): string | false {
  return protocols.has(MESH_PROTOCOL) ? MESH_PROTOCOL : false;
}

/** What a ticket store is built with: the options group `tickets` (whether it exists at all is the plugin's). */
export type TicketStoreOptions = Pick<TicketsOptions, 'ttlMs'>;

/** One process: tickets in a bounded map that forgets them at expiry. */
export class MemoryTicketStore implements TicketStore {
  private readonly tickets: LRUCache<string, Principal>;
  private readonly ttlMs: number;

  constructor({ ttlMs }: TicketStoreOptions) {
    this.ttlMs = ttlMs;
    // Bounded so that a caller minting in a loop cannot grow it without end; the oldest go first.
    this.tickets = new LRUCache({ max: 100_000, ttl: ttlMs, ttlAutopurge: false });
  }

  async mint(principal: Principal) {
    const ticket = newTicket();
    this.tickets.set(digest(ticket).toString('hex'), { ...principal });
    return { ticket, expiresAt: new Date(Date.now() + this.ttlMs) };
  }

  async redeem(ticket: string) {
    if (!TICKET.test(ticket)) return null;
    const key = digest(ticket).toString('hex');
    const principal = this.tickets.get(key);
    this.tickets.delete(key);
    return principal ?? null;
  }
}

/**
 * Every instance on the database: tickets in `mesh_ws_tickets`, in the schema of the event log
 * (created by the migration when tickets are on).
 */
export class PostgresTicketStore implements TicketStore {
  private readonly ttlMs: number;
  /** `"schema"."mesh_ws_tickets"`. */
  private readonly table: string;

  constructor(
    private readonly sql: Sql<any>,
    { ttlMs, schema }: TicketStoreOptions & { schema: string },
  ) {
    this.ttlMs = ttlMs;
    this.table = qualified(schema, 'mesh_ws_tickets');
  }

  async mint(principal: Principal) {
    const ticket = newTicket();
    // Expired tickets go as new ones come: the table stays as small as the tickets in flight.
    const [row] = await this.sql<{ expires_at: Date }[]>`
      WITH expired AS (DELETE FROM ${this.sql.unsafe(this.table)} WHERE expires_at < now())
      INSERT INTO ${this.sql.unsafe(this.table)} (digest, principal, expires_at)
      VALUES (${digest(ticket)}, ${this.sql.json({ ...principal } as never)}, now() + ${this.ttlMs} * interval '1 millisecond')
      RETURNING expires_at`;
    return { ticket, expiresAt: row!.expires_at };
  }

  async redeem(ticket: string) {
    if (!TICKET.test(ticket)) return null;
    const [row] = await this.sql<{ principal: unknown }[]>`
      DELETE FROM ${this.sql.unsafe(this.table)} WHERE digest = ${digest(ticket)} AND expires_at >= now() RETURNING principal`;
    return row?.principal ?? null;
  }
}
