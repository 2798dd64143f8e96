/**
 * The package client's socket, `ws` underneath, with a tap for tests: it records the frames the
 * client sends and receives, can hold back what arrived (as a stalled network would, so a test can
 * choose which frames the client reads together) and can drop the connection under the client.
 */
import WebSocket from 'ws';
import type { WebSocketConstructor, WebSocketLike } from '../../src/client/index.js';

type Frame = { type: string } & Record<string, any>;

export interface Tap {
  WebSocket: WebSocketConstructor;
  /** Every frame the client sent, in order, across connections. */
  readonly sent: Frame[];
  /** Every frame that arrived, in order (held ones included). */
  readonly received: Frame[];
  /** From now on, what arrives waits until `release()`. */
  hold(): void;
  /** Hands the client what was held, in the order it arrived, and stops holding. */
  release(): void;
  /** The first frame that arrived (already, or later; from index `from` of `received`) and that `accept` takes. */
  arrived(accept: (frame: Frame) => boolean, from?: number): Promise<Frame>;
  /** The first frame the client sent (already, or later; from index `from` of `sent`) that `accept` takes. */
  sends(accept: (frame: Frame) => boolean, from?: number): Promise<Frame>;
  /** Cuts the current connection without a close handshake (the client sees 1006). */
  drop(): void;
  /** Stops (and starts again) reading the current connection's TCP socket: the server's writes back up. */
  pauseReading(): void;
  resumeReading(): void;
}

export function tappedWebSocket(): Tap {
  const sent: Frame[] = [];
  const received: Frame[] = [];
  let held: (() => void)[] | undefined;
  const waiting: { list: Frame[]; from: number; accept: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
  let current: WebSocket | undefined;
  const record = (list: Frame[], frame: Frame) => {
    list.push(frame);
    for (const w of [...waiting]) {
      if (w.list === list && list.length > w.from && w.accept(frame)) {
        waiting.splice(waiting.indexOf(w), 1);
        w.resolve(frame);
      }
    }
  };
  const find = (list: Frame[], accept: (f: Frame) => boolean, from = 0) => {
    const found = list.slice(from).find(accept);
    if (found) return Promise.resolve(found);
    return new Promise<Frame>((resolve) => waiting.push({ list, from, accept, resolve }));
  };
  /** `ws` keeps its TCP socket here. */
  const tcp = () => (current as unknown as { _socket: { pause(): void; resume(): void } })._socket;

  class Tapped implements WebSocketLike {
    onopen: ((event: any) => void) | null = null;
    onclose: ((event: any) => void) | null = null;
    onmessage: ((event: any) => void) | null = null;
    onerror: ((event: any) => void) | null = null;
    private readonly socket: WebSocket;

    constructor(url: string, protocols?: string | string[], options?: { headers: Record<string, string> }) {
      this.socket = current = new WebSocket(url, protocols, options);
      this.socket.onopen = (event) => this.onopen?.(event);
      this.socket.onclose = (event) => this.onclose?.(event);
      this.socket.onerror = (event) => this.onerror?.(event);
      this.socket.onmessage = (event) => {
        record(received, JSON.parse(String(event.data)) as Frame);
        const pass = () => this.onmessage?.(event);
        if (held) held.push(pass);
        else pass();
      };
    }

    get readyState(): number {
      return this.socket.readyState;
    }

    send(data: string): void {
      record(sent, JSON.parse(data) as Frame);
      this.socket.send(data);
    }

    close(code?: number, reason?: string): void {
      this.socket.close(code, reason);
    }
  }

  return {
    WebSocket: Tapped,
    sent,
    received,
    hold() {
      held ??= [];
    },
    release() {
      const passes = held ?? [];
      held = undefined;
      passes.forEach((pass) => pass());
    },
    arrived: (accept, from) => find(received, accept, from),
    sends: (accept, from) => find(sent, accept, from),
    drop() {
      current?.terminate();
    },
    pauseReading: () => tcp().pause(),
    resumeReading: () => tcp().resume(),
  };
}
