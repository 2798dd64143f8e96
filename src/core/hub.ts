/**
 * The broadcast channels host code publishes into, and the pipeline that settles each event's
 * owner and hands it, encoded once, to the subscription index — in publish order.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { WebSocket } from 'ws';
import type { Principal } from '../options.js';
import {
  encodeTaskOutput,
  encodeTaskUpdated,
  toTaskOutputEvent,
  toTaskUpdateEvent,
  type TaskOutputEvent,
  type TaskUpdateEvent,
} from '../protocol/codec.js';
import type { TaskOutputNotification, TaskUpdateNotification } from '../protocol/schemas.js';
import { ClientConnection, FlushScheduler } from './connection.js';
import { NO_SUCH_TASK, type OwnerDirectory } from './owners.js';
import { SubscriptionIndex } from './registry.js';

/** An event as in-process listeners see it: validated, ids in lower case, owner settled. */
export type Delivered<E extends { ownerId: unknown }> = Omit<E, 'ownerId'> & { ownerId: string | null };

export interface BroadcastChannel<N, E> {
  /**
   * Validates `notification` (throws MeshPublishError at once when it is malformed) and delivers
   * it to every socket allowed to see it. The promise settles once it has been handed to them;
   * it never rejects.
   */
  publish(notification: N): Promise<void>;
  /** In-process consumers; returns the function that removes the listener. */
  subscribe(listener: (event: E) => void): () => void;
}

export type TaskUpdatesChannel = BroadcastChannel<TaskUpdateNotification, Delivered<TaskUpdateEvent>>;
export type TaskOutputChannel = BroadcastChannel<TaskOutputNotification, Delivered<TaskOutputEvent>>;

type Pending =
  | { kind: 'update'; event: TaskUpdateEvent; owner: string | null | undefined; done: () => void }
  | { kind: 'output'; event: TaskOutputEvent; owner: string | null | undefined; done: () => void };

const SETTLED = Promise.resolve();

export class MeshHub {
  readonly index = new SubscriptionIndex<ClientConnection>();
  readonly connections = new Set<ClientConnection>();
  readonly taskUpdates: TaskUpdatesChannel;
  readonly taskOutput: TaskOutputChannel;

  private readonly scheduler = new FlushScheduler();
  private readonly updateListeners = new Set<(event: Delivered<TaskUpdateEvent>) => void>();
  private readonly outputListeners = new Set<(event: Delivered<TaskOutputEvent>) => void>();
  /** Events waiting for their owner, and every event published after them. */
  private readonly pending: Pending[] = [];

  constructor(
    private readonly owners: OwnerDirectory,
    private readonly log: FastifyBaseLogger,
    private readonly maxPayload: number,
  ) {
    this.taskUpdates = {
      publish: (n) => this.enqueue({ kind: 'update', event: toTaskUpdateEvent(n), owner: undefined, done: noop }),
      subscribe: (listener) => listen(this.updateListeners, listener),
    };
    this.taskOutput = {
      publish: (n) => this.enqueue({ kind: 'output', event: toTaskOutputEvent(n), owner: undefined, done: noop }),
      subscribe: (listener) => listen(this.outputListeners, listener),
    };
  }

  attach(socket: WebSocket, principal: Principal, log: FastifyBaseLogger): ClientConnection {
    const connection = new ClientConnection(
      socket,
      principal,
      {
        index: this.index,
        owners: this.owners,
        scheduler: this.scheduler,
        maxPayload: this.maxPayload,
        onClosed: (c) => this.connections.delete(c),
      },
      log,
    );
    this.connections.add(connection);
    return connection;
  }

  closeAll(code: number, reason: string): void {
    for (const connection of [...this.connections]) connection.close(code, reason);
  }

  private enqueue(item: Pending): Promise<void> {
    const { taskId, ownerId } = item.event;
    if (ownerId !== undefined) this.owners.remember(taskId, ownerId);
    item.owner = ownerId !== undefined ? ownerId : this.owners.known(taskId);
    if (item.owner !== undefined && this.pending.length === 0) {
      this.deliver(item, item.owner);
      return SETTLED;
    }
    const settled = new Promise<void>((resolve) => {
      item.done = resolve;
    });
    this.pending.push(item);
    if (item.owner === undefined) {
      this.owners.lookup(taskId).then(
        (answer) => {
          // An unknown task has no owner anyone could match: admins only, never fail open.
          item.owner = answer === NO_SUCH_TASK ? null : answer;
          this.drain();
        },
        (error: unknown) => {
          this.log.warn({ err: error, taskId }, 'owner lookup failed; delivering to admins only');
          item.owner = null;
          this.drain();
        },
      );
    }
    return settled;
  }

  private drain(): void {
    while (this.pending.length > 0) {
      const head = this.pending[0]!;
      if (head.owner === undefined) return;
      this.pending.shift();
      this.deliver(head, head.owner);
      head.done();
    }
  }

  private deliver(item: Pending, owner: string | null): void {
    if (item.kind === 'update') {
      this.index.deliverUpdate(item.event.taskId, owner, encodeTaskUpdated(item.event));
      if (this.updateListeners.size > 0) notify(this.updateListeners, { ...item.event, ownerId: owner }, this.log);
    } else {
      this.index.deliverOutput(item.event.taskId, owner, encodeTaskOutput(item.event));
      if (this.outputListeners.size > 0) notify(this.outputListeners, { ...item.event, ownerId: owner }, this.log);
    }
  }
}

function noop(): void {}

function listen<T>(set: Set<T>, listener: T): () => void {
  set.add(listener);
  return () => {
    set.delete(listener);
  };
}

/** A throwing listener is the host's bug; it must not stop delivery to sockets or other listeners. */
function notify<E>(listeners: Set<(event: E) => void>, event: E, log: FastifyBaseLogger): void {
  for (const listener of listeners) {
    try {
      listener(event);
    } catch (error) {
      log.error({ err: error }, 'mesh channel listener threw');
    }
  }
}
