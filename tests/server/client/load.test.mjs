// Load and disconnects: 200 streaming requests through the openai client from a pool of 64
// concurrent ones, every third disconnecting after its first chunk (with a long max_tokens, so
// a request that is not aborted keeps the server busy for minutes). Every other request must
// give exactly the greedy output of `l2kv generate` on the same prompt; afterwards /metrics
// shows no KV blocks in use and nothing running, and the server still answers. Then one
// disconnect watched through /metrics, and SIGTERM with a stream in flight.
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, test } from "node:test";
import {
  MODEL_NAME, generateReference, kvBlocksUsed, parseMetrics, request, sleep, startServer,
} from "./harness.mjs";

const REQUESTS = 200;
const POOL = 64;
const DISTINCT = 20;  // prompts; each used by 10 requests, half through chat
const MAX = 8;  // tokens of the requests that complete
const ABORT_MAX = 200;  // tokens the disconnecting requests ask for
const DISCONNECT_MAX = 480;  // of the one watched through /metrics (max_model_len is 512)

const PROMPTS = Array.from({ length: DISTINCT },
  (_, i) => `Request ${i}: write a short line about topic number ${(i * 7) % 13}.`);
const messagesOf = (p) => [{ role: "user", content: p }];

let server, client, ref;

before(async () => {
  server = await startServer("load");
  client = server.client({ timeout: 300_000 });
  const lines = await generateReference(
    [...PROMPTS.map((prompt) => ({ prompt })), ...PROMPTS.map((p) => ({ messages: messagesOf(p) }))], MAX);
  ref = { completion: lines.slice(0, DISTINCT), chat: lines.slice(DISTINCT) };
});

after(async () => {
  if (server && !server.exit) await server.stop();
});

async function metrics() {
  const res = await request(server.url, "GET", "/metrics");
  assert.equal(res.status, 200, `/metrics answered ${res.status}`);
  return parseMetrics(res.text);
}

function gauge(samples, name) {
  const s = samples.filter((x) => x.name === name);
  return s.length ? s.reduce((a, x) => a + x.value, 0) : undefined;
}

const used = (samples) => kvBlocksUsed(samples).reduce((a, s) => a + s.value, 0);

// Polls /metrics every `every` ms until `done(samples)` or `ms` have passed; returns the last
// samples, whether `done` held, and how long it took.
async function pollMetrics(done, ms, every = 100) {
  const start = Date.now();
  for (;;) {
    const m = await metrics();
    if (done(m)) return { m, ok: true, ms: Date.now() - start };
    if (Date.now() - start > ms) return { m, ok: false, ms: Date.now() - start };
    await sleep(every);
  }
}

// Waits until no KV block is in use and nothing runs or waits; returns the samples and how
// long it took, or throws with the last values after `ms`.
async function waitIdle(ms) {
  const state = (m) => ({ kv_blocks_used: used(m), running: gauge(m, "l2kv:num_requests_running"),
    waiting: gauge(m, "l2kv:num_requests_waiting") });
  const idle = await pollMetrics((m) => {
    const s = state(m);
    return s.kv_blocks_used === 0 && !s.running && !s.waiting;
  }, ms);
  if (!idle.ok) throw new Error(`not idle ${ms} ms later: ${JSON.stringify(state(idle.m))}`);
  return idle;
}

function job(j) {
  const p = j % DISTINCT;
  return { j, p, chat: Math.floor(j / DISTINCT) % 2 === 1, abort: j % 3 === 2 };
}

async function runJob({ p, chat, abort }) {
  const params = { model: MODEL_NAME, temperature: 0, stream: true,
    max_tokens: abort ? ABORT_MAX : MAX, ...(abort ? { ignore_eos: true } : {}) };
  const stream = chat
    ? await client.chat.completions.create({ ...params, messages: messagesOf(PROMPTS[p]) })
    : await client.completions.create({ ...params, prompt: PROMPTS[p] });
  let text = "", finish = null, chunks = 0;
  for await (const chunk of stream) {
    ++chunks;
    for (const c of chunk.choices) {
      text += chat ? (c.delta?.content ?? "") : (c.text ?? "");
      if (c.finish_reason) finish = c.finish_reason;
    }
    if (abort) {
      stream.controller.abort();  // the client goes away mid-stream
      break;
    }
  }
  return { text, finish, chunks };
}

