// Verifies a sockgate access token with the official `jose` library against a live JWKS.
//
// Input, one JSON object on stdin (so the token never shows in a process listing):
//   {"jwks_url": "...", "token": "...", "issuer": "...", "audience": "..."}
// Output, one JSON line on stdout:
//   {"ok": true, "header": {...}, "payload": {...}}                   exit 0
//   {"ok": false, "code": "ERR_...", "claim": "aud"|null, "message"}  exit 1
// Exit 2 when the input itself is unusable.
import { createRemoteJWKSet, jwtVerify } from "jose";

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

let input;
try {
  input = JSON.parse(await readStdin());
  for (const key of ["jwks_url", "token", "issuer", "audience"]) {
    if (typeof input[key] !== "string") throw new Error(`missing string "${key}"`);
  }
} catch (err) {
  process.stdout.write(`${JSON.stringify({ ok: false, code: "BAD_INPUT", message: String(err) })}\n`);
  process.exit(2);
}

const jwks = createRemoteJWKSet(new URL(input.jwks_url), { timeoutDuration: 5000 });
try {
  const { payload, protectedHeader } = await jwtVerify(input.token, jwks, {
    issuer: input.issuer,
    audience: input.audience,
    typ: "at+jwt",
    algorithms: ["RS256"],
  });
  process.stdout.write(`${JSON.stringify({ ok: true, header: protectedHeader, payload })}\n`);
} catch (err) {
  const result = { ok: false, code: err.code ?? err.name, claim: err.claim ?? null, message: err.message };
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exitCode = 1;
}
