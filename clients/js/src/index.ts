// switchboard-client: the browser and Node client of the Switchboard protocol, version 1
// (docs/protocol.md). No runtime dependencies: WebSocket, fetch and timers are the platform's.
import { CLOSE_CODES } from './close-codes.js';

export { CLOSE_CODES };

/** A position in a room's stream (docs/protocol.md 4.4). */
export interface Position {
  epoch: string;
  offset: number;
}

/** Who published: the connection's user, its id and the token's `info`. */
export interface Member {
  user: string;
  connection: string;
  info?: Record<string, unknown>;
}

/** One publication of a room, live or recovered. Ephemeral ones have no epoch and offset. */
export interface Publication {
  room: string;
  data: unknown;
  from?: Member;
  epoch?: string;
  offset?: number;
  /** True for a publication delivered from the subscribe reply (recovery), not live. */
  recovered?: boolean;
}

/** The server's `welcome` (docs/protocol.md 2.3). */
export interface Welcome {
  connection: string;
  user: string;
  node: string;
  expires: number | null;
  ping_interval: number;
  version: string;
  rooms: Record<string, Position>;
}

/** The result of `subscribe` (docs/protocol.md 4.2). */
export interface SubscribeResult extends Position {
  room: string;
  recovered?: boolean;
  publications: Array<Omit<Publication, 'room'>>;
}

/** The result of a stored publish; an ephemeral publish has `room` only. */
export interface PublishResult {
  room: string;
  epoch?: string;
  offset?: number;
}

/** A page of `presence` (docs/protocol.md 6.1). */
export interface PresenceResult {
  members: Member[];
  next_cursor: string | null;
  connections: number;
  users: number;
}

/** A page of `history` (docs/protocol.md 6.3). */
export interface HistoryResult extends Position {
  publications: Array<Omit<Publication, 'room'>>;
}

/** Why the connection ended, as given to `disconnected` and `reconnecting` handlers. */
export interface CloseInfo {
  code: number;
  /** The close-code table's name (`token_expired`, …), `abnormal` for 1006, or `unknown`. */
  name: string;
  reason: string;
  /** Whether the client reconnects. */
  reconnect: boolean;
}

/** An `error` answer of the server, or a failure of the client (`timeout`, `disconnected`, …). */
export class SwitchboardError extends Error {
  /** The protocol's error code (docs/protocol.md 7.1) or one of the client's own:
   * `timeout`, `disconnected`, `queue_full`, `closed`, `listen_only`. */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'SwitchboardError';
    this.code = code;
  }
}

/** A `WebSocket` constructor: the browser's, Node 22's global, or the `ws` package's. */
export type WebSocketClass = new (url: string, protocols?: string | string[]) => WebSocket;

/** Options of [`Switchboard`]. Give `token` or `getToken` (or both: `token` is used first),
 * or `cookie`. */
export interface Options {
  /** A fixed token. */
  token?: string;
  /** No token: the server's connect proxy (docs/proxies.md) names the user from the request's
   * cookies, which browsers send with the WebSocket handshake to the server's host (and with
   * a same-origin SSE request). A token given as well wins. */
  cookie?: boolean;
  /** Send the token as the connection's first message (`{"type": "auth", "token"}`,
   * docs/protocol.md 2.2) instead of in the handshake: for servers with
   * `auth.first_message = true`, so that the token is in no URL and no header a proxy logs.
   * WebSocket only. */
  firstMessage?: boolean;
  /** Called for a token at the first connect, after 4501, after a refused handshake and
   * `refreshBefore` seconds before the token expires. */
  getToken?: () => Promise<string>;
  /** `websocket` (default) or `sse` (listen-only, docs/protocol.md 8). */
  transport?: 'websocket' | 'sse';
  /** The WebSocket class, where there is no global one (Node 20: the `ws` package's). */
  WebSocket?: WebSocketClass;
  /** The fetch function for `sse` (default: the global one). */
  fetch?: typeof fetch;
  /** Milliseconds a command (and `connect`) may take, offline wait included. Default 10 000. */
  timeout?: number;
  /** Commands issued while disconnected: `queue` (default) waits for the connection, within
   * the timeout; `fail` rejects at once with `disconnected`. */
  offline?: 'queue' | 'fail';
  /** At most this many commands wait offline; more are rejected with `queue_full`. Default 100. */
  queueLimit?: number;
  /** Reconnect backoff: the n-th retry waits random(0, min(maxDelay, minDelay × 2^n)) ms. */
  minDelay?: number;
  /** The cap of the backoff, in ms. Default 30 000. */
  maxDelay?: number;
  /** Seconds before `expires` at which a new token is asked for. Default 30. */
  refreshBefore?: number;
  /** Random numbers in [0, 1) for the jitter (tests). */
  random?: () => number;
}

