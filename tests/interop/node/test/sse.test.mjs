// A real browser's EventSource on /sse (docs/protocol.md section 8): it receives publications
// with their cursors, loses its connection (the test cuts it in a TCP proxy between the browser
// and the server), reconnects by itself after the stream's `retry:` with `Last-Event-ID`, and
// receives exactly the publications sent while it was away, then live ones: no gap, no
// duplicate. Publications come from a WebSocket v1 client in Node.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { TIMEOUT, aliceToken, baseUrl, protocolUrl } from '../helpers.mjs';

const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** A TCP proxy to the server whose connections the test can cut. */
async function proxy() {
  const target = baseUrl();
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    /** Cuts every connection now open: the browser sees its stream fail. */
    cut() {
      for (const s of sockets) s.destroy();
    },
    close() {
      this.cut();
      server.close();
    },
  };
}

async function publisherClient(token) {
  const ws = new WebSocket(protocolUrl(), 'switchboard.v1', {
    headers: { Authorization: `Bearer ${token}` },
    handshakeTimeout: TIMEOUT,
  });
  const inbox = [];
  const waiters = [];
  ws.on('message', (data) => {
    inbox.push(JSON.parse(data.toString()));
    for (const waiter of waiters.splice(0)) waiter();
  });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const next = async (pred) => {
    for (;;) {
      const i = inbox.findIndex(pred);
      if (i >= 0) return inbox.splice(i, 1)[0];
      await new Promise((resolve) => waiters.push(resolve));
    }
  };
  let id = 0;
  const request = async (command) => {
    const sent = { ...command, id: ++id };
    ws.send(JSON.stringify(sent));
    const answer = await next((m) => m.id === sent.id);
    assert.equal(answer.type, 'reply', JSON.stringify(answer));
    return answer;
  };
  await next((m) => m.type === 'welcome');
  return { ws, request };
}

test('a browser EventSource resumes from Last-Event-ID after losing its connection', { timeout: TIMEOUT }, async () => {
  assert.ok(existsSync(executablePath), `no Chromium at ${executablePath} (or set CHROMIUM=path)`);
  const token = aliceToken();
  const room = `browser:sse-${process.pid}`;
  const tcp = await proxy();
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
  let publisher;
  try {
    publisher = await publisherClient(token);
    await publisher.request({ type: 'subscribe', room });
    const publish = (n) => publisher.request({ type: 'publish', room, data: { n } });

    const page = await browser.newPage();
    // Same origin as the stream: EventSource needs no CORS then.
    await page.goto(`${tcp.url}/healthz`);
    await page.evaluate(
      ({ room, token }) => {
        window.got = { welcomes: 0, messages: [] };
        const es = new EventSource(`/sse?room=${encodeURIComponent(room)}&token=${token}`);
        es.addEventListener('welcome', () => window.got.welcomes++);
        es.onmessage = (e) => window.got.messages.push({ n: JSON.parse(e.data).data.n, id: e.lastEventId });
        window.es = es;
      },
      { room, token },
    );
    await page.waitForFunction(() => window.got.welcomes === 1, null, { timeout: TIMEOUT });
    await publish(1);
    await page.waitForFunction(() => window.got.messages.length === 1, null, { timeout: TIMEOUT });

    // The connection drops; meanwhile two publications. The browser reconnects by itself.
    tcp.cut();
    await publish(2);
    await publish(3);
    await page.waitForFunction(() => window.got.welcomes === 2, null, { timeout: TIMEOUT });
    await page.waitForFunction(() => window.got.messages.length >= 3, null, { timeout: TIMEOUT });
    await publish(4);
    await page.waitForFunction(() => window.got.messages.length >= 4, null, { timeout: TIMEOUT });
    const got = await page.evaluate(() => {
      window.es.close();
      return window.got;
    });
    assert.deepEqual(
      got.messages.map((m) => m.n),
      [1, 2, 3, 4],
      'exactly the missed publications, in order, then live',
    );
    for (const m of got.messages) assert.match(m.id, /^v1\./);
  } finally {
    if (publisher) publisher.ws.terminate();
    await browser.close();
    tcp.close();
  }
});
