/**
 * The plugin's one options type, its documented defaults, and the check that rejects unusable
 * options at registration rather than at the first connection.
 */
import type { FastifyRequest } from 'fastify';
import type { Sql } from 'postgres';
import { Registry } from 'prom-client';
import { MeshOptionsError } from './errors.js';

/** Who is on the other end of a socket, as the host's `authenticate` says. */
export interface Principal {
  /** The owner whose tasks this principal may see; `null` for a principal that owns nothing. */
  ownerId: string | null;
  /** Admins see every task, including tasks without an owner. */
  admin: boolean;
  /**
   * Who this is, for the per-principal connection limit and for logs. Default: the owner id, or
   * `admin` / `nobody`. Never put a secret here.
   */
  id?: string;
}

/** Maps task ids to their owner (`null`: no owner). Ids that are not tasks are left out. */
export type OwnerResolver = (taskIds: readonly string[]) => Promise<ReadonlyMap<string, string | null>>;

export interface MeshSubscriptionsOptions {
  /**
   * Decides who may open a socket. Runs on the upgrade request, before any 101; `null` answers 401,
   * a throw (its store is down: no verdict) answers 503 with `Retry-After`. Required: there is no
   * anonymous mode.
   */
  authenticate: (request: FastifyRequest) => Promise<Principal | null>;
  /**
   * Checks an open socket's principal again every `reauthIntervalMs`: the same principal (or a
   * changed one) keeps the socket, `null` closes it with 4401, a throw keeps it until the next
   * round. When given, the plugin keeps nothing of the upgrade request (about 1.7 KiB per socket);
   * without it, `authenticate` is run again on the kept upgrade request. A host whose credentials
   * can be presented only once (single-use tickets) must give it. Default: none.
   */
  reauthenticate?: (principal: Principal) => Promise<Principal | null>;
  /** The host's `postgres` client; the plugin reads task owners through it. */
  sql?: Sql<any>;
  /**
   * Where task owners come from when they are not in a `tasks(id, owner_id)` table reachable
   * through `sql`. One of `sql` and `resolveOwners` is required.
   */
  resolveOwners?: OwnerResolver;
  /** Route prefix. Default `/api/v1`, giving `/api/v1/mesh/tasks/subscribe`. */
  prefix?: string;
  /** Table holding `id uuid` and `owner_id uuid null`, used with `sql`. Default `tasks`. */
  tasksTable?: string;
  /**
   * @deprecated Ignored: owners are no longer cached. Who may see an event is decided from the
   * database's answer (settled when the event is logged, looked up on each subscribe), never from
   * a remembered one; an owner change is seen as soon as it commits.
   */
  ownerCacheSize?: number;
  /** @deprecated Ignored, as `ownerCacheSize`. */
  ownerCacheTtlMs?: number;
  /** How long an owner lookup may take before the subscribe fails with UNAVAILABLE. Default 5,000 ms. */
  lookupTimeoutMs?: number;
  /** Largest client frame in bytes; larger closes the socket with 1009. Default 64 KiB. */
  maxPayload?: number;
  /** Token bucket refill per connection, frames per second. Default 100. */
  maxFramesPerSecond?: number;
  /** Token bucket size per connection. Default 200. */
  frameBurst?: number;
  /** A connection rate-limited without a second's pause for this long is closed with 1008. Default 10,000 ms. */
  floodCloseAfterMs?: number;
  /** Subscriptions (task, output, and `subscribeAll` each count one) per connection. Default 1,000. */
  maxSubscriptionsPerConnection?: number;
  /** Open sockets per principal; over it the upgrade gets 429. Default 100. */
  maxConnectionsPerPrincipal?: number;
  /** Open sockets in total; over it the upgrade gets 503 with Retry-After. Default unlimited (`Infinity`). */
  maxConnections?: number;
  /** Browser Origins allowed to open a socket (exact match). Empty: no check. Default empty. */
  allowedOrigins?: readonly string[];
  /** Buffered bytes above which a socket's output is dropped (then `lagged`) and updates conflated. Default 1 MiB. */
  softBufferLimit?: number;
  /** Buffered bytes above which a socket is closed with 4008. Default 8 MiB. */
  hardBufferLimit?: number;
  /** A socket backed up for longer than this is closed with 4008. Default 30,000 ms. */
  slowConsumerTimeoutMs?: number;
  /** Ping interval; a socket that has not answered by the next ping is terminated. Default 30,000 ms. */
  pingIntervalMs?: number;
  /** How often each open socket is authenticated again (`reauthenticate`, else `authenticate`). Default 60,000 ms. */
  reauthIntervalMs?: number;
  /** How long `app.close()` waits for sockets to finish their close handshake. Default 10,000 ms. */
  shutdownTimeoutMs?: number;
  /**
   * Where events are logged and how they reach the sockets. `memory`: this process only, recent
   * events kept in memory for `since`. `postgres`: every instance on the database shares them,
   * kept in the plugin's event log (needs `sql`). Default: `postgres` when `sql` is given, else `memory`.
   */
  bus?: 'memory' | 'postgres';
  /** Memory bus: how many recent events are kept for `since`. Default 10,000. */
  historySize?: number;
  /** Most events one `since` replays; beyond it the client gets `resyncRequired`. Default 10,000. */
  maxReplay?: number;
  /**
   * How many replay pages (of at most 500 events or 256 KiB) are read at once, across all
   * sockets: resumes wait their turn rather than crowd out live delivery. Default 4.
   */
  replayConcurrency?: number;
  /**
   * PostgreSQL bus: how long `publish()` may wait for the log before it rejects with
   * MeshBusUnavailableError. Default 5,000 ms.
   */
  publishTimeoutMs?: number;
  /** PostgreSQL bus: create or upgrade the plugin's tables and functions at start. Default true. */
  migrate?: boolean;
  /** PostgreSQL bus: events older than this are pruned. Default 86,400,000 ms (24 h). */
  retentionMs?: number;
  /** PostgreSQL bus: at most this many events are kept per task (older ones pruned). Default 10,000. */
  retentionPerTask?: number;
  /** PostgreSQL bus: how often the log is pruned (one instance at a time). Default 60,000 ms. */
  pruneIntervalMs?: number;
  /** PostgreSQL bus: the log is read at least this often, whatever the wake-ups. Default 1,000 ms. */
  pollIntervalMs?: number;
  /** PostgreSQL bus: a LISTEN connection that has not heard its own heartbeat for this long is replaced. Default 10,000 ms. */
  listenTimeoutMs?: number;
  /**
   * Browser sign-in: `POST {prefix}/mesh/tickets` (authenticated by `authenticate`) mints a
   * single-use ticket that a browser presents as the WebSocket subprotocol `mesh.ticket.<ticket>`
   * (browsers cannot set headers on an upgrade; this keeps credentials out of URLs). Needs
   * `reauthenticate`, since a ticket cannot be presented again. Default: on when `reauthenticate`
   * is given.
   */
  tickets?: boolean;
  /** How long a ticket may wait for its upgrade. Default 30,000 ms. */
  ticketTtlMs?: number;
  /**
   * A prom-client Registry to put the plugin's metrics (`mesh_*`) in, e.g. the host's own.
   * Default: a registry of the plugin's own, at `app.mesh.metrics`.
   */
  metricsRegistry?: Registry;
}

