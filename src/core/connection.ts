/**
 * One client socket: reads its frames in order, keeps its subscriptions in the index, and queues
 * the frames headed to it so that everything sent to it in one loop turn leaves in one write.
 */
import type { Socket } from 'node:net';
import type { FastifyBaseLogger } from 'fastify';
import type { RawData, WebSocket } from 'ws';
import { CloseCode, ErrorCode, OwnerLookupUnavailableError } from '../errors.js';
import type { Principal } from '../options.js';
import {
  SUBSCRIBED_ALL,
  UNSUBSCRIBED_ALL,
  encodeAck,
  encodeError,
  parseClientFrame,
} from '../protocol/codec.js';
import type { ClientMessage } from '../protocol/schemas.js';
import { NO_SUCH_TASK, type OwnerAnswer, type OwnerDirectory } from './owners.js';
import { canSee, type Subscriber, type SubscriptionIndex } from './registry.js';

/** Batches the sockets that have frames waiting and writes each of them once per loop turn. */
export class FlushScheduler {
  private dirty: ClientConnection[] = [];
  private scheduled = false;

  mark(connection: ClientConnection): void {
    this.dirty.push(connection);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
  }

  private readonly flush = (): void => {
    const dirty = this.dirty;
    this.dirty = [];
    this.scheduled = false;
    for (const connection of dirty) connection.flush();
  };
}

export interface ConnectionContext {
  index: SubscriptionIndex<ClientConnection>;
  owners: OwnerDirectory;
  scheduler: FlushScheduler;
  /** ws enforces it when the plugin owns the ws server; a host's ws server may allow more. */
  maxPayload: number;
  onClosed(connection: ClientConnection): void;
}

type Step = () => void;

const byteLength = (data: RawData): number =>
  Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : data instanceof ArrayBuffer ? data.byteLength : data.length;

export class ClientConnection implements Subscriber {
  readonly updates = new Set<string>();
  readonly outputs = new Set<string>();
  all = false;
  round = 0;

  private queue: Buffer[] = [];
  private queued = false;
  private closed = false;
  /** Frames whose handling waits on a lookup; later frames wait behind them to keep replies in order. */
  private backlog = 0;
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly socket: WebSocket,
    readonly principal: Principal,
    private readonly context: ConnectionContext,
    private readonly log: FastifyBaseLogger,
  ) {
    // Attached at once: frames that arrive before any await would otherwise be lost.
    socket.on('message', (data, isBinary) => this.onFrame(data, isBinary));
    socket.on('close', () => this.release());
    socket.on('error', (error) => this.log.debug({ err: error }, 'websocket error'));
  }

  enqueue(frame: Buffer): void {
    if (this.closed) return;
    this.queue.push(frame);
    if (!this.queued) {
      this.queued = true;
      this.context.scheduler.mark(this);
    }
  }

  flush(): void {
    this.queued = false;
    const frames = this.queue;
    if (frames.length === 0 || this.closed) return;
    this.queue = [];
    // ws keeps its net.Socket private; corking it makes the frames of this turn one write.
    const raw = (this.socket as unknown as { _socket?: Socket })._socket;
    raw?.cork();
    for (const frame of frames) this.socket.send(frame, { binary: false });
    raw?.uncork();
  }

  close(code: number, reason: string): void {
    if (this.closed) return;
    this.flush();
    this.release();
    this.socket.close(code, reason);
  }

  private release(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.context.index.remove(this);
    this.context.onClosed(this);
  }

  private onFrame(data: RawData, isBinary: boolean): void {
    if (this.closed) return;
    try {
      if (byteLength(data) > this.context.maxPayload) {
        this.close(CloseCode.MESSAGE_TOO_BIG, 'frame too large');
        return;
      }
      if (isBinary) {
        this.inOrder(() => this.reject(ErrorCode.PARSE_ERROR, 'binary frames are not supported; send JSON as text'));
        return;
      }
      const parsed = parseClientFrame(data.toString());
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
          index.subscribeUpdates(this, message.taskId);
          this.enqueue(encodeAck('subscribed', message.taskId));
        });
      case 'subscribeOutput':
        return this.withOwner(message.taskId, () => {
          index.subscribeOutput(this, message.taskId);
          this.enqueue(encodeAck('outputSubscribed', message.taskId));
        });
      case 'unsubscribe':
        return this.inOrder(() => {
          index.unsubscribeUpdates(this, message.taskId);
          this.enqueue(encodeAck('unsubscribed', message.taskId));
        });
      case 'unsubscribeOutput':
        return this.inOrder(() => {
          index.unsubscribeOutput(this, message.taskId);
          this.enqueue(encodeAck('outputUnsubscribed', message.taskId));
        });
      case 'subscribeAll':
        return this.inOrder(() => {
          index.subscribeAll(this);
          this.enqueue(SUBSCRIBED_ALL);
        });
      case 'unsubscribeAll':
        return this.inOrder(() => {
          index.unsubscribeAll(this);
          this.enqueue(UNSUBSCRIBED_ALL);
        });
    }
  }

  /** Runs `grant` once the task is known to exist and to be visible to this principal. */
  private withOwner(taskId: string, grant: Step): void {
    const known = this.context.owners.known(taskId);
    if (known !== undefined) {
      this.inOrder(() => this.decide(taskId, known, grant));
      return;
    }
    // The lookup starts now, so that it joins this loop turn's batch; its answer is applied in order.
    const answer = this.context.owners.lookup(taskId);
    this.backlog++;
    this.chain = this.chain
      .then(() => answer)
      .then(
        (owner) => this.decide(taskId, owner, grant),
        (error: unknown) => {
          if (!(error instanceof OwnerLookupUnavailableError)) throw error;
          this.log.warn({ err: error.cause, taskId }, 'owner lookup unavailable');
          this.reject(ErrorCode.UNAVAILABLE, 'task ownership could not be checked right now; try again');
        },
      )
      .catch((error: unknown) => this.fail(error))
      .finally(() => {
        this.backlog--;
      });
  }

  private decide(taskId: string, owner: OwnerAnswer, grant: Step): void {
    if (this.closed) return;
    if (owner === NO_SUCH_TASK || !canSee(this.principal, owner)) {
      this.reject(ErrorCode.NOT_FOUND, `task ${taskId} not found`);
      return;
    }
    grant();
  }

  /** Runs a step now, or after the steps still waiting on a lookup. */
  private inOrder(step: Step): void {
    if (this.backlog === 0) {
      step();
      return;
    }
    this.backlog++;
    this.chain = this.chain
      .then(() => {
        if (!this.closed) step();
      })
      .catch((error: unknown) => this.fail(error))
      .finally(() => {
        this.backlog--;
      });
  }

  private reject(code: ErrorCode, message: string): void {
    this.enqueue(encodeError(code, message));
  }

  /** An unexpected failure costs this socket only, and tells the client nothing about why. */
  private fail(error: unknown): void {
    this.log.error({ err: error }, 'closing websocket after an internal error');
    this.close(CloseCode.INTERNAL_ERROR, 'internal error');
  }
}
