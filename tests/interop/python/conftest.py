"""Shared settings for the Python interop suite.

The suite talks to a running `switchboard serve --echo /echo` whose base URL is in the
environment variable SWITCHBOARD_URL (for example http://127.0.0.1:8080); scripts/test starts
the server and sets it. SWITCHBOARD_ECHO_PATH names the echo route (default /echo).
"""

import os
import urllib.parse

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
