/**
 * The OpenAPI document: the upgrade route is in it (despite @fastify/websocket hiding ws-only
 * routes), so are the REST history routes, and the committed openapi/openapi.json is what
 * `npm run openapi` writes today.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { OPENAPI_FILE, openApiDocument } from '../scripts/openapi-document.js';

test('GET /api/v1/mesh/tasks/subscribe is documented with a 101 response', async () => {
  const document = JSON.parse(await openApiDocument());
  const route = document.paths['/api/v1/mesh/tasks/subscribe']?.get;
  assert.ok(route, 'the upgrade route is missing from the document');
  assert.match(route.responses['101'].description, /Switching Protocols/);
  assert.match(route.description, /subscribeAll/);
  assert.ok(route.responses['401']);
  for (const path of ['/api/v1/mesh/tasks', '/api/v1/mesh/tasks/{taskId}', '/api/v1/mesh/tasks/{taskId}/output', '/healthz']) {
    assert.ok(document.paths[path], `${path} is missing`);
  }
});

test('the REST history routes are documented with their parameters, page schema and error answers', async () => {
  const document = JSON.parse(await openApiDocument());
  for (const [path, frame] of [
    ['/api/v1/mesh/tasks/{taskId}/output', 'taskOutput'],
    ['/api/v1/mesh/tasks/{taskId}/updates', 'taskUpdated'],
  ] as const) {
    const route = document.paths[path]?.get;
    assert.ok(route, `${path} is missing`);
    assert.deepEqual(route.parameters.map((p: { in: string; name: string }) => `${p.in}:${p.name}`).sort(), [
      'path:taskId',
      'query:after',
      'query:limit',
    ]);
    const page = route.responses['200'].content['application/json'].schema;
    assert.deepEqual(page.properties.items.items.properties.type.enum, [frame]);
    assert.deepEqual(Object.keys(route.responses).sort(), ['200', '400', '401', '404', '410', '503']);
  }
});

test('the committed openapi/openapi.json is current (run `npm run openapi`)', async () => {
  assert.equal(await readFile(OPENAPI_FILE, 'utf8'), await openApiDocument());
});
