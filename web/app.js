// The demo page: renders the state of one sockgate client and turns clicks into its calls.
// All the protocol logic lives in sockgate-client.js; this file is only the view.
// Everything user-supplied is written with textContent, never as HTML.

import { io } from "./vendor/socket.io.esm.min.js";
import { SockgateError, createSockgateClient } from "./sockgate-client.js";

const GATEWAY_KEY = "sockgate.demo.gateway";
const MAX_ACTIVITY = 60;

const $ = (selector) => document.querySelector(selector);
const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

const view = {
  signedOut: $("#signed-out"),
  signedIn: $("#signed-in"),
  conn: byTestId("conn-state"),
  who: byTestId("who"),
  banner: byTestId("origin-banner"),
  authForm: $("#auth-form"),
  authError: byTestId("auth-error"),
  authNote: byTestId("auth-note"),
  authSubmit: byTestId("auth-submit"),
  gateway: byTestId("gateway"),
  sessionUser: byTestId("session-user"),
  sessionGateway: byTestId("session-gateway"),
  socketId: byTestId("socket-id"),
  tokenExpiry: byTestId("token-expiry"),
  refreshCount: byTestId("refresh-count"),
  joinForm: $("#join-form"),
  joinError: byTestId("join-error"),
  roomList: byTestId("room-list"),
  activeRoom: byTestId("active-room"),
  presence: byTestId("presence"),
  leave: byTestId("leave"),
  messages: byTestId("messages"),
  composer: $("#composer"),
  messageInput: byTestId("message-input"),
  send: byTestId("send"),
  notifications: byTestId("notifications"),
  activity: byTestId("activity"),
};

const page = {
  config: null,
  client: null,
  unsubscribe: [],
  mode: "login",
  rooms: new Map(), // room -> {messages: [], members: Map(userId -> {name}), unread}
  activeRoom: null,
  lastStatus: null,
};

// -- start -------------------------------------------------------------------------------

async function main() {
  const params = new URLSearchParams(location.search);
  page.config = await (await fetch("config.json", { cache: "no-store" })).json();
  const margin = Number(params.get("refresh_margin"));
  if (Number.isFinite(margin) && margin > 0) page.config.refreshMarginSeconds = margin;

  const origin = page.config.pageOrigin;
  if (origin && origin !== location.origin) {
    const link = document.createElement("a");
    link.href = `${origin}/demo/`;
    link.textContent = `${origin}/demo/`;
    view.banner.replaceChildren(
      `This page is served from ${location.origin}, but the gateways only accept ${origin}. Open `,
      link,
      " instead.",
    );
    view.banner.hidden = false;
  }

  for (const [index, url] of page.config.gateways.entries()) {
    const option = new Option(`Replica ${index + 1} · ${url.replace(/^https?:\/\//, "")}`, url);
    view.gateway.append(option);
  }
  const wanted = params.get("gateway") ?? sessionStorage.getItem(GATEWAY_KEY);
  const chosen = page.config.gateways[Number(wanted)] ?? wanted;
  if (page.config.gateways.includes(chosen)) view.gateway.value = chosen;

  wireForms();
  setInterval(tick, 500);

  // A reload keeps the session: the refresh token waits in this tab's sessionStorage.
  const client = startClient(view.gateway.value);
  if (!(await client.resume())) renderState(client.getState());
}

function startClient(gatewayUrl) {
  for (const off of page.unsubscribe) off();
  page.client?.destroy();
  sessionStorage.setItem(GATEWAY_KEY, gatewayUrl);
  const client = createSockgateClient({
    authUrl: page.config.authUrl,
    gatewayUrl,
    io,
    refreshMarginSeconds: page.config.refreshMarginSeconds,
  });
  page.client = client;
  page.unsubscribe = [
    client.onState(renderState),
    client.subscribe("message", onMessage),
    client.subscribe("presence", onPresence),
    client.subscribe("notification", onNotification),
    client.subscribe("token_expiring", ({ exp }) =>
      log(`Gateway: this token expires at ${formatTime(exp)}`),
    ),
    client.subscribe("reauth", () => log("Token refreshed and handed to the live socket (reauth)")),
    client.subscribe("rejoin", ({ room, ok, error }) =>
      log(ok ? `Rejoined ${room}` : `Could not rejoin ${room} (${error?.code ?? "no answer"})`),
    ),
  ];
  return client;
}

