/**
 * The dashboard end to end in a real browser: Debian's Chromium driven by playwright-core. It
 * signs in with the keyboard, watches a change made by another client appear, creates and changes
 * a task, follows output as a transcript, and saves screenshots under test-artifacts/.
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
let browser: Browser;
let web: string;
before(async () => {
  if (missing) return;
  web = await scratchDirectory('web');
  await buildWeb(web);
  server = await startTestServer({ webRoot: web });
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
