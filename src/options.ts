/**
 * The plugin's options: one TypeBox schema is the source of every plain option's type, default,
 * bounds, description and refusal text, grouped by the part of the plugin that reads them
 * (`limits`, `backpressure`, `heartbeat`, `reauth`, `replay`, `tasks`, `owners`, `postgres`, `tickets`,
 * `shutdown`; a few host-integration options at the top level). The README's options tables are
 * generated from it (`npm run options-table`). The flat names from before the groups
 * (`maxPayload` for `limits.maxPayload`, …) are still accepted: FLAT_OPTION_NAMES. The options
 * that are not plain data (the host's functions, its `sql` client, a prom-client Registry, the
 * origins kept as a Set) are checked explicitly. Unusable options are rejected at registration
 * rather than at the first connection.
 */
import { KindGuard, Type, type Static, type TObject, type TProperties, type TSchema } from '@sinclair/typebox';
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
function positiveInteger(defaultValue: number | undefined, description: string, extra: { infinity?: boolean; defaultText?: string } = {}) {
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
 * A group of options: an object whose keys are its options. A key the group does not have is
 * refused (a misspelt one would otherwise fall back to its default unseen).
 */
function group<T extends TProperties>(description: string, properties: T) {
  return Type.Object(properties, { description, additionalProperties: false });
}

/**
 * The plain options, grouped, as resolved (every one present). A few host-integration options
 * stay at the top level; every other one is in the group of the part of the plugin that reads it.
 * Annotations besides JSON Schema's: `refusal` — what the value must be, for the
 * MeshOptionsError (`showGot`: the message also quotes the bad value); `defaultText` — the
 * README's wording of a default (of one that depends on other options when there is no
 * `default`); `nullIsUnset` — `null` means "not given".
 */
export const PlainOptionsSchema = Type.Object({
  prefix: Type.String({
    pattern: '^(?:/[\\s\\S]*[^/])?$',
    default: '/api/v1',
    description: 'route prefix, giving `{prefix}/mesh/tasks/subscribe`',
    refusal: '"" or a path like "/api/v1" (leading slash, no trailing slash)',
    nullIsUnset: true,
  }),
  historyRoutes: Type.Boolean({
    default: true,
    description:
      "serve `GET {prefix}/mesh/tasks/{taskId}/output` and `…/updates`: a task's retained history, a page at a time, " +
      'authenticated by `authenticate` (PROTOCOL.md, "REST history"); `false`: the routes do not exist',
    refusal: 'a boolean',
  }),
  bus: Type.Union([Type.Literal('memory'), Type.Literal('postgres')], {
    description:
      'where events are logged: this process only, recent events kept in memory for `since` (`memory`), or the ' +
      'PostgreSQL log every instance on the database shares (`postgres`, needs `sql`; its options are the group `postgres`)',
    defaultText: '`postgres` with `sql`, else `memory`',
    refusal: '"memory" or "postgres"',
    nullIsUnset: true,
  }),
  limits: group('what one connection may send and hold, and how many sockets may be open', {
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
    maxConnections: positiveInteger(Number.POSITIVE_INFINITY, 'open sockets in total; over it the upgrade gets 503 with `Retry-After`', {
      infinity: true,
    }),
  }),
  backpressure: group('how much may wait for a socket that reads slower than its events come, and for how long', {
    soft: positiveInteger(1024 * 1024, "buffered bytes above which a socket's output is dropped (then `lagged`) and updates conflated", {
      defaultText: '1 MiB',
    }),
    hard: positiveInteger(8 * 1024 * 1024, 'buffered bytes above which a socket is closed with 4008; larger than `backpressure.soft`', {
      defaultText: '8 MiB',
    }),
    timeoutMs: positiveInteger(30_000, 'a socket backed up longer than this (ms) is closed with 4008'),
  }),
  heartbeat: group("the server's pings, which find dead sockets", {
    intervalMs: positiveInteger(30_000, 'ping interval (ms); a socket that has not answered by the next ping is terminated'),
  }),
  reauth: group('open sockets are authenticated again, on an interval', {
    intervalMs: positiveInteger(
      60_000,
      'how often (ms) each open socket is authenticated again (`reauthenticate`, else `authenticate`); `null` closes it with 4401',
    ),
  }),
  replay: group('resuming with `since` (how far back, how much at once)', {
    historySize: positiveInteger(10_000, 'memory bus: how many recent events are kept for `since`'),
    maxEvents: positiveInteger(
      10_000,
      'most events one `since` replays; beyond it the client gets `resyncRequired` `tooFarBehind` (from `"start"`: the newest ones, after `historyTruncated` `maxReplay`)',
    ),
    concurrency: positiveInteger(
      4,
      'replay pages (at most 500 events or 256 KiB each) read at once across all sockets: resumes wait their turn ' +
        'rather than crowd out live delivery; one principal holds at most half of them',
    ),
  }),
  tasks: group("the host's tasks table, where owners are read through `sql` (unused with `resolveOwners`); checked at start", {
    table: Type.String({
      pattern: '^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)?$',
      default: 'tasks',
      description:
        "the table, `schema.table` or a name found through the role's `search_path` (qualify it when SQL publishers may have another one)",
      refusal: 'a plain SQL identifier such as "tasks" or "app.tasks"',
      nullIsUnset: true,
    }),
    idColumn: Type.String({
      pattern: '^[A-Za-z_][A-Za-z0-9_]*$',
      default: 'id',
      description: 'the task id column, of type `uuid`',
      refusal: 'a plain SQL identifier such as "id"',
    }),
    ownerColumn: Type.String({
      pattern: '^[A-Za-z_][A-Za-z0-9_]*$',
      default: 'owner_id',
      description: 'the owner id column, `uuid` (or text holding one), NULL for a task with no owner',
      refusal: 'a plain SQL identifier such as "owner_id"',
    }),
  }),
  owners: group('owner lookups, through `sql` and the `tasks` table or through `resolveOwners`', {
    lookupTimeoutMs: positiveInteger(5_000, 'an owner lookup slower than this (ms) answers `UNAVAILABLE`'),
  }),
  postgres: group('the PostgreSQL bus (`bus: "postgres"`); unused with the memory bus', {
    schema: Type.String({
      pattern: '^[A-Za-z_][A-Za-z0-9_]*$',
      default: 'public',
      description:
        "the PostgreSQL schema the plugin's tables and functions live in (every name is qualified with it, never left to `search_path`)",
      refusal: 'a plain SQL identifier such as "mesh"',
    }),
    migrate: Type.Boolean({
      default: true,
      description:
        "at start, create or update the plugin's objects when they are missing or older (nothing is changed when they are current); " +
        'off: a missing or older object fails the start with the command that creates it (README, "Migrations, and what they create")',
      refusal: 'a boolean',
    }),
    publishTimeoutMs: positiveInteger(5_000, '`publish()` waiting longer (ms) for the log rejects with `MeshBusUnavailableError`'),
    retentionMs: positiveInteger(24 * 60 * 60 * 1000, 'events older than this (ms) are pruned', { defaultText: '24 h' }),
    retentionPerTask: positiveInteger(10_000, 'at most this many events are kept per task (older ones pruned)'),
    pruneIntervalMs: positiveInteger(60_000, 'how often (ms) the log is pruned (one instance at a time)'),
    pollIntervalMs: positiveInteger(1_000, 'the log is read at least this often (ms), whatever the wake-ups'),
    listenTimeoutMs: positiveInteger(10_000, 'a LISTEN connection silent this long (ms; not even its own heartbeat) is replaced'),
    notifyRows: Type.Boolean({
      default: false,
      description:
        "each publish's NOTIFY carries its events (signed), so that other instances deliver them without reading the log " +
        '(one round trip less: README, "Several instances"); off: a bare wake-up. Turn it on only where no untrusted role ' +
        'may connect to the database: PostgreSQL has no privilege on LISTEN, and any role that may connect (PUBLIC by default) ' +
        'can read what a NOTIFY carries',
      refusal: 'a boolean',
    }),
  }),
  tickets: group('browser sign-in with single-use tickets', {
    enabled: Type.Boolean({
      description:
        '`POST {prefix}/mesh/tickets` (authenticated by `authenticate`) mints single-use tickets offered as the ' +
        'subprotocol `mesh.ticket.<ticket>` (PROTOCOL.md, "Browsers: tickets"; browsers cannot set headers on an ' +
        'upgrade, and this keeps credentials out of URLs); needs `reauthenticate`',
      defaultText: 'on when `reauthenticate` is given',
      refusal: 'a boolean',
    }),
    ttlMs: positiveInteger(30_000, 'how long (ms) a ticket may wait for its upgrade'),
  }),
  shutdown: group('how long `app.close()` waits for the sockets', {
    timeoutMs: positiveInteger(10_000, '`app.close()` waits this long (ms) for close handshakes, then cuts'),
  }),
});

export type PlainOptions = Static<typeof PlainOptionsSchema>;

type Properties = (typeof PlainOptionsSchema)['properties'];
/** The names of the groups: the plain options that are objects of options. */
export type GroupName = { [K in keyof Properties]: Properties[K] extends TObject ? K : never }[keyof Properties];
/** The plain options that are not in a group. */
type TopLevelName = Exclude<keyof PlainOptions, GroupName>;

export type LimitsOptions = PlainOptions['limits'];
export type PostgresOptions = PlainOptions['postgres'];
export type TicketsOptions = PlainOptions['tickets'];
export type TasksOptions = PlainOptions['tasks'];

/**
 * The compatible form: each option's name from before the options were grouped, and the grouped
 * option it stands for. A host may give either, not both. (`tickets` is both a flat name and a
 * group: a boolean there is `tickets.enabled`, an object the group.)
 */
export const FLAT_OPTION_NAMES = {
  maxPayload: 'limits.maxPayload',
  maxFramesPerSecond: 'limits.maxFramesPerSecond',
  frameBurst: 'limits.frameBurst',
  floodCloseAfterMs: 'limits.floodCloseAfterMs',
  maxSubscriptionsPerConnection: 'limits.maxSubscriptionsPerConnection',
  maxConnectionsPerPrincipal: 'limits.maxConnectionsPerPrincipal',
  maxConnections: 'limits.maxConnections',
  softBufferLimit: 'backpressure.soft',
  hardBufferLimit: 'backpressure.hard',
  slowConsumerTimeoutMs: 'backpressure.timeoutMs',
  pingIntervalMs: 'heartbeat.intervalMs',
  reauthIntervalMs: 'reauth.intervalMs',
  historySize: 'replay.historySize',
  maxReplay: 'replay.maxEvents',
  replayConcurrency: 'replay.concurrency',
  tasksTable: 'tasks.table',
  lookupTimeoutMs: 'owners.lookupTimeoutMs',
  migrate: 'postgres.migrate',
  publishTimeoutMs: 'postgres.publishTimeoutMs',
  retentionMs: 'postgres.retentionMs',
  retentionPerTask: 'postgres.retentionPerTask',
  pruneIntervalMs: 'postgres.pruneIntervalMs',
  pollIntervalMs: 'postgres.pollIntervalMs',
  listenTimeoutMs: 'postgres.listenTimeoutMs',
  tickets: 'tickets.enabled',
  ticketTtlMs: 'tickets.ttlMs',
  shutdownTimeoutMs: 'shutdown.timeoutMs',
} as const satisfies Record<string, GroupedPath>;

/** `group.option`, for every option of every group. */
type GroupedPath = { [G in GroupName]: `${G}.${keyof PlainOptions[G] & string}` }[GroupName];
type FlatName = keyof typeof FLAT_OPTION_NAMES;
/** The type of the grouped option a path names. */
type AtPath<P> = P extends `${infer G extends GroupName}.${infer K}`
  ? K extends keyof PlainOptions[G]
    ? PlainOptions[G][K]
    : never
  : never;
type FlatOptions = { [F in FlatName]?: AtPath<(typeof FLAT_OPTION_NAMES)[F]> };
type GroupedOptions = { [G in GroupName]?: Partial<PlainOptions[G]> };
/** Every plain option a host may give: the top-level ones, the groups, and the flat names (`tickets` is both). */
type PlainInput = Partial<Pick<PlainOptions, TopLevelName>> & {
  [K in FlatName | GroupName]?: (K extends FlatName ? FlatOptions[K] : never) | (K extends GroupName ? GroupedOptions[K] : never);
};

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
      "re-checks an open socket's principal every `reauth.intervalMs` (same or changed principal keeps it, `null` closes " +
      'with 4401, a throw keeps it until the next round). Given, the plugin keeps nothing of the upgrade request ' +
      '(~1.7 KiB less per socket); absent, `authenticate` runs again on the kept request. Needed for single-use ' +
      'credentials. The example host re-checks the key by its id (`Principal.id`)',
  },
  { name: 'sql', label: '`sql`', defaultText: '—', description: "the host's `postgres` client, for owner lookups" },
  {
    name: 'directSql',
    label: '`directSql`',
    defaultText: '`sql`',
    description:
      'a `postgres` client connected to PostgreSQL directly, not through a transaction-mode pooler (PgBouncer): ' +
      'the connections that need a session (LISTEN, advisory locks, migrations) use it; everything else uses `sql`',
  },
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
    description: 'a prom-client `Registry` to put the `mesh_*` metrics in (yours); either way it is `app.mesh.metrics`',
  },
];

