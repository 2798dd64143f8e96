/**
 * One client socket: reads its frames in order within its budget, keeps its subscriptions in the
 * index, and hands what it must send to its Outbound queue.
 */
import type { FastifyBaseLogger, FastifyRequest } from 'fastify';
import type { RawData, WebSocket } from 'ws';
import { CloseCode, ErrorCode, OwnerLookupUnavailableError } from '../errors.js';
import type { Principal } from '../options.js';
import type { ReplayStream, ResyncReason } from '../bus/bus.js';
import { SUBSCRIBED_ALL, UNSUBSCRIBED_ALL, encodeAck, encodeError, encodeResyncRequired, parseClientFrame } from '../protocol/codec.js';
import type { ClientMessage } from '../protocol/schemas.js';
import { principalKey } from '../auth.js';
import type { MeshMetrics } from '../metrics.js';
import type { MeshEvents } from './events.js';
import { Outbound, type BackpressureLimits, type BackpressureObserver, type FlushScheduler } from './outbound.js';
import { NO_SUCH_TASK, type OwnerAnswer, type OwnerDirectory } from './owners.js';
import { FrameRateLimiter } from './rate-limit.js';
import { canSee, type Subscriber, type SubscriptionIndex } from './registry.js';
import type { ReplayedPage } from './replayed.js';

export interface ConnectionContext {
  index: SubscriptionIndex<ClientConnection>;
  /** The hub's side of `since`: replay pages, where a stream starts, the order of cursors. */
  history: {
    replayPage(principal: Principal, stream: ReplayStream, after: string, first: boolean): Promise<ReplayedPage | { resync: ResyncReason }>;
    head(): string;
    compare(a: string, b: string): number;
    /** Whether logged events are still waiting for their owner: they may arrive behind newer ones. */
    behind(): boolean;
  };
  owners: OwnerDirectory;
  scheduler: FlushScheduler;
  limits: {
    /** ws enforces it when the plugin owns the ws server; a host's ws server may allow more. */
    maxPayload: number;
    maxSubscriptions: number;
    maxFramesPerSecond: number;
    frameBurst: number;
    floodCloseAfterMs: number;
    backpressure: BackpressureLimits;
  };
  events: MeshEvents;
  metrics: MeshMetrics;
  onClosed(connection: ClientConnection): void;
}

/** A step of a frame's handling; one that returns a promise (a replay) holds later frames until it settles. */
type Step = () => void | Promise<void>;

/** A live frame of a resumed stream, kept while a replay page is read. */
interface Held {
  kind: 'update' | 'output';
  taskId: string;
  cursor: string;
  frame: Buffer;
}

/**
 * The seam of a resumed stream. While its replay runs, its live frames are kept aside, those of
 * the current page's read only and up to a byte budget: the last page leaves out what came while
 * it was read, and those go out right after it; past the budget they are dropped and the replay
 * reads on instead. Afterwards, the cursor up to which the client has the stream: live frames at
 * or before it are repeats; the first one after it ends the seam.
 */
type Seam = { replaying: true; held: Held[]; heldBytes: number; overflowed: boolean } | { replaying: false; floor: string };

/**
 * A burst of resumes: the live frames sent meanwhile (few), and per stream resumed, up to where
 * the client now has it — a floor per stream, not a record per replayed event, so that memory
 * does not grow with the replay.
 */
interface Burst {
  live: Set<string>;
  /** Per task: every update of it up to this cursor is with the client (a resumed `subscribe`). */
  tasks: Map<string, string>;
  /** Every update the principal may see up to this cursor is with the client (a resumed `subscribeAll`). */
  all: string | undefined;
}

/** Live updates a burst remembers, at most: a long replay must not make it grow without end. */
const BURST_LIVE_LIMIT = 10_000;

/** A stream of this socket's: `u:<task>`, `o:<task>` or `all`. */
const seamKey = (stream: ReplayStream): string => (stream.kind === 'all' ? 'all' : `${stream.kind === 'update' ? 'u' : 'o'}:${stream.taskId}`);

