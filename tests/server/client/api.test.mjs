// The OpenAI API of `l2kv serve` through the official openai npm client: completions and chat,
// streaming and not, n > 1, stop strings, logprobs, usage, echo, token-id and list prompts.
// Greedy outputs are checked against `l2kv generate` on the same prompts (same engine, same
// fixture), so every check is exact.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import {
  L2KV_BIN, MODEL_NAME, generateReference, parseMetrics, request, sseData, startServer,
} from "./harness.mjs";

const MAX = 16;
const PROMPT = "The capital of France is";
const PROMPT2 = "Once upon a time";
const PROMPT_IDS = [128000, 791, 6864, 315, 9822, 374];  // <|begin_of_text|>The capital of France is
const MESSAGES = [{ role: "system", content: "You are terse." },
  { role: "user", content: "Hello! Who are you?" }];

// Tokens per KV block of this file's server (the default, named so the cache counts below follow it).
const KV_BLOCK = 32;

let server, client, ref;

before(async () => {
  server = await startServer("api", ["--block-size", String(KV_BLOCK)]);
  client = server.client();
  const [r0, r1, r2, r3] = await generateReference(
    [{ prompt: PROMPT }, { messages: MESSAGES }, { prompt: PROMPT2 }, { prompt_ids: PROMPT_IDS }], MAX);
  ref = { completion: r0, chat: r1, completion2: r2, ids: r3 };
});

after(async () => {
  if (!server) return;
  const exit = await server.stop();
  assert.equal(exit.killed, false, "l2kv serve did not exit within 15 s of SIGTERM");
  assert.equal(exit.code, 0, `l2kv serve exited with ${JSON.stringify(exit)} after SIGTERM`);
});

function checkUsage(usage, promptTokens, completionTokens) {
  assert.ok(usage, "usage missing");
  if (promptTokens !== undefined) assert.equal(usage.prompt_tokens, promptTokens, "usage.prompt_tokens");
  if (completionTokens !== undefined) assert.equal(usage.completion_tokens, completionTokens, "usage.completion_tokens");
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens, "usage.total_tokens");
}

// Text of every choice of a completion stream by index; also the chunks themselves.
async function collectCompletionStream(stream) {
  const texts = {}, finish = {}, chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
    for (const c of chunk.choices) {
      texts[c.index] = (texts[c.index] ?? "") + (c.text ?? "");
      if (c.finish_reason) finish[c.index] = c.finish_reason;
    }
  }
  return { texts, finish, chunks };
}

async function collectChatStream(stream) {
  const texts = {}, finish = {}, roles = {}, chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
    for (const c of chunk.choices) {
      if (c.delta?.role) roles[c.index] = c.delta.role;
      texts[c.index] = (texts[c.index] ?? "") + (c.delta?.content ?? "");
      if (c.finish_reason) finish[c.index] = c.finish_reason;
    }
  }
  return { texts, finish, roles, chunks };
}

// A stop string taken from the middle of `text` (characters that are not U+FFFD) and the text
// the server must return with it: everything before its first occurrence.
function stopFrom(text) {
  for (let i = Math.floor(text.length / 2); i + 3 <= text.length; ++i) {
    const stop = text.slice(i, i + 3);
    if (!stop.includes("\uFFFD") && stop.trim() !== "") return { stop, expected: text.slice(0, text.indexOf(stop)) };
  }
  throw new Error(`no usable stop string in ${JSON.stringify(text)}`);
}

describe("endpoints", () => {
  test("GET /health, /version, /v1/models", async () => {
    assert.equal((await request(server.url, "GET", "/health")).status, 200);
    const version = await request(server.url, "GET", "/version");
    assert.equal(version.status, 200);
    assert.ok(version.text.length > 0, "/version is empty");
    const models = await client.models.list();
    const ids = models.data.map((m) => m.id);
    assert.ok(ids.includes(MODEL_NAME), `/v1/models lists ${JSON.stringify(ids)}`);
    const m = models.data.find((x) => x.id === MODEL_NAME);
    assert.equal(m.object, "model");
  });

  test("the reference itself is usable", () => {
    for (const r of Object.values(ref)) {
      assert.ok(r.completion_tokens > 0 && r.output.length > 0, JSON.stringify(r));
    }
  });
});

