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
 * A task's subscription can start from the task's whole retained history (`from: 'start'`): the
 * server replays it, then goes live with no gap and no duplicate. Replies are matched to the frames
 * they answer by type and task, so an ack the server sends on its own (it ended a subscription the
 * principal may no longer hold) is told apart and reported as `ended`. Every application handler
 * is called on its own: one that throws is reported as `handlerError` and the others still run.
 *
 * Its one runtime import is ../protocol/wire.ts, the protocol's constants, which imports nothing;
 * everything else it imports is types only.
 */
import type { Static } from '@sinclair/typebox';
import type { ServerMessages } from '../protocol/schemas.js';
import {
  ACK_OF,
  CloseCode,
  DEFAULT_PREFIX,
  ErrorCode,
  HISTORY_START,
  MESH_PROTOCOL,
  SUBSCRIBE_PATH,
  TICKETS_PATH,
  UNSUBSCRIBE_FRAME,
  type AckFrameType,
  type ClientFrameType,
  type SubscriptionKind,
} from '../protocol/wire.js';

export type TaskUpdated = Static<(typeof ServerMessages)['taskUpdated']>;
export type TaskOutput = Static<(typeof ServerMessages)['taskOutput']>;
export type Lagged = Static<(typeof ServerMessages)['lagged']>;
export type ResyncRequired = Static<(typeof ServerMessages)['resyncRequired']>;
export type ServerError = Static<(typeof ServerMessages)['error']>;
/**
 * The history a `from: 'start'` subscription replays does not begin at the task's first event:
 * `reason` `retention` (retention pruned its older events) or `maxReplay` (more are retained than
 * one replay sends: only the newest follow). Comes before the first replayed event.
 */
export type HistoryTruncated = Static<(typeof ServerMessages)['historyTruncated']>;
export type { SubscriptionKind };

/**
 * A subscription ended without the application asking; it is no longer followed (nor restored
 * after a reconnect). `reason`: `revoked`, the server ended it on its own (an `unsubscribed` /
 * `outputUnsubscribed` that answers no frame of this client) because the principal may no longer
 * see the task (its owner changed, or the key's principal did); `refused`, restoring it after a
 * reconnect was answered `NOT_FOUND` (the same, noticed while disconnected).
 */
export interface SubscriptionEnded {
  subscription: SubscriptionKind;
  /** Absent for `subscribeAll`. */
  taskId?: string;
  reason: 'revoked' | 'refused';
}

/** An application handler threw (or its promise rejected); the client and the other handlers went on. */
export interface HandlerError {
  error: unknown;
  /** What the handler was called with. */
  event: unknown;
  /** Which handler: one given to a subscription (with its task), or a listener of `on(name)`. */
  handler: { subscription: SubscriptionKind; taskId?: string } | { on: keyof MeshClientEvents };
}

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
  /** A `from: 'start'` history begins after the task's first event (once per subscription). */
  historyTruncated: HistoryTruncated;
  /** A subscription ended without the application asking (see `SubscriptionEnded`). */
  ended: SubscriptionEnded;
  /**
   * A handler of a subscription or of `on()` threw; the others still got the event. A listener of
   * `handlerError` that throws is not reported again.
   */
  handlerError: HandlerError;
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

/**
 * Where a task's subscription starts: `now` (default) live from its ack; `start` the task's whole
 * retained history first (oldest first), then live with no gap and no duplicate; `{ after }` the
 * events after a cursor (e.g. the `cursor` of a REST history page), then live.
 */
export type SubscriptionStart = 'now' | 'start' | { after: string };

