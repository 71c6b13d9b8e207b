// The benchmark's load generator: thousands of Socket.IO clients in one Node process.
//
// The hot paths are driven with `ws` speaking Engine.IO v4 / Socket.IO v5 directly (open,
// CONNECT with {token}, EVENT, ACK, ping/pong), so the generator's own cost per connection and
// per message stays a small fraction of the server's and the figures measure the server. Before
// every run `probe` checks the server with the official socket.io-client: connect, join,
// message fan-out and a refusal, exactly as an application would.
//
// Driven by loadtests/bench_gateway.py: commands arrive on stdin, one JSON object a line, and
// each answer is one JSON line on stdout carrying the command's `ref`:
//
//   {"op":"tokens","file":F}                       load minted tokens (loadtests.mint_tokens)
//   {"op":"probe","url":U}                         official-client contract check
//   {"op":"connect","group":G,"urls":[U…],"count":N,"inflight":K,"offset":O}
//        open N authenticated sockets, K handshakes in flight; latency per handshake
//   {"op":"join","group":G,"rooms":R}              socket i joins public:bench-<room of i>
//   {"op":"fanout","group":G,"rooms":R,"msgs_per_s":M,"duration_s":D,"drain_s":S}
//        publishers send M messages/s for D s, open loop; every delivery is timed
//   {"op":"close","group":G}                       close a group's sockets, wait for the ends
//   {"op":"exit"}
import { createInterface } from "node:readline";
import { readFileSync } from "node:fs";

import { io } from "socket.io-client";
import WebSocket from "ws";

const HANDSHAKE_TIMEOUT_MS = 15000;
const ACK_TIMEOUT_MS = 10000;
// sockgate's default event rate is 20/s per socket (burst 40): publishers stay well under it.
const MAX_MSGS_PER_PUBLISHER = 12;

let tokens = [];
const groups = new Map();

function out(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function now() {
  return performance.timeOrigin + performance.now();
}

function percentile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.round(q * (sorted.length - 1)))];
}

function summary(values) {
  const sorted = Float64Array.from(values).sort();
  return {
    n: sorted.length,
    p50: percentile(sorted, 0.5),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    max: sorted.length ? sorted[sorted.length - 1] : null,
  };
}

function bump(counts, key) {
  counts[key] = (counts[key] ?? 0) + 1;
}

// One raw Socket.IO client over ws. `onMessage` is the fan-out fast path.
class RawSocket {
  constructor(url, token) {
    this.url = url.replace(/^http/, "ws") + "/socket.io/?EIO=4&transport=websocket";
    this.token = token;
    this.acks = new Map();
    this.nextAck = 1;
    this.onMessage = null;
    this.closed = false;
    this.closeWaiters = [];
  }

  // Resolves to {ms} when the CONNECT is accepted, {refused: "message:code"} or {error}.
  open() {
    return new Promise((resolve) => {
      const started = performance.now();
      let settled = false;
      const settle = (result) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(result);
      };
      const timer = setTimeout(() => {
        this.ws.terminate();
        settle({ error: "timeout" });
      }, HANDSHAKE_TIMEOUT_MS);
      this.ws = new WebSocket(this.url, { skipUTF8Validation: true });
      this.ws.on("message", (data) => {
        const packet = data.toString();
        const kind = packet.charCodeAt(0);
        if (kind === 50 /* 2 ping */) {
          this.ws.send("3");
        } else if (kind === 48 /* 0 open */) {
          this.ws.send("40" + JSON.stringify({ token: this.token }));
        } else if (kind === 52 /* 4 message */) {
          const type = packet.charCodeAt(1);
          if (type === 50 /* 2 event */) {
            if (this.onMessage !== null) this.onMessage(packet);
          } else if (type === 51 /* 3 ack */) {
            this.ack(packet);
          } else if (type === 48 /* 0 connect */) {
            settle({ ms: performance.now() - started });
          } else if (type === 52 /* 4 connect error */) {
            const error = JSON.parse(packet.slice(2));
            settle({ refused: `${error.message}:${error.data?.code ?? "none"}` });
            this.ws.close();
          }
        }
      });
      this.ws.on("error", (err) => settle({ error: err.code ?? err.message }));
      this.ws.on("close", () => {
        this.closed = true;
        settle({ error: "closed" });
        for (const waiter of this.closeWaiters) waiter();
      });
    });
  }

  ack(packet) {
    const start = packet.indexOf("[");
    const id = Number(packet.slice(2, start));
    const callback = this.acks.get(id);
    if (callback !== undefined) {
      this.acks.delete(id);
      callback(packet.slice(start));
    }
  }

  // Sends an event whose JSON array is already encoded; `callback(rawArgs)` gets the ack.
  emitRaw(encodedArgs, callback) {
    const id = this.nextAck++;
    this.acks.set(id, callback);
    this.ws.send("42" + id + encodedArgs);
  }

  close() {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.closeWaiters.push(resolve);
      this.ws.close();
    });
  }
}

