/**
 * The example host API: what a larger API that mounts mesh-subscriptions looks like. It owns the
 * database client, authentication and the task routes; the plugin streams what they publish.
 */
import swagger from '@fastify/swagger';
import { readFile } from 'node:fs/promises';
import fastifyStatic from '@fastify/static';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import type { Sql } from 'postgres';
import meshSubscriptions, { type MeshSubscriptionsOptions } from '../index.js';
import { API_KEY_HEADER, apiKeyAuthenticator, apiKeyReauthenticator } from './api-keys.js';
import { ApiError, taskRoutes } from './tasks-routes.js';

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

export const PACKAGE_VERSION = '0.1.0';

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
    if (status < 500) return reply.code(status).send({ code: error.code ?? 'BAD_REQUEST', message: error.message });
    request.log.error({ err: error }, 'request failed');
    return reply.code(status).send({ code: 'INTERNAL_ERROR', message: 'internal error' });
  });

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

  const authenticate = apiKeyAuthenticator(sql);
  const reauthenticate = apiKeyReauthenticator(sql);
  await app.register(meshSubscriptions, { sql, authenticate, reauthenticate, bus: 'postgres', ...mesh, prefix: API_PREFIX });
  await app.register(taskRoutes, { sql, authenticate, prefix: API_PREFIX });

  // The AsyncAPI document of the WebSocket protocol, as committed (a test keeps it current).
  const asyncapi = await readFile(new URL('../../openapi/asyncapi.yaml', import.meta.url), 'utf8').catch(() => undefined);
  if (asyncapi) {
    app.get('/asyncapi.yaml', { schema: { hide: true } }, async (_request, reply) => reply.type('application/yaml').send(asyncapi));
  }

  // One route per built file (no wildcard): an unknown path still gets the API's JSON 404.
  if (webRoot) await app.register(fastifyStatic, { root: webRoot, wildcard: false, schemaHide: true });

  app.get(
    '/healthz',
    {
      schema: {
        summary: 'Liveness and database reachability',
        tags: ['Operations'],
        response: { 200: { type: 'object', properties: { status: { type: 'string' } } }, 503: ApiError },
      },
    },
    async (request, reply) => {
      try {
        await Promise.race([
          sql`SELECT 1`,
          new Promise((_, reject) => setTimeout(() => reject(new Error('database check timed out')), 2000).unref()),
        ]);
        return { status: 'ok' };
      } catch (error) {
        request.log.warn({ err: error }, 'health check failed');
        return reply.code(503).send({ code: 'UNAVAILABLE', message: 'database unreachable' });
      }
    },
  );

  return app;
}
