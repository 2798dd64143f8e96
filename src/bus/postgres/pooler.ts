/**
 * Behind a transaction-mode pooler (PgBouncer `pool_mode = transaction`, managed poolers alike)
 * a client's connection is a server session only for the length of a transaction; between two,
 * another client may get that session. Two things then break, silently:
 *
 * - whatever needs a session: a LISTEN (its notifications reach a server connection no client is
 *   linked to, and PgBouncer drops them: "got packet 'A' from server when not linked"), a session
 *   advisory lock (taken on one server, released on another), so the bus takes those from
 *   `directSql`;
 * - postgres.js's named prepared statements (`prepare: true`, its default): a statement prepared
 *   on one server is missing on the next. postgres.js then prepares it again and re-runs it, but
 *   inside a transaction the failure has already aborted it, and a re-run `COMMIT` in an aborted
 *   transaction is answered `ROLLBACK` without an error: `sql.begin` resolves, the change and the
 *   event published with it are gone (the PATCH answered 200 that never happened).
 *
 * So the bus looks before it starts, and refuses rather than run like that.
 */
import postgres, { type Options, type Sql } from 'postgres';
import { MeshOptionsError } from '../../errors.js';

/**
 * Whether `sql`'s connections share server sessions between transactions: a transaction-mode
 * pooler. Two connections of its own, with the client's options: `a` runs a statement and leaves
 * its server idle; `b` opens a transaction, and a pooler hands it the server just left (PgBouncer
 * reuses the most recent one), so both see one backend; else `a`, asked again while `b` holds a
 * server, is on another backend than before. Direct connections are sessions: neither happens.
 */
export async function sharesSessions(sql: Sql<any>): Promise<boolean> {
  const probe = () =>
    postgres({
      ...sql.options,
      max: 1,
      prepare: false,
      fetch_types: false,
      idle_timeout: null,
      max_lifetime: null,
      onnotice: () => {},
    } as unknown as Options<any>);
  const a = probe();
  const b = probe();
  try {
    const pid = async (q: Sql<any>) => (await q<{ pid: number }[]>`SELECT pg_backend_pid() AS pid`)[0]!.pid;
    const first = await pid(a);
    return await b.begin(async (tx) => {
      // Seen shared: `a` is not asked again, as a pool of one server would keep it waiting for `b`.
      if ((await pid(tx as unknown as Sql<any>)) === first) return true;
      return (await pid(a)) !== first;
    });
  } finally {
    await Promise.all([a.end({ timeout: 1 }), b.end({ timeout: 1 })]).catch(() => {});
  }
}

const prepares = (sql: Sql<any>) => (sql.options as { prepare?: boolean }).prepare !== false;

/**
 * Refuses, with why and what to do, a set-up that would lose events or changes behind a
 * transaction-mode pooler: a session-needing client (`directSql`, else `sql`) through one, or
 * `sql` through one with named prepared statements.
 */
export async function checkSessions(sql: Sql<any>, directSql: Sql<any>): Promise<void> {
  if (directSql === sql) {
    if (await sharesSessions(sql)) {
      throw new MeshOptionsError(
        'option "sql" reaches PostgreSQL through a transaction-mode pooler (two of its connections were given one server session); ' +
          'the LISTEN connection and the advisory locks need a session of their own: pass "directSql", a client connected to ' +
          'PostgreSQL directly (and create "sql" with `prepare: false`)',
      );
    }
    return;
  }
  if (await sharesSessions(directSql)) {
    throw new MeshOptionsError(
      'option "directSql" reaches PostgreSQL through a transaction-mode pooler (two of its connections were given one server ' +
        'session); it must connect to PostgreSQL directly, as the LISTEN connection and the advisory locks need a session',
    );
  }
  if (prepares(sql) && (await sharesSessions(sql))) {
    throw new MeshOptionsError(
      'option "sql" reaches PostgreSQL through a transaction-mode pooler and prepares statements (postgres.js `prepare: true`, ' +
        'its default): a prepared statement missing on the next server aborts the transaction, and postgres.js re-runs its ' +
        'COMMIT, which PostgreSQL then answers with ROLLBACK and no error, so a change is reported done that was not made; ' +
        'create "sql" with `postgres(url, { prepare: false })`',
    );
  }
}
