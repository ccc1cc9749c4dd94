// Starts a real `switchboard serve` (development mode, in a temporary folder of its own, on a
// free loopback port) for a test file, and mints tokens with the development secret it keeps
// there. Kept outside test/ so that `node --test test/` does not run it as a test.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../../..');
/** The server binary: SWITCHBOARD_BIN, else the workspace's debug build. */
export const BIN = process.env.SWITCHBOARD_BIN ?? join(root, 'target/debug/switchboard');
export const TIMEOUT = 30_000;

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

/**
 * Starts the server with extra settings (SWITCHBOARD_KEY: value) and resolves once /healthz
 * answers. Returns { port, http, ws, token(user, ttlSeconds?), stop(), log() }.
 */
export async function startServer(settings = {}, reuse = {}) {
  // `reuse` ({ dir, port } of a stopped server) restarts a server in place: same port, same
  // development secret, a new process (and so new epochs).
  const dir = reuse.dir ?? mkdtempSync(join(tmpdir(), 'switchboard-js-'));
  const port = reuse.port ?? (await freePort());
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SWITCHBOARD_')));
  let log = '';
  const child = spawn(BIN, ['serve', '--listen', `127.0.0.1:${port}`, '--echo', '/echo'], {
    cwd: dir,
    env: { ...env, ...settings },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  const exited = new Promise((res) => child.once('exit', (code) => res(code)));
  const http = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r(undefined), 50))]);
    if (code !== undefined) throw new Error(`the server exited (${code}) before /healthz answered:\n${log}`);
    try {
      if ((await fetch(`${http}/healthz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`the server did not answer /healthz in time:\n${log}`);
  }
  // Development mode keeps its secret there; a configured server's is in its settings.
  const secret =
    settings.SWITCHBOARD_AUTH__SECRET ?? readFileSync(join(dir, '.switchboard/dev-secret'), 'utf8').trim();
  return {
    port,
    dir,
    http,
    ws: `ws://127.0.0.1:${port}/ws`,
    token: (user, ttl) => mint(secret, user, ttl),
    log: () => log,
    async stop({ keep = false } = {}) {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
      if (!keep) rmSync(dir, { recursive: true, force: true });
      if (/panicked at/.test(log)) throw new Error(`the server panicked:\n${log}`);
    },
  };
}

const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** An HS256 token for `user`, signed with the server's development secret. */
export function mint(secret, user, ttl, claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = { sub: user, iat: now, ...(ttl ? { exp: now + ttl } : {}), ...claims };
  const unsigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(body)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

/**
 * The `ws` WebSocket with fault injection, passed as the SDK's `WebSocket` option: every
 * instance is recorded, `cut()` destroys the TCP connection under it (a network failure, no
 * close frame), and `hooks.incoming(text, ws)` may drop (return false), duplicate (return 2)
 * or replace (return an array of texts, handed over in order) what the server sent.
 */
export function faultyWebSocket(hooks = {}) {
  const sockets = [];
  class Faulty extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { perMessageDeflate: false });
      sockets.push(this);
    }
    set onmessage(fn) {
      super.onmessage = fn && ((event) => {
        const verdict = hooks.incoming ? hooks.incoming(String(event.data), this) : true;
        if (verdict === false) return;
        if (Array.isArray(verdict)) {
          for (const data of verdict) fn(new MessageEvent('message', { data }));
          return;
        }
        fn(event);
        if (verdict === 2) fn(event);
      });
    }
    get onmessage() {
      return super.onmessage;
    }
    /** Destroys the TCP connection: the SDK sees 1006, the server a reset. */
    cut() {
      this._socket?.destroy();
    }
  }
  Faulty.sockets = sockets;
  Faulty.last = () => sockets[sockets.length - 1];
  return Faulty;
}

/** Resolves with the arguments of the next `event` of `emitter` (an SDK object). */
export function once(emitter, event, timeout = TIMEOUT) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => {
      off();
      rej(new Error(`timed out waiting for '${event}'`));
    }, timeout);
    const off = emitter.on(event, (...args) => {
      clearTimeout(timer);
      off();
      res(args.length > 1 ? args : args[0]);
    });
  });
}

/** Waits until `predicate()` is true, checking whenever `emitter` emits `event`. */
export async function until(emitter, event, predicate, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out waiting on '${event}' for a condition`);
    await once(emitter, event, left);
  }
}