function ackOk(raw) {
  return raw.startsWith('[{"ok":true') || raw.includes('"ok":true');
}

function ackCode(raw) {
  try {
    return JSON.parse(raw)[0]?.error?.code ?? "unknown";
  } catch {
    return "unparsable";
  }
}

async function connect({ group, urls, count, inflight, offset = 0 }) {
  const sockets = groups.get(group) ?? [];
  groups.set(group, sockets);
  const base = sockets.length;
  const latencies = [];
  const refused = {};
  const errors = {};
  const cpu = process.cpuUsage();
  const started = performance.now();
  await new Promise((resolve) => {
    let next = 0;
    let done = 0;
    const launch = () => {
      const i = next++;
      const socket = new RawSocket(urls[i % urls.length], tokens[(offset + i) % tokens.length]);
      socket.index = base + i;
      socket.open().then((result) => {
        if (result.ms !== undefined) {
          latencies.push(result.ms);
          sockets[base + i] = socket;
        } else if (result.refused !== undefined) bump(refused, result.refused);
        else bump(errors, result.error);
        if (++done === count) resolve();
        else if (next < count) launch();
      });
    };
    for (let k = 0; k < Math.min(inflight, count); k++) launch();
  });
  const elapsed = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  return {
    connected: latencies.length,
    refused,
    errors,
    elapsed_s: elapsed,
    connects_per_s: latencies.length / elapsed,
    latency_ms: summary(latencies),
    client_cpu_pct: (100 * (used.user + used.system)) / 1e6 / elapsed,
    open: sockets.filter((s) => s && !s.closed).length,
  };
}

function roomOf(socket, rooms, replicas) {
  // Consecutive sockets alternate between replicas; this spreads each room over all of them.
  return Math.floor(socket.index / replicas) % rooms;
}

async function join({ group, rooms, replicas = 1, inflight = 200 }) {
  const sockets = (groups.get(group) ?? []).filter((s) => s && !s.closed);
  const results = {};
  const members = new Array(rooms).fill(0);
  await new Promise((resolve) => {
    if (sockets.length === 0) return resolve();
    let next = 0;
    let done = 0;
    const launch = () => {
      const socket = sockets[next++];
      const room = roomOf(socket, rooms, replicas);
      const timer = setTimeout(() => finish("ack_timeout"), ACK_TIMEOUT_MS);
      let finished = false;
      const finish = (key) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        bump(results, key);
        if (key === "ok") {
          socket.room = room;
          members[room]++;
        }
        if (++done === sockets.length) resolve();
        else if (next < sockets.length) launch();
      };
      socket.emitRaw(JSON.stringify(["join", { room: `public:bench-${room}` }]), (raw) =>
        finish(ackOk(raw) ? "ok" : ackCode(raw)),
      );
    };
    for (let k = 0; k < Math.min(inflight, sockets.length); k++) launch();
  });
  return { joined: results, members };
}

