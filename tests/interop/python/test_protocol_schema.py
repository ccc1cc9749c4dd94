"""The protocol route against its JSON Schemas (docs/schema/), with real connections.

Each scenario drives `switchboard serve` through part of docs/protocol.md, validating every
command sent against client.schema.json and every message received against server.schema.json
(replies against the reply definition of their command). It is recorded as a transcript, and
the live run must keep the checked-in transcript's shape: the same message types in the same
order with the same keys. After a deliberate change of the protocol, record them again:

    SWITCHBOARD_RECORD_TRANSCRIPTS=1 python -m pytest tests/interop/python -k transcript

Other tests validate the checked-in transcripts offline and prove that the schemas reject
malformed messages.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import pytest

from protocol_schema import (
    SEMANTIC_BAD_REQUESTS,
    TRANSCRIPT_DIR,
    Conversation,
    Schemas,
    describe_shape_difference,
    dump_transcript,
    error_codes_of_rust,
    shape,
)

RECORD = os.environ.get("SWITCHBOARD_RECORD_TRANSCRIPTS") == "1"


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return Schemas()


# -------------------------------------------------------------------------------------------
# Scenarios. Each returns nothing; the Conversation records and checks as it goes.


def connect_and_ping(c: Conversation) -> None:
    """welcome with the personal room and a `rooms` claim, expires null; the application ping
    with and without id; a command without id gets no answer."""
    claim = c.room("vip:gold")
    welcome = c.open("alice", info={"name": "Alice"}, rooms=[claim])
    assert welcome["user"] == c.user("alice")
    assert welcome["expires"] is None
    assert welcome["version"] == "1"
    assert set(welcome["rooms"]) == {f"user:{c.user('alice')}", claim}
    c.send("alice", {"type": "ping", "id": 3})
    c.recv("alice", "pong", id=3)
    c.send("alice", {"type": "ping"})
    pong = c.recv("alice", "pong")
    assert "id" not in pong
    c.send("alice", {"type": "ping", "id": "p-1", "unknown_field": [1, 2]})
    c.recv("alice", "pong", id="p-1")
    # No id, no reply: the next answer is the ping's.
    c.send("alice", {"type": "unsubscribe", "room": claim})
    c.send("alice", {"type": "ping", "id": None})
    c.recv("alice", "pong")
    c.finish()


def subscribe_publish(c: Conversation) -> None:
    """subscribe, join, publish with echo, without echo, ephemeral, with an idempotency key,
    without id; unsubscribe and leave."""
    room = c.room("chat:lobby")
    c.open("alice", info={"name": "Alice"})
    c.open("bob", info={"name": "Bob"})
    first = c.request("alice", {"type": "subscribe", "id": 1, "room": room})
    assert first["room"] == room and first["publications"] == [] and "recovered" not in first
    c.request("bob", {"type": "subscribe", "id": 1, "room": room})
    join = c.recv("alice", "join", room=room)
    assert join["member"]["user"] == c.user("bob")

    c.send("alice", {"type": "publish", "id": 2, "room": room, "data": {"text": "hi"}})
    got = c.recv_unordered("alice", "reply", "message")
    offset = got["reply"]["result"]["offset"]
    assert offset == first["offset"] + 1
    assert got["message"]["offset"] == offset and got["message"]["data"] == {"text": "hi"}
    pushed = c.recv("bob", "message", offset=offset, data={"text": "hi"})
    assert pushed["from"] == {
        "user": c.user("alice"),
        "connection": got["message"]["from"]["connection"],
        "info": {"name": "Alice"},
    }

    result = c.request(
        "alice", {"type": "publish", "id": 3, "room": room, "data": None, "echo": False}
    )
    assert result["offset"] == offset + 1
    c.recv("bob", "message", offset=offset + 1, data=None)

    c.send(
        "alice",
        {"type": "publish", "id": 4, "room": room, "data": {"typing": True}, "ephemeral": True},
    )
    got = c.recv_unordered("alice", "reply", "message")
    assert got["reply"]["result"] == {"room": room}
    assert "offset" not in got["message"] and "epoch" not in got["message"]
    assert "offset" not in c.recv("bob", "message", data={"typing": True})

    key = {"type": "publish", "room": room, "data": "once", "idempotency_key": "k1", "echo": False}
    once = c.request("alice", {**key, "id": 5})
    again = c.request("alice", {**key, "id": 6})
    assert once == again == {"room": room, "epoch": first["epoch"], "offset": offset + 2}
    c.recv("bob", "message", offset=offset + 2, data="once")

    # Without an id: no reply; bob's next message proves the repeat above published nothing.
    c.send("alice", {"type": "publish", "room": room, "data": [1, 2, 3]})
    c.send("alice", {"type": "ping", "id": 7})
    c.recv_unordered("alice", "message", "pong")
    c.recv("bob", "message", offset=offset + 3, data=[1, 2, 3])

    assert c.request("bob", {"type": "unsubscribe", "id": 8, "room": room}) == {}
    leave = c.recv("alice", "leave", room=room)
    assert leave["member"]["user"] == c.user("bob")
    c.close("bob")
    c.finish()


def recovery(c: Conversation) -> None:
    """subscribe with `since`: recovered true with exactly the missed publications; recovered
    false for another epoch and for an offset beyond the room's."""
    room = c.room("chat:recovery")
    c.open("alice")
    start = c.request("alice", {"type": "subscribe", "id": 1, "room": room})
    epoch = start["epoch"]
    for i in range(3):
        c.request(
            "alice", {"type": "publish", "id": 10 + i, "room": room, "data": i, "echo": False}
        )
    c.open("bob")
    since = {"epoch": epoch, "offset": start["offset"] + 1}
    got = c.request("bob", {"type": "subscribe", "id": 1, "room": room, "since": since})
    assert got["recovered"] is True and got["offset"] == start["offset"] + 3
    assert [p["offset"] for p in got["publications"]] == [start["offset"] + 2, start["offset"] + 3]
    assert [p["data"] for p in got["publications"]] == [1, 2]
    c.recv("alice", "join")

    c.request("bob", {"type": "unsubscribe", "id": 2, "room": room})
    c.recv("alice", "leave")
    other = {"epoch": "not-the-epoch", "offset": 1}
    got = c.request("bob", {"type": "subscribe", "id": 3, "room": room, "since": other})
    assert got["recovered"] is False and got["publications"] == [] and got["epoch"] == epoch
    c.recv("alice", "join")

    c.request("bob", {"type": "unsubscribe", "id": 4, "room": room})
    c.recv("alice", "leave")
    beyond = {"epoch": epoch, "offset": start["offset"] + 99}
    got = c.request("bob", {"type": "subscribe", "id": 5, "room": room, "since": beyond})
    assert got["recovered"] is False and got["publications"] == []
    c.recv("alice", "join")
    c.finish()


