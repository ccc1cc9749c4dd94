// The demo chat page in a real browser: headless Chromium (Debian's, driven by playwright-core)
// against a real `switchboard serve` in development mode. Each page reaches the server through
// a TCP proxy of its own, so that one page's network can really be cut (its connections reset,
// new ones refused) rather than its socket closed politely.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer } from '../test-support/server.mjs';

const TIMEOUT = 60_000;
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const artifacts = resolve(dirname(fileURLToPath(import.meta.url)), '../../../target/js');

/** A TCP proxy to `port` whose network can be cut: `offline()` resets every connection and
 * refuses new ones until `online()`. */
async function proxy(port) {
  const open = new Set();
  let down = false;
  const server = createServer((client) => {
    if (down) return client.destroy();
    const upstream = createConnection({ host: '127.0.0.1', port });
    const pair = { client, upstream };
    open.add(pair);
    const end = () => {
      open.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    offline() {
      down = true;
      for (const { client, upstream } of open) {
        client.resetAndDestroy?.() ?? client.destroy();
        upstream.destroy();
      }
      open.clear();
    },
    online() {
      down = false;
    },
    close() {
      this.offline();
      return new Promise((r) => server.close(r));
    },
  };
}

let server;
let browser;
before(async () => {
  assert.ok(existsSync(executablePath), `no Chromium at ${executablePath} (scripts/test installs Debian's chromium; or set CHROMIUM=path)`);
  server = await startServer();
  browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

async function signIn(page, url, name) {
  await page.goto(url);
  await page.fill('#name', name);
  await page.click('#signin button');
  await page.waitForSelector('#state[data-state="connected"]');
  await page.waitForSelector('#chat', { state: 'visible' });
  await page.waitForSelector('#signin', { state: 'hidden' });
}

const texts = (page) => page.$$eval('#messages li.message .text', (els) => els.map((e) => e.textContent));

test('two pages chat with presence and typing; a page cut off the network recovers exactly what it missed', { timeout: TIMEOUT * 2 }, async () => {
  const pa = await proxy(server.port);
  const pb = await proxy(server.port);
  const alice = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  const bob = await browser.newPage({ viewport: { width: 390, height: 760 } }); // a phone
  const logs = [];
  for (const [who, page] of [['alice', alice], ['bob', bob]]) {
    page.setDefaultTimeout(20_000);
    page.on('console', (m) => logs.push(`${who}: ${m.text()}`));
    page.on('pageerror', (e) => logs.push(`${who}: page error ${e.message}`));
  }
  try {
    // A bad name is refused by the token endpoint and said on the page.
    await alice.goto(pa.url);
    await alice.fill('#name', 'no spaces');
    await alice.$eval('#name', (e) => e.removeAttribute('pattern'));
    await alice.click('#signin button');
    await alice.waitForSelector('#signin-error:has-text("may only contain")');

    await signIn(alice, pa.url, 'alice');
    await signIn(bob, pb.url, 'bob');
    // Presence: each sees both (bob joined after alice: alice learns it from the join).
    await alice.waitForSelector('#presence li:has-text("bob")');
    await bob.waitForSelector('#presence li:has-text("alice")');

    await alice.fill('#text', 'hello bob');
    await alice.press('#text', 'Enter');
    await bob.waitForSelector('#messages li.message:has-text("hello bob")');

    // Typing: an ephemeral publication shows on the other page.
    await bob.type('#text', 'hi');
    await alice.waitForSelector('#typing:has-text("bob is typing")');
    await bob.press('#text', 'Enter');
    for (const page of [alice, bob]) await page.waitForSelector('#messages li.message .text:text-is("hi")');

    // Bob's network goes down; alice writes meanwhile.
    pb.offline();
    await bob.waitForSelector('#state[data-state="reconnecting"]');
    const missed = ['one', 'two', 'three'];
    for (const text of missed) {
      await alice.fill('#text', text);
      await alice.press('#text', 'Enter');
      await alice.waitForSelector(`#messages li.message:has-text("${text}")`);
    }
    assert.deepEqual(await texts(bob), ['hello bob', 'hi'], 'nothing arrives while offline');
    pb.online();
    await bob.waitForSelector('#state[data-state="connected"]', { timeout: TIMEOUT });
    await bob.waitForSelector('.notice:has-text("3 missed messages recovered")');
    await bob.waitForSelector('#messages li.message:has-text("three")');
    assert.deepEqual(await texts(bob), ['hello bob', 'hi', ...missed], 'the missed messages, once each, in order');
    // And it is live again.
    await alice.fill('#text', 'welcome back');
    await alice.press('#text', 'Enter');
    await bob.waitForSelector('#messages li.message:has-text("welcome back")');
    assert.deepEqual(await texts(bob), ['hello bob', 'hi', ...missed, 'welcome back']);
    await bob.waitForSelector('#presence li:has-text("alice")');

    // A third page entering the room gets the history.
    const carol = await browser.newPage();
    await signIn(carol, pa.url, 'carol');
    await carol.waitForSelector('#messages li.message:has-text("welcome back")');
    assert.deepEqual(await texts(carol), ['hello bob', 'hi', ...missed, 'welcome back']);
    await carol.close();

    mkdirSync(artifacts, { recursive: true });
    const shot = join(artifacts, 'demo-chat.png');
    const phone = join(artifacts, 'demo-chat-phone.png');
    await alice.screenshot({ path: shot });
    await bob.screenshot({ path: phone });
    console.log(`screenshots of the demo: ${shot} (desktop), ${phone} (phone)`);
  } catch (e) {
    console.log(logs.join('\n'));
    throw e;
  } finally {
    await pa.close();
    await pb.close();
  }
});

test('opened as /?auth=cookie, the page signs in with the session cookie through the connect proxy', { timeout: TIMEOUT }, async () => {
  // The application's backend: its connect proxy knows one session.
  const { createServer: createHttpServer } = await import('node:http');
  const backend = createHttpServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const cookie = JSON.parse(body).headers?.cookie ?? '';
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(cookie.includes('session=s3cret') ? { user: 'dora' } : { error: { code: 'unauthorized', message: 'log in first' } }));
    });
  });
  await new Promise((r) => backend.listen(0, '127.0.0.1', r));
  const own = await startServer({
    SWITCHBOARD_PROXIES__CONNECT__URL: `http://127.0.0.1:${backend.address().port}/connect`,
    SWITCHBOARD_PROXIES__CONNECT__HEADERS: '["Cookie"]',
  });
  const context = await browser.newContext();
  try {
    // What the backend's login would have set for this host (cookies are per host, not port).
    await context.addCookies([{ name: 'session', value: 's3cret', domain: '127.0.0.1', path: '/' }]);
    const page = await context.newPage();
    page.setDefaultTimeout(20_000);
    await page.goto(`${own.http}/?auth=cookie`);
    await page.waitForSelector('#state:has-text("connected as dora")');
    await page.fill('#text', 'via cookie');
    await page.press('#text', 'Enter');
    await page.waitForSelector('#messages li.message:has-text("via cookie")');
  } finally {
    await context.close();
    await own.stop();
    await new Promise((r) => backend.close(r));
  }
});
