/**
 * The plugin's options: one TypeBox schema is the source of every plain option's type, default,
 * bounds and description (the README's options table is generated from it: `npm run
 * options-table`); the options that are not plain data (the host's functions, its `sql` client,
 * a prom-client Registry, the origins kept as a Set) are checked explicitly. Unusable options are
 * rejected at registration rather than at the first connection.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import type { FastifyRequest } from 'fastify';
import type { Sql } from 'postgres';
import { Registry } from 'prom-client';
import type { OwnerResolver, Principal } from './core/ports.js';
import { MeshOptionsError } from './errors.js';

export type { OwnerResolver, Principal };

/**
 * A positive safe integer (or, with `infinity`, `Infinity`). `refusal` is how a bad value is
 * described; `defaultText` how the default reads in the README.
 */
function positiveInteger(
  defaultValue: number | undefined,
  description: string,
  extra: { infinity?: boolean; defaultText?: string } = {},
) {
  const annotations = {
    description,
    ...(defaultValue === undefined ? {} : { default: defaultValue }),
    ...(extra.defaultText === undefined ? {} : { defaultText: extra.defaultText }),
  };
  const integer = { exclusiveMinimum: 0, maximum: Number.MAX_SAFE_INTEGER };
  if (extra.infinity) {
    return Type.Union([Type.Integer(integer), Type.Literal(Number.POSITIVE_INFINITY)], {
      ...annotations,
      refusal: 'a positive integer or Infinity',
      showGot: true,
    });
  }
  return Type.Integer({ ...integer, ...annotations, refusal: 'a positive integer', showGot: true });
}

/**
 * The plain options, as resolved (every one present). Annotations besides JSON Schema's:
 * `refusal` — what the value must be, for the MeshOptionsError (`showGot`: the message also
 * quotes the bad value); `defaultText` — the README's wording of a default (of one that
 * depends on other options when there is no `default`); `nullIsUnset` — `null` means "not given".
 */
