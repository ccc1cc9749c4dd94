// The SDK against a real `switchboard serve` (development mode, started by this file):
// reconnect, recovery, terminal close codes, timeouts, de-duplication, token refresh, the
// bounded offline queue and idempotent publishes across a reconnect. Network failures are
// real: the TCP connection under the SDK's WebSocket is destroyed (faultyWebSocket).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { CLOSE_CODES, Switchboard, reconnects } from '../dist/index.js';
import { TIMEOUT, faultyWebSocket, once, startServer, until } from '../test-support/server.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

let n = 0;
const room = () => `chat:t${process.pid}-${++n}`;
/** A client with the ws library and fast, deterministic backoff. */
function client(user = 'alice', options = {}) {
  return new Switchboard(options.url ?? server.ws, {
    token: server.token(user),
    WebSocket: faultyWebSocket(),
    minDelay: 50,
    maxDelay: 200,
    random: () => 0.5,
    ...options,
  });
}
/** A URL nothing listens on (the server's port, another path would still connect). */
const nowhere = 'ws://127.0.0.1:9/ws';

describe('close codes', () => {
  test('are the protocol table (docs/schema/close-codes.json), not a copy', () => {
    const table = JSON.parse(readFileSync(new URL('../../../docs/schema/close-codes.json', import.meta.url)));
    const expected = Object.fromEntries(table.codes.map((c) => [c.code, [c.name, c.reconnect]]));
    assert.deepEqual({ ...CLOSE_CODES }, expected);
    for (const c of table.codes) assert.equal(reconnects(c.code), c.reconnect, `code ${c.code}`);
    // Codes outside the table: 4000-4499 final, anything else retried (7.2).
    assert.equal(reconnects(4123), false);
    assert.equal(reconnects(4600), true);
    assert.equal(reconnects(1006), true);
  });

  test('a terminal close (1009, message too big) is not retried', { timeout: TIMEOUT }, async () => {
    const c = client();
    const events = [];
    c.on('reconnecting', () => events.push('reconnecting'));
    await c.connect();
    const closed = once(c, 'disconnected');
    const publish = c.publish(room(), 'x'.repeat(70 * 1024));
    const info = await closed;
    assert.deepEqual({ code: info.code, name: info.name, reconnect: info.reconnect }, { code: 1009, name: 'message_too_big', reconnect: false });
    await assert.rejects(publish, { code: 'disconnected' });
    assert.equal(c.state, 'disconnected');
    assert.deepEqual(events, []);
    await assert.rejects(c.publish(room(), 1), { code: 'disconnected' });
  });

  test('4501 with a fixed token is final: the same token would be refused', { timeout: TIMEOUT }, async () => {
    const c = new Switchboard(server.ws, { token: server.token('alice', 1), WebSocket: faultyWebSocket() });
    await c.connect();
    const info = await once(c, 'disconnected');
    assert.equal(info.code, 4501);
    assert.equal(info.reconnect, false);
    assert.equal(c.state, 'disconnected');
  });
});

