/**
 * What the plugin tells the host about its sockets (`app.mesh.events`): slow consumers today,
 * metrics tomorrow. Emitted on state changes only, never per frame.
 */
import { EventEmitter } from 'node:events';

export interface MeshEventMap {
  /** A socket went over the soft buffer limit: its updates are conflated, its output dropped. */
  backedUp: [];
  /** It drained: `superseded` updates were conflated away; `lagged` maps task → output frames dropped. */
  drained: [{ superseded: number; lagged: ReadonlyMap<string, number> }];
  /** A socket was closed with 4008: over the hard buffer limit, or backed up for too long. */
  slowConsumer: [{ why: 'buffer' | 'timeout' }];
}

export class MeshEvents extends EventEmitter<MeshEventMap> {}