export const PlainOptionsSchema = Type.Object({
  prefix: Type.String({
    pattern: '^(?:/[\\s\\S]*[^/])?$',
    default: '/api/v1',
    description: 'route prefix, giving `{prefix}/mesh/tasks/subscribe`',
    refusal: '"" or a path like "/api/v1" (leading slash, no trailing slash)',
    nullIsUnset: true,
  }),
  tasksTable: Type.String({
    pattern: '^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)?$',
    default: 'tasks',
    description: 'table with `id uuid` and `owner_id uuid null`, used with `sql`',
    refusal: 'a plain SQL identifier such as "tasks" or "app.tasks"',
    nullIsUnset: true,
  }),
  bus: Type.Union([Type.Literal('memory'), Type.Literal('postgres')], {
    description:
      'where events are logged: this process only, recent events kept in memory for `since` (`memory`), or the ' +
      'PostgreSQL log every instance on the database shares (`postgres`, needs `sql`; below)',
    defaultText: '`postgres` with `sql`, else `memory`',
    refusal: '"memory" or "postgres"',
    nullIsUnset: true,
  }),
  migrate: Type.Boolean({
    default: true,
    description: "PostgreSQL bus: create/upgrade the plugin's tables and functions at start",
    refusal: 'a boolean',
  }),
  tickets: Type.Boolean({
    description:
      'browser sign-in: `POST {prefix}/mesh/tickets` (authenticated by `authenticate`) mints single-use tickets ' +
      'offered as the subprotocol `mesh.ticket.<ticket>` (PROTOCOL.md, "Browsers: tickets"; browsers cannot set ' +
      'headers on an upgrade, and this keeps credentials out of URLs); needs `reauthenticate`',
    defaultText: 'on when `reauthenticate` is given',
    refusal: 'a boolean',
  }),
  lookupTimeoutMs: positiveInteger(5_000, 'an owner lookup slower than this (ms) answers `UNAVAILABLE`'),
  maxPayload: positiveInteger(64 * 1024, 'largest client frame in bytes; larger closes the socket with 1009', {
    defaultText: '64 KiB',
  }),
  maxFramesPerSecond: positiveInteger(100, 'token bucket refill per connection, frames per second; over the bucket `RATE_LIMITED`'),
  frameBurst: positiveInteger(200, 'token bucket size per connection'),
  floodCloseAfterMs: positiveInteger(10_000, 'a connection rate-limited this long (ms) without a 1 s pause is closed with 1008'),
  maxSubscriptionsPerConnection: positiveInteger(
    1_000,
    'subscriptions (task, output, and `subscribeAll` each count one) per connection; over it `TOO_MANY_SUBSCRIPTIONS`',
  ),
  maxConnectionsPerPrincipal: positiveInteger(
    100,
    'open sockets per principal; over it the upgrade gets 429 (principals are told apart by `Principal.id`, ' +
      'default the owner id; the example host counts per API key)',
    { infinity: true },
  ),
  maxConnections: positiveInteger(
    Number.POSITIVE_INFINITY,
    'open sockets in total; over it the upgrade gets 503 with `Retry-After`',
    { infinity: true },
  ),
  softBufferLimit: positiveInteger(
    1024 * 1024,
    "buffered bytes above which a socket's output is dropped (then `lagged`) and updates conflated",
    { defaultText: '1 MiB' },
  ),
  hardBufferLimit: positiveInteger(8 * 1024 * 1024, 'buffered bytes above which a socket is closed with 4008; larger than `softBufferLimit`', {
    defaultText: '8 MiB',
  }),
  slowConsumerTimeoutMs: positiveInteger(30_000, 'a socket backed up longer than this (ms) is closed with 4008'),
  pingIntervalMs: positiveInteger(30_000, 'ping interval (ms); a socket that has not answered by the next ping is terminated'),
  reauthIntervalMs: positiveInteger(
    60_000,
    'how often (ms) each open socket is authenticated again (`reauthenticate`, else `authenticate`); `null` closes it with 4401',
  ),
  shutdownTimeoutMs: positiveInteger(10_000, '`app.close()` waits this long (ms) for close handshakes, then cuts'),
  historySize: positiveInteger(10_000, 'memory bus: how many recent events are kept for `since`'),
  maxReplay: positiveInteger(10_000, 'most events one `since` replays; beyond it the client gets `resyncRequired` `tooFarBehind`'),
  replayConcurrency: positiveInteger(
    4,
    'replay pages (at most 500 events or 256 KiB each) read at once across all sockets: resumes wait their turn ' +
      'rather than crowd out live delivery',
  ),
  publishTimeoutMs: positiveInteger(
    5_000,
    'PostgreSQL bus: `publish()` waiting longer (ms) for the log rejects with `MeshBusUnavailableError`',
  ),
  retentionMs: positiveInteger(24 * 60 * 60 * 1000, 'PostgreSQL bus: events older than this (ms) are pruned', {
    defaultText: '24 h',
  }),
  retentionPerTask: positiveInteger(10_000, 'PostgreSQL bus: at most this many events are kept per task (older ones pruned)'),
  pruneIntervalMs: positiveInteger(60_000, 'PostgreSQL bus: how often (ms) the log is pruned (one instance at a time)'),
  pollIntervalMs: positiveInteger(1_000, 'PostgreSQL bus: the log is read at least this often (ms), whatever the wake-ups'),
  listenTimeoutMs: positiveInteger(
    10_000,
    'PostgreSQL bus: a LISTEN connection silent this long (ms; not even its own heartbeat) is replaced',
  ),
  ticketTtlMs: positiveInteger(30_000, 'how long (ms) a ticket may wait for its upgrade'),
});

export type PlainOptions = Static<typeof PlainOptionsSchema>;

/** Accepted, checked, and ignored. */
export const DeprecatedOptionsSchema = Type.Object({
  ownerCacheSize: positiveInteger(
    undefined,
    'deprecated, ignored: owners are no longer cached; no cached owner decides who sees an event (PROTOCOL.md, "Who sees what")',
  ),
  ownerCacheTtlMs: positiveInteger(undefined, 'deprecated, ignored, as `ownerCacheSize`'),
});