/** Options of `subscribe` and `subscribeOutput`. */
export interface TaskSubscriptionOptions {
  /**
   * Where to start (see `SubscriptionStart`). It applies when this call opens the subscription: a
   * task this client already follows (the same kind) is joined as it is, live.
   * After a reconnect the subscription resumes after the last event it delivered, wherever it
   * started; one that started from `start` and delivered nothing yet asks for `start` again.
   */
  from?: SubscriptionStart;
  /** The history that follows does not begin at the task's first event (`from: 'start'` only). */
  onTruncated?: (marker: HistoryTruncated) => void;
  /** The subscription ended without the application asking (also the client's `ended` event). */
  onEnded?: (ended: SubscriptionEnded) => void;
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
/** What one `subscribe…` call gave: each is called on its own. */
interface Listener {
  handler?: (event: any) => unknown;
  onTruncated?: (marker: HistoryTruncated) => unknown;
  onEnded?: (ended: SubscriptionEnded) => unknown;
}
interface Followed {
  kind: Kind;
  taskId?: string;
  /** The last cursor seen on this subscription: where a reconnect resumes. */
  cursor?: string;
  /** Asks for the whole history (`since: "start"`) while it has no cursor. */
  fromStart: boolean;
  /** The `historyTruncated` marker was passed on: a repeat (a reconnect before any event) is not. */
  truncationTold?: boolean;
  /**
   * A replay asked for on its own (not with the others after a reconnect) waits for its ack: what
   * another subscription delivers before it, the replay sends again, in order.
   */
  awaitingReplay?: boolean;
  listeners: Set<Listener>;
  /** The first ack is still owed: joiners share its answer. */
  pending?: Promise<void>;
  ready?: { resolve: () => void; reject: (error: Error) => void };
}
/** A reply the server owes: the ack that answers the frame (or an `error`), and what it is for. */
interface Owed {
  ack: AckFrameType;
  taskId?: string;
  entry?: Followed;
}

/** Which subscription an ack that answers nothing ends. */
const ENDED_BY: Partial<Record<string, Kind>> = {
  unsubscribed: 'subscribe',
  outputUnsubscribed: 'subscribeOutput',
  unsubscribedAll: 'subscribeAll',
};
const ACKS = new Set<string>(Object.values(ACK_OF));
const UNAUTHORIZED_CLOSE = CloseCode.UNAUTHORIZED;
const OPEN = 1;
/** Cursors remembered (with the subscriptions that got each) to drop what overlapping replays repeat. */
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
  /**
   * Replies owed by the server, in the order the frames were sent (it answers in order). An ack is
   * matched by its type and task, so one the server sends on its own is not taken for a reply.
   */
  private awaiting: Owed[] = [];
  private readonly listeners = new Map<keyof MeshClientEvents, Set<(event: any) => unknown>>();
  /**
   * Each recent cursor, with the subscriptions it was delivered to: a replay that repeats an event
   * (one `subscribeAll` already had, say) reaches only the subscriptions that lack it, and the
   * client's own events fire once per event. A subscription made anew is a new object, so it gets
   * its history even where an earlier one of the same task had it.
   */
  private readonly seen = new Map<string, Set<Followed>>();
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

