/**
 * The Fastify plugin: decorates the host with `mesh` (the broadcast channels) and serves the
 * WebSocket route, the ticket route and the REST history routes in an encapsulated child context.
 */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { TransactionSql } from 'postgres';
import { Admission, refuse } from './auth/admission.js';
import type { EventBus } from './bus/bus.js';
import { MemoryBus } from './bus/memory.js';
import { PostgresBus } from './bus/postgres.js';
import type { Registry } from 'prom-client';
import { authenticateRequest, reauthenticatePrincipal } from './auth/authenticate.js';
import { MeshEvents } from './core/events.js';
import type { TaskOutputChannel, TaskUpdatesChannel } from './core/channels.js';
import { MeshHub } from './core/hub.js';
import type { Recheck } from './core/ports.js';
import type { HubSettings } from './core/settings.js';
import { checkTasksTable, sqlOwnerResolver } from './bus/postgres/task-owners.js';
import { adoptWebSocket, ensureWebSocketServer, frameText } from './transport/ws.js';
import { historyRoutes } from './transport/history-routes.js';
import { OwnerDirectory } from './core/owners.js';
import { CloseCode, UpgradeError } from './errors.js';
import { MeshMetrics } from './metrics.js';
import { resolveOptions, type MeshSubscriptionsOptions, type ResolvedOptions } from './options.js';
import { MemoryTicketStore, PostgresTicketStore, selectProtocol, type TicketStore } from './auth/tickets.js';
import { MESH_PROTOCOL, SUBSCRIBE_PATH, TICKETS_PATH, TICKET_PROTOCOL_PREFIX } from './protocol/wire.js';

export interface Mesh {
  /** Every change of a task (`state.task_updates` of the Rust server this replaces). */
  taskUpdates: TaskUpdatesChannel<TransactionSql<any>>;
  /** A task's live output (`state.task_output` of the Rust server). */
  taskOutput: TaskOutputChannel<TransactionSql<any>>;
  /** Open sockets, and how many tasks / owners the subscription index holds entries for. */
  stats(): MeshStats;
  /** Slow-consumer and log-pruning events (see MeshEventMap). */
  events: MeshEvents;
  /** The prom-client registry holding the `mesh_*` metrics (the host's, when it gave `metricsRegistry`). */
  metrics: Registry;
  /**
   * What a readiness check needs from the plugin: `shuttingDown` once `app.close()` began or
   * `drain()` was called; `listening` while the bus hears new events.
   */
  readiness(): { shuttingDown: boolean; listening: boolean };
  /** Refuse new sockets (503) and report not ready, ahead of `app.close()`, so a load balancer drains this instance. */
  drain(): void;
}

declare module 'fastify' {
  interface FastifyInstance {
    mesh: Mesh;
  }
}

export interface MeshStats {
  connections: number;
  /** Tasks with at least one `subscribe`. */
  tasks: number;
  /** Tasks with at least one `subscribeOutput`. */
  outputs: number;
  /** Owners with at least one `subscribeAll` socket. */
  ownersAll: number;
  /** Admin sockets holding `subscribeAll`. */
  adminsAll: number;
}

// The route paths are wire constants, shared with the client (src/protocol/wire.ts).
export { SUBSCRIBE_PATH, TICKETS_PATH };

const ErrorBody = Type.Object({ code: Type.String(), message: Type.String() });

/**
 * The routes' response schemas document the plugin's own answers; they do not shape what is sent.
 * A host's hooks answer on these routes too, in the host's shape (an auth guard's 401 body,
 * @fastify/rate-limit's thrown 429): serialised by the schema of that status, such an answer would
 * become a 500 (`FST_ERR_FAILED_ERROR_SERIALIZATION`, "code" is required). Here a body goes out as
 * it was sent, and a thrown error as Fastify sends one on a route without a schema (Fastify hands
 * the serializer the error, its `statusCode`, `error` and `message` set).
 */
const asIs = () => (payload: unknown) => {
  if (!(payload instanceof Error)) return JSON.stringify(payload);
  const { statusCode, code, error, message } = payload as Error & { statusCode?: number; code?: unknown; error?: string };
  return JSON.stringify({ statusCode, code: code === undefined ? undefined : String(code), error, message });
};

const ROUTE_DESCRIPTION = [
  'Upgrades to a WebSocket that streams task updates and live task output. Authenticate on the',
  'upgrade (the host decides how, in its `authenticate`; browsers use a ticket, below). Then send',
  'JSON text frames: `subscribe`, `unsubscribe`,',
  '`subscribeAll`, `unsubscribeAll`, `subscribeOutput`, `unsubscribeOutput` (the task-scoped ones',
  'with `taskId`). The server answers each with an ack, streams `taskUpdated` and `taskOutput`,',
  'and reports refused frames as `error` with a stable `code`. See PROTOCOL.md.',
].join(' ');

const Ticket = Type.Object({
  ticket: Type.String({ description: 'Single-use; offer it as the subprotocol `mesh.ticket.<ticket>`, next to `mesh.v1`.' }),
  expiresAt: Type.String({ format: 'date-time', description: 'Unused after this, it is refused.' }),
  protocols: Type.Array(Type.String(), { description: 'The subprotocols to pass to `new WebSocket(url, protocols)`.' }),
});