const byteLength = (data: RawData): number =>
  Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : data instanceof ArrayBuffer ? data.byteLength : data.length;

const SETTLED = Promise.resolve();
const CONNECTION = Symbol('mesh connection');
type Owned = WebSocket & { [CONNECTION]: ClientConnection };

const connectionOf = (socket: WebSocket) => (socket as Owned)[CONNECTION];

function onMessage(this: WebSocket, data: RawData, isBinary: boolean): void {
  connectionOf(this).onFrame(data, isBinary);
}
function onPong(this: WebSocket): void {
  connectionOf(this).alive = true;
}
function onClose(this: WebSocket, code: number): void {
  connectionOf(this).release(code);
}
function onError(this: WebSocket, error: Error): void {
  const connection = connectionOf(this);
  connection.log.debug({ err: error }, 'websocket error');
  // ws closes the socket itself for a protocol error (invalid UTF-8, a bad frame, one too large)
  // and says with which code only on the error, under a symbol of its own.
  const status = Object.getOwnPropertySymbols(error).find((symbol) => symbol.description === 'status-code');
  const code = status === undefined ? undefined : (error as unknown as Record<symbol, unknown>)[status];
  if (typeof code === 'number') connection.closedForProtocolError(code);
}

/** How long a socket closed for being slow gets to take its close frame before it is cut. */
const SLOW_CLOSE_GRACE_MS = 1_000;

export class ClientConnection implements Subscriber, BackpressureObserver {
  updates: Set<string> | undefined = undefined;
  outputs: Set<string> | undefined = undefined;
  all = false;
  round = 0;
  /** Cleared by each ping, set by the pong: false at the next ping means the peer is gone. */
  alive = true;

  private readonly outbound: Outbound;
  private readonly limiter: FrameRateLimiter;
  private closed = false;
  /** Frames whose handling waits on a lookup; later frames wait behind them to keep replies in order. */
  private backlog = 0;
  private chain: Promise<void> = SETTLED;
  /** The seams of this socket's resumed streams, by stream; undefined when none (the usual case). */
  private seams: Map<string, Seam> | undefined;
  /**
   * What this socket has of task updates while its resumes queue up (a reconnecting client sends
   * all its subscribes at once), so that a later replay skips it and two subscriptions covering
   * one event (subscribe and subscribeAll) do not both carry it. Dropped once no frame waits.
   */
  private burst: Burst | undefined;
  // For the close log line.
  private readonly openedAt = performance.now();
  private framesIn = 0;
  private framesOut = 0;
  /** The close code this server sent, if it closed the socket. */
  private closeCode: number | undefined;

  constructor(
    readonly socket: WebSocket,
    public principal: Principal,
    /** The upgrade request's logger: its lines carry the request id. */
    readonly log: FastifyBaseLogger,
    /** Kept for re-authentication by `authenticate` only when the host gives no `reauthenticate`. */
    readonly request: FastifyRequest | undefined,
    private readonly context: ConnectionContext,
  ) {
    const { limits } = context;
    this.limiter = new FrameRateLimiter(limits.maxFramesPerSecond, limits.frameBurst, limits.floodCloseAfterMs);
    this.outbound = new Outbound(socket, limits.backpressure, context.scheduler, this);
    // Attached at once: frames that arrive before any await would otherwise be lost. Shared
    // listeners find their connection on the socket: no closures per socket.
    (socket as Owned)[CONNECTION] = this;
    socket.on('message', onMessage);
    socket.on('pong', onPong);
    socket.on('close', onClose);
    socket.on('error', onError);
    this.log.info({ principal: principalKey(principal) }, 'websocket open');
  }

  // BackpressureObserver: methods rather than closures, since there is one per socket.

  backedUp(): void {
    this.context.events.emit('backedUp');
  }

  drained(superseded: number, lagged: ReadonlyMap<string, number>): void {
    if (lagged.size > 0) this.context.metrics.sent('lagged', lagged.size);
    this.context.events.emit('drained', { superseded, lagged });
  }

  wrote(bytes: number, frames: number): void {
    this.framesOut += frames;
    this.context.metrics.written(bytes);
  }