/** The options that are not plain data, for the README's table (their checks are in `resolveOptions`). */
export const EXPLICIT_OPTION_DOCS: ReadonlyArray<{ name: string; label: string; defaultText: string; description: string }> = [
  {
    name: 'authenticate',
    label: '`authenticate(request)`',
    defaultText: 'required',
    description:
      'decides who may open a socket: returns `{ ownerId: string | null, admin: boolean }` or `null` (401); runs on the ' +
      'upgrade request before any 101; a throw (its store is down: no verdict) answers 503 with `Retry-After`',
  },
  {
    name: 'reauthenticate',
    label: '`reauthenticate(principal)`',
    defaultText: '—',
    description:
      "re-checks an open socket's principal every `reauthIntervalMs` (same or changed principal keeps it, `null` closes " +
      'with 4401, a throw keeps it until the next round). Given, the plugin keeps nothing of the upgrade request ' +
      '(~1.7 KiB less per socket); absent, `authenticate` runs again on the kept request. Needed for single-use ' +
      "credentials. The example host re-checks the key by its id (`Principal.id`)",
  },
  { name: 'sql', label: '`sql`', defaultText: '—', description: "the host's `postgres` client, for owner lookups" },
  {
    name: 'resolveOwners',
    label: '`resolveOwners(taskIds)`',
    defaultText: '—',
    description:
      'instead of a `tasks` table through `sql`: returns a `Map` of task id → owner id (`null`: no owner); ids that ' +
      'are not tasks left out. One of the two is required',
  },
  {
    name: 'allowedOrigins',
    label: '`allowedOrigins`',
    defaultText: '`[]` (no check)',
    description: 'browser Origins allowed to open a socket, exact match (like `https://app.example.com`); others get 403',
  },
  {
    name: 'metricsRegistry',
    label: '`metricsRegistry`',
    defaultText: 'a registry of its own',
    description: "a prom-client `Registry` to put the `mesh_*` metrics in (yours); either way it is `app.mesh.metrics`",
  },
];

export interface MeshSubscriptionsOptions extends Partial<PlainOptions> {
  /**
   * Decides who may open a socket. Runs on the upgrade request, before any 101; `null` answers 401,
   * a throw (its store is down: no verdict) answers 503 with `Retry-After`. Required: there is no
   * anonymous mode.
   */
  authenticate: (request: FastifyRequest) => Promise<Principal | null>;
  /**
   * Checks an open socket's principal again every `reauthIntervalMs`: the same principal (or a
   * changed one) keeps the socket, `null` closes it with 4401, a throw keeps it until the next
   * round. When given, the plugin keeps nothing of the upgrade request (about 1.7 KiB per socket);
   * without it, `authenticate` is run again on the kept upgrade request. A host whose credentials
   * can be presented only once (single-use tickets) must give it. Default: none.
   */
  reauthenticate?: (principal: Principal) => Promise<Principal | null>;
  /** The host's `postgres` client; the plugin reads task owners through it. */
  sql?: Sql<any>;
  /**
   * Where task owners come from when they are not in a `tasks(id, owner_id)` table reachable
   * through `sql`. One of `sql` and `resolveOwners` is required.
   */
  resolveOwners?: OwnerResolver;
  /** Browser Origins allowed to open a socket (exact match). Empty: no check. Default empty. */
  allowedOrigins?: readonly string[];
  /**
   * A prom-client Registry to put the plugin's metrics (`mesh_*`) in, e.g. the host's own.
   * Default: a registry of the plugin's own, at `app.mesh.metrics`.
   */
  metricsRegistry?: Registry;
  /**
   * @deprecated Ignored: owners are no longer cached. Who may see an event is decided from the
   * database's answer (settled when the event is logged, looked up on each subscribe), never from
   * a remembered one; an owner change is seen as soon as it commits.
   */
  ownerCacheSize?: number;
  /** @deprecated Ignored, as `ownerCacheSize`. */
  ownerCacheTtlMs?: number;
}

export interface ResolvedOptions extends PlainOptions {
  authenticate: MeshSubscriptionsOptions['authenticate'];
  reauthenticate: MeshSubscriptionsOptions['reauthenticate'];
  sql: Sql<any> | undefined;
  resolveOwners: OwnerResolver | undefined;
  allowedOrigins: ReadonlySet<string>;
  metricsRegistry: Registry;
}