/**
 * What the routes read of the options: the prefix, `limits.maxPayload` (for ws), `authenticate`
 * (for tickets and the history) and whether the history routes are served.
 */
interface RouteSettings {
  prefix: string;
  maxPayload: number;
  authenticate: ResolvedOptions['authenticate'];
  historyRoutes: boolean;
}

interface RouteOptions {
  settings: RouteSettings;
  hub: MeshHub;
  admission: Admission;
  tickets: TicketStore | undefined;
  metrics: MeshMetrics;
}

async function routes(child: FastifyInstance, { settings: options, hub, admission, tickets, metrics }: RouteOptions): Promise<void> {
  await ensureWebSocketServer(child, { maxPayload: options.maxPayload, handleProtocols: selectProtocol });

  child.route({
    method: 'GET',
    url: `${options.prefix}${SUBSCRIBE_PATH}`,
    serializerCompiler: asIs,
    schema: {
      summary: 'Subscribe to task updates and live output (WebSocket)',
      description: ROUTE_DESCRIPTION,
      tags: ['Mesh'],
      response: {
        101: { description: 'Switching Protocols: the WebSocket is open.', type: 'null' },
        401: { description: 'Missing or invalid credentials.', ...ErrorBody },
        403: { description: 'A browser Origin that is not in `allowedOrigins`.', ...ErrorBody },
        426: { description: 'A plain HTTP request: this endpoint needs `Upgrade: websocket`.', ...ErrorBody },
        429: { description: 'This principal already holds `maxConnectionsPerPrincipal` sockets.', ...ErrorBody },
        503: {
          description:
            '`SERVER_BUSY` at `maxConnections`, `SHUTTING_DOWN`, or `UNAVAILABLE` when the credentials could not be checked right now; retry after `Retry-After` seconds.',
          ...ErrorBody,
        },
      },
    },
    preValidation: admission.hook,
    handler: async (_request, reply) => {
      const { status, code, message } = UpgradeError.UPGRADE_REQUIRED;
      return reply.code(status).header('upgrade', 'websocket').send({ code, message });
    },
    wsHandler: (socket, request) => {
      const admitted = admission.handOver(request);
      if (!admitted) {
        // Unreachable while the hook guards the route; closing keeps it fail-closed if that changes.
        socket.close(CloseCode.INTERNAL_ERROR, 'internal error');
        return;
      }
      const adopted = adoptWebSocket(socket, request.raw.socket, child.websocketServer);
      adopted.listen(hub.attach(adopted.socket, admitted.principal, request.log, request, admitted.place));
    },
  });

  if (tickets) {
    child.route({
      method: 'POST',
      url: `${options.prefix}${TICKETS_PATH}`,
      serializerCompiler: asIs,
      schema: {
        summary: 'Mint a single-use ticket that opens the WebSocket from a browser',
        description:
          'Browsers cannot set headers on a WebSocket upgrade. Call this with your usual credentials, then open the socket with `new WebSocket(url, protocols)`: the ticket rides in the `Sec-WebSocket-Protocol` header, never in a URL. See PROTOCOL.md, "Browsers: tickets".',
        tags: ['Mesh'],
        response: {
          201: { description: 'A ticket, valid once until `expiresAt`.', ...Ticket },
          401: { description: 'Missing, unknown or revoked credentials: do not retry with them.', ...ErrorBody },
          503: {
            description:
              '`UNAVAILABLE`: the credentials could not be checked, or the ticket not stored, right now (the database is down); retry after `Retry-After` seconds.',
            ...ErrorBody,
          },
        },
      },
      handler: async (request, reply) => {
        const outcome = await authenticateRequest(options.authenticate, request);
        if (!outcome.ok && outcome.why === 'unavailable') {
          // The host's store is down: no verdict on the credentials, so "retry", never 401.
          request.log.warn({ err: outcome.error }, 'authenticate threw; no ticket (503)');
          return refuse(reply, UpgradeError.UNAVAILABLE);
        }
        if (!outcome.ok) {
          metrics.authFailed('ticket');
          return refuse(reply, UpgradeError.UNAUTHORIZED);
        }
        let minted: { ticket: string; expiresAt: Date };
        try {
          minted = await tickets.mint(outcome.principal);
        } catch (error) {
          request.log.warn({ err: error }, 'the ticket store failed; no ticket (503)');
          return refuse(reply, UpgradeError.UNAVAILABLE);
        }
        const { ticket, expiresAt } = minted;
        return reply
          .code(201)
          .header('cache-control', 'no-store')
          .send({ ticket, expiresAt: expiresAt.toISOString(), protocols: [MESH_PROTOCOL, `${TICKET_PROTOCOL_PREFIX}${ticket}`] });
      },
    });
  }

  if (options.historyRoutes) {
    await historyRoutes(child, {
      prefix: options.prefix,
      authenticate: options.authenticate,
      history: hub.history,
      serializerCompiler: asIs,
    });
  }
}

