/**
 * A watcher of one server process, in a process of its own so that the load generator's busy loop
 * does not add to what it measures: `bench/poll.ts <port> <server pid> [<interval ms>]`.
 * Every interval it sends `GET /healthz` (on schedule, whether or not the previous one has been
 * answered: a stalled server is charged for every request it keeps waiting) and reads the server's
 * VmRSS and CPU time from /proc, and the whole machine's busy CPU time. On SIGTERM it prints one JSON line: every sample, stamped with wall-clock ms,
 * the server's VmHWM (its peak RSS since it started), and how many requests were still unanswered.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';

const [portText, pidText, intervalText] = process.argv.slice(2) as [string, string, string?];
const port = Number(portText);
const interval = Number(intervalText ?? 50);
const wallClock = () => performance.timeOrigin + performance.now();
const agent = new http.Agent({ keepAlive: true });

/** kB fields of /proc/<pid>/status, in bytes. */
function status(field: 'VmRSS' | 'VmHWM'): number {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pidText}/status`, 'utf8'));
    return match ? Number(match[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** The server's user + system CPU time, ms. */
function cpu(): number {
  try {
    const fields = readFileSync(`/proc/${pidText}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS;
  } catch {
    return NaN;
  }
}

/** Every core's busy time (all but idle and iowait), ms. */
function machine(): number {
  const [, ...ticks] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).map(Number);
  const total = ticks.slice(0, 8).reduce((a, b) => a + b, 0);
  return ((total - ticks[3]! - ticks[4]!) * 1000) / TICKS;
}
const TICKS = 100; // USER_HZ

/** [at, server VmRSS bytes, server CPU ms, machine busy CPU ms] */
const rss: [number, number, number, number][] = [];
/** [sent at, ms until the whole answer was in, status (0: failed)] */
const healthz: [number, number, number][] = [];

let unanswered = 0;

function probe(): void {
  unanswered++;
  const sent = wallClock();
  const started = performance.now();
  const request = http.get({ host: '127.0.0.1', port, path: '/healthz', agent }, (response) => {
    response.resume();
    response.on('end', () => {
      unanswered--;
      healthz.push([sent, performance.now() - started, response.statusCode ?? 0]);
    });
  });
  request.on('error', () => {
    unanswered--;
    healthz.push([sent, performance.now() - started, 0]);
  });
}

const timer = setInterval(() => {
  rss.push([wallClock(), status('VmRSS'), cpu(), machine()]);
  probe();
}, interval);

process.on('SIGTERM', async () => {
  clearInterval(timer);
  // Requests still out get up to 5 s more; what is unanswered then is counted as such.
  for (let waited = 0; unanswered > 0 && waited < 5000; waited += 10) await new Promise((r) => setTimeout(r, 10));
  process.stdout.write(`${JSON.stringify({ rss, healthz, unanswered, hwm: status('VmHWM') })}\n`, () => process.exit(0));
});
process.stdout.write('ready\n');
