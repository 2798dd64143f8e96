/**
 * One client socket: admits its frames within their budget, answers each in order, keeps its
 * subscriptions in the index, and hands what it must send to its outbound queue. It knows the
 * socket only as a ClientSocket (src/core/ports.ts); the adapter calls its SocketListener methods.
 */
import type { ReplayStream } from '../bus/bus.js';
import type { ClientMessage } from '../protocol/schemas.js';
import { parseClientFrame } from '../protocol/codec.js';
import { CloseCode, ErrorCode, OwnerLookupUnavailableError } from '../errors.js';
import type { MeshEvents } from './events.js';
import type { FlushScheduler } from './flush-scheduler.js';
import type { Frames } from './frames.js';
import type { History } from './history-types.js';
import { Outbound, type BackpressureLimits, type BackpressureObserver } from './outbound.js';
import { NO_SUCH_TASK, type OwnerAnswer, type OwnerDirectory } from './owners.js';
import type { ClientSocket, Logger, MetricsSink, Principal, SocketListener } from './ports.js';
import { canSee, principalKey } from './principal.js';
import { FrameRateLimiter } from './rate-limit.js';
import { ResumeSeams } from './resume.js';
import type { SessionLimits } from './settings.js';
import { StepQueue, type Step } from './step-queue.js';
import type { BatchShare, Subscriber, SubscriptionIndex } from './subscription-index.js';

export interface ConnectionContext {
  index: SubscriptionIndex<ClientConnection>;
  history: History;
  owners: OwnerDirectory;
  scheduler: FlushScheduler;
  frames: Frames;
  limits: SessionLimits;
  backpressure: BackpressureLimits;
  events: MeshEvents;
  metrics: MetricsSink;
  /**
   * Connections backed up over the soft limit, from `backedUp` until they catch up or close: the
   * slow-consumer sweep checks these, not every socket every second.
   */
  backedUp: Set<ClientConnection>;
  /** The connection is closed and holds nothing any more. */
  onClosed(connection: ClientConnection): void;
}

/** A socket's place under the connection limits (src/auth/admission.ts): given back once it is closed. */
export interface Place {
  release(): void;
}

/** How long a socket closed for being slow gets to take its close frame before it is cut. */
const SLOW_CLOSE_GRACE_MS = 1_000;

export class ClientConnection implements Subscriber, BackpressureObserver, SocketListener {
  updates: Set<string> | undefined = undefined;
  outputs: Set<string> | undefined = undefined;
  all = false;
  round = 0;
  batch = 0;
  taken = 0;
  /** Cleared by each ping, set by the pong: false at the next ping means the peer is gone. */
  private alive = true;

  private readonly outbound: Outbound;
  private readonly limiter: FrameRateLimiter;
  private readonly steps: StepQueue;
  /** Made on the first `since`: most sockets never resume. */
  private resumes: ResumeSeams | undefined;
  private closed = false;
  // For the close log line.
  private readonly openedAt = performance.now();
  private framesIn = 0;
  private framesOut = 0;
  /** The close code this server sent, if it closed the socket. */
  private closeCode: number | undefined;

  constructor(
    readonly socket: ClientSocket,
    public principal: Principal,
    /** The upgrade request's logger: its lines carry the request id. */
    readonly log: Logger,
    /** The upgrade request, kept for re-authentication only when the host gives no `reauthenticate`. */
    readonly request: unknown,
    private readonly context: ConnectionContext,
    private readonly place?: Place,
  ) {
    const { limits } = context;
    this.limiter = new FrameRateLimiter(limits.maxFramesPerSecond, limits.frameBurst, limits.floodCloseAfterMs);
    this.outbound = new Outbound(socket, context.backpressure, context.scheduler, context.frames, this);
    this.steps = new StepQueue(this);
    this.log.info({ principal: principalKey(principal) }, 'websocket open');
  }

  // StepQueueHooks, BackpressureObserver and SocketListener: methods rather than closures, since
  // there is one connection per socket and sockets are many.

  running(): boolean {
    return !this.closed;
  }

  /** An unexpected failure costs this socket only, and tells the client nothing about why. */
  failed(error: unknown): void {
    this.log.error({ err: error }, 'closing websocket after an internal error');
    this.close(CloseCode.INTERNAL_ERROR, 'internal error');
  }

