/**
 * What a replay hands a connection: the hub builds these pages, the connection sends them. A file
 * of its own so that the connection does not import the hub that imports it (no import circle).
 */

/** A replayed event, as a connection sends it. */
export interface Replayed {
  kind: 'update' | 'output';
  taskId: string;
  cursor: string;
  frame: Buffer;
}

/** A page of a replay for one principal: `last`, where the next page starts; `more`, whether one may follow. */
export interface ReplayedPage {
  frames: Replayed[];
  last: string;
  more: boolean;
}
