// node console.mjs <server URL> <API key> <screenshot folder>: drives the web console in
// Debian's headless Chromium as a person would: a wrong key, then the right one; creates a
// sandbox, types `echo hi` in its terminal, uploads and downloads a file, watches the events,
// destroys it. Prints what it saw as JSON; leaves a screenshot of each step in the folder.
import { readFile } from 'node:fs/promises';
import { chromium } from 'playwright-core';

const [base, key, shots] = process.argv.slice(2);
const UPLOADED = 'uploaded through the console\n';
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const result = {};
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1400, height: 1100 } });
  const page = await context.newPage();
  const pageErrors = [];
  const urls = [];
  page.on('pageerror', (error) => pageErrors.push(String(error)));
  page.on('request', (request) => urls.push(request.url()));
  page.on('websocket', (socket) => urls.push(socket.url()));
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

  await page.goto(`${base}/console`);
  await shot('1-login');
  await page.fill('#key', 'not-the-key');
  await page.click('#login-form button');
  await page.waitForFunction(() => document.getElementById('login-error').textContent !== '');
  result.wrongKey = await page.textContent('#login-error');
  await page.fill('#key', key);
  await page.click('#login-form button');
  await page.waitForSelector('#app:not([hidden])');

  await page.fill('#metadata', 'purpose=console-test');
  await page.click('#create-form button');
  await page.waitForSelector('#detail:not([hidden])');
  const id = (await page.textContent('#detail-id')).trim();
  result.sandboxId = id;
  await page.waitForFunction(
    () => (document.querySelector('#terminal .xterm-rows')?.textContent ?? '').includes('$'),
    null, { timeout: 30_000 },
  );
  await page.click('#terminal');
  await page.keyboard.type('echo hi\n');
  await page.waitForFunction(
    () => [...document.querySelectorAll('#terminal .xterm-rows > div')].some((row) => row.textContent.trim() === 'hi'),
    null, { timeout: 30_000 },
  );
  result.terminal = 'hi';
  await shot('2-terminal');

  await page.setInputFiles('#upload', { name: 'hello.txt', mimeType: 'text/plain', buffer: Buffer.from(UPLOADED) });
  await page.click('#upload-form button');
  await page.waitForSelector('button[aria-label="Download hello.txt"]', { timeout: 30_000 });
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click('button[aria-label="Download hello.txt"]'),
  ]);
  result.downloaded = await readFile(await download.path(), 'utf8');
  result.downloadName = download.suggestedFilename();

  await page.waitForFunction(
    (prefix) => [...document.querySelectorAll('#events li')].some((li) => li.textContent.includes('sandbox.created') && li.textContent.includes(prefix)),
    id.slice(0, 8), { timeout: 30_000 },
  );
  await page.waitForFunction(
    (sandbox) => document.querySelector(`#sandboxes tr[data-id="${sandbox}"] .cpu`)?.textContent.includes('%'),
    id, { timeout: 30_000 },
  );
  result.row = await page.textContent(`#sandboxes tr[data-id="${id}"]`);
  await shot('3-files-metrics-events');

  await page.click(`button[aria-label="Destroy sandbox ${id}"]`);
  await page.waitForFunction(
    (sandbox) => !document.querySelector(`#sandboxes tr[data-id="${sandbox}"]`)
      && [...document.querySelectorAll('#events li')].some((li) => li.textContent.includes('sandbox.ended') && li.textContent.includes(sandbox.slice(0, 8))),
    id, { timeout: 30_000 },
  );
  result.destroyed = true;
  await shot('4-destroyed');
  result.keyInAUrl = urls.some((url) => url.includes(key));
  result.pageErrors = pageErrors;
} catch (error) {
  result.error = String(error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
