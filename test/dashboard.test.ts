/**
 * The dashboard end to end in a real browser: Debian's Chromium driven by playwright-core. It
 * signs in with the keyboard, watches a change made by another client appear, creates and changes
 * a task, follows output as a transcript, and saves screenshots under test-artifacts/. A task opens
 * with its whole retained transcript: 10,000 entries (the times to the first screen and to the last
 * entry are printed), output that comes while the history loads, and a history whose beginning is
 * gone.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { buildWeb } from '../example/scripts/build-web.js';
import { scratchDirectory } from '../example/src/embedded-postgres.js';
import { startTestServer, type TestServer } from './helpers/server.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.resolve('test-artifacts');
const missing = existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (Debian package chromium; .ci/run installs it)`;

let server: TestServer;
/** One replay sends at most 5 events here: a longer history is cut, and the page says so. */
let capped: TestServer;
let browser: Browser;
let web: string;
before(async () => {
  if (missing) return;
  web = await scratchDirectory('web');
  await buildWeb(web);
  server = await startTestServer({ webRoot: web });
  capped = await startTestServer({ webRoot: web, mesh: { replay: { maxEvents: 5 } } });
  await mkdir(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // This machine's network is closed: without these Chromium keeps trying to reach Google.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});
after(async () => {
  if (missing) return;
  await browser?.close();
  await server?.close();
  await capped?.close();
  await rm(web, { recursive: true, force: true });
});

const badge = (page: Page, taskId: string) => page.locator(`li[data-task="${taskId}"] .badge`);

test(
  'sign in, live status from another client, create and change a task, follow its output',
  { skip: missing, timeout: 90_000 },
  async () => {
    const { ownerId, key } = await server.owner();
    const taskId = await server.task(ownerId, 'Refactor the parser');
    await server.task(null, 'Somebody else’s task');
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    const problems: string[] = [];
    page.on('pageerror', (error) => problems.push(error.message));
    page.on('console', (message) => message.type() === 'error' && problems.push(message.text()));
    const upgraded = new Set<Socket>();
    server.app.server.on('upgrade', (_request, socket: Socket) => upgraded.add(socket));
    await page.goto(`${server.baseUrl}/`);

    // Keyboard only: the key field, typed, Enter.
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate('document.activeElement.id'), 'key');
    await page.keyboard.type(key);
    await page.keyboard.press('Enter');
    await page.locator('#connection[data-state="open"]').waitFor();
    await badge(page, taskId).getByText('pending').waitFor();
    assert.equal(await page.locator('#tasks li').count(), 1, 'only the caller’s tasks');
    assert.ok(!page.url().includes(key), 'the key is not in the URL');

    // Another client changes the task: the badge and version follow.
    const patched = await server.http('PATCH', `/api/v1/mesh/tasks/${taskId}`, key, { status: 'running' });
    assert.equal(patched.status, 200);
    await badge(page, taskId).getByText('running').waitFor();
    await page.locator(`li[data-task="${taskId}"] .version`).getByText('v2').waitFor();

    // Create a task and change its status from the page.
    await page.fill('#new-name', 'Write the docs');
    await page.keyboard.press('Enter');
    const created = page.locator('#tasks li').filter({ hasText: 'Write the docs' });
    await created.waitFor();
    await created.locator('button').click();
    await page.selectOption('#status', 'done');
    await page.click('#status-form button');
    await created.locator('.badge').getByText('done').waitFor();
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-tasks.png') });

    // Follow output: a partial message updated in place, a tool call, a failed tool result, a result.
    await page.locator(`li[data-task="${taskId}"] button`).click();
    await page.locator('#task-title').getByText('Refactor the parser').waitFor();
    // The page marks the transcript once the server has acknowledged the output subscription.
    await page.locator('#transcript[data-following="true"]').waitFor({ state: 'attached' });
    const post = (body: object) => server.http('POST', `/api/v1/mesh/tasks/${taskId}/output`, key, body);
    await post({ messageType: 'assistant', content: 'Reading the', isPartial: true });
    await post({ messageType: 'assistant', content: 'Reading the parser now.', isPartial: false });
    await post({ messageType: 'tool_use', content: '', toolName: 'read_file', toolInput: { path: 'src/parser.ts' } });
    await post({ messageType: 'tool_result', content: 'ENOENT: no such file', isError: true });
    await post({ messageType: 'result', content: 'Done.', costUsd: 0.0123, durationMs: 4200 });
    await page.locator('#transcript li.result').getByText('$0.0123 · 4.2 s').waitFor();
    assert.equal(await page.locator('#transcript li.assistant').count(), 1, 'the partial message was replaced in place');
    assert.equal(await page.locator('#transcript li.assistant').textContent(), 'assistantReading the parser now.');
    assert.equal(await page.locator('#transcript li.tool_result').getAttribute('data-error'), 'true');
    await page.locator('#transcript details summary').getByText('read_file').click();
    await page.locator('#transcript details pre').getByText('"path": "src/parser.ts"').waitFor();
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-transcript.png'), fullPage: true });

    // The connection drops (its TCP socket destroyed under it): the indicator shows the reconnect,
    // then it is live again and the transcript still follows the task.
    const reconnecting = page.locator('#connection[data-state="reconnecting"]').waitFor();
    for (const socket of upgraded) socket.destroy();
    await reconnecting;
    await page.locator('#connection[data-state="open"]').waitFor();
    await post({ messageType: 'assistant', content: 'Back after the reconnect.', isPartial: false });
    await page.locator('#transcript li.assistant').getByText('Back after the reconnect.').waitFor();

    // Phone width: one column, nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    assert.ok(await page.evaluate('document.documentElement.scrollWidth <= 390'), 'no horizontal scrolling at phone width');
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-phone.png'), fullPage: true });
    assert.deepEqual(problems, []);
    await page.close();
  },
);

/** A page signed in with `key` (no page error or console error may happen on it: see `problems`). */
async function signedIn(on: TestServer, key: string): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const problems: string[] = [];
  page.on('pageerror', (error) => problems.push(error.message));
  page.on('console', (message) => message.type() === 'error' && problems.push(message.text()));
  await page.goto(`${on.baseUrl}/`);
  await page.fill('#key', key);
  await page.keyboard.press('Enter');
  await page.locator('#connection[data-state="open"]').waitFor();
  return { page, problems };
}

/** `count` outputs `<prefix><n>`, logged in one statement through the SQL function. */
async function logOutputs(on: TestServer, taskId: string, prefix: string, count: number): Promise<void> {
  await on.db.sql`
    SELECT mesh_publish_task_output(${taskId}::uuid, NULL, 'assistant', ${prefix} || n, NULL, NULL, NULL, NULL, NULL, false)
    FROM generate_series(0, ${count - 1}) AS n ORDER BY n`;
}

/**
 * The transcript's entries as text (without the kind label), in page order. Functions given to
 * `page.evaluate` run in the page: they reach its DOM through `globalThis` (this project's
 * TypeScript has Node's types, not the DOM's).
 */
const entries = (page: Page): Promise<string[]> =>
  page.evaluate(() =>
    [...(globalThis as any).document.querySelectorAll('#transcript li, #transcript .note')].map((entry: any) =>
      entry.classList.contains('note')
        ? `note: ${entry.textContent}`
        : [...entry.childNodes]
            .slice(1)
            .map((n: any) => n.textContent)
            .join(''),
    ),
  );
const range = (prefix: string, from: number, to: number) => Array.from({ length: to - from }, (_, i) => `${prefix}${from + i}`);

test(
  'a transcript of 10,000 events opens from its start; the times to the first screen and to the last entry',
  { skip: missing, timeout: 120_000 },
  async (t) => {
    const total = 10_000;
    const { ownerId, key } = await server.owner();
    const taskId = await server.task(ownerId, 'A long transcript');
    await logOutputs(server, taskId, 'line ', total);
    const { page, problems } = await signedIn(server, key);
    await badge(page, taskId).waitFor();

    // Timed in the page: from the click to the first entry on screen, and to the last one; and the
    // longest stretch the page could not answer input (Chromium's long tasks) while it loaded.
    await page.evaluate((count) => {
      const page = globalThis as any;
      page.marks = {};
      page.longest = 0;
      new page.PerformanceObserver((list: any) => {
        for (const entry of list.getEntries()) page.longest = Math.max(page.longest, entry.duration);
      }).observe({ type: 'longtask' });
      const transcript = page.document.getElementById('transcript');
      // Entries come in lists of 250 (the page's own chunks): counted wherever they are added.
      const entries = transcript.getElementsByTagName('li');
      new page.MutationObserver(() => {
        if (entries.length > 0) page.marks.first ??= performance.now();
        if (entries.length >= count) page.marks.last ??= performance.now();
      }).observe(transcript, { childList: true, subtree: true });
    }, total);
    await page.evaluate((id) => {
      const page = globalThis as any;
      page.marks.clicked = performance.now();
      page.document.querySelector(`li[data-task="${id}"] button`).click();
    }, taskId);
    await page.waitForFunction(() => (globalThis as any).marks.last !== undefined, undefined, { timeout: 60_000 });
    const { marks, longest } = await page.evaluate(() => ({ marks: (globalThis as any).marks, longest: (globalThis as any).longest }));
    t.diagnostic(
      `10,000 entries: first screen ${Math.round(marks.first - marks.clicked)} ms after the click, ` +
        `the last entry ${Math.round(marks.last - marks.clicked)} ms; longest long task while loading ${Math.round(longest)} ms`,
    );

    const shown = await entries(page);
    assert.equal(shown.length, total);
    assert.equal(shown[0], 'line 0');
    assert.equal(shown.at(-1), 'line 9999');
    assert.deepEqual(shown, range('line ', 0, total), 'every entry once, in order');
    assert.equal(await page.locator('#transcript .note').count(), 0, 'nothing is missing from this history');
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-long-transcript.png') });
    assert.deepEqual(problems, []);
    await page.close();
  },
);

test(
  'output published while the history loads appears once, in order; a partial message is still replaced in place',
  { skip: missing, timeout: 120_000 },
  async (t) => {
    const { ownerId, key } = await server.owner();
    const taskId = await server.task(ownerId, 'Busy');
    await logOutputs(server, taskId, 'h', 3_000);
    const post = (body: object) => server.http('POST', `/api/v1/mesh/tasks/${taskId}/output`, key, body);
    await post({ messageType: 'assistant', content: 'Reading the', isPartial: true });
    await post({ messageType: 'assistant', content: 'Reading the parser now.', isPartial: false });
    const { page, problems } = await signedIn(server, key);
    await page.locator(`li[data-task="${taskId}"] button`).click();
    // Published as soon as the page asked for the transcript, while its history comes.
    await page.locator('#transcript[data-following="true"]').waitFor({ state: 'attached' });
    let drawnAtFirstLive: number | undefined;
    for (let n = 0; n < 200; n++) {
      await server.app.mesh.taskOutput.publish({ taskId, ownerId, messageType: 'assistant', content: `l${n}`, isPartial: false });
      drawnAtFirstLive ??= await page.locator('#transcript li').count();
    }
    await server.app.mesh.taskOutput.publish({ taskId, ownerId, messageType: 'assistant', content: 'Still typ', isPartial: true });
    await page.locator('#transcript li[data-partial="true"]').getByText('Still typ').waitFor();
    t.diagnostic(`entries on the page when the first live output had been published: ${drawnAtFirstLive} of 3,001 history`);

    assert.deepEqual(await entries(page), [...range('h', 0, 3_000), 'Reading the parser now.', ...range('l', 0, 200), 'Still typ']);
    assert.equal(await page.locator('#transcript li[data-partial="true"]').count(), 1, 'only the last, partial, message is partial');
    assert.deepEqual(problems, []);
    await page.close();
  },
);

test(
  'a history whose beginning is gone starts with "earlier output is no longer available"',
  { skip: missing, timeout: 60_000 },
  async () => {
    const { ownerId, key } = await capped.owner();
    const taskId = await capped.task(ownerId, 'Cut short');
    await logOutputs(capped, taskId, 'n', 8);
    const { page, problems } = await signedIn(capped, key);
    await page.locator(`li[data-task="${taskId}"] button`).click();
    await page.locator('#transcript li').filter({ hasText: /n7$/ }).waitFor();
    assert.deepEqual(await entries(page), ['note: Earlier output is no longer available.', ...range('n', 3, 8)]);
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-truncated.png') });
    assert.deepEqual(problems, []);
    await page.close();
  },
);
