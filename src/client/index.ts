/**
 * `mesh-subscriptions/client`: the protocol's client for browsers and Node, with no runtime
 * dependency. It signs in with a key through a single-use ticket (PROTOCOL.md, "Browsers:
 * tickets"), or in Node with the key in the upgrade's headers (`signIn: 'headers'`), reconnects
 * with exponential back-off and jitter, and on each reconnect restores every subscription with
 * `since` set to the last cursor it saw on it, dropping the events it already delivered, so that
 * the app sees each event once across a dropped connection. It gives up when retrying cannot help:
 * the server refuses the credentials (401 or 403, or close code 4401) or has no such route (404);
 * an outage (503, a network error, any other status) is retried however long it lasts.
 *
 * Its one runtime import is ../protocol/wire.ts, the protocol's constants, which imports nothing;
 * everything else it imports is types only.
 */
import type { Static } from '@sinclair/typebox';
import type { ServerMessages } from '../protocol/schemas.js';
import {
  ACK_TYPES,
  CloseCode,
  DEFAULT_PREFIX,
  MESH_PROTOCOL,
  SUBSCRIBE_PATH,
  TICKETS_PATH,
  UNSUBSCRIBE_FRAME,
  type SubscriptionKind,
} from '../protocol/wire.js';

export type TaskUpdated = Static<(typeof ServerMessages)['taskUpdated']>;
export type TaskOutput = Static<(typeof ServerMessages)['taskOutput']>;
export type Lagged = Static<(typeof ServerMessages)['lagged']>;
export type ResyncRequired = Static<(typeof ServerMessages)['resyncRequired']>;
export type ServerError = Static<(typeof ServerMessages)['error']>;

/** Why the last attempt failed (or the socket closed), as far as the client can tell. */
export interface Failure {
  /**
   * The HTTP status of the ticket request, or of a refused upgrade when the WebSocket
   * implementation reports it (`ws` in Node does; a browser does not, it sees close code 1006).
   */
  status?: number;
  /** The close code of the socket (1006: dropped, or an upgrade refused in a browser). */
  code?: number;
  /** For people, e.g. `ticket request: HTTP 503 UNAVAILABLE`, or a network error's message. */
  message?: string;
}

/**
 * Why the client stopped for good: `closedByClient` after `close()`; `unauthorized` after a 401 or
 * a close with 4401; `forbidden` after a 403 (e.g. an Origin the server does not allow);
 * `notFound` after a 404 at the ticket request or the upgrade — no such route at this `url` and
 * `prefix`, or, at the ticket request, a server with tickets off (the plugin mints them only when
 * given `reauthenticate`): fix the set-up, or in Node sign in with `signIn: 'headers'`.
 */
export type ClosedReason = 'closedByClient' | 'unauthorized' | 'forbidden' | 'notFound';

/** What the connection is doing; `closed` is final (see `reason`, and `status` and `message` for why). */
export type ConnectionStatus =
  | { state: 'connecting'; attempt: number }
  | { state: 'open' }
  | ({ state: 'reconnecting'; attempt: number; inMs: number } & Failure)
  | ({ state: 'closed'; reason: ClosedReason } & Failure);

export interface MeshClientEvents {
  taskUpdated: TaskUpdated;
  taskOutput: TaskOutput;
  /** Output of a task was dropped because this client read too slowly: refetch, or resubscribe from `cursor`. */
  lagged: Lagged;
  /** The server cannot replay what a subscription missed: refetch what it covers. */
  resyncRequired: ResyncRequired;
  /** A frame was refused (`code` as in PROTOCOL.md); a refused subscription is dropped. */
  error: ServerError;
  status: ConnectionStatus;
}

/** The part of the WebSocket API this client uses: the browser's, or `ws`'s in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  // `any`: each implementation has its own event classes; this client reads `code` and `data` only.
  onopen: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
/**
 * The browser's `WebSocket`, or `ws`'s; the third argument (`ws`'s options, where its headers go)
 * is passed only with `signIn: 'headers'`.
 */
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: { headers: Record<string, string> },
) => WebSocketLike;

