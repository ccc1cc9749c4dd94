// The HTTP side of the echo route and the health check, with node:http.
import assert from 'node:assert/strict';
import http from 'node:http';
import { test } from 'node:test';

import { TIMEOUT, baseUrl, echoPath } from '../helpers.mjs';

const UPGRADE = {
  Upgrade: 'websocket',
  Connection: 'Upgrade',
  'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
  'Sec-WebSocket-Version': '13',
};

function get(path, headers = {}) {
  const url = baseUrl();
  return new Promise((resolve, reject) => {
    const request = http.get(
      { host: url.hostname, port: url.port, path, headers, timeout: TIMEOUT, agent: false },
      (response) => {
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('end', () => resolve({ response, body: Buffer.concat(chunks).toString('utf8') }));
        response.on('error', reject);
      },
    );
    request.on('upgrade', (response, socket) => {
      socket.destroy();
      reject(new Error(`unexpected upgrade (${response.statusCode})`));
    });
    request.on('timeout', () => request.destroy(new Error(`no response to GET ${path}`)));
    request.on('error', reject);
  });
}

function json({ response, body }) {
  assert.match(response.headers['content-type'] ?? '', /application\/json/, `body: ${body.slice(0, 200)}`);
  return JSON.parse(body);
}

test('GET /healthz answers 200 {"status":"ok"}', async () => {
  const result = await get('/healthz');
  assert.equal(result.response.statusCode, 200, result.body);
  assert.deepEqual(json(result), { status: 'ok' });
});

test('a plain GET on the WebSocket route is 400 with a JSON error', async () => {
  const result = await get(echoPath());
  assert.equal(result.response.statusCode, 400, result.body);
  const error = json(result);
  assert.equal(error.error, 'bad_request');
  assert.equal(typeof error.reason, 'string');
  assert.ok(error.reason.length > 0);
});

test('Sec-WebSocket-Version: 8 is 426 naming version 13', async () => {
  const result = await get(echoPath(), { ...UPGRADE, 'Sec-WebSocket-Version': '8' });
  assert.equal(result.response.statusCode, 426, result.body);
  const versions = (result.response.headers['sec-websocket-version'] ?? '').split(',').map((v) => v.trim());
  assert.ok(versions.includes('13'), `Sec-WebSocket-Version: ${result.response.headers['sec-websocket-version']}`);
  const error = json(result);
  assert.ok('error' in error && 'reason' in error, JSON.stringify(error));
});
