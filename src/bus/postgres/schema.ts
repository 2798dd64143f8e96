/**
 * The PostgreSQL bus's own objects (tables, indexes, SQL functions) and the versioned migration
 * that creates them or brings them up to date, as SQL text: the plugin runs it at start
 * (`postgres.migrate`), `migrate(sql, options)` runs it from a host's code, and
 * `npx mesh-subscriptions migrate --print` prints it for a DBA. Names are part of the documented
 * interface (README, "Migrations, and what they create"): other services publish through the
 * functions, operators look at the tables. Every name is written qualified by its schema, never
 * left to `search_path`, which a transaction-mode pooler does not keep from one transaction to
 * the next.
 */
import { MAX_EVENT_BYTES, MAX_JSON_DEPTH } from '../../protocol/codec.js';

/** NOTIFY channel: a wake-up; a payload, when there is one, is a signed notice (`notice.ts`). */
export const CHANNEL = 'mesh_event_log';

/**
 * The version the migration brings the objects to, stamped in `mesh_event_log_meta`.
 * 1: the layout before versions (no stamp). 2: the stamp and the owner settlement it was made
 * with; every name qualified by its schema; the tickets table only when tickets are on.
 * 3: `notify_key` in the meta table, which signs the notices that carry rows (`notice.ts`).
 */
export const SCHEMA_VERSION = 3;

/** Plain SQL identifiers: what the options accept for a schema, a column or a role. */
export const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

export type MeshTableName = 'mesh_event_log' | 'mesh_event_log_meta' | 'mesh_event_log_pruned_tasks' | 'mesh_ws_tickets';

/** The tables, each with the privileges the plugin's role needs on it (the least it uses). */
export const TABLES: ReadonlyArray<{ name: MeshTableName; privileges: readonly string[]; tickets: boolean }> = [
  { name: 'mesh_event_log', privileges: ['SELECT', 'INSERT', 'DELETE'], tickets: false },
  { name: 'mesh_event_log_meta', privileges: ['SELECT', 'UPDATE'], tickets: false },
  { name: 'mesh_event_log_pruned_tasks', privileges: ['SELECT', 'INSERT', 'UPDATE'], tickets: false },
  { name: 'mesh_ws_tickets', privileges: ['SELECT', 'INSERT', 'DELETE'], tickets: true },
];

/** The SQL functions, by name and argument types (as `to_regprocedure` reads them). */
export const FUNCTIONS: ReadonlyArray<{ name: string; args: string }> = [
  { name: 'mesh_check_event', args: 'jsonb, text' },
  { name: 'mesh_log_cursor', args: 'xid8, bigint' },
  { name: 'mesh_log_event', args: 'text, text, uuid, uuid, jsonb' },
  { name: 'mesh_publish_task_update', args: 'uuid, uuid, integer, text, text[], text' },
  {
    name: 'mesh_publish_task_output',
    args: 'uuid, uuid, text, text, text, jsonb, boolean, double precision, bigint, boolean',
  },
];

/** `"name"`: the option values are checked plain identifiers, so quoting keeps their case and nothing else. */
export const quoteIdentifier = (name: string): string => `"${name.replaceAll('"', '""')}"`;

/** `"schema"."name"`, ready for SQL text. */
export const qualified = (schema: string, name: string): string => `${quoteIdentifier(schema)}.${quoteIdentifier(name)}`;

/** The log's tables, quoted with their schema once per part (a bus's schema does not change), not per query. */
export const logTables = (schema: string) =>
  ({
    log: qualified(schema, 'mesh_event_log'),
    meta: qualified(schema, 'mesh_event_log_meta'),
    prunedTasks: qualified(schema, 'mesh_event_log_pruned_tasks'),
  }) as const;

/** `app.tasks` → `"app"."tasks"`, `tasks` → `"tasks"`: the option is checked to be plain identifiers. */
export const quoteTable = (table: string): string => table.split('.').map(quoteIdentifier).join('.');

/** The host's tasks table, as the options name it: where a NULL owner is settled from. */
export interface TasksShape {
  table: string;
  idColumn: string;
  ownerColumn: string;
}

export interface MigrationOptions {
  /** Where the plugin's objects live. Default `public`. */
  schema?: string;
  /**
   * The tasks table the SQL functions settle a NULL owner from; `null` when owners come from
   * `resolveOwners` (the readers settle them). Default `tasks(id, owner_id)`.
   */
  tasks?: Partial<TasksShape> | null;
  /** Also create the tickets table (`tickets.enabled`). Default false. */
  tickets?: boolean;
  /** A role to grant what the plugin needs on the objects (schema usage, the tables' privileges, the functions). */
  grantTo?: string;
}