export interface MeshClientOptions {
  /** The API's base URL, e.g. `https://api.example.com` (`http:` becomes `ws:`). */
  url: string;
  /**
   * An API key: exchanged for a single-use ticket before each connection (or, with
   * `signIn: 'headers'`, sent in the upgrade's headers), so it never goes into a URL.
   */
  apiKey?: string;
  /**
   * How `apiKey` signs in. `ticket` (default): `POST {prefix}/mesh/tickets` with the key, then the
   * upgrade with the ticket as a subprotocol; works everywhere, needs a server with tickets on (the
   * plugin given `reauthenticate`). `headers`: the key in the upgrade's own headers, no ticket
   * route needed; only where the WebSocket implementation takes headers — Node's `ws`, never a
   * browser's (whose upgrade would go without the key: 401).
   */
  signIn?: 'ticket' | 'headers';
  /**
   * Instead of `apiKey`: how to get the subprotocols to offer (e.g. a ticket your own backend
   * mints). A throw is retried, unless the error has `status: 401` or `403`: then the client stops.
   */
  protocols?: () => Promise<string[]>;
  /** Default `/api/v1`. */
  prefix?: string;
  /**
   * The header the key travels in, as is, to the ticket route or the upgrade (e.g. `x-api-key`):
   * whatever your server's `authenticate` reads. Without it, the key goes as `Authorization: Bearer <key>`.
   */
  keyHeader?: string;
  /** Default `globalThis.WebSocket`; in Node 20, pass `ws`'s. */
  WebSocket?: WebSocketConstructor;
  /** Default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Back-off: attempt n waits min(maxDelayMs, initialDelayMs · 2ⁿ), times a random 50–100 %. Defaults 1,000 and 30,000 ms. */
  initialDelayMs?: number;
  maxDelayMs?: number;
}

/** One subscription: `ready` settles with the server's ack (or its refusal); `unsubscribe` ends it. */
export interface Subscription {
  readonly ready: Promise<void>;
  unsubscribe(): void;
}

/**
 * Thrown by `ready` when the client stopped for good before the server answered the subscription:
 * `status` says why (e.g. `{ state: 'closed', reason: 'notFound', status: 404, message }`).
 */
export class MeshClientClosedError extends Error {
  constructor(readonly status: Extract<ConnectionStatus, { state: 'closed' }>) {
    super(`the client stopped: ${status.reason}${status.message ? ` (${status.message})` : ''}`);
    this.name = 'MeshClientClosedError';
  }
}

/** Thrown by `ready` when the server refused a subscription. */
export class MeshSubscriptionError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'MeshSubscriptionError';
  }
}

type Kind = SubscriptionKind;
interface Followed {
  kind: Kind;
  taskId?: string;
  /** The last cursor seen on this subscription: where a reconnect resumes. */
  cursor?: string;
  handlers: Set<(event: any) => void>;
  ready?: { resolve: () => void; reject: (error: Error) => void };
}

const ACKS = new Set<string>(ACK_TYPES);
const UNAUTHORIZED_CLOSE = CloseCode.UNAUTHORIZED;
const OPEN = 1;
/** Cursors remembered to drop what two overlapping replays both send. */
const SEEN_LIMIT = 10_000;
/** How `ws` reports the status of a refused upgrade in its `error` event. */
const REFUSED_UPGRADE = /Unexpected server response: (\d{3})/;