describe("tokenizer endpoints (vLLM's /tokenize and /detokenize)", () => {
  test("/tokenize a prompt: the ids the completion runs; token_strs when asked", async () => {
    const r = await request(server.url, "POST", "/tokenize", { model: MODEL_NAME, prompt: PROMPT });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(Object.keys(r.json), ["count", "max_model_len", "tokens", "token_strs"]);
    assert.deepEqual(r.json.tokens, PROMPT_IDS);
    assert.equal(r.json.count, PROMPT_IDS.length);
    assert.equal(r.json.max_model_len, 512);
    assert.equal(r.json.token_strs, null);
    const strs = await request(server.url, "POST", "/tokenize",
      { prompt: PROMPT, add_special_tokens: false, return_token_strs: true });
    assert.equal(strs.status, 200, strs.text);
    assert.deepEqual(strs.json.tokens, PROMPT_IDS.slice(1));
    assert.deepEqual(strs.json.token_strs, ["The", "\u0120capital", "\u0120of", "\u0120France", "\u0120is"]);
  });

  test("/tokenize messages: as many tokens as the chat completion's prompt", async () => {
    const r = await request(server.url, "POST", "/tokenize", { model: MODEL_NAME, messages: MESSAGES });
    assert.equal(r.status, 200, r.text);
    const c = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES, max_tokens: 1 });
    assert.equal(r.json.count, c.usage.prompt_tokens);
    const bare = await request(server.url, "POST", "/tokenize",
      { messages: MESSAGES, add_generation_prompt: false });
    assert.equal(bare.status, 200, bare.text);
    assert.ok(bare.json.count < r.json.count, "the generation prompt adds tokens");
    assert.deepEqual(r.json.tokens.slice(0, bare.json.count), bare.json.tokens);
  });

  test("/detokenize: the text of the ids, special tokens kept; round trip", async () => {
    const r = await request(server.url, "POST", "/detokenize", { model: MODEL_NAME, tokens: PROMPT_IDS });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { prompt: `<|begin_of_text|>${PROMPT}` });
    const back = await request(server.url, "POST", "/tokenize", { prompt: PROMPT2, add_special_tokens: false });
    const text = await request(server.url, "POST", "/detokenize", { tokens: back.json.tokens });
    assert.equal(text.json.prompt, PROMPT2);
  });
});

describe("prefix caching", () => {
  const counter = (samples, name) => samples.find((x) => x.name === name)?.value;
  async function cacheCounters() {
    const m = parseMetrics((await request(server.url, "GET", "/metrics")).text);
    return { queries: counter(m, "l2kv:prefix_cache_queries_total"), hits: counter(m, "l2kv:prefix_cache_hits_total") };
  }

  test("a prompt sent again hits its cached blocks: same greedy text, hits in /metrics", async () => {
    const prompt = `${PROMPT2}, ${PROMPT} Paris. `.repeat(6);
    const tokens = (await request(server.url, "POST", "/tokenize", { prompt })).json.count;
    const before = await cacheCounters();
    assert.equal(typeof before.hits, "number", "no l2kv:prefix_cache_hits_total in /metrics");
    const ask = () => client.completions.create({ model: MODEL_NAME, prompt, max_tokens: 8, temperature: 0 });
    const first = await ask();
    const mid = await cacheCounters();
    const second = await ask();
    const after = await cacheCounters();
    assert.equal(second.choices[0].text, first.choices[0].text);
    assert.equal(mid.queries - before.queries, tokens);
    assert.equal(after.queries - mid.queries, tokens);
    // Every whole block but the one holding the prompt's last token.
    assert.equal(after.hits - mid.hits, KV_BLOCK * Math.floor((tokens - 1) / KV_BLOCK),
      `${tokens} prompt tokens`);
  });

  // Runs `l2kv bench-serve` against the server: its exit code, stdout, stderr and JSON result.
  async function benchServe(args) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "l2kv-bench-serve-"));
    const json = path.join(dir, "result.json");
    const argv = ["bench-serve", "--base-url", server.url, "--no-progress", "--json", json, ...args];
    const run = await new Promise((resolve) => execFile(L2KV_BIN, argv, (err, stdout, stderr) =>
      resolve({ code: err ? err.code : 0, stdout, stderr })));
    run.result = fs.existsSync(json) ? JSON.parse(fs.readFileSync(json, "utf8")) : null;
    fs.rmSync(dir, { recursive: true, force: true });
    return run;
  }

  test("bench-serve --multi-turn: each turn resends the conversation, later turns hit the cache", async () => {
    for (const [endpoint, extra] of [["/v1/chat/completions", []], ["/v1/completions", ["--random-text"]]]) {
      const before = await cacheCounters();
      const run = await benchServe(["--endpoint", endpoint, "--num-prompts", "2", "--multi-turn", "3",
        "--input-len", "24", "--output-len", "8", "--max-concurrency", "2", ...extra]);
      const after = await cacheCounters();
      assert.equal(run.code, 0, `${endpoint}: ${run.stderr}`);
      const r = run.result;
      assert.equal(r.completed, 6, `${endpoint}: ${JSON.stringify(r.errors)}`);
      assert.equal(r.failed, 0);
      assert.equal(r.multi_turn, 3);
      assert.equal(r.num_conversations, 2);
      assert.deepEqual(r.turns, [1, 2, 3, 1, 2, 3]);
      assert.deepEqual(r.output_lens, [8, 8, 8, 8, 8, 8]);
      assert.deepEqual(r.ttft_by_turn.map((t) => [t.turn, t.completed]), [[1, 2], [2, 2], [3, 2]]);
      // Turn k + 1's prompt is turn k's, its answer and 24 new words.
      for (let c = 0; c < 2; ++c)
        for (let k = 1; k < 3; ++k)
          assert.ok(r.input_lens[3 * c + k] > r.input_lens[3 * c + k - 1] + 24,
            `${endpoint}: prompt lengths ${r.input_lens}`);
      // Each of the 4 later turns finds at least its first block cached.
      assert.ok(after.hits - before.hits >= 4 * KV_BLOCK, `${endpoint}: ${after.hits - before.hits} tokens hit`);
      assert.match(run.stdout, /TTFT by Turn/);
      assert.match(run.stdout, /Turn 3 mean\/median\/P99 \(ms\):/);
    }
  });

  test("bench-serve --multi-turn on token-id completions: a clear error before any request", async () => {
    const run = await benchServe(["--endpoint", "/v1/completions", "--num-prompts", "1", "--multi-turn", "2"]);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /--multi-turn with \/v1\/completions needs --random-text/);
    assert.equal(run.result, null);
  });
});