/** The migration's options with their defaults, checked. */
export interface ResolvedMigration {
  schema: string;
  tasks: TasksShape | null;
  tickets: boolean;
  grantTo: string | undefined;
}

export function resolveMigration(options: MigrationOptions = {}): ResolvedMigration {
  const schema = options.schema ?? 'public';
  if (!IDENTIFIER.test(schema)) throw new TypeError(`schema must be a plain SQL identifier such as "mesh", got ${JSON.stringify(schema)}`);
  const tasks =
    options.tasks === null
      ? null
      : {
          table: options.tasks?.table ?? 'tasks',
          idColumn: options.tasks?.idColumn ?? 'id',
          ownerColumn: options.tasks?.ownerColumn ?? 'owner_id',
        };
  if (tasks && !tasks.table.split('.').every((part) => IDENTIFIER.test(part))) {
    throw new TypeError(`tasks table must be a plain SQL identifier such as "tasks" or "app.tasks", got ${JSON.stringify(tasks.table)}`);
  }
  for (const column of tasks ? [tasks.idColumn, tasks.ownerColumn] : []) {
    if (!IDENTIFIER.test(column)) throw new TypeError(`tasks columns must be plain SQL identifiers, got ${JSON.stringify(column)}`);
  }
  if (options.grantTo !== undefined && !IDENTIFIER.test(options.grantTo)) {
    throw new TypeError(`grantTo must be a plain SQL role name, got ${JSON.stringify(options.grantTo)}`);
  }
  return { schema, tasks, tickets: options.tickets ?? false, grantTo: options.grantTo };
}

/**
 * How the functions settle owners, as stamped beside the version: the migration is redone when
 * an instance is configured otherwise (the functions hold the tasks table's name).
 */
export const ownersFrom = (tasks: TasksShape | null): string =>
  tasks === null ? '' : `${quoteTable(tasks.table)}(${quoteIdentifier(tasks.idColumn)}, ${quoteIdentifier(tasks.ownerColumn)})`;

/**
 * A NULL owner is settled in the publisher's transaction from the tasks table, when the plugin
 * reads owners from one: every instance then reads the same owner from the log, and an owner
 * change that committed before the publish is never missed. A task not there is admins-only.
 */
const settleOwnerFrom = (tasks: TasksShape | null): string =>
  tasks === null
    ? ''
    : `  IF owner_id IS NULL THEN
    SELECT t.${quoteIdentifier(tasks.ownerColumn)}::uuid INTO owner_id FROM ${quoteTable(tasks.table)} AS t
      WHERE t.${quoteIdentifier(tasks.idColumn)} = task_id;
    owner_given := true;
  END IF;`;

const ticketsDdl = (s: string) => `
-- Browser sign-in tickets (src/auth/tickets.ts): single-use, short-lived, only their SHA-256 kept.
CREATE TABLE IF NOT EXISTS ${s}.mesh_ws_tickets (
  digest bytea PRIMARY KEY,
  principal jsonb NOT NULL,
  expires_at timestamptz NOT NULL
);
`;

function grants(m: ResolvedMigration): string {
  if (m.grantTo === undefined) return '';
  const s = quoteIdentifier(m.schema);
  const role = quoteIdentifier(m.grantTo);
  const tables = TABLES.filter((t) => !t.tickets || m.tickets).map((t) => `GRANT ${t.privileges.join(', ')} ON ${s}.${t.name} TO ${role};`);
  const functions = FUNCTIONS.map((f) => `GRANT EXECUTE ON FUNCTION ${s}.${f.name}(${f.args}) TO ${role};`);
  return ['', `-- What the plugin's role needs.`, `GRANT USAGE ON SCHEMA ${s} TO ${role};`, ...tables, ...functions, ''].join('\n');
}

/**
 * The migration, as one script: brings objects of any earlier version (none included) to
 * SCHEMA_VERSION and stamps it. Idempotent; run it in one transaction (`migrate` does, under an
 * advisory lock, so that instances starting together do not race).
 */
