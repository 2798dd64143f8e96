/**
 * Who owns a task, asked of its source every time: no cached answer ever decides visibility, so
 * an owner change counts as soon as it has committed. Lookups that arrive in the same turn of the
 * event loop, while earlier ones are still being answered, or within milliseconds of a query that
 * already gathered several (a reconnect storm), share one query.
 */
import { OwnerLookupUnavailableError } from '../errors.js';
import { within } from './deadline.js';
import type { OwnerResolver } from './ports.js';

/** The lookup found no such task. */
export const NO_SUCH_TASK = Symbol('no such task');
export type OwnerAnswer = string | null | typeof NO_SUCH_TASK;

interface Waiter {
  resolve: (answer: OwnerAnswer) => void;
  reject: (error: unknown) => void;
}

/**
 * How long a lookup query may go unanswered before the next one is sent beside it. Until then,
 * lookups asked meanwhile wait and go together in the next query: a storm of subscribes that
 * trickle in one per loop turn (clients reconnecting) costs a few large queries, not one small
 * query per turn. On two cores, where PostgreSQL takes CPU from the server, W2's reconnect storm
 * took 3.2-3.4 s with two queries in flight and 2.8-2.9 s with one (BENCHMARKS.md, round three).
 * A database slower than this gets a query every SLOW_QUERY_MS, each batch with its own time limit.
 */
const SLOW_QUERY_MS = 50;

/**
 * How long after a query of several tasks is sent the next one waits, so that the lookups of those
 * milliseconds go in one query. A storm's subscribes trickle in as their sockets open, and a query
 * answered in a millisecond let each go almost alone: W2's reconnect storm sent about 1,400
 * queries of 2-10 ids (BENCHMARKS.md, round four). Lookups that come one at a time (the last
 * query asked for one task) never wait: the gap only spaces out a storm.
 */
const QUERY_GAP_MS = 20;

export class OwnerDirectory {
  private batch = new Map<string, Waiter[]>();
  /** When the batch's first lookup was asked: its time limit runs from then, waiting included. */
  private batchSince = 0;
  private flushScheduled = false;
  private inFlight = 0;
  /** When the newest query was sent, and whether it asked for several tasks (lookups are coming faster than one by one). */
  private lastSent = Number.NEGATIVE_INFINITY;
  private lastSeveral = false;
  /** Sends the waiting batch once the query in flight has gone unanswered for slowQueryMs, or queryGapMs after the last of several. */
  private waitTimer: NodeJS.Timeout | undefined;
  private waitDue = 0;

  constructor(
    private readonly resolve: OwnerResolver,
    private readonly timeoutMs: number,
    private readonly slowQueryMs = SLOW_QUERY_MS,
    private readonly queryGapMs = QUERY_GAP_MS,
  ) {}

  /** Rejects with OwnerLookupUnavailableError when the source fails or is slower than the timeout. */
  lookup(taskId: string): Promise<OwnerAnswer> {
    return new Promise((resolve, reject) => {
      if (this.batch.size === 0) this.batchSince = performance.now();
      const waiters = this.batch.get(taskId);
      if (waiters) waiters.push({ resolve, reject });
      else this.batch.set(taskId, [{ resolve, reject }]);
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.flushScheduled || this.batch.size === 0) return;
    const since = performance.now() - this.lastSent;
    const wait = (this.inFlight > 0 ? this.slowQueryMs : this.lastSeveral ? this.queryGapMs : 0) - since;
    if (wait > 0) {
      const due = performance.now() + wait;
      if (this.waitTimer !== undefined && this.waitDue <= due) return;
      clearTimeout(this.waitTimer);
      this.waitDue = due;
      // Not unref'd: lookups are waiting on it (a script's publish may have nothing else keeping it alive).
      this.waitTimer = setTimeout(() => {
        this.waitTimer = undefined;
        this.send();
      }, wait);
      return;
    }
    this.send();
  }

  /** Sends the waiting batch, after this turn's reads. */
  private send(): void {
    if (this.flushScheduled || this.batch.size === 0) return;
    clearTimeout(this.waitTimer);
    this.waitTimer = undefined;
    this.flushScheduled = true;
    // setImmediate, not a microtask: it runs after every socket read of this loop turn.
    setImmediate(() => void this.flush());
  }

  private async flush(): Promise<void> {
    const batch = this.batch;
    const left = this.timeoutMs - (performance.now() - this.batchSince);
    this.batch = new Map();
    this.flushScheduled = false;
    this.inFlight++;
    this.lastSent = performance.now();
    this.lastSeveral = batch.size > 1;
    const late = `owner lookup timed out after ${this.timeoutMs} ms`;
    try {
      // A batch that waited out its time is not asked at all.
      if (left <= 0) throw new Error(late);
      const owners = await within(this.resolve([...batch.keys()]), left, late);
      for (const [taskId, waiters] of batch) {
        const owner = owners.get(taskId);
        for (const w of waiters) w.resolve(owner === undefined ? NO_SUCH_TASK : owner);
      }
    } catch (cause) {
      const error = new OwnerLookupUnavailableError(cause);
      for (const waiters of batch.values()) for (const w of waiters) w.reject(error);
    } finally {
      this.inFlight--;
      this.schedule();
    }
  }
}
