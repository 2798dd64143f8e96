/**
 * How the core talks to the world: the small interfaces an adapter (src/transport/), the plugin
 * (src/plugin.ts) and the metrics (src/metrics.ts) implement. The core imports no socket library,
 * no web framework, no database driver and no metrics library; only these.
 */

/** Who is on the other end of a socket, as the host's `authenticate` says. */
export interface Principal {
  /** The owner whose tasks this principal may see; `null` for a principal that owns nothing. */
  ownerId: string | null;
  /** Admins see every task, including tasks without an owner. */
  admin: boolean;
  /**
   * Who this is, for the per-principal connection limit and for logs. Default: the owner id, or
   * `admin` / `nobody`. Never put a secret here.
   */
  id?: string;
}

/** Maps task ids to their owner (`null`: no owner). Ids that are not tasks are left out. */
export type OwnerResolver = (taskIds: readonly string[]) => Promise<ReadonlyMap<string, string | null>>;

/**
 * A check of the host's, run on credentials: `ok` with the principal, or not `ok` because it
 * `refused` them, or because it could not answer (`unavailable`: its store is down).
 */
export type AuthResult =
  { ok: true; principal: Principal } | { ok: false; why: 'refused' } | { ok: false; why: 'unavailable'; error: unknown };

/**
 * How an open socket's principal is checked again: by the principal alone (the host's
 * `reauthenticate`), or by the upgrade request kept for it (the host's `authenticate`).
 */
export type Recheck =
  { by: 'principal'; check(principal: Principal): Promise<AuthResult> } | { by: 'request'; check(request: unknown): Promise<AuthResult> };

/** A pino-style logger: an object of fields first, then the message. */
export interface Logger {
  debug(fields: object, message?: string): void;
  info(fields: object | string, message?: string): void;
  warn(fields: object | string, message?: string): void;
  error(fields: object | string, message?: string): void;
}

/** Server frame types, as counted. */
export type FrameOutType = 'taskUpdated' | 'taskOutput' | 'ack' | 'error' | 'lagged' | 'resyncRequired' | 'historyTruncated';
export type AuthStage = 'upgrade' | 'reauthenticate' | 'ticket';
/** Why a logged event reached no socket: unreadable from the log, invalid there, or not encodable. */
export type DropReason = 'unreadable' | 'invalid' | 'unencodable';

/** What the core counts; src/metrics.ts keeps it in prom-client. Every call is cheap. */
export interface MetricsSink {
  frameIn(type: string): void;
  sent(type: FrameOutType, count?: number): void;
  delivered(kind: 'update' | 'output', recipients: number, publishedAt: number | undefined): void;
  written(bytes: number): void;
  error(code: string): void;
  closed(code: number): void;
  droppedEvent(reason: DropReason): void;
  authFailed(stage: AuthStage): void;
}

/**
 * Turns a server message's JSON text into the bytes a socket writes as they are (for WebSocket,
 * one complete text frame). Each message is framed once, whatever the number of its recipients.
 */
export type FrameText = (text: string) => Buffer;

/**
 * A client's socket, as the core uses it. Frames are written whole, in order; a close frame goes
 * out after every frame written before it.
 */
export interface ClientSocket {
  /** Bytes written that the peer has not taken yet. */
  bufferedAmount(): number;
  /** Whether frames may still be written: false once a close frame went either way. */
  isOpen(): boolean;
  /** Writes one chunk of whole frames. */
  write(chunk: Buffer): void;
  /** Writes several chunks as one (corked) write. */
  writeAll(chunks: readonly Buffer[]): void;
  ping(): void;
  /** Sends a close frame behind everything written so far; the peer is expected to answer. */
  close(code: number, reason: string): void;
  /** Cuts the connection without a close handshake. */
  terminate(): void;
  /** Settles once the connection is gone (after the close handshake, or cut). */
  gone(): Promise<void>;
}

/** What a socket's adapter tells the core, one call per thing that happened on the socket. */
export interface SocketListener {
  /** A client frame: `text` false for a binary one. */
  frame(data: Buffer, text: boolean): void;
  pong(): void;
  /** The socket can take more: what was written has gone out. */
  writable(): void;
  /** The socket library closed the socket because the client broke the protocol, with this code. */
  protocolError(code: number): void;
  /** The socket is closed; `code` as the close handshake said, when there was one. */
  socketClosed(code: number | undefined): void;
}
