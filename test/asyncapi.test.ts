/**
 * The AsyncAPI document: valid AsyncAPI 3 by the reference parser, one message per frame type in
 * each direction, and the committed openapi/asyncapi.yaml is what `npm run asyncapi` writes today.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { Parser } from '@asyncapi/parser';
import { ASYNCAPI_FILE, asyncApiDocument } from '../scripts/asyncapi-document.js';
import { CloseCode, ErrorCode } from '../src/errors.js';
import { ClientMessages, ServerMessages } from '../src/protocol/schemas.js';
import { startTestServer } from './helpers/server.js';

test('the AsyncAPI document is valid, with every frame in both directions, the codes and the auth options', async () => {
  const { document, diagnostics } = await new Parser().parse(asyncApiDocument());
  const errors = diagnostics.filter((d) => d.severity === 0);
  assert.deepEqual(
    errors.map((d) => `${d.path.join('.')}: ${d.message}`),
    [],
  );
  assert.ok(document);
  assert.equal(document.version(), '3.1.0');
  const actions = new Map(
    document
      .operations()
      .all()
      .map((op) => [op.messages().all()[0]!.name(), op.action()]),
  );
  for (const name of Object.keys(ClientMessages)) assert.equal(actions.get(name), 'receive', name);
  for (const name of Object.keys(ServerMessages)) assert.equal(actions.get(name), 'send', name);
  const error = document.components().messages().get('error')!.payload()!.properties()!.code!.enum();
  assert.deepEqual(error, Object.values(ErrorCode));
  const description = document.info().description()!;
  for (const code of Object.values(CloseCode)) assert.match(description, new RegExp(`\`${code}\``));
  assert.deepEqual(
    Object.keys(
      document
        .components()
        .securitySchemes()
        .all()
        .reduce((o, s) => ({ ...o, [s.id()]: 1 }), {}),
    ).sort(),
    ['apiKey', 'bearer', 'ticket'],
  );
});

test('the committed openapi/asyncapi.yaml is current (run `npm run asyncapi`)', async () => {
  assert.equal(await readFile(ASYNCAPI_FILE, 'utf8'), asyncApiDocument());
});

test('the example server serves it, and its Swagger UI links to it', async () => {
  const server = await startTestServer();
  const res = await fetch(`${server.baseUrl}/asyncapi.yaml`);
  assert.equal(res.status, 200);
  assert.equal(await res.text(), asyncApiDocument());
  const openapi = (await (await fetch(`${server.baseUrl}/docs/json`)).json()) as { info: { description: string } };
  assert.match(openapi.info.description, /\[AsyncAPI document\]\(\/asyncapi\.yaml\)/);
  await server.close();
});
