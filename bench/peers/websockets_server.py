"""Python `websockets` peer for bench/compare.sh: an echo route and a raw broadcast route.

    python websockets_server.py PORT

/echo    sends every message back to its sender.
/fanout  sends every message to every other connection of the route, with
         `websockets.broadcast` (the library's fan-out helper: it writes to each
         connection without waiting for it to drain).
Plain asyncio (no uvloop), compression off, 127.0.0.1 only.
"""

import asyncio
import signal
import sys

import websockets
from websockets.asyncio.server import broadcast, serve

FANOUT = set()


async def handler(ws):
    path = ws.request.path.split("?", 1)[0]
    if path == "/echo":
        async for message in ws:
            await ws.send(message)
    elif path == "/fanout":
        FANOUT.add(ws)
        try:
            async for message in ws:
                broadcast((c for c in FANOUT if c is not ws), message)
        finally:
            FANOUT.discard(ws)
    else:
        await ws.close(1008, "unknown path")


async def main(port):
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=1024):
        print(f"websockets {websockets.__version__} listening on 127.0.0.1:{port}", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9003))
