/** Promise tools for the unit tests: no timers, only the event loop's own turns. */

export interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

/** A promise settled from outside (Node 20 has no Promise.withResolvers). */
export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** One loop turn: every promise reaction queued so far has run, and setImmediate callbacks before it. */
export const turn = (): Promise<void> => new Promise<void>((resolve) => setImmediate(resolve));
