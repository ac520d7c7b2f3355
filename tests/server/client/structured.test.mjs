// Structured outputs and tool calls through the official openai npm client: response_format
// json_schema and json_object on chat (streamed and not), vLLM's structured_outputs (choice,
// regex, json) on completions, tools with tool_choice required, a named function and auto
// (the hermes parser, the model's text forced into a <tool_call> by a regex), streamed and not.
// The fixture has random weights and samples at temperature 1, so only the grammar keeps the
// outputs valid; ajv (pinned) checks each against its schema.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import Ajv2020 from "ajv/dist/2020.js";
import { startServer } from "./harness.mjs";

const ajv = new Ajv2020({ strict: false, allErrors: true });

// Bounded strings and numbers: with 128k tokens allowed inside a free string, a random model
// would close it only by chance; the bounds keep each answer short.
const PERSON = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 12 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    role: { enum: ["admin", "user", "guest"] },
    active: { type: "boolean" },
    tags: { type: "array", items: { type: "string", maxLength: 6 }, maxItems: 2 },
  },
  required: ["name", "age", "role"],
  additionalProperties: false,
};
const MESSAGES = [{ role: "user", content: "Describe a user as JSON." }];

let server, client;

before(async () => {
  server = await startServer("structured", ["--tool-call-parser", "hermes"]);
  client = server.client();
});

after(async () => {
  if (!server) return;
  const exit = await server.stop();
  assert.equal(exit.code, 0, `l2kv serve exited with ${JSON.stringify(exit)} after SIGTERM`);
});

function assertValid(schema, text, what) {
  let value;
  assert.doesNotThrow(() => { value = JSON.parse(text); }, `${what}: not JSON: ${text}`);
  const validate = ajv.compile(schema);
  assert.ok(validate(value), `${what}: ${ajv.errorsText(validate.errors)}: ${text}`);
  return value;
}

describe("response_format", () => {
  test("json_schema, non-streaming: every choice valid, finish_reason stop", async () => {
    const r = await client.chat.completions.create({
      model: "l2kv-ci", messages: MESSAGES, n: 3, seed: 5, temperature: 1, max_tokens: 300,
      response_format: { type: "json_schema", json_schema: { name: "person", strict: true, schema: PERSON } },
    });
    assert.equal(r.choices.length, 3);
    const texts = new Set();
    for (const c of r.choices) {
      assert.equal(c.finish_reason, "stop", `choice ${c.index}: ${c.message.content}`);
      assertValid(PERSON, c.message.content, `choice ${c.index}`);
      texts.add(c.message.content);
    }
    assert.ok(texts.size > 1, "three seeded choices gave the same text");
  });

  test("json_schema, streaming: the deltas put together are valid", async () => {
    const stream = await client.chat.completions.create({
      model: "l2kv-ci", messages: MESSAGES, seed: 11, temperature: 1, max_tokens: 300, stream: true,
      response_format: { type: "json_schema", json_schema: { name: "person", schema: PERSON } },
    });
    let text = "", finish = null, chunks = 0;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        text += c.delta?.content ?? "";
        if (c.finish_reason) finish = c.finish_reason;
      }
      chunks++;
    }
    assert.equal(finish, "stop", text);
    assert.ok(chunks > 3, `only ${chunks} chunks`);
    assertValid(PERSON, text, "streamed");
  });

  test("json_object: an object", async () => {
    const r = await client.chat.completions.create({
      model: "l2kv-ci", messages: MESSAGES, seed: 3, temperature: 1, max_tokens: 400,
      response_format: { type: "json_object" },
    });
    const c = r.choices[0];
    if (c.finish_reason === "stop") {
      const value = JSON.parse(c.message.content);
      assert.equal(typeof value, "object");
      assert.ok(value !== null && !Array.isArray(value), c.message.content);
    } else {
      // A free object may outgrow max_tokens: then "length", as any request, and a prefix.
      assert.equal(c.finish_reason, "length");
      assert.ok(c.message.content.startsWith("{"), c.message.content);
    }
  });

  test("max_tokens cuts a constrained output: finish_reason length", async () => {
    const r = await client.chat.completions.create({
      model: "l2kv-ci", messages: MESSAGES, seed: 1, temperature: 1, max_tokens: 2,
      response_format: { type: "json_schema", json_schema: { name: "person", schema: PERSON } },
    });
    assert.equal(r.choices[0].finish_reason, "length");
    assert.ok(r.choices[0].message.content.startsWith("{"), r.choices[0].message.content);
  });
});

