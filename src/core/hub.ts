/**
 * The broadcast channels host code publishes into, and the pipeline that takes each logged event
 * from the bus, settles its owner and hands it, encoded once, to the subscription index — in log
 * order per task. Replays for `since` are built here too, with the same visibility rules.
 */
import type { FastifyBaseLogger, FastifyRequest } from 'fastify';
import type { TransactionSql } from 'postgres';
import type { WebSocket } from 'ws';
import { authenticateRequest, reauthenticatePrincipal, samePrincipal, type AuthOutcome } from '../auth.js';
import pLimit, { type LimitFunction } from 'p-limit';
import pTimeout from 'p-timeout';
import type { BusEntry, EventBus, LoggedEvent, ReplayStream, ResyncReason } from '../bus/bus.js';
import { CloseCode, MeshBusUnavailableError, MeshPublishError } from '../errors.js';
import type { Principal, ResolvedOptions } from '../options.js';
import type { HubSettings } from './settings.js';
import {
  encodeTaskOutput,
  encodeTaskUpdated,
  toTaskOutputEvent,
  toTaskUpdateEvent,
  type TaskOutputEvent,
  type TaskUpdateEvent,
} from '../protocol/codec.js';
import type { TaskOutputNotification, TaskUpdateNotification } from '../protocol/schemas.js';
import type { DropReason, MeshMetrics } from '../metrics.js';
import { ClientConnection, type ConnectionContext } from './connection.js';
import type { MeshEvents } from './events.js';
import { FlushScheduler } from './outbound.js';
import type { Replayed, ReplayedPage } from './replayed.js';
import { NO_SUCH_TASK, type OwnerDirectory } from './owners.js';
import { SubscriptionIndex, canSee } from './registry.js';

/** An event as in-process listeners see it: validated, ids in lower case, owner settled, logged. */
export type Delivered<E extends { ownerId: unknown }> = Omit<E, 'ownerId'> & { ownerId: string | null; cursor: string };

export interface PublishOptions {
  /**
   * A transaction of the host's (`sql.begin(tx => …)`), with the PostgreSQL bus: the event is
   * written in it, and delivered only if and once it commits (an outbox).
   */
  sql?: TransactionSql<any>;
}

export interface BroadcastChannel<N, E> {
  /**
   * Validates `notification` (throws MeshPublishError at once when it is malformed), logs it on
   * the bus and resolves with its cursor. Memory bus: once it has been handed to this process's
   * sockets. PostgreSQL bus: once it is in the log (committed, or written in `options.sql`);
   * every instance delivers it from there. Rejects with MeshBusUnavailableError when the log
   * cannot be written (the database is unreachable): the event was not published.
   */
  publish(notification: N, options?: PublishOptions): Promise<string>;
  /** In-process consumers; returns the function that removes the listener. */
  subscribe(listener: (event: E) => void): () => void;
}

export type TaskUpdatesChannel = BroadcastChannel<TaskUpdateNotification, Delivered<TaskUpdateEvent>>;
export type TaskOutputChannel = BroadcastChannel<TaskOutputNotification, Delivered<TaskOutputEvent>>;

/** A logged event on its way to the sockets, once its owner is settled. */
interface Pending {
  logged: LoggedEvent;
  owner: string | null | undefined;
  done: () => void;
}

const SETTLED = Promise.resolve();
const REAUTH_CONCURRENCY = 16;
/** A replay page: few enough rows and bytes to read, encode and write without holding up the loop. */
const REPLAY_PAGE_ROWS = 500;
const REPLAY_PAGE_BYTES = 256 * 1024;
/** A page slower than this answers `resyncRequired` `unavailable`. */
const REPLAY_PAGE_TIMEOUT_MS = 10_000;
/** The slow-consumer sweep runs at least this often, so a stalled socket is cut within it of its limit. */
const SWEEP_MS = 1_000;

export class MeshHub {
  readonly index = new SubscriptionIndex<ClientConnection>();
  readonly connections = new Set<ClientConnection>();
  readonly taskUpdates: TaskUpdatesChannel;
  readonly taskOutput: TaskOutputChannel;

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

  /**
   * Per task, while publishes of it wait for their owner (`resolveOwners`): later publishes of
   * the task are logged after them, in publish order.
   */
  private readonly settling = new Map<string, Promise<void>>();
  /** Whether the hub settles a publish's owner before logging it; otherwise the log's own SQL does. */
  private readonly settlesOwners: boolean;
  /** Replay pages read at once, across all sockets. */
  private readonly replayPages: LimitFunction;
  private readonly pageBytes: number;

