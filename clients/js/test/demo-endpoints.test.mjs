// Where the demo page and its token endpoint exist: `switchboard serve` in development mode
// serves both; a configured deployment neither, unless `demo = true`, which serves the page
// only. Real server processes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { Switchboard } from '../dist/index.js';
import { TIMEOUT, startServer } from '../test-support/server.mjs';

const token = (server, name) =>
  fetch(`${server.http}/dev/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });

test('development mode: the page at / and tokens from POST /dev/token that the server accepts', { timeout: TIMEOUT }, async () => {
  const server = await startServer();
  try {
    const page = await fetch(`${server.http}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type'), /^text\/html/);
    assert.match(await page.text(), /\/demo\/app\.js/);
    const sdk = await fetch(`${server.http}/demo/switchboard.js`);
    assert.equal(sdk.status, 200);
    assert.match(await sdk.text(), /switchboard-client/);

    const answer = await token(server, 'carol');
    assert.equal(answer.status, 200);
    const { token: jwt, expires } = await answer.json();
    assert.ok(expires > Date.now() / 1000);
    const client = new Switchboard(server.ws, { token: jwt, WebSocket });
    const welcome = await client.connect();
    assert.equal(welcome.user, 'carol');
    assert.equal(welcome.expires, expires);
    client.close();

    const bad = await token(server, 'not ok');
    assert.equal(bad.status, 400);
    assert.deepEqual(await bad.json(), { error: 'bad_request', reason: 'field \'name\' may only contain A-Z a-z 0-9 _ - .' });
  } finally {
    await server.stop();
  }
});

test('a configured server has neither; with demo = true it has the page only', { timeout: TIMEOUT }, async () => {
  for (const [demo, pageStatus] of [[undefined, 404], ['true', 200]]) {
    const settings = { SWITCHBOARD_AUTH__SECRET: 'a-configured-secret-of-enough-length' };
    if (demo) settings.SWITCHBOARD_DEMO = demo;
    const server = await startServer(settings);
    try {
      assert.equal((await fetch(`${server.http}/`)).status, pageStatus, `demo=${demo}: GET /`);
      const refused = await token(server, 'mallory');
      assert.equal(refused.status, 404, `demo=${demo}: POST /dev/token`);
      assert.deepEqual(await refused.json(), { error: 'not_found', reason: 'no such route' });
    } finally {
      await server.stop();
    }
  }
});