/**
 * What a host gives `app.register(meshSubscriptions, …)`: the options of the README's table. The
 * plain ones grouped (`limits: { maxPayload }`), or by their flat names from before the groups
 * (`maxPayload`): either, not both, for one option.
 */
export interface MeshSubscriptionsOptions extends PlainInput {
  /**
   * Decides who may open a socket. Runs on the upgrade request, before any 101; `null` answers 401,
   * a throw (its store is down: no verdict) answers 503 with `Retry-After`. Required: there is no
   * anonymous mode.
   */
  authenticate: (request: FastifyRequest) => Promise<Principal | null>;
  /**
   * Checks an open socket's principal again every `reauth.intervalMs`: the same principal (or a
   * changed one) keeps the socket, `null` closes it with 4401, a throw keeps it until the next
   * round. When given, the plugin keeps nothing of the upgrade request (about 1.7 KiB per socket);
   * without it, `authenticate` is run again on the kept upgrade request. A host whose credentials
   * can be presented only once (single-use tickets) must give it. Default: none.
   */
  reauthenticate?: (principal: Principal) => Promise<Principal | null>;
  /** The host's `postgres` client; the plugin reads task owners through it. */
  sql?: Sql<any>;
  /**
   * A `postgres` client connected to PostgreSQL directly, when `sql` goes through a
   * transaction-mode pooler (PgBouncer, a managed pooler): what needs a session (LISTEN, advisory
   * locks, migrations) uses it, everything else `sql`. Default: `sql` itself.
   */
  directSql?: Sql<any>;
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

/** The options as the plugin uses them: grouped, every plain one present. */
export interface ResolvedOptions extends PlainOptions {
  authenticate: MeshSubscriptionsOptions['authenticate'];
  reauthenticate: MeshSubscriptionsOptions['reauthenticate'];
  sql: Sql<any> | undefined;
  /** `directSql`, else `sql`. */
  directSql: Sql<any> | undefined;
  resolveOwners: OwnerResolver | undefined;
  allowedOrigins: ReadonlySet<string>;
  metricsRegistry: Registry;
}

const isGroup = (schema: TSchema): schema is TObject => KindGuard.IsObject(schema);
const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** Each grouped path's flat name. */
const FLAT_NAME_OF: ReadonlyMap<string, FlatName> = new Map(
  (Object.entries(FLAT_OPTION_NAMES) as Array<[FlatName, GroupedPath]>).map(([flat, path]) => [path, flat]),
);

/** The flat name of a grouped option, if it has one (for the README's table). */
export function flatNameOf(group: string, option: string): string | undefined {
  return FLAT_NAME_OF.get(`${group}.${option}`);
}

/** The defaults of the plain options (those of `bus` and `tickets.enabled` depend on other options). */
type Defaults = Omit<PlainOptions, 'bus' | 'tickets'> & { tickets: Omit<TicketsOptions, 'enabled'> };
type ReadonlyGroups<T> = { readonly [K in keyof T]: T[K] extends object ? Readonly<T[K]> : T[K] };

function schemaDefaults(): Record<string, unknown> {
  const defaults: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(PlainOptionsSchema.properties) as Array<[string, TSchema]>) {
    if (isGroup(schema)) {
      const inGroup: Record<string, unknown> = {};
      for (const [option, s] of Object.entries(schema.properties)) if ('default' in s) inGroup[option] = s.default;
      defaults[name] = Object.freeze(inGroup);
    } else if ('default' in schema) {
      defaults[name] = schema.default;
    }
  }
  defaults.allowedOrigins = Object.freeze([]);
  return Object.freeze(defaults);
}