// -- state -------------------------------------------------------------------------------

const STATUS_TEXT = {
  signed_out: "Signed out",
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting",
};

const REASON_TEXT = {
  logged_out: "You logged out.",
  logged_out_everywhere: "You logged out everywhere.",
  session_ended: "Your session ended (signed out everywhere, or it expired). Please log in again.",
  token_revoked: "Your session was revoked. Please log in again.",
  token_expired: "Your session expired. Please log in again.",
  token_invalid: "The gateway refused your token. Please log in again.",
  token_missing: "The gateway did not get a token. Please log in again.",
};

function renderState(state) {
  const signedIn = state.status !== "signed_out";
  view.signedOut.hidden = signedIn;
  view.signedIn.hidden = !signedIn;
  renderConnection(state);
  view.who.hidden = !state.user;
  view.who.textContent = state.user ? `@${state.user.name}` : "";

  view.sessionUser.textContent = state.user?.name ?? "—";
  view.sessionGateway.textContent = hostOf(state.gatewayUrl);
  view.socketId.textContent = state.socketId ?? "—";
  view.refreshCount.textContent = String(state.refreshes);
  const connected = state.status === "connected";
  view.messageInput.disabled = !connected || !page.activeRoom;
  view.send.disabled = !connected || !page.activeRoom;
  renderExpiry();

  if (state.status !== page.lastStatus) {
    if (state.status === "connected") {
      log(`Connected to ${hostOf(state.gatewayUrl)} as socket ${state.socketId}`);
    }
    if (state.status === "reconnecting") {
      log(`Disconnected (${state.reason ?? "unknown"}); retrying with backoff`);
    }
    if (state.status === "signed_out" && page.lastStatus !== null) {
      resetRooms();
      showNote(REASON_TEXT[state.reason] ?? "");
    }
    page.lastStatus = state.status;
  }
}

function renderConnection(state) {
  view.conn.dataset.status = state.status;
  let text = STATUS_TEXT[state.status];
  if (state.status === "connected") text += ` · ${hostOf(state.gatewayUrl)}`;
  if (state.status === "reconnecting" && state.retryAt) {
    const seconds = Math.max(0, (state.retryAt - Date.now()) / 1000).toFixed(1);
    text += ` · attempt ${state.attempt}, next in ${seconds}s`;
  }
  view.conn.querySelector(".conn-text").textContent = text;
  view.conn.title = state.reason ? `last reason: ${state.reason}` : "";
}

function renderExpiry() {
  const state = page.client?.getState();
  if (!state?.tokenExpiresAt) {
    view.tokenExpiry.textContent = "—";
    return;
  }
  const left = Math.max(0, Math.round((state.tokenExpiresAt - Date.now()) / 1000));
  view.tokenExpiry.textContent =
    left >= 120 ? `expires in ${Math.round(left / 60)} min` : `expires in ${left}s`;
}

function tick() {
  const state = page.client?.getState();
  if (!state) return;
  renderExpiry();
  if (state.status === "reconnecting") renderConnection(state);
}

// -- forms -------------------------------------------------------------------------------

