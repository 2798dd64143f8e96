/**
 * The cursor format: `<logId>.<txid>.<id>`, a position in the log named by the log it belongs to.
 * Apart so that the reader, the replay and the bus's `head`/`compare` read and write cursors one
 * way; the log's id is the only state here, read from `mesh_event_log_meta` at start.
 */
import type { Sql } from 'postgres';
import { qualified } from './schema.js';

/** A position in the log. */
export interface Position {
  txid: bigint;
  id: bigint;
}

const CURSOR = /^([0-9a-f]{8})\.([0-9]{1,20})\.([0-9]{1,19})$/;

/** The cursor of a position in the log `logId`: where a cursor is formatted, whoever holds the id. */
export const cursorOf = (logId: string, txid: bigint | string, id: bigint | string): string => `${logId}.${txid}.${id}`;

export const after = (a: Position, b: Position) => a.txid > b.txid || (a.txid === b.txid && a.id > b.id);

export class Cursors {
  /** Names this log in every cursor: a cursor of another database is told apart. Empty until `load`. */
  private logId = '';

  async load(sql: Sql<any>, schema: string): Promise<void> {
    const [meta] = await sql<{ log_id: string }[]>`SELECT log_id FROM ${sql.unsafe(qualified(schema, 'mesh_event_log_meta'))}`;
    if (!meta) throw new Error('mesh_event_log_meta is empty: run the migrations (option migrate)');
    this.logId = meta.log_id;
  }

  /** The cursor of a position, or of a row's (txid, id) as the database gave them. */
  format(txid: bigint | string, id: bigint | string): string {
    return cursorOf(this.logId, txid, id);
  }

  parse(cursor: string): Position | undefined {
    const match = CURSOR.exec(cursor);
    if (!match || match[1] !== this.logId) return undefined;
    const txid = BigInt(match[2]!);
    const id = BigInt(match[3]!);
    return txid < 2n ** 64n && id < 2n ** 63n ? { txid, id } : undefined;
  }

  compare(a: string, b: string): number {
    const x = this.parse(a);
    const y = this.parse(b);
    if (!x || !y) return 0;
    return after(x, y) ? 1 : after(y, x) ? -1 : 0;
  }
}