describe("load", () => {
  test(`${REQUESTS} streaming requests, ${POOL} at a time, a third disconnecting early`, { timeout: 600_000 }, async () => {
    const jobs = Array.from({ length: REQUESTS }, (_, j) => job(j));
    const results = new Array(REQUESTS);
    let next = 0, done = false, peak = { running: 0, kv_blocks_used: 0 };
    const sampler = (async () => {  // peak load seen through /metrics while the pool runs
      while (!done) {
        try {
          const m = await metrics();
          peak = { running: Math.max(peak.running, gauge(m, "l2kv:num_requests_running") ?? 0),
            kv_blocks_used: Math.max(peak.kv_blocks_used, used(m)) };
        } catch { /* reported by the checks below */ }
        await sleep(250);
      }
    })();
    const start = Date.now();
    await Promise.all(Array.from({ length: POOL }, async () => {
      while (next < REQUESTS) {
        const j = next++;
        try {
          results[j] = await runJob(jobs[j]);
        } catch (e) {
          const cause = e?.cause ? ` (cause: ${e.cause.code ?? ""} ${e.cause.message ?? e.cause}` +
            `${e.cause.cause ? `; ${e.cause.cause.code ?? ""} ${e.cause.cause.message ?? ""}` : ""})` : "";
          results[j] = { error: `${e?.constructor?.name}: ${e?.message}${cause}` };
        }
      }
    }));
    done = true;
    await sampler;
    const seconds = (Date.now() - start) / 1000;
    console.log(`load: ${REQUESTS} requests in ${seconds.toFixed(1)} s; peak running ${peak.running}, ` +
      `peak KV blocks used ${peak.kv_blocks_used}`);

    const wrong = [];
    for (const [j, r] of results.entries()) {
      const { p, chat, abort } = jobs[j];
      if (r.error) {
        wrong.push(`#${j} (${chat ? "chat" : "completion"}${abort ? ", aborting" : ""}): ${r.error}`);
      } else if (abort) {
        if (r.chunks < 1) wrong.push(`#${j}: aborting request got no chunk`);
      } else {
        const want = (chat ? ref.chat : ref.completion)[p];
        if (r.text !== want.output || r.finish !== want.finish_reason) {
          wrong.push(`#${j} (${chat ? "chat" : "completion"} of prompt ${p}): ${JSON.stringify(r.text)} ` +
            `(${r.finish}), l2kv generate: ${JSON.stringify(want.output)} (${want.finish_reason})`);
        }
      }
    }
    assert.deepEqual(wrong, [], `${wrong.length} of ${REQUESTS} requests wrong:\n${wrong.slice(0, 20).join("\n")}`);
    assert.ok(peak.running >= 2, `never more than ${peak.running} request running at once: no batching seen`);

    const idle = await waitIdle(10_000);
    console.log(`load: idle (0 KV blocks used) ${idle.ms} ms after the last request`);
    assert.equal((await request(server.url, "GET", "/health")).status, 200);
    const again = await client.completions.create({ model: MODEL_NAME, prompt: PROMPTS[0], max_tokens: MAX, temperature: 0 });
    assert.equal(again.choices[0].text, ref.completion[0].output, "a request after the load");
  });

  test("a client that disconnects mid-stream frees its KV blocks at once", { timeout: 60_000 }, async () => {
    await waitIdle(10_000);
    const before = await metrics();
    // A prompt no earlier request sent (no prefix-cache hit) and as many tokens as the context
    // allows, so the request is still running when /metrics is read below.
    const body = JSON.stringify({ model: MODEL_NAME, prompt: "A prompt of its own, for the disconnect.",
      max_tokens: DISCONNECT_MAX,
      ignore_eos: true, temperature: 0, stream: true });
    const u = new URL(server.url);
    const req = http.request({ hostname: u.hostname, port: u.port, path: "/v1/completions", method: "POST",
      agent: false, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } });
    const firstChunk = new Promise((resolve, reject) => {
      req.on("response", (res) => {
        if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
        res.once("data", resolve);
      });
      req.on("error", reject);
    });
    req.end(body);
    await firstChunk;
    // /metrics shows the engine as of its last finished step, and the first chunk can reach
    // the client before the step that made it has finished: look again for up to a second.
    const during = await pollMetrics((m) => used(m) > 0, 1_000, 50);
    assert.ok(during.ok, "no KV blocks in use while a request streams");
    req.destroy();  // the client vanishes
    const idle = await waitIdle(2_000);
    console.log(`disconnect: 0 KV blocks used ${idle.ms} ms after the socket closed`);
    const generated = gauge(idle.m, "l2kv:generation_tokens_total");
    if (generated !== undefined) {
      const grew = generated - (gauge(before, "l2kv:generation_tokens_total") ?? 0);
      assert.ok(grew < DISCONNECT_MAX, `${grew} tokens generated for a request aborted after its first chunk`);
      await sleep(500);
      assert.equal(gauge(await metrics(), "l2kv:generation_tokens_total"), generated, "still generating after the abort");
    }
    assert.equal((await request(server.url, "GET", "/health")).status, 200);
  });

  test("SIGTERM with a stream in flight: the stream ends and the server exits cleanly", { timeout: 60_000 }, async () => {
    const stream = await client.completions.create({ model: MODEL_NAME, prompt: PROMPTS[2], max_tokens: ABORT_MAX,
      ignore_eos: true, temperature: 0, stream: true });
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next();  // the request is running
    server.proc.kill("SIGTERM");
    const drained = (async () => {
      try {
        while (!(await iterator.next()).done) { /* finished or aborted by the shutdown */ }
      } catch { /* a closed connection is a fine end too */ }
      return true;
    })();
    const ended = await Promise.race([drained, sleep(15_000).then(() => false)]);
    const exit = await Promise.race([server.exited, sleep(15_000).then(() => null)]);
    if (!exit) server.proc.kill("SIGKILL");
    assert.ok(ended, "the stream did not end within 15 s of SIGTERM");
    assert.ok(exit, "l2kv serve did not exit within 15 s of SIGTERM with a stream in flight");
    assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}`);
  });
});