/**
 * Every documented default, grouped as the options are (`DEFAULTS.limits.maxPayload`), frozen;
 * those of `bus` and `tickets.enabled` depend on other options. A group spreads into a whole
 * group: `limits: { ...DEFAULTS.limits, maxConnections: 10 }`.
 */
export const DEFAULTS: ReadonlyGroups<Defaults & { allowedOrigins: readonly string[] }> = schemaDefaults() as never;

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

/**
 * The plain options, from the grouped and the flat forms: each checked against its schema under
 * the name the host gave it, the default for one given in neither form. `named` gets the name
 * each grouped option was given under (flat or grouped), for the checks across options.
 */
function plainOptions(o: Record<string, unknown>, named: Map<string, string>): PlainOptions {
  const plain: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(PlainOptionsSchema.properties) as Array<[string, TSchema]>) {
    if (!isGroup(schema)) {
      plain[name] = given(name, schema, o[name]) ?? schema.default;
      continue;
    }
    const options = Object.keys(schema.properties);
    const raw = o[name];
    // A group whose name is a flat name too (`tickets`): a value that is not an object is the flat form.
    const flatHere = Object.hasOwn(FLAT_OPTION_NAMES, name) ? FLAT_OPTION_NAMES[name as FlatName] : undefined;
    if (raw !== undefined && !isObject(raw)) {
      const flatSchema = flatHere && schema.properties[flatHere.slice(name.length + 1)];
      if (!flatSchema || !Value.Check(flatSchema, raw)) {
        const flatForm = flatSchema ? `, or ${String(flatSchema.refusal)} (the flat form of "${flatHere}")` : '';
        throw new MeshOptionsError(`option "${name}" must be an object of the ${name} options (${options.join(', ')})${flatForm}`);
      }
    }
    const grouped = isObject(raw) ? raw : {};
    for (const key of Object.keys(grouped)) {
      if (!Object.hasOwn(schema.properties, key)) {
        throw new MeshOptionsError(`option "${name}.${key}" is unknown: the ${name} options are ${options.join(', ')}`);
      }
    }
    const values: Record<string, unknown> = {};
    for (const option of options) {
      const s = schema.properties[option]!;
      const path = `${name}.${option}`;
      const flat = FLAT_NAME_OF.get(path);
      const fromGroup = given(path, s, grouped[option]);
      const fromFlat = flat === undefined || (flat === name && isObject(raw)) ? undefined : given(flat, s, o[flat]);
      if (fromGroup !== undefined && fromFlat !== undefined) {
        throw new MeshOptionsError(
          `options "${flat}" and "${path}" are one option, given twice: keep one (the grouped "${path}" is preferred)`,
        );
      }
      named.set(path, fromFlat !== undefined ? flat! : path);
      values[option] = fromGroup ?? fromFlat ?? s.default;
    }
    plain[name] = values;
  }
  return plain as PlainOptions;
}

