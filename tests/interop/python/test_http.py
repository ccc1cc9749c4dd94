"""The HTTP side of the echo route and the health check, with http.client and raw sockets."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct

import pytest

from helpers import TIMEOUT

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def request(server, path, headers=None):
    host, port = server
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def json_body(response, body):
    content_type = response.getheader("Content-Type", "")
    assert "application/json" in content_type, f"Content-Type: {content_type!r}, body {body[:200]!r}"
    try:
        return json.loads(body)
    except ValueError:
        pytest.fail(f"body is not JSON: {body[:200]!r}")


def test_healthz(server):
    response, body = request(server, "/healthz")
    assert response.status == 200, body
    assert json_body(response, body) == {"status": "ok"}


def test_plain_get_on_websocket_route_is_400(server, echo_path):
    response, body = request(server, echo_path)
    assert response.status == 400, body
    error = json_body(response, body)
    assert error.get("error") == "bad_request", error
    assert isinstance(error.get("reason"), str) and error["reason"], error


def test_upgrade_without_key_is_400(server, echo_path):
    headers = {k: v for k, v in UPGRADE.items() if k != "Sec-WebSocket-Key"}
    response, body = request(server, echo_path, headers)
    assert response.status == 400, body
    assert json_body(response, body).get("error") == "bad_request"


def test_wrong_version_is_426(server, echo_path):
    response, body = request(server, echo_path, {**UPGRADE, "Sec-WebSocket-Version": "8"})
    assert response.status == 426, body
    versions = [v.strip() for v in response.getheader("Sec-WebSocket-Version", "").split(",")]
    assert "13" in versions, f"Sec-WebSocket-Version: {response.getheader('Sec-WebSocket-Version')!r}"
    error = json_body(response, body)
    assert "error" in error and "reason" in error, error


def test_upgrade_on_unknown_route_is_404(server):
    response, body = request(server, "/no-such-route-" + os.urandom(4).hex(), UPGRADE)
    assert response.status == 404, body


# ---- a hand-written client: the handshake and frames byte for byte ----


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            raise AssertionError(f"connection closed during the response head: {data!r}")
        data += chunk
    status_line, *lines = data.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers


def masked_frame(opcode, payload, fin=True):
    key = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(sock):
    b0, b1 = read_exact(sock, 2)
    assert b0 & 0x70 == 0, f"RSV bits set without an extension: {b0:#x}"
    assert b1 & 0x80 == 0, "a server must not mask its frames (RFC 6455 5.1)"
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read_exact(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", read_exact(sock, 8))
    return bool(b0 & 0x80), b0 & 0x0F, read_exact(sock, length)


@pytest.fixture
def raw(server, echo_path):
    sock = socket.create_connection(server, timeout=TIMEOUT)
    try:
        request_head = f"GET {echo_path} HTTP/1.1\r\nHost: {server[0]}:{server[1]}\r\n"
        request_head += "".join(f"{k}: {v}\r\n" for k, v in UPGRADE.items()) + "\r\n"
        sock.sendall(request_head.encode())
        status_line, headers = read_head(sock)
        assert status_line.split(" ")[1] == "101", status_line
        yield sock, headers
    finally:
        sock.close()


def test_raw_handshake_accept_key(raw):
    _, headers = raw
    # The example of RFC 6455 section 1.3.
    assert headers.get("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers.get("upgrade", "").lower() == "websocket"
    assert "upgrade" in headers.get("connection", "").lower()
    assert "sec-websocket-extensions" not in headers, "an extension was not offered"


def test_raw_frames_echo_and_close(raw):
    sock, _ = raw
    sock.sendall(masked_frame(0x1, "héllo".encode()))
    assert read_frame(sock) == (True, 0x1, "héllo".encode())

    payload = bytes(range(256)) * 300  # 76800 bytes: 64-bit length
    sock.sendall(masked_frame(0x2, payload))
    fin, opcode, data = read_frame(sock)
    assert (fin, opcode, len(data)) == (True, 0x2, len(payload))
    assert data == payload

    # Fragmented text with a ping between the fragments.
    sock.sendall(masked_frame(0x1, b"frag", fin=False) + masked_frame(0x9, b"p")
                 + masked_frame(0x0, b"mented"))
    assert read_frame(sock) == (True, 0xA, b"p")
    assert read_frame(sock) == (True, 0x1, b"fragmented")

    sock.sendall(masked_frame(0x8, struct.pack("!H", 1000) + b"bye"))
    fin, opcode, data = read_frame(sock)
    assert (fin, opcode) == (True, 0x8)
    assert struct.unpack("!H", data[:2])[0] == 1000, data
    # After the closing handshake the server closes the TCP connection (RFC 6455 7.1.1).
    assert sock.recv(1) == b"", "the server kept the TCP connection open after the close handshake"
