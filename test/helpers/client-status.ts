import type { ConnectionStatus, MeshClient } from '../../src/client/index.js';

/** Resolves with the package client's first status that `accept` takes (its current one included). */
export function statusWhere(c: MeshClient, accept: (s: ConnectionStatus) => boolean): Promise<ConnectionStatus> {
  if (accept(c.status)) return Promise.resolve(c.status);
  return new Promise((resolve) => {
    const stop = c.on('status', (s) => {
      if (!accept(s)) return;
      stop();
      resolve(s);
    });
  });
}
