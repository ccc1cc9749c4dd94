// The SDK with the server's proxies (docs/proxies.md): `switchboard serve` calls a backend
// this file runs (node:http on a free loopback port). `rpc(method, data)` gets the backend's
// answer, its refusal, or `unavailable` when the backend fails; `cookie: true` connects
// without a token, as the user the connect proxy names from the session cookie.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { Switchboard } from '../dist/index.js';
import { TIMEOUT, faultyWebSocket, startServer } from '../test-support/server.mjs';

let server;
let backend;
const calls = [];

before(async () => {
  backend = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const call = JSON.parse(body);
      calls.push({ path: req.url, call });
      res.setHeader('content-type', 'application/json');
      if (req.url === '/connect') {
        const cookie = call.headers.cookie ?? '';
        res.end(JSON.stringify(cookie === 'session=alice' ? { user: 'alice' } : { error: { code: 'unauthorized', message: 'log in first' } }));
      } else if (call.method === 'sum') {
        res.end(JSON.stringify({ data: { sum: call.data.reduce((a, b) => a + b, 0), user: call.user } }));
      } else if (call.method === 'secret') {
        res.end(JSON.stringify({ error: { code: 'permission_denied', message: 'not for you' } }));
      } else {
        res.statusCode = 500;
        res.end('{}');
      }
    });
  });
  await new Promise((r) => backend.listen(0, '127.0.0.1', r));
  const at = `http://127.0.0.1:${backend.address().port}`;
  server = await startServer({
    SWITCHBOARD_PROXIES__RPC__URL: `${at}/rpc`,
    SWITCHBOARD_PROXIES__CONNECT__URL: `${at}/connect`,
    SWITCHBOARD_PROXIES__CONNECT__HEADERS: '["Cookie"]',
  });
});
after(async () => {
  await server?.stop();
  await new Promise((r) => backend?.close(r));
});

test('rpc is answered by the rpc proxy, refused with its code, unavailable when it fails', { timeout: TIMEOUT }, async () => {
  const c = new Switchboard(server.ws, { token: server.token('alice'), WebSocket: faultyWebSocket() });
  await c.connect();
  calls.length = 0;
  assert.deepEqual(await c.rpc('sum', [1, 2, 39]), { sum: 42, user: 'alice' });
  assert.equal(calls.length, 1, 'a token wins: the connect proxy is not asked');
  assert.equal(calls[0].path, '/rpc');
  assert.equal(calls[0].call.method, 'sum');
  assert.match(calls[0].call.connection, /^c_/);
  await assert.rejects(c.rpc('secret'), { code: 'forbidden', message: 'not for you' });
  assert.deepEqual(calls[1].call.data, null);
  await assert.rejects(c.rpc('broken', {}), { code: 'unavailable' });
  c.close();
});

/** The `ws` WebSocket with a Cookie header, as a browser sends the page's cookies. */
function withCookie(cookie) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { cookie } });
    }
  };
}

test('cookie: true connects without a token as the user the connect proxy names', { timeout: TIMEOUT }, async () => {
  assert.throws(() => new Switchboard(server.ws, {}), /cookie: true/);
  const c = new Switchboard(server.ws, { cookie: true, WebSocket: withCookie('session=alice') });
  const welcome = await c.connect();
  assert.equal(welcome.user, 'alice');
  assert.deepEqual(await c.rpc('sum', [2]), { sum: 2, user: 'alice' });
  c.close();
  const sse = new Switchboard(`${server.http}/sse`, {
    cookie: true,
    transport: 'sse',
    fetch: (url, init) => fetch(url, { ...init, headers: { ...init.headers, cookie: 'session=alice' } }),
  });
  sse.subscribe('chat:cookie');
  assert.equal((await sse.connect()).user, 'alice');
  sse.close();
  // No session: the backend refuses, the handshake is 401 and the SDK keeps retrying.
  const refused = new Switchboard(server.ws, { cookie: true, WebSocket: withCookie('session=x'), timeout: 500 });
  await assert.rejects(refused.connect(), { code: 'timeout' });
  refused.close();
});
