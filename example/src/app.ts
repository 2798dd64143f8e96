/**
 * The example host API: what a larger API that mounts mesh-subscriptions looks like. It owns the
 * database client, authentication and the task routes; the plugin streams what they publish.
 */
import swagger from '@fastify/swagger';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import fastifyStatic from '@fastify/static';
import { collectDefaultMetrics } from 'prom-client';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import postgres, { type Sql } from 'postgres';
import meshSubscriptions, {
  OUTPUT_HISTORY_PATH,
  SUBSCRIBE_PATH,
  TICKETS_PATH,
  UPDATES_HISTORY_PATH,
  type MeshSubscriptionsOptions,
} from 'mesh-subscriptions';
import { API_KEY_HEADER, apiKeyAuthenticator, apiKeyReauthenticator } from './api-keys.js';
import { ApiError, SECURITY, taskRoutes } from './tasks-routes.js';

export const API_PREFIX = '/api/v1';

export interface AppOptions {
  sql: Sql<any>;
  /** Logger settings, or `loggerInstance` for a pino logger made by the caller. */
  logger?: FastifyServerOptions['logger'];
  loggerInstance?: FastifyBaseLogger;
  /** Plugin options (limits, timeouts); they override the example's own, except `prefix`. */
  mesh?: Partial<MeshSubscriptionsOptions>;
  /** A built dashboard (scripts/build-web.ts) to serve at `/`; none when unset. */
  webRoot?: string;
}

/** The version of the mesh-subscriptions library this host mounts, from its package.json. */
export const PACKAGE_VERSION = (createRequire(import.meta.url)('mesh-subscriptions/package.json') as { version: string }).version;

/** How long /readyz waits for `SELECT 1`. */
const READINESS_TIMEOUT_MS = 2_000;

/** `Retry-After` (seconds) of a 503 UNAVAILABLE: a database restart takes a second or two. */
export const UNAVAILABLE_RETRY_AFTER_SECONDS = 2;

/**
 * postgres.js codes of a connection that failed, closed or timed out (Node's socket errors pass
 * through as they are): the database is out of reach, not the request at fault.
 */
const CONNECTION_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'CONNECT_TIMEOUT',
  'CONNECTION_CLOSED',
  'CONNECTION_DESTROYED',
  'CONNECTION_ENDED',
]);

/**
 * SQLSTATEs of a server that is going away, starting, full or too slow: class 08 (connection
 * exception), 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 53300
 * too_many_connections, and 57014 query_canceled, which is what the statement_timeout the example
 * server sets raises.
 */
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300', '57014']);

/**
 * True for an error that means "the database cannot answer right now": retry later. The plugin's
 * `MeshBusUnavailableError` (`code: 'UNAVAILABLE'`), and the host's own queries failing for want of
 * a connection. Anything else (a constraint, a syntax error: a bug) is not.
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  for (let e = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code !== 'string') continue;
    if (code === 'UNAVAILABLE' || CONNECTION_ERROR_CODES.has(code)) return true;
    if (e instanceof postgres.PostgresError && (code.startsWith('08') || UNAVAILABLE_SQLSTATES.has(code))) return true;
  }
  return false;
}

/**
 * `SELECT 1` within READINESS_TIMEOUT_MS. (Not cancelled when late: postgres.js drops the promise
 * of a cancel request, so one that cannot reach the server would be an unhandled rejection.)
 */
async function databaseAnswers(sql: Sql<any>, log: FastifyBaseLogger): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      sql`SELECT 1`,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('database check timed out')), READINESS_TIMEOUT_MS);
      }),
    ]);
    return true;
  } catch (error) {
    log.warn({ err: error }, 'readiness: database unreachable');
    return false;
  } finally {
    clearTimeout(timer);
  }
}

