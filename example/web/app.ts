/**
 * The example server's dashboard: sign in with a key, watch your tasks change live, create and
 * change them, and open a task to read its whole retained transcript, then follow it live. Built by
 * scripts/build-web.ts; it talks to the server only through its REST routes and
 * `mesh-subscriptions/client`.
 */
import {
  createMeshClient,
  type ConnectionStatus,
  type HistoryTruncated,
  type MeshClient,
  type Subscription,
  type SubscriptionStart,
  type TaskOutput,
  type TaskUpdated,
} from 'mesh-subscriptions/client';

interface Task {
  id: string;
  name: string;
  status: string;
  version: number;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const KEY_HEADER = 'x-makima-api-key';
const API = '/api/v1/mesh';

let key = '';
let client: MeshClient | undefined;
let output: Subscription | undefined;
let openTaskId: string | undefined;
let nextPage: string | null = null;
const tasks = new Map<string, Task>();
/** The transcript entry a partial message updates in place, per task. */
let partial: HTMLLIElement | undefined;
/**
 * Output received but not yet on the page. A history of thousands of events arrives faster than a
 * page can lay it out: it goes on in slices, one per animation frame, so the first screen shows
 * at once and the page answers input while the rest comes.
 */
let pending: TaskOutput[] = [];
let drawing = false;
/** How long one frame may spend adding entries, so that input and painting still get their turn. */
const SLICE_MS = 8;
/**
 * Entries per list of the transcript: the browser skips the lists off screen (CSS
 * `content-visibility`), so a frame's work does not grow with the transcript.
 */
const CHUNK = 250;
/** The list new entries go to. */
let chunk: HTMLOListElement | undefined;

async function api<T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  const res = await fetch(`${API}${path}`, {
    method,
    headers: { [KEY_HEADER]: key, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as T };
}

// Connection indicator.

function showConnection(s: ConnectionStatus): void {
  const el = $('connection');
  el.dataset.state = s.state;
  el.textContent =
    s.state === 'open'
      ? 'Live'
      : s.state === 'connecting'
        ? 'Connecting…'
        : s.state === 'reconnecting'
          ? `Reconnecting (attempt ${s.attempt}) in ${Math.ceil(s.inMs / 1000)} s…${s.status === 503 ? ' (server busy or its database unavailable)' : ''}`
          : s.reason === 'unauthorized'
            ? 'Signed out: the key is no longer valid'
            : s.reason === 'forbidden'
              ? 'Refused: this page may not connect to the server'
              : 'Disconnected';
  if (s.state === 'closed' && s.reason === 'unauthorized') signOut('This key is no longer valid.');
}

// Task list.

function renderTask(task: Task): void {
  tasks.set(task.id, task);
  let item = document.querySelector<HTMLLIElement>(`li[data-task="${task.id}"]`);
  if (!item) {
    item = document.createElement('li');
    item.dataset.task = task.id;
    const button = document.createElement('button');
    button.type = 'button';
    button.addEventListener('click', () => openTask(task.id));
    item.append(button);
    $('tasks').append(item);
  }
  const button = item.querySelector('button')!;
  button.setAttribute('aria-current', String(openTaskId === task.id));
  button.replaceChildren(
    Object.assign(document.createElement('span'), { textContent: task.name }),
    Object.assign(document.createElement('span'), { className: 'right' }),
  );
  const right = button.lastElementChild!;
  const badge = Object.assign(document.createElement('span'), { className: 'badge', textContent: task.status });
  badge.dataset.status = task.status;
  right.append(badge, ' ', Object.assign(document.createElement('span'), { className: 'version', textContent: `v${task.version}` }));
  if (openTaskId === task.id) renderHeader(task);
}

async function loadPage(): Promise<void> {
  const query = nextPage ? `?after=${encodeURIComponent(nextPage)}` : '';
  const { body } = await api<{ tasks: Task[]; next: string | null }>('GET', `/tasks${query}`);
  body.tasks.forEach(renderTask);
  nextPage = body.next;
  $('more').hidden = nextPage === null;
}

async function onUpdate(event: TaskUpdated): Promise<void> {
  const known = tasks.get(event.taskId);
  if (known) {
    if (event.version >= known.version) renderTask({ ...known, status: event.status, version: event.version });
    return;
  }
  // A task created elsewhere: its name is not in the event.
  const { status, body } = await api<Task>('GET', `/tasks/${event.taskId}`);
  if (status === 200) showFirst(body);
}

/** A task new to this page goes to the top of the list. */
function showFirst(task: Task): void {
  renderTask(task);
  $('tasks').prepend(document.querySelector(`li[data-task="${task.id}"]`)!);
}

// One task and its transcript.

function renderHeader(task: Task): void {
  $('task-title').textContent = task.name;
  const badge = $('task-status');
  badge.textContent = task.status;
  badge.dataset.status = task.status;
  $('task-version').textContent = `version ${task.version}`;
  $<HTMLSelectElement>('status').value = task.status;
}

function openTask(id: string): void {
  output?.unsubscribe();
  output = undefined;
  openTaskId = id;
  partial = undefined;
  pending = [];
  chunk = undefined;
  for (const task of tasks.values()) renderTask(task);
  renderHeader(tasks.get(id)!);
  $('transcript').replaceChildren();
  $('task').hidden = false;
  // The whole retained transcript first, then live.
  follow(id, 'start');
  $('task-title').focus();
}

/** Follows the open task's output from `from`, adding to the transcript as it is. */
function follow(id: string, from: SubscriptionStart): void {
  output?.unsubscribe();
  const transcript = $('transcript');
  transcript.dataset.following = 'false';
  const subscription = client!.subscribeOutput(id, appendOutput, {
    from,
    onTruncated: (marker) => showTruncated(marker),
    onEnded: () => {
      if (output !== subscription) return;
      transcript.dataset.following = 'false';
      transcript.append(note('ended', 'This task is no longer visible with this key.'));
    },
  });
  output = subscription;
  // Marked once the server follows it (tests and assistive tech can tell "live" from "waiting").
  void subscription.ready.then(() => {
    if (output === subscription) transcript.dataset.following = 'true';
  });
}

/** A line of the transcript that is not output: the history's cut, or the end of following. */
function note(kind: string, text: string): HTMLParagraphElement {
  const item = Object.assign(document.createElement('p'), { className: `note ${kind}`, textContent: text });
  item.setAttribute('role', 'note');
  return item;
}

function showTruncated(marker: HistoryTruncated): void {
  if (marker.taskId !== openTaskId) return;
  // It is about the transcript's beginning, whatever has been drawn by now.
  $('transcript').prepend(note('truncated', 'Earlier output is no longer available.'));
}

function appendOutput(o: TaskOutput): void {
  if (o.taskId !== openTaskId) return;
  pending.push(o);
  if (drawing) return;
  drawing = true;
  $('transcript').setAttribute('aria-busy', 'true');
  requestAnimationFrame(drawSlice);
}

/** Adds what one frame's time allows, in one DOM insertion per list, and leaves the rest to the next frame. */
function drawSlice(): void {
  const started = performance.now();
  /** New entries for the list already on the page, and new lists. */
  const more = document.createDocumentFragment();
  const lists: HTMLOListElement[] = [];
  let target: HTMLOListElement | DocumentFragment = more;
  let room = chunk ? CHUNK - chunk.childElementCount : 0;
  let done = 0;
  // The clock is read every 32 entries: reading it costs more than drawing one.
  while (done < pending.length && (done % 32 !== 0 || performance.now() - started < SLICE_MS)) {
    const item = draw(pending[done++]!);
    if (!item) continue;
    if (room === 0) {
      target = document.createElement('ol');
      lists.push(target);
      room = CHUNK;
    }
    target.append(item);
    room--;
  }
  pending = pending.slice(done);
  chunk?.append(more);
  $('transcript').append(...lists);
  chunk = lists.at(-1) ?? chunk;
  if (pending.length > 0) return void requestAnimationFrame(drawSlice);
  drawing = false;
  $('transcript').removeAttribute('aria-busy');
}

/** Draws one output: a new entry to add, or none when it replaced a partial message in place. */
function draw(o: TaskOutput): HTMLLIElement | undefined {
  // A partial message is shown in place until the next message replaces it (on the page already,
  // or still in this slice).
  const item = partial ?? document.createElement('li');
  partial = o.isPartial ? item : undefined;
  item.className = o.messageType;
  item.dataset.partial = String(o.isPartial);
  const label = Object.assign(document.createElement('span'), { className: 'kind', textContent: o.messageType.replace('_', ' ') });
  const parts: (Node | string)[] = [label];
  if (o.messageType === 'tool_use') {
    const details = document.createElement('details');
    details.append(
      Object.assign(document.createElement('summary'), { textContent: o.toolName ?? 'tool' }),
      Object.assign(document.createElement('pre'), { textContent: JSON.stringify(o.toolInput ?? null, null, 2) }),
    );
    if (o.content) parts.push(o.content);
    parts.push(details);
  } else {
    parts.push(o.content);
  }
  if (o.messageType === 'tool_result') {
    item.dataset.error = String(o.isError === true);
    if (o.isError) label.textContent = 'tool result: error';
  }
  if (o.costUsd !== undefined || o.durationMs !== undefined) {
    const facts = [
      o.costUsd !== undefined ? `$${o.costUsd.toFixed(4)}` : '',
      o.durationMs !== undefined ? `${(o.durationMs / 1000).toFixed(1)} s` : '',
    ]
      .filter(Boolean)
      .join(' · ');
    parts.push(Object.assign(document.createElement('span'), { className: 'facts', textContent: facts }));
  }
  item.replaceChildren(...parts);
  return item.parentNode ? undefined : item;
}

// Sign in and out.

async function signIn(candidate: string): Promise<boolean> {
  key = candidate;
  const check = await api<unknown>('GET', '/tasks?limit=1');
  if (check.status !== 200) {
    key = '';
    return false;
  }
  sessionStorage.setItem('mesh-key', key);
  $('sign-in').hidden = true;
  $('workspace').hidden = false;
  client = createMeshClient({ url: location.origin, apiKey: key, keyHeader: KEY_HEADER });
  client.on('status', showConnection);
  client.on('resyncRequired', (r) => {
    // The open transcript's resume point is gone: read it again from the start.
    if (r.subscription !== 'subscribeOutput') return void reload();
    if (openTaskId !== undefined && r.taskId === openTaskId) openTask(openTaskId);
  });
  // Output dropped for this slow page: fill the gap from the last entry it got, keeping the rest.
  client.on('lagged', (l) => l.taskId === openTaskId && follow(l.taskId, { after: l.cursor }));
  client.subscribeAll((e) => void onUpdate(e));
  await reload();
  return true;
}

async function reload(): Promise<void> {
  nextPage = null;
  tasks.clear();
  $('tasks').replaceChildren();
  await loadPage();
}

function signOut(message = ''): void {
  client?.close();
  client = undefined;
  key = '';
  sessionStorage.removeItem('mesh-key');
  $('workspace').hidden = true;
  $('task').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message;
  $('key').focus();
}

$('sign-in').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $<HTMLInputElement>('key');
  if (!(await signIn(input.value.trim()))) $('sign-in-error').textContent = 'That key was not accepted.';
  input.value = '';
});
$('sign-out').addEventListener('click', () => signOut());
$('more').addEventListener('click', () => void loadPage());
$('close-task').addEventListener('click', () => {
  output?.unsubscribe();
  output = undefined;
  openTaskId = undefined;
  pending = [];
  $('task').hidden = true;
});
$('create').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $<HTMLInputElement>('new-name');
  const { status, body } = await api<Task>('POST', '/tasks', { name: input.value });
  if (status === 201) {
    input.value = '';
    // Its taskUpdated may have come first, with a newer version.
    if (tasks.has(body.id)) return;
    showFirst(body);
  }
});
$('status-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  if (!openTaskId) return;
  const { status, body } = await api<Task>('PATCH', `/tasks/${openTaskId}`, { status: $<HTMLSelectElement>('status').value });
  if (status === 200) renderTask(body);
});
$('task-title').tabIndex = -1;

const saved = sessionStorage.getItem('mesh-key');
if (saved) void signIn(saved);
