/**
 * The per-connection frame budget: a token bucket, plus the memory of how long a client has been
 * over it without pause, so that a flood can be told apart from a burst.
 */

/** A pause this long between refusals ends a flood. */
const FLOOD_GAP_MS = 1_000;

export type Verdict = 'allow' | 'limit' | 'close';

export class FrameRateLimiter {
  private tokens: number;
  private last: number;
  private floodStart = 0;
  private lastRefusal = 0;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly closeAfterMs: number,
  ) {
    this.tokens = burst;
    this.last = performance.now();
  }

  take(now = performance.now()): Verdict {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.perSecond) / 1000);
    this.last = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 'allow';
    }
    if (now - this.lastRefusal > FLOOD_GAP_MS) this.floodStart = now;
    this.lastRefusal = now;
    return now - this.floodStart >= this.closeAfterMs ? 'close' : 'limit';
  }
}