export async function buildApp({ sql, logger = false, loggerInstance, mesh = {}, webRoot }: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    ...(loggerInstance ? { loggerInstance } : { logger }),
    // Bodies are validated as written: no silent dropping of unknown fields, no type coercion.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true } },
    return503OnClosing: true,
  });

  app.setErrorHandler((error: FastifyError, request, reply) => {
    const status = error.statusCode ?? 500;
    if (error.validation) {
      return reply.code(400).send({ code: 'VALIDATION_ERROR', message: error.message });
    }
    // A notification the plugin refuses (MeshPublishError): bad input, never worth a retry.
    if (error.code === 'INVALID_EVENT') return reply.code(400).send({ code: 'INVALID_EVENT', message: error.message });
    // An outage (database restarting, unreachable, too slow): retry later. A change cut off at its
    // very commit may still have been made, with its event (the task's version tells).
    if (isDatabaseUnavailable(error)) {
      request.log.warn({ err: error }, 'database unavailable: answered 503');
      return reply
        .code(503)
        .header('retry-after', String(UNAVAILABLE_RETRY_AFTER_SECONDS))
        .send({ code: 'UNAVAILABLE', message: 'the database is unavailable right now; retry later' });
    }
    if (status < 500) return reply.code(status).send({ code: error.code ?? 'BAD_REQUEST', message: error.message });
    request.log.error({ err: error }, 'request failed');
    return reply.code(status).send({ code: 'INTERNAL_ERROR', message: 'internal error' });
  });

  app.setNotFoundHandler((request, reply) =>
    reply.code(404).send({ code: 'NOT_FOUND', message: `no route ${request.method} ${request.url.split('?')[0]}` }),
  );

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'mesh-subscriptions example host',
        description:
          'Task API and the WebSocket subscription endpoint. The WebSocket protocol: [AsyncAPI document](/asyncapi.yaml) (every frame, close and error codes, auth) and PROTOCOL.md.',
        version: PACKAGE_VERSION,
      },
      components: {
        securitySchemes: {
          apiKey: { type: 'apiKey', in: 'header', name: API_KEY_HEADER },
          bearer: { type: 'http', scheme: 'bearer' },
        },
      },
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  app.addSchema(ApiError);

  // The plugin's routes take the same credentials as ours (its `authenticate` is ours): say so in
  // their OpenAPI operations, so that Swagger UI's "Try it out" sends the key. The plugin cannot
  // name the schemes itself; they are the host's.
  const meshRoutes = new Set(
    [SUBSCRIBE_PATH, TICKETS_PATH, OUTPUT_HISTORY_PATH, UPDATES_HISTORY_PATH].map((path) => `${API_PREFIX}${path}`),
  );
  app.addHook('onRoute', (route) => {
    if (meshRoutes.has(route.url) && route.schema) route.schema = { ...route.schema, security: SECURITY };
  });

  const authenticate = apiKeyAuthenticator(sql);
  const reauthenticate = apiKeyReauthenticator(sql);
  await app.register(meshSubscriptions, { sql, authenticate, reauthenticate, bus: 'postgres', ...mesh, prefix: API_PREFIX });
  await app.register(taskRoutes, { sql, authenticate, prefix: API_PREFIX });

  // The AsyncAPI document of the WebSocket protocol, as committed at the top of the repository
  // (openapi/, two folders up from src/ and dist/; a test keeps it current).
  const asyncapi = await readFile(new URL('../../openapi/asyncapi.yaml', import.meta.url), 'utf8').catch(() => undefined);
  if (asyncapi) {
    app.get('/asyncapi.yaml', { schema: { hide: true } }, async (_request, reply) => reply.type('application/yaml').send(asyncapi));
  }

  // One route per built file (no wildcard): an unknown path still gets the API's JSON 404.
  if (webRoot) await app.register(fastifyStatic, { root: webRoot, wildcard: false, schemaHide: true });

  // Our metrics and the process's, in the registry the plugin uses.
  collectDefaultMetrics({ register: app.mesh.metrics });
  app.get('/metrics', { schema: { summary: 'Prometheus metrics', tags: ['Operations'] } }, async (_request, reply) =>
    reply.type(app.mesh.metrics.contentType).send(await app.mesh.metrics.metrics()),
  );

  app.get(
    '/readyz',
    {
      schema: {
        summary: 'Ready for new clients: database reachable, LISTEN connection up, not shutting down',
        tags: ['Operations'],
        response: { 200: { type: 'object', properties: { status: { type: 'string' } } }, 503: ApiError },
      },
    },
    async (request, reply) => {
      const { shuttingDown, listening } = app.mesh.readiness();
      if (shuttingDown) return reply.code(503).send({ code: 'SHUTTING_DOWN', message: 'draining before shutdown' });
      if (!listening) return reply.code(503).send({ code: 'NOT_LISTENING', message: 'the event bus is not hearing new events' });
      if (!(await databaseAnswers(sql, request.log))) return reply.code(503).send({ code: 'UNAVAILABLE', message: 'database unreachable' });
      return { status: 'ok' };
    },
  );

  app.get(
    '/healthz',
    {
      schema: {
        summary: 'Liveness: the process answers (dependencies are /readyz’s business)',
        tags: ['Operations'],
        response: { 200: { type: 'object', properties: { status: { type: 'string' } } } },
      },
    },
    async () => ({ status: 'ok' }),
  );

  return app;
}
