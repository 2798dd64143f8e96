/**
 * One W7 generator process: `bench/w7/generator.ts <assignment.json>`. It opens its share of the
 * sockets (bench/wire.ts's bare client, each thousand from a source address of its own in
 * 127.0.0.0/8, so that ephemeral ports never run out), subscribes each to its task (and its
 * owner's `subscribeAll` where the assignment says so), then times the updates it receives. The
 * driver (bench/w7/driver.ts) steers it with JSON lines on stdin; it answers with JSON lines on
 * stdout, one per command, and never writes anything else there.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { connect, type WireClient } from '../wire.js';

/** One socket of the assignment. */
export interface W7Socket {
  taskId: string;
  /** What authenticates it: the bench's `x-bench-owner`, or the example server's API key. */
  credential: string;
  /** It also holds its owner's `subscribeAll`. */
  all: boolean;
  /** It is one of the busy owner's `subscribeAll` sockets, the ones a broadcast is timed on. */
  busy: boolean;
}

export interface W7Assignment {
  /** `mesh` and `example` speak the plugin's protocol; `socketio` Socket.IO 4's. */
  peer: 'mesh' | 'example' | 'socketio';
  port: number;
  /** Which 127.x.0.0/16 its source addresses are taken from: one per generator. */
  sourceNet: number;
  sockets: W7Socket[];
}

export type W7Command =
  { cmd: 'open'; inFlight: number } | { cmd: 'broadcast' } | { cmd: 'targeted' } | { cmd: 'report' } | { cmd: 'close' };

const assignment = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as W7Assignment;
const isIo = assignment.peer === 'socketio';
const SOCKETS_PER_ADDRESS = 1000;
const wallClock = () => performance.timeOrigin + performance.now();
const answer = (line: object) => process.stdout.write(`${JSON.stringify(line)}\n`);

const clients: (WireClient | undefined)[] = [];
const acks = new Uint8Array(assignment.sockets.length);
const wanted = assignment.sockets.map((s) => (s.all ? 2 : 1));
const busyCount = assignment.sockets.filter((s) => s.busy).length;
let mode: 'subscribing' | 'broadcast' | 'targeted' = 'subscribing';
/** Targeted: every latency (ms, arrival minus the stamp the update carries). */
let latencies: number[] = [];
/** Broadcast: per stamp, how many busy sockets have it and the latest arrival. */
const broadcasts = new Map<string, { n: number; last: number }>();
let updates = 0;
let unsubscribed = 0;
let openFailures = 0;
let refusals = 0;
let resubscribes = 0;
let firstError: string | undefined;

const MARKER = Buffer.from('"updatedBy":"');
const PING = 0x32;

function onFrame(index: number, payload: Buffer, self: WireClient): void {
  if (isIo && payload.length === 1 && payload[0] === PING) return self.send('3');
  const at = payload.indexOf(MARKER);
  if (at === -1) {
    if (payload.includes('"type":"error"')) {
      // Ownership not checked in time (the database under the storm): retried, as the protocol
      // asks of a client. Only a task's subscribe looks an owner up, so it is the frame to send again.
      if (payload.includes('"code":"UNAVAILABLE"')) {
        resubscribes++;
        setTimeout(() => self.send(subscribeFrames(assignment.sockets[index]!)[0]!), 1000);
        return;
      }
      // Any other error answers a subscribe as an ack would: counted, so that the driver fails the run.
      refusals++;
    }
    if (mode === 'subscribing' && acks[index]! < wanted[index]!) {
      if (++acks[index]! === wanted[index]!) unsubscribed--;
    }
    return;
  }
  const arrived = wallClock();
  const start = at + MARKER.length;
  const stampText = payload.subarray(start, payload.indexOf(0x22, start)).toString();
  updates++;
  if (mode === 'targeted') latencies.push(arrived - Number(stampText));
  else if (mode === 'broadcast' && assignment.sockets[index]!.busy) {
    const seen = broadcasts.get(stampText) ?? { n: 0, last: 0 };
    seen.n++;
    seen.last = Math.max(seen.last, arrived);
    broadcasts.set(stampText, seen);
    if (seen.n === busyCount) {
      answer({ ev: 'broadcast', stamp: stampText, last: seen.last });
      broadcasts.delete(stampText);
    }
  }
}

