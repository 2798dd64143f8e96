/**
 * The re-authentication sweep: every open socket's principal is checked again on an interval, a
 * few at a time, one sweep at a time. A refused principal's socket is closed with 4401; a changed
 * one keeps the socket, with only what it may still see; a check that cannot answer keeps it.
 */
import { CloseCode } from '../errors.js';
import type { ClientConnection } from './connection.js';
import type { AuthResult, MetricsSink, Recheck } from './ports.js';
import { samePrincipal } from './principal.js';

const CONCURRENCY = 16;

export class ReauthSweep {
  private running = false;

  constructor(
    private readonly recheck: Recheck,
    private readonly metrics: MetricsSink,
  ) {}

  /** Checks every connection given; resolves when done, at once if a sweep is already running. */
  async sweep(connections: Iterable<ClientConnection>): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      await this.checkAll([...connections]);
    } finally {
      this.running = false;
    }
  }

  private async checkAll(queue: ClientConnection[]): Promise<void> {
    const recheck = this.recheck;
    // Sockets of one principal share one check per sweep.
    const answers = new Map<string, Promise<AuthResult>>();
    const check = (c: ClientConnection): Promise<AuthResult> => {
      if (recheck.by === 'request') return recheck.check(c.request);
      const key = JSON.stringify([c.principal.ownerId, c.principal.admin, c.principal.id]);
      let answer = answers.get(key);
      if (!answer) answers.set(key, (answer = recheck.check(c.principal)));
      return answer;
    };
    const worker = async () => {
      for (let c = queue.pop(); c; c = queue.pop()) {
        if (!c.isOpen()) continue;
        const result = await check(c);
        if (!c.isOpen()) continue;
        if (result.ok) {
          if (!samePrincipal(result.principal, c.principal)) {
            c.log.info('principal changed on re-authentication; re-checking its subscriptions');
            c.changePrincipal(result.principal);
          }
        } else if (result.why === 'refused') {
          c.log.info('credentials no longer valid; closing with 4401');
          this.metrics.authFailed('reauthenticate');
          c.close(CloseCode.UNAUTHORIZED, 'credentials no longer valid');
        } else {
          // Not an answer (the auth store may be down): keep the socket rather than drop everyone.
          c.log.warn({ err: result.error }, 're-authentication failed; keeping the socket until the next round');
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  }
}
