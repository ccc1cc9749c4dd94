// WebSocket interop against the echo route, with the `ws` library as the peer.
// Every test runs twice: with permessage-deflate negotiated and without it.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, test } from 'node:test';

import { MIB, TIMEOUT, assertEcho, connect } from '../helpers.mjs';

// Sizes around the frame length encodings: 7-bit (<=125), 16-bit (<=65535) and 64-bit.
const SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537];

const UNICODE = [
  'héllo wörld ça va',
  '日本語のテキスト、中文，한국어',
  'Привет, мир',
  'مرحبا بالعالم שלום עולם',
  '😀🚀👍🏽 👨\u200d👩\u200d👧\u200d👦',
  'e\u0301 a\u030a',
  'nul \u0000 inside',
  '\ufeffBOM first',
  'edges \u007f \u0080 \u07ff \u0800 \ud7ff \ue000 \ufffd \uffff \u{10000} \u{10ffff}',
];

for (const deflate of [true, false]) {
  describe(deflate ? 'with permessage-deflate' : 'without permessage-deflate', { timeout: 5 * TIMEOUT }, () => {
    let client;
    beforeEach(async () => {
      client = await connect({ deflate });
    });
    afterEach(() => client.terminate());

    test('extension negotiation', () => {
      const header = client.upgradeHeaders['sec-websocket-extensions'] ?? '';
      if (deflate) {
        assert.match(header, /permessage-deflate/, `Sec-WebSocket-Extensions: ${header}`);
        assert.match(client.ws.extensions, /permessage-deflate/);
      } else {
        assert.doesNotMatch(header, /permessage-deflate/, `Sec-WebSocket-Extensions: ${header}`);
        assert.equal(client.ws.extensions, '');
      }
    });

    test('text messages of every length encoding', async () => {
      for (const size of SIZES) {
        const text = 'switchboard '.repeat(size / 12 + 1).slice(0, size);
        assertEcho(await client.echo(text), text, { text: true });
      }
    });

    test('binary messages of every length encoding', async () => {
      for (const size of SIZES) {
        const data = Buffer.alloc(size, 0).map((_, i) => i % 256);
        assertEcho(await client.echo(data), data, { text: false });
      }
      const random = randomBytes(4096);
      assertEcho(await client.echo(random), random, { text: false });
    });

    test('unicode text', async () => {
      for (const text of UNICODE) {
        assertEcho(await client.echo(text), text, { text: true });
      }
      const long = UNICODE.join('').repeat(2000);
      assertEcho(await client.echo(long), long, { text: true });
    });

    for (const size of [1 * MIB, 10 * MIB]) {
      test(`large binary message, ${size / MIB} MiB (incompressible)`, async () => {
        const data = randomBytes(size);
        assertEcho(await client.echo(data), data, { text: false });
      });

      test(`large text message, ${size / MIB} MiB (compressible)`, async () => {
        const text = 'Switchboard ✓ '.repeat(size / 16 + 1).slice(0, size / 2);
        assertEcho(await client.echo(text), text, { text: true });
      });
    }

    test('fragmented text message', async () => {
      const parts = ['Hel', 'lo, ', '', 'wor'];
      for (const part of parts) client.ws.send(part, { fin: false });
      client.ws.send('ld ✓', { fin: true });
      assertEcho(await client.next(), 'Hello, world ✓', { text: true });
    });

    test('fragmented binary message', async () => {
      const parts = [Buffer.from([0, 1]), Buffer.alloc(300, 0xff), Buffer.alloc(0), randomBytes(70000)];
      for (const part of parts) client.ws.send(part, { fin: false });
      client.ws.send(Buffer.from('end'), { fin: true });
      assertEcho(await client.next(), Buffer.concat([...parts, Buffer.from('end')]), { text: false });
    });

    test('fragmented text with code points split across frames', async () => {
      // UTF-8 validity is a property of the whole message: a code point may straddle frames.
      const bytes = Buffer.from('café 😀!', 'utf8');
      const cuts = [4, 7, 9, bytes.length]; // inside 'é', inside '😀' twice
      let start = 0;
      for (const end of cuts) {
        client.ws.send(bytes.subarray(start, end), { binary: false, fin: end === bytes.length });
        start = end;
      }
      assertEcho(await client.next(), 'café 😀!', { text: true });
    });

    test('large fragmented message (2 MiB in 64 KiB frames)', async () => {
      const data = randomBytes(2 * MIB);
      for (let i = 0; i < data.length; i += 64 * 1024) {
        client.ws.send(data.subarray(i, i + 64 * 1024), { fin: i + 64 * 1024 >= data.length });
      }
      assertEcho(await client.next(), data, { text: false });
    });

    test('ping between the fragments of a message', async () => {
      client.ws.send('first ', { fin: false });
      const pong = client.ping(Buffer.from('mid-message'));
      client.ws.send('second', { fin: true });
      assert.deepEqual(await pong, Buffer.from('mid-message'));
      assertEcho(await client.next(), 'first second', { text: true });
    });

    test('ping and pong', async () => {
      for (const payload of [Buffer.alloc(0), Buffer.from('switchboard'), Buffer.alloc(125, 7)]) {
        assert.deepEqual(await client.ping(payload), payload, 'the pong must carry the ping payload');
      }
      assertEcho(await client.echo('still open'), 'still open', { text: true });
    });

    test('messages keep their order', async () => {
      const messages = Array.from({ length: 300 }, (_, i) => `message ${i} ` + 'x'.repeat((i * 37) % 2000));
      for (const message of messages) client.ws.send(message);
      for (const message of messages) assertEcho(await client.next(), message, { text: true });
    });

    test('close with 1000', async () => {
      assertEcho(await client.echo('before close'), 'before close', { text: true });
      const { code, reason } = await client.close(1000, 'bye');
      assert.equal(code, 1000, `the server answered the close with ${code} (${reason})`);
    });
  });
}
