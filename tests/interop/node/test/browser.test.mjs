// A real browser (headless Chromium, driven by playwright-core) opens the echo route and
// round-trips text and binary messages, negotiating permessage-deflate as browsers always do;
// and it takes the documented browser path to the protocol route: the token as a `bearer.`
// subprotocol entry beside `switchboard.v1`.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { TIMEOUT, aliceToken, echoUrl, protocolUrl } from '../helpers.mjs';

const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

function launch() {
  assert.ok(
    existsSync(executablePath),
    `no Chromium at ${executablePath} (scripts/test installs Debian's chromium; or set CHROMIUM=path)`,
  );
  return chromium.launch({
    executablePath,
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
}

test('a browser opens the echo route and round-trips text and binary', { timeout: TIMEOUT }, async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const result = await page.evaluate(async (url) => {
      const ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      const next = () =>
        new Promise((resolve, reject) => {
          ws.onmessage = (e) => resolve(e.data);
          ws.onerror = () => reject(new Error('websocket error'));
          ws.onclose = (e) => reject(new Error(`closed ${e.code}`));
        });
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = () => reject(new Error('cannot connect'));
      });
      const text = 'héllo from the browser ✓ '.repeat(20);
      ws.send(text);
      const echoedText = await next();
      ws.send(new Uint8Array([0, 1, 2, 255]));
      const echoedBinary = Array.from(new Uint8Array(await next()));
      const closed = new Promise((resolve) => {
        ws.onclose = (e) => resolve({ code: e.code, clean: e.wasClean });
      });
      ws.close(1000, 'done');
      return {
        textOk: echoedText === text,
        echoedBinary,
        extensions: ws.extensions,
        close: await closed,
      };
    }, echoUrl());
    assert.equal(result.textOk, true, 'text came back as it was sent');
    assert.deepEqual(result.echoedBinary, [0, 1, 2, 255]);
    assert.match(result.extensions, /permessage-deflate/);
    assert.deepEqual(result.close, { code: 1000, clean: true });
  } finally {
    await browser.close();
  }
});

/** A protocol connection from Node (the `ws` library), for the other side of the browser. */
async function nodeProtocolClient(token) {
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
  const closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  /** The first message matching `pred` (earlier ones stay queued). */
  const next = async (what, pred) => {
    for (;;) {
      const i = inbox.findIndex(pred);
      if (i >= 0) return inbox.splice(i, 1)[0];
      const arrived = new Promise((resolve) => waiters.push(resolve));
      const code = await Promise.race([arrived.then(() => null), closed]);
      if (code !== null) throw new Error(`the Node client's connection closed (${code}) waiting for ${what}`);
    }
  };
  const request = async (command) => {
    ws.send(JSON.stringify(command));
    return next(`the answer to ${command.type} ${command.id}`, (m) => m.id === command.id);
  };
  return { ws, next, request };
}

test(
  'a browser connects to /ws with ["bearer.<jwt>", "switchboard.v1"], subscribes and gets a publication',
  { timeout: TIMEOUT },
  async () => {
    const token = aliceToken();
    const room = `browser:room-${process.pid}`;
    const browser = await launch();
    let publisher;
    try {
      const page = await browser.newPage();
      // In the page: connect the way docs/protocol.md tells browsers to, read the welcome,
      // subscribe. The socket stays in `window.sb` for the second step.
      const joined = await page.evaluate(
        async ({ url, token, room }) => {
          const ws = new WebSocket(url, [`bearer.${token}`, 'switchboard.v1']);
          const sb = { ws, inbox: [], waiters: [], closed: null };
          window.sb = sb;
          ws.onmessage = (e) => {
            sb.inbox.push(JSON.parse(e.data));
            for (const waiter of sb.waiters.splice(0)) waiter();
          };
          ws.onclose = (e) => {
            sb.closed = `closed ${e.code} ${e.reason}`;
            for (const waiter of sb.waiters.splice(0)) waiter();
          };
          // The first message matching `pred` (earlier ones stay queued).
          sb.next = async (pred) => {
            for (;;) {
              const i = sb.inbox.findIndex(pred);
              if (i >= 0) return sb.inbox.splice(i, 1)[0];
              if (sb.closed) throw new Error(sb.closed);
              await new Promise((resolve) => sb.waiters.push(resolve));
            }
          };
          await new Promise((resolve, reject) => {
            ws.onopen = resolve;
            ws.onerror = () => reject(new Error(`cannot connect: ${sb.closed ?? 'error'}`));
          });
          const welcome = await sb.next(() => true);
          ws.send(JSON.stringify({ type: 'subscribe', id: 1, room }));
          const reply = await sb.next((m) => m.id === 1);
          return { protocol: ws.protocol, welcome, reply };
        },
        { url: protocolUrl(), token, room },
      );
      assert.equal(joined.protocol, 'switchboard.v1', 'the server selected switchboard.v1, not the bearer entry');
      assert.equal(joined.welcome.type, 'welcome', `first message: ${JSON.stringify(joined.welcome)}`);
      assert.equal(joined.welcome.user, 'alice');
      assert.equal(joined.reply.type, 'reply', `subscribe: ${JSON.stringify(joined.reply)}`);
      assert.equal(joined.reply.result.room, room);

      // From Node: another connection of alice's publishes to the room.
      publisher = await nodeProtocolClient(token);
      const welcome = await publisher.next('the welcome', () => true);
      assert.equal(welcome.type, 'welcome');
      const subscribed = await publisher.request({ type: 'subscribe', id: 1, room });
      assert.equal(subscribed.type, 'reply', JSON.stringify(subscribed));
      const data = { text: 'hello, browser', sent: Date.now() };
      const published = await publisher.request({ type: 'publish', id: 2, room, data });
      assert.equal(published.type, 'reply', JSON.stringify(published));

      // In the page: the publication arrives.
      const message = await page.evaluate(
        (room) => window.sb.next((m) => m.type === 'message' && m.room === room),
        room,
      );
      assert.deepEqual(message.data, data);
      assert.equal(message.offset, published.result.offset);
      assert.equal(message.epoch, joined.reply.result.epoch);
      assert.equal(message.from.user, 'alice');
      assert.equal(message.from.connection, welcome.connection, 'sent by the Node connection');

      const close = await page.evaluate(
        () =>
          new Promise((resolve) => {
            window.sb.ws.onclose = (e) => resolve({ code: e.code, clean: e.wasClean });
            window.sb.ws.close(1000, 'done');
          }),
      );
      assert.deepEqual(close, { code: 1000, clean: true });
    } finally {
      if (publisher) publisher.ws.terminate();
      await browser.close();
    }
  },
);
