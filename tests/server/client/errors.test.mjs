// Bad requests against `l2kv serve`: each is answered with the right status and OpenAI's error
// body {"error": {"message", "type", "param", "code"}}, and GET /health is still 200 after every
// one. A second server with --api-key checks 401s.
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import {
  MAX_MODEL_LEN, MODEL_NAME, errorShapeProblems, request, startServer,
} from "./harness.mjs";

const API_KEY = "l2kv-ci-secret";
const LONG_TEXT = " hello".repeat(MAX_MODEL_LEN + 100);  // > max_model_len tokens
const LONG_IDS = Array.from({ length: MAX_MODEL_LEN + 10 }, (_, i) => 1000 + (i % 500));
const OVERSIZED_BYTES = 64 << 20;

const completion = (fields) => ({ model: MODEL_NAME, prompt: "Hello", max_tokens: 2, ...fields });
const chat = (fields) => ({ model: MODEL_NAME, messages: [{ role: "user", content: "Hello" }], max_tokens: 2, ...fields });
const without = (obj, key) => Object.fromEntries(Object.entries(obj).filter(([k]) => k !== key));

const TOOL = { type: "function", function: { name: "get_weather", parameters: { type: "object", properties: {} } } };
const MANY_BIASES = Object.fromEntries(Array.from({ length: 301 }, (_, i) => [String(1000 + i), 1]));

