// The demo chat page: the switchboard-client SDK (bundled as /demo/switchboard.js) in a page.
// Rooms, messages, presence with join/leave, a typing indicator (ephemeral publications),
// history on entering a room, and the connection's state with its recovery notices.
import { Switchboard } from '/demo/switchboard.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
const TYPING_EVERY = 2000;
const TYPING_SHOWN = 3500;

let client;
let current;
let lastTyping = 0;
/** room -> { sub, messages: Map(offset -> publication), members: Map(connection -> user), typing: Map(user -> timer), unread } */
const rooms = new Map();

function notice(text, kind = '') {
  const div = document.createElement('div');
  div.className = `notice ${kind}`;
  div.textContent = text;
  $('notices').append(div);
  setTimeout(() => div.remove(), 8000);
}

function setState(state, text = state) {
  const el = $('state');
  el.className = `state ${state}`;
  el.dataset.state = state;
  el.textContent = text;
}

async function devToken(name) {
  const response = await fetch('/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  if (response.status === 404) {
    throw new Error('This server has no development token endpoint: open this page as /?token=<jwt>.');
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.reason ?? `the token endpoint answered ${response.status}`);
  return body.token;
}

const cookieAuth = params.get('auth') === 'cookie';

async function start(name) {
  const token = params.get('token') ?? undefined;
  // A short backoff cap: a demo should come back quickly once the network does.
  const auth = token ? { token } : cookieAuth ? { cookie: true } : { getToken: () => devToken(name) };
  client = new Switchboard(wsUrl, { ...auth, minDelay: 500, maxDelay: 5000 });
  let wasDown = false;
  client.on('connected', (welcome) => {
    setState('connected', `connected as ${welcome.user}`);
    if (wasDown) notice('Reconnected', 'ok');
    wasDown = false;
    // Joins and leaves are not recovered: ask again who is here.
    for (const room of rooms.keys()) loadPresence(room);
  });
  client.on('reconnecting', (info) => {
    wasDown = true;
    setState('reconnecting', `reconnecting (attempt ${info.attempt})…`);
  });
  client.on('disconnected', (info) => {
    if (!info.reconnect) {
      setState('disconnected');
      notice(`Disconnected: ${info.name}${info.reason ? ` (${info.reason})` : ''}`, 'warn');
    }
  });
  client.on('error', (e) => console.warn('switchboard:', e));
  setState('connecting', 'connecting…');
  await client.connect();
  $('signin').hidden = true;
  $('chat').hidden = false;
  await joinRoom(params.get('room') ?? 'chat:lobby');
  $('text').focus();
}

function roomName(input) {
  const name = input.trim();
  return name.includes(':') ? name : `chat:${name}`;
}

async function joinRoom(room) {
  if (rooms.has(room)) return select(room);
  const sub = client.subscribe(room);
  const state = { sub, messages: new Map(), members: new Map(), typing: new Map(), unread: 0 };
  rooms.set(room, state);
  sub.on('message', (p) => onMessage(room, p));
  sub.on('join', (m) => {
    const present = [...state.members.values()].includes(m.user);
    state.members.set(m.connection, m.user);
    if (!present) system(room, `${m.user} joined`);
    renderPresence();
  });
  sub.on('leave', (m) => {
    state.members.delete(m.connection);
    if (![...state.members.values()].includes(m.user)) system(room, `${m.user} left`);
    renderPresence();
  });
  sub.on('recovered', ({ missed }) => {
    if (missed > 0) notice(`${room}: ${missed} missed message${missed === 1 ? '' : 's'} recovered`, 'ok');
  });
  sub.on('reset', () => {
    notice(`${room}: some messages were missed and could not be recovered; reloading the history`, 'warn');
    state.messages.clear();
    loadHistory(room);
  });
  sub.on('error', (e) => notice(`${room}: ${e.message}`, 'warn'));
  renderRooms();
  select(room);
  try {
    await sub.ready;
  } catch (e) {
    rooms.delete(room);
    notice(`Cannot join ${room}: ${e.message}`, 'warn');
    renderRooms();
    if (current === room) select(rooms.keys().next().value);
    return;
  }
  await Promise.all([loadHistory(room), loadPresence(room)]);
}

async function loadHistory(room) {
  const state = rooms.get(room);
  const history = await client.history(room, { limit: 50, reverse: true }).catch(() => null);
  if (!history || !state) return;
  for (const p of history.publications) {
    if (!state.messages.has(p.offset)) state.messages.set(p.offset, p);
  }
  if (room === current) renderMessages();
}

async function loadPresence(room) {
  const state = rooms.get(room);
  const page = await client.presence(room, { limit: 1000 }).catch(() => null);
  if (!page || !state) return;
  state.members = new Map(page.members.map((m) => [m.connection, m.user]));
  if (room === current) renderPresence();
}

