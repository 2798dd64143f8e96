/**
 * The broadcast channels host code publishes into, and the pipeline that settles each event's
 * owner and hands it, encoded once, to the subscription index — in publish order.
 */
import type { FastifyBaseLogger, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { authenticateRequest, reauthenticatePrincipal, samePrincipal, type AuthOutcome } from '../auth.js';
import { CloseCode } from '../errors.js';
import type { Principal, ResolvedOptions } from '../options.js';
import {
  encodeTaskOutput,
  encodeTaskUpdated,
  toTaskOutputEvent,
  toTaskUpdateEvent,
  type TaskOutputEvent,
  type TaskUpdateEvent,
} from '../protocol/codec.js';
import type { TaskOutputNotification, TaskUpdateNotification } from '../protocol/schemas.js';
import { ClientConnection, type ConnectionContext } from './connection.js';
import { MeshEvents } from './events.js';
import { FlushScheduler } from './outbound.js';
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
const REAUTH_CONCURRENCY = 16;

export class MeshHub {
  readonly index = new SubscriptionIndex<ClientConnection>();
  readonly connections = new Set<ClientConnection>();
  readonly taskUpdates: TaskUpdatesChannel;
  readonly taskOutput: TaskOutputChannel;

  readonly events = new MeshEvents();
  private readonly context: ConnectionContext;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly updateListeners = new Set<(event: Delivered<TaskUpdateEvent>) => void>();
  private readonly outputListeners = new Set<(event: Delivered<TaskOutputEvent>) => void>();
  private reauthenticating = false;
  /**
   * Per task: an event waiting for its owner, and the events of that task published after it.
   * Per task, so that a slow lookup (a database outage) holds up that task only.
   */
  private readonly pending = new Map<string, Pending[]>();

  constructor(
    private readonly owners: OwnerDirectory,
    private readonly log: FastifyBaseLogger,
    private readonly options: ResolvedOptions,
  ) {
    this.context = {
      index: this.index,
      owners,
      scheduler: new FlushScheduler(),
      limits: {
        maxPayload: options.maxPayload,
        maxSubscriptions: options.maxSubscriptionsPerConnection,
        maxFramesPerSecond: options.maxFramesPerSecond,
        frameBurst: options.frameBurst,
        floodCloseAfterMs: options.floodCloseAfterMs,
        backpressure: {
          soft: options.softBufferLimit,
          hard: options.hardBufferLimit,
          timeoutMs: options.slowConsumerTimeoutMs,
        },
      },
      events: this.events,
      onClosed: (c) => this.connections.delete(c),
    };
    this.taskUpdates = {
      publish: (n) => this.enqueue({ kind: 'update', event: toTaskUpdateEvent(n), owner: undefined, done: noop }),
      subscribe: (listener) => listen(this.updateListeners, listener),
    };
    this.taskOutput = {
      publish: (n) => this.enqueue({ kind: 'output', event: toTaskOutputEvent(n), owner: undefined, done: noop }),
      subscribe: (listener) => listen(this.outputListeners, listener),
    };
  }

  /** Starts the heartbeat and the re-authentication sweep; their timers never keep the process up. */
  start(): void {
    this.timers.push(
      setInterval(() => {
        for (const connection of this.connections) connection.ping();
      }, this.options.pingIntervalMs).unref(),
      // A backed-up socket may get no new frame to notice it by: sweep, at twice the limit's rate.
      setInterval(() => {
        const now = performance.now();
        for (const connection of this.connections) connection.checkStalled(now);
      }, this.options.slowConsumerTimeoutMs / 2).unref(),
      setInterval(() => void this.reauthenticate(), this.options.reauthIntervalMs).unref(),
    );
  }

  attach(socket: WebSocket, principal: Principal, request: FastifyRequest): ClientConnection {
    const kept = this.options.reauthenticate ? undefined : request;
    const connection = new ClientConnection(socket, principal, request.log, kept, this.context);
    this.connections.add(connection);
    return connection;
  }

  /**
   * Closes every socket with 1001 and waits for their close handshakes, at most `timeoutMs`;
   * whatever is left then is cut.
   */
  async shutdown(timeoutMs: number): Promise<void> {
    for (const timer of this.timers.splice(0)) clearInterval(timer);
    const connections = [...this.connections];
    const sockets = connections.map((c) => c.socket);
    for (const connection of connections) connection.close(CloseCode.GOING_AWAY, 'server shutting down');
    if (sockets.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(sockets.filter((s) => s.readyState !== s.CLOSED).map((s) => new Promise((resolve) => s.once('close', resolve)))),
      new Promise((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    for (const socket of sockets) if (socket.readyState !== socket.CLOSED) socket.terminate();
  }

  /** Authenticates every open socket again, a few at a time; one sweep at a time. */
  async reauthenticate(): Promise<void> {
    if (this.reauthenticating) return;
    this.reauthenticating = true;
    try {
      await this.reauthenticateAll();
    } finally {
      this.reauthenticating = false;
    }
  }

  private async reauthenticateAll(): Promise<void> {
    const queue = [...this.connections];
    const { authenticate, reauthenticate } = this.options;
    // Sockets of one principal share one check per sweep.
    const answers = new Map<string, Promise<AuthOutcome>>();
    const check = (c: ClientConnection): Promise<AuthOutcome> => {
      if (!reauthenticate) return authenticateRequest(authenticate, c.request!);
      const key = JSON.stringify([c.principal.ownerId, c.principal.admin, c.principal.id]);
      let answer = answers.get(key);
      if (!answer) answers.set(key, (answer = reauthenticatePrincipal(reauthenticate, c.principal, this.log)));
      return answer;
    };
    const worker = async () => {
      for (let c = queue.pop(); c; c = queue.pop()) {
        if (!c.isOpen()) continue;
        const outcome = await check(c);
        if (!c.isOpen()) continue;
        if ('principal' in outcome) {
          if (!samePrincipal(outcome.principal, c.principal)) {
            c.log.info('principal changed on re-authentication; re-checking its subscriptions');
            c.changePrincipal(outcome.principal);
          }
        } else if ('refused' in outcome) {
          c.log.info('credentials no longer valid; closing with 4401');
          c.close(CloseCode.UNAUTHORIZED, 'credentials no longer valid');
        } else {
          // Not an answer (the auth store may be down): keep the socket rather than drop everyone.
          c.log.warn({ err: outcome.failed }, 're-authentication failed; keeping the socket until the next round');
        }
      }
    };
    await Promise.all(Array.from({ length: REAUTH_CONCURRENCY }, worker));
  }

  private enqueue(item: Pending): Promise<void> {
    const { taskId, ownerId } = item.event;
    if (ownerId !== undefined) this.owners.remember(taskId, ownerId);
    item.owner = ownerId !== undefined ? ownerId : this.owners.known(taskId);
    const queue = this.pending.get(taskId);
    if (item.owner !== undefined && !queue) {
      this.deliver(item, item.owner);
      return SETTLED;
    }
    const settled = new Promise<void>((resolve) => {
      item.done = resolve;
    });
    if (queue) queue.push(item);
    else this.pending.set(taskId, [item]);
    if (item.owner === undefined) {
      this.owners.lookup(taskId).then(
        (answer) => {
          // An unknown task has no owner anyone could match: admins only, never fail open.
          item.owner = answer === NO_SUCH_TASK ? null : answer;
          this.drain(taskId);
        },
        (error: unknown) => {
          this.log.warn({ err: error, taskId }, 'owner lookup failed; delivering to admins only');
          item.owner = null;
          this.drain(taskId);
        },
      );
    }
    return settled;
  }

  /** Delivers a task's waiting events up to the first whose owner is still being looked up. */
  private drain(taskId: string): void {
    const queue = this.pending.get(taskId);
    if (!queue) return;
    while (queue.length > 0) {
      const head = queue[0]!;
      if (head.owner === undefined) return;
      queue.shift();
      this.deliver(head, head.owner);
      head.done();
    }
    this.pending.delete(taskId);
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
