/**
 * The one adapter between the core and `ws` / `@fastify/websocket`: everything that depends on
 * how those libraries work inside is here, each trick named and explained once.
 *
 * 1. Prebuilt frames go straight to ws's TCP socket (its private `_socket`): every event is framed
 *    once (./websocket-frame.ts) and the same bytes are written to each recipient, instead of ws
 *    framing and copying them per socket. Backpressure is that socket's: `bufferedAmount` (ws
 *    counts its own writes and the TCP socket's buffer there) and its `'drain'`.
 * 2. Close frames and pings still go through ws's Sender, which writes to that same TCP socket
 *    synchronously when nothing is compressed (the plugin's ws server has no permessage-deflate;
 *    a host's may, but ws compresses data frames only, never control frames). Every write we make
 *    is a whole frame, so frames never interleave. The core flushes its queue before it asks for
 *    the close: data frames written before `close()` go out before the close frame.
 * 3. After the upgrade, @fastify/websocket leaves the HTTP response assigned to the TCP socket and
 *    holds it in an error listener: dead weight that would live as long as the socket. Both go.
 * 4. ws closes a socket itself on a protocol error (invalid UTF-8, a bad frame, one too large) and
 *    tells the code only on the error, under a symbol of its own: read it there.
 * 5. The plugin's routes use the host's ws server when the host registered @fastify/websocket
 *    itself; otherwise one of their own, without permessage-deflate (see 2).
 * 6. Listeners are shared functions that find their connection on the socket (a symbol), not
 *    closures: sockets are many, and a closure per socket per event costs memory.
 * 7. The plugin's sockets leave the ws server's `clients` as they are adopted (its own ws server
 *    keeps no such set: ws would hang a closure on every socket's 'close' to keep it, for nothing). @fastify/websocket's
 *    own preClose closes every socket in `clients` without a code (the client sees 1005, no
 *    reason); a host's registration of it runs that hook before the plugin's, which then finds its
 *    sockets closing already. Out of `clients`, they are the plugin's alone to close: 1001 "server
 *    shutting down", after what was queued for them (and a host broadcasting to `clients` cannot
 *    write into the protocol's stream).
 * 8. Registered by the plugin, @fastify/websocket lives in the plugin's context: its onRequest hook,
 *    which marks an upgrade (`request.ws`), runs after the host's. When a host hook answers an
 *    upgrade itself (an auth guard's 401), @fastify/websocket's onResponse does not know it was
 *    one and leaves its TCP socket open — nothing else ends a socket taken by 'upgrade' — so the
 *    plugin's context ends it (Node marks such a request `upgrade`).
 */
import fastifyWebsocket from '@fastify/websocket';
import type { FastifyInstance } from 'fastify';
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import WebSocket, { type RawData, type WebSocketServer } from 'ws';
import type { ClientSocket, SocketListener } from '../core/ports.js';

export { frameText } from './websocket-frame.js';

const LISTENER = Symbol('mesh socket listener');
type Listened = { [LISTENER]: SocketListener };
const listenerOf = (emitter: object): SocketListener => (emitter as Listened)[LISTENER];

const { OPEN, CLOSED } = WebSocket;

function asBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  return Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
}

function onMessage(this: WebSocket, data: RawData, isBinary: boolean): void {
  listenerOf(this).frame(asBuffer(data), !isBinary);
}
function onPong(this: WebSocket): void {
  listenerOf(this).pong();
}
function onClose(this: WebSocket, code: number): void {
  listenerOf(this).socketClosed(code);
}
function onError(this: WebSocket, error: Error): void {
  const status = Object.getOwnPropertySymbols(error).find((symbol) => symbol.description === 'status-code');
  const code = status === undefined ? undefined : (error as unknown as Record<symbol, unknown>)[status];
  if (typeof code === 'number') listenerOf(this).protocolError(code);
}
function onDrain(this: Socket): void {
  listenerOf(this).writable();
}

/** A ws socket as the core's ClientSocket. */
class WsClientSocket implements ClientSocket {
  constructor(
    private readonly ws: WebSocket,
    private readonly raw: Socket,
  ) {}

  bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  isOpen(): boolean {
    return this.ws.readyState === OPEN;
  }

  write(chunk: Buffer): void {
    this.raw.write(chunk);
  }

  writeAll(chunks: readonly Buffer[]): void {
    this.raw.cork();
    for (const chunk of chunks) this.raw.write(chunk);
    this.raw.uncork();
  }

  ping(): void {
    this.ws.ping();
  }

  close(code: number, reason: string): void {
    this.ws.close(code, reason);
  }

  terminate(): void {
    this.ws.terminate();
  }

  gone(): Promise<void> {
    if (this.ws.readyState === CLOSED) return Promise.resolve();
    return new Promise((resolve) => this.ws.once('close', () => resolve()));
  }
}

/**
 * Takes over a socket @fastify/websocket has just upgraded: drops what the upgrade left behind,
 * and returns the socket for the core. Call `listen` with the connection before any await, or
 * frames that arrive meanwhile are lost.
 */
export function adoptWebSocket(
  ws: WebSocket,
  upgradeSocket: Socket,
  server: Pick<WebSocketServer, 'clients'>,
): { socket: ClientSocket; listen(listener: SocketListener): void } {
  const raw = upgradeSocket as Socket & { _httpMessage?: ServerResponse | null };
  raw._httpMessage?.detachSocket(raw);
  ws.removeAllListeners('error');
  // With `clientTracking: false` there is no set (7).
  (server.clients as Set<WebSocket> | undefined)?.delete(ws);
  const tcp = (ws as unknown as { _socket: Socket })._socket;
  return {
    socket: new WsClientSocket(ws, tcp),
    listen(listener) {
      (ws as unknown as Listened)[LISTENER] = listener;
      (tcp as unknown as Listened)[LISTENER] = listener;
      ws.on('message', onMessage);
      ws.on('pong', onPong);
      ws.on('close', onClose);
      ws.on('error', onError);
      tcp.on('drain', onDrain);
    },
  };
}

/**
 * Registers @fastify/websocket in the plugin's context, unless the host has (then its server,
 * with its settings, serves our route too: `maxPayload` is then enforced by the core as well).
 */
export async function ensureWebSocketServer(
  context: FastifyInstance,
  options: { maxPayload: number; handleProtocols: (protocols: Set<string>) => string | false },
): Promise<void> {
  if (context.hasDecorator('websocketServer')) return;
  context.addHook('onResponse', async (request) => {
    if ((request.raw as { upgrade?: boolean }).upgrade && !request.ws) request.raw.socket.destroy(); // (8)
  });
  await context.register(fastifyWebsocket, {
    options: { maxPayload: options.maxPayload, perMessageDeflate: false, handleProtocols: options.handleProtocols, clientTracking: false },
    // The plugin's own preClose, on the host, closes its sockets with 1001 and waits for them (7);
    // this one only closes the server.
    preClose(done) {
      this.websocketServer.close(() => done());
    },
  });
}
