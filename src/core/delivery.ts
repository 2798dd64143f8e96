/**
 * The delivery pipeline: takes each logged event from the bus, settles its owner, and hands it,
 * framed once, to the subscription index and to in-process listeners — in log order per task.
 * An event logged without an owner waits for its lookup, and the later events of its task wait
 * behind it; other tasks go on. Whatever one event does, the events after it are delivered.
 */
import type { LoggedEvent } from '../bus/bus.js';
import type { Frames } from './frames.js';
import { NO_SUCH_TASK, type OwnerDirectory } from './owners.js';
import type { DropReason, Logger, MetricsSink } from './ports.js';
import type { Subscriber, SubscriptionIndex } from './subscription-index.js';
import { SETTLED } from './settled.js';

/** A logged event on its way to the sockets, once its owner is settled. */
interface Pending {
  logged: LoggedEvent;
  owner: string | null | undefined;
  done: () => void;
}

/** Where a delivered event goes besides the sockets: the channels' in-process listeners. */
export interface DeliveryListeners {
  delivered(logged: LoggedEvent, owner: string | null): void;
}

function noop(): void {}

export class DeliveryPipeline {
  /**
   * Per task: an event waiting for its owner, and the events of that task logged after it.
   * Per task, so that a slow lookup (a database outage) holds up that task only.
   */
  private readonly waiting = new Map<string, Pending[]>();

  constructor(
    private readonly index: SubscriptionIndex<Subscriber>,
    private readonly owners: OwnerDirectory,
    private readonly frames: Frames,
    private readonly listeners: DeliveryListeners,
    private readonly metrics: MetricsSink,
    private readonly log: Logger,
  ) {}

  /** Whether logged events are still waiting for their owner's lookup (they may arrive behind newer ones). */
  behind(): boolean {
    return this.waiting.size > 0;
  }

  /** The bus's new events, in log order; resolves once all of them have reached the sockets. */
  take(events: readonly LoggedEvent[]): Promise<void> {
    if (events.length === 1) return this.enqueue({ logged: events[0]!, owner: undefined, done: noop });
    const settled: Promise<void>[] = [];
    // One batch: a broadcast of these events costs each `subscribeAll` socket one hand-over.
    try {
      this.index.batch(() => {
        for (const logged of events) settled.push(this.enqueue({ logged, owner: undefined, done: noop }));
      });
    } catch (error) {
      this.log.error({ err: error }, 'handing a batch of events to a socket failed; the other sockets got theirs');
    }
    return Promise.all(settled).then(noop);
  }

  /** The event's frame, or undefined (dropped) when it cannot be encoded. */
  frameOf(logged: LoggedEvent): Buffer | undefined {
    try {
      return logged.kind === 'update'
        ? this.frames.taskUpdated(logged.event, logged.cursor)
        : this.frames.taskOutput(logged.event, logged.cursor);
    } catch (error) {
      this.dropped('unencodable', logged.cursor, error);
      return undefined;
    }
  }

  /** A logged event that reaches no socket: said once in the log and counted; the rest go on. */
  dropped(reason: DropReason, cursor: string, error: unknown): void {
    this.metrics.droppedEvent(reason);
    this.log.error({ err: error, cursor, reason }, 'skipping a logged event that cannot be delivered; the events after it go on');
  }

  private enqueue(item: Pending): Promise<void> {
    const { taskId, ownerId } = item.logged.event;
    item.owner = ownerId;
    const queue = this.waiting.get(taskId);
    if (item.owner !== undefined && !queue) {
      this.deliver(item.logged, item.owner);
      return SETTLED;
    }
    const settled = new Promise<void>((resolve) => {
      item.done = resolve;
    });
    if (queue) queue.push(item);
    else this.waiting.set(taskId, [item]);
    if (item.owner === undefined) {
      this.owners.lookup(taskId).then(
        (answer) => {
          // An unknown task has no owner anyone could match: admins only, never fail open.
          item.owner = answer === NO_SUCH_TASK ? null : answer;
          this.deliverReady(taskId);
        },
        (error: unknown) => {
          this.log.warn({ err: error, taskId }, 'owner lookup failed; delivering to admins only');
          item.owner = null;
          this.deliverReady(taskId);
        },
      );
    }
    return settled;
  }

  /** Delivers a task's waiting events up to the first whose owner is still being looked up. */
  private deliverReady(taskId: string): void {
    const queue = this.waiting.get(taskId);
    if (!queue) return;
    while (queue.length > 0) {
      const head = queue[0]!;
      if (head.owner === undefined) return;
      queue.shift();
      this.deliver(head.logged, head.owner);
      head.done();
    }
    this.waiting.delete(taskId);
  }

  /** Never throws: whatever one event does, the events after it are delivered. */
  private deliver(logged: LoggedEvent, owner: string | null): void {
    const { cursor } = logged;
    const { taskId } = logged.event;
    // An event no socket here follows (an instance that mostly publishes, a task nobody watches)
    // is not framed at all; in-process listeners still hear it.
    const wanted = this.index.reaches(logged.kind, taskId, owner);
    const frame = wanted ? this.frameOf(logged) : undefined;
    if (wanted && !frame) return;
    try {
      const recipients =
        frame === undefined
          ? 0
          : logged.kind === 'update'
            ? this.index.deliverUpdate(taskId, owner, frame, cursor)
            : this.index.deliverOutput(taskId, owner, frame, cursor);
      this.metrics.delivered(logged.kind, recipients, logged.publishedAt);
      this.listeners.delivered(logged, owner);
    } catch (error) {
      this.log.error({ err: error, cursor }, 'delivering a logged event failed part-way; the events after it go on');
    }
  }
}
