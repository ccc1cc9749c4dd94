// Node `ws` 8 peer for bench/compare.sh: an echo route and a raw broadcast route.
//
//   node ws.js PORT
//
// /echo    sends every message back to its sender.
// /fanout  sends every message to every other open connection of the route (the broadcast
//          pattern of the ws README).
// Listens on 127.0.0.1 only; permessage-deflate off (the generator never offers it anyway).
'use strict';

const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 9001);
const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const echo = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });
const fanout = new WebSocketServer({ noServer: true, perMessageDeflate: false });

echo.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});

fanout.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const client of fanout.clients) {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    }
  });
});

server.on('upgrade', (req, socket, head) => {
  const path = req.url.split('?')[0];
  const wss = path === '/echo' ? echo : path === '/fanout' ? fanout : null;
  if (!wss) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

server.listen(port, '127.0.0.1', 1024, () => {
  console.log(`ws ${require('ws/package.json').version} listening on 127.0.0.1:${port}`);
});
process.on('SIGTERM', () => process.exit(0));
