// Helpers shared by the Node interop tests (kept outside test/ so `node --test` does not run it).
import assert from 'node:assert/strict';
import WebSocket from 'ws';

// Longest any single wait may take: a 10 MiB echo through a debug build on a busy 2-core
// machine stays well below it, and a server that never answers fails instead of hanging.
export const TIMEOUT = 60_000;
export const MIB = 1024 * 1024;

/** Base URL of the server under test, from SWITCHBOARD_URL (set by scripts/test). */
export function baseUrl() {
  const raw = process.env.SWITCHBOARD_URL;
  if (!raw) {
    throw new Error(
      'SWITCHBOARD_URL is not set: start `switchboard serve --echo /echo --max-message-size 16777216` ' +
        'and set SWITCHBOARD_URL=http://HOST:PORT (scripts/test does both)',
    );
  }
  const url = new URL(raw);
  if (!url.port) throw new Error(`SWITCHBOARD_URL must look like http://HOST:PORT, got ${raw}`);
  return url;
}

export const echoPath = () => process.env.SWITCHBOARD_ECHO_PATH ?? '/echo';

/** URL of the protocol route (`websocket.path`, SWITCHBOARD_WS_PATH, default /ws). */
export function protocolUrl() {
  const url = baseUrl();
  return `ws://${url.hostname}:${url.port}${process.env.SWITCHBOARD_WS_PATH ?? '/ws'}`;
}

/**
 * A token for the user alice that the server accepts, from SWITCHBOARD_TOKEN: scripts/test runs
 * `switchboard token --user alice` in the folder of the development-mode server it started.
 */
export function aliceToken() {
  const token = process.env.SWITCHBOARD_TOKEN;
  if (!token) {
    throw new Error(
      'SWITCHBOARD_TOKEN is not set: run `switchboard token --user alice` in the folder where the ' +
        'development-mode server runs and set SWITCHBOARD_TOKEN to what it prints (scripts/test does)',
    );
  }
  return token;
}

export function echoUrl() {
  const url = baseUrl();
  return `ws://${url.hostname}:${url.port}${echoPath()}`;
}

function withTimeout(promise, what, ms = TIMEOUT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A connection whose incoming messages queue up until a test awaits them. */
export class Client {
  constructor(ws) {
    this.ws = ws;
    this.queue = [];
    this.waiters = [];
    this.closeEvent = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        resolve({ code, reason: reason.toString() });
        for (const waiter of this.waiters.splice(0)) {
          waiter.reject(new Error(`connection closed (${code}) while waiting for a message`));
        }
      });
    });
    ws.on('error', (error) => {
      this.error = error;
      for (const waiter of this.waiters.splice(0)) waiter.reject(error);
    });
    ws.on('message', (data, isBinary) => {
      const message = { data, isBinary };
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(message);
      else this.queue.push(message);
    });
  }

  /** The next message: { data: Buffer, isBinary }. */
  next() {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return withTimeout(
      new Promise((resolve, reject) => this.waiters.push({ resolve, reject })),
      'a message',
    );
  }

  async echo(data, options = {}) {
    this.ws.send(data, options);
    return this.next();
  }

  /** Sends a ping and resolves with the payload of the next pong. */
  ping(payload) {
    const pong = new Promise((resolve) => this.ws.once('pong', resolve));
    this.ws.ping(payload);
    return withTimeout(pong, 'a pong');
  }

  /** Starts the closing handshake and resolves with the close frame the server sent back. */
  close(code, reason) {
    this.ws.close(code, reason);
    return withTimeout(this.closeEvent, 'the close handshake');
  }

  terminate() {
    if (this.ws.readyState !== WebSocket.CLOSED) this.ws.terminate();
  }
}

/**
 * Opens a connection to the echo route. `deflate` offers permessage-deflate and compresses
 * every message (threshold 0); without it no extension is offered.
 */
export function connect({ deflate }) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const ws = new WebSocket(echoUrl(), {
        perMessageDeflate: deflate ? { threshold: 0 } : false,
        handshakeTimeout: TIMEOUT,
        maxPayload: 64 * MIB,
      });
      const client = new Client(ws);
      ws.once('upgrade', (response) => {
        client.upgradeHeaders = response.headers;
      });
      ws.once('open', () => resolve(client));
      ws.once('error', reject);
    }),
    'the WebSocket handshake',
  );
}

/** Asserts that an echoed message is the one sent: same kind (text/binary), same bytes. */
export function assertEcho(message, sent, { text }) {
  const kind = (binary) => (binary ? 'binary' : 'text');
  assert.equal(kind(message.isBinary), kind(!text), 'the echo changed the message type');
  const expected = Buffer.isBuffer(sent) ? sent : Buffer.from(sent, 'utf8');
  if (message.data.equals(expected)) return;
  let first = 0;
  while (first < Math.min(message.data.length, expected.length) && message.data[first] === expected[first]) first++;
  assert.fail(
    `echo differs: sent ${expected.length} bytes, got ${message.data.length}; first difference at ` +
      `byte ${first}: sent ${expected.subarray(first, first + 16).toString('hex')}, ` +
      `got ${message.data.subarray(first, first + 16).toString('hex')}`,
  );
}