  slow(why: 'buffer' | 'timeout'): void {
    this.log.warn({ why, backlog: this.socket.bufferedAmount }, 'closing a slow consumer');
    this.context.events.emit('slowConsumer', { why });
    this.close(CloseCode.SLOW_CONSUMER, 'slow consumer', SLOW_CLOSE_GRACE_MS);
  }

  sendUpdate(taskId: string, frame: Buffer, cursor: string): void {
    if (this.seams !== undefined && this.atSeam('update', taskId, cursor, frame)) return;
    // Bounded: past it a later replay of the burst may repeat an update, which cursors tell apart.
    if (this.burst !== undefined && this.burst.live.size < BURST_LIVE_LIMIT) this.burst.live.add(cursor);
    this.outbound.update(taskId, frame);
  }

  sendOutput(taskId: string, frame: Buffer, cursor: string): void {
    if (this.seams !== undefined && this.atSeam('output', taskId, cursor, frame)) return;
    this.outbound.output(taskId, frame, cursor);
  }

  /**
   * Whether a live frame is left out at the seam of a resumed stream: only when every stream of
   * this socket that carries it is resuming and has it (or will read it). Other streams' frames
   * are never held or dropped.
   */
  private atSeam(kind: 'update' | 'output', taskId: string, cursor: string, frame: Buffer): boolean {
    const seams = this.seams!;
    const keys = kind === 'output' ? [`o:${taskId}`] : this.updates?.has(taskId) ? (this.all ? [`u:${taskId}`, 'all'] : [`u:${taskId}`]) : ['all'];
    const { history } = this.context;
    for (const key of keys) {
      const seam = seams.get(key);
      if (seam === undefined) return false;
      if (!seam.replaying && history.compare(cursor, seam.floor) > 0) {
        // Past the seam: this stream is live now — once no older event can still come (events
        // waiting for their owner's lookup are delivered behind later ones of other tasks).
        if (!history.behind()) this.endSeam(key);
        return false;
      }
    }
    for (const key of keys) {
      const seam = seams.get(key)!;
      if (!seam.replaying || seam.overflowed) continue;
      seam.held.push({ kind, taskId, cursor, frame });
      seam.heldBytes += frame.length;
      if (seam.heldBytes > this.context.limits.backpressure.soft) {
        seam.held = [];
        seam.overflowed = true;
      }
    }
    return true;
  }

  /** A stream unsubscribed: its seam goes too, lest a later subscription find it (a replay in progress keeps its own). */
  private forgetSeam(key: string): void {
    if (this.seams?.get(key)?.replaying === false) this.endSeam(key);
  }

  private endSeam(key: string): void {
    this.seams?.delete(key);
    if (this.seams?.size === 0) this.seams = undefined;
  }

  /** ws closed the socket for a protocol error: this server closed it, with that code. */
  closedForProtocolError(code: number): void {
    if (this.closeCode !== undefined || this.closed) return;
    this.closeCode = code;
    this.context.metrics.closed(code);
  }

  checkStalled(now: number): void {
    this.outbound.checkStalled(now);
  }

  ping(): void {
    if (this.closed) return;
    if (!this.alive) {
      this.log.info('terminating a socket that did not answer the last ping');
      this.terminate();
      return;
    }
    this.alive = false;
    this.socket.ping();
  }

  /**
   * Sends the close frame, frees everything at once, and cuts the connection if the peer has not
   * finished the handshake within `graceMs`.
   */
  close(code: number, reason: string, graceMs?: number): void {
    if (this.closed) return;
    this.closeCode = code;
    this.context.metrics.closed(code);
    this.outbound.flush();
    this.release();
    this.socket.close(code, reason);
    if (graceMs !== undefined) setTimeout(() => this.socket.terminate(), graceMs).unref();
  }

  terminate(): void {
    this.closeCode ??= 1006; // no close frame: cut
    this.release();
    this.socket.terminate();
  }

  isOpen(): boolean {
    return !this.closed;
  }

