/**
 * Notices: a NOTIFY that carries the rows its statement logged, so that a reader whose position
 * is right before them hands them on without reading the log (one round trip fewer per event,
 * and no query of B's waiting for a core on a busy host). A notice only shortens the way: every
 * reader still reads the log on every other wake-up and poll, and a notice it cannot use (lost,
 * too big, unsigned, not right after its position) is a wake-up like any other.
 *
 * When a notice may be used, i.e. why the rows it carries are the next ones in (txid, id) order:
 * the writer's statement (transaction T) sends one only when its snapshot's xmin is at or past
 * T, i.e. no transaction with a smaller txid was running then, nor could start later (txids only
 * grow). So every row that sorts before T's is already committed (or gone with its rollback) and
 * visible to the statement, which names the newest of them, `prev`. Rows of T itself sort after
 * `prev` in the order T wrote them, and a NOTIFY is delivered only once T has committed (after
 * its WAL flush), in commit order, and never for a rolled-back (sub)transaction. A reader whose
 * position is `prev` may therefore take the rows as if it had read them: nothing can ever land
 * between. This is the reader's own rule (deliver only below every running transaction) proven
 * by the writer at its commit instead of by a read.
 *
 * Anyone who may connect to the database may NOTIFY any channel: a notice is signed with
 * HMAC-SHA-256 under `notify_key` of `mesh_event_log_meta`, readable only by roles that may read
 * the meta table (the plugin's role and SQL publishers, who may write the log itself anyway). An
 * unsigned or wrongly signed notice is only a wake-up. The HMAC is computed in SQL from the
 * key's inner and outer pads (core `sha256`, no extension), checked here with Node's crypto.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Sql } from 'postgres';
import type { Position } from './cursor.js';
import type { Row } from './rows.js';
import { qualified } from './schema.js';

/** NOTIFY payloads must stay under 8000 bytes; the signature takes 64 of them. */
export const NOTICE_BODY_BYTES = 7800;
const MAC_HEX = 64;
const BLOCK = 64;

/** A notice, checked: the rows after `prev`, in log order, all of one transaction. */
export interface Notice {
  prev: Position;
  rows: Row[];
  last: Position;
}

/** The row as the writer's SQL puts it in a notice: `[id, kind, task_id, owner_id, owner_given, payload, published_ms]`. */
type NoticeRow = [string, Row['kind'], string, string | null, boolean, Record<string, unknown>, number];

export class NoticeKey {
  private key: Buffer | undefined;
  /** HMAC's inner and outer pads of the key, for the writer's SQL. */
  private pads: { inner: Buffer; outer: Buffer } | undefined;

  async load(sql: Sql<any>, schema: string): Promise<void> {
    const [meta] = await sql<{ notify_key: string }[]>`SELECT notify_key FROM ${sql.unsafe(qualified(schema, 'mesh_event_log_meta'))}`;
    if (!meta) throw new Error('mesh_event_log_meta is empty: run the migrations (option migrate)');
    this.key = Buffer.from(meta.notify_key, 'hex');
    // A key longer than a block would be hashed first (RFC 2104); ours is 32 bytes, padded with zeros.
    const padded = Buffer.alloc(BLOCK);
    this.key.copy(padded);
    this.pads = { inner: Buffer.from(padded.map((b) => b ^ 0x36)), outer: Buffer.from(padded.map((b) => b ^ 0x5c)) };
  }

  /** The pads, once loaded: undefined sends bare wake-ups. */
  signing(): { inner: Buffer; outer: Buffer } | undefined {
    return this.pads;
  }

  /** The notice in a NOTIFY payload, or undefined: a bare wake-up, or one not to be trusted. */
  open(payload: string): Notice | undefined {
    if (!this.key || payload.length <= MAC_HEX) return undefined;
    const body = payload.slice(MAC_HEX);
    const mac = Buffer.from(payload.slice(0, MAC_HEX), 'hex');
    const expected = createHmac('sha256', this.key).update(body, 'utf8').digest();
    if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) return undefined;
    try {
      const { txid, prev, rows } = JSON.parse(body) as { txid: string; prev: [string, string] | null; rows: NoticeRow[] };
      if (rows.length === 0) return undefined;
      const tx = BigInt(txid);
      return {
        // No row before: the log was empty, where a reader of an empty log stands.
        prev: prev === null ? { txid: 0n, id: 0n } : { txid: BigInt(prev[0]), id: BigInt(prev[1]) },
        rows: rows.map(([id, kind, task_id, owner_id, owner_given, payload, published_ms]) => ({
          txid,
          id,
          kind,
          task_id,
          owner_id,
          owner_given,
          payload,
          published_ms,
        })),
        last: { txid: tx, id: BigInt(rows.at(-1)![0]) },
      };
    } catch {
      // Signed but not understood (a newer writer's format): a wake-up.
      return undefined;
    }
  }
}