  constructor(
    private readonly owners: OwnerDirectory,
    private readonly bus: EventBus,
    readonly events: MeshEvents,
    private readonly log: FastifyBaseLogger,
    private readonly settings: HubSettings,
    private readonly auth: Pick<ResolvedOptions, 'authenticate' | 'reauthenticate'>,
    private readonly metrics: MeshMetrics,
  ) {
    this.settlesOwners = settings.settlesOwners;
    this.replayPages = pLimit(settings.replay.concurrency);
    this.pageBytes = Math.max(1, Math.min(REPLAY_PAGE_BYTES, Math.floor(settings.backpressure.soft / 2)));
    this.context = {
      index: this.index,
      history: this,
      owners,
      scheduler: new FlushScheduler(),
      limits: { ...settings.limits, backpressure: settings.backpressure },
      events: this.events,
      metrics,
      onClosed: (c) => this.connections.delete(c),
    };
    this.taskUpdates = {
      publish: (n, o) => this.publish({ kind: 'update', event: toTaskUpdateEvent(n) }, o),
      subscribe: (listener) => listen(this.updateListeners, listener),
    };
    this.taskOutput = {
      publish: (n, o) => this.publish({ kind: 'output', event: toTaskOutputEvent(n) }, o),
      subscribe: (listener) => listen(this.outputListeners, listener),
    };
  }

  /**
   * Starts taking events from the bus, the heartbeat and the re-authentication sweep; the timers
   * never keep the process up.
   */
  async start(): Promise<void> {
    await this.bus.start((events) => this.take(events));
    this.timers.push(
      setInterval(() => {
        for (const connection of this.connections) connection.ping();
      }, this.settings.heartbeat.pingIntervalMs).unref(),
      // A backed-up socket may get no new frame to notice it by: sweep, so that it is cut within
      // a second of its limit.
      setInterval(() => {
        const now = performance.now();
        for (const connection of this.connections) connection.checkStalled(now);
      }, Math.min(SWEEP_MS, this.settings.backpressure.timeoutMs / 2)).unref(),
      setInterval(() => void this.reauthenticate(), this.settings.reauth.intervalMs).unref(),
    );
  }

  listening(): boolean {
    return this.bus.listening();
  }

  heldBackSeconds(): number {
    return this.bus.heldBackSeconds();
  }

  /** Whether logged events are still waiting for their owner's lookup (they may arrive behind newer ones). */
  behind(): boolean {
    return this.pending.size > 0;
  }

  /** Subscriptions held by open sockets, by kind (read at scrape time). */
  subscriptionCounts(): { task: number; all: number; output: number } {
    const counts = { task: 0, all: 0, output: 0 };
    for (const c of this.connections) {
      counts.task += c.updates?.size ?? 0;
      counts.output += c.outputs?.size ?? 0;
      if (c.all) counts.all++;
    }
    return counts;
  }

