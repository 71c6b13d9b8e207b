// sockgate-client.js — a framework-free client for sockgate: auth API + one gateway socket.
//
// The equivalent of the tutorials' `useSocket(token)` hook, with the token lifecycle done
// right. One client holds one session (one user) and at most one live Socket.IO connection.
//
//   import { io } from "socket.io-client";              // or the ESM build's URL
//   import { createSockgateClient } from "./sockgate-client.js";
//
//   const client = createSockgateClient({ authUrl: "", gatewayUrl: "http://127.0.0.1:8001", io });
//   client.onState((s) => render(s));                   // {status, user, socketId, …}
//   client.subscribe("message", (m) => show(m));        // server events, across reconnects
//   await client.login({ username, password });         // connects by itself
//   await client.join("public:lobby");                  // rejoined after every reconnect
//   await client.send("public:lobby", "hello");
//
// React (no import of React here, so no build step and no version coupling):
//
//   const state = useSockgate(client, React);           // re-renders on every state change
//   useSockgateEvent(client, "message", onMessage, React);
//
// What it does for you
// - Tokens: the access token is refreshed through POST /v1/auth/refresh `refreshMarginSeconds`
//   before it expires (timed from `expires_in`, so the client's clock does not matter) and
//   handed to the live socket with `reauth {token}`: no reconnect, the socket id stays. The
//   gateway's `token_expiring` event is a second trigger, for tabs whose timers the browser
//   throttled. A refresh answered 401 (spent, revoked or expired family) ends the session.
// - Refusals: `connect_error` "unauthorized" with token_expired / token_revoked / token_invalid /
//   token_missing ends the session (state `signed_out`, `reason` says why) instead of retrying
//   a token that can never work. Before every (re)connect the token is refreshed if it is close
//   to expiry, so an expired-token refusal only happens when the session is really over.
// - Reconnection: socket.io-client's own reconnection is switched off (`reconnection: false`):
//   its delay is base·2^n randomized by ±50%, it gives up on middleware refusals, and it would
//   reuse the old token. Instead every unplanned disconnect waits a random delay in
//   [0, min(maxDelayMs, baseDelayMs·2^attempt)] — exponential backoff with full jitter, so a
//   replica restart does not bring every client back at the same instant — then opens a new
//   socket with the current token. "overloaded" refusals wait at least `retry_after_ms`. The
//   attempt counter resets once a connection is up. A server-side disconnect (logout
//   everywhere, draining replica, token cut) first refreshes the token: a revoked session
//   turns into `signed_out`, anything else reconnects.
// - Rooms joined through `join` are rejoined on every new socket.
// - Storage: tokens are kept in `storage` (default: sessionStorage, so each tab has its own
//   refresh-token family; two tabs sharing one refresh token would race on rotation and the
//   reuse detection would revoke both). Pass `storage: null` to keep them in memory only. Any
//   script on the page can read Web Storage: a production app should prefer an HttpOnly cookie
//   for the refresh token.

const STORAGE_KEY = "sockgate.session";
const DEFAULT_ACK_TIMEOUT_MS = 8000;
const MIN_REFRESH_DELAY_MS = 5000;
const REFUSALS_THAT_END_THE_SESSION = new Set([
  "token_missing",
  "token_invalid",
  "token_expired",
  "token_revoked",
]);