describe('reconnect and recovery', () => {
  test('a cut connection reconnects with backoff and the subscription goes on', { timeout: TIMEOUT }, async () => {
    const r = room();
    const c = client();
    await c.connect();
    const sub = c.subscribe(r);
    await sub.ready;
    const first = c.welcome.connection;
    const reconnecting = once(c, 'reconnecting');
    const connected = once(c, 'connected');
    faultyLast(c).cut();
    const info = await reconnecting;
    assert.equal(info.code, 1006);
    assert.equal(info.attempt, 1);
    assert.equal(info.delay, 25); // random() 0.5 × min(200, 50 × 2^0)
    const welcome = await connected;
    assert.notEqual(welcome.connection, first);
    const got = once(sub, 'message');
    await c.publish(r, 'after');
    assert.equal((await got).data, 'after');
    c.close();
  });

  test('after a cut while others publish, exactly the missed messages arrive once, in order', { timeout: TIMEOUT }, async () => {
    const r = room();
    const reader = client('alice', { minDelay: 300, maxDelay: 300 });
    const writer = client('bob');
    await Promise.all([reader.connect(), writer.connect()]);
    const sub = reader.subscribe(r);
    await sub.ready;
    await writer.subscribe(r).ready;
    const seen = [];
    sub.on('message', (p) => seen.push(p.data));
    const recovered = once(sub, 'recovered');
    for (let i = 1; i <= 30; i++) {
      if (i === 10) faultyLast(reader).cut();
      await writer.publish(r, i);
    }
    const info = await recovered;
    assert.ok(info.missed > 0, 'something was missed and recovered');
    await until(sub, 'message', () => seen.length >= 30);
    assert.deepEqual(seen, Array.from({ length: 30 }, (_, i) => i + 1));
    assert.equal(sub.offset, 30, 'the position is that of the last message');
    reader.close();
    writer.close();
  });

  test('a stream announced to go on in a new epoch (subscribed, recovered: true) is not a reset', { timeout: TIMEOUT }, async () => {
    // What a node sends when Redis was taken over without loss (protocol 4.4, 6.4): played
    // here by rewriting the server's pushes from the second publication on.
    const r = room();
    let forked = false;
    const c = client('alice', {
      WebSocket: faultyWebSocket({
        incoming: (text) => {
          const m = JSON.parse(text);
          if (m.type !== 'message' || m.room !== r || m.offset < 2) return true;
          const moved = JSON.stringify({ ...m, epoch: 'forked' });
          if (forked) return [moved];
          forked = true;
          return [JSON.stringify({ type: 'subscribed', room: r, epoch: 'forked', offset: m.offset - 1, recovered: true }), moved];
        },
      }),
    });
    await c.connect();
    const sub = c.subscribe(r);
    await sub.ready;
    const seen = [];
    const resets = [];
    sub.on('message', (p) => seen.push([p.epoch, p.offset]));
    sub.on('reset', (info) => resets.push(info));
    for (let i = 0; i < 3; i++) await c.publish(r, i);
    await until(sub, 'message', () => seen.length >= 3);
    assert.deepEqual(seen.slice(1), [['forked', 2], ['forked', 3]]);
    assert.deepEqual(resets, []);
    assert.deepEqual(sub.position, { epoch: 'forked', offset: 3 });
    c.close();
  });

  test('recovered: false is surfaced as reset when the history cannot cover the gap', { timeout: TIMEOUT }, async () => {
    const r = room();
    const c = client();
    await c.connect();
    const sub = c.subscribe(r, { since: { epoch: 'not-the-epoch', offset: 3 } });
    const reset = once(sub, 'reset');
    const reply = await sub.ready;
    assert.equal(reply.recovered, false);
    const info = await reset;
    assert.equal(info.epoch, reply.epoch);
    c.close();
  });
});

describe('liveness', () => {
  test('a connection that goes silent is given up after two ping intervals and replaced', { timeout: TIMEOUT }, async () => {
    // A server that announces a 1 s ping interval; the network then drops everything the
    // server sends (no close, no reset), as a vanished network does.
    const quick = await startServer({ SWITCHBOARD_WEBSOCKET__PING_INTERVAL: '1s' });
    let silent = false;
    const c = new Switchboard(quick.ws, {
      token: quick.token('alice'),
      WebSocket: faultyWebSocket({ incoming: () => !silent }),
      minDelay: 50,
      random: () => 0.5,
    });
    try {
      const first = await c.connect();
      assert.equal(first.ping_interval, 1);
      silent = true;
      const info = await once(c, 'disconnected');
      assert.equal(info.code, 1006);
      assert.equal(info.reconnect, true);
      assert.match(info.reason, /two ping intervals/);
      silent = false;
      const second = await once(c, 'connected');
      assert.notEqual(second.connection, first.connection);
    } finally {
      c.close();
      await quick.stop();
    }
  });
});

