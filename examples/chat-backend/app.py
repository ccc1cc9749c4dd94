"""A chat backend for Switchboard's proxies (docs/proxies.md).

- GET /            a login form (and, once logged in, the link to the chat page: Switchboard's
                   demo page at SWITCHBOARD_URL/?auth=cookie); POST /login sets the `session`
                   cookie
- POST /switchboard/connect    the cookie's session -> the user
- POST /switchboard/subscribe  rooms of `chat:`; `chat:admin-*` only for the user `admin`
- POST /switchboard/publish    stores the message in SQLite, answers it with its row id
- POST /switchboard/rpc        `history`: the last messages of a room

Run: uvicorn app:app --port 8000 (CHAT_DB names the SQLite file, default chat.db).
"""

import html
import os
import secrets
import sqlite3
import time
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

DB = os.environ.get("CHAT_DB", "chat.db")
# Where the browser finds Switchboard (its demo page is the chat's front end).
SWITCHBOARD_URL = os.environ.get("SWITCHBOARD_URL", "http://127.0.0.1:8080")
MAX_TEXT = 500
HISTORY = 50

app = FastAPI(title="switchboard chat backend")


def db() -> sqlite3.Connection:
    conn = sqlite3.connect(DB)
    conn.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, user TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " room TEXT NOT NULL, user TEXT NOT NULL, text TEXT NOT NULL, at REAL NOT NULL)"
    )
    return conn


def refuse(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


@app.get("/", response_class=HTMLResponse)
def index(request: Request) -> str:
    session = request.cookies.get("session")
    user = None
    if session:
        with db() as conn:
            row = conn.execute("SELECT user FROM sessions WHERE id = ?", (session,)).fetchone()
        user = row[0] if row else None
    form = (
        '<form method="post" action="/login">'
        '<label>name <input name="name" pattern="[A-Za-z0-9_.-]{1,32}" required></label>'
        "<button>log in</button></form>"
    )
    if user is None:
        return "<!doctype html><title>chat login</title>" + form
    # The chat page is Switchboard's demo page in cookie mode: the browser sends this
    # host's `session` cookie with its WebSocket, and the connect proxy above names the user.
    chat = html.escape(f"{SWITCHBOARD_URL}/?auth=cookie", quote=True)
    return (
        "<!doctype html><title>chat</title>"
        f"<p>Logged in as <b>{html.escape(user)}</b>. "
        f'<a href="{chat}">Open the chat</a></p><p>Someone else?</p>' + form
    )


@app.post("/login")
async def login(request: Request):
    # A form post parsed by hand: no multipart dependency for one field.
    form = parse_qs((await request.body()).decode())
    name = (form.get("name") or [""])[0].strip()
    if not (1 <= len(name) <= 32) or not all(c.isalnum() or c in "_.-" for c in name):
        return HTMLResponse(f"bad name {html.escape(name)!r}", status_code=400)
    session = secrets.token_urlsafe(24)
    with db() as conn:
        conn.execute("INSERT INTO sessions VALUES (?, ?)", (session, name))
    response = RedirectResponse("/", status_code=303)
    response.set_cookie("session", session, httponly=True, samesite="lax")
    return response


@app.post("/switchboard/connect")
async def connect(request: Request):
    body = await request.json()
    cookie = SimpleCookie()
    cookie.load(body.get("headers", {}).get("cookie", ""))
    session = cookie["session"].value if "session" in cookie else None
    if session is None:
        return refuse("unauthorized", "log in first")
    with db() as conn:
        row = conn.execute("SELECT user FROM sessions WHERE id = ?", (session,)).fetchone()
    if row is None:
        return refuse("unauthorized", "unknown session")
    return {"user": row[0], "info": {"name": row[0]}}


@app.post("/switchboard/subscribe")
async def subscribe(request: Request):
    body = await request.json()
    room, user = body["room"], body["user"]
    if room.startswith("chat:admin-") and user != "admin":
        return refuse("permission_denied", "admins only")
    return {}


@app.post("/switchboard/publish")
async def publish(request: Request):
    body = await request.json()
    data = body.get("data")
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return refuse("bad_request", "a message is {\"text\": \"...\"}")
    if len(text) > MAX_TEXT:
        return refuse("bad_request", f"at most {MAX_TEXT} characters")
    with db() as conn:
        cur = conn.execute(
            "INSERT INTO messages (room, user, text, at) VALUES (?, ?, ?, ?)",
            (body["room"], body["user"], text, time.time()),
        )
        row_id = cur.lastrowid
    # The stored message, with its id, is what every subscriber receives.
    return {"data": {"text": text, "user": body["user"], "id": row_id}}


@app.post("/switchboard/rpc")
async def rpc(request: Request):
    body = await request.json()
    if body.get("method") != "history":
        return refuse("bad_request", f"unknown method {body.get('method')!r}")
    data = body.get("data") or {}
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str):
        return refuse("bad_request", "history needs {\"room\": ...}")
    if room.startswith("chat:admin-") and body["user"] != "admin":
        return refuse("permission_denied", "admins only")
    with db() as conn:
        rows = conn.execute(
            "SELECT id, user, text FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, HISTORY),
        ).fetchall()
    return {"data": [{"id": i, "user": u, "text": t} for i, u, t in reversed(rows)]}


@app.exception_handler(KeyError)
async def missing_field(_request: Request, exc: KeyError):
    return JSONResponse(refuse("bad_request", f"missing field {exc}"))
