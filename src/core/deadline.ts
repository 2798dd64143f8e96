/**
 * `work`, or a rejection with `message` once `ms` have passed. Not p-timeout: that builds its
 * Error, with a stack trace, on every call in case it times out, and under a storm these calls
 * come per socket (owner lookups, replay pages): those errors were a twentieth of a resume
 * storm's CPU. Here the error is built only when the time is up.
 */
export function within<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}
