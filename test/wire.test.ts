/**
 * The protocol's constants live in one module that imports nothing (src/protocol/wire.ts), shared
 * by the server and by the client, whose only runtime import it is; the client sends its key in a
 * neutral header unless told which header the host reads.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { createMeshClient, type ConnectionStatus } from '../src/client/index.js';
import { ClientMessages, ServerMessages } from '../src/protocol/schemas.js';
import { ACK_OF, ACK_TYPES, CLIENT_FRAME_TYPES, SERVER_FRAME_TYPES } from '../src/protocol/wire.js';
import { REDACT_PATHS, redactPaths } from '../src/logging.js';

/** The module specifiers a TypeScript file imports at run time (not `import type`). */
async function runtimeImports(file: string): Promise<string[]> {
  const source = await readFile(file, 'utf8');
  const specifiers: string[] = [];
  for (const match of source.matchAll(/^\s*(import|export)\s+(type\s+)?([^;]*?)\s+from\s+'([^']+)'/gms)) {
    if (!match[2]) specifiers.push(match[4]!);
  }
  for (const match of source.matchAll(/\b(?:import|require)\s*\(\s*'([^']+)'/g)) specifiers.push(match[1]!);
  for (const match of source.matchAll(/^\s*import\s+'([^']+)'/gm)) specifiers.push(match[1]!);
  return specifiers;
}

test('wire.ts imports nothing; the client imports nothing else at run time', async () => {
  assert.deepEqual(await runtimeImports('src/protocol/wire.ts'), []);
  assert.doesNotMatch(await readFile('src/protocol/wire.ts', 'utf8'), /^\s*import\b/m);
  assert.deepEqual(await runtimeImports('src/client/index.ts'), ['../protocol/wire.js']);
});

test('the frame names of wire.ts are those of the schemas', () => {
  assert.deepEqual([...CLIENT_FRAME_TYPES].sort(), Object.keys(ClientMessages).sort());
  assert.deepEqual([...SERVER_FRAME_TYPES].sort(), Object.keys(ServerMessages).sort());
  assert.deepEqual(Object.values(ACK_OF).sort(), [...ACK_TYPES].sort());
});

/** A client whose ticket request is answered 401: what headers did it send? */
async function ticketHeaders(options: { keyHeader?: string }): Promise<Record<string, string>> {
  let sent: Record<string, string> | undefined;
  const fetch = (async (_url: string, init: { headers: Record<string, string> }) => {
    sent = init.headers;
    return new Response(JSON.stringify({ code: 'UNAUTHORIZED' }), { status: 401 });
  }) as unknown as typeof globalThis.fetch;
  class NoSocket {
    constructor() {
      throw new Error('no socket expected');
    }
  }
  const client = createMeshClient({ url: 'http://127.0.0.1:9', apiKey: 'k_123', fetch, WebSocket: NoSocket as never, ...options });
  await new Promise<ConnectionStatus>((resolve) => {
    if (client.status.state === 'closed') return resolve(client.status);
    client.on('status', (s) => s.state === 'closed' && resolve(s));
  });
  return sent!;
}

test('the client sends its key as a bearer token, or in the header it is told', async () => {
  assert.deepEqual(await ticketHeaders({}), { authorization: 'Bearer k_123' });
  assert.deepEqual(await ticketHeaders({ keyHeader: 'x-host-token' }), { 'x-host-token': 'k_123' });
});

test('the redaction list names no host header unless given one', () => {
  assert.ok(!REDACT_PATHS.some((p) => /x-/.test(p)), REDACT_PATHS.join(' '));
  assert.ok(redactPaths(['X-Host-Token']).includes('req.headers["x-host-token"]'));
  assert.ok(redactPaths(['X-Host-Token']).includes('headers["x-host-token"]'));
});
