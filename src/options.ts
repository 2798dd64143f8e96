/**
 * The plugin's one options type, its documented defaults, and the check that rejects unusable
 * options at registration rather than at the first connection.
 */
import type { FastifyRequest } from 'fastify';
import type { Sql } from 'postgres';
import { MeshOptionsError } from './errors.js';

/** Who is on the other end of a socket, as the host's `authenticate` says. */
export interface Principal {
  /** The owner whose tasks this principal may see; `null` for a principal that owns nothing. */
  ownerId: string | null;
  /** Admins see every task, including tasks without an owner. */
  admin: boolean;
}

/** Maps task ids to their owner (`null`: no owner). Ids that are not tasks are left out. */
export type OwnerResolver = (taskIds: readonly string[]) => Promise<ReadonlyMap<string, string | null>>;

export interface MeshSubscriptionsOptions {
  /**
   * Decides who may open a socket. Runs on the upgrade request, before any 101; `null` or a throw
   * answers 401. Required: there is no anonymous mode.
   */
  authenticate: (request: FastifyRequest) => Promise<Principal | null>;
  /** The host's `postgres` client; the plugin reads task owners through it. */
  sql?: Sql<any>;
  /**
   * Where task owners come from when they are not in a `tasks(id, owner_id)` table reachable
   * through `sql`. One of `sql` and `resolveOwners` is required.
   */
  resolveOwners?: OwnerResolver;
  /** Route prefix. Default `/api/v1`, giving `/api/v1/mesh/tasks/subscribe`. */
  prefix?: string;
  /** Table holding `id uuid` and `owner_id uuid null`, used with `sql`. Default `tasks`. */
  tasksTable?: string;
  /** How many task owners to keep in memory. Default 10,000. */
  ownerCacheSize?: number;
  /** How long a cached owner is trusted, in ms. Default 60,000. */
  ownerCacheTtlMs?: number;
  /** How long an owner lookup may take before the subscribe fails with UNAVAILABLE. Default 5,000 ms. */
  lookupTimeoutMs?: number;
  /** Largest client frame in bytes; larger closes the socket with 1009. Default 64 KiB. */
  maxPayload?: number;
}

export interface ResolvedOptions {
  authenticate: MeshSubscriptionsOptions['authenticate'];
  sql: Sql<any> | undefined;
  resolveOwners: OwnerResolver | undefined;
  prefix: string;
  tasksTable: string;
  ownerCacheSize: number;
  ownerCacheTtlMs: number;
  lookupTimeoutMs: number;
  maxPayload: number;
}

export const DEFAULTS = {
  prefix: '/api/v1',
  tasksTable: 'tasks',
  ownerCacheSize: 10_000,
  ownerCacheTtlMs: 60_000,
  lookupTimeoutMs: 5_000,
  maxPayload: 64 * 1024,
} as const;

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$/;

function positiveInteger(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new MeshOptionsError(`option "${name}" must be a positive integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

export function resolveOptions(raw: unknown): ResolvedOptions {
  if (typeof raw !== 'object' || raw === null) throw new MeshOptionsError('options must be an object');
  const o = raw as Partial<MeshSubscriptionsOptions>;
  if (typeof o.authenticate !== 'function') {
    throw new MeshOptionsError('option "authenticate" (request) => Promise<Principal | null> is required');
  }
  if (o.sql !== undefined && typeof o.sql !== 'function') {
    throw new MeshOptionsError('option "sql" must be a client from the `postgres` package');
  }
  if (o.resolveOwners !== undefined && typeof o.resolveOwners !== 'function') {
    throw new MeshOptionsError('option "resolveOwners" must be a function');
  }
  if (o.sql === undefined && o.resolveOwners === undefined) {
    throw new MeshOptionsError('one of "sql" or "resolveOwners" is required to check task ownership');
  }
  const prefix = o.prefix ?? DEFAULTS.prefix;
  if (typeof prefix !== 'string' || (prefix !== '' && (!prefix.startsWith('/') || prefix.endsWith('/')))) {
    throw new MeshOptionsError('option "prefix" must be "" or a path like "/api/v1" (leading slash, no trailing slash)');
  }
  const tasksTable = o.tasksTable ?? DEFAULTS.tasksTable;
  if (typeof tasksTable !== 'string' || !IDENTIFIER.test(tasksTable)) {
    throw new MeshOptionsError('option "tasksTable" must be a plain SQL identifier such as "tasks" or "app.tasks"');
  }
  return {
    authenticate: o.authenticate,
    sql: o.sql,
    resolveOwners: o.resolveOwners,
    prefix,
    tasksTable,
    ownerCacheSize: positiveInteger('ownerCacheSize', o.ownerCacheSize, DEFAULTS.ownerCacheSize),
    ownerCacheTtlMs: positiveInteger('ownerCacheTtlMs', o.ownerCacheTtlMs, DEFAULTS.ownerCacheTtlMs),
    lookupTimeoutMs: positiveInteger('lookupTimeoutMs', o.lookupTimeoutMs, DEFAULTS.lookupTimeoutMs),
    maxPayload: positiveInteger('maxPayload', o.maxPayload, DEFAULTS.maxPayload),
  };
}