type PlainKey = keyof PlainOptions;
/** The plain options whose default does not depend on other options. */
type DefaultedKey = Exclude<PlainKey, 'bus' | 'tickets'>;

function schemaDefaults(): Pick<PlainOptions, DefaultedKey> {
  const defaults: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(PlainOptionsSchema.properties) as Array<[string, TSchema]>) {
    if ('default' in schema) defaults[name] = schema.default;
  }
  return defaults as Pick<PlainOptions, DefaultedKey>;
}

/** Every documented default (those of `bus` and `tickets` depend on other options). */
export const DEFAULTS: Readonly<Pick<PlainOptions, DefaultedKey> & { allowedOrigins: readonly string[] }> = Object.freeze({
  ...schemaDefaults(),
  allowedOrigins: [] as readonly string[],
});

/** The value of one schema-described option: `undefined` when not given, else checked against its schema. */
function given(name: string, schema: TSchema, value: unknown): unknown {
  if (value === undefined || (value === null && schema.nullIsUnset === true)) return undefined;
  if (!Value.Check(schema, value)) {
    const got = schema.showGot === true ? `, got ${JSON.stringify(value)}` : '';
    throw new MeshOptionsError(`option "${name}" must be ${String(schema.refusal)}${got}`);
  }
  return value;
}

function origins(value: unknown): ReadonlySet<string> {
  if (value === undefined) return new Set();
  if (!Array.isArray(value) || !value.every((o) => typeof o === 'string' && /^https?:\/\/[^/]+$/.test(o))) {
    throw new MeshOptionsError('option "allowedOrigins" must be an array of origins like "https://app.example.com"');
  }
  return new Set(value as string[]);
}

export function resolveOptions(raw: unknown): ResolvedOptions {
  if (typeof raw !== 'object' || raw === null) throw new MeshOptionsError('options must be an object');
  const o = raw as Partial<MeshSubscriptionsOptions>;
  if (typeof o.authenticate !== 'function') {
    throw new MeshOptionsError('option "authenticate" (request) => Promise<Principal | null> is required');
  }
  if (o.reauthenticate !== undefined && typeof o.reauthenticate !== 'function') {
    throw new MeshOptionsError('option "reauthenticate" must be a function (principal) => Promise<Principal | null>');
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
  // Not instanceof: a host may load another copy of prom-client.
  const registry = o.metricsRegistry as Partial<Registry> | undefined;
  if (registry !== undefined && (typeof registry.registerMetric !== 'function' || typeof registry.metrics !== 'function')) {
    throw new MeshOptionsError('option "metricsRegistry" must be a prom-client Registry');
  }
  const plain: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(PlainOptionsSchema.properties) as Array<[PlainKey, TSchema]>) {
    plain[name] = given(name, schema, o[name]) ?? schema.default;
  }
  const resolved = plain as PlainOptions;
  resolved.bus ??= o.sql !== undefined ? 'postgres' : 'memory';
  if (resolved.bus === 'postgres' && o.sql === undefined) throw new MeshOptionsError('option bus: "postgres" needs "sql"');
  resolved.tickets ??= o.reauthenticate !== undefined;
  if (resolved.tickets && o.reauthenticate === undefined) {
    throw new MeshOptionsError('option "tickets" needs "reauthenticate": a socket opened with a single-use ticket cannot present it again');
  }
  if (resolved.hardBufferLimit <= resolved.softBufferLimit) {
    throw new MeshOptionsError('option "hardBufferLimit" must be larger than "softBufferLimit"');
  }
  // Deprecated and ignored, but a malformed one is still a mistake worth saying.
  for (const [name, schema] of Object.entries(DeprecatedOptionsSchema.properties) as Array<[keyof typeof o, TSchema]>) {
    given(name, schema, o[name]);
  }
  return {
    ...resolved,
    authenticate: o.authenticate,
    reauthenticate: o.reauthenticate,
    sql: o.sql,
    resolveOwners: o.resolveOwners,
    allowedOrigins: origins(o.allowedOrigins),
    metricsRegistry: o.metricsRegistry ?? new Registry(),
  };
}
