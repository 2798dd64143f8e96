import type { Socket } from 'node:net';
/**
 * A real `ws` client for tests: every frame it receives is queued, and each expectation awaits
 * the next one, so tests synchronise on events rather than on time.
 */
import WebSocket from 'ws';

export type Frame = Record<string, unknown> & { type: string };

export class TestClient {
  private readonly frames: Frame[] = [];
  private readonly waiters: Array<{ resolve: (f: Frame) => void; reject: (e: Error) => void }> = [];
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(readonly socket: WebSocket) {
    socket.on('message', (data, isBinary) => {
      const frame = JSON.parse(data.toString()) as Frame;
      if (isBinary) frame.__binary = true;
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(frame);
      else this.frames.push(frame);
    });
    this.closed = new Promise((resolve) => {
      socket.on('close', (code, reason) => {
        for (const w of this.waiters.splice(0)) w.reject(new Error(`socket closed (${code}) while a frame was awaited`));
        resolve({ code, reason: reason.toString() });
      });
    });
  }

  static connect(url: string, headers: Record<string, string> = {}, protocols: string[] = []): Promise<TestClient> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url, protocols, { headers });
      socket.once('open', () => resolve(new TestClient(socket)));
      socket.once('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (chunk: Buffer) => (body += chunk.toString()));
        res.on('end', () =>
          reject(Object.assign(new Error(`upgrade refused: ${res.statusCode}`), { status: res.statusCode, body, headers: res.headers })),
        );
      });
      socket.once('error', reject);
    });
  }

  send(frame: unknown): void {
    this.socket.send(typeof frame === 'string' || Buffer.isBuffer(frame) ? frame : JSON.stringify(frame));
  }

  /** The next frame, whatever it is. */
  next(): Promise<Frame> {
    const frame = this.frames.shift();
    if (frame) return Promise.resolve(frame);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Frames up to and including the first that `last` matches. */
  async until(last: (f: Frame) => boolean): Promise<Frame[]> {
    const frames: Frame[] = [];
    for (;;) {
      const frame = await this.next();
      frames.push(frame);
      if (last(frame)) return frames;
    }
  }

  /** Sends a frame and returns the next one received (the reply, when nothing else is in flight). */
  async request(frame: unknown): Promise<Frame> {
    this.send(frame);
    return this.next();
  }

  /** Frames received but not yet taken. */
  get pending(): readonly Frame[] {
    return this.frames;
  }

  close(): Promise<{ code: number; reason: string }> {
    if (this.socket.readyState === WebSocket.OPEN || this.socket.readyState === WebSocket.CONNECTING) this.socket.close();
    return this.closed;
  }
}

export interface Refusal {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
}

/** Awaits an upgrade that must be refused, and returns the HTTP answer. */
export async function refusal(connecting: Promise<TestClient>): Promise<Refusal> {
  return connecting.then(
    async (client) => {
      await client.close();
      throw new Error('the upgrade was accepted');
    },
    (error: unknown) => {
      if (typeof (error as Refusal).status !== 'number') throw error;
      return error as Refusal;
    },
  );
}

/** The client's TCP socket: pausing it makes a client that stops reading, as a slow consumer does. */
export const tcpOf = (client: TestClient): Socket => (client.socket as unknown as { _socket: Socket })._socket;