/** Raised by the auth helpers; `status` is the HTTP status, `code` the API's error code. */
export class SockgateError extends Error {
  constructor(message, { status = 0, code = "network_error", details = null } = {}) {
    super(message);
    this.name = "SockgateError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** Full-jitter exponential backoff: a uniform delay in [0, min(max, base·2^attempt)]. */
export function backoffDelay(attempt, { baseDelayMs = 500, maxDelayMs = 30000, random = Math.random } = {}) {
  const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * Creates a client. Options:
 * - authUrl: base URL of the auth service ("" = the page's own origin)
 * - gatewayUrl: one gateway (or the load balancer in front of them)
 * - io: socket.io-client's `io` function (injected: the module imports nothing)
 * - storage: a Web Storage-like object or null (default: sessionStorage when there is one)
 * - refreshMarginSeconds (60), ackTimeoutMs (8000), baseDelayMs (500), maxDelayMs (30000),
 *   transports (["websocket"]: works behind any load balancer, no sticky sessions needed),
 *   fetch (globalThis.fetch), random (Math.random)
 */
export function createSockgateClient(options) {
  const {
    authUrl = "",
    gatewayUrl,
    io,
    storage = defaultStorage(),
    refreshMarginSeconds = 60,
    ackTimeoutMs = DEFAULT_ACK_TIMEOUT_MS,
    baseDelayMs = 500,
    maxDelayMs = 30000,
    transports = ["websocket"],
    fetch: fetchImpl = globalThis.fetch.bind(globalThis),
    random = Math.random,
  } = options;
  if (typeof io !== "function") throw new TypeError("createSockgateClient: `io` is required");
  if (!gatewayUrl) throw new TypeError("createSockgateClient: `gatewayUrl` is required");

  const stateListeners = new Set();
  const eventListeners = new Map(); // event name -> Set of handlers
  const rooms = new Set();

  let session = null; // {accessToken, refreshToken, expiresAt (local ms), user: {id, name}}
  let socket = null;
  let attempt = 0;
  let reconnectTimer = null;
  let refreshTimer = null;
  let refreshAt = 0;
  let refreshing = null; // the refresh in flight, shared by every caller
  let generation = 0; // bumped on sign-out: late callbacks of an older session do nothing
  let state = Object.freeze({
    status: "signed_out", // signed_out | connecting | connected | reconnecting
    user: null,
    socketId: null,
    gatewayUrl,
    attempt: 0,
    retryAt: null,
    tokenExpiresAt: null,
    refreshes: 0,
    reason: null, // why the last sign-out or disconnect happened, for the UI
  });

  // -- state -----------------------------------------------------------------------------

  function setState(patch) {
    state = Object.freeze({ ...state, ...patch });
    for (const listener of [...stateListeners]) listener(state);
  }

  function emitLocal(event, payload) {
    for (const handler of [...(eventListeners.get(event) ?? [])]) {
      try {
        handler(payload);
      } catch (err) {
        console.error(`sockgate: a "${event}" handler threw`, err);
      }
    }
  }

  // -- auth API --------------------------------------------------------------------------

  async function api(path, { body, token } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetchImpl(`${authUrl}${path}`, {
        method: "POST",
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
      });
    } catch (err) {
      throw new SockgateError("the auth service cannot be reached", { details: err });
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const error = data?.error ?? {};
      throw new SockgateError(error.message ?? `HTTP ${response.status}`, {
        status: response.status,
        code: error.code ?? `http_${response.status}`,
        details: error,
      });
    }
    return data;
  }

  function adopt(pair) {
    const claims = decodeClaims(pair.access_token);
    session = {
      accessToken: pair.access_token,
      refreshToken: pair.refresh_token,
      expiresAt: Date.now() + pair.expires_in * 1000,
      exp: claims.exp,
      user: { id: claims.sub, name: claims.name },
    };
    save();
    scheduleRefresh(pair.expires_in);
    setState({ user: session.user, tokenExpiresAt: session.expiresAt });
  }

  function scheduleRefresh(expiresIn) {
    clearTimeout(refreshTimer);
    const delay = Math.max(
      (expiresIn - refreshMarginSeconds) * 1000,
      Math.min(MIN_REFRESH_DELAY_MS, (expiresIn * 1000) / 2),
    );
    refreshAt = Date.now() + delay;
    refreshTimer = setTimeout(() => refresh().catch(() => {}), delay);
  }

  /** Spends the refresh token for a new pair and hands the access token to the live socket. */
  function refresh() {
    if (!session) return Promise.reject(new SockgateError("not signed in", { code: "signed_out" }));
    if (!refreshing) {
      const gen = generation;
      refreshing = doRefresh(gen).finally(() => {
        if (gen === generation) refreshing = null;
      });
    }
    return refreshing;
  }

  async function doRefresh(gen) {
    let pair;
    try {
      pair = await api("/v1/auth/refresh", { body: { refresh_token: session.refreshToken } });
    } catch (err) {
      if (gen !== generation) throw err;
      if (err.status === 401) {
        end("session_ended"); // the refresh family was revoked, spent or expired
      } else if (session && Date.now() < session.expiresAt) {
        // The auth service is unreachable: try again before the token runs out.
        const left = session.expiresAt - Date.now();
        clearTimeout(refreshTimer);
        refreshAt = Date.now() + Math.min(left / 2, backoffDelay(2, { random }) + 1000);
        refreshTimer = setTimeout(() => refresh().catch(() => {}), refreshAt - Date.now());
      }
      throw err;
    }
    if (gen !== generation) return;
    adopt(pair);
    setState({ refreshes: state.refreshes + 1 });
    await reauth(gen);
  }

  async function reauth(gen) {
    if (!socket?.connected) return; // the next connect sends the new token anyway
    const live = socket;
    let ack;
    try {
      ack = await live.timeout(ackTimeoutMs).emitWithAck("reauth", { token: session.accessToken });
    } catch {
      return; // no answer: the connection is in trouble and its disconnect handler takes over
    }
    if (gen !== generation || live !== socket) return;
    if (ack?.ok) {
      emitLocal("reauth", { exp: ack.exp, socketId: live.id });
    } else if (REFUSALS_THAT_END_THE_SESSION.has(ack?.error?.code)) {
      end(ack.error.code);
    }
  }

  function save() {
    if (!storage) return;
    try {
      if (session) {
        storage.setItem(STORAGE_KEY, JSON.stringify({ refreshToken: session.refreshToken }));
      } else {
        storage.removeItem(STORAGE_KEY);
      }
    } catch {
      // Storage full or denied: the session still works in memory.
    }
  }

  // -- the socket ------------------------------------------------------------------------

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (!session) return;
    closeSocket();
    setState({ status: attempt === 0 ? "connecting" : "reconnecting", retryAt: null });
    const gen = generation;
    let sentToken = null;
    const s = io(gatewayUrl, {
      // Called on every connection attempt: always the current token.
      auth: (cb) => {
        sentToken = session?.accessToken ?? "";
        cb({ token: sentToken });
      },
      transports,
      reconnection: false,
      forceNew: true,
      autoConnect: false, // listeners first
      timeout: 10000,
    });
    socket = s;

    s.on("connect", () => {
      if (gen !== generation || s !== socket) return;
      attempt = 0;
      setState({ status: "connected", socketId: s.id, attempt: 0, retryAt: null, reason: null });
      // A refresh that landed during the handshake: the socket still holds the older token.
      if (session && sentToken !== session.accessToken) reauth(gen);
      for (const room of rooms) {
        s.timeout(ackTimeoutMs)
          .emitWithAck("join", { room })
          .then((reply) => {
            if (reply?.ok === false && reply.error?.code !== "rate_limited") rooms.delete(room);
            emitLocal("rejoin", { room, ok: Boolean(reply?.ok), error: reply?.error ?? null });
          })
          .catch(() => {}); // no answer: this connection is in trouble; the next one retries
      }
    });

    s.on("connect_error", (err) => {
      if (gen !== generation || s !== socket) return;
      const code = err?.data?.code;
      if (err?.message === "unauthorized" && REFUSALS_THAT_END_THE_SESSION.has(code)) {
        end(code);
        return;
      }
      const floor = err?.data?.retry_after_ms ?? 0;
      retryLater(code ?? err?.message ?? "connect_error", floor);
    });

    s.on("disconnect", (reason) => {
      if (gen !== generation || s !== socket) return;
      if (reason === "io client disconnect") return; // we closed it
      setState({ socketId: null });
      if (reason === "io server disconnect") {
        // The gateway cut us on purpose (revocation, expiry, drain). A refresh tells a
        // revoked session (401 → signed out) from one that may simply reconnect.
        setState({ status: "reconnecting", reason: "server_disconnect" });
        const retry = () => gen === generation && retryLater("server_disconnect", 0);
        refresh().then(retry, retry);
        return;
      }
      retryLater(reason, 0);
    });

    s.onAny((event, payload) => {
      if (gen !== generation || s !== socket) return;
      if (event === "token_expiring") onTokenExpiring(payload);
      emitLocal(event, payload);
    });

    s.connect();
  }

  function onTokenExpiring(payload) {
    // Our own timer is the plan; this catches timers the browser throttled in a hidden tab.
    if (session && payload?.exp === session.exp && Date.now() >= refreshAt - 1000) {
      refresh().catch(() => {});
    }
  }

  function retryLater(reason, floorMs) {
    if (!session) return;
    closeSocket();
    const delay = Math.max(floorMs, backoffDelay(attempt, { baseDelayMs, maxDelayMs, random }));
    attempt += 1;
    const retryAt = Date.now() + delay;
    setState({ status: "reconnecting", socketId: null, attempt, retryAt, reason });
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(reconnectNow, delay);
  }

  async function reconnectNow() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    // Never reconnect with a token about to expire: the refusal would end the session.
    if (session && Date.now() >= refreshAt) await refresh().catch(() => {});
    if (session && !socket) connect();
  }

  function closeSocket() {
    if (!socket) return;
    const s = socket;
    socket = null;
    s.offAny();
    s.removeAllListeners();
    s.disconnect();
  }

  function end(reason) {
    generation += 1;
    refreshing = null;
    clearTimeout(refreshTimer);
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    closeSocket();
    session = null;
    attempt = 0;
    save();
    setState({
      status: "signed_out",
      user: null,
      socketId: null,
      attempt: 0,
      retryAt: null,
      tokenExpiresAt: null,
      reason,
    });
  }

  async function ack(event, payload) {
    if (!socket?.connected) {
      return { ok: false, error: { code: "not_connected", message: "not connected" } };
    }
    try {
      return await socket.timeout(ackTimeoutMs).emitWithAck(event, payload);
    } catch {
      return { ok: false, error: { code: "timeout", message: "the gateway did not answer" } };
    }
  }

  // -- the browser's hints -------------------------------------------------------------

  function onOnline() {
    // The network is back: no reason to sit out the rest of a long backoff.
    if (reconnectTimer && session) reconnectNow();
  }

  function onVisible() {
    // Hidden tabs get their timers throttled: catch up on an overdue refresh when shown again.
    if (globalThis.document?.visibilityState === "visible" && session && Date.now() >= refreshAt) {
      refresh().catch(() => {});
    }
  }

  globalThis.addEventListener?.("online", onOnline);
  globalThis.document?.addEventListener?.("visibilitychange", onVisible);

  // -- public API ------------------------------------------------------------------------

  return {
    /** The current state (a new frozen object on every change). */
    getState: () => state,

    /** Calls `listener(state)` now and on every change; returns the unsubscribe function. */
    onState(listener) {
      stateListeners.add(listener);
      listener(state);
      return () => stateListeners.delete(listener);
    },

    /**
     * Server events ("message", "presence", "notification", "token_expiring") and the
     * client's own "reauth" {exp, socketId} and "rejoin" {room, ok, error}; handlers survive
     * reconnects. Returns the unsubscribe function.
     */
    subscribe(event, handler) {
      if (!eventListeners.has(event)) eventListeners.set(event, new Set());
      eventListeners.get(event).add(handler);
      return () => eventListeners.get(event)?.delete(handler);
    },

    /** POST /v1/auth/register; resolves to the new user `{id, username, email}`. */
    register: ({ username, email, password }) =>
      api("/v1/auth/register", { body: { username, email, password } }),

    /** Logs in and connects. */
    async login({ username, password }) {
      const pair = await api("/v1/auth/login", { body: { username, password } });
      end(null);
      adopt(pair);
      connect();
      return session.user;
    },

    /** Picks up the session kept in `storage` (after a reload); false when there is none. */
    async resume() {
      let saved = null;
      try {
        saved = JSON.parse(storage?.getItem(STORAGE_KEY) ?? "null");
      } catch {
        saved = null;
      }
      if (!saved?.refreshToken || session) return Boolean(session);
      const gen = generation;
      let pair;
      try {
        pair = await api("/v1/auth/refresh", { body: { refresh_token: saved.refreshToken } });
      } catch (err) {
        if (err.status === 401) storage?.removeItem(STORAGE_KEY);
        return false;
      }
      if (gen !== generation || session) return Boolean(session);
      adopt(pair);
      connect();
      return true;
    },

    /** Revokes this session's refresh family and disconnects. */
    async logout() {
      const token = session?.refreshToken;
      end("logged_out");
      if (token) await api("/v1/auth/logout", { body: { refresh_token: token } }).catch(() => {});
    },

    /** Revokes every session of the user; the gateways disconnect all their sockets. */
    async logoutAll() {
      if (!session) return;
      const token = session.accessToken;
      await api("/v1/auth/logout-all", { token });
      end("logged_out_everywhere");
    },

    refresh,

    /** `join {room}`: resolves to the ack `{ok, room}` or `{ok: false, error}`. */
    async join(room) {
      const reply = await ack("join", { room });
      if (reply?.ok) rooms.add(room);
      return reply;
    },

    async leave(room) {
      rooms.delete(room);
      return ack("leave", { room });
    },

    /** `who {room}`: resolves to `{ok, room, members: [{id, name}]}` across every replica. */
    who: (room) => ack("who", { room }),

    /** `message {room, text}`: resolves to `{ok, id, ts}` (others get the `message` event). */
    send: (room, text) => ack("message", { room, text }),

    /** Rooms joined through `join` (rejoined after reconnects). */
    rooms: () => [...rooms],

    /** Closes the socket and forgets the session in memory (storage is left as it is). */
    destroy() {
      generation += 1;
      clearTimeout(refreshTimer);
      clearTimeout(reconnectTimer);
      closeSocket();
      session = null;
      stateListeners.clear();
      eventListeners.clear();
      globalThis.removeEventListener?.("online", onOnline);
      globalThis.document?.removeEventListener?.("visibilitychange", onVisible);
    },
  };
}

/**
 * React binding: `const state = useSockgate(client, React)`. Takes React (or any object with
 * `useSyncExternalStore`, or `useState` + `useEffect`) as a parameter, so this module has no
 * dependency and no build step.
 */
export function useSockgate(client, react) {
  if (typeof react.useSyncExternalStore === "function") {
    return react.useSyncExternalStore(
      (onChange) => client.onState(() => onChange()),
      client.getState,
    );
  }
  const [state, setState] = react.useState(client.getState());
  react.useEffect(() => client.onState(setState), [client]);
  return state;
}

/** React binding for server events: `useSockgateEvent(client, "message", onMessage, React)`. */
export function useSockgateEvent(client, event, handler, react) {
  const latest = react.useRef(handler);
  latest.current = handler;
  react.useEffect(() => client.subscribe(event, (payload) => latest.current(payload)), [
    client,
    event,
  ]);
}

function decodeClaims(token) {
  // Display only (the name, and matching `token_expiring`): the gateway verifies the signature.
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      Array.from(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "=")))
        .map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, "0")}`)
        .join(""),
    );
    return JSON.parse(json);
  } catch {
    return {};
  }
}

function defaultStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null; // storage disabled (e.g. some privacy modes)
  }
}
