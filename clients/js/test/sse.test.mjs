// Listen-only mode over Server-Sent Events (docs/protocol.md 8). Written against the contract
// while the server's /sse was built elsewhere: these tests run only with SWITCHBOARD_TEST_SSE=1
// (set it in scripts/test once `switchboard serve` answers /sse).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Switchboard } from '../dist/index.js';
import { TIMEOUT, faultyWebSocket, once, startServer, until } from '../test-support/server.mjs';

const enabled = process.env.SWITCHBOARD_TEST_SSE === '1';

// fetch whose streams the test can break, as a network failure would (not the client's abort).
const streams = new Set();
function cuttable(url, init = {}) {
  const controller = new AbortController();
  init.signal?.addEventListener('abort', () => controller.abort());
  streams.add(controller);
  return fetch(url, { ...init, signal: controller.signal });
}
function cut() {
  for (const c of streams) c.abort();
  streams.clear();
}

describe('listen-only over SSE', { skip: !enabled && 'the server has no /sse yet: set SWITCHBOARD_TEST_SSE=1 to run' }, () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.stop();
  });

  test('receives publications with the Subscription API and resumes with the cursor', { timeout: TIMEOUT }, async () => {
    const room = `chat:sse-${process.pid}`;
    const writer = new Switchboard(server.ws, { token: server.token('bob'), WebSocket: faultyWebSocket() });
    await writer.connect();
    await writer.subscribe(room).ready;
    const listener = new Switchboard(`${server.http}/sse`, {
      token: server.token('alice'),
      transport: 'sse',
      minDelay: 50,
      maxDelay: 100,
      random: () => 0.5,
      fetch: cuttable,
    });
    const sub = listener.subscribe(room);
    await listener.connect();
    await sub.ready;
    const seen = [];
    sub.on('message', (p) => seen.push(p.data));
    await writer.publish(room, 1);
    await until(sub, 'message', () => seen.length >= 1);
    await assert.rejects(listener.publish(room, 'no'), { code: 'listen_only' });
    // The stream drops (aborted under the client); what is published meanwhile is resumed
    // from the cursor of the last event.
    const reconnecting = once(listener, 'reconnecting');
    cut();
    await reconnecting;
    await writer.publish(room, 2);
    await writer.publish(room, 3);
    await until(sub, 'message', () => seen.length >= 3);
    assert.deepEqual(seen, [1, 2, 3]);
    listener.close();
    writer.close();
  });
});
