/**
 * The example host on port 0 against a test database, with helpers to mint keys and tasks.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import type { MeshSubscriptionsOptions } from '../../src/index.js';
import { buildApp } from '../../example/src/app.js';
import { createApiKey } from '../../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './database.js';
import { TestClient } from './ws-client.js';

export interface TestServer {
  app: FastifyInstance;
  db: TestDatabase;
  baseUrl: string;
  wsUrl: string;
  /** A fresh owner id and a key for it. */
  owner(): Promise<{ ownerId: string; key: string }>;
  admin(): Promise<{ key: string }>;
  /** Inserts a task directly (no event), owned by `ownerId` (`null`: no owner). */
  task(ownerId: string | null, name?: string): Promise<string>;
  connect(key: string | undefined, headers?: Record<string, string>): Promise<TestClient>;
  http(method: string, path: string, key: string | undefined, body?: unknown): Promise<{ status: number; body: any }>;
  close(): Promise<void>;
}

export async function startTestServer(
  options: { db?: TestDatabase; mesh?: Partial<MeshSubscriptionsOptions>; loggerInstance?: FastifyBaseLogger; webRoot?: string } = {},
): Promise<TestServer> {
  const db = options.db ?? (await createTestDatabase());
  const app = await buildApp({
    sql: db.sql,
    ...(options.loggerInstance ? { loggerInstance: options.loggerInstance } : { logger: false }),
    mesh: options.mesh,
    webRoot: options.webRoot,
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as { port: number };
  const baseUrl = `http://127.0.0.1:${port}`;
  const wsUrl = `ws://127.0.0.1:${port}/api/v1/mesh/tasks/subscribe`;
  const clients: TestClient[] = [];
  return {
    app,
    db,
    baseUrl,
    wsUrl,
    async owner() {
      const ownerId = randomUUID();
      return { ownerId, key: await createApiKey(db.sql, { ownerId, admin: false }) };
    },
    async admin() {
      return { key: await createApiKey(db.sql, { ownerId: null, admin: true }) };
    },
    async task(ownerId, name = 'test task') {
      const [row] = await db.sql<
        { id: string }[]
      >`INSERT INTO tasks (owner_id, name) VALUES (${ownerId}, ${name}) RETURNING id::text AS id`;
      return row!.id;
    },
    async connect(key, headers = {}) {
      const client = await TestClient.connect(wsUrl, key === undefined ? headers : { 'x-makima-api-key': key, ...headers });
      clients.push(client);
      return client;
    },
    async http(method, path, key, body) {
      const headers: Record<string, string> = {};
      if (key !== undefined) headers['x-makima-api-key'] = key;
      if (body !== undefined) headers['content-type'] = 'application/json';
      const res = await fetch(`${baseUrl}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : undefined };
    },
    async close() {
      await Promise.all(clients.map((c) => c.close()));
      await app.close();
      if (!options.db) await db.drop();
    },
  };
}
