/** One resolved promise, shared: the fast paths return it instead of making one per call. */
export const SETTLED: Promise<void> = Promise.resolve();