function wireForms() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => setMode(tab.dataset.tab));
  }

  view.authForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(view.authForm));
    showError(view.authError, "");
    showNote("");
    view.authSubmit.disabled = true;
    try {
      if (page.mode === "register") {
        await page.client.register(data);
        setMode("login");
        showNote(`Account “${data.username}” created. Logging you in…`);
      }
      const client = startClient(data.gateway);
      await client.login({ username: data.username, password: data.password });
      view.authForm.reset();
      view.gateway.value = data.gateway;
      showNote("");
    } catch (err) {
      showError(view.authError, describe(err));
    } finally {
      view.authSubmit.disabled = false;
    }
  });

  view.joinForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const room = new FormData(view.joinForm).get("room").trim();
    showError(view.joinError, "");
    const ack = await page.client.join(room);
    if (!ack.ok) {
      showError(view.joinError, `${ack.error.code}: ${ack.error.message}`);
      return;
    }
    const entry = roomEntry(room);
    const me = page.client.getState().user;
    if (me && !entry.members.has(me.id)) entry.members.set(me.id, { name: me.name });
    // Who is already here, on every replica; presence events keep it current from now on.
    const roster = await page.client.who(room);
    if (roster?.ok) {
      for (const member of roster.members) entry.members.set(member.id, { name: member.name });
    }
    log(`Joined ${room}`);
    selectRoom(room);
  });

  view.leave.addEventListener("click", async () => {
    const room = page.activeRoom;
    if (!room) return;
    await page.client.leave(room);
    page.rooms.delete(room);
    log(`Left ${room}`);
    selectRoom(page.rooms.keys().next().value ?? null);
  });

  view.composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = view.messageInput.value.trim();
    const room = page.activeRoom;
    if (!text || !room) return;
    view.messageInput.value = "";
    const me = page.client.getState().user;
    const ack = await page.client.send(room, text);
    if (ack.ok) {
      addMessage(room, { id: ack.id, text, sender: me, ts: ack.ts, own: true });
    } else {
      addMessage(room, { text: `Not sent (${ack.error.code}): ${text}`, system: true });
    }
  });

  byTestId("logout").addEventListener("click", () => page.client.logout());
  byTestId("logout-all").addEventListener("click", async () => {
    try {
      await page.client.logoutAll();
    } catch (err) {
      log(`Log out everywhere failed: ${describe(err)}`);
    }
  });
}

function setMode(mode) {
  page.mode = mode;
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === mode));
  }
  for (const el of document.querySelectorAll(".only-register")) el.hidden = mode !== "register";
  for (const el of document.querySelectorAll(".only-login")) el.hidden = mode !== "login";
  view.authForm.elements.password.autocomplete = mode === "register" ? "new-password" : "current-password";
  view.authSubmit.textContent = mode === "register" ? "Create account" : "Log in";
  showError(view.authError, "");
}

const FIELD_HINTS = {
  username: "a username is 3 to 32 letters, digits, dots, dashes or underscores",
  email: "the email address is not valid",
  password: "a password has at least 8 characters",
};

function describe(err) {
  if (!(err instanceof SockgateError)) return String(err?.message ?? err);
  if (err.status === 401) return "Wrong username or password.";
  if (err.status === 409) return "That username or email is already registered.";
  if (err.status === 422) {
    const fields = (err.details?.fields ?? []).map((f) => f.loc.at(-1)).filter(Boolean);
    const hints = [...new Set(fields)].map((field) => FIELD_HINTS[field] ?? field);
    return hints.length ? `Check the form: ${hints.join("; ")}.` : err.message;
  }
  if (err.status === 429) return "Too many attempts; wait a moment.";
  return err.message;
}

// -- rooms and messages ------------------------------------------------------------------

function roomEntry(room) {
  if (!page.rooms.has(room)) page.rooms.set(room, { messages: [], members: new Map(), unread: 0 });
  return page.rooms.get(room);
}

function resetRooms() {
  page.rooms.clear();
  page.activeRoom = null;
  view.notifications.replaceChildren();
  view.activity.replaceChildren();
  selectRoom(null);
}

function selectRoom(room) {
  page.activeRoom = room;
  if (room) roomEntry(room).unread = 0;
  renderRooms();
  renderMessages();
  renderPresence();
  const connected = page.client?.getState().status === "connected";
  view.messageInput.disabled = !connected || !room;
  view.send.disabled = !connected || !room;
  view.leave.hidden = !room;
  view.activeRoom.textContent = room ?? "No room yet";
  if (room) view.messageInput.focus();
}

function renderRooms() {
  const items = [...page.rooms.entries()].map(([room, entry]) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "room";
    button.dataset.room = room;
    button.setAttribute("aria-current", String(room === page.activeRoom));
    const name = document.createElement("span");
    name.textContent = room;
    button.append(name);
    if (entry.unread) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = String(entry.unread);
      button.append(badge);
    }
    button.addEventListener("click", () => selectRoom(room));
    li.append(button);
    return li;
  });
  view.roomList.replaceChildren(...items);
}

function renderPresence() {
  const entry = page.activeRoom ? page.rooms.get(page.activeRoom) : null;
  if (!entry) {
    view.presence.textContent = "Join a room to start.";
    return;
  }
  // The gateway announces arrivals and departures, not a roster: this is who was seen here
  // (joined or spoke) since this tab joined.
  const names = [...entry.members.values()].map((m) => m.name).sort();
  const chips = names.map((name) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.style.setProperty("--avatar", avatarColor(name));
    avatar.textContent = name.slice(0, 1).toUpperCase();
    chip.append(avatar, name);
    return chip;
  });
  const caption = document.createElement("span");
  caption.className = "caption";
  caption.textContent = `${names.length} in the room`;
  view.presence.replaceChildren(caption, ...chips);
}

