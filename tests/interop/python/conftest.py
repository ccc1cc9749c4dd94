"""Shared settings for the Python interop suite.

The suite talks to a running `switchboard serve --echo /echo` whose base URL is in the
environment variable SWITCHBOARD_URL (for example http://127.0.0.1:8080); scripts/test starts
the server and sets it. SWITCHBOARD_ECHO_PATH names the echo route (default /echo),
SWITCHBOARD_WS_PATH the protocol route (default /ws).

The protocol tests mint their tokens with the development-mode secret of that server, which it
keeps in `.switchboard/dev-secret` in its working directory: scripts/test runs it in
target/interop/, the default here; SWITCHBOARD_DEV_SECRET_FILE names another file.
"""

import os
import urllib.parse
from pathlib import Path

import pytest


def _base_url() -> urllib.parse.SplitResult:
    raw = os.environ.get("SWITCHBOARD_URL")
    if not raw:
        raise pytest.UsageError(
            "SWITCHBOARD_URL is not set: start `switchboard serve --echo /echo "
            "--max-message-size 16777216` and set SWITCHBOARD_URL=http://HOST:PORT "
            "(scripts/test does both)"
        )
    url = urllib.parse.urlsplit(raw)
    if url.scheme not in ("http", "ws") or not url.hostname or not url.port:
        raise pytest.UsageError(f"SWITCHBOARD_URL must look like http://HOST:PORT, got {raw!r}")
    return url


@pytest.fixture(scope="session")
def server() -> tuple[str, int]:
    """(host, port) of the server under test."""
    url = _base_url()
    return url.hostname, url.port


@pytest.fixture(scope="session")
def echo_path() -> str:
    return os.environ.get("SWITCHBOARD_ECHO_PATH", "/echo")


@pytest.fixture(scope="session")
def echo_url(server, echo_path) -> str:
    host, port = server
    return f"ws://{host}:{port}{echo_path}"


@pytest.fixture(scope="session")
def ws_url(server) -> str:
    """The protocol route."""
    host, port = server
    return f"ws://{host}:{port}{os.environ.get('SWITCHBOARD_WS_PATH', '/ws')}"


@pytest.fixture(scope="session")
def dev_secret() -> str:
    """The server's development-mode token secret (its UTF-8 text is the HMAC key)."""
    default = Path(__file__).resolve().parents[3] / "target/interop/.switchboard/dev-secret"
    path = Path(os.environ.get("SWITCHBOARD_DEV_SECRET_FILE") or default)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise pytest.UsageError(
            f"no dev secret at {path}: run the server in development mode in target/interop/ "
            "(scripts/test does) or set SWITCHBOARD_DEV_SECRET_FILE to its .switchboard/dev-secret"
        ) from None
    if not secret:
        raise pytest.UsageError(f"the dev secret file {path} is empty")
    return secret