// [name, method, route, body, status]; body: object (sent as JSON) or string (sent as is).
const BAD_REQUESTS = [
  ["temperature 1e400", "POST", "/v1/completions", '{"model": "l2kv-ci", "prompt": "hi", "temperature": 1e400}', 400],
  ["malformed JSON", "POST", "/v1/completions", '{"model": "l2kv-ci", "prompt": "hi",', 400],
  ["malformed JSON (chat)", "POST", "/v1/chat/completions", "{messages: [}", 400],
  ["empty body", "POST", "/v1/completions", "", 400],
  ["body is a JSON array", "POST", "/v1/completions", "[1, 2, 3]", 400],
  ["body is a JSON string", "POST", "/v1/chat/completions", '"hello"', 400],
  ["missing prompt", "POST", "/v1/completions", without(completion({}), "prompt"), 400],
  ["missing messages", "POST", "/v1/chat/completions", without(chat({}), "messages"), 400],
  ["prompt is a number", "POST", "/v1/completions", completion({ prompt: 42 }), 400],
  ["prompt is an object", "POST", "/v1/completions", completion({ prompt: { text: "hi" } }), 400],
  ["prompt is an empty list", "POST", "/v1/completions", completion({ prompt: [] }), 400],
  ["prompt ids out of the vocabulary", "POST", "/v1/completions", completion({ prompt: [1, 2, 999999999] }), 400],
  ["prompt ids negative", "POST", "/v1/completions", completion({ prompt: [1, -5] }), 400],
  ["messages is a string", "POST", "/v1/chat/completions", chat({ messages: "hello" }), 400],
  ["message without role", "POST", "/v1/chat/completions", chat({ messages: [{ content: "hi" }] }), 400],
  ["message role is a number", "POST", "/v1/chat/completions", chat({ messages: [{ role: 7, content: "hi" }] }), 400],
  ["max_tokens is a string", "POST", "/v1/completions", completion({ max_tokens: "ten" }), 400],
  ["max_tokens negative", "POST", "/v1/completions", completion({ max_tokens: -1 }), 400],
  ["temperature is a string", "POST", "/v1/completions", completion({ temperature: "hot" }), 400],
  ["stream is a string", "POST", "/v1/completions", completion({ stream: "maybe" }), 400],
  ["stop is a number", "POST", "/v1/completions", completion({ stop: 5 }), 400],
  ["n is a string", "POST", "/v1/chat/completions", chat({ n: "two" }), 400],
  ["unknown model", "POST", "/v1/completions", completion({ model: "no-such-model" }), 404],
  ["unknown model (chat)", "POST", "/v1/chat/completions", chat({ model: "no-such-model" }), 404],
  ["prompt longer than --max-model-len", "POST", "/v1/completions", completion({ prompt: LONG_TEXT }), 400],
  ["prompt ids longer than --max-model-len", "POST", "/v1/completions", completion({ prompt: LONG_IDS }), 400],
  ["chat prompt longer than --max-model-len", "POST", "/v1/chat/completions",
    chat({ messages: [{ role: "user", content: LONG_TEXT }] }), 400],
  ["prompt + max_tokens over --max-model-len", "POST", "/v1/completions", completion({ max_tokens: MAX_MODEL_LEN + 1 }), 400],
  ["negative temperature", "POST", "/v1/completions", completion({ temperature: -0.5 }), 400],
  ["top_p = 0", "POST", "/v1/completions", completion({ top_p: 0 }), 400],
  ["top_p > 1", "POST", "/v1/chat/completions", chat({ top_p: 1.5 }), 400],
  ["top_k < -1", "POST", "/v1/completions", completion({ top_k: -2 }), 400],
  ["min_p > 1", "POST", "/v1/completions", completion({ min_p: 1.5 }), 400],
  ["n = 0", "POST", "/v1/completions", completion({ n: 0 }), 400],
  ["n too large", "POST", "/v1/chat/completions", chat({ n: 1000 }), 400],
  ["presence_penalty > 2", "POST", "/v1/completions", completion({ presence_penalty: 3 }), 400],
  ["frequency_penalty < -2", "POST", "/v1/chat/completions", chat({ frequency_penalty: -3 }), 400],
  ["repetition_penalty = 0", "POST", "/v1/completions", completion({ repetition_penalty: 0 }), 400],
  ["top_logprobs > 20", "POST", "/v1/chat/completions", chat({ logprobs: true, top_logprobs: 50 }), 400],
  ["logit_bias id out of the vocabulary", "POST", "/v1/completions", completion({ logit_bias: { 999999999: 5 } }), 400],
  ["logit_bias value over 100", "POST", "/v1/chat/completions", chat({ logit_bias: { 5: 101 } }), 400],
  ["unknown role", "POST", "/v1/chat/completions", chat({ messages: [{ role: "wizard", content: "hi" }] }), 400],
  ["tools with tool_choice auto on a server without --tool-call-parser", "POST", "/v1/chat/completions", chat({ tools: [TOOL] }), 400],
  ["unknown field (a typo)", "POST", "/v1/completions", completion({ temprature: 0.5 }), 400],
  ["/tokenize without prompt", "POST", "/tokenize", { model: MODEL_NAME }, 400],
  ["/tokenize prompt is a number", "POST", "/tokenize", { prompt: 42 }, 400],
  ["/tokenize unknown field", "POST", "/tokenize", { prompt: "hi", temperature: 1 }, 400],
  ["/tokenize malformed JSON", "POST", "/tokenize", '{"prompt": ', 400],
  ["/tokenize messages not a list", "POST", "/tokenize", { messages: "hi" }, 400],
  ["/tokenize unknown model", "POST", "/tokenize", { model: "no-such-model", prompt: "hi" }, 404],
  ["/detokenize id out of the vocabulary", "POST", "/detokenize", { tokens: [1, 999999999] }, 400],
  ["/detokenize negative id", "POST", "/detokenize", { tokens: [-1] }, 400],
  ["/detokenize tokens is a string", "POST", "/detokenize", { tokens: "hello" }, 400],
  ["/detokenize without tokens", "POST", "/detokenize", {}, 400],
  ["GET /tokenize", "GET", "/tokenize", undefined, 405],
  ["PATCH /tokenize", "PATCH", "/tokenize", { prompt: "x" }, 405],
  ["OPTIONS /v1/chat/completions", "OPTIONS", "/v1/chat/completions", undefined, 405],
  ["top_p just above 1", "POST", "/v1/completions", completion({ top_p: 1.00000001 }), 400],
  ["min_p just above 1", "POST", "/v1/completions", completion({ min_p: 1.00000001 }), 400],
  ["frequency_penalty just above 2", "POST", "/v1/completions", completion({ frequency_penalty: 2.0000001 }), 400],
  ["presence_penalty just below -2", "POST", "/v1/chat/completions", chat({ presence_penalty: -2.0000001 }), 400],
  ["min_tokens past the context with max_tokens unset", "POST", "/v1/chat/completions",
    without(chat({ min_tokens: 2147483647 }), "max_tokens"), 400],
  ["unknown route", "GET", "/v1/nothing-here", undefined, 404],
  ["unknown route (POST)", "POST", "/v1/engines/l2kv-ci/completions", completion({}), 404],
  ["unknown route outside /v1", "GET", "/admin", undefined, 404],
];

let server, keyed;

before(async () => {
  [server, keyed] = await Promise.all([startServer("errors"), startServer("api-key", ["--api-key", API_KEY])]);
});