export function migrationSql(options: MigrationOptions = {}): string {
  const m = resolveMigration(options);
  const s = quoteIdentifier(m.schema);
  const literal = (text: string) => `'${text.replaceAll("'", "''")}'`;
  return `-- mesh-subscriptions: the PostgreSQL bus's objects, schema version ${SCHEMA_VERSION}, in schema ${s}.
-- Owners settled from: ${m.tasks === null ? 'none (resolveOwners)' : ownersFrom(m.tasks)}; tickets: ${m.tickets ? 'on' : 'off'}.
DO $do$ BEGIN
  -- Not CREATE SCHEMA IF NOT EXISTS: that asks for CREATE on the database even when the schema exists.
  IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = ${literal(m.schema)}) THEN
    CREATE SCHEMA ${s};
  END IF;
END $do$;

CREATE TABLE IF NOT EXISTS ${s}.mesh_event_log (
  -- Order of the log: by (txid, id). Readers read only below the oldest running transaction,
  -- so a transaction that commits late can never land behind a cursor already handed out.
  txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  id bigint GENERATED ALWAYS AS IDENTITY,
  kind text NOT NULL CHECK (kind IN ('update', 'output')),
  task_id uuid NOT NULL,
  owner_id uuid NULL,
  -- true: owner_id was settled when the event was written (given by the publisher, or read from
  -- the tasks table in the publisher's transaction); false: readers look it up.
  owner_given boolean NOT NULL,
  -- json, not jsonb: json keeps an escaped NUL in a string, which jsonb cannot hold.
  payload json NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (txid, id)
);
CREATE INDEX IF NOT EXISTS mesh_event_log_task_idx ON ${s}.mesh_event_log (task_id, kind, txid, id);
CREATE INDEX IF NOT EXISTS mesh_event_log_owner_idx ON ${s}.mesh_event_log (owner_id, txid, id) WHERE kind = 'update';
CREATE INDEX IF NOT EXISTS mesh_event_log_created_idx ON ${s}.mesh_event_log (created_at);
-- Events whose owner readers look up: a subscribeAll replay reads them beside its owner's own.
CREATE INDEX IF NOT EXISTS mesh_event_log_unsettled_idx ON ${s}.mesh_event_log (txid, id) WHERE kind = 'update' AND NOT owner_given;

CREATE TABLE IF NOT EXISTS ${s}.mesh_event_log_meta (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  -- Names this log in every cursor: a cursor of another database is told apart, not misread.
  log_id text NOT NULL,
  -- Everything at or below this position may have been pruned.
  pruned_txid xid8 NOT NULL DEFAULT '0',
  pruned_id bigint NOT NULL DEFAULT 0
);
-- The version of these objects, and the owner settlement the functions were made with.
ALTER TABLE ${s}.mesh_event_log_meta ADD COLUMN IF NOT EXISTS schema_version integer NOT NULL DEFAULT 1;
ALTER TABLE ${s}.mesh_event_log_meta ADD COLUMN IF NOT EXISTS owners_from text NOT NULL DEFAULT '';
-- Signs the NOTIFY payloads that carry rows (anyone connected may NOTIFY): 256 bits from the
-- strong random source of gen_random_uuid (122 bits each), drawn once per log.
ALTER TABLE ${s}.mesh_event_log_meta ADD COLUMN IF NOT EXISTS notify_key text NOT NULL
  DEFAULT encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex');
INSERT INTO ${s}.mesh_event_log_meta (log_id)
  VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 8))
  ON CONFLICT DO NOTHING;

-- Per task, the position below which its events were pruned for the per-task limit.
CREATE TABLE IF NOT EXISTS ${s}.mesh_event_log_pruned_tasks (
  task_id uuid PRIMARY KEY,
  owner_id uuid NULL,
  pruned_txid xid8 NOT NULL,
  pruned_id bigint NOT NULL
);
${m.tickets ? ticketsDdl(s) : ''}
-- Logs created before payload was json.
DO $do$ BEGIN
  IF (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
      WHERE attrelid = ${literal(`${s}.mesh_event_log`)}::regclass AND attname = 'payload') = 'jsonb' THEN
    ALTER TABLE ${s}.mesh_event_log ALTER COLUMN payload TYPE json USING payload::json;
  END IF;
END $do$;

-- What publish() refuses, refused in SQL too: JSON nested deeper than ${MAX_JSON_DEPTH} levels, events
-- heavier than ${MAX_EVENT_BYTES} bytes. (PostgreSQL itself refuses NUL and lone surrogates in text.)
CREATE OR REPLACE FUNCTION ${s}.mesh_check_event(payload jsonb, fn text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
  level jsonb[] := CASE WHEN jsonb_typeof(payload) IN ('array', 'object') THEN ARRAY[payload] ELSE '{}' END;
  depth integer := 0;
BEGIN
  IF octet_length(payload::text) > ${MAX_EVENT_BYTES} THEN
    RAISE EXCEPTION '%: the event weighs % bytes as JSON; at most ${MAX_EVENT_BYTES} are allowed', fn, octet_length(payload::text)
      USING ERRCODE = 'program_limit_exceeded';
  END IF;
  -- Level by level, not recursively: a deep value must not exhaust the stack it is checked on.
  WHILE cardinality(level) > 0 LOOP
    IF depth > ${MAX_JSON_DEPTH} THEN
      RAISE EXCEPTION '%: JSON nests deeper than ${MAX_JSON_DEPTH} levels', fn USING ERRCODE = 'program_limit_exceeded';
    END IF;
    depth := depth + 1;
    level := ARRAY(
      SELECT c FROM unnest(level) AS v,
        LATERAL (SELECT e FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v) = 'array' THEN v END) AS e
                 UNION ALL SELECT x.value FROM jsonb_each(CASE WHEN jsonb_typeof(v) = 'object' THEN v END) AS x) AS s(c)
      WHERE jsonb_typeof(c) IN ('array', 'object'));
  END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION ${s}.mesh_log_cursor(logged_txid xid8, logged_id bigint) RETURNS text
LANGUAGE sql STABLE AS $fn$
  SELECT log_id || '.' || logged_txid::text || '.' || logged_id::text FROM ${s}.mesh_event_log_meta
$fn$;

-- What both publishing functions do once their payload is built: check it, settle the owner,
-- log it, wake the readers, and answer the event's cursor.
CREATE OR REPLACE FUNCTION ${s}.mesh_log_event(fn text, kind text, task_id uuid, owner_id uuid, payload jsonb) RETURNS text
LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE
  logged_txid xid8;
  logged_id bigint;
  owner_given boolean := owner_id IS NOT NULL;
BEGIN
  PERFORM ${s}.mesh_check_event(payload, fn);
${settleOwnerFrom(m.tasks)}
  INSERT INTO ${s}.mesh_event_log (kind, task_id, owner_id, owner_given, payload)
  VALUES (kind, task_id, owner_id, owner_given, payload::json)
  RETURNING mesh_event_log.txid, mesh_event_log.id INTO logged_txid, logged_id;
  PERFORM pg_notify('${CHANNEL}', '');
  RETURN ${s}.mesh_log_cursor(logged_txid, logged_id);
END
$fn$;

CREATE OR REPLACE FUNCTION ${s}.mesh_publish_task_update(
  task_id uuid, owner_id uuid, version integer, status text, updated_fields text[], updated_by text
) RETURNS text LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE
  payload jsonb;
BEGIN
  IF task_id IS NULL OR version IS NULL OR status IS NULL OR updated_by IS NULL THEN
    RAISE EXCEPTION 'mesh_publish_task_update: task_id, version, status and updated_by are required'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF array_position(updated_fields, NULL) IS NOT NULL THEN
    RAISE EXCEPTION 'mesh_publish_task_update: updated_fields must not contain NULL'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  payload := jsonb_build_object(
    'version', version, 'status', status,
    'updatedFields', to_jsonb(coalesce(updated_fields, '{}'::text[])), 'updatedBy', updated_by);
  RETURN ${s}.mesh_log_event('mesh_publish_task_update', 'update', task_id, owner_id, payload);
END
$fn$;

CREATE OR REPLACE FUNCTION ${s}.mesh_publish_task_output(
  task_id uuid, owner_id uuid, message_type text, content text, tool_name text, tool_input jsonb,
  is_error boolean, cost_usd double precision, duration_ms bigint, is_partial boolean
) RETURNS text LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE
  payload jsonb;
BEGIN
  IF task_id IS NULL OR message_type IS NULL OR content IS NULL THEN
    RAISE EXCEPTION 'mesh_publish_task_output: task_id, message_type and content are required'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF cost_usd IS NOT NULL AND cost_usd IN ('NaN', 'Infinity', '-Infinity') THEN
    RAISE EXCEPTION 'mesh_publish_task_output: cost_usd must be a finite number'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- NULL means absent: absent fields are left out of the event, never null.
  payload := jsonb_build_object('messageType', message_type, 'content', content, 'isPartial', coalesce(is_partial, false));
  IF tool_name IS NOT NULL THEN payload := payload || jsonb_build_object('toolName', tool_name); END IF;
  IF tool_input IS NOT NULL AND tool_input <> 'null'::jsonb THEN payload := payload || jsonb_build_object('toolInput', tool_input); END IF;
  IF is_error IS NOT NULL THEN payload := payload || jsonb_build_object('isError', is_error); END IF;
  IF cost_usd IS NOT NULL THEN payload := payload || jsonb_build_object('costUsd', cost_usd); END IF;
  IF duration_ms IS NOT NULL THEN payload := payload || jsonb_build_object('durationMs', duration_ms); END IF;
  RETURN ${s}.mesh_log_event('mesh_publish_task_output', 'output', task_id, owner_id, payload);
END
$fn$;
${grants(m)}
UPDATE ${s}.mesh_event_log_meta SET schema_version = ${SCHEMA_VERSION}, owners_from = ${literal(ownersFrom(m.tasks))};
`;
}