/** The core's settings, from the plugin's options groups (the connection counts of `limits` are admission's). */
function hubSettings(options: ResolvedOptions): HubSettings {
  const { limits, backpressure, heartbeat, reauth, replay } = options;
  return {
    limits: {
      maxPayload: limits.maxPayload,
      maxSubscriptions: limits.maxSubscriptionsPerConnection,
      maxFramesPerSecond: limits.maxFramesPerSecond,
      frameBurst: limits.frameBurst,
      floodCloseAfterMs: limits.floodCloseAfterMs,
    },
    backpressure,
    heartbeat,
    reauth,
    replay: { maxEvents: replay.maxEvents, concurrency: replay.concurrency },
    settlesOwners: options.bus !== 'postgres' || options.resolveOwners !== undefined,
    transactions: options.bus === 'postgres',
  };
}

const meshSubscriptions: FastifyPluginAsync<MeshSubscriptionsOptions> = async (app, rawOptions) => {
  const options = resolveOptions(rawOptions);
  const resolver = options.resolveOwners ?? sqlOwnerResolver(options.sql!, options.tasks);
  const owners = new OwnerDirectory(resolver, options.owners.lookupTimeoutMs);
  const events = new MeshEvents(app.log);
  // The gauges read the hub at scrape time, by when it exists.
  const metrics: MeshMetrics = new MeshMetrics(
    options.metricsRegistry,
    {
      connections: (): number => hub.connections.size,
      subscriptions: () => hub.subscriptionCounts(),
      heldBackSeconds: () => hub.heldBackSeconds(),
    },
    events,
  );
  const bus: EventBus =
    options.bus === 'postgres'
      ? new PostgresBus(
          options.sql!,
          {
            ...options.postgres,
            directSql: options.directSql,
            // The log's SQL settles owners from the tasks table, unless they come from `resolveOwners`.
            tasks: options.resolveOwners === undefined ? options.tasks : undefined,
            tickets: options.tickets.enabled,
            onDropped: (reason, cursor, error) => hub.dropped(reason, cursor, error),
            onPruned: (rows) => events.emit('pruned', { rows }),
            onHeldBack: () => events.emit('heldBack'),
            onListenerRestarted: () => events.emit('listenerRestarted'),
            onRead: (lag, caughtUp) => metrics.busRead(lag, caughtUp),
          },
          app.log,
        )
      : new MemoryBus(options.replay.historySize);
  const { authenticate, reauthenticate } = options;
  const recheck: Recheck = reauthenticate
    ? { by: 'principal', check: (principal) => reauthenticatePrincipal(reauthenticate, principal, app.log) }
    : { by: 'request', check: (request) => authenticateRequest(authenticate, request as FastifyRequest) };
  const hub: MeshHub = new MeshHub({ bus, owners, events, metrics, log: app.log, frameText, recheck }, hubSettings(options));
  const tickets: TicketStore | undefined = !options.tickets.enabled
    ? undefined
    : options.bus === 'postgres'
      ? new PostgresTicketStore(options.sql!, { ...options.tickets, schema: options.postgres.schema })
      : new MemoryTicketStore(options.tickets);
  const admission = new Admission(
    { limits: options.limits, allowedOrigins: options.allowedOrigins, authenticate, reauthenticate },
    metrics,
    tickets,
  );

  app.decorate('mesh', {
    taskUpdates: hub.channels.taskUpdates,
    taskOutput: hub.channels.taskOutput,
    stats: () => hub.stats(),
    events: hub.events,
    metrics: options.metricsRegistry,
    readiness: () => ({ shuttingDown: admission.closing, listening: hub.listening() }),
    drain: () => {
      admission.closing = true;
    },
  } satisfies Mesh);

  // On the host, so that it also runs when the host registered @fastify/websocket itself.
  app.addHook('preClose', async () => {
    admission.closing = true;
    await hub.shutdown(options.shutdown.timeoutMs);
    await hub.stopBus();
  });
  app.addHook('onReady', async () => {
    // A tasks table that does not match the options fails the start, not every subscribe after it.
    if (options.resolveOwners === undefined) {
      await checkTasksTable(options.sql!, options.tasks, {
        timeoutMs: options.owners.lookupTimeoutMs,
        onUnreachable: (error) =>
          app.log.warn(
            { err: error },
            'the tasks table could not be checked: the database did not answer (owner lookups answer UNAVAILABLE meanwhile)',
          ),
      });
    }
    await hub.start();
  });
  // A host's registry outlives this app (tests, restarts in-process): our metrics leave with it.
  app.addHook('onClose', async () => metrics.unregister());

  // Not spread: `prefix` is a reserved register option and would prefix the route twice.
  await app.register(routes, {
    settings: { prefix: options.prefix, maxPayload: options.limits.maxPayload, authenticate, historyRoutes: options.historyRoutes },
    hub,
    admission,
    tickets,
    metrics,
  });
};

export default fp(meshSubscriptions, { name: 'mesh-subscriptions', fastify: '5.x' });
