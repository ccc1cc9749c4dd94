// Socket.IO 4.8 peer for bench/compare.sh: room emit.
//
//   node socketio.js PORT
//
// Every client joins the room `bench`; an event `m` from one client is emitted to every
// other member of the room (`socket.to(room).emit`: the sender is left out, like a raw
// broadcast route). An event `e` is sent back to its sender (echo).
//
// The generator speaks engine.io v4 over WebSocket itself
// (`/socket.io/?EIO=4&transport=websocket`, `switchboard bench … --socketio`). Pings are
// pushed far out (pingInterval 10 minutes) so that the measurement is of messages, not of
// heartbeats; the generator answers them anyway (SOCKETIO_PING_INTERVAL_MS overrides it: the
// generator's test uses a short one to check that it answers). Listens on 127.0.0.1 only.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 9002);
const ROOM = 'bench';
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
  pingInterval: Number(process.env.SOCKETIO_PING_INTERVAL_MS || 10 * 60 * 1000),
  pingTimeout: Number(process.env.SOCKETIO_PING_TIMEOUT_MS || 60 * 1000),
  connectTimeout: 10 * 60 * 1000,
});

io.on('connection', (socket) => {
  socket.join(ROOM);
  socket.on('m', (data) => socket.to(ROOM).emit('m', data));
  socket.on('e', (data) => socket.emit('e', data));
});

httpServer.listen(port, '127.0.0.1', 1024, () => {
  const v = require('socket.io/package.json').version;
  console.log(`socket.io ${v} listening on 127.0.0.1:${port}`);
});
process.on('SIGTERM', () => process.exit(0));