describe("prompt logprobs", () => {
  test("echo + logprobs + max_tokens 0 (lm-evaluation-harness's loglikelihood): the prompt's logprobs only", async () => {
    const r = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: 0, echo: true, logprobs: 1, temperature: 0 });
    const c = r.choices[0];
    assert.equal(c.text, PROMPT);
    assert.equal(c.finish_reason, "length");
    checkUsage(r.usage, PROMPT_IDS.length, 0);
    assert.equal(c.logprobs.tokens.length, PROMPT_IDS.length);
    assert.equal(c.logprobs.tokens[0], "<|begin_of_text|>");
    assert.equal(c.logprobs.token_logprobs[0], null);
    assert.equal(c.logprobs.top_logprobs[0], null);
    for (let i = 1; i < PROMPT_IDS.length; ++i) {
      assert.ok(c.logprobs.token_logprobs[i] <= 0, `token ${i}: ${c.logprobs.token_logprobs[i]}`);
      // The most likely token, and the prompt's own when it is another (vLLM's logprobs + 1).
      const n = Object.keys(c.logprobs.top_logprobs[i]).length;
      assert.ok(n >= 1 && n <= 2, `top_logprobs[${i}] has ${n} entries`);
      assert.ok(c.logprobs.tokens[i] in c.logprobs.top_logprobs[i], `token ${i} is not in its top_logprobs`);
      assert.equal(c.logprobs.text_offset[i], c.logprobs.text_offset[i - 1] + [...c.logprobs.tokens[i - 1]].length);
    }
  });

  test("a prompt token's logprob equals the logprob the same token had when sampled", async () => {
    const first = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT_IDS, max_tokens: 1, logprobs: 0, temperature: 0 });
    const next = await request(server.url, "POST", "/tokenize", { prompt: first.choices[0].text, add_special_tokens: false });
    assert.equal(next.json.count, 1, "the greedy token round-trips as one token");
    const r = await client.completions.create({ model: MODEL_NAME, prompt: [...PROMPT_IDS, ...next.json.tokens], max_tokens: 1,
      temperature: 0, prompt_logprobs: 2 });
    const rows = r.choices[0].prompt_logprobs;
    assert.equal(rows.length, PROMPT_IDS.length + 1);
    assert.equal(rows[0], null);
    const last = rows.at(-1)[String(next.json.tokens[0])];
    assert.equal(last.rank, 1, "the greedy token is the most likely");
    assert.ok(Math.abs(last.logprob - first.choices[0].logprobs.token_logprobs[0]) < 1e-4,
      `${last.logprob} vs ${first.choices[0].logprobs.token_logprobs[0]}`);
    for (let i = 1; i < rows.length; ++i) {
      const token = i < PROMPT_IDS.length ? PROMPT_IDS[i] : next.json.tokens[0];
      assert.ok(String(token) in rows[i], `row ${i} lacks the prompt token`);
      assert.ok(Object.keys(rows[i]).length >= 2 && Object.keys(rows[i]).length <= 3);
    }
  });

  test("echo + logprobs streamed: the prompt's logprobs in the echo chunk", async () => {
    const r = await request(server.url, "POST", "/v1/completions",
      { model: MODEL_NAME, prompt: PROMPT, max_tokens: 2, echo: true, logprobs: 0, temperature: 0, stream: true });
    const events = sseData(r.text).filter((d) => d !== "[DONE]").map((d) => JSON.parse(d));
    const echo = events[0].choices[0];
    assert.equal(echo.text, PROMPT);
    assert.equal(echo.logprobs.tokens.length, PROMPT_IDS.length);
    assert.equal(echo.logprobs.token_logprobs[0], null);
    assert.ok(echo.logprobs.token_logprobs[1] < 0);
  });

  test("prompt_logprobs streamed: in the first chunk, as not streamed; then the tokens as usual", async () => {
    const plain = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX,
      temperature: 0, prompt_logprobs: 2 });
    const expected = plain.choices[0].prompt_logprobs;
    assert.equal(expected.length, PROMPT_IDS.length);
    const s = await collectCompletionStream(await client.completions.create({ model: MODEL_NAME, prompt: PROMPT,
      max_tokens: MAX, temperature: 0, prompt_logprobs: 2, stream: true, stream_options: { include_usage: true } }));
    const first = s.chunks[0].choices[0];
    assert.equal(first.text, "", "no echo asked for");
    assert.equal(first.logprobs, null);
    assert.equal(first.prompt_logprobs.length, expected.length);
    assert.equal(first.prompt_logprobs[0], null);
    for (let i = 1; i < expected.length; ++i) {
      assert.deepEqual(Object.keys(first.prompt_logprobs[i]).sort(), Object.keys(expected[i]).sort(), `row ${i}`);
      for (const [id, e] of Object.entries(expected[i])) {
        assert.equal(first.prompt_logprobs[i][id].rank, e.rank, `row ${i} token ${id}`);
        assert.ok(Math.abs(first.prompt_logprobs[i][id].logprob - e.logprob) < 1e-4, `row ${i} token ${id}`);
      }
    }
    for (const chunk of s.chunks.slice(1))
      for (const c of chunk.choices) assert.equal(c.prompt_logprobs, undefined, "only the first chunk has them");
    assert.equal(s.texts[0], ref.completion.output);
    assert.equal(s.finish[0], ref.completion.finish_reason);
    checkUsage(s.chunks.at(-1).usage, PROMPT_IDS.length, ref.completion.completion_tokens);
  });

  test("echo + logprobs + prompt_logprobs streamed, n = 2: each choice's first chunk echoes with both", async () => {
    const s = await collectCompletionStream(await client.completions.create({ model: MODEL_NAME, prompt: PROMPT,
      max_tokens: 2, temperature: 0, n: 2, echo: true, logprobs: 0, prompt_logprobs: 1, stream: true }));
    for (const index of [0, 1]) {
      const chunks = s.chunks.flatMap((c) => c.choices).filter((c) => c.index === index);
      const head = chunks[0];
      assert.equal(head.text, PROMPT);
      assert.equal(head.logprobs.tokens.length, PROMPT_IDS.length);
      assert.equal(head.prompt_logprobs.length, PROMPT_IDS.length);
      for (let i = 1; i < PROMPT_IDS.length; ++i) {
        const row = head.prompt_logprobs[i][String(PROMPT_IDS[i])];
        assert.ok(Math.abs(row.logprob - head.logprobs.token_logprobs[i]) < 1e-6, `choice ${index} token ${i}`);
      }
      assert.ok(chunks.length >= 2, "the generated tokens follow");
      assert.ok(s.texts[index].startsWith(PROMPT) && s.texts[index].length > PROMPT.length);
    }
  });

  test("chat prompt_logprobs beside the choices; bad values are 400s", async () => {
    const r = await request(server.url, "POST", "/v1/chat/completions",
      { model: MODEL_NAME, messages: MESSAGES, max_tokens: 1, prompt_logprobs: 0 });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.prompt_logprobs.length, r.json.usage.prompt_tokens);
    for (const body of [{ prompt: PROMPT, max_tokens: 0 }, { prompt: PROMPT, prompt_logprobs: 21 }]) {
      const bad = await request(server.url, "POST", "/v1/completions", { model: MODEL_NAME, ...body });
      assert.equal(bad.status, 400, JSON.stringify(body));
    }
    const streamed = await request(server.url, "POST", "/v1/chat/completions",
      { model: MODEL_NAME, messages: MESSAGES, prompt_logprobs: 0, stream: true });
    assert.equal(streamed.status, 400, "a streamed chat has no chunk for prompt_logprobs");
    assert.equal(streamed.json.error.param, "prompt_logprobs");
  });
});

