/**
 * The servers the benchmark compares, each in its own process (`bench/server.ts <peer>`), each
 * publishing the same events when the load generator asks:
 * - mesh: this plugin, as a host mounts it;
 * - seed: a straight port of the algorithm of the Rust server this replaces (the design's seed program: every socket sees every event, filters it,
 *   encodes its own JSON; one owner query per subscribe);
 * - socketio: Socket.IO 4, WebSocket transport only, a room per task (one owner query per subscribe);
 * - ceiling: raw ws, the least work to deliver the same frames (mesh's fields and a cursor of the
 *   same form): each event framed once; each tick's updates written to every socket in one write;
 *   for W2's task subscriptions, a Map from task to socket and one write per event; output (W3)
 *   only to the sockets that follow its task, each task's frames of a tick joined once.
 * - fastify: the ceiling's job as a Fastify route (@fastify/websocket, an async hook that reads a
 *   header): the framework's own cost, before any of mesh's work.
 * With `bus: 'postgres'` (W6, two processes on one database) mesh uses its PostgreSQL bus and
 * Socket.IO its PostgreSQL adapter; the seed and the ceiling have no way to span processes.
 */
import { EventEmitter } from 'node:events';
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import Fastify from 'fastify';
import fastifyWebsocket from '@fastify/websocket';
import { createAdapter } from '@socket.io/postgres-adapter';
import pg from 'pg';
import type { Sql } from 'postgres';
import { Server as SocketIoServer } from 'socket.io';
import { WebSocketServer, type WebSocket } from 'ws';
import type meshPlugin from '../src/index.js';
import { frameText } from '../src/transport/websocket-frame.js';

// The plugin as a host runs it: tsc's build in dist/ (`npm run bench` builds it first). tsx's
// transform of src/ names every function it creates with a call of its own, a cost no host pays.
const built = '../dist/index.js';
const { default: meshSubscriptions } = (await import(built)) as { default: typeof meshPlugin };

export interface BenchTask {
  taskId: string;
  ownerId: string;
}

export interface Peer {
  /** Starts listening; returns the port. */
  listen(port: number): Promise<void>;
  publishUpdate(task: BenchTask, version: number, stamp: string): void;
  publishOutput(task: BenchTask, content: string): void;
  /** Open WebSocket connections, where the peer counts them (mesh): how a cluster's workers share the clients. */
  connections?(): number;
  close(): Promise<void>;
}

/** The generator's control calls: method and URL in, status and body out (later, when a cluster's workers are asked). */
export type Control = (method: string, url: string, body: string) => ControlAnswer | Promise<ControlAnswer>;
export interface ControlAnswer {
  status: number;
  body: string;
}

/** How events travel between server processes: not at all, or through PostgreSQL. */
export type BenchBus = 'memory' | 'postgres';

/** Control over a plain Node HTTP server. */
function controlListener(control: Control) {
  return (request: IncomingMessage, response: ServerResponse) => {
    let body = '';
    request.on('data', (chunk: Buffer) => (body += chunk.toString()));
    request.on('end', async () => {
      const answer = await control(request.method ?? 'GET', request.url ?? '/', body);
      response.statusCode = answer.status;
      response.end(answer.body);
    });
  };
}

const update = (task: BenchTask, version: number, stamp: string) => ({
  taskId: task.taskId,
  version,
  status: 'running',
  updatedFields: ['status'],
  updatedBy: stamp,
});

const output = (task: BenchTask, content: string) => ({ taskId: task.taskId, messageType: 'assistant', content, isPartial: false });

/** Bench-only authentication: the generator names the principal in a header. */
const BENCH_PRINCIPAL = 'x-bench-owner';