after(async () => {
  for (const s of [server, keyed]) {
    if (!s) continue;
    const exit = await s.stop();
    assert.equal(exit.killed, false, `${s.name}: no exit within 15 s of SIGTERM`);
  }
});

// A request to server `s`; when it fails because the server died, the error says so.
async function ask(s, method, route, body, headers) {
  try {
    return await request(s.url, method, route, body, headers);
  } catch (e) {
    await Promise.race([s.exited, new Promise((r) => setTimeout(r, 500))]);
    if (s.exit) throw new Error(`l2kv serve died (${JSON.stringify(s.exit)}); log tail:\n${s.log().slice(-2000)}`);
    throw e;
  }
}

async function assertHealthy(s, after) {
  const h = await ask(s, "GET", "/health");
  assert.equal(h.status, 200, `/health answered ${h.status} after: ${after}`);
}

function assertError(res, status, what) {
  const problems = errorShapeProblems(res, status);
  assert.deepEqual(problems, [], `${what}: ${problems.join("; ")}\nresponse ${res.status}: ${res.text.slice(0, 500)}`);
}

// Fields l2kv does not implement, unknown fields and bad logit_bias: 400 with error.param naming
// the field. [name, route, body, param]
const NAMED_400S = [
  ["logit_bias id out of the vocabulary", "/v1/completions", completion({ logit_bias: { 999999999: 5 } }), "logit_bias"],
  ["logit_bias id negative", "/v1/completions", completion({ logit_bias: { "-3": 5 } }), "logit_bias"],
  ["logit_bias id not a number", "/v1/completions", completion({ logit_bias: { abc: 5 } }), "logit_bias"],
  ["logit_bias value over 100", "/v1/chat/completions", chat({ logit_bias: { 5: 100.5 } }), "logit_bias"],
  ["logit_bias value under -100", "/v1/completions", completion({ logit_bias: { 5: -101 } }), "logit_bias"],
  ["logit_bias value a string", "/v1/completions", completion({ logit_bias: { 5: "high" } }), "logit_bias"],
  ["logit_bias with 301 tokens", "/v1/completions", completion({ logit_bias: MANY_BIASES }), "logit_bias"],
  ["response_format json_schema with an unsupported keyword", "/v1/chat/completions",
    chat({ response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "object", patternProperties: {} } } } }),
    "response_format"],
  ["response_format json_schema without a schema", "/v1/completions",
    completion({ response_format: { type: "json_schema", json_schema: { name: "x" } } }), "response_format"],
  ["response_format of an unknown type", "/v1/completions", completion({ response_format: { type: "yaml" } }), "response_format"],
  ["structured_outputs regex with a backreference", "/v1/completions",
    completion({ structured_outputs: { regex: "(a)\\1" } }), "structured_outputs"],
  ["structured_outputs grammar without a root rule", "/v1/chat/completions",
    chat({ structured_outputs: { grammar: 'start ::= "x"' } }), "structured_outputs"],
  ["two structured-output constraints", "/v1/chat/completions",
    chat({ response_format: { type: "json_object" }, guided_regex: "a+" }), "guided_regex"],
  ["tools with auto and no --tool-call-parser", "/v1/chat/completions", chat({ tools: [TOOL] }), "tool_choice"],
  ["tools of another type", "/v1/chat/completions", chat({ tools: [{ type: "retrieval" }] }), "tools"],
  ["tool_choice naming no tool", "/v1/chat/completions",
    chat({ tools: [TOOL], tool_choice: { type: "function", function: { name: "other" } } }), "tool_choice"],
  ["tool_choice auto", "/v1/chat/completions", chat({ tool_choice: "auto" }), "tool_choice"],
  ["tool_choice with a key of its own", "/v1/chat/completions",
    chat({ tools: [TOOL], tool_choice: { type: "function", function: { name: "get_weather" }, strict: true } }), "tool_choice"],
  ["an assistant's tool call of another type", "/v1/chat/completions",
    chat({ messages: [{ role: "user", content: "hi" }, { role: "assistant", content: null,
      tool_calls: [{ id: "c1", type: "retrieval", function: { name: "f", arguments: "{}" } }] }] }), "messages"],
  ["ignore_eos with response_format", "/v1/chat/completions",
    chat({ response_format: { type: "json_object" }, ignore_eos: true }), "ignore_eos"],
  ["min_tokens with a named tool_choice", "/v1/chat/completions",
    chat({ tools: [TOOL], tool_choice: { type: "function", function: { name: "get_weather" } }, min_tokens: 2 }), "min_tokens"],
  ["tool_choice required", "/v1/chat/completions", chat({ tool_choice: "required" }), "tool_choice"],
  ["role wizard", "/v1/chat/completions", chat({ messages: [{ role: "wizard", content: "hi" }] }), "messages"],
  ["role function", "/v1/chat/completions",
    chat({ messages: [{ role: "user", content: "hi" }, { role: "function", content: "42", name: "f" }] }), "messages"],
  ["a typo: temprature", "/v1/chat/completions", chat({ temprature: 0.5 }), "temprature"],
  ["a chat field on completions", "/v1/completions", completion({ messages: [] }), "messages"],
  ["suffix", "/v1/completions", completion({ suffix: "end" }), "suffix"],
  ["use_beam_search", "/v1/completions", completion({ use_beam_search: true }), "use_beam_search"],
  ["guided_grammar with an undefined rule", "/v1/chat/completions", chat({ guided_grammar: "root ::= x" }), "guided_grammar"],
  ["truncate_prompt_tokens 0", "/v1/completions", completion({ truncate_prompt_tokens: 0 }), "truncate_prompt_tokens"],
  ["reasoning_effort", "/v1/chat/completions", chat({ reasoning_effort: "high" }), "reasoning_effort"],
];