describe("completions", () => {
  test("greedy, not streamed, equals l2kv generate", async () => {
    const r = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX, temperature: 0 });
    assert.equal(r.object, "text_completion");
    assert.equal(r.model, MODEL_NAME);
    assert.equal(typeof r.id, "string");
    assert.equal(typeof r.created, "number");
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].index, 0);
    assert.equal(r.choices[0].text, ref.completion.output);
    assert.equal(r.choices[0].finish_reason, ref.completion.finish_reason);
    checkUsage(r.usage, ref.completion.prompt_tokens, ref.completion.completion_tokens);
  });

  test("streamed with include_usage: same text, usage in a last chunk without choices", async () => {
    const stream = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX,
      temperature: 0, stream: true, stream_options: { include_usage: true } });
    const { texts, finish, chunks } = await collectCompletionStream(stream);
    assert.equal(texts[0], ref.completion.output);
    assert.equal(finish[0], ref.completion.finish_reason);
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, [], "the usage chunk has choices []");
    checkUsage(last.usage, ref.completion.prompt_tokens, ref.completion.completion_tokens);
    for (const c of chunks.slice(0, -1)) assert.ok(c.usage == null, "usage only in the last chunk");
    for (const c of chunks) assert.equal(c.object, "text_completion");
  });

  test("streamed without include_usage: no usage chunk", async () => {
    const stream = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: 4,
      temperature: 0, stream: true });
    const { chunks } = await collectCompletionStream(stream);
    for (const c of chunks) {
      assert.ok(c.usage == null, "usage without include_usage");
      assert.ok(c.choices.length > 0, "a chunk without choices");
    }
  });

  test("raw server-sent events: content type, JSON events, data: [DONE] last", async () => {
    const res = await request(server.url, "POST", "/v1/completions",
      { model: MODEL_NAME, prompt: PROMPT, max_tokens: 4, temperature: 0, stream: true });
    assert.equal(res.status, 200);
    assert.match(res.headers["content-type"], /^text\/event-stream/);
    const events = sseData(res.text);
    assert.equal(events.at(-1), "[DONE]", `last event ${JSON.stringify(events.at(-1))}`);
    assert.equal(events.filter((e) => e === "[DONE]").length, 1);
    for (const e of events.slice(0, -1)) JSON.parse(e);
    const text = events.slice(0, -1).map((e) => JSON.parse(e).choices.map((c) => c.text).join("")).join("");
    assert.ok(ref.completion.output.startsWith(text), `${JSON.stringify(text)} is not a prefix of the greedy text`);
  });

  test("a list of prompts: one choice each, in order", async () => {
    const r = await client.completions.create({ model: MODEL_NAME, prompt: [PROMPT, PROMPT2], max_tokens: MAX, temperature: 0 });
    const byIndex = [...r.choices].sort((a, b) => a.index - b.index);
    assert.deepEqual(byIndex.map((c) => c.index), [0, 1]);
    assert.equal(byIndex[0].text, ref.completion.output);
    assert.equal(byIndex[1].text, ref.completion2.output);
    checkUsage(r.usage, ref.completion.prompt_tokens + ref.completion2.prompt_tokens,
      ref.completion.completion_tokens + ref.completion2.completion_tokens);
  });

  test("a prompt of token ids", async () => {
    const r = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT_IDS, max_tokens: MAX, temperature: 0 });
    assert.equal(r.choices[0].text, ref.ids.output);
    checkUsage(r.usage, PROMPT_IDS.length, ref.ids.completion_tokens);
  });

  test("n = 3 greedy: three equal choices; n = 3 sampled with ignore_eos: 3 x max_tokens tokens", async () => {
    const greedy = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX, temperature: 0, n: 3 });
    assert.deepEqual(greedy.choices.map((c) => c.index).sort(), [0, 1, 2]);
    for (const c of greedy.choices) assert.equal(c.text, ref.completion.output);
    checkUsage(greedy.usage, ref.completion.prompt_tokens, 3 * ref.completion.completion_tokens);
    const sampled = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: 8,
      temperature: 1.0, n: 3, seed: 7, ignore_eos: true });
    assert.deepEqual(sampled.choices.map((c) => c.index).sort(), [0, 1, 2]);
    for (const c of sampled.choices) assert.equal(c.finish_reason, "length");
    checkUsage(sampled.usage, ref.completion.prompt_tokens, 24);
  });

  test("best_of: the candidates n would return, ranked by their cumulative logprob", async () => {
    // best_of's candidate j samples with seed + j, as n's choice j does: the same three texts.
    const ask = (fields) => client.completions.create({ model: MODEL_NAME, prompt: PROMPT2,
      max_tokens: 8, temperature: 1.0, seed: 11, ignore_eos: true, ...fields });
    const all = await ask({ n: 3, logprobs: 0 });
    const ranked = all.choices.map((c) => ({ text: c.text, index: c.index,
      sum: c.logprobs.token_logprobs.reduce((a, b) => a + b, 0) }))
      .sort((a, b) => b.sum - a.sum || a.index - b.index);
    assert.ok(new Set(ranked.map((c) => c.text)).size > 1, "sampled candidates differ");
    assert.notDeepEqual(ranked.map((c) => c.index), [0, 1, 2], "this seed must reorder them");
    const one = await ask({ best_of: 3 });
    assert.equal(one.choices.length, 1);
    assert.equal(one.choices[0].index, 0);
    assert.equal(one.choices[0].text, ranked[0].text);
    assert.equal(one.choices[0].logprobs, null, "no logprobs unless asked");
    checkUsage(one.usage, all.usage.prompt_tokens, 24);  // every candidate's tokens
    const two = await ask({ best_of: 3, n: 2, logprobs: 0 });
    assert.deepEqual(two.choices.map((c) => c.text), [ranked[0].text, ranked[1].text]);
    assert.deepEqual(two.choices.map((c) => c.index), [0, 1]);
    const streamed = await request(server.url, "POST", "/v1/completions",
      { model: MODEL_NAME, prompt: PROMPT2, best_of: 2, stream: true });
    assert.equal(streamed.status, 400, streamed.text);
    assert.equal(streamed.json.error.param, "best_of");
  });

  test("n = 2 streamed: both choices complete", async () => {
    const stream = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX,
      temperature: 0, n: 2, stream: true, stream_options: { include_usage: true } });
    const { texts, finish, chunks } = await collectCompletionStream(stream);
    assert.deepEqual(Object.keys(texts).sort(), ["0", "1"]);
    assert.equal(texts[0], ref.completion.output);
    assert.equal(texts[1], ref.completion.output);
    assert.equal(finish[0], ref.completion.finish_reason);
    assert.equal(finish[1], ref.completion.finish_reason);
    checkUsage(chunks.at(-1).usage, ref.completion.prompt_tokens, 2 * ref.completion.completion_tokens);
  });

  test("a seed makes sampling reproducible", async () => {
    const ask = () => client.completions.create({ model: MODEL_NAME, prompt: PROMPT2, max_tokens: 12,
      temperature: 1.0, top_p: 0.95, seed: 1234 });
    const [a, b] = [await ask(), await ask()];
    assert.equal(a.choices[0].text, b.choices[0].text);
  });

  test("stop string (not streamed, streamed, in a list)", async () => {
    const stops = async () => parseMetrics((await request(server.url, "GET", "/metrics")).text)
      .filter((m) => m.name === "l2kv:request_success_total" && m.labels.includes('finished_reason="stop"'))
      .reduce((sum, m) => sum + m.value, 0);
    const stopsBefore = await stops();
    const { stop, expected } = stopFrom(ref.completion.output);
    const r = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX, temperature: 0, stop });
    assert.equal(r.choices[0].text, expected, `stop ${JSON.stringify(stop)}`);
    assert.equal(r.choices[0].finish_reason, "stop");
    checkUsage(r.usage, ref.completion.prompt_tokens);
    assert.ok(r.usage.completion_tokens <= ref.completion.completion_tokens);
    const stream = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX,
      temperature: 0, stop: ["never-in-this-output", stop], stream: true });
    const s = await collectCompletionStream(stream);
    assert.equal(s.texts[0], expected, `streamed, stop ${JSON.stringify(stop)}`);
    assert.equal(s.finish[0], "stop");
    // vLLM's stop_reason: null in every chunk but the last, which names the stop string.
    const reasons = s.chunks.flatMap((c) => c.choices.map((x) => x.stop_reason));
    assert.equal(reasons.at(-1), stop);
    assert.ok(reasons.slice(0, -1).every((x) => x === null), JSON.stringify(reasons));
    // The text is made on the server's output thread, behind the engine, which may run on past
    // the stop: the answer still ends at the token that completed it (logprobs and usage too).
    const all = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX,
      temperature: 0, logprobs: 1 });
    const cut = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX,
      temperature: 0, logprobs: 1, stop });
    const tokens = cut.choices[0].logprobs.tokens;
    assert.equal(cut.choices[0].text, expected);
    assert.equal(tokens.length, cut.usage.completion_tokens);
    assert.deepEqual(tokens, all.choices[0].logprobs.tokens.slice(0, tokens.length));
    assert.ok(tokens.slice(0, -1).join("").length < expected.length + stop.length,
      `a token after the one that completed ${JSON.stringify(stop)} was returned`);
    // /metrics counts the three as "stop", as their clients saw them end (and the request without
    // a stop string too if it ended on EOS).
    assert.equal(await stops() - stopsBefore, 3 + (all.choices[0].finish_reason === "stop" ? 1 : 0));
    // `l2kv generate` (the same output side, run in the engine's callbacks) ends at the same token.
    const [g] = await generateReference([{ prompt: PROMPT }], MAX, ["--stop", stop]);
    assert.equal(g.output, expected);
    assert.equal(g.finish_reason, "stop");
    assert.equal(g.stop_reason, stop);
    assert.equal(g.completion_tokens, cut.usage.completion_tokens);
    assert.equal(g.output_ids.length, cut.usage.completion_tokens);
  });

  test("logprobs = 2: tokens, token_logprobs, top_logprobs, text_offset", async () => {
    const r = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX, temperature: 0, logprobs: 2 });
    const lp = r.choices[0].logprobs;
    const n = r.usage.completion_tokens;
    assert.equal(r.choices[0].text, ref.completion.output);
    assert.ok(lp, "logprobs missing");
    assert.equal(lp.tokens.length, n, "one token per generated token");
    assert.equal(lp.token_logprobs.length, n);
    assert.equal(lp.top_logprobs.length, n);
    assert.equal(lp.text_offset.length, n);
    for (let i = 0; i < n; ++i) {
      assert.equal(typeof lp.tokens[i], "string");
      assert.ok(lp.token_logprobs[i] <= 0, `token_logprobs[${i}] = ${lp.token_logprobs[i]}`);
      const top = Object.values(lp.top_logprobs[i]);
      assert.ok(top.length >= 2 && top.length <= 3, `top_logprobs[${i}] has ${top.length} entries`);
      assert.ok(lp.tokens[i] in lp.top_logprobs[i], `the sampled token is not in top_logprobs[${i}]`);
      // Offsets count characters (code points), each token's text after the one before.
      if (i > 0) assert.equal(lp.text_offset[i], lp.text_offset[i - 1] + [...lp.tokens[i - 1]].length);
      // greedy: the chosen token is the most likely one
      assert.ok(Math.abs(Math.max(...top) - lp.token_logprobs[i]) < 1e-4, `token ${i} is not the top-1`);
      if (i > 0) assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
    }
  });

  // OpenAI's logit_bias: added to the logits before sampling. +100 on a token makes greedy (and
  // seeded sampling) pick it at every step; -100 on the greedy token makes greedy take the
  // runner-up that top_logprobs named. Token ids and their texts come from l2kv generate's
  // output_ids and the logprobs of the unbiased request.
  test("logit_bias: +100 picks a token, -100 bans the greedy one", async () => {
    const plain = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX, temperature: 0, logprobs: 2 });
    assert.equal(plain.choices[0].text, ref.completion.output);
    const lp = plain.choices[0].logprobs;
    const ids = ref.completion.output_ids;
    assert.equal(ids.length, lp.tokens.length);
    // A token of the output that is not the first one greedy picks.
    const k = ids.findIndex((id) => id !== ids[0]);
    assert.ok(k > 0, `the reference output repeats one token: ${JSON.stringify(ids)}`);
    for (const temperature of [0, 0.8]) {
      const forced = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: 3, temperature,
        seed: 7, logprobs: 0, logit_bias: { [ids[k]]: 100 } });
      assert.deepEqual(forced.choices[0].logprobs.tokens, [lp.tokens[k], lp.tokens[k], lp.tokens[k]],
        `temperature ${temperature}`);
      assert.equal(forced.choices[0].text, lp.tokens[k].repeat(3));
    }
    // Ban the first greedy token: the first token becomes the runner-up of top_logprobs.
    const ranked = Object.entries(lp.top_logprobs[0]).sort((a, b) => b[1] - a[1]);
    assert.equal(ranked[0][0], lp.tokens[0]);
    const banned = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: 1, temperature: 0,
      logprobs: 0, logit_bias: { [ids[0]]: -100 } });
    assert.equal(banned.choices[0].logprobs.tokens[0], ranked[1][0]);
    // Chat takes it too.
    const chat = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES, max_tokens: 2, temperature: 0,
      logit_bias: { [ids[k]]: 100 } });
    assert.equal(chat.choices[0].message.content, lp.tokens[k].repeat(2));
  });

  test("a temperature below 1e-5 is greedy", async () => {
    const r = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX, temperature: 1e-38, seed: 3 });
    assert.equal(r.choices[0].text, ref.completion.output);
  });

  test("echo: the prompt before the completion", async () => {
    const r = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: MAX, temperature: 0, echo: true });
    assert.equal(r.choices[0].text, PROMPT + ref.completion.output);
    checkUsage(r.usage, ref.completion.prompt_tokens, ref.completion.completion_tokens);
  });

  test("echo shows the prompt the model saw: the tokens truncate_prompt_tokens kept, special tokens of an id prompt", async () => {
    // " of France is": the last 3 tokens; their text starts the echo, and the logprobs agree.
    const cut = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT, max_tokens: 1,
      temperature: 0, echo: true, logprobs: 0, truncate_prompt_tokens: 3 });
    const c = cut.choices[0];
    const kept = c.logprobs.tokens.slice(0, 3).join("");
    assert.equal(kept, " of France is");
    assert.ok(c.text.startsWith(kept), JSON.stringify(c.text));
    assert.deepEqual(c.logprobs.text_offset.slice(0, 3), [0, 3, 10]);
    assert.equal(cut.usage.prompt_tokens, 3);
    // Token ids: decoded with <|begin_of_text|>, as the logprobs list it.
    const ids = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT_IDS, max_tokens: 1,
      temperature: 0, echo: true });
    assert.ok(ids.choices[0].text.startsWith("<|begin_of_text|>" + PROMPT), ids.choices[0].text);
  });

  test("ignore_eos and max_tokens: exactly max_tokens tokens", async () => {
    const r = await client.completions.create({ model: MODEL_NAME, prompt: PROMPT2, max_tokens: 5, temperature: 0, ignore_eos: true });
    assert.equal(r.choices[0].finish_reason, "length");
    checkUsage(r.usage, ref.completion2.prompt_tokens, 5);
  });
});

