/**
 * `publish()` resolves once an event is in the log; with the PostgreSQL bus it reaches the
 * sockets a moment later. Tests that reason about what sockets got wait for that moment: the
 * in-process listeners run right after an event is handed to the sockets.
 */
import type { FastifyInstance } from 'fastify';

/** Returns a function that resolves once the event with a given cursor has reached the sockets. */
export function deliveries(app: FastifyInstance): (cursor: string) => Promise<void> {
  const seen = new Set<string>();
  const waiting = new Map<string, () => void>();
  const onEvent = ({ cursor }: { cursor: string }) => {
    const resolve = waiting.get(cursor);
    if (resolve) resolve();
    else seen.add(cursor);
  };
  app.mesh.taskUpdates.subscribe(onEvent);
  app.mesh.taskOutput.subscribe(onEvent);
  return (cursor) => (seen.delete(cursor) ? Promise.resolve() : new Promise((resolve) => waiting.set(cursor, resolve)));
}
