/**
 * The AsyncAPI 3 document of the WebSocket protocol, generated from the same TypeBox schemas the
 * server validates and encodes with, plus the code tables of src/errors.ts. It describes the
 * server: it receives the client's frames and sends its own. `npm run asyncapi` writes it; a test
 * fails when the committed openapi/asyncapi.yaml is stale.
 */
import { createRequire } from 'node:module';
import { stringify } from 'yaml';
import { CLOSE_CODE_MEANING, CloseCode, ERROR_CODE_MEANING, ErrorCode, UpgradeError } from '../src/errors.js';
import { ClientMessages, ServerMessages } from '../src/protocol/schemas.js';

/** The library's version, from its package.json. */
const PACKAGE_VERSION = (createRequire(import.meta.url)('../package.json') as { version: string }).version;

export const ASYNCAPI_FILE = new URL('../openapi/asyncapi.yaml', import.meta.url);

/** A TypeBox schema as plain JSON Schema: no `$id` (the component name says it), no TypeBox symbols. */
function jsonSchema(schema: unknown): unknown {
  return JSON.parse(JSON.stringify(schema), (key, value) => (key === '$id' ? undefined : value));
}

const table = (head: string, rows: [string | number, string][]) =>
  [`| ${head} | meaning |`, '| --- | --- |', ...rows.map(([code, text]) => `| \`${code}\` | ${text} |`)].join('\n');

const DESCRIPTION = `Real-time task updates and live task output over one WebSocket. Every frame is a JSON text
frame with a \`type\`. PROTOCOL.md explains each message with worked flows; the payload schemas
here are generated from the TypeBox schemas the server itself uses.

## Authentication (on the upgrade, before any 101)
- \`x-makima-api-key: <key>\` or \`Authorization: Bearer <key>\` (servers, apps).
- Browsers: \`POST /api/v1/mesh/tickets\` with those headers returns a single-use ticket, valid
  30 s; open the socket with the subprotocols \`mesh.v1\` and \`mesh.ticket.<ticket>\`. The server
  selects \`mesh.v1\`. Keys never go into a URL.

## HTTP answers to a refused upgrade
${table(
  'status / code',
  Object.values(UpgradeError).map((e) => [`${e.status} ${e.code}`, e.message]),
)}

## Close codes
${table(
  'close code',
  (Object.keys(CloseCode) as (keyof typeof CloseCode)[]).map((name) => [CloseCode[name], CLOSE_CODE_MEANING[name]]),
)}

## Error codes (\`error\` frames; the socket stays open)
${table(
  'code',
  (Object.values(ErrorCode) as ErrorCode[]).map((code) => [code, ERROR_CODE_MEANING[code]]),
)}`;

export function asyncApiDocument(): string {
  const messages: Record<string, unknown> = {};
  const schemas: Record<string, unknown> = {};
  const operations: Record<string, unknown> = {};
  const channelMessages: Record<string, unknown> = {};
  const add = (name: string, schema: { description?: string }, action: 'receive' | 'send') => {
    const payload = jsonSchema(schema) as Record<string, any>;
    // The error frame's code is one of the table's: say so in the schema too.
    if (name === 'error') payload.properties.code.enum = Object.values(ErrorCode);
    schemas[name] = payload;
    messages[name] = {
      name,
      title: name,
      summary: schema.description ?? name,
      contentType: 'application/json',
      payload: { $ref: `#/components/schemas/${name}` },
    };
    channelMessages[name] = { $ref: `#/components/messages/${name}` };
    operations[`${action}${name[0]!.toUpperCase()}${name.slice(1)}`] = {
      action,
      channel: { $ref: '#/channels/tasks' },
      summary: action === 'receive' ? `The client sends \`${name}\`.` : `The server sends \`${name}\`.`,
      messages: [{ $ref: `#/channels/tasks/messages/${name}` }],
    };
  };
  for (const [name, schema] of Object.entries(ClientMessages)) add(name, schema, 'receive');
  for (const [name, schema] of Object.entries(ServerMessages)) add(name, schema, 'send');

  const document = {
    asyncapi: '3.1.0',
    info: { title: 'mesh-subscriptions WebSocket protocol', version: PACKAGE_VERSION, description: DESCRIPTION },
    defaultContentType: 'application/json',
    servers: {
      example: {
        host: 'localhost:8080',
        protocol: 'ws',
        description: 'The example server (`npm start`); use wss behind TLS.',
        security: [
          { $ref: '#/components/securitySchemes/apiKey' },
          { $ref: '#/components/securitySchemes/bearer' },
          { $ref: '#/components/securitySchemes/ticket' },
        ],
      },
    },
    channels: {
      tasks: {
        address: '/api/v1/mesh/tasks/subscribe',
        title: 'Task updates and live output',
        description: 'One socket per client; subscriptions are made and ended with frames on it.',
        messages: channelMessages,
      },
    },
    operations,
    components: {
      schemas,
      messages,
      securitySchemes: {
        apiKey: { type: 'httpApiKey', name: 'x-makima-api-key', in: 'header', description: 'An API key, as the iOS app sends it.' },
        bearer: { type: 'http', scheme: 'bearer', description: 'The same key as a bearer token.' },
        ticket: {
          type: 'httpApiKey',
          name: 'Sec-WebSocket-Protocol',
          in: 'header',
          description: 'Browsers: `mesh.v1, mesh.ticket.<ticket>`, the ticket from `POST /api/v1/mesh/tickets`; single-use, 30 s.',
        },
      },
    },
  };
  return stringify(document, { lineWidth: 0 });
}