async function fanout({ group, rooms, msgs_per_s, duration_s, drain_s, step = 0 }) {
  const sockets = (groups.get(group) ?? []).filter((s) => s && !s.closed && s.room !== undefined);
  const members = new Array(rooms).fill(0);
  for (const socket of sockets) members[socket.room]++;
  // Publishers: spread over the rooms, enough that none sends more than the per-socket cap.
  const publisherCount = Math.max(rooms, Math.ceil(msgs_per_s / MAX_MSGS_PER_PUBLISHER));
  const byRoom = Array.from({ length: rooms }, () => []);
  for (const socket of sockets) byRoom[socket.room].push(socket);
  const publishers = [];
  for (let k = 0; publishers.length < publisherCount && k < sockets.length; k++) {
    const room = byRoom[k % rooms];
    const candidate = room[Math.floor(k / rooms)];
    if (candidate !== undefined) publishers.push(candidate);
  }
  const total = Math.round(msgs_per_s * duration_s);
  const capacity = Math.ceil(total * Math.max(1, ...members) * 1.05) + 1024;
  const latencies = new Float64Array(capacity);
  const tsLatencies = new Float64Array(capacity);
  let delivered = 0;
  let lastDelivery = 0;
  let expected = 0;
  let stray = 0;
  const acks = {};
  const marker = `"text":"b:${step}:`;
  const onMessage = (packet) => {
    if (!packet.startsWith('42["message"')) return;
    const at = packet.indexOf(marker);
    if (at < 0) {
      stray++;
      return;
    }
    const from = at + marker.length;
    const sentAt = Number(packet.slice(from, packet.indexOf(":", from)));
    const received = now();
    const tsAt = packet.lastIndexOf('"ts":');
    const ts = tsAt >= 0 ? Number.parseInt(packet.slice(tsAt + 5), 10) : Number.NaN;
    if (delivered < latencies.length) {
      latencies[delivered] = received - sentAt;
      tsLatencies[delivered] = received - ts;
    }
    delivered++;
    lastDelivery = performance.now();
  };
  for (const socket of sockets) socket.onMessage = onMessage;
  const pad = "x".repeat(40);
  const cpu = process.cpuUsage();
  const started = performance.now();
  let sent = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * msgs_per_s));
      while (sent < due) {
        const publisher = publishers[sent % publishers.length];
        const room = `public:bench-${publisher.room}`;
        const text = `b:${step}:${now().toFixed(3)}:${pad}`;
        expected += members[publisher.room] - 1;
        publisher.emitRaw(`["message",{"room":"${room}","text":"${text}"}]`, (raw) =>
          bump(acks, ackOk(raw) ? "ok" : ackCode(raw)),
        );
        sent++;
      }
      if (sent < total) setTimeout(tick, 1);
      else resolve();
    };
    tick();
  });
  const sendElapsed = (performance.now() - started) / 1000;
  const deadline = performance.now() + drain_s * 1000;
  while (delivered < expected && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const used = process.cpuUsage(cpu);
  const wall = (performance.now() - started) / 1000;
  for (const socket of sockets) socket.onMessage = null;
  const n = Math.min(delivered, latencies.length);
  // Percentiles over every expected delivery: one still missing counts as slower than all.
  const sorted = latencies.slice(0, n).sort();
  const lost = Math.max(0, expected - n);
  const pct = (q) => {
    const rank = Math.round(q * (expected - 1));
    return rank < n ? sorted[rank] : null;
  };
  const tsSorted = tsLatencies.slice(0, n).sort();
  return {
    publishers: publishers.length,
    room_members: members,
    sent,
    acks,
    expected,
    delivered,
    lost,
    stray,
    send_elapsed_s: sendElapsed,
    offered_msgs_per_s: sent / sendElapsed,
    offered_deliveries_per_s: expected / sendElapsed,
    // Throughput over the time the deliveries really took: a backlog drained after the send
    // window stretches it.
    deliveries_per_s:
      Math.min(delivered, expected) / Math.max(sendElapsed, (lastDelivery - started) / 1000),
    latency_ms: { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: n ? sorted[n - 1] : null },
    ts_latency_ms: { p50: percentile(tsSorted, 0.5), p99: percentile(tsSorted, 0.99) },
    client_cpu_pct: (100 * (used.user + used.system)) / 1e6 / wall,
  };
}

async function close({ group }) {
  const sockets = (groups.get(group) ?? []).filter((s) => s && !s.closed);
  groups.delete(group);
  const all = Promise.all(sockets.map((s) => s.close()));
  const timeout = new Promise((r) => setTimeout(r, 15000, "timeout"));
  const result = await Promise.race([all, timeout]);
  return { closed: sockets.length, timed_out: result === "timeout" };
}

// The contract, through the official client, before anything is measured.
async function probe({ url }) {
  const open = (token) =>
    io(url, { auth: { token }, transports: ["websocket"], reconnection: false, forceNew: true });
  const connected = (socket) =>
    new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    });
  const a = open(tokens[0]);
  const b = open(tokens[1]);
  try {
    await Promise.all([connected(a), connected(b)]);
    const room = "public:probe";
    for (const s of [a, b]) {
      const ack = await s.timeout(ACK_TIMEOUT_MS).emitWithAck("join", { room });
      if (!ack?.ok) throw new Error(`join refused: ${JSON.stringify(ack)}`);
    }
    const received = new Promise((resolve) => b.once("message", resolve));
    const ack = await a.timeout(ACK_TIMEOUT_MS).emitWithAck("message", { room, text: "probe" });
    if (!ack?.ok || typeof ack.id !== "string") throw new Error(`message ack: ${JSON.stringify(ack)}`);
    const message = await Promise.race([
      received,
      new Promise((_, reject) => setTimeout(() => reject(new Error("no delivery")), 5000)),
    ]);
    const fields = ["id", "room", "text", "sender", "ts"].filter((k) => !(k in message));
    if (fields.length || message.text !== "probe" || !message.sender?.id) {
      throw new Error(`bad message: ${JSON.stringify(message)}`);
    }
    const bad = open("not-a-token");
    const error = await connected(bad).then(
      () => null,
      (err) => err,
    );
    bad.close();
    if (error?.message !== "unauthorized" || !error.data?.code) {
      throw new Error(`bad token not refused as unauthorized: ${error?.message}`);
    }
    return { ok: true };
  } finally {
    a.close();
    b.close();
  }
}

function loadTokens({ file }) {
  tokens = JSON.parse(readFileSync(file, "utf8")).tokens.map((t) => t.token);
  return { count: tokens.length };
}

const ops = { tokens: loadTokens, probe, connect, join, fanout, close };

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  if (command.op === "exit") process.exit(0);
  try {
    const result = await ops[command.op](command);
    out({ ref: command.ref, ok: true, result });
  } catch (err) {
    out({ ref: command.ref, ok: false, error: String(err?.stack ?? err) });
  }
});
lines.on("close", () => process.exit(0));
out({ ref: 0, ok: true, result: "ready" });
