// Health and disconnects over raw sockets, server started with --max-connections 2: /health is
// answered while both generation slots stream and a third generation gets 503 at once; clients
// that shut down only their sending side after the request get their whole answer, streamed or
// not; clients that close mid-stream are aborted and leave 0 KV blocks in use. (503 after the
// engine fails is tested in tests/server/http_server_test.cpp, where the fault can be injected.)
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import { MODEL_NAME, kvBlocksUsed, parseMetrics, request, sleep, startServer } from "./harness.mjs";

const SLOTS = 2;
let server;

before(async () => {
  server = await startServer("health", ["--max-connections", String(SLOTS)]);
});

after(async () => {
  if (server && !server.exit) await server.stop();
});

// Opens a socket, sends a POST of `body` to `route`; `halfClose` then shuts down the sending
// side. Returns {socket, received: () => text so far, ended: Promise<text>}.
function rawPost(route, body, { halfClose = false } = {}) {
  const payload = JSON.stringify(body);
  const socket = net.connect({ host: "127.0.0.1", port: server.port });
  let text = "";
  socket.setEncoding("utf8");
  socket.on("data", (d) => { text += d; });
  const ended = new Promise((resolve) => {
    socket.on("close", () => resolve(text));
    socket.on("error", () => {});
  });
  socket.write(`POST ${route} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`);
  if (halfClose) socket.end();  // FIN: nothing more to send, still reading
  return { socket, received: () => text, ended };
}

// The status of the final answer, past any 1xx.
function finalStatus(text) {
  for (const m of text.matchAll(/HTTP\/1\.1 (\d{3})/g)) {
    if (Number(m[1]) >= 200) return Number(m[1]);
  }
  return 0;
}

async function waitFor(predicate, ms, what) {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > ms) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(20);
  }
}

async function kvUsed() {
  const res = await request(server.url, "GET", "/metrics");
  return kvBlocksUsed(parseMetrics(res.text)).reduce((a, s) => a + s.value, 0);
}

const completion = (extra) => ({ model: MODEL_NAME, prompt: "Tell me a story.", temperature: 0,
  ignore_eos: true, ...extra });

describe("health and disconnects", () => {
  test("a half-closed client gets its whole answer, not streamed", { timeout: 60_000 }, async () => {
    const text = await rawPost("/v1/completions", completion({ max_tokens: 12 }), { halfClose: true }).ended;
    assert.equal(finalStatus(text), 200, text);
    const body = JSON.parse(text.slice(text.lastIndexOf("\r\n\r\n")));
    assert.equal(body.usage.completion_tokens, 12, text);
    assert.equal(body.choices[0].finish_reason, "length");
  });

  test("a half-closed client gets its whole answer, streamed", { timeout: 60_000 }, async () => {
    const text = await rawPost("/v1/completions", completion({ max_tokens: 12, stream: true }),
      { halfClose: true }).ended;
    assert.equal(finalStatus(text), 200, text);
    assert.match(text, /"finish_reason":"length"/);
    assert.match(text, /data: \[DONE\]/);
  });

  test(`/health answers while ${SLOTS} streams hold every generation slot; closing them frees their blocks`,
    { timeout: 120_000 }, async () => {
      const streams = Array.from({ length: SLOTS },
        () => rawPost("/v1/completions", completion({ max_tokens: 400, stream: true })));
      for (const s of streams) await waitFor(() => s.received().includes("data: "), 30_000, "first chunk");

      const started = Date.now();
      const health = await Promise.race([request(server.url, "GET", "/health"),
        sleep(2_000).then(() => ({ status: "no answer within 2 s" }))]);
      assert.equal(health.status, 200);
      console.log(`health: answered in ${Date.now() - started} ms with ${SLOTS} streams running`);
      assert.equal((await request(server.url, "GET", "/metrics")).status, 200);
      assert.ok((await kvUsed()) > 0, "no KV blocks in use while streams run");

      const busy = await request(server.url, "POST", "/v1/completions", completion({ max_tokens: 2 }));
      assert.equal(busy.status, 503, busy.text);
      assert.match(busy.json?.error?.message ?? "", /--max-connections/);

      for (const s of streams) s.socket.destroy();  // the clients vanish mid-stream
      const start = Date.now();
      let used;
      while ((used = await kvUsed()) !== 0 && Date.now() - start < 3_000) await sleep(50);
      assert.equal(used, 0, "KV blocks still in use 3 s after the clients closed");
      for (const s of streams) assert.ok(!s.received().includes("[DONE]"), "a stream ran to its end");
      const after = await request(server.url, "POST", "/v1/completions", completion({ max_tokens: 2 }));
      assert.equal(after.status, 200, after.text);
    });
});