describe("structured_outputs on /v1/completions", () => {
  test("choice", async () => {
    const choices = ["red", "green", "blue"];
    const r = await client.completions.create({
      model: "l2kv-ci", prompt: "My favourite colour is", n: 4, seed: 2, temperature: 1, max_tokens: 10,
      structured_outputs: { choice: choices },
    });
    for (const c of r.choices) {
      assert.equal(c.finish_reason, "stop");
      assert.ok(choices.includes(c.text), c.text);
    }
  });

  test("regex", async () => {
    const r = await client.completions.create({
      model: "l2kv-ci", prompt: "Call me at", seed: 4, temperature: 1, max_tokens: 20,
      structured_outputs: { regex: "\\+?[0-9]{3}-[0-9]{4}" },
    });
    assert.equal(r.choices[0].finish_reason, "stop");
    assert.match(r.choices[0].text, /^\+?[0-9]{3}-[0-9]{4}$/);
  });

  test("json, streamed", async () => {
    const schema = { type: "array", items: { type: "integer", minimum: -5, maximum: 5 }, minItems: 1, maxItems: 3 };
    const stream = await client.completions.create({
      model: "l2kv-ci", prompt: "Three small numbers:", seed: 8, temperature: 1, max_tokens: 60,
      stream: true, structured_outputs: { json: schema },
    });
    let text = "", finish = null;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        text += c.text ?? "";
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    assert.equal(finish, "stop", text);
    assertValid(schema, text, "streamed completion");
  });
});

describe("errors", () => {
  test("an unsupported schema keyword is a 400 that names it", async () => {
    await assert.rejects(
      client.chat.completions.create({
        model: "l2kv-ci", messages: MESSAGES, max_tokens: 5,
        response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "array", uniqueItems: true } } },
      }),
      (e) => e.status === 400 && e.error?.param === "response_format" && /uniqueItems/.test(e.message));
  });
});

const WEATHER = {
  type: "object",
  properties: { city: { type: "string", maxLength: 10 }, unit: { enum: ["c", "f"] } },
  required: ["city"],
  additionalProperties: false,
};
const TOOLS = [
  { type: "function", function: { name: "get_weather", description: "Weather in a city", parameters: WEATHER } },
  { type: "function", function: { name: "get_time", parameters: { type: "object", properties: {
    tz: { enum: ["UTC", "CET"] } }, required: ["tz"] } } },
];
const PARAMS = { get_weather: WEATHER, get_time: TOOLS[1].function.parameters };
const ASK = [{ role: "user", content: "What is the weather in Paris?" }];

// Tool-call deltas put together as the openai SDK does: by index, id/name once, arguments
// appended.
async function collectToolStream(stream) {
  const calls = [], finish = [];
  let content = "";
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      content += c.delta?.content ?? "";
      for (const d of c.delta?.tool_calls ?? []) {
        calls[d.index] ??= { id: "", name: "", arguments: "" };
        if (d.id) calls[d.index].id = d.id;
        if (d.function?.name) calls[d.index].name += d.function.name;
        if (d.function?.arguments) calls[d.index].arguments += d.function.arguments;
      }
      if (c.finish_reason) finish.push(c.finish_reason);
    }
  }
  return { calls, finish, content };
}

function assertCall(call, what) {
  assert.ok(call.id, `${what}: no id`);
  assert.ok(call.name in PARAMS, `${what}: unknown function ${call.name}`);
  assertValid(PARAMS[call.name], call.arguments, `${what} arguments`);
}