  idle(): void {
    this.resumes?.burstOver();
    this.dropResumesIfDone();
  }

  /**
   * Once its seams are all behind it, a socket that resumed goes back to the path of one that
   * never did: whole batches at once, no check per frame.
   */
  private dropResumesIfDone(): void {
    if (this.resumes?.done()) this.resumes = undefined;
  }

  backedUp(): void {
    if (!this.closed) this.context.backedUp.add(this);
    this.context.events.emit('backedUp');
  }

  caughtUp(superseded: number, lagged: ReadonlyMap<string, number>): void {
    this.context.backedUp.delete(this);
    if (lagged.size > 0) this.context.metrics.sent('lagged', lagged.size);
    const caughtUp = { superseded, lagged };
    this.context.events.emit('caughtUp', caughtUp);
    this.context.events.emit('drained', caughtUp);
  }

  wrote(bytes: number, frames: number): void {
    this.framesOut += frames;
    this.context.metrics.written(bytes);
  }

  slow(why: 'buffer' | 'timeout'): void {
    this.log.warn({ why, pendingBytes: this.socket.bufferedAmount() }, 'closing a slow consumer');
    this.context.events.emit('slowConsumer', { why });
    this.close(CloseCode.SLOW_CONSUMER, 'slow consumer', SLOW_CLOSE_GRACE_MS);
  }

  pong(): void {
    this.alive = true;
  }

  writable(): void {
    this.outbound.socketWritable();
  }

  /** The socket library closed the socket for a protocol error: this server closed it, with that code. */
  protocolError(code: number): void {
    if (this.closeCode !== undefined || this.closed) return;
    this.closeCode = code;
    this.context.metrics.closed(code);
  }

  socketClosed(code: number | undefined): void {
    this.dispose(code);
    // Not on dispose: a socket this server closes holds its file until the peer has answered.
    this.place?.release();
  }

  frame(data: Buffer, text: boolean): void {
    if (this.closed) return;
    this.framesIn++;
    try {
      if (data.length > this.context.limits.maxPayload) {
        this.close(CloseCode.MESSAGE_TOO_BIG, 'frame too large');
        return;
      }
      const verdict = this.limiter.take();
      if (verdict !== 'allow') {
        if (verdict === 'close') this.close(CloseCode.POLICY_VIOLATION, 'rate limit exceeded');
        // Not queued behind waiting steps: a flood must not grow that queue.
        else this.reject(ErrorCode.RATE_LIMITED, 'too many frames; this one was ignored');
        return;
      }
      if (!text) {
        this.steps.run(() => this.reject(ErrorCode.PARSE_ERROR, 'binary frames are not supported; send JSON as text'));
        return;
      }
      const parsed = parseClientFrame(data.toString());
      this.context.metrics.frameIn(parsed.ok ? parsed.message.type : 'invalid');
      if (!parsed.ok) {
        const { reason } = parsed;
        this.steps.run(() => this.reject(ErrorCode.PARSE_ERROR, reason));
        return;
      }
      this.handle(parsed.message);
    } catch (error) {
      this.failed(error);
    }
  }

  // Subscriber: what the index hands this socket.

  sendUpdate(taskId: string, frame: Buffer, cursor: string): void {
    const resumes = this.resumes;
    if (resumes !== undefined) {
      if (resumes.takesLive('update', taskId, cursor, frame)) return;
      resumes.sentLive(cursor);
      this.dropResumesIfDone();
    }
    this.outbound.update(taskId, frame);
  }

  sendUpdates(share: BatchShare, from: number, to: number, bytes: number): void {
    // A resuming socket decides frame by frame what its replays hold back.
    if (this.resumes === undefined) this.outbound.updates(share, from, to, bytes);
    else for (let i = from; i < to; i++) this.sendUpdate(share.taskIds[i]!, share.frames[i]!, share.cursors[i]!);
  }

