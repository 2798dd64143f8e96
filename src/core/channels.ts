/**
 * The broadcast channels host code publishes into (`app.mesh.taskUpdates`, `app.mesh.taskOutput`):
 * each publish is validated, its owner settled when the hub settles owners, and logged on the bus,
 * in publish order per task. In-process listeners hear every delivered event.
 */
import type { BusEntry, EventBus, LoggedEvent } from '../bus/bus.js';
import { MeshBusUnavailableError, MeshPublishError } from '../errors.js';
import { toTaskOutputEvent, toTaskUpdateEvent, type TaskOutputEvent, type TaskUpdateEvent } from '../protocol/codec.js';
import type { TaskOutputNotification, TaskUpdateNotification } from '../protocol/schemas.js';
import type { DeliveryListeners } from './delivery.js';
import { NO_SUCH_TASK, type OwnerDirectory } from './owners.js';
import type { Logger } from './ports.js';
import { SETTLED } from './settled.js';

/** An event as in-process listeners see it: validated, ids in lower case, owner settled, logged. */
export type Delivered<E extends { ownerId: unknown }> = Omit<E, 'ownerId'> & { ownerId: string | null; cursor: string };

export interface PublishOptions<Transaction = unknown> {
  /**
   * A transaction of the host's (`sql.begin(tx => …)`), with the PostgreSQL bus: the event is
   * written in it, and delivered only if and once it commits (an outbox).
   */
  sql?: Transaction;
}

export interface BroadcastChannel<N, E, Transaction = unknown> {
  /**
   * Validates `notification` (throws MeshPublishError at once when it is malformed), logs it on
   * the bus and resolves with its cursor. Memory bus: once it has been handed to this process's
   * sockets. PostgreSQL bus: once it is in the log (committed, or written in `options.sql`);
   * every instance delivers it from there. Rejects with MeshBusUnavailableError when the log
   * cannot be written (the database is unreachable): the event was not published.
   */
  publish(notification: N, options?: PublishOptions<Transaction>): Promise<string>;
  /** In-process consumers; returns the function that removes the listener. */
  subscribe(listener: (event: E) => void): () => void;
}

export type TaskUpdatesChannel<Transaction = unknown> = BroadcastChannel<TaskUpdateNotification, Delivered<TaskUpdateEvent>, Transaction>;
export type TaskOutputChannel<Transaction = unknown> = BroadcastChannel<TaskOutputNotification, Delivered<TaskOutputEvent>, Transaction>;

export interface ChannelSettings {
  /** Whether the channels settle a publish's owner before logging it; otherwise the log's own SQL does. */
  settlesOwners: boolean;
  /** Whether `publish(n, { sql })` is possible: the bus writes in the host's transaction. */
  transactions: boolean;
}

function noop(): void {}

export class Channels implements DeliveryListeners {
  readonly taskUpdates: TaskUpdatesChannel;
  readonly taskOutput: TaskOutputChannel;
  private readonly updateListeners = new Set<(event: Delivered<TaskUpdateEvent>) => void>();
  private readonly outputListeners = new Set<(event: Delivered<TaskOutputEvent>) => void>();
  /**
   * Per task, while publishes of it wait for their owner: later publishes of the task are logged
   * after them, in publish order.
   */
  private readonly settling = new Map<string, Promise<void>>();

  constructor(
    private readonly bus: EventBus,
    private readonly owners: OwnerDirectory,
    private readonly settings: ChannelSettings,
    private readonly log: Logger,
  ) {
    this.taskUpdates = {
      publish: (n, o) => this.publish({ kind: 'update', event: toTaskUpdateEvent(n) }, o),
      subscribe: (listener) => listen(this.updateListeners, listener),
    };
    this.taskOutput = {
      publish: (n, o) => this.publish({ kind: 'output', event: toTaskOutputEvent(n) }, o),
      subscribe: (listener) => listen(this.outputListeners, listener),
    };
  }

  delivered(logged: LoggedEvent, owner: string | null): void {
    if (logged.kind === 'update') {
      if (this.updateListeners.size > 0) this.notify(this.updateListeners, { ...logged.event, ownerId: owner, cursor: logged.cursor });
    } else if (this.outputListeners.size > 0) this.notify(this.outputListeners, { ...logged.event, ownerId: owner, cursor: logged.cursor });
  }

  private publish(entry: BusEntry, options?: PublishOptions): Promise<string> {
    const sql = options?.sql;
    if (sql !== undefined && !this.settings.transactions) {
      throw new MeshPublishError('publish(notification, { sql }) writes in a transaction: it needs the option bus: "postgres"');
    }
    const { taskId } = entry.event;
    const ahead = this.settling.get(taskId);
    const needsOwner = entry.event.ownerId === undefined && this.settings.settlesOwners;
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

  /** A throwing listener is the host's bug; it must not stop delivery to sockets or other listeners. */
  private notify<E>(listeners: Set<(event: E) => void>, event: E): void {
    for (const listener of listeners) {
      try {
        listener(event);
      } catch (error) {
        this.log.error({ err: error }, 'mesh channel listener threw');
      }
    }
  }
}

function listen<T>(set: Set<T>, listener: T): () => void {
  set.add(listener);
  return () => {
    set.delete(listener);
  };
}
