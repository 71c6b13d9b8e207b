// The benchmark's baseline: a socket.io server written the way common tutorials do it.
//
// Express app + socket.io, a JWT middleware verifying RS256 with the public key (jsonwebtoken),
// @socket.io/redis-adapter with node-redis pub/sub clients for fan-out between replicas. It
// speaks sockgate's client contract so the same load generator drives both servers:
//
//   handshake   io(url, {auth: {token}}); refusal connect_error "unauthorized" {code, message}
//   join        {room} -> ack {ok, room}; "public:*" rooms only; presence to the room
//   leave       {room} -> ack {ok, room}
//   message     {room, text} -> ack {ok, id, ts}; others in the room get
//               message {id, room, text, sender: {id, name}, ts}
//
// No rate limits, size caps or revocations: that is the tutorial shape this is a baseline of.
//
//   PORT=3001 JWT_PUBLIC_KEY_FILE=pub.pem JWT_ISSUER=http://127.0.0.1:8000 \
//   REDIS_URL=redis://127.0.0.1:6379 node server.mjs
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";

import { createAdapter } from "@socket.io/redis-adapter";
import express from "express";
import jwt from "jsonwebtoken";
import { createClient } from "redis";
import { Server } from "socket.io";

const PORT = Number(process.env.PORT ?? 3000);
const HOST = process.env.HOST ?? "127.0.0.1";
const ISSUER = process.env.JWT_ISSUER ?? "http://127.0.0.1:8000";
const AUDIENCE = process.env.JWT_AUDIENCE ?? "gateway";
const publicKey = readFileSync(process.env.JWT_PUBLIC_KEY_FILE);
const ROOM = /^[A-Za-z0-9:_.-]{1,128}$/;

const app = express();
app.get("/healthz", (req, res) => res.json({ status: "ok" }));

const httpServer = createServer(app);
const io = new Server(httpServer);

if (process.env.REDIS_URL) {
  const pubClient = createClient({ url: process.env.REDIS_URL });
  const subClient = pubClient.duplicate();
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient));
}

function refusal(code, message) {
  const err = new Error("unauthorized");
  err.data = { code, message };
  return err;
}

// The JWT middleware of the tutorials.
io.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  if (!token) return next(refusal("token_missing", "no token was presented"));
  try {
    socket.data.user = jwt.verify(token, publicKey, {
      algorithms: ["RS256"],
      issuer: ISSUER,
      audience: AUDIENCE,
    });
    next();
  } catch (err) {
    if (err.name === "TokenExpiredError") next(refusal("token_expired", "the token has expired"));
    else next(refusal("token_invalid", "the token failed verification"));
  }
});

function failure(ack, code, message) {
  if (typeof ack === "function") ack({ ok: false, error: { code, message } });
}

io.on("connection", (socket) => {
  const user = { id: socket.data.user.sub, name: socket.data.user.name };
  socket.join(`user:${user.id}`);

  socket.on("join", (payload, ack) => {
    const room = payload?.room;
    if (typeof room !== "string" || !ROOM.test(room)) return failure(ack, "bad_request", "bad room");
    if (!room.startsWith("public:")) return failure(ack, "forbidden", "not allowed");
    socket.join(room);
    socket.to(room).emit("presence", { room, user, event: "join" });
    if (typeof ack === "function") ack({ ok: true, room });
  });

  socket.on("leave", (payload, ack) => {
    const room = payload?.room;
    if (!socket.rooms.has(room)) return failure(ack, "not_joined", "not in that room");
    socket.leave(room);
    socket.to(room).emit("presence", { room, user, event: "leave" });
    if (typeof ack === "function") ack({ ok: true, room });
  });

  socket.on("message", (payload, ack) => {
    const room = payload?.room;
    const text = payload?.text;
    if (typeof text !== "string" || !text) return failure(ack, "bad_request", "bad text");
    if (!socket.rooms.has(room)) return failure(ack, "not_joined", "join the room first");
    const message = { id: randomUUID(), room, text, sender: user, ts: Date.now() };
    socket.to(room).emit("message", message);
    if (typeof ack === "function") ack({ ok: true, id: message.id, ts: message.ts });
  });
});

httpServer.listen(PORT, HOST, () => console.log(`node baseline listening on ${HOST}:${PORT}`));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
