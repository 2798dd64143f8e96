/**
 * Unit property of the output encoder: whatever the content and optional fields, the frame it
 * builds by splicing is character for character the text JSON.stringify would give, in the Rust server's order.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { encodeTaskOutput, type TaskOutputEvent } from '../src/protocol/codec.js';

const cursor = '0a1b2c3d.4242.17';
const reference = (e: TaskOutputEvent, at = cursor) =>
  JSON.stringify({
    type: 'taskOutput',
    taskId: e.taskId,
    messageType: e.messageType,
    content: e.content,
    toolName: e.toolName,
    toolInput: e.toolInput,
    isError: e.isError,
    costUsd: e.costUsd,
    durationMs: e.durationMs,
    isPartial: e.isPartial,
    cursor: at,
  });

// Lone surrogates, controls, quotes and backslashes are what the fast path must not get wrong.
const text = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 300 }),
  fc.string({ unit: fc.constantFrom('"', '\\', '\n', '\u0000', '\u001f', '\u2028', '\ud800', '\udc00', 'é', 'x'), maxLength: 40 }),
  fc.string({ maxLength: 70_000 }).filter((s) => s.length < 20 || s.length > 60_000),
);
const optional = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });

/** Output events, each optional field's values made by `maybe`. */
const events = (maybe: <T>(a: fc.Arbitrary<T>) => fc.Arbitrary<unknown>) =>
  fc.record({
    taskId: fc.uuid().map((u) => u.toLowerCase()),
    ownerId: fc.constant(null),
    messageType: text,
    content: text,
    toolName: maybe(text),
    toolInput: maybe(fc.jsonValue()),
    isError: maybe(fc.boolean()),
    costUsd: maybe(fc.double({ noNaN: true, noDefaultInfinity: true })),
    durationMs: maybe(fc.integer()),
    isPartial: fc.boolean(),
  }) as fc.Arbitrary<TaskOutputEvent>;

test('encodeTaskOutput equals JSON.stringify of the message in the Rust server’s order', () => {
  fc.assert(
    fc.property(events(optional), (event) => assert.deepEqual(encodeTaskOutput(event, cursor), reference(event))),
    { numRuns: 2000 },
  );
});

test('encodeTaskOutput writes each member as JSON.stringify does, also for values outside its type and any cursor', () => {
  // What a host's publish or a log row could still carry: null, non-finite and negative zero
  // numbers, a function or symbol in toolInput (left out), values with toJSON.
  const odd = fc.constantFrom<unknown>(null, Number.NaN, Infinity, -Infinity, -0, 1e21, () => 1, Symbol('s'), new Date(0), {
    toJSON: () => 'j',
  });
  fc.assert(
    fc.property(
      events((a) => fc.oneof(optional(a), odd)),
      text,
      (event, at) => assert.deepEqual(encodeTaskOutput(event, at), reference(event, at)),
    ),
    { numRuns: 2000 },
  );
});
