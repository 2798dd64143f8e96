/**
 * A row of `mesh_event_log` as the reader and the replay select it, and how it becomes an event.
 * Both check a row as `publish` checks an event: the log is written by SQL callers too, so a row
 * may hold what no publisher would have sent.
 */
import { toTaskOutputEvent, toTaskUpdateEvent } from '../../protocol/codec.js';
import type { LoggedEvent } from '../bus.js';
import type { Cursors } from './cursor.js';

export interface Row {
  published_ms?: number;
  txid: string;
  id: string;
  kind: 'update' | 'output';
  task_id: string;
  owner_id: string | null;
  owner_given: boolean;
  payload: Record<string, unknown>;
}

export interface RowOptions {
  /** Called for each logged event this instance could not hand on (the rest go on in order). */
  onDropped?: (reason: 'unreadable' | 'invalid', cursor: string, error: unknown) => void;
}

/** A row as an event, checked as `publish` checks one: the log is written by SQL callers too. */
export function toLogged(row: Row, cursors: Cursors, options: RowOptions): LoggedEvent | undefined {
  const cursor = cursors.format(row.txid, row.id);
  const notification = { ...row.payload, taskId: row.task_id, ...(row.owner_given ? { ownerId: row.owner_id } : {}) };
  try {
    return row.kind === 'update'
      ? { kind: 'update', event: toTaskUpdateEvent(notification), cursor, publishedAt: row.published_ms }
      : { kind: 'output', event: toTaskOutputEvent(notification), cursor, publishedAt: row.published_ms };
  } catch (error) {
    options.onDropped?.('invalid', cursor, error);
    return undefined;
  }
}