def presence_history(c: Conversation) -> None:
    """presence pages and counts; history forwards, backwards, since, limit 0; leave on
    disconnect."""
    room = c.room("chat:presence")
    c.open("alice", info={"name": "Alice"})
    c.open("bob", info={"name": "Bob"})
    c.request("alice", {"type": "subscribe", "id": 1, "room": room})
    c.request("bob", {"type": "subscribe", "id": 1, "room": room})
    c.recv("alice", "join")

    page = c.request("alice", {"type": "presence", "id": 2, "room": room})
    assert (page["connections"], page["users"], page["next_cursor"]) == (2, 2, None)
    assert sorted(m["user"] for m in page["members"]) == sorted([c.user("alice"), c.user("bob")])
    page = c.request("alice", {"type": "presence", "id": 3, "room": room, "limit": 1})
    assert len(page["members"]) == 1 and isinstance(page["next_cursor"], str)
    cursor = page["next_cursor"]
    page = c.request(
        "alice", {"type": "presence", "id": 4, "room": room, "limit": 1, "cursor": cursor}
    )
    assert len(page["members"]) == 1 and page["next_cursor"] is None
    page = c.request("alice", {"type": "presence", "id": 5, "room": room, "limit": 0})
    assert page["members"] == [] and page["connections"] == 2

    for i in range(3):
        c.request(
            "alice",
            {"type": "publish", "id": 10 + i, "room": room, "data": {"n": i}, "echo": False},
        )
        c.recv("bob", "message", data={"n": i})
    h = c.request("bob", {"type": "history", "id": 2, "room": room})
    assert [p["data"]["n"] for p in h["publications"]] == [0, 1, 2]
    h = c.request("bob", {"type": "history", "id": 3, "room": room, "limit": 2, "reverse": True})
    assert [p["data"]["n"] for p in h["publications"]] == [2, 1]
    since = {"epoch": h["epoch"], "offset": h["offset"] - 1}
    h = c.request("bob", {"type": "history", "id": 4, "room": room, "since": since})
    assert [p["offset"] for p in h["publications"]] == [since["offset"] + 1]
    h = c.request("bob", {"type": "history", "id": 5, "room": room, "limit": 0})
    assert h["publications"] == []

    c.close("bob")
    leave = c.recv("alice", "leave", room=room)
    assert leave["member"] == {
        "user": c.user("bob"),
        "connection": leave["member"]["connection"],
        "info": {"name": "Bob"},
    }
    page = c.request("alice", {"type": "presence", "id": 6, "room": room})
    assert page["connections"] == 1
    c.finish()


