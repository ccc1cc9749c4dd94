// `rpc(method, data)` through a real rpc proxy: `switchboard serve` calls a backend this file
// runs (node:http on a free loopback port), and the SDK gets the backend's answer, its
// refusal, or `unavailable` when the backend fails.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';
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
      if (call.method === 'sum') {
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
  const url = `http://127.0.0.1:${backend.address().port}/rpc`;
  server = await startServer({ SWITCHBOARD_PROXIES__RPC__URL: url });
});
after(async () => {
  await server?.stop();
  await new Promise((r) => backend?.close(r));
});

test('rpc is answered by the rpc proxy, refused with its code, unavailable when it fails', { timeout: TIMEOUT }, async () => {
  const c = new Switchboard(server.ws, { token: server.token('alice'), WebSocket: faultyWebSocket() });
  await c.connect();
  assert.deepEqual(await c.rpc('sum', [1, 2, 39]), { sum: 42, user: 'alice' });
  assert.equal(calls.length, 1);
  assert.equal(calls[0].path, '/rpc');
  assert.equal(calls[0].call.method, 'sum');
  assert.match(calls[0].call.connection, /^c_/);
  await assert.rejects(c.rpc('secret'), { code: 'forbidden', message: 'not for you' });
  assert.deepEqual(calls[1].call.data, null);
  await assert.rejects(c.rpc('broken', {}), { code: 'unavailable' });
  c.close();
});