  /** After re-authentication: the index re-files `subscribeAll`, and tasks no longer visible go. */
  changePrincipal(principal: Principal): void {
    const { index } = this.context;
    const all = this.all;
    index.unsubscribeAll(this);
    this.principal = principal;
    if (all) index.subscribeAll(this);
    const keep = () => {};
    for (const taskId of [...(this.updates ?? [])]) this.withOwner(taskId, keep, () => this.dropUpdates(taskId));
    for (const taskId of [...(this.outputs ?? [])]) this.withOwner(taskId, keep, () => this.dropOutput(taskId));
  }

  /** Ends a task subscription and says so, whether the client asked or its rights changed. */
  private dropUpdates(taskId: string): void {
    this.forgetSeam(`u:${taskId}`);
    this.context.index.unsubscribeUpdates(this, taskId);
    this.ack(encodeAck('unsubscribed', taskId));
  }

  private dropOutput(taskId: string): void {
    this.forgetSeam(`o:${taskId}`);
    this.context.index.unsubscribeOutput(this, taskId);
    this.outbound.forgetOutput(taskId);
    this.ack(encodeAck('outputUnsubscribed', taskId));
  }

  /** Frees everything this socket holds in the index; called once, on close or on error. */
  release(code?: number): void {
    if (this.closed) return;
    this.closed = true;
    this.log.info(
      {
        principal: principalKey(this.principal),
        durationMs: Math.round(performance.now() - this.openedAt),
        framesIn: this.framesIn,
        framesOut: this.framesOut,
        closeCode: this.closeCode ?? code ?? null,
        closedBy: this.closeCode !== undefined ? 'server' : 'client',
      },
      'websocket closed',
    );
    this.outbound.stop();
    this.context.index.remove(this);
    this.context.onClosed(this);
  }

  onFrame(data: RawData, isBinary: boolean): void {
    if (this.closed) return;
    this.framesIn++;
    try {
      if (byteLength(data) > this.context.limits.maxPayload) {
        this.close(CloseCode.MESSAGE_TOO_BIG, 'frame too large');
        return;
      }
      const verdict = this.limiter.take();
      if (verdict !== 'allow') {
        if (verdict === 'close') this.close(CloseCode.POLICY_VIOLATION, 'rate limit exceeded');
        // Not queued behind pending lookups: a flood must not grow that queue.
        else this.reject(ErrorCode.RATE_LIMITED, 'too many frames; this one was ignored');
        return;
      }
      if (isBinary) {
        this.inOrder(() => this.reject(ErrorCode.PARSE_ERROR, 'binary frames are not supported; send JSON as text'));
        return;
      }
      const parsed = parseClientFrame(data.toString());
      this.context.metrics.frameIn(parsed.ok ? parsed.message.type : 'invalid');
      if (!parsed.ok) {
        this.inOrder(() => this.reject(ErrorCode.PARSE_ERROR, parsed.reason));
        return;
      }
      this.handle(parsed.message);
    } catch (error) {
      this.fail(error);
    }
  }

  private handle(message: ClientMessage): void {
    const { index } = this.context;
    switch (message.type) {
      case 'subscribe':
        return this.withOwner(message.taskId, () => {
          if (!this.updates?.has(message.taskId) && !this.roomForOneMore()) return;
          index.subscribeUpdates(this, message.taskId);
          this.ack(encodeAck('subscribed', message.taskId));
          if (message.since !== undefined) return this.resume('subscribe', { kind: 'update', taskId: message.taskId }, message.since);
        });
      case 'subscribeOutput':
        return this.withOwner(message.taskId, () => {
          if (!this.outputs?.has(message.taskId) && !this.roomForOneMore()) return;
          index.subscribeOutput(this, message.taskId);
          this.outbound.startOutput(message.taskId, message.since ?? this.context.history.head());
          this.ack(encodeAck('outputSubscribed', message.taskId));
          if (message.since !== undefined) return this.resume('subscribeOutput', { kind: 'output', taskId: message.taskId }, message.since);
        });
      case 'unsubscribe':
        return this.inOrder(() => this.dropUpdates(message.taskId));
      case 'unsubscribeOutput':
        return this.inOrder(() => this.dropOutput(message.taskId));
      case 'subscribeAll':
        return this.inOrder(() => {
          if (!this.all && !this.roomForOneMore()) return;
          index.subscribeAll(this);
          this.ack(SUBSCRIBED_ALL);
          if (message.since === undefined) return;
          const ownerId = this.principal.admin ? null : this.principal.ownerId;
          return this.resume('subscribeAll', { kind: 'all', ownerId }, message.since);
        });
      case 'unsubscribeAll':
        return this.inOrder(() => {
          this.forgetSeam('all');
          index.unsubscribeAll(this);
          this.ack(UNSUBSCRIBED_ALL);
        });
    }
  }