export interface ResolvedOptions {
  authenticate: MeshSubscriptionsOptions['authenticate'];
  reauthenticate: MeshSubscriptionsOptions['reauthenticate'];
  sql: Sql<any> | undefined;
  resolveOwners: OwnerResolver | undefined;
  prefix: string;
  tasksTable: string;
  lookupTimeoutMs: number;
  maxPayload: number;
  maxFramesPerSecond: number;
  frameBurst: number;
  floodCloseAfterMs: number;
  maxSubscriptionsPerConnection: number;
  maxConnectionsPerPrincipal: number;
  maxConnections: number;
  allowedOrigins: ReadonlySet<string>;
  softBufferLimit: number;
  hardBufferLimit: number;
  slowConsumerTimeoutMs: number;
  pingIntervalMs: number;
  reauthIntervalMs: number;
  shutdownTimeoutMs: number;
  bus: 'memory' | 'postgres';
  historySize: number;
  maxReplay: number;
  replayConcurrency: number;
  publishTimeoutMs: number;
  migrate: boolean;
  retentionMs: number;
  retentionPerTask: number;
  pruneIntervalMs: number;
  pollIntervalMs: number;
  listenTimeoutMs: number;
  tickets: boolean;
  ticketTtlMs: number;
  metricsRegistry: Registry;
}