describe('a restarted server', () => {
  test('the epoch changed: every subscription gets reset after the reconnect', { timeout: TIMEOUT }, async () => {
    let own = await startServer();
    const r = room();
    const c = new Switchboard(own.ws, { token: own.token('alice'), WebSocket: faultyWebSocket(), minDelay: 50, maxDelay: 200 });
    try {
      await c.connect();
      const sub = c.subscribe(r);
      const first = await sub.ready;
      await c.publish(r, 'before');
      await until(sub, 'message', () => sub.offset === 1);
      const going = once(c, 'disconnected');
      await own.stop({ keep: true });
      assert.equal((await going).code, 1001, 'closed with going_away by the shutdown');
      const reset = once(sub, 'reset');
      own = await startServer({}, { dir: own.dir, port: own.port });
      const info = await reset;
      assert.notEqual(info.epoch, first.epoch);
      assert.equal(info.offset, 0);
      const got = once(sub, 'message');
      await c.publish(r, 'after');
      assert.deepEqual({ data: (await got).data, offset: sub.offset }, { data: 'after', offset: 1 });
    } finally {
      c.close();
      await own.stop();
    }
  });
});

describe('requests', () => {
  test('presence, history, join and leave, ephemeral publications and errors', { timeout: TIMEOUT }, async () => {
    const r = room();
    const a = client('alice');
    const b = client('bob');
    await Promise.all([a.connect(), b.connect()]);
    const sa = a.subscribe(r);
    await sa.ready;
    const joined = once(sa, 'join');
    await b.subscribe(r).ready;
    assert.equal((await joined).user, 'bob');
    const presence = await a.presence(r);
    assert.deepEqual(presence.members.map((m) => m.user).sort(), ['alice', 'bob']);
    const typing = once(sa, 'message');
    assert.deepEqual(await b.publish(r, { typing: true }, { ephemeral: true }), { room: r });
    const eph = await typing;
    assert.equal(eph.offset, undefined);
    await b.publish(r, 'stored');
    const history = await a.history(r, { limit: 10, reverse: true });
    assert.deepEqual(history.publications.map((p) => p.data), ['stored']);
    await assert.rejects(a.rpc('orders.list', {}), { code: 'unavailable' });
    await assert.rejects(a.subscribe('not a room').ready, { code: 'bad_room' });
    const left = once(sa, 'leave');
    b.close();
    assert.equal((await left).user, 'bob');
    a.close();
  });

  test('connect times out when no welcome comes (the echo route answers nothing useful)', { timeout: TIMEOUT }, async () => {
    const c = client('alice', { url: `ws://127.0.0.1:${server.port}/echo`, timeout: 300 });
    await assert.rejects(c.connect(), { code: 'timeout' });
    c.close();
  });

  test('a command waiting offline fails with timeout', { timeout: TIMEOUT }, async () => {
    const c = client('alice', { url: nowhere, timeout: 300 });
    c.connect().catch(() => {});
    await assert.rejects(c.publish(room(), 1), { code: 'timeout' });
    c.close();
  });

  test('the offline queue is bounded, and `offline: fail` fails at once', { timeout: TIMEOUT }, async () => {
    const c = client('alice', { url: nowhere, queueLimit: 2 });
    c.connect().catch(() => {});
    const queued = [c.publish(room(), 1), c.publish(room(), 2)];
    await assert.rejects(c.publish(room(), 3), { code: 'queue_full' });
    c.close();
    for (const q of queued) await assert.rejects(q, { code: 'closed' });
    const f = client('alice', { url: nowhere, offline: 'fail' });
    f.connect().catch(() => {});
    await assert.rejects(f.presence(room()), { code: 'disconnected' });
    f.close();
    await assert.rejects(f.publish(room(), 1), { code: 'disconnected' }, 'after close() nothing waits');
    // Per command: this one fails at once, that one waits (and times out on its own timeout).
    const g = client('alice', { url: nowhere });
    g.connect().catch(() => {});
    await assert.rejects(g.history(room(), { offline: 'fail' }), { code: 'disconnected' });
    await assert.rejects(g.publish(room(), 1, { timeout: 100 }), { code: 'timeout', message: /100 ms/ });
    g.close();
  });

  test('commands issued while connecting are sent after the welcome, after the subscriptions', { timeout: TIMEOUT }, async () => {
    const r = room();
    const c = client();
    const welcome = c.connect();
    const sub = c.subscribe(r);
    const published = c.publish(r, 'queued');
    const got = once(sub, 'message');
    await welcome;
    assert.equal((await published).offset, 1);
    assert.equal((await got).data, 'queued');
    c.close();
  });
});