/** The ticket request failed with an HTTP status. */
class HttpError extends Error {
  readonly code = 'HTTP_ERROR';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

/**
 * Statuses that retrying cannot change: a verdict on the credentials (401, 403), or no such route
 * (404). Any other is retried with back-off, its status in `reconnecting` (a 429 or a 503 passes).
 */
function verdict(status: number | undefined): 'unauthorized' | 'forbidden' | 'notFound' | undefined {
  return status === 401 ? 'unauthorized' : status === 403 ? 'forbidden' : status === 404 ? 'notFound' : undefined;
}

/** Only the fields that are set: a status reads the same whatever the path that made it. */
function failure(status: number | undefined, code: number | undefined, message: string | undefined): Failure {
  const f: Failure = {};
  if (status !== undefined) f.status = status;
  if (code !== undefined) f.code = code;
  if (message) f.message = message;
  return f;
}

export class MeshClient {
  private socket: WebSocketLike | undefined;
  private readonly followed = new Map<string, Followed>();
  /** Replies owed by the server, in the order the frames were sent (it answers in order). */
  private awaiting: (Followed | undefined)[] = [];
  private readonly listeners = new Map<keyof MeshClientEvents, Set<(event: any) => void>>();
  private readonly seen = new Set<string>();
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private stopped = false;
  /** The API's base, e.g. `https://api.example.com/api/v1`. */
  private readonly api: string;
  private current: ConnectionStatus = { state: 'connecting', attempt: 0 };
  private readonly options: Required<Omit<MeshClientOptions, 'apiKey' | 'protocols' | 'keyHeader'>> &
    Pick<MeshClientOptions, 'apiKey' | 'protocols' | 'keyHeader'>;

  constructor(options: MeshClientOptions) {
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocketImpl) throw new TypeError('no WebSocket here: pass the `ws` package as the WebSocket option');
    if (!options.apiKey && !options.protocols) throw new TypeError('give apiKey or protocols');
    if (options.signIn === 'headers' && !options.apiKey) throw new TypeError("signIn: 'headers' sends apiKey: give it");
    this.options = {
      signIn: 'ticket',
      prefix: DEFAULT_PREFIX,
      fetch: globalThis.fetch.bind(globalThis),
      initialDelayMs: 1_000,
      maxDelayMs: 30_000,
      ...options,
      WebSocket: WebSocketImpl,
    };
    this.api = `${this.options.url.replace(/\/$/, '')}${this.options.prefix}`;
    void this.connect();
  }

  /** What the connection is doing now (`status` events tell each change). */
  get status(): ConnectionStatus {
    return this.current;
  }