describe("tools", () => {
  test("a named function: its arguments, finish_reason tool_calls", async () => {
    const r = await client.chat.completions.create({
      model: "l2kv-ci", messages: ASK, tools: TOOLS, seed: 6, temperature: 1, max_tokens: 100,
      tool_choice: { type: "function", function: { name: "get_weather" } },
    });
    const c = r.choices[0];
    assert.equal(c.finish_reason, "tool_calls", JSON.stringify(c.message));
    assert.equal(c.message.content, null);
    assert.equal(c.message.tool_calls.length, 1);
    assert.equal(c.message.tool_calls[0].type, "function");
    assert.equal(c.message.tool_calls[0].function.name, "get_weather");
    assertCall({ id: c.message.tool_calls[0].id, ...c.message.tool_calls[0].function }, "named");
  });

  test("a named function, streamed: argument deltas", async () => {
    const stream = await client.chat.completions.create({
      model: "l2kv-ci", messages: ASK, tools: TOOLS, seed: 7, temperature: 1, max_tokens: 100, stream: true,
      tool_choice: { type: "function", function: { name: "get_time" } },
    });
    const { calls, finish, content } = await collectToolStream(stream);
    assert.deepEqual(finish, ["tool_calls"]);
    assert.equal(content, "");
    assert.equal(calls.length, 1);
    assert.equal(calls[0].name, "get_time");
    assertCall(calls[0], "named streamed");
  });

  test("required, non-streaming and streamed: one or more valid calls", async () => {
    for (const stream of [false, true]) {
      const args = { model: "l2kv-ci", messages: ASK, tools: TOOLS, seed: 9, temperature: 1,
        max_tokens: 200, tool_choice: "required", stream };
      let calls, finish;
      if (stream) {
        ({ calls, finish } = await collectToolStream(await client.chat.completions.create(args)));
        finish = finish[0];
      } else {
        const c = (await client.chat.completions.create(args)).choices[0];
        calls = (c.message.tool_calls ?? []).map((t) => ({ id: t.id, ...t.function }));
        finish = c.finish_reason;
      }
      assert.equal(finish, "tool_calls", `stream ${stream}`);
      assert.ok(calls.length >= 1, `stream ${stream}: no call`);
      calls.forEach((call, k) => assertCall(call, `required call ${k} (stream ${stream})`));
    }
  });

  test("auto with the hermes parser: a <tool_call> in the text becomes a call", async () => {
    // The model's text is forced into Qwen's format; the parser must find the call in it.
    const regex = '<tool_call>\n\\{"name": "get_weather", "arguments": \\{"city": "[a-z]{1,8}"\\}\\}\n</tool_call>';
    for (const stream of [false, true]) {
      const args = { model: "l2kv-ci", messages: ASK, tools: TOOLS, seed: 2, temperature: 1,
        max_tokens: 60, stream, structured_outputs: { regex } };
      let calls, finish, content;
      if (stream) {
        ({ calls, finish, content } = await collectToolStream(await client.chat.completions.create(args)));
        finish = finish[0];
      } else {
        const c = (await client.chat.completions.create(args)).choices[0];
        calls = (c.message.tool_calls ?? []).map((t) => ({ id: t.id, ...t.function }));
        finish = c.finish_reason;
        content = c.message.content ?? "";
      }
      assert.equal(finish, "tool_calls", `stream ${stream}`);
      assert.equal(content, "", `stream ${stream}: the call leaked into content`);
      assert.equal(calls.length, 1);
      assert.equal(calls[0].name, "get_weather");
      assertCall(calls[0], `auto (stream ${stream})`);
    }
  });

  test("auto with the hermes parser, streamed: OpenAI's deltas, the non-streamed answer", async () => {
    // Text, then two calls in Qwen's format; streamed, each call's first delta carries its
    // index, id, type and name (arguments ""), the later ones its index and arguments only.
    const call = (name, args) => `<tool_call>\n\\{"name": "${name}", "arguments": \\{${args}\\}\\}\n</tool_call>`;
    const regex = "Checking\\.\n" + call("get_weather", '"city": "[a-z]{2,8}"') + "\n" +
      call("get_time", '"tz": "(UTC|CET)"');
    const args = { model: "l2kv-ci", messages: ASK, tools: TOOLS, seed: 4, temperature: 1,
      max_tokens: 120, structured_outputs: { regex } };
    const whole = (await client.chat.completions.create(args)).choices[0];
    assert.equal(whole.finish_reason, "tool_calls", JSON.stringify(whole.message));
    assert.equal(whole.message.content, "Checking.");
    assert.deepEqual(whole.message.tool_calls.map((t) => t.function.name), ["get_weather", "get_time"]);

    const deltas = [];
    const stream = await client.chat.completions.create({ ...args, stream: true });
    const chunks = [];
    for await (const chunk of stream) {
      chunks.push(chunk);
      for (const d of chunk.choices[0]?.delta?.tool_calls ?? []) deltas.push(d);
    }
    const { calls, finish, content } = await collectToolStream(chunks);
    assert.deepEqual(finish, ["tool_calls"]);
    assert.equal(content, whole.message.content);
    assert.deepEqual(calls.map((c) => [c.name, c.arguments]),
      whole.message.tool_calls.map((t) => [t.function.name, t.function.arguments]));
    for (const [k, c] of calls.entries()) {
      assertCall(c, `streamed call ${k}`);
      const own = deltas.filter((d) => d.index === k);
      assert.equal(own[0].type, "function");
      assert.equal(own[0].id, c.id);
      assert.equal(own[0].function.name, c.name);
      assert.equal(own[0].function.arguments, "");
      for (const d of own.slice(1)) {
        assert.deepEqual(Object.keys(d).sort(), ["function", "index"], JSON.stringify(d));
        assert.deepEqual(Object.keys(d.function), ["arguments"], JSON.stringify(d));
      }
      assert.ok(own.length > 2, `call ${k}: arguments in ${own.length - 1} pieces`);
    }
    // Calls come in order, and no content after the first call's start.
    assert.deepEqual([...new Set(deltas.map((d) => d.index))], [0, 1]);
    const first = chunks.findIndex((c) => c.choices[0]?.delta?.tool_calls);
    assert.ok(chunks.slice(first).every((c) => !c.choices[0]?.delta?.content));

    // With logprobs: every token's once, in order, streamed as answered whole (text held back
    // as possible markup has its logprobs sent ahead of it).
    const withLogprobs = { ...args, logprobs: true, top_logprobs: 1 };
    const wholeLp = (await client.chat.completions.create(withLogprobs)).choices[0];
    const tokens = wholeLp.logprobs.content.map((t) => t.token);
    assert.ok(tokens.length > 10, JSON.stringify(wholeLp.logprobs));
    const streamedLp = [];
    for await (const chunk of await client.chat.completions.create({ ...withLogprobs, stream: true }))
      for (const t of chunk.choices[0]?.logprobs?.content ?? []) streamedLp.push(t.token);
    assert.deepEqual(streamedLp, tokens);

    // parallel_tool_calls false: the first call only, whole and streamed.
    const single = { ...args, parallel_tool_calls: false };
    const one = (await client.chat.completions.create(single)).choices[0];
    assert.equal(one.finish_reason, "tool_calls");
    assert.deepEqual(one.message.tool_calls.map((t) => t.function.name), ["get_weather"]);
    const oneStreamed = await collectToolStream(await client.chat.completions.create({ ...single, stream: true }));
    assert.deepEqual(oneStreamed.calls.map((c) => [c.name, c.arguments]),
      one.message.tool_calls.map((t) => [t.function.name, t.function.arguments]));
    assert.deepEqual(oneStreamed.finish, ["tool_calls"]);
  });

  test("the conversation continues with the call and its result", async () => {
    const r = await client.chat.completions.create({
      model: "l2kv-ci", tools: TOOLS, tool_choice: "none", max_tokens: 5, temperature: 0,
      messages: [...ASK,
        { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function",
          function: { name: "get_weather", arguments: "{\"city\": \"Paris\"}" } }] },
        { role: "tool", tool_call_id: "call_1", content: "18 C, sunny" }],
    });
    assert.equal(r.choices[0].message.tool_calls.length, 0);
    assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
  });
});
