/**
 * The ordered steps of one connection's frames. A client sends frames one after another and gets
 * their answers in that order, although some wait on a lookup (is the task visible?) or a replay.
 * A step runs at once when nothing waits ahead of it; otherwise it runs after the steps ahead.
 */

/** A step; one that returns a promise (a replay) holds later steps until it settles. */
export type Step = () => void | Promise<void>;

import { SETTLED } from './settled.js';

function noop(): void {}

export interface StepQueueHooks {
  /** Whether steps should still run (false once the connection is closed: they are skipped). */
  running(): boolean;
  /** A step threw or rejected. The queue goes on with the next one. */
  failed(error: unknown): void;
  /** The last waiting step is done: nothing waits any more. */
  idle(): void;
}

export class StepQueue {
  /** Steps started and not yet done. */
  private waiting = 0;
  private tail: Promise<void> = SETTLED;

  constructor(private readonly hooks: StepQueueHooks) {}

  /** Whether a step is still waiting (on a lookup, a replay, or the steps ahead of it). */
  busy(): boolean {
    return this.waiting > 0;
  }

  /** Runs `step` now, or after the steps still waiting. */
  run(step: Step): void {
    if (this.waiting === 0) {
      const pending = this.attempt(step, undefined);
      if (!pending) return;
      // A replay: later steps wait for it.
      this.waiting++;
      this.tail = pending.finally(() => this.done());
      return;
    }
    this.waiting++;
    this.tail = this.tail.then(() => this.finish(step, undefined));
  }

  /**
   * Takes the outcome of `answer`, already under way (so that lookups of one loop turn share a
   * batch), in its place among the steps: `then` or `otherwise` runs once every step ahead is done.
   */
  await<T>(answer: Promise<T>, then: (value: T) => void | Promise<void>, otherwise: (error: unknown) => void | Promise<void>): void {
    // Bound, not arrow functions: one object each, where a closure is two (and, run through tsx,
    // a property definition for its name).
    const onValue = (this.finish<T>).bind(this, then);
    const onError = (this.finish<unknown>).bind(this, otherwise);
    // Nothing waiting ahead of it (a subscribe storm: one frame per socket): no chain to join, and
    // the rejection handler is attached now.
    if (this.waiting++ === 0) {
      this.tail = answer.then(onValue, onError);
      return;
    }
    // Handled now: it may reject while steps ahead still wait, before the chain reaches it, and an
    // unhandled rejection ends the process. The chain below still gets the rejection.
    answer.catch(noop);
    this.tail = this.tail.then(() => answer).then(onValue, onError);
  }

  /** Runs a step that waited, with what it waited for; never throws or rejects, so the chain behind it needs no catch. */
  private finish<T>(step: (value: T) => void | Promise<void>, value: T): void | Promise<void> {
    const pending = this.attempt(step, value);
    if (!pending) {
      this.done();
      return;
    }
    return pending.finally(() => this.done());
  }

  /** Runs `step` unless stopped; a throw or a rejection is reported, never passed on. */
  private attempt<T>(step: (value: T) => void | Promise<void>, value: T): Promise<void> | undefined {
    if (!this.hooks.running()) return undefined;
    try {
      const pending = step(value);
      return pending ? pending.catch((error: unknown) => this.hooks.failed(error)) : undefined;
    } catch (error) {
      this.hooks.failed(error);
      return undefined;
    }
  }

  private done(): void {
    if (--this.waiting > 0) return;
    // Nothing chains onto the tail while nothing waits: let the last step's promise go, rather
    // than keep it for as long as the (mostly idle) socket lives.
    this.tail = SETTLED;
    this.hooks.idle();
  }
}
