/**
 * What the plugin tells the host about its sockets and its log (`app.mesh.events`): slow
 * consumers, pruning, the LISTEN connection. Emitted on state changes only, never per frame.
 */
import { EventEmitter } from 'node:events';

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

export class MeshEvents extends EventEmitter<MeshEventMap> {}