  sendOutput(taskId: string, frame: Buffer, cursor: string): void {
    if (this.resumes !== undefined) {
      if (this.resumes.takesLive('output', taskId, cursor, frame)) return;
      this.dropResumesIfDone();
    }
    this.outbound.output(taskId, frame, cursor);
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
   * Sends what is queued, then the close frame behind it; frees everything at once, and cuts the
   * connection if the peer has not finished the handshake within `graceMs`.
   */
  close(code: number, reason: string, graceMs?: number): void {
    if (this.closed) return;
    this.closeCode = code;
    this.context.metrics.closed(code);
    this.outbound.flush();
    this.dispose();
    this.socket.close(code, reason);
    if (graceMs !== undefined) setTimeout(() => this.socket.terminate(), graceMs).unref();
  }

  terminate(): void {
    this.closeCode ??= 1006; // no close frame: cut
    this.dispose();
    this.socket.terminate();
  }

  isOpen(): boolean {
    return !this.closed;
  }

  lostSight(subscription: 'subscribe' | 'subscribeOutput', taskId: string): void {
    this.steps.run(() => (subscription === 'subscribe' ? this.dropUpdates(taskId) : this.dropOutput(taskId)));
  }

  /** After re-authentication: the index re-files `subscribeAll`, and tasks no longer visible go. */
  changePrincipal(principal: Principal): void {
    const { index } = this.context;
    const all = this.all;
    index.unsubscribeAll(this);
    this.principal = principal;
    if (all) index.subscribeAll(this);
    const keep = () => {};
    // Re-checked in order, behind what waits (a since-subscribe's own check may have refused it meanwhile).
    for (const taskId of [...(this.updates ?? [])])
      this.withOwner(taskId, keep, () => (this.updates?.has(taskId) ? this.dropUpdates(taskId) : undefined));
    for (const taskId of [...(this.outputs ?? [])])
      this.withOwner(taskId, keep, () => (this.outputs?.has(taskId) ? this.dropOutput(taskId) : undefined));
  }

  /** Frees everything this socket holds in the index; once, on close or when the socket is gone. */
  private dispose(code?: number): void {
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
    this.context.backedUp.delete(this);
    this.context.index.remove(this);
    this.context.onClosed(this);
  }

  private handle(message: ClientMessage): void {
    const { index, frames } = this.context;
    switch (message.type) {
      case 'subscribe':
        if (message.since !== undefined && !this.updates?.has(message.taskId))
          return this.steps.run(() => this.resumeNew('subscribe', message.taskId, message.since!));
        return this.withOwner(message.taskId, () => {
          if (!this.updates?.has(message.taskId) && !this.roomForOneMore()) return;
          index.subscribeUpdates(this, message.taskId);
          this.ack(frames.ack('subscribed', message.taskId));
          if (message.since !== undefined)
            return this.seams().resume('subscribe', { kind: 'update', taskId: message.taskId }, message.since);
        });
      case 'subscribeOutput':
        if (message.since !== undefined && !this.outputs?.has(message.taskId))
          return this.steps.run(() => this.resumeNew('subscribeOutput', message.taskId, message.since!));
        return this.withOwner(message.taskId, () => {
          if (!this.outputs?.has(message.taskId) && !this.roomForOneMore()) return;
          index.subscribeOutput(this, message.taskId);
          this.outbound.startOutput(message.taskId, message.since ?? this.context.history.head());
          this.ack(frames.ack('outputSubscribed', message.taskId));
          if (message.since !== undefined)
            return this.seams().resume('subscribeOutput', { kind: 'output', taskId: message.taskId }, message.since);
        });
      case 'unsubscribe':
        return this.steps.run(() => this.dropUpdates(message.taskId));
      case 'unsubscribeOutput':
        return this.steps.run(() => this.dropOutput(message.taskId));
      case 'subscribeAll':
        return this.steps.run(() => {
          if (!this.all && !this.roomForOneMore()) return;
          index.subscribeAll(this);
          this.ack(frames.subscribedAll);
          if (message.since === undefined) return;
          const ownerId = this.principal.admin ? null : this.principal.ownerId;
          return this.seams().resume('subscribeAll', { kind: 'all', ownerId }, message.since);
        });
      case 'unsubscribeAll':
        return this.steps.run(() => {
          this.resumes?.forget('all');
          index.unsubscribeAll(this);
          this.ack(frames.unsubscribedAll);
        });
    }
  }

  /**
   * A new task subscription with `since` (a reconnecting client's): one owner lookup, the one its
   * first page makes once read, rather than one before and one after the read. Until it grants the
   * subscription, the stream's live frames wait in its seam and nothing of it goes out; then the
   * ack goes out with the first replayed events. Refused, the subscription is undone, as if never made.
   */
  private resumeNew(subscription: 'subscribe' | 'subscribeOutput', taskId: string, since: string): Promise<void> | undefined {
    if (!this.roomForOneMore()) return undefined;
    const { index, frames } = this.context;
    const updates = subscription === 'subscribe';
    if (updates) index.subscribeUpdates(this, taskId);
    else index.subscribeOutput(this, taskId);
    const stream: ReplayStream = { kind: updates ? 'update' : 'output', taskId };
    return this.seams().resume(subscription, stream, since, {
      granted: () => {
        if (!updates) this.outbound.startOutput(taskId, since);
        this.ack(frames.ack(updates ? 'subscribed' : 'outputSubscribed', taskId));
      },
      refused: (why, error) => {
        if (updates) index.unsubscribeUpdates(this, taskId);
        else index.unsubscribeOutput(this, taskId);
        if (why === 'hidden') this.notFound(taskId);
        else this.ownerUnavailable(taskId, error);
      },
    });
  }

  private seams(): ResumeSeams {
    const { history, frames, metrics, backpressure } = this.context;
    this.resumes ??= new ResumeSeams(
      this,
      history,
      this.outbound,
      frames,
      metrics,
      { asideBytes: backpressure.soft, pageRoom: Math.max(1, backpressure.soft >> 1) },
      (error) => this.log.warn({ err: error }, 'replay failed; the stream goes on live'),
    );
    return this.resumes;
  }

  /** Ends a task subscription and says so, whether the client asked or its rights changed. */
  private dropUpdates(taskId: string): void {
    this.resumes?.forget(`u:${taskId}`);
    this.context.index.unsubscribeUpdates(this, taskId);
    this.ack(this.context.frames.ack('unsubscribed', taskId));
  }

  private dropOutput(taskId: string): void {
    this.resumes?.forget(`o:${taskId}`);
    this.context.index.unsubscribeOutput(this, taskId);
    this.outbound.forgetOutput(taskId);
    this.ack(this.context.frames.ack('outputUnsubscribed', taskId));
  }

  private roomForOneMore(): boolean {
    const count = (this.updates?.size ?? 0) + (this.outputs?.size ?? 0) + (this.all ? 1 : 0);
    const max = this.context.limits.maxSubscriptions;
    if (count < max) return true;
    this.reject(ErrorCode.TOO_MANY_SUBSCRIPTIONS, `a connection may hold ${max} subscriptions; unsubscribe first`);
    return false;
  }

  /**
   * Runs `grant` once the task is known to exist and to be visible to this principal, `deny`
   * (by default: a NOT_FOUND error) otherwise.
   */
  private withOwner(taskId: string, grant: Step, deny?: Step): void {
    // Asked of the source every time, never of a remembered answer: an owner change counts at once.
    // The lookup starts now, so that it joins this loop turn's batch; its answer is applied in order.
    this.steps.await(
      this.context.owners.lookup(taskId),
      (owner: OwnerAnswer) => {
        if (owner !== NO_SUCH_TASK && canSee(this.principal, owner)) return grant();
        if (deny) return deny();
        this.notFound(taskId);
      },
      (error: unknown) => {
        if (!(error instanceof OwnerLookupUnavailableError)) throw error;
        if (!deny) return this.ownerUnavailable(taskId, error);
        this.log.warn({ err: error.cause, taskId }, 'owner lookup unavailable');
        return deny(); // a re-check that cannot be made fails closed
      },
    );
  }

  /** A task that is not there and one that is not the principal's get the same answer. */
  private notFound(taskId: string): void {
    this.reject(ErrorCode.NOT_FOUND, `task ${taskId} not found`);
  }

  private ownerUnavailable(taskId: string, error: OwnerLookupUnavailableError | undefined): void {
    this.log.warn({ err: error?.cause, taskId }, 'owner lookup unavailable');
    this.reject(ErrorCode.UNAVAILABLE, 'task ownership could not be checked right now; try again');
  }

  private ack(frame: Buffer): void {
    this.context.metrics.sent('ack');
    this.outbound.control(frame);
  }

  private reject(code: ErrorCode, message: string): void {
    this.context.metrics.error(code);
    this.outbound.control(this.context.frames.error(code, message));
  }
}