// Colours that carry white text well; a name always gets the same one.
const AVATAR_COLORS = ["#4f46e5", "#0891b2", "#db2777", "#059669", "#c2410c", "#7c3aed", "#2563eb"];

function avatarColor(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return AVATAR_COLORS[h % AVATAR_COLORS.length];
}

function renderMessages() {
  const entry = page.activeRoom ? page.rooms.get(page.activeRoom) : null;
  view.messages.replaceChildren(...(entry?.messages ?? []).map(messageItem));
  view.messages.scrollTop = view.messages.scrollHeight;
}

function messageItem(message) {
  const li = document.createElement("li");
  if (message.system) {
    li.className = "msg system";
    li.textContent = message.text;
    return li;
  }
  li.className = message.own ? "msg own" : "msg";
  li.dataset.sender = message.sender?.name ?? "";
  const meta = document.createElement("div");
  meta.className = "meta";
  const who = document.createElement("span");
  who.className = "sender";
  who.textContent = message.own ? "You" : (message.sender?.name ?? "unknown");
  const when = document.createElement("time");
  when.textContent = formatTime(message.ts);
  meta.append(who, when);
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = message.text;
  li.append(meta, body);
  return li;
}

function addMessage(room, message) {
  const entry = roomEntry(room);
  entry.messages.push(message);
  if (entry.messages.length > 500) entry.messages.shift();
  if (room === page.activeRoom) {
    view.messages.append(messageItem(message));
    view.messages.scrollTop = view.messages.scrollHeight;
  } else {
    entry.unread += 1;
    renderRooms();
  }
}

function onMessage(message) {
  const entry = roomEntry(message.room);
  if (message.sender && !entry.members.has(message.sender.id)) {
    entry.members.set(message.sender.id, { name: message.sender.name });
    if (message.room === page.activeRoom) renderPresence();
  }
  addMessage(message.room, message);
}

function onPresence({ room, user, event }) {
  const entry = roomEntry(room);
  // The gateway sends presence once per user (first socket in, last socket out), so the
  // roster follows the events as they are.
  if (event === "join") entry.members.set(user.id, { name: user.name });
  else entry.members.delete(user.id);
  addMessage(room, { text: `${user.name} ${event === "join" ? "joined" : "left"}`, system: true });
  if (room === page.activeRoom) renderPresence();
}

function onNotification(payload) {
  view.notifications.querySelector(".empty")?.remove();
  const li = document.createElement("li");
  li.className = "notification";
  const title = document.createElement("strong");
  const data = payload && typeof payload === "object" ? payload : { text: String(payload) };
  title.textContent = data.title ?? "Notification";
  const text = document.createElement("span");
  text.textContent = data.text ?? data.message ?? data.body ?? JSON.stringify(data);
  const when = document.createElement("time");
  when.textContent = formatTime(Date.now());
  li.append(title, text, when);
  view.notifications.prepend(li);
  log(`Notification: ${title.textContent}`);
}

// -- small helpers -----------------------------------------------------------------------

function log(text) {
  const li = document.createElement("li");
  const when = document.createElement("time");
  when.textContent = formatTime(Date.now());
  const what = document.createElement("span");
  what.textContent = text;
  li.append(when, what);
  view.activity.prepend(li);
  while (view.activity.children.length > MAX_ACTIVITY) view.activity.lastChild.remove();
}

function showError(el, text) {
  el.textContent = text;
  el.hidden = !text;
}

function showNote(text) {
  view.authNote.textContent = text;
  view.authNote.hidden = !text;
}

function hostOf(url) {
  return url ? url.replace(/^https?:\/\//, "") : "—";
}

function formatTime(ts) {
  const date = typeof ts === "number" ? new Date(ts < 1e12 ? ts * 1000 : ts) : new Date(ts ?? Date.now());
  return date.toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hourCycle: "h23",
  });
}

main().catch((err) => {
  view.conn.dataset.status = "error";
  view.conn.querySelector(".conn-text").textContent = "Failed to start";
  console.error(err);
});
