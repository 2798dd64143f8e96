/**
 * Who owns a task: a bounded cache in front of batched lookups. Subscribes that arrive in the same
 * turn of the event loop (a reconnect storm) share one query.
 */
import { LRUCache } from 'lru-cache';
import type { Sql } from 'postgres';
import { OwnerLookupUnavailableError } from '../errors.js';
import type { OwnerResolver } from '../options.js';

/** The lookup found no such task. */
export const NO_SUCH_TASK = Symbol('no such task');
export type OwnerAnswer = string | null | typeof NO_SUCH_TASK;

// lru-cache refuses null values; the empty string is never a UUID, so it stands for "no owner".
const NO_OWNER = '';

interface Waiter {
  resolve: (answer: OwnerAnswer) => void;
  reject: (error: unknown) => void;
}

export function sqlOwnerResolver(sql: Sql<any>, table: string): OwnerResolver {
  return async (taskIds) => {
    const rows = await sql<{ id: string; owner_id: string | null }[]>`
      SELECT id::text AS id, owner_id::text AS owner_id FROM ${sql(table)} WHERE id = ANY(${taskIds as string[]}::uuid[])`;
    return new Map(rows.map((row) => [row.id, row.owner_id]));
  };
}

export class OwnerDirectory {
  private readonly cache: LRUCache<string, string>;
  private readonly timeoutMs: number;
  private batch = new Map<string, Waiter[]>();
  private flushScheduled = false;

  constructor(
    private readonly resolve: OwnerResolver,
    options: { size: number; ttlMs: number; timeoutMs: number },
  ) {
    this.cache = new LRUCache({ max: options.size, ttl: options.ttlMs });
    this.timeoutMs = options.timeoutMs;
  }

  /** The cached owner, or `undefined` when it is not known without a lookup. */
  known(taskId: string): string | null | undefined {
    const hit = this.cache.get(taskId);
    return hit === undefined ? undefined : hit === NO_OWNER ? null : hit;
  }

  /** Publishers that name the owner keep the cache current for free. */
  remember(taskId: string, ownerId: string | null): void {
    this.cache.set(taskId, ownerId ?? NO_OWNER);
  }

  /** Rejects with OwnerLookupUnavailableError when the source fails or is slower than the timeout. */
  lookup(taskId: string): Promise<OwnerAnswer> {
    const cached = this.known(taskId);
    if (cached !== undefined) return Promise.resolve(cached);
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
    let timer: NodeJS.Timeout | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`owner lookup timed out after ${this.timeoutMs} ms`)), this.timeoutMs);
      });
      const owners = await Promise.race([this.resolve([...batch.keys()]), timeout]);
      for (const [taskId, waiters] of batch) {
        const owner = owners.get(taskId);
        if (owner !== undefined) this.remember(taskId, owner);
        // Unknown ids are not cached: a task created a moment later must become visible at once.
        for (const w of waiters) w.resolve(owner === undefined ? NO_SUCH_TASK : owner);
      }
    } catch (cause) {
      const error = new OwnerLookupUnavailableError(cause);
      for (const waiters of batch.values()) for (const w of waiters) w.reject(error);
    } finally {
      clearTimeout(timer);
    }
  }
}
