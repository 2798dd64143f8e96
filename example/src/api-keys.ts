/**
 * API keys of the example host: random keys shown once, stored as their SHA-256, accepted from
 * `x-makima-api-key` (what the iOS app sends) or `Authorization: Bearer`.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import type { Sql } from 'postgres';
import type { Principal } from 'mesh-subscriptions';

export const API_KEY_HEADER = 'x-makima-api-key';

export const hashKey = (key: string): string => createHash('sha256').update(key, 'utf8').digest('hex');

export async function createApiKey(sql: Sql<any>, grant: { ownerId: string | null; admin: boolean }): Promise<string> {
  const key = `mk_${randomBytes(24).toString('base64url')}`;
  await sql`INSERT INTO api_keys (key_hash, owner_id, is_admin) VALUES (${hashKey(key)}, ${grant.ownerId}, ${grant.admin})`;
  return key;
}

export async function revokeApiKey(sql: Sql<any>, key: string): Promise<boolean> {
  const rows = await sql`UPDATE api_keys SET revoked_at = now() WHERE key_hash = ${hashKey(key)} AND revoked_at IS NULL RETURNING 1`;
  return rows.length > 0;
}

export function keyFromRequest(request: FastifyRequest): string | undefined {
  const header = request.headers[API_KEY_HEADER];
  if (typeof header === 'string' && header.length > 0) return header;
  const authorization = request.headers.authorization;
  if (typeof authorization === 'string') {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (match) return match[1];
  }
  return undefined;
}

type KeyRow = { id: string; owner_id: string | null; is_admin: boolean };
const principalOf = (row: KeyRow | undefined): Principal | null =>
  row ? { ownerId: row.owner_id, admin: row.is_admin, id: row.id } : null;

/** Resolves the principal of a request's key; `null` for a missing, unknown or revoked key. */
export function apiKeyAuthenticator(sql: Sql<any>) {
  return async (request: FastifyRequest): Promise<Principal | null> => {
    const key = keyFromRequest(request);
    if (!key || key.length > 512) return null;
    const [row] = await sql<KeyRow[]>`
      SELECT id::text, owner_id::text AS owner_id, is_admin FROM api_keys WHERE key_hash = ${hashKey(key)} AND revoked_at IS NULL`;
    return principalOf(row);
  };
}

/** Checks an open socket's key again by its id (the principal's), so the upgrade request need not be kept. */
export function apiKeyReauthenticator(sql: Sql<any>) {
  return async (principal: Principal): Promise<Principal | null> => {
    if (principal.id === undefined) return null;
    const [row] = await sql<KeyRow[]>`
      SELECT id::text, owner_id::text AS owner_id, is_admin FROM api_keys WHERE id = ${principal.id} AND revoked_at IS NULL`;
    return principalOf(row);
  };
}