  private roomForOneMore(): boolean {
    const held = (this.updates?.size ?? 0) + (this.outputs?.size ?? 0) + (this.all ? 1 : 0);
    const max = this.context.limits.maxSubscriptions;
    if (held < max) return true;
    this.reject(ErrorCode.TOO_MANY_SUBSCRIPTIONS, `a connection may hold ${max} subscriptions; unsubscribe first`);
    return false;
  }

  /**
   * Runs `grant` once the task is known to exist and to be visible to this principal, `deny`
   * (by default: a NOT_FOUND error) otherwise.
   */
  private withOwner(taskId: string, grant: Step, deny?: Step): void {
    const decide = (owner: OwnerAnswer): void | Promise<void> => {
      if (this.closed) return;
      if (owner !== NO_SUCH_TASK && canSee(this.principal, owner)) return grant();
      if (deny) deny();
      else this.reject(ErrorCode.NOT_FOUND, `task ${taskId} not found`);
    };
    // Asked of the source every time, never of a remembered answer: an owner change counts at once.
    // The lookup starts now, so that it joins this loop turn's batch; its answer is applied in order.
    const answer = this.context.owners.lookup(taskId);
    const onAnswer = (owner: OwnerAnswer) => this.settle(() => decide(owner));
    const onError = (error: unknown) =>
      this.settle(() => {
        if (!(error instanceof OwnerLookupUnavailableError)) throw error;
        this.log.warn({ err: error.cause, taskId }, 'owner lookup unavailable');
        if (!deny) this.reject(ErrorCode.UNAVAILABLE, 'task ownership could not be checked right now; try again');
        else deny(); // a re-check that cannot be made fails closed
      });
    // Nothing waiting ahead of it (a subscribe storm: one frame per socket): no chain to join.
    this.chain = (this.backlog++ === 0 ? answer : this.chain.then(() => answer)).then(onAnswer, onError);
  }