export async function meshPeer(sql: Sql<any>, control: Control, bus: BenchBus): Promise<Peer> {
  const app = Fastify({ logger: false });
  // BENCH_OWNERS=memory (a diagnosis, not a mode a host should run): owners from a Map read at
  // start instead of a query per batch, to size what the lookups cost a storm on two cores.
  const inMemory =
    process.env.BENCH_OWNERS === 'memory'
      ? new Map((await sql<{ id: string; owner_id: string }[]>`SELECT id::text, owner_id::text FROM tasks`).map((t) => [t.id, t.owner_id]))
      : undefined;
  await app.register(meshSubscriptions, {
    sql,
    ...(inMemory && {
      resolveOwners: async (ids: readonly string[]) =>
        new Map(ids.flatMap((id) => (inMemory.has(id) ? [[id, inMemory.get(id)!] as const] : []))),
    }),
    authenticate: async (request) => {
      const owner = request.headers[BENCH_PRINCIPAL];
      return owner === 'admin' ? { ownerId: null, admin: true } : { ownerId: String(owner), admin: false };
    },
    // As the example host does: re-checks need no kept upgrade request.
    reauthenticate: async (principal) => principal,
    maxConnectionsPerPrincipal: Number.POSITIVE_INFINITY,
    // The fan-out workloads measure one process; W6 measures the PostgreSQL bus between two, and
    // the mesh-wN variants N cluster workers on it.
    bus,
    // R1 (replay) keeps more than the default 10,000 events per task for the length of its run,
    // W2 a memory ring that holds every event its resumed subscribes replay (bench/run.ts).
    ...(JSON.parse(process.env.BENCH_MESH_OPTIONS ?? '{}') as object),
  });
  // A liveness answer as cheap as a host's: R1 times it while the server replays.
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.all('/bench/*', async (request, reply) => {
    const answer = await control(request.method, request.url, typeof request.body === 'string' ? request.body : '');
    return reply.code(answer.status).send(answer.body);
  });
  return {
    listen: async (port) => void (await app.listen({ host: '127.0.0.1', port })),
    publishUpdate: (task, version, stamp) => void app.mesh.taskUpdates.publish({ ...update(task, version, stamp), ownerId: task.ownerId }),
    publishOutput: (task, content) => void app.mesh.taskOutput.publish({ ...output(task, content), ownerId: task.ownerId }),
    connections: () => app.mesh.stats().connections,
    close: () => app.close(),
  };
}

function plainServer(control: Control, onUpgrade: (request: IncomingMessage, socket: Socket, head: Buffer) => void): HttpServer {
  const server = createServer(controlListener(control));
  server.on('upgrade', onUpgrade);
  return server;
}

const listenOn = (server: HttpServer, port: number) => new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));

