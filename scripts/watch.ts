/**
 * `npm run watch -- <key> [taskId]`: a minimal WebSocket client for the README walk-through. It
 * sends what the iOS app sends (subscribeAll, then subscribe + subscribeOutput for a task) and
 * prints every frame it receives.
 */
import WebSocket from 'ws';

const [key, taskId] = process.argv.slice(2);
if (!key) {
  process.stderr.write('usage: npm run watch -- <key> [taskId]\n');
  process.exit(2);
}
const url = process.env.MESH_URL ?? `ws://127.0.0.1:${process.env.PORT ?? 3000}/api/v1/mesh/tasks/subscribe`;
const socket = new WebSocket(url, { headers: { 'x-makima-api-key': key } });
socket.on('unexpected-response', (_req, res) => {
  process.stderr.write(`upgrade refused: HTTP ${res.statusCode}\n`);
  process.exit(1);
});
socket.on('open', () => {
  process.stderr.write(`connected to ${url}\n`);
  socket.send(JSON.stringify({ type: 'subscribeAll' }));
  if (taskId) {
    socket.send(JSON.stringify({ type: 'subscribe', taskId }));
    socket.send(JSON.stringify({ type: 'subscribeOutput', taskId }));
  }
});
socket.on('message', (data) => process.stdout.write(`${data.toString()}\n`));
socket.on('close', (code, reason) => {
  process.stderr.write(`closed ${code} ${reason.toString()}\n`);
  process.exit(0);
});
socket.on('error', (error) => {
  process.stderr.write(`${error.message}\n`);
  process.exit(1);
});