export function resolveOptions(raw: unknown): ResolvedOptions {
  if (typeof raw !== 'object' || raw === null) throw new MeshOptionsError('options must be an object');
  const o = raw as Partial<MeshSubscriptionsOptions> & Record<string, unknown>;
  if (typeof o.authenticate !== 'function') {
    throw new MeshOptionsError('option "authenticate" (request) => Promise<Principal | null> is required');
  }
  if (o.reauthenticate !== undefined && typeof o.reauthenticate !== 'function') {
    throw new MeshOptionsError('option "reauthenticate" must be a function (principal) => Promise<Principal | null>');
  }
  if (o.sql !== undefined && typeof o.sql !== 'function') {
    throw new MeshOptionsError('option "sql" must be a client from the `postgres` package');
  }
  if (o.directSql !== undefined && typeof o.directSql !== 'function') {
    throw new MeshOptionsError('option "directSql" must be a client from the `postgres` package');
  }
  if (o.directSql !== undefined && o.sql === undefined) throw new MeshOptionsError('option "directSql" needs "sql"');
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
  const named = new Map<string, string>();
  const resolved = plainOptions(o, named);
  resolved.bus ??= o.sql !== undefined ? 'postgres' : 'memory';
  if (resolved.bus === 'postgres' && o.sql === undefined) throw new MeshOptionsError('option bus: "postgres" needs "sql"');
  resolved.tickets.enabled ??= o.reauthenticate !== undefined;
  if (resolved.tickets.enabled && o.reauthenticate === undefined) {
    throw new MeshOptionsError(
      `option "${named.get('tickets.enabled')}" needs "reauthenticate": a socket opened with a single-use ticket cannot present it again`,
    );
  }
  if (resolved.backpressure.hard <= resolved.backpressure.soft) {
    throw new MeshOptionsError(`option "${named.get('backpressure.hard')}" must be larger than "${named.get('backpressure.soft')}"`);
  }
  // Deprecated and ignored, but a malformed one is still a mistake worth saying.
  for (const [name, schema] of Object.entries(DeprecatedOptionsSchema.properties) as Array<[string, TSchema]>) {
    given(name, schema, o[name]);
  }
  return {
    ...resolved,
    authenticate: o.authenticate,
    reauthenticate: o.reauthenticate,
    sql: o.sql,
    directSql: o.directSql ?? o.sql,
    resolveOwners: o.resolveOwners,
    allowedOrigins: origins(o.allowedOrigins),
    metricsRegistry: o.metricsRegistry ?? new Registry(),
  };
}
