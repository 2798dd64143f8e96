/** The longest delay setTimeout keeps (2^31 - 1 ms, about 24.8 days). */
const LONGEST_TIMER_MS = 2_147_483_647;

/**
 * `work`, or a rejection with `message` once `ms` have passed. Not p-timeout: that builds its
 * Error, with a stack trace, on every call in case it times out, and under a storm these calls
 * come per socket (owner lookups, replay pages): those errors were a twentieth of a resume
 * storm's CPU. Here the error is built only when the time is up.
 */
export function within<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  // One promise and no race: under a storm these come per socket.
  return new Promise<T>((resolve, reject) => {
    // Node fires a longer timer at once (after 1 ms): an option that large means "about never".
    const timer = setTimeout(() => reject(new Error(message)), Math.min(ms, LONGEST_TIMER_MS));
    work.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}