  attach(socket: WebSocket, principal: Principal, request: FastifyRequest): ClientConnection {
    const kept = this.auth.reauthenticate ? undefined : request;
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

  /** After the sockets: the bus's own connections and timers. */
  async stopBus(): Promise<void> {
    await this.bus.stop();
  }

  /** Where a stream that starts now begins: `lagged` falls back to it before any output was sent. */
  head(): string {
    return this.bus.head();
  }

  compare(a: string, b: string): number {
    return this.bus.compare(a, b);
  }

  /**
   * One page of what a subscription missed after `after`, as frames for `principal`, in log
   * order; `first` checks how far back it reaches (`maxReplay`). Pages are read a few at a time
   * across all sockets (`replayConcurrency`), so that resumes cannot crowd out everyone else.
   */
  async replayPage(principal: Principal, stream: ReplayStream, after: string, first: boolean): Promise<ReplayedPage | { resync: ResyncReason }> {
    if (stream.kind === 'all' && !principal.admin && principal.ownerId === null) return { frames: [], last: after, more: false };
    const limit = first ? this.settings.replay.maxEvents : undefined;
    // Bounded, so that a database gone mute cannot hold the replay slots (and the sockets) forever.
    const page = await this.replayPages(() =>
      pTimeout(this.bus.replay(stream, after, { rows: REPLAY_PAGE_ROWS, bytes: this.pageBytes, limit }), {
        milliseconds: REPLAY_PAGE_TIMEOUT_MS,
        message: `a replay page took longer than ${REPLAY_PAGE_TIMEOUT_MS} ms`,
      }),
    );
    if ('resync' in page) return page;
    // Events logged without a settled owner: one batched lookup for their tasks; a task whose owner
    // cannot be settled is admins-only.
    const looked = new Map<string, string | null>();
    const unknown = new Set(page.events.filter((e) => e.event.ownerId === undefined).map((e) => e.event.taskId));
    await Promise.all(
      [...unknown].map(async (taskId) => {
        const answer = await this.owners.lookup(taskId).catch(() => null);
        looked.set(taskId, answer === NO_SUCH_TASK ? null : answer);
      }),
    );
    const frames: Replayed[] = [];
    for (const e of page.events) {
      const { taskId, ownerId } = e.event;
      if (!canSee(principal, ownerId !== undefined ? ownerId : (looked.get(taskId) ?? null))) continue;
      const frame = this.encode(e);
      if (frame) frames.push({ kind: e.kind, taskId, cursor: e.cursor, frame });
    }
    return { frames, last: page.last, more: page.more };
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
    const { authenticate, reauthenticate } = this.auth;
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
          this.metrics.authFailed('reauthenticate');
          c.close(CloseCode.UNAUTHORIZED, 'credentials no longer valid');
        } else {
          // Not an answer (the auth store may be down): keep the socket rather than drop everyone.
          c.log.warn({ err: outcome.failed }, 're-authentication failed; keeping the socket until the next round');
        }
      }
    };
    await Promise.all(Array.from({ length: REAUTH_CONCURRENCY }, worker));
  }

  private publish(entry: BusEntry, options?: PublishOptions): Promise<string> {
    const sql = options?.sql;
    if (sql !== undefined && !this.settings.transactions) {
      throw new MeshPublishError('publish(notification, { sql }) writes in a transaction: it needs the option bus: "postgres"');
    }
    const { taskId } = entry.event;
    const ahead = this.settling.get(taskId);
    const needsOwner = entry.event.ownerId === undefined && this.settlesOwners;
    if (!ahead && !needsOwner) return this.bus.publish(entry, sql);
    // The owner is settled before the event is logged, from the source itself: every reader then
    // sees the same owner, as of the publish.
    const handed = (ahead ?? SETTLED)
      .then(async () => {
        if (!needsOwner) return;
        const answer = await this.owners.lookup(taskId).catch((error: unknown) => {
          throw new MeshBusUnavailableError(error);
        });
        entry.event.ownerId = answer === NO_SUCH_TASK ? null : answer;
      })
      // Wrapped: the next publish of the task waits for this one to be handed to the bus, not delivered.
      .then(() => ({ logged: this.bus.publish(entry, sql) }));
    const tail = handed.then(noop, noop);
    this.settling.set(taskId, tail);
    void tail.then(() => {
      if (this.settling.get(taskId) === tail) this.settling.delete(taskId);
    });
    return handed.then(({ logged }) => logged);
  }

  /** A logged event that reaches no socket: said once in the log and counted; the rest go on. */
  dropped(reason: DropReason, cursor: string, error: unknown): void {
    this.metrics.droppedEvent(reason);
    this.log.error({ err: error, cursor, reason }, 'skipping a logged event that cannot be delivered; the events after it go on');
  }

  /** The event's frame, or undefined (dropped) when it cannot be encoded. */
  private encode(logged: LoggedEvent): Buffer | undefined {
    try {
      return encodeLogged(logged);
    } catch (error) {
      this.dropped('unencodable', logged.cursor, error);
      return undefined;
    }
  }

  /** The bus's new events, in log order; resolves once all of them have reached the sockets. */
  private take(events: readonly LoggedEvent[]): Promise<void> {
    if (events.length === 1) return this.enqueue({ logged: events[0]!, owner: undefined, done: noop });
    return Promise.all(events.map((logged) => this.enqueue({ logged, owner: undefined, done: noop }))).then(noop);
  }

  private enqueue(item: Pending): Promise<void> {
    const { taskId, ownerId } = item.logged.event;
    item.owner = ownerId;
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

  /** Never throws: whatever one event does, the events after it are delivered. */
  private deliver({ logged }: Pending, owner: string | null): void {
    const { cursor } = logged;
    const frame = this.encode(logged);
    if (!frame) return;
    try {
      if (logged.kind === 'update') {
        this.metrics.delivered('update', this.index.deliverUpdate(logged.event.taskId, owner, frame, cursor), logged.publishedAt);
        if (this.updateListeners.size > 0) notify(this.updateListeners, { ...logged.event, ownerId: owner, cursor }, this.log);
      } else {
        this.metrics.delivered('output', this.index.deliverOutput(logged.event.taskId, owner, frame, cursor), logged.publishedAt);
        if (this.outputListeners.size > 0) notify(this.outputListeners, { ...logged.event, ownerId: owner, cursor }, this.log);
      }
    } catch (error) {
      this.log.error({ err: error, cursor }, 'delivering a logged event failed part-way; the events after it go on');
    }
  }
}

const encodeLogged = (e: LoggedEvent): Buffer =>
  e.kind === 'update' ? encodeTaskUpdated(e.event, e.cursor) : encodeTaskOutput(e.event, e.cursor);

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