  /**
   * Listens to one kind of event; returns the function that stops listening. A listener that
   * throws is reported as `handlerError`; the others still run.
   */
  on<E extends keyof MeshClientEvents>(event: E, handler: (payload: MeshClientEvents[E]) => unknown): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }

  /**
   * Updates of one task: live, or with `{ from: 'start' }` its whole retained history first. A
   * handler that throws is reported as `handlerError`; the others still run.
   */
  subscribe(taskId: string, handler?: (event: TaskUpdated) => unknown, options?: TaskSubscriptionOptions): Subscription {
    return this.follow('subscribe', taskId, handler, options);
  }

  /** Updates of every task this principal may see (live; a reconnect resumes without a gap). */
  subscribeAll(handler?: (event: TaskUpdated) => unknown): Subscription {
    return this.follow('subscribeAll', undefined, handler);
  }

  /**
   * Output of one task: live, or with `{ from: 'start' }` the whole retained transcript first
   * (`onTruncated` says when its beginning is gone).
   */
  subscribeOutput(taskId: string, handler?: (event: TaskOutput) => unknown, options?: TaskSubscriptionOptions): Subscription {
    return this.follow('subscribeOutput', taskId, handler, options);
  }

  /** Closes for good: no reconnect. */
  close(): void {
    clearTimeout(this.timer);
    if (this.stopped) return; // closed already, or stopped by the server (its reason stands)
    this.stopped = true;
    this.socket?.close(1000, 'client closed');
    this.end({ state: 'closed', reason: 'closedByClient' });
  }

  private follow(
    kind: Kind,
    taskId: string | undefined,
    handler?: (event: any) => unknown,
    options: TaskSubscriptionOptions = {},
  ): Subscription {
    const from = options.from ?? 'now';
    if (from !== 'now' && from !== 'start' && !(typeof from === 'object' && typeof from?.after === 'string' && from.after)) {
      throw new TypeError("from: give 'now', 'start' or { after: <a cursor> }");
    }
    const key = keyOf({ kind, taskId });
    let entry = this.followed.get(key);
    const fresh = !entry;
    if (!entry) {
      entry = { kind, taskId: taskId?.toLowerCase(), fromStart: from === 'start', listeners: new Set() };
      if (typeof from === 'object') entry.cursor = from.after;
      this.followed.set(key, entry);
    }
    const listener: Listener = { handler, onTruncated: options.onTruncated, onEnded: options.onEnded };
    entry.listeners.add(listener);
    const followed = entry;
    const ready = new Promise<void>((resolve, reject) => {
      if (this.stopped && this.current.state === 'closed') return reject(new MeshClientClosedError(this.current));
      if (!fresh) return followed.pending ? followed.pending.then(resolve, reject) : resolve();
      followed.ready = {
        resolve: () => {
          followed.pending = undefined;
          resolve();
        },
        reject: (error) => {
          followed.pending = undefined;
          reject(error);
        },
      };
    });
    ready.catch(() => {}); // a refusal also arrives as an `error` event; `ready` need not be awaited
    if (fresh) {
      followed.pending = ready;
      this.request(followed, true);
    }
    return {
      ready,
      unsubscribe: () => {
        followed.listeners.delete(listener);
        if (followed.listeners.size > 0 || this.followed.get(key) !== followed) return;
        this.followed.delete(key);
        const type = UNSUBSCRIBE_FRAME[kind];
        this.send(taskId === undefined ? { type } : { type, taskId: followed.taskId }, undefined);
      },
    };
  }

  /** Sends (or, while disconnected, leaves to the next connection) the subscribe frame of `entry`. */
  private request(entry: Followed, alone = false): void {
    const frame: Record<string, string> = { type: entry.kind };
    if (entry.taskId !== undefined) frame.taskId = entry.taskId;
    const since = entry.cursor ?? (entry.fromStart ? HISTORY_START : undefined);
    if (since !== undefined) frame.since = since;
    // Sent together after a reconnect, replays do not repeat each other's events: none may wait.
    entry.awaitingReplay = alone && since !== undefined && this.socket?.readyState === OPEN;
    this.send(frame as { type: ClientFrameType; taskId?: string }, entry);
  }

  private send(frame: { type: ClientFrameType; taskId?: string }, entry: Followed | undefined): void {
    if (this.socket?.readyState !== OPEN) return;
    this.awaiting.push({ ack: ACK_OF[frame.type], taskId: frame.taskId?.toLowerCase(), entry });
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
    if (typeof message !== 'object' || message === null) return;
    if (message.type === 'error') return this.refused(message as ServerError);
    if (ACKS.has(message.type)) return this.acked(message.type, typeof message.taskId === 'string' ? message.taskId : undefined);
    if (message.type === 'taskUpdated' || message.type === 'taskOutput') return this.deliver(message as TaskUpdated | TaskOutput);
    if (message.type === 'historyTruncated') return this.truncated(message as HistoryTruncated);
    if (message.type === 'lagged') this.emit('lagged', message as Lagged);
    else if (message.type === 'resyncRequired') this.emit('resyncRequired', message as ResyncRequired);
  }

  /** An `error` answers the oldest frame still owed a reply (the server answers in order). */
  private refused(message: ServerError): void {
    const entry = this.awaiting.shift()?.entry;
    if (entry && this.followed.get(keyOf(entry)) === entry) {
      if (entry.ready) {
        // The application's own subscribe was refused: not followed, not restored on reconnect.
        this.followed.delete(keyOf(entry));
        entry.ready.reject(new MeshSubscriptionError(message.code, message.message));
        entry.ready = undefined;
      } else if (message.code === ErrorCode.NOT_FOUND) {
        // Restoring it after a reconnect was refused: the task is gone from this principal's sight.
        this.ended(entry, 'refused');
      }
    }
    this.emit('error', message);
  }

  /**
   * An ack answers the oldest owed frame of its type and task. One that answers none was sent by
   * the server on its own: it ended that subscription.
   */
  private acked(type: string, taskId: string | undefined): void {
    const id = taskId?.toLowerCase();
    const index = this.awaiting.findIndex((owed) => owed.ack === type && owed.taskId === id);
    if (index !== -1) {
      const [{ entry }] = this.awaiting.splice(index, 1) as [Owed];
      if (!entry) return;
      entry.awaitingReplay = false;
      entry.ready?.resolve();
      entry.ready = undefined;
      return;
    }
    const kind = ENDED_BY[type];
    if (!kind) return;
    const entry = this.followed.get(keyOf({ kind, taskId: id }));
    // A subscribe of it still owed its reply was read after the server ended the earlier one: it stands.
    if (!entry || this.awaiting.some((owed) => owed.entry === entry)) return;
    this.ended(entry, 'revoked');
  }

  /** The subscription is over without the application asking: it stops following and says why. */
  private ended(entry: Followed, reason: SubscriptionEnded['reason']): void {
    this.followed.delete(keyOf(entry));
    const ended: SubscriptionEnded = { subscription: entry.kind, reason };
    if (entry.taskId !== undefined) ended.taskId = entry.taskId;
    for (const listener of entry.listeners) {
      if (listener.onEnded) this.call(listener.onEnded, ended, handlerOf(entry));
    }
    this.emit('ended', ended);
  }

  private deliver(message: TaskUpdated | TaskOutput): void {
    const streams =
      message.type === 'taskOutput'
        ? [this.followed.get(`subscribeOutput:${message.taskId}`)]
        : [this.followed.get(`subscribe:${message.taskId}`), this.followed.get('subscribeAll')];
    const had = this.seen.get(message.cursor);
    const to = streams.filter((entry): entry is Followed => entry !== undefined && !entry.awaitingReplay && !had?.has(entry));
    if (had) to.forEach((entry) => had.add(entry));
    else this.remember(message.cursor, new Set(to));
    for (const entry of to) {
      entry.cursor = message.cursor;
      const source = handlerOf(entry);
      for (const listener of entry.listeners) {
        if (listener.handler) this.call(listener.handler, message, source);
      }
    }
    if (!had) this.emit(message.type, message as TaskUpdated & TaskOutput);
  }

  private truncated(message: HistoryTruncated): void {
    const entry = this.followed.get(keyOf({ kind: message.subscription, taskId: message.taskId }));
    if (entry) {
      // A reconnect before the first event asks for `start` again, and hears the same again.
      if (entry.truncationTold) return;
      entry.truncationTold = true;
      for (const listener of entry.listeners) {
        if (listener.onTruncated) this.call(listener.onTruncated, message, handlerOf(entry));
      }
    }
    this.emit('historyTruncated', message);
  }

  private remember(cursor: string, to: Set<Followed>): void {
    this.seen.set(cursor, to);
    if (this.seen.size > SEEN_LIMIT) this.seen.delete(this.seen.keys().next().value!);
  }

  private setStatus(status: ConnectionStatus): void {
    this.current = status;
    this.emit('status', status);
  }

  private emit<E extends keyof MeshClientEvents>(event: E, payload: MeshClientEvents[E]): void {
    for (const handler of this.listeners.get(event) ?? []) {
      if (event === 'handlerError') {
        // Reporting a failure to report would go round for ever.
        try {
          void Promise.resolve(handler(payload)).catch(() => {});
        } catch {
          // deliberately dropped: see above
        }
      } else this.call(handler, payload, { on: event });
    }
  }

  /**
   * Calls one application handler: a throw, or a rejection of the promise it returns, is reported
   * as `handlerError` rather than stopping the other handlers or the client's receive loop.
   */
  private call<T>(handler: (value: T) => unknown, value: T, source: HandlerError['handler']): void {
    const report = (error: unknown) => this.emit('handlerError', { error, event: value, handler: source });
    try {
      const result = handler(value);
      if (typeof (result as PromiseLike<unknown> | undefined)?.then === 'function') {
        (result as PromiseLike<unknown>).then(undefined, report);
      }
    } catch (error) {
      report(error);
    }
  }
}

function handlerOf(entry: Followed): HandlerError['handler'] {
  return entry.taskId === undefined ? { subscription: entry.kind } : { subscription: entry.kind, taskId: entry.taskId };
}

function keyOf(entry: Pick<Followed, 'kind' | 'taskId'>): string {
  return entry.taskId === undefined ? entry.kind : `${entry.kind}:${entry.taskId.toLowerCase()}`;
}

/** Opens a client; events start flowing once you subscribe. */
export function createMeshClient(options: MeshClientOptions): MeshClient {
  return new MeshClient(options);
}