export const DEFAULTS = {
  prefix: '/api/v1',
  tasksTable: 'tasks',
  lookupTimeoutMs: 5_000,
  maxPayload: 64 * 1024,
  maxFramesPerSecond: 100,
  frameBurst: 200,
  floodCloseAfterMs: 10_000,
  maxSubscriptionsPerConnection: 1_000,
  maxConnectionsPerPrincipal: 100,
  maxConnections: Number.POSITIVE_INFINITY,
  allowedOrigins: [] as readonly string[],
  softBufferLimit: 1024 * 1024,
  hardBufferLimit: 8 * 1024 * 1024,
  slowConsumerTimeoutMs: 30_000,
  pingIntervalMs: 30_000,
  reauthIntervalMs: 60_000,
  shutdownTimeoutMs: 10_000,
  historySize: 10_000,
  maxReplay: 10_000,
  replayConcurrency: 4,
  publishTimeoutMs: 5_000,
  migrate: true,
  retentionMs: 24 * 60 * 60 * 1000,
  retentionPerTask: 10_000,
  pruneIntervalMs: 60_000,
  pollIntervalMs: 1_000,
  listenTimeoutMs: 10_000,
  ticketTtlMs: 30_000,
} as const;

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$/;

function positiveInteger(name: string, value: unknown, fallback: number, allowInfinity = false): number {
  if (value === undefined) return fallback;
  if (allowInfinity && value === Number.POSITIVE_INFINITY) return value;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    const expected = allowInfinity ? 'a positive integer or Infinity' : 'a positive integer';
    throw new MeshOptionsError(`option "${name}" must be ${expected}, got ${JSON.stringify(value)}`);
  }
  return value;
}

function origins(value: unknown): ReadonlySet<string> {
  if (value === undefined) return new Set();
  if (!Array.isArray(value) || !value.every((o) => typeof o === 'string' && /^https?:\/\/[^/]+$/.test(o))) {
    throw new MeshOptionsError('option "allowedOrigins" must be an array of origins like "https://app.example.com"');
  }
  return new Set(value as string[]);
}

