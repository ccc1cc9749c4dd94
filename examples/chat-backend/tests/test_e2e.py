"""End to end: the chat backend (app.py, under uvicorn) and a real `switchboard serve` with
switchboard.toml, its proxy URLs pointed at the backend's port. A cookie-authenticated
WebSocket client joins a room, publishes, receives its message with the backend's row id, and
reads it back through the `history` rpc.

SWITCHBOARD_BIN names the server binary (default: target/debug/switchboard of the repository).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent.parent
BIN = Path(os.environ.get("SWITCHBOARD_BIN", ROOT / "target" / "debug" / "switchboard"))
TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, log: Path) -> None:
    """Waits until `url` answers (any status), failing early if the process exits."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited: {log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)  # a process starting up has nothing to await
    raise AssertionError(f"{url} never answered: {log.read_text()}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chat")
    backend_port, server_port = free_port(), free_port()
    backend_log = tmp / "backend.log"
    backend = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1",
         "--port", str(backend_port)],
        cwd=HERE,
        env={**os.environ, "CHAT_DB": str(tmp / "chat.db"),
             "SWITCHBOARD_URL": f"http://127.0.0.1:{server_port}"},
        stdout=backend_log.open("w"),
        stderr=subprocess.STDOUT,
    )
    backend_url = f"http://127.0.0.1:{backend_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_LISTEN"] = f"127.0.0.1:{server_port}"
    for proxy in ("connect", "subscribe", "publish", "rpc"):
        env[f"SWITCHBOARD_PROXIES__{proxy.upper()}__URL"] = f"{backend_url}/switchboard/{proxy}"
    server_log = tmp / "server.log"
    server = subprocess.Popen(
        [str(BIN), "serve", "--config", str(HERE / "switchboard.toml")],
        cwd=tmp,
        env=env,
        stdout=server_log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"{backend_url}/", backend, backend_log)
        wait_http(f"http://127.0.0.1:{server_port}/healthz", server, server_log)
        yield backend_url, f"ws://127.0.0.1:{server_port}/ws"
    finally:
        for p in (server, backend):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def login(backend_url: str, name: str) -> str:
    """Logs in with the form; returns the `Cookie` header value the browser would send."""
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(
        f"{backend_url}/login",
        data=f"name={name}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        opener.open(request, timeout=TIMEOUT)
        raise AssertionError("login should redirect")
    except urllib.error.HTTPError as e:
        assert e.code == 303, e
        set_cookie = e.headers["Set-Cookie"]
    return set_cookie.split(";", 1)[0]


async def recv_json(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def ask(ws, command: dict) -> dict:
    await ws.send(json.dumps(command))
    while True:
        message = await recv_json(ws)
        if message.get("id") == command["id"] and message["type"] in ("reply", "error"):
            return message


async def chat(backend_url: str, ws_url: str) -> None:
    cookie = login(backend_url, "alice")
    async with connect(ws_url, additional_headers={"Cookie": cookie},
                       open_timeout=TIMEOUT) as ws:
        welcome = await recv_json(ws)
        assert welcome["type"] == "welcome", welcome
        assert welcome["user"] == "alice"

        reply = await ask(ws, {"type": "subscribe", "id": 1, "room": "chat:lobby"})
        assert reply["type"] == "reply", reply
        denied = await ask(ws, {"type": "subscribe", "id": 2, "room": "chat:admin-ops"})
        assert (denied["type"], denied["code"]) == ("error", "forbidden"), denied

        await ws.send(json.dumps(
            {"type": "publish", "id": 3, "room": "chat:lobby", "data": {"text": "hello"}}))
        published = message = None
        while published is None or message is None:
            m = await recv_json(ws)
            if m.get("id") == 3:
                published = m
            elif m["type"] == "message" and m["room"] == "chat:lobby":
                message = m
        assert published["type"] == "reply", published
        assert message["offset"] == published["result"]["offset"]
        stored = message["data"]
        assert stored["text"] == "hello" and stored["user"] == "alice", stored
        assert isinstance(stored["id"], int), stored

        bad = await ask(ws, {"type": "publish", "id": 4, "room": "chat:lobby", "data": 5})
        assert (bad["type"], bad["code"]) == ("error", "bad_request"), bad

        history = await ask(
            ws, {"type": "rpc", "id": 5, "method": "history", "data": {"room": "chat:lobby"}})
        assert history["type"] == "reply", history
        assert history["result"]["data"][-1] == stored
        unknown = await ask(ws, {"type": "rpc", "id": 6, "method": "nope"})
        assert unknown["code"] == "bad_request", unknown


def test_cookie_client_joins_publishes_gets_the_stored_id_and_reads_history(servers):
    asyncio.run(chat(*servers))


def test_without_a_session_the_handshake_is_refused(servers):
    async def attempt(headers):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(servers[1], additional_headers=headers, open_timeout=TIMEOUT):
                pass
        return refused.value.response

    response = asyncio.run(attempt({}))
    assert response.status_code == 401
    assert json.loads(response.body)["reason"] == "connect_proxy"
    response = asyncio.run(attempt({"Cookie": "session=forged"}))
    assert response.status_code == 401


def test_the_logged_in_page_links_to_the_chat_page_switchboard_serves(servers):
    backend_url, ws_url = servers
    cookie = login(backend_url, "bob")
    request = urllib.request.Request(f"{backend_url}/", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        page = response.read().decode()
    chat_url = ws_url.replace("ws://", "http://").removesuffix("/ws") + "/?auth=cookie"
    assert "Logged in as <b>bob</b>" in page, page
    assert f'href="{chat_url}"' in page, page
    # The link's target: the demo page (demo = true), which connects with the cookie.
    with urllib.request.urlopen(chat_url, timeout=TIMEOUT) as response:
        assert response.status == 200
        assert "/demo/app.js" in response.read().decode()
