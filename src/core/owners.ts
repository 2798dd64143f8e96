/**
 * Who owns a task, asked of its source every time: no cached answer ever decides visibility, so
 * an owner change counts as soon as it has committed. Lookups that arrive in the same turn of the
 * event loop (a reconnect storm) share one query.
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

export class OwnerDirectory {
  private batch = new Map<string, Waiter[]>();
  private flushScheduled = false;

  constructor(
    private readonly resolve: OwnerResolver,
    private readonly timeoutMs: number,
  ) {}

  /** Rejects with OwnerLookupUnavailableError when the source fails or is slower than the timeout. */
  lookup(taskId: string): Promise<OwnerAnswer> {
    return new Promise((resolve, reject) => {
      const waiters = this.batch.get(taskId);
      if (waiters) waiters.push({ resolve, reject });
      else this.batch.set(taskId, [{ resolve, reject }]);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        // setImmediate, not a microtask: it runs after every socket read of this loop turn.
        setImmediate(() => void this.flush());
      }
    });
  }

  private async flush(): Promise<void> {
    const batch = this.batch;
    this.batch = new Map();
    this.flushScheduled = false;
    try {
      const owners = await within(this.resolve([...batch.keys()]), this.timeoutMs, `owner lookup timed out after ${this.timeoutMs} ms`);
      for (const [taskId, waiters] of batch) {
        const owner = owners.get(taskId);
        for (const w of waiters) w.resolve(owner === undefined ? NO_SUCH_TASK : owner);
      }
    } catch (cause) {
      const error = new OwnerLookupUnavailableError(cause);
      for (const waiters of batch.values()) for (const w of waiters) w.reject(error);
    }
  }
}
