/**
 * The example host's OpenAPI document, built without a database: the client never connects
 * because no route runs.
 */
import postgres from 'postgres';
import { buildApp } from '../example/src/app.js';

export const OPENAPI_FILE = new URL('../openapi/openapi.json', import.meta.url);

export async function openApiDocument(): Promise<string> {
  const sql = postgres('postgres://unused@127.0.0.1:1/unused', { max: 1 });
  // The memory bus: the PostgreSQL one would create its tables at start.
  const app = await buildApp({ sql, logger: false, mesh: { bus: 'memory' } });
  await app.ready();
  const document = JSON.stringify(app.swagger(), null, 2) + '\n';
  await app.close();
  await sql.end({ timeout: 0 });
  return document;
}
