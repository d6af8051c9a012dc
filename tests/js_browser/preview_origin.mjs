// node preview_origin.mjs <server URL> <API key> <hostile page URL> <victim page URL>
// A hostile page served by one sandbox's port, opened by path on the API's origin in Debian's
// headless Chromium after its user has logged into the console and opened another sandbox's
// preview: what can it reach? Prints what it saw as JSON (issue 27, V3).
import { chromium } from 'playwright-core';

const [base, key, hostileUrl, victimUrl] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const result = {};
try {
  const context = await browser.newContext();
  const page = await context.newPage();

  // The user: logged into the console (the key is in this origin's session storage) ...
  await page.goto(`${base}/console`);
  await page.fill('#key', key);
  await page.click('#login-form button');
  await page.waitForSelector('#app:not([hidden])');
  // ... and has opened a preview of their own sandbox (its cookie is now in the browser).
  const victim = await page.goto(victimUrl);
  result.victimStatus = victim.status();
  result.victimText = (await page.textContent('body')).trim();

  // Then follows a link to someone else's preview, in the same tab.
  const hostile = await page.goto(hostileUrl);
  result.hostileStatus = hostile.status();
  await page.waitForFunction(() => window.done === true, null, { timeout: 30_000 });
  result.attack = await page.evaluate(() => window.findings);

  // Back on the console: no service worker controls it, no cookie of the hostile page's.
  await page.goto(`${base}/console`);
  result.consoleWorkers = await page.evaluate(
    async () => (await navigator.serviceWorker.getRegistrations()).map((r) => r.scope),
  );
  result.consoleControlled = await page.evaluate(() => navigator.serviceWorker.controller !== null);
  result.cookies = (await context.cookies()).map((c) => `${c.name}; path=${c.path}`);
} catch (error) {
  result.error = String(error?.stack ?? error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
