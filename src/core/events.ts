/**
 * What the plugin tells the host about its sockets and its log (`app.mesh.events`): slow
 * consumers, pruning, the LISTEN connection. Emitted on state changes only, never per frame.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from './ports.js';

export interface CaughtUp {
  superseded: number;
  lagged: ReadonlyMap<string, number>;
}

export interface MeshEventMap {
  /** A socket went over the soft buffer limit: its updates are conflated, its output dropped. */
  backedUp: [];
  /** It caught up: `superseded` updates were conflated away; `lagged` maps task → output frames dropped. */
  caughtUp: [CaughtUp];
  /** @deprecated The same as `caughtUp`, under its first name (emitted too, for hosts that listen to it). */
  drained: [CaughtUp];
  /** A socket was closed with 4008: over the hard buffer limit, or backed up for too long. */
  slowConsumer: [{ why: 'buffer' | 'timeout' }];
  /** The PostgreSQL bus pruned this many events past their retention. */
  pruned: [{ rows: number }];
  /**
   * The PostgreSQL bus found committed events behind a transaction that is still running, and
   * holds them back until it ends (it may yet add events before them). Long ones delay delivery.
   */
  heldBack: [];
  /** The PostgreSQL bus's LISTEN connection is back after it dropped or went silent (and it caught up). */
  listenerRestarted: [];
}

/**
 * A host listener that throws is the host's bug: it is logged, and cuts short neither the other
 * listeners nor the plugin's own work around the emit (closing a slow socket, delivering an event
 * to the other sockets).
 */
export class MeshEvents extends EventEmitter<MeshEventMap> {
  constructor(private readonly log: Logger) {
    super();
  }

  override emit<K extends keyof MeshEventMap>(event: K, ...args: MeshEventMap[K]): boolean {
    const listeners = this.rawListeners(event as keyof MeshEventMap) as ((...a: MeshEventMap[K]) => void)[];
    for (const listener of listeners) {
      try {
        listener.apply(this, args);
      } catch (error) {
        this.log.error({ err: error, event }, 'an app.mesh.events listener threw');
      }
    }
    return listeners.length > 0;
  }
}
