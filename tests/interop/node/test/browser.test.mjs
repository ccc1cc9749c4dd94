// A real browser (headless Chromium, driven by playwright-core) opens the echo route and
// round-trips text and binary messages, negotiating permessage-deflate as browsers always do.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import { TIMEOUT, echoUrl } from '../helpers.mjs';

const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

test('a browser opens the echo route and round-trips text and binary', { timeout: TIMEOUT }, async () => {
  assert.ok(
    existsSync(executablePath),
    `no Chromium at ${executablePath} (scripts/test installs Debian's chromium; or set CHROMIUM=path)`,
  );
  const browser = await chromium.launch({
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