export function resolveOptions(raw: unknown): ResolvedOptions {
  if (typeof raw !== 'object' || raw === null) throw new MeshOptionsError('options must be an object');
  const o = raw as Partial<MeshSubscriptionsOptions>;
  if (typeof o.authenticate !== 'function') {
    throw new MeshOptionsError('option "authenticate" (request) => Promise<Principal | null> is required');
  }
  if (o.reauthenticate !== undefined && typeof o.reauthenticate !== 'function') {
    throw new MeshOptionsError('option "reauthenticate" must be a function (principal) => Promise<Principal | null>');
  }
  if (o.sql !== undefined && typeof o.sql !== 'function') {
    throw new MeshOptionsError('option "sql" must be a client from the `postgres` package');
  }
  if (o.resolveOwners !== undefined && typeof o.resolveOwners !== 'function') {
    throw new MeshOptionsError('option "resolveOwners" must be a function');
  }
  if (o.sql === undefined && o.resolveOwners === undefined) {
    throw new MeshOptionsError('one of "sql" or "resolveOwners" is required to check task ownership');
  }
  const prefix = o.prefix ?? DEFAULTS.prefix;
  if (typeof prefix !== 'string' || (prefix !== '' && (!prefix.startsWith('/') || prefix.endsWith('/')))) {
    throw new MeshOptionsError('option "prefix" must be "" or a path like "/api/v1" (leading slash, no trailing slash)');
  }
  const tasksTable = o.tasksTable ?? DEFAULTS.tasksTable;
  if (typeof tasksTable !== 'string' || !IDENTIFIER.test(tasksTable)) {
    throw new MeshOptionsError('option "tasksTable" must be a plain SQL identifier such as "tasks" or "app.tasks"');
  }
  const bus = o.bus ?? (o.sql !== undefined ? 'postgres' : 'memory');
  if (bus !== 'memory' && bus !== 'postgres') throw new MeshOptionsError('option "bus" must be "memory" or "postgres"');
  if (bus === 'postgres' && o.sql === undefined) throw new MeshOptionsError('option bus: "postgres" needs "sql"');
  if (o.migrate !== undefined && typeof o.migrate !== 'boolean') throw new MeshOptionsError('option "migrate" must be a boolean');
  // Not instanceof: a host may load another copy of prom-client.
  const registry = o.metricsRegistry as Partial<Registry> | undefined;
  if (registry !== undefined && (typeof registry.registerMetric !== 'function' || typeof registry.metrics !== 'function')) {
    throw new MeshOptionsError('option "metricsRegistry" must be a prom-client Registry');
  }
  if (o.tickets !== undefined && typeof o.tickets !== 'boolean') throw new MeshOptionsError('option "tickets" must be a boolean');
  const tickets = o.tickets ?? o.reauthenticate !== undefined;
  if (tickets && o.reauthenticate === undefined) {
    throw new MeshOptionsError('option "tickets" needs "reauthenticate": a socket opened with a single-use ticket cannot present it again');
  }
  const softBufferLimit = positiveInteger('softBufferLimit', o.softBufferLimit, DEFAULTS.softBufferLimit);
  const hardBufferLimit = positiveInteger('hardBufferLimit', o.hardBufferLimit, DEFAULTS.hardBufferLimit);
  if (hardBufferLimit <= softBufferLimit) {
    throw new MeshOptionsError('option "hardBufferLimit" must be larger than "softBufferLimit"');
  }
  // Deprecated and ignored, but a malformed one is still a mistake worth saying.
  positiveInteger('ownerCacheSize', o.ownerCacheSize, 1);
  positiveInteger('ownerCacheTtlMs', o.ownerCacheTtlMs, 1);
  return {
    authenticate: o.authenticate,
    reauthenticate: o.reauthenticate,
    sql: o.sql,
    resolveOwners: o.resolveOwners,
    prefix,
    tasksTable,
    lookupTimeoutMs: positiveInteger('lookupTimeoutMs', o.lookupTimeoutMs, DEFAULTS.lookupTimeoutMs),
    maxPayload: positiveInteger('maxPayload', o.maxPayload, DEFAULTS.maxPayload),
    maxFramesPerSecond: positiveInteger('maxFramesPerSecond', o.maxFramesPerSecond, DEFAULTS.maxFramesPerSecond),
    frameBurst: positiveInteger('frameBurst', o.frameBurst, DEFAULTS.frameBurst),
    floodCloseAfterMs: positiveInteger('floodCloseAfterMs', o.floodCloseAfterMs, DEFAULTS.floodCloseAfterMs),
    maxSubscriptionsPerConnection: positiveInteger(
      'maxSubscriptionsPerConnection',
      o.maxSubscriptionsPerConnection,
      DEFAULTS.maxSubscriptionsPerConnection,
    ),
    maxConnectionsPerPrincipal: positiveInteger(
      'maxConnectionsPerPrincipal',
      o.maxConnectionsPerPrincipal,
      DEFAULTS.maxConnectionsPerPrincipal,
      true,
    ),
    maxConnections: positiveInteger('maxConnections', o.maxConnections, DEFAULTS.maxConnections, true),
    allowedOrigins: origins(o.allowedOrigins),
    softBufferLimit,
    hardBufferLimit,
    slowConsumerTimeoutMs: positiveInteger('slowConsumerTimeoutMs', o.slowConsumerTimeoutMs, DEFAULTS.slowConsumerTimeoutMs),
    pingIntervalMs: positiveInteger('pingIntervalMs', o.pingIntervalMs, DEFAULTS.pingIntervalMs),
    reauthIntervalMs: positiveInteger('reauthIntervalMs', o.reauthIntervalMs, DEFAULTS.reauthIntervalMs),
    shutdownTimeoutMs: positiveInteger('shutdownTimeoutMs', o.shutdownTimeoutMs, DEFAULTS.shutdownTimeoutMs),
    bus,
    historySize: positiveInteger('historySize', o.historySize, DEFAULTS.historySize),
    maxReplay: positiveInteger('maxReplay', o.maxReplay, DEFAULTS.maxReplay),
    replayConcurrency: positiveInteger('replayConcurrency', o.replayConcurrency, DEFAULTS.replayConcurrency),
    publishTimeoutMs: positiveInteger('publishTimeoutMs', o.publishTimeoutMs, DEFAULTS.publishTimeoutMs),
    migrate: o.migrate ?? DEFAULTS.migrate,
    retentionMs: positiveInteger('retentionMs', o.retentionMs, DEFAULTS.retentionMs),
    retentionPerTask: positiveInteger('retentionPerTask', o.retentionPerTask, DEFAULTS.retentionPerTask),
    pruneIntervalMs: positiveInteger('pruneIntervalMs', o.pruneIntervalMs, DEFAULTS.pruneIntervalMs),
    pollIntervalMs: positiveInteger('pollIntervalMs', o.pollIntervalMs, DEFAULTS.pollIntervalMs),
    listenTimeoutMs: positiveInteger('listenTimeoutMs', o.listenTimeoutMs, DEFAULTS.listenTimeoutMs),
    tickets,
    ticketTtlMs: positiveInteger('ticketTtlMs', o.ticketTtlMs, DEFAULTS.ticketTtlMs),
    metricsRegistry: o.metricsRegistry ?? new Registry(),
  };
}
