// `firstMessage: true` against a server with `auth.first_message = true` (docs/protocol.md
// 2.2): the handshake carries no token, the SDK sends `auth` first and the welcome answers it;
// a bad token is closed with 4001, which the SDK does not retry.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { Switchboard } from '../dist/index.js';
import { TIMEOUT, once, startServer } from '../test-support/server.mjs';

let server;
before(async () => {
  server = await startServer({ SWITCHBOARD_AUTH__FIRST_MESSAGE: 'true' });
});
after(async () => {
  await server?.stop();
});

/** The `ws` WebSocket, recording the subprotocols each handshake offered. */
const offered = [];
class Recording extends WebSocket {
  constructor(url, protocols) {
    offered.push(protocols);
    super(url, protocols);
  }
}

test('the token goes in the first message and the welcome answers it', { timeout: TIMEOUT }, async () => {
  const c = new Switchboard(server.ws, { token: server.token('alice'), firstMessage: true, WebSocket: Recording });
  const welcome = await c.connect();
  assert.equal(welcome.user, 'alice');
  assert.deepEqual(offered.at(-1), ['switchboard.v1'], 'no token in the handshake');
  const room = `chat:fm${process.pid}`;
  const sub = c.subscribe(room);
  await sub.ready;
  const got = once(sub, 'message');
  await c.publish(room, { n: 1 });
  assert.deepEqual((await got).data, { n: 1 });
  c.close();
});

test('a bad first-message token is closed with 4001 and not retried', { timeout: TIMEOUT }, async () => {
  const c = new Switchboard(server.ws, { token: 'not-a-jwt', firstMessage: true, WebSocket: Recording, timeout: 5000 });
  const closed = once(c, 'disconnected');
  c.connect().catch(() => {});
  const info = await closed;
  assert.equal(info.code, 4001);
  assert.equal(info.reconnect, false);
  c.close();
});