/** The connection's state. */
export type State = 'disconnected' | 'connecting' | 'connected' | 'reconnecting';

/** The events of [`Switchboard`] and their handler arguments. */
export interface ClientEvents {
  connected: (welcome: Welcome) => void;
  disconnected: (info: CloseInfo) => void;
  reconnecting: (info: { attempt: number; delay: number } & CloseInfo) => void;
  error: (error: Error) => void;
  /** Publications of rooms without a `Subscription` (the personal room, the `rooms` claim). */
  message: (publication: Publication) => void;
  /** A token was exchanged on the open connection (`refresh`). */
  refreshed: (expires: number | null) => void;
}

/** The events of a [`Subscription`]. */
export interface SubscriptionEvents {
  message: (publication: Publication) => void;
  join: (member: Member) => void;
  leave: (member: Member) => void;
  /** After a reconnect, what was missed arrived (as `message` events, before this one). */
  recovered: (info: { epoch: string; offset: number; missed: number }) => void;
  /** What was missed cannot be given: reload the room's state (e.g. with `history`). */
  reset: (info: { epoch: string; offset: number }) => void;
  /** Subscribing again after a reconnect was refused; the subscription is over. */
  error: (error: SwitchboardError) => void;
}

type Handler = (...args: never[]) => void;

/** A tiny event registry: `on` returns the function that removes the handler. */
class Emitter<E> {
  private handlers: { [K in keyof E]?: Handler[] } = {};
  /** Adds a handler; returns a function that removes it. */
  on<K extends keyof E>(event: K, fn: E[K]): () => void {
    const list = (this.handlers[event] ??= []);
    list.push(fn as Handler);
    return () => {
      const i = list.indexOf(fn as Handler);
      if (i >= 0) list.splice(i, 1);
    };
  }
  protected emit<K extends keyof E>(event: K, ...args: unknown[]): void {
    for (const fn of (this.handlers[event] ?? []).slice()) {
      try {
        (fn as (...a: unknown[]) => void)(...args);
      } catch (e) {
        // A throwing handler must not break the reading loop; it is reported asynchronously.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

interface Pending {
  command: Record<string, unknown>;
  resolve: (value: never) => void;
  reject: (error: SwitchboardError) => void;
  timer: ReturnType<typeof setTimeout>;
  /** Whether it may be sent again after the connection dropped with it in flight. */
  retry: boolean;
}

const noop = () => {};

/** Whether a close code is final (docs/protocol.md 7.2: the table, else 4000–4499 are final). */
export function reconnects(code: number): boolean {
  const entry = CLOSE_CODES[code];
  if (entry) return entry[1];
  return !(code >= 4000 && code < 4500);
}

function closeInfo(code: number, reason: string, reconnect: boolean): CloseInfo {
  const name = CLOSE_CODES[code]?.[0] ?? (code === 1006 ? 'abnormal' : 'unknown');
  return { code, name, reason, reconnect };
}

function randomKey(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  return c?.randomUUID ? c.randomUUID() : Math.random().toString(36).slice(2) + Date.now().toString(36);
}

/** One room's subscription: its events, and its position kept for recovery. */
export class Subscription extends Emitter<SubscriptionEvents> {
  /** The room. */
  readonly room: string;
  /** Resolves with the first subscribe reply; rejects when the server refuses it. */
  readonly ready: Promise<SubscribeResult>;
  /** The epoch of the last publication processed (or of the subscribe reply). */
  epoch: string | undefined;
  /** The offset of the last publication processed. */
  offset: number | undefined;
  /** `subscribing`, `subscribed` or `unsubscribed`. */
  state: 'subscribing' | 'subscribed' | 'unsubscribed' = 'subscribing';
  /** @internal */ settle!: { resolve: (r: SubscribeResult) => void; reject: (e: SwitchboardError) => void };
  /** @internal */ buffered: Publication[] | null = [];
  /** @internal */ first = true;
  private readonly client: Switchboard;

  /** @internal */
  constructor(client: Switchboard, room: string, since?: Position) {
    super();
    this.client = client;
    this.room = room;
    this.epoch = since?.epoch;
    this.offset = since?.offset;
    this.ready = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    // The application may never await `ready`; a refusal also arrives as a rejection there.
    this.ready.catch(noop);
  }

  /** Ends the subscription (the server is told when connected). */
  unsubscribe(): Promise<void> {
    return this.client.unsubscribe(this.room);
  }

  /** `publish` to this room. */
  publish(data: unknown, options?: PublishOptions): Promise<PublishResult> {
    return this.client.publish(this.room, data, options);
  }

  /** `presence` of this room. */
  presence(options?: PresenceOptions): Promise<PresenceResult> {
    return this.client.presence(this.room, options);
  }

  /** `history` of this room. */
  history(options?: HistoryOptions): Promise<HistoryResult> {
    return this.client.history(this.room, options);
  }

  /** The position to resume from, if any publication (or reply) was seen. */
  get position(): Position | undefined {
    return this.epoch !== undefined && this.offset !== undefined
      ? { epoch: this.epoch, offset: this.offset }
      : undefined;
  }

  /** @internal Delivers a publication once, in order: drops what was already processed. */
  deliver(p: Publication): void {
    if (this.state === 'unsubscribed') return;
    if (this.buffered) {
      this.buffered.push(p);
      return;
    }
    if (p.offset !== undefined && p.epoch !== undefined) {
      if (p.epoch === this.epoch && this.offset !== undefined && p.offset <= this.offset) return;
      if (this.epoch !== undefined && p.epoch !== this.epoch) {
        // Another stream (4.4: "treat any message whose epoch differs as reload").
        this.epoch = p.epoch;
        this.offset = p.offset;
        this.emit('reset', { epoch: p.epoch, offset: p.offset });
        this.emit('message', p);
        return;
      }
      this.epoch = p.epoch;
      this.offset = p.offset;
    }
    this.emit('message', p);
  }

  /** @internal Applies a subscribe reply (first, or after a reconnect). */
  subscribed(r: SubscribeResult, resumed: boolean): void {
    const buffered = this.buffered ?? [];
    this.buffered = null;
    this.state = 'subscribed';
    const wasFirst = this.first;
    this.first = false;
    if (r.recovered === false) {
      this.epoch = r.epoch;
      this.offset = r.offset;
      if (wasFirst) this.settle.resolve(r);
      this.emit('reset', { epoch: r.epoch, offset: r.offset });
    } else {
      // Recovered, the reply's epoch goes on from `since` even when it is a new one (a
      // stream forked at a Redis failover, protocol 6.4).
      this.epoch = r.epoch;
      if (r.recovered !== true) this.offset = r.offset;
      if (wasFirst) this.settle.resolve(r);
      for (const p of r.publications) this.deliver({ ...p, room: this.room, epoch: r.epoch, recovered: true });
      // Nothing later than the reply's position was missed, whatever came before.
      if (this.epoch === r.epoch && (this.offset === undefined || this.offset < r.offset)) this.offset = r.offset;
      if (resumed && r.recovered) {
        this.emit('recovered', { epoch: r.epoch, offset: r.offset, missed: r.publications.length });
      }
    }
    for (const p of buffered) this.deliver(p);
  }

  /** @internal */
  refused(e: SwitchboardError): void {
    this.state = 'unsubscribed';
    this.buffered = null;
    if (this.first) this.settle.reject(e);
    else this.emit('error', e);
  }

  /** @internal */
  presenceEvent(kind: 'join' | 'leave', member: Member): void {
    if (this.state !== 'unsubscribed') this.emit(kind, member);
  }
}

/** Per-command overrides of the client's `timeout` and `offline` options. */
export interface CallOptions {
  /** Milliseconds this command may take, offline wait included. */
  timeout?: number;
  /** While disconnected: `queue` (wait for the connection) or `fail` (reject at once). */
  offline?: 'queue' | 'fail';
}

/** Options of `publish`. */
export interface PublishOptions extends CallOptions {
  /** Not stored, not numbered, never recovered (typing indicators). */
  ephemeral?: boolean;
  /** Makes retries safe; the client makes one for every stored publish when not given. */
  idempotencyKey?: string;
  /** `false`: this connection does not receive its own publication. */
  echo?: boolean;
}

/** Options of `presence`. */
export interface PresenceOptions extends CallOptions {
  cursor?: string;
  limit?: number;
}

/** Options of `history`. */
export interface HistoryOptions extends CallOptions {
  since?: Position;
  limit?: number;
  reverse?: boolean;
}

/**
 * A connection to a Switchboard server that reconnects by itself (exponential backoff with
 * full jitter), resubscribes every room with `since`, and keeps commands while offline.
 */
export class Switchboard extends Emitter<ClientEvents> {
  /** The connection's state. */
  state: State = 'disconnected';
  /** The last `welcome`, while connected. */
  welcome: Welcome | undefined;
  private readonly url: string;
  private readonly o: Required<Omit<Options, 'token' | 'getToken' | 'WebSocket' | 'fetch'>> & Options;
  private token: string | undefined;
  private freshToken = false;
  private ws: WebSocket | undefined;
  private sse: AbortController | undefined;
  private cursor: string | undefined;
  private nextId = 1;
  private readonly inflight = new Map<number, Pending>();
  private readonly queue: Pending[] = [];
  private readonly subs = new Map<string, Subscription>();
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshing = false;
  private liveness: ReturnType<typeof setInterval> | undefined;
  private lastSeen = 0;
  private waiters: Array<{ resolve: (w: Welcome) => void; reject: (e: Error) => void }> = [];
  private generation = 0;

  /** `url` is the server's WebSocket URL (`ws://host:8080/ws`) or, for `sse`, its `/sse` URL. */
  constructor(url: string, options: Options) {
    super();
    this.url = url;
    this.o = {
      transport: 'websocket',
      timeout: 10_000,
      offline: 'queue',
      queueLimit: 100,
      minDelay: 500,
      maxDelay: 30_000,
      refreshBefore: 30,
      random: Math.random,
      cookie: false,
      firstMessage: false,
      ...options,
    };
    this.token = options.token;
    if (!options.token && !options.getToken && !options.cookie) {
      throw new TypeError('Switchboard: give `token`, `getToken` or `cookie: true`');
    }
  }

  /** Connects (and keeps reconnecting until `close`); resolves with the first `welcome`. */
  connect(): Promise<Welcome> {
    if (this.state === 'connected' && this.welcome) return Promise.resolve(this.welcome);
    const p = new Promise<Welcome>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new SwitchboardError('timeout', `no welcome within ${this.o.timeout} ms`)),
        this.o.timeout,
      );
      this.waiters.push({
        resolve: (w) => (clearTimeout(timer), resolve(w)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
    });
    if (this.state === 'disconnected') {
      this.attempt = 0;
      this.state = 'connecting';
      void this.open();
    }
    return p;
  }

  /** Closes the connection for good: no reconnect; waiting commands fail with `closed`. */
  close(): void {
    const wasOpen = this.state !== 'disconnected';
    this.generation++;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    clearTimeout(this.refreshTimer);
    clearInterval(this.liveness);
    this.sse?.abort();
    this.sse = undefined;
    if (this.ws) {
      this.detach(this.ws);
      this.ws.close(1000);
      this.ws = undefined;
    }
    this.state = 'disconnected';
    this.welcome = undefined;
    this.failAll('closed', 'the client was closed');
    if (wasOpen) this.emit('disconnected', closeInfo(1000, 'closed by the client', false));
  }

  /** Subscribes to `room`; with `since`, what was missed after that position comes first. */
  subscribe(room: string, options: { since?: Position } = {}): Subscription {
    if (this.subs.has(room)) throw new SwitchboardError('already_subscribed', `already subscribed to '${room}'`);
    const sub = new Subscription(this, room, options.since);
    this.subs.set(room, sub);
    if (this.state === 'connected') {
      if (this.o.transport === 'sse') this.reopenSse();
      else this.sendSubscribe(sub);
    }
    return sub;
  }

  /** The subscription of `room`, if any. */
  getSubscription(room: string): Subscription | undefined {
    return this.subs.get(room);
  }

  /** Ends the subscription of `room`. */
  async unsubscribe(room: string): Promise<void> {
    const sub = this.subs.get(room);
    if (!sub) return;
    this.subs.delete(room);
    sub.state = 'unsubscribed';
    if (this.o.transport === 'sse') {
      if (this.state === 'connected') this.reopenSse();
      return;
    }
    if (this.state === 'connected') {
      // A connection that ends meanwhile ends the subscription on the server too.
      await this.request({ type: 'unsubscribe', room }, false).catch((e: SwitchboardError) => {
        if (!['not_subscribed', 'disconnected', 'closed'].includes(e.code)) throw e;
      });
    }
  }

  /** Publishes `data` to `room`. A stored publish carries an idempotency key (made when not
   * given), so that resending it after a reconnect never publishes it twice. */
  publish(room: string, data: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    const command: Record<string, unknown> = { type: 'publish', room, data };
    if (options.ephemeral) command.ephemeral = true;
    else command.idempotency_key = options.idempotencyKey ?? randomKey();
    if (options.echo === false) command.echo = false;
    return this.request(command, !options.ephemeral, options);
  }

  /** Who is subscribed to `room` (one page). */
  presence(room: string, options: PresenceOptions = {}): Promise<PresenceResult> {
    const { timeout, offline, ...fields } = options;
    return this.request({ type: 'presence', room, ...fields }, true, { timeout, offline });
  }

  /** The retained publications of `room`. */
  history(room: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    const { timeout, offline, ...fields } = options;
    return this.request({ type: 'history', room, ...fields }, true, { timeout, offline });
  }

  /** Calls `method` of the application backend (docs/protocol.md 5.1); resolves with its `data`. */
  async rpc(method: string, data?: unknown, options?: CallOptions): Promise<unknown> {
    const r = await this.request<{ data: unknown }>({ type: 'rpc', method, data: data ?? null }, false, options);
    return r.data;
  }

  /** Sends a command with an id; resolves with its `result`. `retry`: resent after a reconnect
   * when the connection dropped before the answer (reads, and publishes with their key). */
  private request<T>(command: Record<string, unknown>, retry: boolean, call: CallOptions = {}): Promise<T> {
    const timeout = call.timeout ?? this.o.timeout;
    return new Promise<T>((resolve, reject) => {
      if (this.o.transport === 'sse') {
        return reject(new SwitchboardError('listen_only', `'${command.type}' needs the websocket transport`));
      }
      if (this.state === 'disconnected' && !this.retryTimer) {
        return reject(new SwitchboardError('disconnected', 'not connected: call connect() first'));
      }
      const connected = this.state === 'connected';
      if (!connected && (call.offline ?? this.o.offline) === 'fail') {
        return reject(new SwitchboardError('disconnected', `not connected (${this.state})`));
      }
      if (!connected && this.queue.length >= this.o.queueLimit) {
        return reject(new SwitchboardError('queue_full', `${this.o.queueLimit} commands already wait for the connection`));
      }
      const pending: Pending = {
        command,
        resolve: resolve as (v: never) => void,
        reject,
        retry,
        timer: setTimeout(() => {
          const i = this.queue.indexOf(pending);
          if (i >= 0) this.queue.splice(i, 1);
          for (const [id, p] of this.inflight) if (p === pending) this.inflight.delete(id);
          reject(new SwitchboardError('timeout', `'${command.type}' was not answered within ${timeout} ms`));
        }, timeout),
      };
      if (connected) this.transmit(pending);
      else this.queue.push(pending);
    });
  }

  private transmit(p: Pending): void {
    const id = this.nextId++;
    this.inflight.set(id, p);
    this.send({ ...p.command, id });
  }

  private send(message: Record<string, unknown>): void {
    this.ws?.send(JSON.stringify(message));
  }

  private failAll(code: string, message: string): void {
    for (const p of [...this.inflight.values(), ...this.queue.splice(0)]) {
      clearTimeout(p.timer);
      p.reject(new SwitchboardError(code, message));
    }
    this.inflight.clear();
    for (const w of this.waiters.splice(0)) w.reject(new SwitchboardError(code, message));
  }

  private async getToken(): Promise<string> {
    if (this.token && !this.freshToken) return this.token;
    if (!this.o.getToken) return this.token ?? '';
    this.token = await this.o.getToken();
    this.freshToken = false;
    return this.token;
  }

  private async open(): Promise<void> {
    const generation = ++this.generation;
    let token: string;
    try {
      token = await this.getToken();
    } catch (e) {
      if (generation !== this.generation) return;
      this.emit('error', e instanceof Error ? e : new Error(String(e)));
      this.freshToken = true;
      return this.dropped(closeInfo(1006, 'getToken failed', true), false);
    }
    if (generation !== this.generation) return;
    if (this.o.transport === 'sse') return this.openSse(token, generation);
    const Ws = this.o.WebSocket ?? (globalThis as { WebSocket?: WebSocketClass }).WebSocket;
    if (!Ws) throw new TypeError('Switchboard: no WebSocket class: pass the `WebSocket` option');
    let ws: WebSocket;
    try {
      // No token (`cookie`): the cookies the handshake carries say who connects. With
      // `firstMessage` the token goes in the first message instead.
      const inHandshake = token && !this.o.firstMessage;
      ws = new Ws(this.url, inHandshake ? ['bearer.' + token, 'switchboard.v1'] : ['switchboard.v1']);
    } catch (e) {
      this.failAll('closed', String(e));
      this.state = 'disconnected';
      throw e;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      // The server answers `auth` with the `welcome` (or closes with 4001).
      if (this.o.firstMessage) ws.send(JSON.stringify({ type: 'auth', token }));
    };
    ws.onmessage = (event: MessageEvent) => {
      this.lastSeen = Date.now();
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(String(event.data));
      } catch {
        return;
      }
      this.handle(message);
    };
    ws.onerror = noop;
    ws.onclose = (event: CloseEvent) => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      // A handshake that never opened may be a 401: a new token first (docs/protocol.md 2.1).
      if (!opened) this.freshToken = true;
      const code = event.code || 1006;
      let again = reconnects(code);
      if (code === 4501) {
        // Only a new token helps; without getToken the same one would be refused again.
        again = !!this.o.getToken;
        this.freshToken = true;
      }
      this.dropped(closeInfo(code, event.reason ?? '', again), opened);
    };
  }

  private detach(ws: WebSocket): void {
    ws.onopen = ws.onmessage = ws.onclose = null;
    // Closing a socket that is still connecting reports an error (the `ws` package throws it
    // when nobody listens): nothing to do with it.
    ws.onerror = noop;
  }

  /** The connection ended: requeue what may be resent, then reconnect or stop. */
  private dropped(info: CloseInfo, wasConnected: boolean): void {
    clearTimeout(this.refreshTimer);
    clearInterval(this.liveness);
    this.refreshing = false;
    this.welcome = undefined;
    const requeue: Pending[] = [];
    for (const p of this.inflight.values()) {
      if (p.retry && info.reconnect) requeue.push(p);
      else {
        clearTimeout(p.timer);
        p.reject(new SwitchboardError('disconnected', `the connection closed (${info.code} ${info.name}) before the answer`));
      }
    }
    this.inflight.clear();
    this.queue.unshift(...requeue);
    for (const sub of this.subs.values()) {
      if (sub.state === 'subscribed') {
        sub.state = 'subscribing';
        sub.buffered = [];
      }
    }
    if (wasConnected) this.emit('disconnected', info);
    if (!info.reconnect) {
      this.state = 'disconnected';
      this.failAll('disconnected', `the connection closed for good (${info.code} ${info.name})`);
      return;
    }
    this.state = 'reconnecting';
    const delay = Math.floor(this.o.random() * Math.min(this.o.maxDelay, this.o.minDelay * 2 ** this.attempt));
    this.attempt++;
    this.emit('reconnecting', { ...info, attempt: this.attempt, delay });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.open();
    }, delay);
  }

  private welcomed(w: Welcome): void {
    this.welcome = w;
    this.state = 'connected';
    this.attempt = 0;
    this.scheduleRefresh(w.expires);
    if (this.o.transport !== 'sse') this.watch(w.ping_interval);
    this.emit('connected', w);
    for (const waiter of this.waiters.splice(0)) waiter.resolve(w);
  }

  private handle(m: Record<string, unknown>): void {
    const type = m.type;
    if (type === 'reply' || type === 'error') {
      if (typeof m.id !== 'number') {
        if (type === 'error') this.emit('error', new SwitchboardError(String(m.code), String(m.message)));
        return;
      }
      const p = this.inflight.get(m.id);
      if (!p) return;
      this.inflight.delete(m.id);
      clearTimeout(p.timer);
      if (type === 'reply') p.resolve(m.result as never);
      else p.reject(new SwitchboardError(String(m.code), String(m.message)));
      return;
    }
    if (type === 'welcome') {
      const w = m as unknown as Welcome;
      // Resubscribe before anything queued: queued publishes may need the subscription, and
      // the server answers in order (docs/protocol.md 1).
      for (const sub of this.subs.values()) this.sendSubscribe(sub, w.rooms?.[sub.room]);
      this.welcomed(w);
      for (const p of this.queue.splice(0)) this.transmit(p);
      return;
    }
    const room = m.room as string;
    const sub = this.subs.get(room);
    if (type === 'message') {
      const p = m as unknown as Publication & { type?: string };
      delete p.type;
      if (sub) sub.deliver(p);
      else this.emit('message', p);
    } else if (type === 'join' || type === 'leave') {
      sub?.presenceEvent(type, m.member as Member);
    } else if (type === 'subscribed' && sub) {
      // A gap the server could not fill or a stream going on in a new epoch (4.4), or a
      // server-side subscription.
      sub.subscribed({ room, epoch: m.epoch as string, offset: m.offset as number, recovered: m.recovered as boolean | undefined, publications: [] }, true);
    } else if (type === 'unsubscribed' && sub) {
      this.subs.delete(room);
      sub.refused(new SwitchboardError('unsubscribed', `unsubscribed from '${room}' by the server`));
    } else if (type === 'refresh_required') {
      void this.refresh();
    }
  }

  /** Subscribes `sub` on the open connection, with `since` when it has a position. A room
   * the server already subscribed at connect (`welcome.rooms`) is unsubscribed first to be
   * resumed with `since` (docs/protocol.md 4.4), or taken over as it is. */
  private sendSubscribe(sub: Subscription, atConnect?: Position): void {
    const since = sub.position;
    const resumed = !sub.first;
    if (atConnect) {
      if (!since) {
        sub.subscribed({ room: sub.room, ...atConnect, publications: [] }, resumed);
        return;
      }
      this.send({ type: 'unsubscribe', room: sub.room });
    }
    const command: Record<string, unknown> = { type: 'subscribe', room: sub.room };
    if (since) command.since = since;
    const p = new Promise<SubscribeResult>((resolve, reject) => {
      const pending: Pending = { command, resolve: resolve as (v: never) => void, reject, retry: false, timer: setTimeout(noop, 0) };
      this.transmit(pending);
    });
    p.then(
      (r) => this.subs.get(sub.room) === sub && sub.subscribed(r, resumed),
      (e: SwitchboardError) => {
        if (e.code === 'disconnected') return; // resubscribed on the next connection
        if (this.subs.get(sub.room) === sub) this.subs.delete(sub.room);
        sub.refused(e);
      },
    );
  }

  /** Browsers cannot see WebSocket pings, and a connection whose network vanished may never
   * report it: an application ping every `ping_interval` (it also keeps the server's idle
   * timeout away), and a connection from which nothing arrived for two intervals is given up
   * and replaced (docs/protocol.md 3). */
  private watch(pingInterval: number): void {
    clearInterval(this.liveness);
    const every = Math.max(1, pingInterval || 25) * 1000;
    this.lastSeen = Date.now();
    this.liveness = setInterval(() => {
      const ws = this.ws;
      if (!ws || this.state !== 'connected') return;
      if (Date.now() - this.lastSeen > 2 * every) {
        this.ws = undefined;
        this.detach(ws);
        ws.close();
        this.dropped(closeInfo(1006, 'nothing received from the server for two ping intervals', true), true);
        return;
      }
      this.send({ type: 'ping' });
    }, every);
  }

  private scheduleRefresh(expires: number | null): void {
    clearTimeout(this.refreshTimer);
    // A listen-only stream has no `refresh`: it gets its new token when it reconnects.
    if (expires === null || !this.o.getToken || this.o.transport === 'sse') return;
    const ms = Math.max(0, (expires - this.o.refreshBefore) * 1000 - Date.now());
    // Timers beyond 2^31 ms fire at once; such tokens are refreshed when the server asks.
    if (ms < 2 ** 31) this.refreshTimer = setTimeout(() => void this.refresh(), ms);
  }

  /** Exchanges the token on the open connection (docs/protocol.md 2.3). */
  private async refresh(): Promise<void> {
    if (this.refreshing || !this.o.getToken || this.state !== 'connected') return;
    this.refreshing = true;
    const generation = this.generation;
    try {
      const token = await this.o.getToken();
      if (generation !== this.generation) return;
      this.token = token;
      const r = await this.request<{ expires: number | null }>({ type: 'refresh', token }, false);
      this.scheduleRefresh(r.expires);
      this.emit('refreshed', r.expires);
    } catch (e) {
      // The server closes with 4501 at `exp`; the reconnect asks for a token again.
      this.freshToken = true;
      this.emit('error', e instanceof Error ? e : new Error(String(e)));
    } finally {
      this.refreshing = false;
    }
  }

  // ---- listen-only Server-Sent Events (docs/protocol.md 8) ----

  private reopenSse(): void {
    this.sse?.abort();
    this.sse = undefined;
    void this.open();
  }

  private async openSse(token: string, generation: number): Promise<void> {
    const doFetch = this.o.fetch ?? globalThis.fetch;
    const url = new URL(this.url);
    for (const room of this.subs.keys()) url.searchParams.append('room', room);
    if (this.cursor) url.searchParams.set('since', this.cursor);
    const abort = new AbortController();
    this.sse = abort;
    let connected = false;
    let info = closeInfo(1006, 'the stream ended', true);
    try {
      const response = await doFetch(url, {
        headers: token ? { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' } : { Accept: 'text/event-stream' },
        signal: abort.signal,
      });
      if (response.status === 401) this.freshToken = true;
      if (!response.ok || !response.body) {
        // 4xx other than 401/429 will not get better by retrying.
        const final = response.status >= 400 && response.status < 500 && response.status !== 401 && response.status !== 429;
        info = { code: response.status, name: 'http', reason: `HTTP ${response.status}`, reconnect: !final };
      } else {
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        let event = 'message';
        let data = '';
        let id: string | undefined;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let nl: number;
          while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
            const line = buffer.slice(0, nl);
            buffer = buffer.slice(nl + (buffer[nl] === '\r' && buffer[nl + 1] === '\n' ? 2 : 1));
            if (line === '') {
              if (data) connected = this.sseEvent(event, data.slice(0, -1), id, generation) || connected;
              event = 'message';
              data = '';
              id = undefined;
            } else if (line[0] !== ':') {
              const colon = line.indexOf(':');
              const field = colon < 0 ? line : line.slice(0, colon);
              const v = colon < 0 ? '' : line.slice(colon + (line[colon + 1] === ' ' ? 2 : 1));
              if (field === 'event') event = v;
              else if (field === 'data') data += v + '\n';
              else if (field === 'id') id = v;
            }
          }
        }
      }
    } catch {
      // aborted or a network error; handled below
    }
    if (generation !== this.generation || abort.signal.aborted) return;
    this.sse = undefined;
    this.dropped(info, connected);
  }

  /** Handles one SSE event; returns whether it was the `welcome`. */
  private sseEvent(event: string, data: string, id: string | undefined, generation: number): boolean {
    if (generation !== this.generation) return false;
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(data);
    } catch {
      return false;
    }
    if (event === 'welcome') {
      for (const sub of this.subs.values()) {
        sub.buffered = null;
        sub.state = 'subscribed';
        if (sub.first) {
          sub.first = false;
          sub.settle.resolve({ room: sub.room, epoch: sub.epoch ?? '', offset: sub.offset ?? 0, publications: [] });
        }
      }
      this.welcomed({ rooms: {}, node: '', ping_interval: 15, version: '1', ...(m as object) } as Welcome);
      return true;
    }
    if (id) this.cursor = id;
    if (event === 'reset') {
      const sub = this.subs.get(m.room as string);
      if (sub) sub.subscribed({ room: sub.room, epoch: m.epoch as string, offset: m.offset as number, recovered: false, publications: [] }, true);
    } else {
      this.handle({ ...m, type: event });
    }
    return false;
  }
}

export default Switchboard;
