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

/** Headers that carry credentials in any host: censored by `safeLoggerOptions` whatever else it is given. */
export const CREDENTIAL_HEADERS = ['authorization', 'cookie', 'sec-websocket-protocol'] as const;

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

/**
 * pino `redact` paths for the credential headers, plus the host's own (e.g. the header its API
 * keys travel in), wherever code logs them: under `req.headers` and under `headers`.
 */
export function redactPaths(extraHeaders: readonly string[] = []): string[] {
  // Node gives header names in lower case.
  const names = [...new Set([...CREDENTIAL_HEADERS, ...extraHeaders.map((name) => name.toLowerCase())])];
  const keys = names.map((name) => (IDENTIFIER.test(name) ? `.${name}` : `[${JSON.stringify(name)}]`));
  return [...keys.map((key) => `req.headers${key}`), ...keys.map((key) => `headers${key}`)];
}

/** pino `redact` paths for the headers that carry credentials in any host (`redactPaths()`). */
export const REDACT_PATHS = redactPaths();

/**
 * Logger options for Fastify or pino that keep secrets out: `Fastify({ logger: safeLoggerOptions('info') })`.
 * `extraHeaders`: the host's own credential headers, e.g. `['x-api-key']`, censored as well.
 */
export function safeLoggerOptions(level: string, extraHeaders: readonly string[] = []) {
  return { level, serializers: { req: requestSerializer }, redact: { paths: redactPaths(extraHeaders), censor: REDACTED } };
}