  /**
   * Sends what a subscription missed since `since`, page by page as the client takes them, then
   * goes live: no gap, no repeat at the seam. The subscription is in the index before the first
   * page is read, so nothing published meanwhile falls between the two; its live frames are left
   * to the pages until a page finds nothing more (see Seam). Other streams stay live throughout.
   */
  private resume(subscription: 'subscribe' | 'subscribeAll' | 'subscribeOutput', stream: ReplayStream, since: string): Promise<void> {
    const key = seamKey(stream);
    const seam: Seam & { replaying: true } = { replaying: true, held: [], heldBytes: 0, overflowed: false };
    (this.seams ??= new Map()).set(key, seam);
    const burst = (this.burst ??= { live: new Set(), tasks: new Map(), all: undefined });
    const taskId = stream.kind === 'all' ? undefined : stream.taskId;
    const { history, metrics, limits } = this.context;
    // Without a replay the client refetches: the stream is live from here.
    const resync = (reason: ResyncReason) => {
      this.endSeam(key);
      // `since` was no usable start: a later `lagged` points at where the live stream began.
      if (subscription === 'subscribeOutput') this.outbound.startOutput(taskId!, history.head());
      this.outbound.control(encodeResyncRequired(subscription, taskId, reason));
      metrics.sent('resyncRequired');
    };
    // `subscribeAll` reads what the principal may see *now*: a re-authentication may change it.
    const current = (): ReplayStream =>
      stream.kind === 'all' ? { kind: 'all', ownerId: this.principal.admin ? null : this.principal.ownerId } : stream;
    const run = async (): Promise<void> => {
      let after = since;
      for (let first = true; ; first = false) {
        seam.held = [];
        seam.heldBytes = 0;
        seam.overflowed = false;
        const page = await history.replayPage(this.principal, current(), after, first);
        if (this.closed) return;
        if ('resync' in page) return resync(page.resync);
        let count = 0;
        for (const frame of page.frames) {
          if (frame.kind === 'update' && this.hasAlready(burst, frame.taskId, frame.cursor)) continue;
          this.outbound.replayed(frame.kind, frame.taskId, frame.frame, frame.cursor);
          count++;
        }
        // A stream replays one kind of event.
        if (count > 0) metrics.sent(stream.kind === 'output' ? 'taskOutput' : 'taskUpdated', count);
        after = page.last;
        if (!page.more && !seam.overflowed) break;
        // The next page is read once the client has taken most of this one: bounded memory per socket.
        await this.outbound.writable(Math.max(1, limits.backpressure.soft >> 1));
        if (this.closed) return;
      }
      // Caught up with the last page's snapshot; what came live while it was read is newer than
      // it (or in it): sent now, in order, and the seam moves past it.
      let floor = history.compare(after, since) > 0 ? after : since;
      for (const held of seam.held) {
        if (history.compare(held.cursor, floor) <= 0) continue;
        floor = held.cursor;
        if (held.kind === 'output') this.outbound.output(held.taskId, held.frame, held.cursor);
        else if (!this.hasAlready(burst, held.taskId, held.cursor)) {
          burst.live.add(held.cursor);
          this.outbound.update(held.taskId, held.frame);
        }
      }
      this.seams!.set(key, { replaying: false, floor });
      if (stream.kind === 'update') burst.tasks.set(stream.taskId, floor);
      else if (stream.kind === 'all') burst.all = floor;
    };
    return run().catch((error: unknown) => {
      if (this.closed) return;
      this.log.warn({ err: error }, 'replay failed; the stream goes on live');
      resync('unavailable');
    });
  }

  /** Whether an update is with the client already, by an earlier stream of this burst. */
  private hasAlready(burst: Burst, taskId: string, cursor: string): boolean {
    if (burst.live.has(cursor)) return true;
    const { history } = this.context;
    const task = burst.tasks.get(taskId);
    if (task !== undefined && history.compare(cursor, task) <= 0) return true;
    return burst.all !== undefined && history.compare(cursor, burst.all) <= 0;
  }

  /** Ends a step that waited: it never throws, so the chain behind it needs no catch. */
  private settle(step: Step): void | Promise<void> {
    let pending: void | Promise<void> = undefined;
    try {
      if (!this.closed) pending = step();
    } catch (error) {
      this.fail(error);
    }
    if (!pending) {
      this.stepDone();
      return;
    }
    return pending.catch((error: unknown) => this.fail(error)).finally(() => {
      this.stepDone();
    });
  }

  /** A step that waited is done; once none waits, the resumes of this burst are over. */
  private stepDone(): void {
    if (--this.backlog === 0) this.burst = undefined;
  }

  /** Runs a step now, or after the steps still waiting on a lookup or a replay. */
  private inOrder(step: Step): void {
    if (this.backlog === 0) {
      const pending = step();
      if (!pending) return;
      // A replay: frames after this one wait for it.
      this.backlog++;
      this.chain = pending.catch((error: unknown) => this.fail(error)).finally(() => {
        this.stepDone();
      });
      return;
    }
    this.backlog++;
    this.chain = this.chain.then(() => this.settle(step));
  }

  private ack(frame: Buffer): void {
    this.context.metrics.sent('ack');
    this.outbound.control(frame);
  }

  private reject(code: ErrorCode, message: string): void {
    this.context.metrics.error(code);
    this.outbound.control(encodeError(code, message));
  }

  /** An unexpected failure costs this socket only, and tells the client nothing about why. */
  private fail(error: unknown): void {
    this.log.error({ err: error }, 'closing websocket after an internal error');
    this.close(CloseCode.INTERNAL_ERROR, 'internal error');
  }
}
