/**
 * RFC 6455 framing of server messages, done once per message: the frame goes as it is to every
 * socket it is for, straight to their TCP sockets, instead of ws framing it again for each one.
 */

/** §5.2: FIN + text opcode, then the payload length in 7, 7+16 or 7+64 bits, no mask (server to client). */
function writeHeader(frame: Buffer, length: number): number {
  frame[0] = 0x81;
  if (length < 126) {
    frame[1] = length;
    return 2;
  }
  if (length < 65536) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
    return 4;
  }
  frame[1] = 127;
  frame.writeBigUInt64BE(BigInt(length), 2);
  return 10;
}

const headerSize = (length: number) => (length < 126 ? 2 : length < 65536 ? 4 : 10);

/** One text frame holding `text`, UTF-8 encoded straight into the frame: one allocation, one copy. */
export function frameText(text: string): Buffer {
  const length = Buffer.byteLength(text);
  const frame = Buffer.allocUnsafe(headerSize(length) + length);
  frame.write(text, writeHeader(frame, length));
  return frame;
}

/** The payload of a frame `frameText` made (its JSON text, for the REST history): a view, not a copy. */
export function payloadOf(frame: Buffer): Buffer {
  const length = frame[1]! & 0x7f;
  return frame.subarray(length < 126 ? 2 : length === 126 ? 4 : 10);
}