def refresh_and_expiry(c: Conversation) -> None:
    """refresh_required at once when less than 30 s are left; refresh for the same user, for
    another (forbidden), with a bad token (unauthorized); a connection whose token expires
    is closed with 4501."""
    welcome = c.open("carol", exp_in=20)
    assert isinstance(welcome["expires"], int)
    c.recv("carol", "refresh_required", expires=welcome["expires"])
    later = c.token("carol", exp_in=3600)
    result = c.request("carol", {"type": "refresh", "id": 1, "token": later})
    assert result["expires"] > welcome["expires"]
    c.refused("carol", {"type": "refresh", "id": 2, "token": c.token("mallory")}, "forbidden")
    tampered = later[:-4] + ("AAAA" if not later.endswith("AAAA") else "BBBB")
    error = c.refused("carol", {"type": "refresh", "id": 3, "token": tampered}, "unauthorized")
    assert error["message"] == "token refused: bad_signature"
    assert c.request("carol", {"type": "refresh", "id": 4, "token": c.token("carol")}) == {
        "expires": None
    }
    c.finish()

    c.open("dave", exp_in=2)
    c.recv("dave", "refresh_required")
    c.expect_close("dave", 4501)


def errors(c: Conversation) -> None:
    """Every error the development server can be made to answer, each with the command's id
    (or null), and the connection stays open throughout."""
    room = c.room("chat:errors")
    c.open("alice")
    # The form: refused by the schema as by the server.
    c.send_text("alice", '{"type":"ping","id":5,', id=5)
    c.recv("alice", "error", id=5, code="bad_request")
    c.refused("alice", [1, 2], "bad_request", valid=False)
    c.refused("alice", {"id": 8, "type": "subscribe"}, "bad_request", valid=False)
    c.refused(
        "alice",
        {"id": 12, "type": "subscribe", "room": room, "since": {"epoch": "x", "offset": "1"}},
        "bad_request",
        valid=False,
    )
    c.refused("alice", {"id": 13, "type": "publish", "room": room}, "bad_request", valid=False)
    c.refused(
        "alice",
        {"id": 14, "type": "publish", "room": room, "data": 1, "idempotency_key": ""},
        "bad_request",
        valid=False,
    )
    c.refused(
        "alice",
        {"id": 15, "type": "history", "room": room, "limit": -1},
        "bad_request",
        valid=False,
    )
    c.send_text(
        "alice", '{"id": 16, "type": "publish", "room": "a", "room": "b", "data": 1}', id=16
    )
    c.recv("alice", "error", id=16, code="bad_request", message="duplicate field 'room'")
    # An id the server cannot accept is not echoed: the error carries null.
    c.send("alice", {"id": 9007199254740992, "type": "ping"}, valid=False)
    c.recv("alice", "error", id=None, code="bad_request")
    c.refused("alice", {"id": 21, "type": "teleport"}, "unknown_type", valid=False)
    c.send_binary("alice", b"\x00\x01")
    c.recv("alice", "error", id=None, code="bad_request")

    # What the command asks for.
    c.refused("alice", {"type": "subscribe", "id": "s-1", "room": "not a room"}, "bad_room")
    c.refused("alice", {"type": "subscribe", "room": "not a room"}, "bad_room")
    c.refused("alice", {"type": "unsubscribe", "id": 30, "room": room}, "not_subscribed")
    c.refused("alice", {"type": "presence", "id": 31, "room": room}, "not_subscribed")
    c.refused("alice", {"type": "history", "id": 32, "room": room}, "not_subscribed")
    c.refused("alice", {"type": "publish", "id": 33, "room": room, "data": 1}, "not_subscribed")
    c.request("alice", {"type": "subscribe", "id": 34, "room": room})
    c.refused("alice", {"type": "subscribe", "id": 35, "room": room}, "already_subscribed")
    c.refused(
        "alice", {"type": "presence", "id": 36, "room": room, "cursor": "nope"}, "bad_request"
    )
    since = {"epoch": "e-old", "offset": 3}
    c.refused("alice", {"type": "history", "id": 37, "room": room, "since": since}, "bad_request")
    other = f"user:{c.user('bob')}"
    c.refused("alice", {"type": "subscribe", "id": 38, "room": other}, "forbidden")
    own = f"user:{c.user('alice')}"
    c.refused("alice", {"type": "publish", "id": 39, "room": own, "data": 1}, "forbidden")
    c.refused("alice", {"type": "auth", "id": 40, "token": c.token("alice")}, "bad_request")
    c.refused(
        "alice", {"type": "rpc", "id": 41, "method": "orders.list", "data": {}}, "unavailable"
    )
    c.finish()


