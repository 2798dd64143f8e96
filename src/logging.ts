/**
 * Log hygiene for hosts: keys and tokens must reach no log line, whether they came in a header or
 * in the query string. The plugin itself never logs headers or URLs; a host's request logging
 * does, so it should use these.
 */
import type { FastifyRequest } from 'fastify';

const REDACTED = '[REDACTED]';

/** The path with every query value replaced: names stay readable, values (tokens) never show. */
export function redactUrl(url: string): string {
  const q = url.indexOf('?');
  if (q === -1) return url;
  const params = url
    .slice(q + 1)
    .split('&')
    .map((pair) => {
      const eq = pair.indexOf('=');
      return eq === -1 ? pair : `${pair.slice(0, eq)}=${REDACTED}`;
    });
  return `${url.slice(0, q)}?${params.join('&')}`;
}

/** A pino `req` serializer like Fastify's own, with the query string's values redacted. */
export function requestSerializer(request: FastifyRequest) {
  return {
    method: request.method,
    url: redactUrl(request.url),
    host: request.host,
    remoteAddress: request.ip,
    remotePort: request.socket?.remotePort,
  };
}

/** pino `redact` paths for headers that carry credentials, wherever code logs them. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-makima-api-key"]',
  'req.headers["sec-websocket-protocol"]',
  'headers.authorization',
  'headers.cookie',
  'headers["x-makima-api-key"]',
  'headers["sec-websocket-protocol"]',
];

/** Logger options for Fastify or pino that keep secrets out: `Fastify({ logger: safeLoggerOptions('info') })`. */
export function safeLoggerOptions(level: string) {
  return { level, serializers: { req: requestSerializer }, redact: { paths: REDACT_PATHS, censor: REDACTED } };
}
