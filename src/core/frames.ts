/**
 * The server's messages as the bytes a socket writes: the protocol's JSON (src/protocol/codec.ts)
 * framed by the transport's FrameText. Built once per message, however many sockets it goes to.
 */
import {
  encodeAck,
  encodeError,
  encodeHistoryTruncated,
  encodeLagged,
  encodeResyncRequired,
  encodeTaskOutput,
  encodeTaskUpdated,
  SUBSCRIBED_ALL,
  UNSUBSCRIBED_ALL,
  type AckType,
  type TaskOutputEvent,
  type TaskUpdateEvent,
} from '../protocol/codec.js';
import type { ErrorCode, ResyncReason, TruncatedReason } from '../protocol/wire.js';
import type { FrameText } from './ports.js';

export type ResumableSubscription = 'subscribe' | 'subscribeAll' | 'subscribeOutput';

export class Frames {
  readonly subscribedAll: Buffer;
  readonly unsubscribedAll: Buffer;

  constructor(private readonly frame: FrameText) {
    this.subscribedAll = frame(SUBSCRIBED_ALL);
    this.unsubscribedAll = frame(UNSUBSCRIBED_ALL);
  }

  ack(type: AckType, taskId: string): Buffer {
    return this.frame(encodeAck(type, taskId));
  }

  error(code: ErrorCode, message: string): Buffer {
    return this.frame(encodeError(code, message));
  }

  lagged(taskId: string, skipped: number, cursor: string): Buffer {
    return this.frame(encodeLagged(taskId, skipped, cursor));
  }

  resyncRequired(subscription: ResumableSubscription, taskId: string | undefined, reason: ResyncReason): Buffer {
    return this.frame(encodeResyncRequired(subscription, taskId, reason));
  }

  historyTruncated(subscription: 'subscribe' | 'subscribeOutput', taskId: string, reason: TruncatedReason): Buffer {
    return this.frame(encodeHistoryTruncated(subscription, taskId, reason));
  }

  taskUpdated(event: TaskUpdateEvent, cursor: string): Buffer {
    return this.frame(encodeTaskUpdated(event, cursor));
  }

  taskOutput(event: TaskOutputEvent, cursor: string): Buffer {
    return this.frame(encodeTaskOutput(event, cursor));
  }
}
