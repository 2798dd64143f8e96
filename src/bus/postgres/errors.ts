/**
 * What a failed statement means: the database out of reach (retry later), or the statement's own
 * data refused (retrying cannot help). postgres.js reports the first with a network or driver code,
 * the second as a PostgresError with its SQLSTATE.
 */

/** SQLSTATE classes of data refused for what it is: data exceptions, integrity, program limits. */
const BAD_DATA = /^(22|23|54)/;

export function sqlStateOf(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const { name, code } = error as { name?: unknown; code?: unknown };
  return name === 'PostgresError' && typeof code === 'string' ? code : undefined;
}

/** The statement's data was refused: the same statement would be refused again. */
export function isRefusedData(error: unknown): boolean {
  const state = sqlStateOf(error);
  return state !== undefined && BAD_DATA.test(state);
}