function onMessage(room, p) {
  const state = rooms.get(room);
  if (!state) return;
  const user = p.from?.user ?? 'server';
  if (p.offset === undefined) {
    // Ephemeral: a typing indicator of someone else.
    if (p.data?.typing && p.from?.connection !== client.welcome?.connection) {
      clearTimeout(state.typing.get(user));
      state.typing.set(user, setTimeout(() => (state.typing.delete(user), renderTyping()), TYPING_SHOWN));
      renderTyping();
    }
    return;
  }
  clearTimeout(state.typing.get(user));
  state.typing.delete(user);
  state.messages.set(p.offset, p);
  if (room === current) {
    renderMessages();
    renderTyping();
  } else {
    state.unread++;
    renderRooms();
  }
}

function system(room, text) {
  const state = rooms.get(room);
  if (!state) return;
  // Shown after the message it follows; not stored in the room's history.
  state.notes = (state.notes ?? 0) + 1;
  state.messages.set(Math.floor(Math.max(0, ...state.messages.keys())) + state.notes * 1e-6, { system: text });
  if (room === current) renderMessages();
}

function select(room) {
  current = room;
  const state = rooms.get(room);
  if (state) state.unread = 0;
  $('room-title').textContent = room ?? '';
  renderRooms();
  renderMessages();
  renderPresence();
  renderTyping();
}

function renderRooms() {
  const list = $('rooms');
  list.replaceChildren(
    ...[...rooms.entries()].map(([room, state]) => {
      const li = document.createElement('li');
      if (room === current) li.className = 'current';
      const button = document.createElement('button');
      button.type = 'button';
      button.textContent = room;
      if (state.unread) {
        const unread = document.createElement('span');
        unread.className = 'unread';
        unread.textContent = state.unread;
        button.append(unread);
      }
      button.onclick = () => select(room);
      li.append(button);
      return li;
    }),
  );
}

function renderMessages() {
  const list = $('messages');
  const state = rooms.get(current);
  if (!state) return list.replaceChildren();
  const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
  list.replaceChildren(
    ...[...state.messages.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([offset, p]) => {
        const li = document.createElement('li');
        if (p.system) {
          li.className = 'system';
          li.textContent = p.system;
          return li;
        }
        li.className = 'message';
        li.dataset.offset = offset;
        const who = document.createElement('span');
        who.className = 'who';
        who.textContent = p.from?.user ?? 'server';
        const text = document.createElement('span');
        text.className = 'text';
        text.textContent = typeof p.data?.text === 'string' ? p.data.text : JSON.stringify(p.data);
        li.append(who, text);
        return li;
      }),
  );
  if (stick) list.scrollTop = list.scrollHeight;
}

function renderPresence() {
  const state = rooms.get(current);
  const users = [...new Set(state ? state.members.values() : [])].sort();
  $('count').textContent = `(${users.length})`;
  $('presence').replaceChildren(
    ...users.map((user) => {
      const li = document.createElement('li');
      li.textContent = user;
      return li;
    }),
  );
}

function renderTyping() {
  const state = rooms.get(current);
  const users = state ? [...state.typing.keys()] : [];
  $('typing').textContent = users.length ? `${users.join(', ')} ${users.length === 1 ? 'is' : 'are'} typing…` : '';
}

$('signin').addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = $('name').value.trim();
  $('signin-error').textContent = '';
  try {
    if (!params.get('token')) await devToken(name); // a bad name is said here, not by a retry loop
    sessionStorage.setItem('switchboard-demo-name', name);
    await start(name);
  } catch (e) {
    client?.close();
    setState('disconnected');
    $('signin-error').textContent = e.message;
  }
});

$('join-room').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('room-name');
  if (!input.value.trim()) return;
  joinRoom(roomName(input.value));
  input.value = '';
});

$('send').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('text');
  const text = input.value.trim();
  if (!text || !current) return;
  input.value = '';
  lastTyping = 0;
  // Sent while offline, it waits in the SDK's queue and goes out after the reconnect.
  client.publish(current, { text }).catch((e) => notice(`Not sent: ${e.message}`, 'warn'));
});

$('text').addEventListener('input', () => {
  const now = Date.now();
  if (!current || client?.state !== 'connected' || now - lastTyping < TYPING_EVERY) return;
  lastTyping = now;
  client.publish(current, { typing: true }, { ephemeral: true }).catch(() => {});
});

const remembered = sessionStorage.getItem('switchboard-demo-name');
if (remembered) $('name').value = remembered;

// `/?auth=cookie`: the application's session cookie signs in (the server's connect proxy
// names the user, docs/proxies.md), so there is no name to ask for.
if (cookieAuth) {
  start('').catch((e) => {
    client?.close();
    setState('disconnected');
    $('signin-error').textContent = e.message;
  });
}
