"""The protocol's JSON Schemas (docs/schema/) and a recorder of conversations with a server.

A `Conversation` drives real WebSocket connections to the protocol route, validates every
command it sends against docs/schema/client.schema.json and every message it receives against
docs/schema/server.schema.json, and records both as a transcript (docs/schema/README.md
describes the format). `shape` reduces a transcript to what must not change between runs:
the message types in their order and their keys, not ids, epochs or timestamps.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

from jsonschema.validators import Draft202012Validator
from referencing import Registry, Resource
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[3]
SCHEMA_DIR = ROOT / "docs" / "schema"
TRANSCRIPT_DIR = SCHEMA_DIR / "transcripts"

# One answer from a local server takes milliseconds; this only bounds a server that never
# answers, on a busy 2-core machine with a debug build.
RECV_TIMEOUT = 30.0

# The commands whose successful answer is a `reply` (ping's answer is the `pong` push).
REPLY_DEFS = {
    "subscribe": "subscribeReply",
    "unsubscribe": "unsubscribeReply",
    "publish": "publishReply",
    "presence": "presenceReply",
    "history": "historyReply",
    "refresh": "refreshReply",
    "rpc": "rpcReply",
}

# `bad_request` answers to commands whose form is valid: what they ask for is refused.
SEMANTIC_BAD_REQUESTS = (
    "field 'cursor' is not a cursor this server gave",
    "field 'since.epoch': '",
    "already authenticated at the handshake",
    "binary messages are not supported",
)


def load_schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


class Schemas:
    """The client and server schemas, and validators for them or for one of their `$defs`."""

    def __init__(self) -> None:
        self.client = load_schema("client")
        self.server = load_schema("server")
        resources = [(s["$id"], Resource.from_contents(s)) for s in (self.client, self.server)]
        self.registry = Registry().with_resources(resources)

    def validator(self, side: str, definition: str | None = None) -> Draft202012Validator:
        schema = self.client if side == "client" else self.server
        if definition is not None:
            if definition not in schema["$defs"]:
                raise KeyError(f"{side} schema has no $defs/{definition}")
            schema = {"$ref": f"{schema['$id']}#/$defs/{definition}"}
        return Draft202012Validator(schema, registry=self.registry)

    def errors(self, side: str, instance: Any, definition: str | None = None) -> list[str]:
        """Why `instance` is not valid (empty when it is). For a message whose `type` names a
        definition, the errors come from that definition: more precise than the `oneOf`'s."""

        def listed(validator: Draft202012Validator) -> list[str]:
            found = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
            return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in found]

        if definition is not None:
            return listed(self.validator(side, definition))
        errors = listed(self.validator(side))
        schema = self.client if side == "client" else self.server
        kind = instance.get("type") if isinstance(instance, dict) else None
        if errors and isinstance(kind, str) and kind in schema["$defs"]:
            return listed(self.validator(side, kind)) or errors
        return errors

    def check(self, side: str, instance: Any, definition: str | None = None) -> None:
        errors = self.errors(side, instance, definition)
        where = f"$defs/{definition}" if definition else "the schema"
        assert not errors, (
            f"{side} message not valid against {where}: {json.dumps(instance)}\n  "
            + "\n  ".join(errors)
        )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_token(secret: str, claims: dict) -> str:
    """An HS256 JWT signed with `secret` (its UTF-8 bytes are the key, as the server reads it)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64url(signature.digest())}"


class Conversation:
    """Connections to the protocol route, driven step by step and recorded as a transcript.

    Connections are named (`alice`, `bob`); each belongs to its own user, whose id carries the
    run's suffix so that runs against the same server never meet (the in-memory broker keeps
    rooms and presence between runs). Steps are recorded in the order the driver performs
    them; a connection's messages arrive in a fixed order except where the protocol leaves it
    open, which `recv_unordered` records as such.
    """

    def __init__(self, url: str, secret: str, schemas: Schemas, run: str, description: str):
        self.url = url
        self.secret = secret
        self.schemas = schemas
        self.run = run
        self.conns: dict[str, Any] = {}
        # Every connection opened, closed when the conversation is (a failed test included).
        self.stack = contextlib.ExitStack()
        # Per connection: the type of each command sent with an id, and whether it was valid.
        self.sent: dict[str, dict[Any, tuple[str, bool]]] = {}
        self.steps: list[dict] = []
        self.description = description

    # -- names

    def user(self, name: str) -> str:
        return f"{name}-{self.run}"

    def room(self, name: str) -> str:
        """A room of this run: `chat:lobby` becomes `chat:lobby-<run>`."""
        return f"{name}-{self.run}"

    # -- connections

    def token(self, name: str, exp_in: int | None = None, **claims) -> str:
        claims = {"sub": self.user(name), **claims}
        if exp_in is not None:
            claims["exp"] = int(time.time()) + exp_in
        return mint_token(self.secret, claims)

    def open(self, name: str, exp_in: int | None = None, **claims) -> dict:
        """Connects `name` with a token of these claims (`sub` is the run's user) and returns
        its `welcome`."""
        assert name not in self.conns, f"{name} is already open"
        token = self.token(name, exp_in, **claims)
        ws = self.stack.enter_context(
            connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {token}"},
                subprotocols=["switchboard.v1"],
                compression=None,
                proxy=None,
                ping_interval=None,  # the server pings; the library answers
                open_timeout=RECV_TIMEOUT,
                close_timeout=RECV_TIMEOUT,
            )
        )
        assert ws.subprotocol == "switchboard.v1", ws.subprotocol
        self.conns[name] = ws
        self.sent[name] = {}
        recorded = {k: v for k, v in claims.items()}
        if exp_in is not None:
            recorded["exp_in"] = exp_in
        self.steps.append(
            {"connection": name, "open": {"user": self.user(name), "claims": recorded}}
        )
        return self.recv(name, "welcome")

    def close(self, name: str) -> None:
        """The client closes `name` with 1000."""
        self.conns.pop(name).close()
        self.steps.append({"connection": name, "close_by_client": 1000})

    def expect_close(self, name: str, code: int) -> dict:
        """Waits for the server to close `name` and checks the code."""
        ws = self.conns.pop(name)
        try:
            extra = ws.recv(timeout=RECV_TIMEOUT)
        except ConnectionClosed as e:
            frame = e.rcvd
        else:
            raise AssertionError(f"{name}: expected a close {code}, got a message {extra!r}")
        assert frame is not None, f"{name}: the connection ended without a close frame"
        close = {"code": frame.code, "reason": frame.reason}
        assert frame.code == code, f"{name}: expected close {code}, got {close}"
        self.steps.append({"connection": name, "close": close})
        return close

    # -- sending

    def send(self, name: str, command: Any, valid: bool = True) -> None:
        """Sends one command; it must be valid against the client schema, or, with
        `valid=False`, must not be (and the server must refuse its form)."""
        errors = self.schemas.errors("client", command)
        if valid:
            assert not errors, f"command not valid against client.schema.json: {command}\n{errors}"
        else:
            assert errors, f"command unexpectedly valid against client.schema.json: {command}"
        if isinstance(command, dict) and command.get("id") is not None:
            self.sent[name][command["id"]] = (command.get("type"), valid)
        self.conns[name].send(json.dumps(command))
        step = {"connection": name, "send": command}
        if not valid:
            step["valid"] = False
        self.steps.append(step)

    def send_text(self, name: str, text: str, id: Any = None) -> None:
        """Sends text that is not a command the schema can judge (invalid JSON, a duplicate
        field); `id` is the id the server can read from it."""
        if id is not None:
            self.sent[name][id] = (None, False)
        self.conns[name].send(text)
        step = {"connection": name, "send_text": text}
        if id is not None:
            step["id"] = id
        self.steps.append(step)

    def send_binary(self, name: str, data: bytes) -> None:
        self.conns[name].send(data)
        self.steps.append({"connection": name, "send_binary": base64.b64encode(data).decode()})

    # -- receiving

    def _receive(self, name: str) -> dict:
        try:
            text = self.conns[name].recv(timeout=RECV_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"{name}: nothing received within {RECV_TIMEOUT} s") from None
        assert isinstance(text, str), f"{name}: the server sent a binary message {text!r}"
        message = json.loads(text)
        self.validate_received(name, message)
        return message

    def validate_received(self, name: str, message: dict) -> None:
        self.schemas.check("server", message)
        kind, id = message.get("type"), message.get("id")
        if kind not in ("reply", "error") or id is None:
            return
        assert id in self.sent[name], f"{name}: answer to an id never sent: {message}"
        command, valid = self.sent[name].pop(id)
        if kind == "reply":
            assert valid, f"{name}: a command the schema refuses got a reply: {message}"
            self.schemas.check("server", message, REPLY_DEFS[command])
        elif not valid:
            assert message["code"] in ("bad_request", "unknown_type"), (
                f"{name}: a command the schema refuses got {message['code']}, not bad_request"
            )
        elif message["code"] in ("bad_request", "unknown_type"):
            assert message["message"].startswith(SEMANTIC_BAD_REQUESTS), (
                f"{name}: a command valid against the schema was refused for its form: {message}"
            )

    def recv(self, name: str, kind: str | None = None, **fields) -> dict:
        """The next message of `name`; checks its `type` and the given fields' values."""
        message = self._receive(name)
        self.steps.append({"connection": name, "receive": message})
        if kind is not None:
            assert message["type"] == kind, f"{name}: expected {kind}, got {message}"
        for key, value in fields.items():
            assert message.get(key) == value, f"{name}: expected {key}={value!r} in {message}"
        return message

    def recv_unordered(self, name: str, *kinds: str) -> dict[str, dict]:
        """The next messages of `name`, one of each type in `kinds`, in an order the protocol
        does not fix (a publisher's reply and its own echoed `message`)."""
        messages = [self._receive(name) for _ in kinds]
        self.steps.append({"connection": name, "receive_unordered": messages})
        got = sorted(m["type"] for m in messages)
        assert got == sorted(kinds), f"{name}: expected {sorted(kinds)}, got {messages}"
        return {m["type"]: m for m in messages}

    # -- shortcuts

    def request(self, name: str, command: dict) -> dict:
        """Sends a command with an id and returns its reply's result."""
        self.send(name, command)
        return self.recv(name, "reply", id=command["id"])["result"]

    def refused(self, name: str, command: Any, code: str, valid: bool = True) -> dict:
        """Sends a command and checks it is answered with an `error` of `code` carrying the
        command's id (null when it had none)."""
        self.send(name, command, valid=valid)
        id = command.get("id") if isinstance(command, dict) else None
        return self.recv(name, "error", id=id, code=code)

    def finish(self) -> None:
        """Proves that no open connection has a message left unread (a `ping` is answered
        after everything already queued), then closes them in order."""
        for name in list(self.conns):
            self.send(name, {"type": "ping", "id": "end"})
            self.recv(name, "pong", id="end")
        for name in list(self.conns):
            self.close(name)

    def transcript(self) -> dict:
        return {
            "description": " ".join(self.description.split()),
            "protocol": "docs/protocol.md",
            "schemas": {"client": "../client.schema.json", "server": "../server.schema.json"},
            "run": self.run,
            "steps": self.steps,
        }


def dump_transcript(transcript: dict) -> str:
    """The transcript as JSON with one step per line (readable, and diffs show steps)."""
    head = {k: v for k, v in transcript.items() if k != "steps"}
    lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    steps = [f"    {json.dumps(step, ensure_ascii=False)}" for step in transcript["steps"]]
    return "{\n" + "\n".join(lines) + '\n  "steps": [\n' + ",\n".join(steps) + "\n  ]\n}\n"


# -- shapes


def message_shape(value: Any, key: str | None = None) -> Any:
    """What must stay the same of a message: its keys and the JSON types of its values,
    recursively; arrays keep their length. The keys of `welcome.rooms` are room names (data),
    so that map is reduced to the sorted shapes of its values."""
    if isinstance(value, dict):
        if key == "rooms":
            return ["map", sorted(json.dumps(message_shape(v)) for v in value.values())]
        return {k: message_shape(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [message_shape(v) for v in value]
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return "string"


def shape(transcript: dict) -> list:
    """One entry per step: what was sent (its type), what was received (its shape), closes."""
    out = []
    for step in transcript["steps"]:
        name = step["connection"]
        if "open" in step:
            out.append([name, "open", sorted(step["open"]["claims"])])
        elif "send" in step:
            command = step["send"]
            kind = command.get("type") if isinstance(command, dict) else None
            out.append([name, "send", kind, step.get("valid", True)])
        elif "send_text" in step:
            out.append([name, "send_text"])
        elif "send_binary" in step:
            out.append([name, "send_binary"])
        elif "receive" in step:
            out.append([name, "receive", message_shape(step["receive"])])
        elif "receive_unordered" in step:
            shapes = sorted(json.dumps(message_shape(m)) for m in step["receive_unordered"])
            out.append([name, "receive_unordered", shapes])
        elif "close" in step:
            out.append([name, "close", step["close"]["code"]])
        elif "close_by_client" in step:
            out.append([name, "close_by_client"])
        else:
            raise AssertionError(f"unknown transcript step {step}")
    return out


def describe_shape_difference(live: list, recorded: list) -> str:
    for i, (a, b) in enumerate(zip(live, recorded, strict=False)):
        if a != b:
            return (
                f"step {i}: the server now gives\n  {json.dumps(a)}\n"
                f"the transcript has\n  {json.dumps(b)}"
            )
    return f"the live run has {len(live)} steps, the transcript {len(recorded)}"


def error_codes_of_rust() -> list[str]:
    """The wire names of `ErrorCode::ALL`, read from the protocol crate's source."""
    source = (ROOT / "crates/switchboard-protocol/src/wire/types.rs").read_text(encoding="utf-8")
    block = re.search(r"pub const fn as_str\(self\).*?\n    \}", source, re.S)
    assert block, "ErrorCode::as_str not found in crates/switchboard-protocol/src/wire/types.rs"
    return re.findall(r'ErrorCode::\w+ => "(\w+)"', block.group(0))