describe("chat completions", () => {
  test("greedy, not streamed, equals l2kv generate on the chat template", async () => {
    const r = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES, max_tokens: MAX, temperature: 0 });
    assert.equal(r.object, "chat.completion");
    assert.equal(r.model, MODEL_NAME);
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(r.choices[0].message.content, ref.chat.output);
    assert.equal(r.choices[0].finish_reason, ref.chat.finish_reason);
    checkUsage(r.usage, ref.chat.prompt_tokens, ref.chat.completion_tokens);
  });

  test("max_completion_tokens limits like max_tokens", async () => {
    const r = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES,
      max_completion_tokens: 3, temperature: 0, ignore_eos: true });
    checkUsage(r.usage, ref.chat.prompt_tokens, 3);
    assert.equal(r.choices[0].finish_reason, "length");
  });

  test("streamed with include_usage: role first, same content, usage last", async () => {
    const stream = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES, max_tokens: MAX,
      temperature: 0, stream: true, stream_options: { include_usage: true } });
    const { texts, finish, roles, chunks } = await collectChatStream(stream);
    assert.equal(texts[0], ref.chat.output);
    assert.equal(roles[0], "assistant");
    assert.equal(chunks[0].choices[0]?.delta?.role, "assistant", "the first chunk carries the role");
    assert.equal(finish[0], ref.chat.finish_reason);
    for (const c of chunks) assert.equal(c.object, "chat.completion.chunk");
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    checkUsage(last.usage, ref.chat.prompt_tokens, ref.chat.completion_tokens);
  });

  test("n = 2, streamed and not", async () => {
    const r = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES, max_tokens: MAX, temperature: 0, n: 2 });
    assert.deepEqual(r.choices.map((c) => c.index).sort(), [0, 1]);
    for (const c of r.choices) assert.equal(c.message.content, ref.chat.output);
    checkUsage(r.usage, ref.chat.prompt_tokens, 2 * ref.chat.completion_tokens);
    const stream = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES, max_tokens: MAX,
      temperature: 0, n: 2, stream: true });
    const s = await collectChatStream(stream);
    assert.equal(s.texts[0], ref.chat.output);
    assert.equal(s.texts[1], ref.chat.output);
  });

  test("stop strings", async () => {
    const { stop, expected } = stopFrom(ref.chat.output);
    const r = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES, max_tokens: MAX,
      temperature: 0, stop: [stop, "never-in-this-output"] });
    assert.equal(r.choices[0].message.content, expected, `stop ${JSON.stringify(stop)}`);
    assert.equal(r.choices[0].finish_reason, "stop");
    // vLLM's include_stop_str_in_output: the same answer with the stop string at its end.
    const included = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES,
      max_tokens: MAX, temperature: 0, stop: [stop, "never-in-this-output"], include_stop_str_in_output: true });
    assert.equal(included.choices[0].message.content, expected + stop);
    assert.equal(included.usage.completion_tokens, r.usage.completion_tokens);
  });

  test("truncate_prompt_tokens keeps the prompt's last tokens", async () => {
    const full = await request(server.url, "POST", "/tokenize", { messages: MESSAGES });
    const keep = Math.max(1, full.json.count - 3);
    const r = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES, max_tokens: 4,
      temperature: 0, truncate_prompt_tokens: keep });
    assert.equal(r.usage.prompt_tokens, keep);
  });

  test("logprobs with top_logprobs = 3", async () => {
    const r = await client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES, max_tokens: MAX,
      temperature: 0, logprobs: true, top_logprobs: 3 });
    const content = r.choices[0].logprobs?.content;
    assert.ok(Array.isArray(content), "choices[0].logprobs.content missing");
    assert.equal(content.length, r.usage.completion_tokens);
    for (const [i, t] of content.entries()) {
      assert.equal(typeof t.token, "string");
      assert.ok(t.logprob <= 0);
      assert.ok(Array.isArray(t.top_logprobs) && t.top_logprobs.length === 3, `token ${i}: ${JSON.stringify(t.top_logprobs)}`);
      assert.ok(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4, `token ${i} is not the top-1 (greedy)`);
      for (let k = 1; k < 3; ++k) assert.ok(t.top_logprobs[k].logprob <= t.top_logprobs[k - 1].logprob, "top_logprobs sorted");
    }
    const text = r.choices[0].message.content;
    if (!text.includes("\uFFFD")) assert.equal(content.map((t) => t.token).join(""), text, "the tokens spell the content");
  });

  test("a seed makes sampling reproducible", async () => {
    const ask = () => client.chat.completions.create({ model: MODEL_NAME, messages: MESSAGES, max_tokens: 12,
      temperature: 0.9, seed: 99 });
    const [a, b] = [await ask(), await ask()];
    assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  });
});
