/**
 * Keys and tokens reach no log line, at any level, whether sent in a header or in the query.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { safeLoggerOptions } from '../src/index.js';
import { API_KEY_HEADER, revokeApiKey } from '../example/src/api-keys.js';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import { startTestServer } from './helpers/server.js';
import { TestClient } from './helpers/ws-client.js';

let db: TestDatabase;
before(async () => {
  db = await createTestDatabase();
});
after(() => db.drop());

test('no key or token appears in any log line at trace level', async () => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  const server = await startTestServer({ db, loggerInstance: pino(safeLoggerOptions('trace', [API_KEY_HEADER]), sink) });
  const { ownerId, key } = await server.owner();
  const revoked = (await server.owner()).key;
  await revokeApiKey(db.sql, revoked);
  const secrets = [key, revoked, 'tok_query_secret', 'tok_bearer_unknown', 'tok_ticket_secret'];
  const taskId = await server.task(ownerId);

  const header = await server.connect(key);
  await header.request({ type: 'subscribe', taskId });
  const bearer = await server.connect(undefined, { authorization: `Bearer ${key}` });
  await bearer.request({ type: 'subscribeAll' });
  await TestClient.connect(`${server.wsUrl}?key=${key}&token=tok_query_secret`).catch(() => undefined);
  await TestClient.connect(`${server.wsUrl}?access_token=${revoked}`, { 'x-makima-api-key': revoked }).catch(() => undefined);
  await TestClient.connect(server.wsUrl, { authorization: 'Bearer tok_bearer_unknown' }).catch(() => undefined);
  await server.http('PATCH', `/api/v1/mesh/tasks/${taskId}?ticket=tok_ticket_secret`, key, { status: 'x' });
  await server.http('POST', `/api/v1/mesh/tasks?api_key=${key}`, revoked, { name: 'x' });
  await header.close();
  await bearer.close();
  await server.close();

  const log = lines.join('');
  assert.ok(lines.length > 10, 'the test produced log lines');
  assert.match(log, /\?key=\[REDACTED\]&token=\[REDACTED\]/, 'query values are redacted, names kept');
  for (const secret of secrets) assert.equal(log.includes(secret), false, `a log line contains ${secret.slice(0, 8)}…`);
});
