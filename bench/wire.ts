/**
 * A bare WebSocket client for the load generator: handshake, masked text frames out, and frame
 * headers parsed in place. It never decodes a payload it is not asked to, so that it costs less
 * per frame than any server it measures (a `ws` client would cost as much as the server).
 */
import { randomBytes } from 'node:crypto';
import { connect as tcpConnect, type Socket } from 'node:net';

export interface WireClient {
  socket: Socket;
  send(text: string): void;
  /** Payloads are handed over only while this is set; counting needs none. */
  onText?: (payload: Buffer, self: WireClient) => void;
  frames: number;
  bytes: number;
  /** Reads of the TCP socket ('data' events): how the server's writes arrived. */
  reads: number;
  closed: boolean;
}

/** `onText` is in place before the handshake ends: a server may send frames in the same packet as its 101. */
export function connect(
  port: number,
  path: string,
  headers: Record<string, string> = {},
  onText?: (payload: Buffer, self: WireClient) => void,
  /** `localAddress`: a source address of 127.0.0.0/8, each with its own ~28,000 ephemeral ports (W7). */
  options: { localAddress?: string } = {},
): Promise<WireClient> {
  return new Promise((resolve, reject) => {
    // Every socket reads into one buffer, reused (`onread`): a fresh 64 KiB buffer per read cost
    // the generator page faults, and was most of its system time in W1 (BENCHMARKS.md, round three).
    const socket = tcpConnect({
      host: '127.0.0.1',
      port,
      noDelay: true,
      localAddress: options.localAddress,
      onread: {
        buffer: READ_BUFFER,
        callback: (bytes) => {
          received(READ_BUFFER.subarray(0, bytes));
          return true;
        },
      },
    });
    const key = randomBytes(16).toString('base64');
    const client: WireClient = {
      socket,
      frames: 0,
      bytes: 0,
      reads: 0,
      closed: false,
      onText,
      send(text) {
        socket.write(maskedTextFrame(Buffer.from(text)));
      },
    };
    let pending: Buffer | undefined;
    /** Bytes still to come of a text frame whose payload nobody reads: skipped as they come, never copied. */
    let skipping = 0;
    let upgraded = false;
    socket.on('connect', () => {
      const lines = [
        `GET ${path} HTTP/1.1`,
        'Host: 127.0.0.1',
        'Upgrade: websocket',
        'Connection: Upgrade',
        `Sec-WebSocket-Key: ${key}`,
        'Sec-WebSocket-Version: 13',
        ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
      ];
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
    });
    // Called with a view of READ_BUFFER: whatever outlives the call is copied.
    const received = (chunk: Buffer) => {
      client.reads++;
      let data = pending ? Buffer.concat([pending, chunk]) : chunk;
      pending = undefined;
      if (!upgraded) {
        const end = data.indexOf('\r\n\r\n');
        if (end === -1) {
          pending = Buffer.from(data);
          return;
        }
        const head = data.subarray(0, end).toString();
        if (!head.startsWith('HTTP/1.1 101')) {
          reject(new Error(head.split('\r\n')[0]));
          socket.destroy();
          return;
        }
        upgraded = true;
        data = data.subarray(end + 4);
        resolve(client);
      }
      let offset = 0;
      if (skipping > 0) {
        offset = Math.min(skipping, data.length);
        skipping -= offset;
        // Counted once its last byte is here, as a frame read whole is.
        if (skipping === 0) client.frames++;
      }
      while (data.length - offset >= 2) {
        const b1 = data[offset + 1]! & 0x7f;
        let header = 2;
        let length = b1;
        if (b1 === 126) {
          if (data.length - offset < 4) break;
          length = data.readUInt16BE(offset + 2);
          header = 4;
        } else if (b1 === 127) {
          if (data.length - offset < 10) break;
          length = Number(data.readBigUInt64BE(offset + 2));
          header = 10;
        }
        const opcode = data[offset]! & 0x0f;
        if (data.length - offset < header + length) {
          // A text frame nobody reads: its bytes need no copy into the next chunk's, only counting.
          if (opcode === 0x1 && !client.onText) {
            client.bytes += length;
            skipping = header + length - (data.length - offset);
            offset = data.length;
          }
          break;
        }
        if (opcode === 0x1) {
          client.frames++;
          client.bytes += length;
          client.onText?.(data.subarray(offset + header, offset + header + length), client);
        } else if (opcode === 0x9) {
          socket.write(maskedFrame(0xa, data.subarray(offset + header, offset + header + length)));
        } else if (opcode === 0x8) {
          client.closed = true;
        }
        offset += header + length;
      }
      if (offset < data.length) pending = Buffer.from(data.subarray(offset));
    };
    socket.on('error', (error) => {
      if (!upgraded) reject(error);
    });
    socket.on('close', () => {
      client.closed = true;
    });
  });
}

/** Shared by every socket of this process: reads are handed over one at a time, on the one thread. */
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024);

function maskedFrame(opcode: number, payload: Buffer): Buffer {
  const length = payload.length;
  const header = length < 126 ? 2 : length < 65536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(header + 4 + length);
  frame[0] = 0x80 | opcode;
  if (header === 2) frame[1] = 0x80 | length;
  else if (header === 4) {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 0x80 | 127;
    frame.writeBigUInt64BE(BigInt(length), 2);
  }
  const mask = randomBytes(4);
  mask.copy(frame, header);
  for (let i = 0; i < length; i++) frame[header + 4 + i] = payload[i]! ^ mask[i & 3]!;
  return frame;
}

const maskedTextFrame = (payload: Buffer) => maskedFrame(0x1, payload);
