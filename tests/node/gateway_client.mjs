// Drives official socket.io-client sockets for the Python gateway tests.
//
// One process holds any number of named sockets. Commands arrive on stdin, one JSON object a
// line; everything that happens is written to stdout, one JSON object a line, tagged with the
// socket's name (`id`). The Python side (tests/gateway/clients.py) turns these into awaitables.
//
//   {"op":"connect","id":"a","url":"http://...","options":{...}}
//       -> {"id":"a","type":"connect","sid":"..."} | {"id":"a","type":"connect_error",
//          "message":"unauthorized","data":{"code":"token_missing",...}}
//   {"op":"emit","id":"a","ref":1,"event":"join","args":[{...}]}
//       -> {"id":"a","type":"ack","ref":1,"args":[...]} | {"type":"ack_timeout","ref":1}
//   {"op":"flood","id":"a","ref":2,"event":"message","args":[...],"count":500}
//       -> {"id":"a","type":"flood_done","ref":2,"results":{"ok":n,"rate_limited":m,...}}
//   {"op":"storm","id":"s","ref":3,"url":"...","count":100,"options":{...}}
//       -> {"id":"s","type":"storm_done","ref":3,"results":{"connect":n,"overloaded":m,...}}
//   {"op":"close","id":"a"}
// A connect whose options hold retryUnavailable: true connects again after retry_after_ms when
// the gateway refuses it as "unavailable" (a draining replica): the client does not by itself.
// Server events: {"id":"a","type":"event","event":"message","args":[...]}
// Disconnects:   {"id":"a","type":"disconnect","reason":"io server disconnect","at":<ms>}
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const ACK_TIMEOUT_MS = 10000;
const sockets = new Map();

function out(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function open(url, options) {
  // forceNew: every socket gets its own Engine.IO connection, like separate browsers.
  return io(url, { reconnection: false, forceNew: true, timeout: 10000, ...options });
}

function connect({ id, url, options }) {
  const { retryUnavailable, ...ioOptions } = options ?? {};
  const socket = open(url, ioOptions);
  sockets.set(id, socket);
  socket.on("connect", () => out({ id, type: "connect", sid: socket.id }));
  socket.on("connect_error", (err) => {
    out({ id, type: "connect_error", message: err.message, data: err.data ?? null });
    if (retryUnavailable && err.message === "unavailable" && !socket.active) {
      setTimeout(() => socket.connect(), Math.max(100, err.data?.retry_after_ms ?? 1000));
    }
  });
  socket.on("disconnect", (reason) => out({ id, type: "disconnect", reason, at: Date.now() }));
  socket.onAny((event, ...args) => out({ id, type: "event", event, args }));
}

function emit({ id, ref, event, args }) {
  const socket = sockets.get(id);
  socket.timeout(ACK_TIMEOUT_MS).emit(event, ...(args ?? []), (err, ...reply) => {
    if (err) out({ id, type: "ack_timeout", ref });
    else out({ id, type: "ack", ref, args: reply });
  });
}

function flood({ id, ref, event, args, count }) {
  const socket = sockets.get(id);
  const results = {};
  let pending = count;
  const done = (key) => {
    results[key] = (results[key] ?? 0) + 1;
    if (--pending === 0) out({ id, type: "flood_done", ref, results });
  };
  for (let i = 0; i < count; i++) {
    socket.timeout(ACK_TIMEOUT_MS).emit(event, ...(args ?? []), (err, reply) => {
      if (err) done("no_ack");
      else done(reply?.ok ? "ok" : (reply?.error?.code ?? "unknown"));
    });
  }
}

function storm({ id, ref, url, count, options }) {
  const results = {};
  const opened = [];
  let pending = count;
  const done = (key) => {
    results[key] = (results[key] ?? 0) + 1;
    if (--pending === 0) {
      for (const socket of opened) socket.close();
      out({ id, type: "storm_done", ref, results });
    }
  };
  for (let i = 0; i < count; i++) {
    const socket = open(url, options);
    opened.push(socket);
    socket.once("connect", () => done("connect"));
    socket.once("connect_error", (err) => {
      const code = err.data?.code;
      done(code ? `${err.message}:${code}` : `error:${err.message}`);
      if (code === "overloaded" && !(err.data.retry_after_ms > 0)) results.bad_retry_after = true;
    });
  }
}

function close({ id }) {
  const socket = sockets.get(id);
  if (socket) socket.close();
  sockets.delete(id);
  out({ id, type: "closed" });
}

const ops = { connect, emit, flood, storm, close };

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  try {
    ops[command.op](command);
  } catch (err) {
    out({ id: command.id, type: "driver_error", message: String(err) });
  }
});
lines.on("close", () => {
  for (const socket of sockets.values()) socket.close();
  process.exit(0);
});
out({ type: "ready" });