function subscribeFrames(s: W7Socket): string[] {
  if (isIo) {
    const frames = [`42${JSON.stringify(['subscribe', { taskId: s.taskId }])}`];
    return s.all ? [...frames, '42["subscribeAll"]'] : frames;
  }
  const frames = [JSON.stringify({ type: 'subscribe', taskId: s.taskId })];
  return s.all ? [...frames, '{"type":"subscribeAll"}'] : frames;
}

/** Socket i's source address: a new one every SOCKETS_PER_ADDRESS sockets. */
const sourceOf = (i: number) => `127.${assignment.sourceNet}.${1 + Math.floor(i / SOCKETS_PER_ADDRESS)}.1`;

/** Opens socket i (Socket.IO: and joins its namespace), then sends its subscribe frames. */
async function openOne(i: number): Promise<void> {
  const s = assignment.sockets[i]!;
  const localAddress = sourceOf(i);
  let client: WireClient;
  if (isIo) {
    let joined!: () => void;
    const namespaceJoined = new Promise<void>((resolve) => (joined = resolve));
    // engine.io: "0{...}" opens, our "40" is answered "40{...}"; the owner rides on the upgrade's header.
    client = await connect(
      assignment.port,
      '/socket.io/?EIO=4&transport=websocket',
      { 'x-bench-owner': s.credential },
      (payload, self) => {
        if (payload[0] === 0x30 && payload[1] === 0x7b) self.send('40');
        else if (payload[0] === 0x34 && payload[1] === 0x30) joined();
      },
      { localAddress },
    );
    await namespaceJoined;
    client.onText = (payload, self) => onFrame(i, payload, self);
  } else {
    const headers: Record<string, string> =
      assignment.peer === 'example' ? { 'x-makima-api-key': s.credential } : { 'x-bench-owner': s.credential };
    client = await connect(assignment.port, '/api/v1/mesh/tasks/subscribe', headers, (payload, self) => onFrame(i, payload, self), {
      localAddress,
    });
  }
  clients[i] = client;
  for (const frame of subscribeFrames(s)) client.send(frame);
}

/**
 * Opens every socket, `inFlight` at a time, each tried up to 3 times (a refused or reset upgrade
 * under the storm is retried after a pause, and counted). Answers with the wall-clock times at
 * which the last socket was open and the last ack arrived.
 */
async function openAll(inFlight: number): Promise<void> {
  unsubscribed = assignment.sockets.length;
  let next = 0;
  let retries = 0;
  const worker = async () => {
    while (next < assignment.sockets.length) {
      const i = next++;
      for (let attempt = 1; ; attempt++) {
        try {
          await openOne(i);
          break;
        } catch (error) {
          firstError ??= String(error);
          if (attempt === 3) {
            openFailures++;
            unsubscribed--;
            break;
          }
          retries++;
          await new Promise((r) => setTimeout(r, 100 * attempt));
        }
      }
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  const openAt = wallClock();
  // Until every ack is in, or every socket still without one has closed (the server gave out).
  for (let turn = 1; unsubscribed > 0; turn++) {
    await new Promise((r) => setTimeout(r, 5));
    if (turn % 200 === 0 && clients.every((c, i) => c === undefined || c.closed || acks[i] === wanted[i])) break;
  }
  answer({
    ev: 'opened',
    openAt,
    subscribedAt: wallClock(),
    open: clients.filter((c) => c && !c.closed).length,
    unacked: unsubscribed,
    failures: openFailures,
    retries,
    refusals,
    resubscribes,
    firstError,
  });
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const command = JSON.parse(line) as W7Command;
  switch (command.cmd) {
    case 'open':
      void openAll(command.inFlight);
      break;
    case 'broadcast':
    case 'targeted':
      mode = command.cmd;
      latencies = [];
      broadcasts.clear();
      updates = 0;
      answer({ ev: 'mode', mode });
      break;
    case 'report':
      answer({
        ev: 'report',
        updates,
        latencies,
        open: clients.filter((c) => c && !c.closed).length,
        pending: [...broadcasts.entries()].slice(0, 3),
      });
      latencies = [];
      updates = 0;
      break;
    case 'close':
      for (const c of clients) c?.socket.destroy();
      answer({ ev: 'closed' });
      process.exit(0);
  }
});
answer({ ev: 'ready', sockets: assignment.sockets.length, busy: busyCount });