  /** Listens to one kind of event; returns the function that stops listening. */
  on<E extends keyof MeshClientEvents>(event: E, handler: (payload: MeshClientEvents[E]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }

  /** Updates of one task. */
  subscribe(taskId: string, handler?: (event: TaskUpdated) => void): Subscription {
    return this.follow('subscribe', taskId, handler);
  }

  /** Updates of every task this principal may see. */
  subscribeAll(handler?: (event: TaskUpdated) => void): Subscription {
    return this.follow('subscribeAll', undefined, handler);
  }

  /** Live output of one task. */
  subscribeOutput(taskId: string, handler?: (event: TaskOutput) => void): Subscription {
    return this.follow('subscribeOutput', taskId, handler);
  }

  /** Closes for good: no reconnect. */
  close(): void {
    clearTimeout(this.timer);
    if (this.stopped) return; // closed already, or stopped by the server (its reason stands)
    this.stopped = true;
    this.socket?.close(1000, 'client closed');
    this.end({ state: 'closed', reason: 'closedByClient' });
  }

  private follow(kind: Kind, taskId: string | undefined, handler?: (event: any) => void): Subscription {
    const key = keyOf({ kind, taskId });
    let entry = this.followed.get(key);
    const fresh = !entry;
    if (!entry) {
      entry = { kind, taskId: taskId?.toLowerCase(), handlers: new Set() };
      this.followed.set(key, entry);
    }
    if (handler) entry.handlers.add(handler);
    const followed = entry;
    const ready = new Promise<void>((resolve, reject) => {
      if (this.stopped && this.current.state === 'closed') return reject(new MeshClientClosedError(this.current));
      if (!fresh) return resolve();
      followed.ready = { resolve, reject };
    });
    ready.catch(() => {}); // a refusal also arrives as an `error` event; `ready` need not be awaited
    if (fresh) this.request(followed);
    return {
      ready,
      unsubscribe: () => {
        if (handler) followed.handlers.delete(handler);
        if (followed.handlers.size > 0 || this.followed.get(key) !== followed) return;
        this.followed.delete(key);
        const type = UNSUBSCRIBE_FRAME[kind];
        this.send(taskId === undefined ? { type } : { type, taskId }, undefined);
      },
    };
  }

  /** Sends (or, while disconnected, leaves to the next connection) the subscribe frame of `entry`. */
  private request(entry: Followed): void {
    const frame: Record<string, string> = { type: entry.kind };
    if (entry.taskId !== undefined) frame.taskId = entry.taskId;
    if (entry.cursor !== undefined) frame.since = entry.cursor;
    this.send(frame, entry);
  }

  private send(frame: object, entry: Followed | undefined): void {
    if (this.socket?.readyState !== OPEN) return;
    this.awaiting.push(entry);
    this.socket.send(JSON.stringify(frame));
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.setStatus({ state: 'connecting', attempt: this.attempt });
    let protocols: string[];
    try {
      protocols = this.options.signIn === 'headers' ? [MESH_PROTOCOL] : await this.ticket();
    } catch (error) {
      // A 401/403 is a verdict on the credentials; anything else (503, a network error) an outage.
      const status = typeof (error as { status?: unknown })?.status === 'number' ? (error as { status: number }).status : undefined;
      const why = failure(status, undefined, error instanceof Error ? error.message : String(error));
      const refused = verdict(status);
      if (this.stopped) return;
      return refused ? this.stop(refused, why) : this.retry(why);
    }
    if (this.stopped) return;
    const url = `${this.api.replace(/^http/, 'ws')}${SUBSCRIBE_PATH}`;
    const socket =
      this.options.signIn === 'headers'
        ? new this.options.WebSocket(url, protocols, { headers: this.credentials() })
        : new this.options.WebSocket(url, protocols);
    this.socket = socket;
    let opened = false;
    /** The status of a refused upgrade, when the implementation says (`ws`'s error event does). */
    let refusedWith: number | undefined;
    socket.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.awaiting = [];
      this.setStatus({ state: 'open' });
      for (const entry of this.followed.values()) this.request(entry);
    };
    socket.onmessage = (event: { data: unknown }) => this.receive(String(event.data));
    // Followed by onclose, which decides what to do.
    socket.onerror = (event: { message?: unknown; error?: { message?: unknown } } | undefined) => {
      const match = REFUSED_UPGRADE.exec(String(event?.message ?? event?.error?.message ?? ''));
      if (match && !opened) refusedWith = Number(match[1]);
    };
    socket.onclose = (event: { code: number; reason?: string }) => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      if (this.stopped) return;
      const message = opened
        ? event.reason || 'connection closed'
        : refusedWith !== undefined
          ? `upgrade refused: HTTP ${refusedWith}`
          : 'upgrade failed';
      const why = failure(refusedWith, event.code, message);
      const refused = event.code === UNAUTHORIZED_CLOSE ? 'unauthorized' : verdict(refusedWith);
      if (refused) return this.stop(refused, why);
      this.retry(why);
    };
  }

  private async ticket(): Promise<string[]> {
    if (this.options.protocols) return this.options.protocols();
    let res: Response;
    try {
      res = await this.options.fetch(`${this.api}${TICKETS_PATH}`, { method: 'POST', headers: this.credentials() });
    } catch (error) {
      throw new Error(`ticket request failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
    if (res.status !== 201) {
      // The plugin's answers carry a `code`; a host's own (a guard, a rate limit, a 404) may only
      // have a `message`.
      const body = (await res.json().catch(() => undefined)) as { code?: unknown; message?: unknown } | undefined;
      const reason = typeof body?.code === 'string' ? body.code : typeof body?.message === 'string' ? body.message : undefined;
      const hint =
        res.status === 404
          ? ` (no ticket route at POST ${this.options.prefix}${TICKETS_PATH}: a wrong url or prefix, or tickets are off on the server, which mints them only when given reauthenticate; in Node, signIn: 'headers' needs no ticket)`
          : '';
      throw new HttpError(res.status, `ticket request: HTTP ${res.status}${reason ? ` ${reason}` : ''}${hint}`);
    }
    return ((await res.json()) as { protocols: string[] }).protocols;
  }

  /** The header that carries the key to the ticket route: `keyHeader`, or else a bearer token. */
  private credentials(): Record<string, string> {
    const { keyHeader, apiKey } = this.options;
    return keyHeader ? { [keyHeader]: apiKey! } : { authorization: `Bearer ${apiKey!}` };
  }

  private retry(why: Failure): void {
    const { initialDelayMs, maxDelayMs } = this.options;
    const inMs = Math.round(Math.min(maxDelayMs, initialDelayMs * 2 ** this.attempt) * (0.5 + Math.random() / 2));
    this.attempt++;
    this.setStatus({ state: 'reconnecting', attempt: this.attempt, inMs, ...why });
    this.timer = setTimeout(() => void this.connect(), inMs);
  }

  private stop(reason: Exclude<ClosedReason, 'closedByClient'>, why: Failure): void {
    this.stopped = true;
    this.end({ state: 'closed', reason, ...why });
  }

  /** The final status; subscriptions still waiting for their answer learn why there will be none. */
  private end(status: Extract<ConnectionStatus, { state: 'closed' }>): void {
    this.setStatus(status);
    for (const entry of this.followed.values()) {
      entry.ready?.reject(new MeshClientClosedError(status));
      entry.ready = undefined;
    }
  }

  private receive(text: string): void {
    let message: { type: string } & Record<string, any>;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (ACKS.has(message.type) || message.type === 'error') {
      const entry = this.awaiting.shift();
      if (message.type === 'error') {
        if (entry && this.followed.get(keyOf(entry)) === entry && entry.cursor === undefined) {
          // Refused before it ever delivered: not followed, not restored on reconnect.
          this.followed.delete(keyOf(entry));
        }
        entry?.ready?.reject(new MeshSubscriptionError(message.code, message.message));
        this.emit('error', message as ServerError);
      } else entry?.ready?.resolve();
      if (entry) entry.ready = undefined;
      return;
    }
    if (message.type === 'taskUpdated' || message.type === 'taskOutput') {
      if (this.seen.has(message.cursor)) return;
      this.remember(message.cursor);
      const streams =
        message.type === 'taskOutput'
          ? [this.followed.get(`subscribeOutput:${message.taskId}`)]
          : [this.followed.get(`subscribe:${message.taskId}`), this.followed.get('subscribeAll')];
      for (const entry of streams) {
        if (!entry) continue;
        entry.cursor = message.cursor;
        for (const handler of entry.handlers) handler(message);
      }
      this.emit(message.type, message as TaskUpdated & TaskOutput);
      return;
    }
    if (message.type === 'lagged') this.emit('lagged', message as Lagged);
    else if (message.type === 'resyncRequired') this.emit('resyncRequired', message as ResyncRequired);
  }

  private remember(cursor: string): void {
    this.seen.add(cursor);
    if (this.seen.size > SEEN_LIMIT) this.seen.delete(this.seen.values().next().value!);
  }

  private setStatus(status: ConnectionStatus): void {
    this.current = status;
    this.emit('status', status);
  }

  private emit<E extends keyof MeshClientEvents>(event: E, payload: MeshClientEvents[E]): void {
    for (const handler of this.listeners.get(event) ?? []) handler(payload);
  }
}

function keyOf(entry: Pick<Followed, 'kind' | 'taskId'>): string {
  return entry.taskId === undefined ? entry.kind : `${entry.kind}:${entry.taskId.toLowerCase()}`;
}

/** Opens a client; events start flowing once you subscribe. */
export function createMeshClient(options: MeshClientOptions): MeshClient {
  return new MeshClient(options);
}
