/**
 * mesh-subscriptions: a Fastify plugin that streams task updates and live task output over
 * WebSocket. The default export is the plugin; the rest is its public types and codes.
 */
import meshSubscriptions from './plugin.js';

export default meshSubscriptions;
export { meshSubscriptions };
export { SUBSCRIBE_PATH, TICKETS_PATH, type Mesh, type MeshStats } from './plugin.js';
export type { MeshSubscriptionsOptions, Principal, OwnerResolver } from './options.js';
export { DEFAULTS } from './options.js';
export type { BroadcastChannel, Delivered, PublishOptions, TaskOutputChannel, TaskUpdatesChannel } from './core/channels.js';
export type { TaskOutputEvent, TaskUpdateEvent } from './protocol/codec.js';
export * from './protocol/schemas.js';
export {
  CloseCode,
  ErrorCode,
  UpgradeError,
  HistoryError,
  MeshOptionsError,
  MeshPublishError,
  MeshBusUnavailableError,
  MeshSchemaError,
} from './errors.js';
// The PostgreSQL bus's objects, for a team that migrates itself (README, "Migrations, and what they create").
export { migrate } from './bus/postgres/migration.js';
export { migrationSql, SCHEMA_VERSION, type MigrationOptions, type TasksShape } from './bus/postgres/schema.js';
export { redactUrl, requestSerializer, safeLoggerOptions, redactPaths, REDACT_PATHS, CREDENTIAL_HEADERS } from './logging.js';
export type { MeshEventMap, MeshEvents } from './core/events.js';
export { selectProtocol, MESH_PROTOCOL, TICKET_PROTOCOL_PREFIX } from './auth/tickets.js';
// The REST history's paths (under the prefix), and the `since` that asks for a task's whole history.
export { OUTPUT_HISTORY_PATH, UPDATES_HISTORY_PATH, HISTORY_START, TRUNCATED_REASONS, type TruncatedReason } from './protocol/wire.js';
