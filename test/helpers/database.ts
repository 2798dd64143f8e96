/**
 * A database of its own for each test file, on the server `npm test` provides.
 */
import { randomBytes } from 'node:crypto';
import postgres, { type Sql } from 'postgres';
import { migrate } from '../../example/src/migrations.js';

export interface TestDatabase {
  url: string;
  sql: Sql<any>;
  drop(): Promise<void>;
}

function serverUrl(): string {
  const url = process.env.MESH_TEST_DATABASE_URL ?? process.env.DATABASE_URL;
  if (!url) throw new Error('run the tests with `npm test`, which provides a PostgreSQL (or set DATABASE_URL)');
  return url;
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const base = serverUrl();
  const name = `mesh_test_${randomBytes(6).toString('hex')}`;
  const admin = postgres(base, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE ${name}`);
  const url = new URL(base);
  url.pathname = `/${name}`;
  const sql = postgres(url.toString(), { max: 10, onnotice: () => {} });
  await migrate(sql);
  return {
    url: url.toString(),
    sql,
    async drop() {
      await sql.end({ timeout: 1 });
      await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await admin.end({ timeout: 1 });
    },
  };
}
