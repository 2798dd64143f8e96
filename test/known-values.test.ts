/**
 * `status` and `messageType` offer their known values to editors (a union) and still take any
 * string, in the types and on the wire; the JSON schemas are unchanged plain strings.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Kind } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import type { TaskOutput, TaskUpdated } from '../src/client/index.js';
import {
  ServerMessages,
  type TaskOutputNotification,
  type TaskUpdateNotification,
  type KnownMessageType,
  type KnownTaskStatus,
  type MessageType,
  type TaskStatus,
} from '../src/index.js';

/** True only when X and Y are the same type (not merely assignable both ways). */
type Equal<X, Y> = (<T>() => T extends X ? 1 : 2) extends <T>() => T extends Y ? 1 : 2 ? true : false;
const same = <X, Y>(verdict: Equal<X, Y>) => verdict;

test('the types: a union of the known values that takes any other string', () => {
  same<TaskUpdated['status'], TaskStatus>(true);
  same<TaskOutput['messageType'], MessageType>(true);
  same<TaskUpdateNotification['status'], TaskStatus>(true);
  same<TaskOutputNotification['messageType'], MessageType>(true);
  // Not collapsed into plain string, which would offer editors nothing.
  same<TaskStatus, string>(false);
  same<MessageType, string>(false);
  const known: KnownTaskStatus = 'running';
  const other: TaskStatus = 'paused by the night shift';
  const kind: KnownMessageType = 'tool_use';
  const newKind: MessageType = 'thinking';
  // @ts-expect-error a value outside the known ones is refused where only known ones are asked for
  const refused: KnownTaskStatus = 'paused';
  assert.deepEqual([known, other, kind, newKind, refused], ['running', 'paused by the night shift', 'tool_use', 'thinking', 'paused']);
});

test('the schemas: plain strings, and an unknown value passes', () => {
  for (const schema of [ServerMessages.taskUpdated.properties.status, ServerMessages.taskOutput.properties.messageType]) {
    assert.equal(schema[Kind], 'String');
    assert.equal(schema.type, 'string');
  }
  const frame = {
    type: 'taskUpdated',
    taskId: '6f1c7f3e-1b1a-4c36-9d4e-2b1d6f0a1c2e',
    version: 1,
    status: 'paused',
    updatedFields: [],
    updatedBy: 'x',
    cursor: 'c',
  };
  assert.equal(Value.Check(ServerMessages.taskUpdated, frame), true);
  const output = { type: 'taskOutput', taskId: frame.taskId, messageType: 'thinking', content: '', isPartial: false, cursor: 'c' };
  assert.equal(Value.Check(ServerMessages.taskOutput, output), true);
});
