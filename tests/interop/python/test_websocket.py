"""WebSocket interop against the echo route, with the `websockets` library as the peer.

Every test runs twice: with permessage-deflate negotiated and without it.
"""

from __future__ import annotations

import os

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from helpers import MIB, TIMEOUT, assert_same


@pytest.fixture(params=["deflate", None], ids=["deflate", "no-deflate"])
def compression(request):
    return request.param


@pytest.fixture
def ws(echo_url, compression):
    with connect(
        echo_url,
        compression=compression,
        max_size=None,  # the 10 MiB echoes must fit; the server's own limit is under test
        ping_interval=None,  # no keepalive pings: the tests send their own
        max_queue=None,  # keep reading after a failed test so the close handshake completes
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
    ) as conn:
        yield conn


def echo(ws, message, timeout=TIMEOUT):
    ws.send(message)
    return ws.recv(timeout=timeout)


def test_extension_negotiation(ws, compression):
    offered = ", ".join(ws.response.headers.get_all("Sec-WebSocket-Extensions"))
    in_use = [ext.name for ext in ws.protocol.extensions]
    assert ws.response.status_code == 101
    if compression == "deflate":
        assert "permessage-deflate" in offered, f"Sec-WebSocket-Extensions: {offered!r}"
        assert in_use == ["permessage-deflate"]
    else:
        assert "permessage-deflate" not in offered, f"Sec-WebSocket-Extensions: {offered!r}"
        assert in_use == []


# Sizes around the frame length encodings: 7-bit (<=125), 16-bit (<=65535) and 64-bit.
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537]


@pytest.mark.parametrize("size", SIZES)
def test_text_echo(ws, size):
    message = ("switchboard " * (size // 12 + 1))[:size]
    assert_same(echo(ws, message), message)


@pytest.mark.parametrize("size", SIZES)
def test_binary_echo(ws, size):
    message = bytes(i % 256 for i in range(size))
    assert_same(echo(ws, message), message)


def test_binary_all_byte_values_and_random(ws):
    for message in (bytes(range(256)), os.urandom(4096)):
        assert_same(echo(ws, message), message)


UNICODE = [
    "héllo wörld ça va",
    "日本語のテキスト、中文，한국어",
    "Привет, мир",
    "مرحبا بالعالم שלום עולם",  # right to left
    "😀🚀👍🏽 👨\u200d👩\u200d👧\u200d👦",  # 4-byte code points, modifiers, ZWJ sequence
    "e\u0301 a\u030a",  # combining marks
    "nul \x00 inside",
    "\ufeffBOM first",
    "edges \u007f \u0080 \u07ff \u0800 \ud7ff \ue000 \ufffd \uffff \U00010000 \U0010ffff",
]


@pytest.mark.parametrize("message", UNICODE, ids=range(len(UNICODE)))
def test_unicode_echo(ws, message):
    assert_same(echo(ws, message), message)


def test_long_unicode_echo(ws):
    message = "".join(UNICODE) * 2000  # about 400 KB of UTF-8, multi-byte throughout
    assert_same(echo(ws, message), message)


@pytest.mark.parametrize("size", [1 * MIB, 10 * MIB], ids=["1MiB", "10MiB"])
def test_large_binary_echo(ws, size):
    message = os.urandom(size)  # incompressible: deflate cannot shrink it
    assert_same(echo(ws, message), message)


@pytest.mark.parametrize("size", [1 * MIB, 10 * MIB], ids=["1MiB", "10MiB"])
def test_large_text_echo(ws, size):
    # Highly compressible: with deflate a few KB on the wire inflate to `size` bytes.
    message = ("Switchboard ✓ " * (size // 16 + 1)).encode()[:size].decode(errors="ignore")
    assert_same(echo(ws, message), message)


def test_fragmented_text(ws):
    ws.send(["Hel", "lo, ", "", "wor", "ld ✓"])
    assert_same(ws.recv(timeout=TIMEOUT), "Hello, world ✓")


def test_fragmented_binary(ws):
    parts = [b"\x00\x01", b"\xff" * 300, b"", os.urandom(70000), b"end"]
    ws.send(parts)
    assert_same(ws.recv(timeout=TIMEOUT), b"".join(parts))


def test_fragmented_text_splits_code_points(ws):
    # UTF-8 validity is a property of the whole message: a code point may straddle frames.
    parts = [b"caf\xc3", b"\xa9 \xf0\x9f", b"\x98", b"\x80!"]
    ws.send(parts, text=True)
    assert_same(ws.recv(timeout=TIMEOUT), "café 😀!")


def test_fragmented_large(ws):
    message = os.urandom(2 * MIB)
    ws.send(message[i:i + 64 * 1024] for i in range(0, len(message), 64 * 1024))
    assert_same(ws.recv(timeout=TIMEOUT), message)


def test_ping_between_fragments(ws):
    # Control frames may be interleaved with the frames of a fragmented message (RFC 6455 5.4).
    pongs = []

    def parts():
        yield "first "
        pongs.append(ws.ping(b"mid-message"))
        yield "second"

    ws.send(parts())
    assert_same(ws.recv(timeout=TIMEOUT), "first second")
    assert pongs[0].wait(TIMEOUT), "no pong for a ping sent between two fragments"


@pytest.mark.parametrize(
    "payload", [b"", b"switchboard", bytes(range(125))], ids=["empty", "short", "125-bytes"]
)
def test_ping_pong(ws, payload):
    # The event is set only by a pong carrying the same payload.
    assert ws.ping(payload).wait(TIMEOUT), f"no pong with payload {payload!r}"
    assert_same(echo(ws, "still open"), "still open")


def test_messages_keep_order(ws):
    messages = [f"message {i} " + "x" * (i * 37 % 2000) for i in range(300)]
    for message in messages:  # all sent before any is read
        ws.send(message)
    for message in messages:
        assert_same(ws.recv(timeout=TIMEOUT), message)


def test_close_normal(ws):
    assert_same(echo(ws, "before close"), "before close")
    ws.close(1000, "bye")
    assert ws.protocol.close_rcvd is not None, "the server sent no close frame"
    assert ws.protocol.close_rcvd.code == 1000
    assert ws.close_code == 1000
    with pytest.raises(ConnectionClosedOK):
        ws.recv(timeout=TIMEOUT)


def test_two_connections_are_independent(echo_url, compression):
    with connect(echo_url, compression=compression, ping_interval=None,
                 open_timeout=TIMEOUT, close_timeout=TIMEOUT) as a, \
         connect(echo_url, compression=compression, ping_interval=None,
                 open_timeout=TIMEOUT, close_timeout=TIMEOUT) as b:
        a.send("to a")
        b.send("to b")
        assert_same(b.recv(timeout=TIMEOUT), "to b")
        assert_same(a.recv(timeout=TIMEOUT), "to a")