def subscription_limit(c: Conversation) -> None:
    """limit_exceeded past `limits.subscriptions_per_connection` (128 by default, the personal
    room included). The subscribes without id are answered by nothing; the one with an id
    comes after them, so its error proves they were all done."""
    c.open("erin")
    for i in range(127):
        c.send("erin", {"type": "subscribe", "room": c.room(f"many:{i}")})
    error = c.refused(
        "erin", {"type": "subscribe", "id": 1, "room": c.room("many:last")}, "limit_exceeded"
    )
    assert error["message"] == "at most 128 subscriptions per connection"
    c.finish()


SCENARIOS = {
    "connect": connect_and_ping,
    "subscribe-publish": subscribe_publish,
    "recovery": recovery,
    "presence-history": presence_history,
    "refresh-expiry": refresh_and_expiry,
    "errors": errors,
    "subscription-limit": subscription_limit,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_live_transcript(name, ws_url, dev_secret, schemas):
    """The scenario against the server: every message valid, and the checked-in transcript's
    shape kept (or, with SWITCHBOARD_RECORD_TRANSCRIPTS=1, the transcript written anew)."""
    scenario = SCENARIOS[name]
    c = Conversation(ws_url, dev_secret, schemas, secrets.token_hex(4), scenario.__doc__.strip())
    with c.stack:
        scenario(c)
    path = TRANSCRIPT_DIR / f"{name}.json"
    live = c.transcript()
    if RECORD:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_transcript(live), encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: record it with SWITCHBOARD_RECORD_TRANSCRIPTS=1"
    recorded = json.loads(path.read_text(encoding="utf-8"))
    live_shape, recorded_shape = shape(live), shape(recorded)
    assert live_shape == recorded_shape, (
        f"the server's messages no longer have the shape of {path.name}: "
        + describe_shape_difference(live_shape, recorded_shape)
    )


# -------------------------------------------------------------------------------------------
# The checked-in transcripts, offline.


def transcripts() -> list[str]:
    return sorted(p.stem for p in TRANSCRIPT_DIR.glob("*.json"))


def test_every_scenario_has_a_transcript_and_every_transcript_a_scenario():
    assert transcripts() == sorted(SCENARIOS)


@pytest.mark.parametrize("name", transcripts())
def test_checked_in_transcript_is_valid(name, schemas):
    """Every command and message of the transcript against the schemas, replies against
    their command's reply definition, as the live run checks them."""
    transcript = json.loads((TRANSCRIPT_DIR / f"{name}.json").read_text(encoding="utf-8"))
    c = Conversation("unused", "unused", schemas, transcript["run"], transcript["description"])
    for step in transcript["steps"]:
        conn = step["connection"]
        c.sent.setdefault(conn, {})
        if "send" in step:
            command, valid = step["send"], step.get("valid", True)
            errors = schemas.errors("client", command)
            assert bool(errors) != valid, f"{name}: {command}: {errors or 'valid'}"
            if isinstance(command, dict) and command.get("id") is not None:
                c.sent[conn][command["id"]] = (command.get("type"), valid)
        elif "send_text" in step and "id" in step:
            c.sent[conn][step["id"]] = (None, False)
        elif "receive" in step:
            c.validate_received(conn, step["receive"])
        elif "receive_unordered" in step:
            for message in step["receive_unordered"]:
                c.validate_received(conn, message)
    shape(transcript)  # every step is of a known kind


def test_transcripts_cover_every_command_push_and_provokable_error():
    sent, received, codes = set(), set(), set()
    for name in transcripts():
        for step in json.loads((TRANSCRIPT_DIR / f"{name}.json").read_text())["steps"]:
            if isinstance(step.get("send"), dict):
                sent.add(step["send"].get("type"))
            for m in step.get("receive_unordered", [step.get("receive")]):
                if m:
                    received.add(m["type"])
                    if m["type"] == "error":
                        codes.add(m["code"])
    commands = {
        "subscribe",
        "unsubscribe",
        "publish",
        "presence",
        "history",
        "ping",
        "refresh",
        "auth",
        "rpc",
    }
    assert commands <= sent, commands - sent
    # subscribed and unsubscribed are not sent yet (no server API: docs/protocol.md 4.3).
    pushes = {"welcome", "reply", "error", "message", "join", "leave", "pong", "refresh_required"}
    assert pushes <= received, pushes - received
    # unknown_namespace needs strict_namespaces; rate_limited and internal are not produced.
    provokable = {
        "bad_request",
        "unknown_type",
        "bad_room",
        "not_subscribed",
        "already_subscribed",
        "forbidden",
        "unauthorized",
        "limit_exceeded",
        "unavailable",
    }
    assert provokable <= codes, provokable - codes


def test_transcript_closes_use_the_close_code_table():
    """A close the server sent is a row of docs/schema/close-codes.json, with its reason."""
    table_path = TRANSCRIPT_DIR.parent / "close-codes.json"
    if not table_path.exists():
        pytest.skip("docs/schema/close-codes.json is not in this checkout yet")
    rows = {}

    def collect(value):
        if isinstance(value, dict):
            if isinstance(value.get("code"), int):
                rows[value["code"]] = value
            for k, v in value.items():
                # A table keyed by code: {"4501": {"name": …, "reason": …}}.
                if k.isdigit() and isinstance(v, dict):
                    rows.setdefault(int(k), v)
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(json.loads(table_path.read_text(encoding="utf-8")))
    closes = [
        step["close"]
        for name in transcripts()
        for step in json.loads((TRANSCRIPT_DIR / f"{name}.json").read_text())["steps"]
        if "close" in step
    ]
    assert closes, "no transcript records a close by the server"
    for close in closes:
        assert close["code"] in rows, f"close {close} is not in close-codes.json"
        if "reason" in rows[close["code"]]:
            assert close["reason"] == rows[close["code"]]["reason"], close


# -------------------------------------------------------------------------------------------
# The examples of docs/protocol.md.


def protocol_examples() -> list[tuple[int, str, Any, dict | None]]:
    """(line, arrow, message, the server's answer right after it) for every one-line example
    of docs/protocol.md that is whole JSON (`→` client, `←` server); examples with `…` or with
    a duplicate field are left out."""

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate field")
        return dict(pairs)

    found = []
    lines = (TRANSCRIPT_DIR.parents[1] / "protocol.md").read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text.startswith(("→ ", "← ")):
            continue
        try:
            message = json.loads(text[2:], object_pairs_hook=no_duplicates)
        except ValueError:
            continue
        found.append([number, text[0], message, None])
    for earlier, later in zip(found, found[1:], strict=False):
        # The answer is the line right after the command (or the one after that).
        if earlier[1] == "→" and later[1] == "←" and later[0] - earlier[0] <= 2:
            earlier[3] = later[2]
    return [tuple(f) for f in found]


def test_protocol_examples_are_valid_against_the_schemas(schemas):
    """Every whole example: a command is valid unless the answer shown refuses its form."""
    examples = protocol_examples()
    assert len(examples) >= 40, f"only {len(examples)} examples found in docs/protocol.md"
    for number, arrow, message, answer in examples:
        where = f"docs/protocol.md:{number}: {json.dumps(message)}"
        if arrow == "←":
            assert schemas.errors("server", message) == [], where
            continue
        refused_form = (
            isinstance(answer, dict)
            and answer.get("type") == "error"
            and answer.get("code") in ("bad_request", "unknown_type")
            and not answer.get("message", "").startswith(SEMANTIC_BAD_REQUESTS)
        )
        errors = schemas.errors("client", message)
        if refused_form:
            assert errors, f"{where}: the server refuses its form, the schema accepts it"
        else:
            assert errors == [], f"{where}: {errors}"


# -------------------------------------------------------------------------------------------
# The schemas themselves.


def test_schemas_share_their_common_definitions(schemas):
    for name in ("id", "epoch", "offset", "roomName"):
        assert schemas.client["$defs"][name] == schemas.server["$defs"][name], name


def test_error_codes_are_the_protocol_crates(schemas):
    assert schemas.server["$defs"]["errorCode"]["enum"] == error_codes_of_rust()


VALID_CLIENT = [
    {
        "type": "subscribe",
        "id": 2,
        "room": "chat:lobby",
        "since": {"epoch": "e8f1c2", "offset": 41},
    },
    {"type": "subscribe", "id": None, "room": "chat:lobby", "since": None, "token": None},
    {"type": "publish", "room": "chat:lobby", "data": None},
    {
        "type": "publish",
        "id": "x",
        "room": "r",
        "data": {},
        "echo": False,
        "ephemeral": True,
        "idempotency_key": "k",
    },
    {"type": "ping", "limit": "unused fields are ignored"},
    {"type": "rpc", "id": 8, "method": "orders.list"},
    {"type": "history", "room": "r", "limit": 4294967296, "reverse": True},
]

INVALID_CLIENT = [
    ("no type", {"id": 1, "room": "r"}),
    ("unknown type", {"type": "teleport"}),
    ("not an object", [1, 2]),
    ("subscribe without room", {"type": "subscribe", "id": 1}),
    ("room null", {"type": "unsubscribe", "room": None}),
    ("publish without data", {"type": "publish", "room": "r"}),
    (
        "since.offset a string",
        {"type": "subscribe", "room": "r", "since": {"epoch": "e", "offset": "1"}},
    ),
    ("since without epoch", {"type": "history", "room": "r", "since": {"offset": 1}}),
    ("since not an object", {"type": "history", "room": "r", "since": 5}),
    ("negative id", {"type": "ping", "id": -1}),
    ("id 2^53", {"type": "ping", "id": 9007199254740992}),
    ("fractional id", {"type": "ping", "id": 1.5}),
    ("id of 65 characters", {"type": "ping", "id": "x" * 65}),
    ("id an object", {"type": "ping", "id": {}}),
    ("empty idempotency_key", {"type": "publish", "room": "r", "data": 1, "idempotency_key": ""}),
    (
        "idempotency_key of 129 bytes",
        {"type": "publish", "room": "r", "data": 1, "idempotency_key": "k" * 129},
    ),
    ("echo a string", {"type": "publish", "room": "r", "data": 1, "echo": "yes"}),
    ("negative limit", {"type": "presence", "room": "r", "limit": -1}),
    ("refresh without token", {"type": "refresh", "id": 1}),
    ("rpc method a number", {"type": "rpc", "method": 7}),
]

INVALID_SERVER = [
    ("reply without id", {"type": "reply", "result": {}}),
    ("unknown push", {"type": "teleported", "room": "r"}),
    ("error with an unknown code", {"type": "error", "id": 1, "code": "oops", "message": "m"}),
    ("error without id", {"type": "error", "code": "bad_request", "message": "m"}),
    (
        "rate_limited without retry_after_ms",
        {"type": "error", "id": None, "code": "rate_limited", "message": "m"},
    ),
    (
        "retry_after_ms on another code",
        {"type": "error", "id": None, "code": "forbidden", "message": "m", "retry_after_ms": 5},
    ),
    ("message with epoch and no offset", {"type": "message", "room": "r", "epoch": "e", "data": 1}),
    ("message without data", {"type": "message", "room": "r", "epoch": "e", "offset": 1}),
    ("message to an invalid room", {"type": "message", "room": "a b", "data": 1}),
    (
        "member info not an object",
        {"type": "join", "room": "r", "member": {"user": "u", "connection": "c", "info": 5}},
    ),
    ("a field the protocol does not have", {"type": "pong", "id": 1, "extra": True}),
    (
        "welcome of version 2",
        {
            "type": "welcome",
            "connection": "c_1",
            "user": "u",
            "node": "n",
            "expires": None,
            "ping_interval": 25,
            "version": "2",
            "rooms": {},
        },
    ),
    (
        "welcome without expires",
        {
            "type": "welcome",
            "connection": "c_1",
            "user": "u",
            "node": "n",
            "ping_interval": 25,
            "version": "1",
            "rooms": {},
        },
    ),
    (
        "welcome room without offset",
        {
            "type": "welcome",
            "connection": "c_1",
            "user": "u",
            "node": "n",
            "expires": None,
            "ping_interval": 25,
            "version": "1",
            "rooms": {"r": {"epoch": "e"}},
        },
    ),
    ("negative offset", {"type": "subscribed", "room": "r", "epoch": "e", "offset": -1}),
    (
        "publication without data",
        {
            "type": "reply",
            "id": 1,
            "result": {"room": "r", "epoch": "e", "offset": 1, "publications": [{"offset": 1}]},
        },
    ),
    (
        "presence result without next_cursor",
        {"type": "reply", "id": 1, "result": {"members": [], "connections": 0, "users": 0}},
    ),
    ("refresh_required without expires", {"type": "refresh_required"}),
]


@pytest.mark.parametrize("command", VALID_CLIENT, ids=lambda c: c["type"])
def test_schema_accepts_valid_commands(command, schemas):
    assert schemas.errors("client", command) == []


@pytest.mark.parametrize("why,command", INVALID_CLIENT, ids=[w for w, _ in INVALID_CLIENT])
def test_schema_rejects_invalid_commands(why, command, schemas):
    assert schemas.errors("client", command), f"{why}: accepted {command}"


@pytest.mark.parametrize("why,message", INVALID_SERVER, ids=[w for w, _ in INVALID_SERVER])
def test_schema_rejects_invalid_server_messages(why, message, schemas):
    assert schemas.errors("server", message), f"{why}: accepted {message}"


def test_reply_definitions_tell_results_apart(schemas):
    """A publish result is not a valid subscribe reply: replies are checked per command."""
    publish_reply = {"type": "reply", "id": 1, "result": {"room": "r", "epoch": "e", "offset": 3}}
    assert schemas.errors("server", publish_reply) == []
    assert schemas.errors("server", publish_reply, "publishReply") == []
    assert schemas.errors("server", publish_reply, "subscribeReply")
    assert (
        schemas.errors("server", {"type": "reply", "id": 1, "result": {}}, "unsubscribeReply") == []
    )
    assert schemas.errors("server", {"type": "reply", "id": 1, "result": {}}, "historyReply")