/** The Rust handler's loop, in Node: per-connection state, every event through every connection. */
export async function seedPeer(sql: Sql<any>, control: Control): Promise<Peer> {
  const bus = new EventEmitter();
  bus.setMaxListeners(0);
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const lookup = async (taskId: string) =>
    (await sql`SELECT owner_id::text AS owner_id FROM tasks WHERE id = ${taskId}`)[0]?.owner_id ?? null;
  wss.on('connection', (ws: WebSocket) => {
    const tasks = new Map<string, string | null>();
    const outputs = new Map<string, string | null>();
    let all = false;
    const send = (message: object) => ws.send(JSON.stringify(message));
    const onUpdate = (n: ReturnType<typeof update> & { ownerId: string }) => {
      const sub = tasks.get(n.taskId);
      const forward = all || (sub !== undefined && (sub === null || sub === n.ownerId));
      if (forward)
        send({
          type: 'taskUpdated',
          taskId: n.taskId,
          version: n.version,
          status: n.status,
          updatedFields: n.updatedFields,
          updatedBy: n.updatedBy,
        });
    };
    const onOutput = (n: ReturnType<typeof output> & { ownerId: string }) => {
      const sub = outputs.get(n.taskId);
      if (sub !== undefined && (sub === null || sub === n.ownerId)) send({ type: 'taskOutput', ...n, ownerId: undefined });
    };
    bus.on('update', onUpdate);
    bus.on('output', onOutput);
    ws.on('close', () => {
      bus.off('update', onUpdate);
      bus.off('output', onOutput);
    });
    ws.on('message', async (data) => {
      let message: { type?: string; taskId?: string };
      try {
        message = JSON.parse(data.toString());
      } catch (error) {
        return send({ type: 'error', code: 'PARSE_ERROR', message: String(error) });
      }
      if (message.type === 'subscribe' && message.taskId) {
        tasks.set(message.taskId, await lookup(message.taskId));
        send({ type: 'subscribed', taskId: message.taskId });
      } else if (message.type === 'subscribeOutput' && message.taskId) {
        outputs.set(message.taskId, await lookup(message.taskId));
        send({ type: 'outputSubscribed', taskId: message.taskId });
      } else if (message.type === 'subscribeAll') {
        all = true;
        send({ type: 'subscribedAll' });
      }
    });
  });
  const server = plainServer(control, (request, socket, head) =>
    wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws)),
  );
  return {
    listen: (port) => listenOn(server, port),
    publishUpdate: (task, version, stamp) => bus.emit('update', { ...update(task, version, stamp), ownerId: task.ownerId }),
    publishOutput: (task, content) => bus.emit('output', { ...output(task, content), ownerId: task.ownerId }),
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

export async function socketIoPeer(sql: Sql<any>, control: Control, bus: BenchBus): Promise<Peer> {
  const server = createServer(controlListener(control));
  const io = new SocketIoServer(server, { transports: ['websocket'], serveClient: false });
  let pool: pg.Pool | undefined;
  if (bus === 'postgres') {
    // The adapter's own set-up: a pg pool, and its table for payloads over NOTIFY's 8000 bytes.
    pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
    await pool.query(
      'CREATE TABLE IF NOT EXISTS socket_io_attachments (id bigserial UNIQUE, created_at timestamptz DEFAULT now(), payload bytea)',
    );
    io.adapter(createAdapter(pool));
  }
  const lookup = async (taskId: string) =>
    (await sql`SELECT owner_id::text AS owner_id FROM tasks WHERE id = ${taskId}`)[0]?.owner_id ?? null;
  io.on('connection', (socket) => {
    socket.on('subscribe', async ({ taskId }: { taskId: string }) => {
      await lookup(taskId);
      await socket.join(taskId);
      socket.emit('subscribed', { taskId });
    });
    socket.on('subscribeOutput', async ({ taskId }: { taskId: string }) => {
      await lookup(taskId);
      await socket.join(`output:${taskId}`);
      socket.emit('outputSubscribed', { taskId });
    });
    socket.on('subscribeAll', async () => {
      // Owner-scoped as mesh's: a principal named on the upgrade (W7) joins its owner's room; none (W1, W5) sees all.
      const owner = socket.handshake.headers[BENCH_PRINCIPAL];
      await socket.join(typeof owner === 'string' && owner !== 'admin' ? `all:${owner}` : 'all');
      socket.emit('subscribedAll');
    });
  });
  return {
    listen: (port) => listenOn(server, port),
    publishUpdate: (task, version, stamp) =>
      void io
        .to(task.taskId)
        .to('all')
        .to(`all:${task.ownerId}`)
        .emit('taskUpdated', update(task, version, stamp)),
    publishOutput: (task, content) => void io.to(`output:${task.taskId}`).emit('taskOutput', output(task, content)),
    close: async () => {
      await new Promise<void>((resolve) => void io.close(() => resolve()));
      await pool?.end();
    },
  };
}

/**
 * The ceiling's job on accepted WebSockets, whoever upgraded them: a Map from task to socket and
 * one write per targeted event (W2), each tick's broadcast joined once (W1), output to its task's
 * followers, each task's frames of a tick joined once (W3).
 */
function ceilingCore() {
  const sockets = new Set<Socket>();
  // The one socket that subscribed to a task (W2), and the sockets that follow a task's output (W3).
  const targets = new Map<string, Socket>();
  const outputFollowers = new Map<string, Socket[]>();
  const ACK = frameText('{"type":"subscribed"}');
  const connected = (ws: WebSocket) => {
    const raw = (ws as unknown as { _socket: Socket })._socket;
    sockets.add(raw);
    ws.on('close', () => sockets.delete(raw));
    ws.on('message', (data) => {
      const message = JSON.parse(data.toString()) as { type: string; taskId?: string };
      if (message.type === 'subscribe' && message.taskId) targets.set(message.taskId, raw);
      if (message.type === 'subscribeOutput' && message.taskId) {
        const followers = outputFollowers.get(message.taskId);
        if (followers) followers.push(raw);
        else outputFollowers.set(message.taskId, [raw]);
      }
      raw.write(ACK);
    });
  };
  // Frames carry a cursor as mesh's do (`<epoch>.<sequence>`, the memory bus's form): the same
  // bytes to deliver. 25 bytes more per frame moved W1's loopback from one TCP regime to another
  // (BENCHMARKS.md, 2026-12-01 round three), so a ceiling with smaller frames is not the same job.
  const epoch = 'c0ffee00';
  let sequence = 0;
  const frame = (message: object) => frameText(JSON.stringify({ ...message, cursor: `${epoch}.${++sequence}` }));
  let tick: Buffer[] = [];
  /** This tick's output frames per task: each task's joined once and written to its followers. */
  let outputs = new Map<string, Buffer[]>();
  const flush = () => {
    if (tick.length > 0) {
      const frames = Buffer.concat(tick);
      tick = [];
      for (const socket of sockets) socket.write(frames);
    }
    for (const [taskId, list] of outputs) {
      const frames = Buffer.concat(list);
      for (const socket of outputFollowers.get(taskId) ?? []) socket.write(frames);
    }
    outputs = new Map();
  };
  let scheduled = false;
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(() => {
      scheduled = false;
      flush();
    });
  };
  return {
    connected,
    publishUpdate: (task: BenchTask, version: number, stamp: string) => {
      const target = targets.get(task.taskId);
      const message = { type: 'taskUpdated', ...update(task, version, stamp) };
      // A targeted event is one frame for one socket: one write, the least any server can do.
      if (target) target.write(frame(message));
      else {
        tick.push(frame(message));
        schedule();
      }
    },
    // Output goes only to the sockets that follow the task, as every other peer routes it.
    publishOutput: (task: BenchTask, content: string) => {
      const list = outputs.get(task.taskId);
      const framed = frame({ type: 'taskOutput', ...output(task, content) });
      if (list) list.push(framed);
      else outputs.set(task.taskId, [framed]);
      schedule();
    },
  };
}

