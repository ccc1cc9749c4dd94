// End to end through every HTTP surface at once: `curl` publishes with POST /api/publish (the
// server API, with the key development mode keeps beside its secret); a real browser's
// EventSource on /sse and a WebSocket v1 client in Node both receive every publication, with the
// same offsets, in order; and GET /metrics counts exactly those API calls.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { TIMEOUT, aliceToken, baseUrl, protocolUrl } from '../helpers.mjs';

const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const run = promisify(execFile);

/** The server API key of the development-mode server: `dev-api-key` beside its secret. */
function apiKey() {
  const secret = process.env.SWITCHBOARD_DEV_SECRET_FILE;
  assert.ok(secret, 'SWITCHBOARD_DEV_SECRET_FILE is not set (scripts/test sets it)');
  return readFileSync(path.join(path.dirname(secret), 'dev-api-key'), 'utf8').trim();
}

/** `curl -X POST /api/publish`: the parsed JSON answer, failing on any status but 200. */
async function curlPublish(room, data) {
  const { stdout } = await run('curl', [
    '--silent',
    '--show-error',
    '--fail-with-body',
    '--max-time',
    String(TIMEOUT / 1000),
    '-H',
    `X-API-Key: ${apiKey()}`,
    '-H',
    'Content-Type: application/json',
    '--data',
    JSON.stringify({ room, data }),
    `${baseUrl().origin}/api/publish`,
  ]);
  return JSON.parse(stdout);
}

/** One sample of GET /metrics (0 when absent), by its name and exact label set. */
async function metric(name, labels) {
  const text = await (await fetch(`${baseUrl().origin}/metrics`)).text();
  for (const line of text.split('\n')) {
    const m = line.match(/^([a-z_]+)(\{[^}]*\})? (\S+)$/);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return 0;
}

test('curl publishes to a browser EventSource and a WebSocket at once, and /metrics agrees', { timeout: TIMEOUT }, async () => {
  assert.ok(existsSync(executablePath), `no Chromium at ${executablePath} (or set CHROMIUM=path)`);
  const token = aliceToken();
  const room = `browser:api-${process.pid}`;
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
  const ws = new WebSocket(protocolUrl(), 'switchboard.v1', {
    headers: { Authorization: `Bearer ${token}` },
    handshakeTimeout: TIMEOUT,
  });
  try {
    const inbox = [];
    let wake = () => {};
    ws.on('message', (data) => {
      inbox.push(JSON.parse(data.toString()));
      wake();
    });
    const next = async (pred) => {
      for (;;) {
        const i = inbox.findIndex(pred);
        if (i >= 0) return inbox.splice(i, 1)[0];
        await new Promise((resolve) => (wake = resolve));
      }
    };
    await next((m) => m.type === 'welcome');
    ws.send(JSON.stringify({ type: 'subscribe', id: 1, room }));
    assert.equal((await next((m) => m.id === 1)).type, 'reply');

    const page = await browser.newPage();
    await page.goto(`${baseUrl().origin}/healthz`);
    await page.evaluate(
      ({ room, token }) => {
        window.got = { welcomes: 0, messages: [] };
        const es = new EventSource(`/sse?room=${encodeURIComponent(room)}&token=${token}`);
        es.addEventListener('welcome', () => window.got.welcomes++);
        es.onmessage = (e) => window.got.messages.push(JSON.parse(e.data));
        window.es = es;
      },
      { room, token },
    );
    await page.waitForFunction(() => window.got.welcomes === 1, null, { timeout: TIMEOUT });

    const calls = { endpoint: '/api/publish', status: '200' };
    const before = await metric('switchboard_api_calls_total', calls);
    const sseEvents = { transport: 'sse' };
    const sseBefore = await metric('switchboard_messages_out_total', sseEvents);
    const offsets = [];
    for (const n of [1, 2, 3]) offsets.push((await curlPublish(room, { n })).offset);
    assert.deepEqual(offsets, [offsets[0], offsets[0] + 1, offsets[0] + 2], 'gap-free offsets');

    const viaWs = [];
    while (viaWs.length < 3) viaWs.push(await next((m) => m.type === 'message' && m.room === room));
    await page.waitForFunction(() => window.got.messages.length >= 3, null, { timeout: TIMEOUT });
    const viaSse = await page.evaluate(() => {
      window.es.close();
      return window.got.messages;
    });
    for (const [name, got] of [
      ['WebSocket', viaWs],
      ['EventSource', viaSse],
    ]) {
      assert.deepEqual(
        got.map((m) => [m.offset, m.data.n]),
        offsets.map((o, i) => [o, i + 1]),
        `${name}: every publication once, in order, with the API's offsets`,
      );
      // Published by the backend: no `from` (protocol 9).
      for (const m of got) assert.equal(m.from, undefined, JSON.stringify(m));
    }
    assert.equal(await metric('switchboard_api_calls_total', calls), before + 3, 'three API publishes counted');
    // Other suites' streams may count too, so at least the three events of this one.
    assert.ok((await metric('switchboard_messages_out_total', sseEvents)) >= sseBefore + 3, 'SSE events counted');
  } finally {
    ws.terminate();
    await browser.close();
  }
});