describe('exactly once', () => {
  test('duplicated pushes are delivered once (de-duplication by offset)', { timeout: TIMEOUT }, async () => {
    const r = room();
    const c = client('alice', {
      WebSocket: faultyWebSocket({ incoming: (text) => (JSON.parse(text).type === 'message' ? 2 : true) }),
    });
    await c.connect();
    const sub = c.subscribe(r);
    await sub.ready;
    const seen = [];
    sub.on('message', (p) => seen.push(p.offset));
    for (let i = 0; i < 3; i++) await c.publish(r, i);
    // Each push is handed to the SDK twice in a row, so once the third arrived, any double of
    // the first three would already be in `seen`.
    await until(sub, 'message', () => seen.length >= 3);
    assert.deepEqual(seen, [1, 2, 3]);
    c.close();
  });

  test('a publish whose reply was lost with the connection is resent with its key, not doubled', { timeout: TIMEOUT }, async () => {
    const r = room();
    let dropped = false;
    const c = client('alice', {
      WebSocket: faultyWebSocket({
        incoming: (text, ws) => {
          const m = JSON.parse(text);
          if (!dropped && m.type === 'reply' && m.result?.offset === 1) {
            dropped = true;
            ws.cut();
            return false;
          }
          return true;
        },
      }),
    });
    await c.connect();
    const sub = c.subscribe(r);
    await sub.ready;
    const reconnected = once(c, 'reconnecting');
    const result = await c.publish(r, 'once');
    await reconnected;
    assert.equal(dropped, true);
    assert.equal(result.offset, 1);
    const history = await c.history(r);
    assert.deepEqual(history.publications.map((p) => p.data), ['once']);
    assert.equal(history.offset, 1);
    c.close();
  });
});

describe('tokens', () => {
  test('getToken is called before expires and the connection outlives the first token', { timeout: TIMEOUT }, async () => {
    let calls = 0;
    const c = client('alice', { token: undefined, getToken: async () => (++calls, server.token('alice', 3)) });
    const events = [];
    c.on('disconnected', (i) => events.push(i.code));
    const refreshed = once(c, 'refreshed');
    const welcome = await c.connect();
    const expires = await refreshed;
    assert.ok(expires >= welcome.expires, 'the new token expires no earlier');
    assert.ok(calls >= 2);
    // Past the first token's exp (and the 5 s leeway is not needed: a refreshed connection is
    // not closed at all): no event says so, so this waits for the time to pass.
    await new Promise((r) => setTimeout(r, (welcome.expires + 1) * 1000 - Date.now()));
    await c.presence('user:alice').catch(() => {});
    assert.equal(c.welcome.connection, welcome.connection);
    assert.deepEqual(events, []);
    c.close();
  });

  test('after 4501 the client reconnects with a token from getToken', { timeout: TIMEOUT }, async () => {
    let calls = 0;
    let first;
    // The token service fails while the first connection is open: the refresh cannot happen,
    // so the server closes with 4501 at exp, and the reconnect asks again.
    const c = client('alice', {
      token: undefined,
      getToken: async () => {
        calls++;
        if (first && c.welcome?.connection === first.connection) throw new Error('the token service is down');
        return server.token('alice', first ? 600 : 2);
      },
    });
    c.on('error', () => {});
    first = await c.connect();
    const info = await once(c, 'disconnected');
    assert.equal(info.code, 4501);
    assert.equal(info.reconnect, true);
    const second = await once(c, 'connected');
    assert.notEqual(second.connection, first.connection);
    assert.ok(calls >= 3, `getToken called ${calls} times`);
    assert.equal(second.expires > first.expires + 500, true, 'the new connection has the new token');
    c.close();
  });
});

function faultyLast(c) {
  // The SDK's WebSocket class is the faultyWebSocket given in its options.
  return c.o.WebSocket.last();
}