export async function ceilingPeer(_sql: Sql<any>, control: Control): Promise<Peer> {
  const core = ceilingCore();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  wss.on('connection', core.connected);
  const server = plainServer(control, (request, socket, head) =>
    wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws)),
  );
  return {
    listen: (port) => listenOn(server, port),
    publishUpdate: core.publishUpdate,
    publishOutput: core.publishOutput,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/**
 * The ceiling's job as a Fastify route (@fastify/websocket, mesh's path), behind an async
 * preValidation hook that only reads the principal's header, as a host's auth guard would: what
 * mounting in Fastify costs before any of mesh's own work (no owner check, no database).
 */
export async function fastifyPeer(_sql: Sql<any>, control: Control): Promise<Peer> {
  const core = ceilingCore();
  const app = Fastify({ logger: false });
  // mesh's ws options: no permessage-deflate, no `clients` set (src/transport/ws.ts, 7).
  await app.register(fastifyWebsocket, { options: { perMessageDeflate: false, clientTracking: false } });
  app.get(
    '/api/v1/mesh/tasks/subscribe',
    {
      websocket: true,
      preValidation: async (request, reply) => {
        if (request.headers[BENCH_PRINCIPAL] === undefined) await reply.code(401).send();
      },
    },
    (socket) => core.connected(socket),
  );
  app.all('/bench/*', async (request, reply) => {
    const answer = await control(request.method, request.url, typeof request.body === 'string' ? request.body : '');
    return reply.code(answer.status).send(answer.body);
  });
  return {
    listen: async (port) => void (await app.listen({ host: '127.0.0.1', port })),
    publishUpdate: core.publishUpdate,
    publishOutput: core.publishOutput,
    close: () => app.close(),
  };
}

export type PeerName = 'mesh' | 'seed' | 'socketio' | 'ceiling' | 'fastify';
export const PEERS: Record<PeerName, (sql: Sql<any>, control: Control, bus: BenchBus) => Promise<Peer>> = {
  mesh: meshPeer,
  seed: seedPeer,
  socketio: socketIoPeer,
  ceiling: ceilingPeer,
  fastify: fastifyPeer,
};
/** The peers that can carry events from one process to another (W6). */
export const BUS_PEERS: readonly PeerName[] = ['mesh', 'socketio'];
