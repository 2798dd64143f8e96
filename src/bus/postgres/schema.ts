/**
 * The PostgreSQL bus's own tables and functions, created (or brought up to date) at start under
 * an advisory lock, so that instances starting together do not race. Names are part of the
 * documented interface (README, "Publishing from SQL"): other services publish through the
 * functions, operators look at the tables.
 */
import type { Sql } from 'postgres';
import { MAX_EVENT_BYTES, MAX_JSON_DEPTH } from '../../protocol/codec.js';

/** NOTIFY channel: a wake-up only, the payload is never read. */
export const CHANNEL = 'mesh_event_log';

const MIGRATION_LOCK = 0x6d657368_6c6f67n; // "meshlog"

const ddl = (SETTLE_OWNER: string) => `
CREATE TABLE IF NOT EXISTS mesh_event_log (
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
CREATE INDEX IF NOT EXISTS mesh_event_log_task_idx ON mesh_event_log (task_id, kind, txid, id);
CREATE INDEX IF NOT EXISTS mesh_event_log_owner_idx ON mesh_event_log (owner_id, txid, id) WHERE kind = 'update';
CREATE INDEX IF NOT EXISTS mesh_event_log_created_idx ON mesh_event_log (created_at);
-- Events whose owner readers look up: a subscribeAll replay reads them beside its owner's own.
CREATE INDEX IF NOT EXISTS mesh_event_log_unsettled_idx ON mesh_event_log (txid, id) WHERE kind = 'update' AND NOT owner_given;

CREATE TABLE IF NOT EXISTS mesh_event_log_meta (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  -- Names this log in every cursor: a cursor of another database is told apart, not misread.
  log_id text NOT NULL,
  -- Everything at or below this position may have been pruned.
  pruned_txid xid8 NOT NULL DEFAULT '0',
  pruned_id bigint NOT NULL DEFAULT 0
);
INSERT INTO mesh_event_log_meta (log_id)
  VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 8))
  ON CONFLICT DO NOTHING;

-- Per task, the position below which its events were pruned for the per-task limit.
CREATE TABLE IF NOT EXISTS mesh_event_log_pruned_tasks (
  task_id uuid PRIMARY KEY,
  owner_id uuid NULL,
  pruned_txid xid8 NOT NULL,
  pruned_id bigint NOT NULL
);

-- Browser sign-in tickets (src/tickets.ts): single-use, short-lived, only their SHA-256 kept.
CREATE TABLE IF NOT EXISTS mesh_ws_tickets (
  digest bytea PRIMARY KEY,
  principal jsonb NOT NULL,
  expires_at timestamptz NOT NULL
);

-- Logs created before payload was json.
DO $do$ BEGIN
  IF (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
      WHERE attrelid = 'mesh_event_log'::regclass AND attname = 'payload') = 'jsonb' THEN
    ALTER TABLE mesh_event_log ALTER COLUMN payload TYPE json USING payload::json;
  END IF;
END $do$;

-- What publish() refuses, refused in SQL too: JSON nested deeper than ${MAX_JSON_DEPTH} levels, events
-- heavier than ${MAX_EVENT_BYTES} bytes. (PostgreSQL itself refuses NUL and lone surrogates in text.)
CREATE OR REPLACE FUNCTION mesh_check_event(payload jsonb, fn text) RETURNS void
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

CREATE OR REPLACE FUNCTION mesh_log_cursor(logged_txid xid8, logged_id bigint) RETURNS text
LANGUAGE sql STABLE AS $fn$
  SELECT log_id || '.' || logged_txid::text || '.' || logged_id::text FROM mesh_event_log_meta
$fn$;

-- What both publishing functions do once their payload is built: check it, settle the owner,
-- log it, wake the readers, and answer the event's cursor.
CREATE OR REPLACE FUNCTION mesh_log_event(fn text, kind text, task_id uuid, owner_id uuid, payload jsonb) RETURNS text
LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE
  logged_txid xid8;
  logged_id bigint;
  owner_given boolean := owner_id IS NOT NULL;
BEGIN
  PERFORM mesh_check_event(payload, fn);
${SETTLE_OWNER}
  INSERT INTO mesh_event_log (kind, task_id, owner_id, owner_given, payload)
  VALUES (kind, task_id, owner_id, owner_given, payload::json)
  RETURNING mesh_event_log.txid, mesh_event_log.id INTO logged_txid, logged_id;
  PERFORM pg_notify('${CHANNEL}', '');
  RETURN mesh_log_cursor(logged_txid, logged_id);
END
$fn$;

CREATE OR REPLACE FUNCTION mesh_publish_task_update(
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
  RETURN mesh_log_event('mesh_publish_task_update', 'update', task_id, owner_id, payload);
END
$fn$;

CREATE OR REPLACE FUNCTION mesh_publish_task_output(
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
  RETURN mesh_log_event('mesh_publish_task_output', 'output', task_id, owner_id, payload);
END
$fn$;
`;

/** `app.tasks` → `"app"."tasks"`: the option is checked to be plain identifiers. */
const quoteTable = (table: string): string =>
  table
    .split('.')
    .map((part) => `"${part}"`)
    .join('.');

/**
 * A NULL owner is settled in the publisher's transaction from the tasks table, when the plugin
 * reads owners from one: every instance then reads the same owner from the log, and an owner
 * change that committed before the publish is never missed. A task not there is admins-only.
 */
const settleOwnerFrom = (tasksTable: string | undefined): string =>
  tasksTable === undefined
    ? ''
    : `  IF owner_id IS NULL THEN
    SELECT t.owner_id::uuid INTO owner_id FROM ${quoteTable(tasksTable)} AS t WHERE t.id = task_id;
    owner_given := true;
  END IF;`;

export interface EventLogSchemaOptions {
  /** The table the SQL functions settle a NULL owner from; undefined when owners come from `resolveOwners`. */
  tasksTable: string | undefined;
}

export async function migrateEventLog(sql: Sql<any>, options: EventLogSchemaOptions): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK.toString()}::bigint)`;
    await tx.unsafe(ddl(settleOwnerFrom(options.tasksTable)));
  });
}