describe("fields l2kv does not implement", () => {
  for (const [name, route, body, param] of NAMED_400S) {
    test(`${name} -> 400 naming ${param}`, async () => {
      const res = await ask(server, "POST", route, body);
      assertError(res, 400, name);
      assert.equal(res.json.error.param, param, `${name}: ${res.text.slice(0, 300)}`);
      assert.ok(res.json.error.message.includes(param.split(".")[0]), res.json.error.message);
    });
  }

  test("hints and the values l2kv honours anyway are accepted", async () => {
    const res = await ask(server, "POST", "/v1/chat/completions", chat({
      user: "u-1", metadata: { team: "a" }, store: false, tool_choice: "none", tools: [],
      response_format: { type: "text" }, use_beam_search: false, temperature: 0,
      messages: [{ role: "developer", content: "Be brief." }, { role: "user", content: "Hello" }],
    }));
    assert.equal(res.status, 200, res.text.slice(0, 300));
    assert.deepEqual(res.json.choices[0].message.tool_calls, []);
  });
});

describe("bad requests", () => {
  for (const [name, method, route, body, status] of BAD_REQUESTS) {
    test(`${name} -> ${status}`, async () => {
      const res = await ask(server, method, route, body);
      assertError(res, status, name);
      await assertHealthy(server, name);
    });
  }

  test("oversized body -> 413", async () => {
    const body = JSON.stringify(completion({ padding: "a".repeat(OVERSIZED_BYTES) }));
    const res = await ask(server, "POST", "/v1/completions", body);
    assertError(res, 413, "a body of 64 MiB");
    await assertHealthy(server, "oversized body");
  });

  test("the error shape through the openai client (APIError.status, .error)", async () => {
    const client = server.client();
    await assert.rejects(
      client.completions.create(completion({ temperature: -1 })),
      (e) => {
        assert.ok(e instanceof OpenAI.APIError, `not an APIError: ${e}`);
        assert.equal(e.status, 400);
        assert.equal(typeof e.error?.message, "string");
        return true;
      });
    await assert.rejects(client.completions.create(completion({ model: "no-such-model" })),
      (e) => e instanceof OpenAI.NotFoundError);
  });

  test("a good request still works after all of them", async () => {
    const r = await server.client().completions.create(completion({ temperature: 0 }));
    assert.equal(r.usage.completion_tokens, r.usage.total_tokens - r.usage.prompt_tokens);
    assert.ok(r.usage.completion_tokens > 0);
  });
});

// Raw bytes to server `s`; what comes back until it closes the connection or `ms` pass.
function rawExchange(s, bytes, ms = 5000) {
  const u = new URL(s.url);
  return new Promise((resolve) => {
    const sock = net.connect(Number(u.port), u.hostname);
    const chunks = [];
    const done = (closed) => {
      clearTimeout(timer);
      sock.destroy();
      resolve({ text: Buffer.concat(chunks).toString("utf8"), closed });
    };
    const timer = setTimeout(() => done(false), ms);
    sock.on("data", (c) => chunks.push(c));
    sock.on("error", () => {});
    sock.on("close", () => done(true));
    sock.write(bytes);
  });
}

// Framing that could hide a second request in a first one's body, or hang a connection: one
// answer, then the connection closes (RFC 9112 6.3); a chunked body is held to --max-body-bytes
// as a Content-Length one is.
describe("HTTP framing", () => {
  const body = JSON.stringify(completion({}));
  const smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
  const statusLines = (text) => text.split("\r\n").filter((l) => /^HTTP\/1\.1 \d{3}/.test(l));
  const chunked = `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`;
  const cases = [
    ["two Content-Length headers", 400,
      `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nContent-Length: 5\r\n\r\n${body}${smuggled}`],
    ["Content-Length and Transfer-Encoding", 400,
      `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(chunked + smuggled)}\r\nTransfer-Encoding: chunked\r\n\r\n` +
      `${chunked}${smuggled}`],
    ["a negative Content-Length", 400,
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"],
    ["a POST with neither header", 411, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n"],
    ["a Transfer-Encoding other than chunked", 501,
      `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      `Transfer-Encoding: gzip, chunked\r\n\r\n${chunked}${smuggled}`],
    // httplib reads no body for GET: the request is answered, and its body is not read as a
    // next request.
    ["a GET with a body", 200,
      `GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: ${Buffer.byteLength(smuggled)}\r\n\r\n` +
      smuggled],
  ];
  for (const [name, status, bytes] of cases) {
    test(`${name} -> ${status}, one answer, then the connection closes`, async () => {
      const started = Date.now();
      const { text, closed } = await rawExchange(server, bytes);
      const lines = statusLines(text);
      assert.equal(lines.length, 1, `${name}: ${text.slice(0, 600)}`);
      assert.ok(lines[0].startsWith(`HTTP/1.1 ${status}`), `${name}: ${lines[0]}`);
      assert.ok(closed, `${name}: the connection stayed open`);
      assert.ok(Date.now() - started < 4000, `${name}: took ${Date.now() - started} ms`);
      await assertHealthy(server, name);
    });
  }

  test("a chunked body past --max-body-bytes -> 413", async () => {
    const piece = Buffer.alloc(1 << 20, "a");
    const res = await new Promise((resolve, reject) => {
      const u = new URL(server.url);
      const req = http.request({ hostname: u.hostname, port: u.port, path: "/v1/completions",
        method: "POST", agent: false,
        headers: { "content-type": "application/json", "transfer-encoding": "chunked" } });
      let answered = false;
      req.on("response", (r) => {
        answered = true;
        const chunks = [];
        r.on("data", (c) => chunks.push(c));
        r.on("end", () => resolve({ status: r.statusCode, text: Buffer.concat(chunks).toString() }));
      });
      req.on("error", (e) => { if (!answered) reject(e); });
      req.write('{"model": "l2kv-ci", "prompt": "hi", "user": "');
      for (let i = 0; i < 32; ++i) req.write(piece);
      req.end('"}');
    });
    assert.equal(res.status, 413, res.text.slice(0, 300));
    await assertHealthy(server, "chunked body past the limit");
  });
});

describe("--api-key", () => {
  const cases = [
    ["no Authorization header", {}],
    ["a wrong key", { authorization: "Bearer not-the-key" }],
    ["the key without Bearer", { authorization: API_KEY }],
    ["an empty bearer", { authorization: "Bearer " }],
  ];
  for (const [route, body] of [["/v1/completions", completion({})], ["/v1/chat/completions", chat({})]]) {
    for (const [name, headers] of cases) {
      test(`${route} with ${name} -> 401`, async () => {
        const res = await ask(keyed, "POST", route, body, headers);
        assertError(res, 401, name);
        await assertHealthy(keyed, name);
      });
    }
  }

  test("GET /v1/models without the key -> 401", async () => {
    assertError(await ask(keyed, "GET", "/v1/models"), 401, "models without key");
  });

  test("the right key through the openai client: completions, chat, models", async () => {
    const client = keyed.client({ apiKey: API_KEY });
    const c = await client.completions.create(completion({ temperature: 0 }));
    assert.ok(c.usage.completion_tokens > 0);
    const ch = await client.chat.completions.create(chat({ temperature: 0 }));
    assert.equal(ch.choices[0].message.role, "assistant");
    const models = await client.models.list();
    assert.ok(models.data.some((m) => m.id === MODEL_NAME));
  });

  test("the wrong key through the openai client -> AuthenticationError", async () => {
    await assert.rejects(keyed.client({ apiKey: "wrong" }).completions.create(completion({})),
      (e) => e instanceof OpenAI.AuthenticationError);
  });
});
